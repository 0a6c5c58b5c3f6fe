//! `POST /v1/responses`: Responses in, Responses upstream. Bodies from ordinary clients follow
//! the body rules (PROTOCOL.md §4), expanded from the responses the gateway keeps
//! (`previous_response_id`, `item_reference`; see [`crate::stored`]), and their answers are kept
//! unless they said `store: false`; the Codex CLI's are forwarded as sent, with its headers, and
//! never kept. `stream: false` clients get the final `response` object. `GET` and `DELETE
//! /v1/responses/{id}` read and forget a kept response, `GET /v1/responses/{id}/input_items`
//! lists its input. And `POST /v1/responses/compact`, the
//! Codex CLI's history compaction, whose JSON answer is relayed as is.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use codexpool_core::PlatformKey;

use super::{Answer, Intake, PathId};
use crate::Shared;
use crate::adapt::responses::apply_body_rules_with;
use crate::adapt::{RequestError, UpstreamRequest, codex_passthrough, is_codex_client};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::stored::{ItemsPage, Pending};

fn protocol_of(headers: &HeaderMap) -> Protocol {
    let codex = is_codex_client(
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or(""))),
    );
    if codex {
        Protocol::Codex
    } else {
        Protocol::Responses
    }
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let protocol = protocol_of(&headers);
    let mut intake = match Intake::read(shared, key, headers, body, "/v1/responses", protocol).await
    {
        Ok(i) => i,
        Err(res) => return res,
    };
    let adapted = if protocol == Protocol::Codex {
        codex_passthrough(intake.bytes.clone(), &intake.overrides()).map(|up| (up, None, None))
    } else {
        adapt(&intake)
    };
    let (up, pending, continued) = match adapted {
        Ok(x) => x,
        Err(e) => return intake.reject(request_error(&e)),
    };
    intake.continued_session = continued;
    let answer = if up.stream {
        Answer::ResponsesStream
    } else {
        Answer::ResponsesJson
    };
    intake.dispatch(up, answer, "/responses", pending).await
}

/// What [`adapt`] makes of a request: the body, the answer to keep (if it is to be kept), and
/// the session of the kept response it continues.
type Adapted = (UpstreamRequest, Option<Box<Pending>>, Option<Arc<str>>);

/// The body rules, with the key's kept responses.
fn adapt(intake: &Intake) -> Result<Adapted, RequestError> {
    let overrides = intake.overrides();
    let Some(store) = &intake.shared.responses else {
        let (up, _) = apply_body_rules_with(&intake.bytes, &overrides, None)?;
        // Without the history they stand for, the answer would be to another question.
        for (field, name, what) in [
            ("previous_response_id", "previous_response_id", "it"),
            ("input", "input[].item_reference", "an item_reference"),
        ] {
            if up.dropped.iter().any(|d| d == name) {
                return Err(RequestError::field(
                    field,
                    format!(
                        "{what} needs the responses this gateway keeps, and it keeps none \
                         (CODEXPOOL_RESPONSES_STORE_MB=0): send the whole conversation as input"
                    ),
                ));
            }
        }
        return Ok((up, None, None));
    };
    let key = intake.key.id.as_str();
    let mut recall = store.recall(key);
    let (up, input) = apply_body_rules_with(&intake.bytes, &overrides, Some(&mut recall))?;
    Ok((
        up,
        input.map(|input| Pending::new(store.clone(), key, input)),
        recall.continued_session(),
    ))
}

/// A refused body as the client hears it, with OpenAI's code when it has one.
fn request_error(e: &RequestError) -> ApiError {
    let mut error = ApiError::from_request(e);
    if let Some(code) = e.code() {
        code.clone_into(&mut error.code);
    }
    error
}

/// OpenAI's 404 for a response that is not kept (for this key).
fn response_not_found(id: &str) -> Response {
    let mut error = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "response_not_found",
        format!("Response with id '{id}' not found."),
    );
    error.param = Some("response_id".into());
    error.into_response()
}

/// The query of `GET /v1/responses/{id}`.
#[derive(serde::Deserialize)]
pub(crate) struct RetrieveQuery {
    stream: Option<String>,
}

/// `GET /v1/responses/{id}`: a kept response of this key, with its output. Not as a stream:
/// only finished answers are kept, and a stream an SDK asked for would show it nothing.
pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    PathId(id): PathId,
    query: Result<Query<RetrieveQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::bad_request("invalid_value", e.body_text()).into_response(),
    };
    if query
        .stream
        .as_deref()
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
    {
        let message = "a kept response is retrieved whole: the gateway keeps finished answers, \
                       not their events (retrieve it without `stream`)";
        return invalid("stream", message.into()).into_response();
    }
    match shared.responses.as_ref().and_then(|s| s.get(&key.id, &id)) {
        Some(json) => json_response(json),
        None => response_not_found(&id),
    }
}

