//! The plain OpenAI-compatible API under `/v1` (a "fallback upstream" for gateway tests and the
//! upstream for benchmarking other proxies): API-key check, `POST /v1/chat/completions` (streamed
//! chunks and the non-streamed object, PROTOCOL.md §5), `POST /v1/responses` (streamed or the
//! final object) and `GET /v1/models`. Replies come from their own queue
//! ([`crate::FakeOpenAi::push_openai_reply`]) and are rendered in OpenAI's dialect.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::auth::bearer;
use crate::codex::{
    Dialect, RequestFacts, builtin_reply, input_tokens, output_text, render, sse_headers,
};
use crate::reply::{Ending, FakeTokenUsage, Flat, OutputItem, Script, flatten};
use crate::responses::{Ctx, final_response, render_stream};
use crate::state::{Shared, now_secs, random_hex};
use crate::stream::{Outcome, OutcomeBody, Step, StreamGuard, cut_steps, deliver};

/// The name the built-in default answer greets with.
const GREETING: &str = "FakeOpenAi";

/// The JSON of an OpenAI-shaped error.
fn error_json(kind: &str, code: Option<&str>, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn error_outcome(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Outcome {
        status,
        headers,
        body: OutcomeBody::Full(Bytes::from(error_json(kind, code, message).to_string())),
    }
}

/// Why a `/v1` request is refused before any reply is chosen.
#[derive(Debug, Clone, Copy)]
enum Rejection {
    MissingKey,
    WrongKey,
    BadRequest(&'static str),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Rejection::MissingKey => (
                StatusCode::UNAUTHORIZED,
                None,
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ),
            Rejection::WrongKey => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_api_key"),
                "Incorrect API key provided.",
            ),
            Rejection::BadRequest(message) => (StatusCode::BAD_REQUEST, None, message),
        };
        (
            status,
            axum::Json(error_json("invalid_request_error", code, message)),
        )
            .into_response()
    }
}

/// Checks `Authorization: Bearer <openai_api_key>`.
fn check_key(shared: &Shared, headers: &HeaderMap) -> Result<(), Rejection> {
    match bearer(headers) {
        Some(key) if key == shared.config.openai_api_key => Ok(()),
        Some(_) => Err(Rejection::WrongKey),
        None => Err(Rejection::MissingKey),
    }
}

/// Parses a JSON object body with a string `model`.
fn parse_body(body: &[u8]) -> Result<Value, Rejection> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| Rejection::BadRequest("We could not parse the JSON body of your request."))?;
    if !value.is_object() {
        return Err(Rejection::BadRequest(
            "The request body must be a JSON object.",
        ));
    }
    if !value.get("model").is_some_and(Value::is_string) {
        return Err(Rejection::BadRequest("you must provide a model parameter"));
    }
    Ok(value)
}

/// The next `/v1` reply.
fn next_reply(shared: &Shared, facts: &RequestFacts) -> (Flat, u64) {
    let mut inner = shared.inner();
    let reply = inner
        .openai_replies
        .pop_front()
        .or_else(|| inner.openai_default.clone())
        .unwrap_or_else(|| builtin_reply(GREETING, facts.last_tool_output.as_deref()));
    let cached = inner.cached_tokens("", facts);
    (flatten(reply), cached)
}

/// What the OpenAI API answers to a used-up quota.
fn usage_limit() -> Outcome {
    error_outcome(
        StatusCode::TOO_MANY_REQUESTS,
        "insufficient_quota",
        Some("insufficient_quota"),
        "You exceeded your current quota, please check your plan and billing details.",
    )
}

/// What the OpenAI API answers to a rate limit.
fn rate_limit() -> Outcome {
    let mut o = error_outcome(
        StatusCode::TOO_MANY_REQUESTS,
        "requests",
        Some("rate_limit_exceeded"),
        "Rate limit reached. Please try again in 1s.",
    );
    o.headers
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    o
}

/// What the OpenAI API answers to a refused key.
fn unauthorized() -> Outcome {
    error_outcome(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        Some("invalid_api_key"),
        "Incorrect API key provided.",
    )
}

/// `/v1/chat/completions`.
struct Chat<'a> {
    facts: &'a RequestFacts,
    cached: u64,
    stream: bool,
    include_usage: bool,
}

