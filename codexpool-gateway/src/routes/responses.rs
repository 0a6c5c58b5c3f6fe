//! `POST /v1/responses`: Responses in, Responses upstream. Bodies from ordinary clients follow
//! the body rules (PROTOCOL.md §4); the Codex CLI's are forwarded as sent, with its headers.
//! `stream: false` clients get the final `response` object. And `POST /v1/responses/compact`,
//! the Codex CLI's history compaction, whose JSON answer is relayed as is.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use codexpool_core::PlatformKey;

use super::{Answer, Intake};
use crate::Shared;
use crate::adapt::{apply_body_rules, codex_passthrough, is_codex_client};
use crate::error::ApiError;
use crate::metrics::Protocol;

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
    let intake = match Intake::read(shared, key, headers, body, "/v1/responses", protocol).await {
        Ok(i) => i,
        Err(res) => return res,
    };
    let adapted = if protocol == Protocol::Codex {
        codex_passthrough(intake.bytes.clone(), &intake.overrides())
    } else {
        apply_body_rules(&intake.bytes, &intake.overrides())
    };
    let up = match adapted {
        Ok(x) => x,
        Err(e) => return intake.reject(ApiError::from_request(&e)),
    };
    let answer = if up.stream {
        Answer::ResponsesStream
    } else {
        Answer::ResponsesJson
    };
    intake.dispatch(up, answer, "/responses").await
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
        Err(e) => return intake.reject(ApiError::from_request(&e)),
    };
    intake.dispatch_json(up, "/responses/compact").await
}