/// The query of `GET /v1/responses/{id}/input_items` (OpenAI's; `include` changes nothing
/// here: the items are kept whole).
#[derive(serde::Deserialize)]
pub(crate) struct ItemsQuery {
    limit: Option<String>,
    order: Option<String>,
    after: Option<String>,
    before: Option<String>,
}

/// A 400 for a query parameter.
fn invalid(param: &str, message: String) -> ApiError {
    let mut error = ApiError::bad_request("invalid_value", message);
    error.param = Some(param.into());
    error
}

impl ItemsQuery {
    fn page(&self) -> Result<ItemsPage<'_>, ApiError> {
        let limit = match self.limit.as_deref() {
            None => 20,
            Some(v) => match v.parse() {
                Ok(n @ 1..=100) => n,
                _ => {
                    let message = format!("limit must be an integer from 1 to 100, got {v:?}");
                    return Err(invalid("limit", message));
                }
            },
        };
        let newest_first = match self.order.as_deref() {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(v) => {
                let message = format!("order must be \"asc\" or \"desc\", got {v:?}");
                return Err(invalid("order", message));
            }
        };
        Ok(ItemsPage {
            limit,
            newest_first,
            after: self.after.as_deref(),
            before: self.before.as_deref(),
        })
    }
}

/// `GET /v1/responses/{id}/input_items`: the input a kept response of this key was answered
/// for, a page at a time (OpenAI's list object and cursors).
pub(crate) async fn input_items(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    PathId(id): PathId,
    query: Result<Query<ItemsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::bad_request("invalid_value", e.body_text()).into_response(),
    };
    let page = match query.page() {
        Ok(page) => page,
        Err(e) => return e.into_response(),
    };
    match shared
        .responses
        .as_ref()
        .and_then(|s| s.input_items(&key.id, &id, &page))
    {
        Some(Ok(json)) => json_response(json),
        Some(Err(param)) => {
            let cursor = if param == "after" {
                page.after
            } else {
                page.before
            };
            let cursor = cursor.unwrap_or_default();
            invalid(
                param,
                format!("{param}: no input item '{cursor}' in response '{id}'"),
            )
            .into_response()
        }
        None => response_not_found(&id),
    }
}

fn json_response(json: Vec<u8>) -> Response {
    let content_type = HeaderValue::from_static("application/json");
    ([(header::CONTENT_TYPE, content_type)], json).into_response()
}

/// `DELETE /v1/responses/{id}`: forgets a kept response of this key (OpenAI's answer shape).
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    PathId(id): PathId,
) -> Response {
    if shared
        .responses
        .as_ref()
        .is_some_and(|s| s.delete(&key.id, &id))
    {
        axum::Json(serde_json::json!({"id": id, "object": "response", "deleted": true}))
            .into_response()
    } else {
        response_not_found(&id)
    }
}

/// `POST /v1/responses/{id}/cancel`: OpenAI cancels only responses made in the background; the
/// gateway makes none (`background` is dropped), so a kept response is refused as OpenAI
/// refuses a finished one.
pub(crate) async fn cancel(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    PathId(id): PathId,
) -> Response {
    if shared
        .responses
        .as_ref()
        .and_then(|s| s.get(&key.id, &id))
        .is_none()
    {
        return response_not_found(&id);
    }
    let mut error = ApiError::bad_request(
        "invalid_request",
        "Only responses created with background set to true can be cancelled; this gateway \
         answers every request in the foreground",
    );
    error.param = Some("response_id".into());
    error.into_response()
}

/// `POST /v1/responses/compact`: forwarded as sent to `{base}/responses/compact` on the
/// conversation's account.
pub(crate) async fn compact(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let protocol = protocol_of(&headers);
    let intake = match Intake::read(
        shared,
        key,
        headers,
        body,
        "/v1/responses/compact",
        protocol,
    )
    .await
    {
        Ok(i) => i,
        Err(res) => return res,
    };
    let up = match codex_passthrough(intake.bytes.clone(), &intake.overrides()) {
        Ok(x) => x,
        Err(e) => return intake.reject(request_error(&e)),
    };
    intake.dispatch_json(up, "/responses/compact").await
}