impl Dialect for Chat<'_> {
    fn script(&self, script: &Script, usage: Option<FakeTokenUsage>) -> Outcome {
        let usage = usage.unwrap_or_else(|| self.facts.usage(self.cached, script.output_tokens()));
        let ctx = ChatCtx::new(&self.facts.model, usage);
        if self.stream {
            Outcome {
                status: StatusCode::OK,
                headers: sse_headers(),
                body: OutcomeBody::Steps(chat_stream(script, &ctx, self.include_usage)),
            }
        } else {
            failed_non_stream(script)
                .unwrap_or_else(|| json_answer(script, chat_completion(script, &ctx)))
        }
    }

    fn usage_limit(&self, _resets_in_secs: u64) -> Outcome {
        usage_limit()
    }

    fn rate_limit(&self) -> Outcome {
        rate_limit()
    }

    fn unauthorized(&self) -> Outcome {
        unauthorized()
    }
}

/// `/v1/responses`.
struct Responses<'a> {
    facts: &'a RequestFacts,
    cached: u64,
    stream: bool,
}

impl Dialect for Responses<'_> {
    fn script(&self, script: &Script, usage: Option<FakeTokenUsage>) -> Outcome {
        let usage = usage.unwrap_or_else(|| self.facts.usage(self.cached, script.output_tokens()));
        let ctx = Ctx::new(&self.facts.model, self.facts.encrypted_reasoning, usage);
        if self.stream {
            Outcome {
                status: StatusCode::OK,
                headers: sse_headers(),
                body: OutcomeBody::Steps(render_stream(script, &ctx)),
            }
        } else {
            json_answer(script, final_response(script, &ctx))
        }
    }

    fn usage_limit(&self, _resets_in_secs: u64) -> Outcome {
        usage_limit()
    }

    fn rate_limit(&self) -> Outcome {
        rate_limit()
    }

    fn unauthorized(&self) -> Outcome {
        unauthorized()
    }
}

/// A non-streamed JSON answer, or what a cut/stall does to it.
fn json_answer(script: &Script, object: Value) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let text = object.to_string();
    let body = match script.ending {
        Ending::Cut => {
            let half = text.len() / 2;
            let mut steps = vec![Step::Bytes(Bytes::copy_from_slice(
                &text.as_bytes()[..half],
            ))];
            steps.extend(cut_steps());
            OutcomeBody::Steps(steps)
        }
        Ending::Stall => OutcomeBody::Steps(vec![Step::Hang]),
        _ => OutcomeBody::Full(Bytes::from(text)),
    };
    Outcome {
        status: StatusCode::OK,
        headers,
        body,
    }
}

fn failed_non_stream(script: &Script) -> Option<Outcome> {
    match &script.ending {
        Ending::Failed { code, message } => Some(error_outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some(code),
            message,
        )),
        _ => None,
    }
}

/// What varies per chat answer.
pub(crate) struct ChatCtx {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) model: String,
    pub(crate) usage: FakeTokenUsage,
}

impl ChatCtx {
    pub(crate) fn new(model: &str, usage: FakeTokenUsage) -> Self {
        ChatCtx {
            id: format!("chatcmpl-{}", random_hex::<12>()),
            created: now_secs(),
            model: model.to_owned(),
            usage,
        }
    }
}

/// The chat `usage` object.
pub(crate) fn chat_usage(u: &FakeTokenUsage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens(),
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

fn finish_reason(script: &Script) -> &'static str {
    if matches!(script.ending, Ending::Incomplete { .. }) {
        "length"
    } else if script
        .items
        .iter()
        .any(|i| matches!(i, OutputItem::ToolCall { .. }))
    {
        "tool_calls"
    } else {
        "stop"
    }
}

/// The `chat.completion.chunk` stream of a script, ending with `data: [DONE]`.
pub(crate) fn chat_stream(script: &Script, ctx: &ChatCtx, include_usage: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
            "model": ctx.model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        steps.push(Step::text(format!("data: {c}\n\n")));
    };
    chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    );
    let mut tool_index = 0;
    for item in &script.items {
        match item {
            OutputItem::Reasoning { deltas } => {
                for d in deltas {
                    chunk(json!({ "reasoning_content": d }), Value::Null);
                }
            }
            OutputItem::Text { deltas } => {
                for d in deltas {
                    chunk(json!({ "content": d }), Value::Null);
                }
            }
            OutputItem::Refusal { deltas } => {
                for d in deltas {
                    chunk(json!({ "refusal": d }), Value::Null);
                }
            }
            OutputItem::ToolCall {
                call_id,
                name,
                arguments_chunks,
            } => {
                chunk(
                    json!({"tool_calls": [{"index": tool_index, "id": call_id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                );
                for a in arguments_chunks {
                    chunk(
                        json!({"tool_calls": [{"index": tool_index, "function": {"arguments": a}}]}),
                        Value::Null,
                    );
                }
                tool_index += 1;
            }
        }
    }
    match &script.ending {
        Ending::Cut => {
            steps.extend(cut_steps());
            return steps;
        }
        Ending::Stall => {
            steps.push(Step::Hang);
            return steps;
        }
        Ending::Failed { code, message } => {
            let e = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
            steps.push(Step::text(format!("data: {e}\n\n")));
            return steps;
        }
        Ending::Completed | Ending::Incomplete { .. } => {
            chunk(json!({}), json!(finish_reason(script)));
        }
    }
    if include_usage {
        let c = json!({
            "id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created,
            "model": ctx.model, "system_fingerprint": null, "choices": [],
            "usage": chat_usage(&ctx.usage),
        });
        steps.push(Step::text(format!("data: {c}\n\n")));
    }
    steps.push(Step::text("data: [DONE]\n\n"));
    steps
}

/// The non-streamed `chat.completion` object of a script.
pub(crate) fn chat_completion(script: &Script, ctx: &ChatCtx) -> Value {
    let mut text = String::new();
    let mut refusal = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for item in &script.items {
        match item {
            OutputItem::Reasoning { deltas } => reasoning.push_str(&deltas.concat()),
            OutputItem::Text { deltas } => text.push_str(&deltas.concat()),
            OutputItem::Refusal { deltas } => refusal.push_str(&deltas.concat()),
            OutputItem::ToolCall {
                call_id,
                name,
                arguments_chunks,
            } => tool_calls.push(json!({
                "id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments_chunks.concat()},
            })),
        }
    }
    let has_text = script
        .items
        .iter()
        .any(|i| matches!(i, OutputItem::Text { .. }));
    let mut message = json!({
        "role": "assistant",
        "content": if has_text { json!(text) } else { Value::Null },
        "refusal": if refusal.is_empty() { Value::Null } else { json!(refusal) },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    json!({
        "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(script)}],
        "usage": chat_usage(&ctx.usage),
    })
}

/// Reads a chat request: model, tool result, token counts.
fn chat_facts(body: &Value, body_len: usize) -> RequestFacts {
    let last_tool_output = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .map(|m| output_text(m.get("content").unwrap_or(&Value::Null)));
    RequestFacts {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        encrypted_reasoning: false,
        input_tokens: input_tokens(body_len),
        cache_key: body
            .get("prompt_cache_key")
            .and_then(Value::as_str)
            .map(str::to_owned),
        last_tool_output,
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    axum::Extension(seq): axum::Extension<crate::record::Seq>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match check_key(&shared, &headers).and_then(|()| parse_body(&body)) {
        Ok(v) => v,
        Err(rejection) => return rejection.into_response(),
    };
    if !value.get("messages").is_some_and(Value::is_array) {
        return Rejection::BadRequest("Missing required parameter: 'messages'.").into_response();
    }
    let stream = value.get("stream") == Some(&Value::Bool(true));
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let facts = chat_facts(&value, body.len());
    let (flat, cached) = next_reply(&shared, &facts);
    let dialect = Chat {
        facts: &facts,
        cached,
        stream,
        include_usage,
    };
    let outcome = render(&flat, &dialect);
    deliver(
        outcome,
        flat.head_delay,
        StreamGuard::new(&shared, Some(seq.0)),
    )
    .await
}

/// `POST /v1/responses`.
pub(crate) async fn responses(
    State(shared): State<Arc<Shared>>,
    axum::Extension(seq): axum::Extension<crate::record::Seq>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let value = match check_key(&shared, &headers).and_then(|()| parse_body(&body)) {
        Ok(v) => v,
        Err(rejection) => return rejection.into_response(),
    };
    let stream = value.get("stream") == Some(&Value::Bool(true));
    let facts = RequestFacts::from_responses(&value, body.len(), &headers);
    let (flat, cached) = next_reply(&shared, &facts);
    let dialect = Responses {
        facts: &facts,
        cached,
        stream,
    };
    let outcome = render(&flat, &dialect);
    deliver(
        outcome,
        flat.head_delay,
        StreamGuard::new(&shared, Some(seq.0)),
    )
    .await
}

/// `GET /v1/models`.
pub(crate) async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !shared.config.instant
        && let Err(rejection) = check_key(&shared, &headers)
    {
        return rejection.into_response();
    }
    let data: Vec<Value> = shared
        .inner()
        .models
        .iter()
        .map(crate::codex::FakeModel::to_openai_json)
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({"object": "list", "data": data})),
    )
        .into_response()
}
