//! Bench ("instant") mode: the hot endpoints answer with bytes rendered once at start, accept any
//! bearer token and only bump a counter, so a benchmark measures the gateway in front of the fake
//! and not the fake. The answer is a ~1 KB text in 20 deltas.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use crate::codex::sse_headers;
use crate::openai::{ChatCtx, chat_completion, chat_stream};
use crate::reply::{FakeTokenUsage, OutputItem, Script};
use crate::responses::{Ctx, render_stream};
use crate::state::Shared;
use crate::stream::concat;
use crate::usage::FakeUsage;

/// Model name the pre-rendered answers carry.
pub const INSTANT_MODEL: &str = "gpt-5-codex";

/// Number of text deltas of the pre-rendered answer.
pub const INSTANT_DELTAS: usize = 20;

/// The pre-rendered answers.
pub(crate) struct InstantBodies {
    codex_sse: Bytes,
    codex_headers: HeaderMap,
    chat_stream: Bytes,
    chat_stream_usage: Bytes,
    chat_json: Bytes,
}

impl InstantBodies {
    pub(crate) fn render() -> Self {
        // 20 deltas of 52 bytes: a 1 040-byte answer.
        let deltas: Vec<String> = (0..INSTANT_DELTAS).map(delta).collect();
        let script = Script::completed(vec![OutputItem::Text { deltas }]);
        let usage = FakeTokenUsage {
            input_tokens: 100,
            cached_tokens: 0,
            output_tokens: INSTANT_DELTAS as u64,
            reasoning_tokens: 0,
        };
        let ctx = Ctx::new(INSTANT_MODEL, false, usage);
        let chat = ChatCtx::new(INSTANT_MODEL, usage);
        let mut codex_headers = sse_headers();
        codex_headers.extend(FakeUsage::default().headers());
        InstantBodies {
            codex_sse: concat(&render_stream(&script, &ctx)),
            codex_headers,
            chat_stream: concat(&chat_stream(&script, &chat, false)),
            chat_stream_usage: concat(&chat_stream(&script, &chat, true)),
            chat_json: Bytes::from(chat_completion(&script, &chat).to_string()),
        }
    }
}

/// The `i`-th delta: 52 bytes.
fn delta(i: usize) -> String {
    format!("Delta {i:02} of the instant answer, padded to the size. ")
}

fn respond(headers: HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response
}

fn bodies(shared: &Shared) -> Option<&InstantBodies> {
    shared.instant_bodies.as_ref()
}

fn unavailable() -> Response {
    let mut r = Response::new(Body::from("instant mode is off"));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// Whether a JSON body has `"<key>": true` (a byte scan, no parse).
fn has_true(body: &[u8], key: &str) -> bool {
    let needle = format!("\"{key}\"");
    let needle = needle.as_bytes();
    let mut at = 0;
    while let Some(pos) = body[at..].windows(needle.len()).position(|w| w == needle) {
        let rest = &body[at + pos + needle.len()..];
        let rest = rest.trim_ascii_start();
        if let Some(rest) = rest.strip_prefix(b":")
            && rest.trim_ascii_start().starts_with(b"true")
        {
            return true;
        }
        at += pos + needle.len();
    }
    false
}

/// Instant `POST /backend-api/codex/responses` (and `/v1/responses`).
pub(crate) async fn codex(State(shared): State<Arc<Shared>>, _body: Bytes) -> Response {
    shared.instant_codex.fetch_add(1, Ordering::Relaxed);
    match bodies(&shared) {
        Some(b) => respond(b.codex_headers.clone(), b.codex_sse.clone()),
        None => unavailable(),
    }
}

/// Instant `POST /v1/responses`.
pub(crate) async fn responses(State(shared): State<Arc<Shared>>, _body: Bytes) -> Response {
    shared.instant_responses.fetch_add(1, Ordering::Relaxed);
    match bodies(&shared) {
        Some(b) => respond(sse_headers(), b.codex_sse.clone()),
        None => unavailable(),
    }
}

/// Instant `POST /v1/chat/completions`.
pub(crate) async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.instant_chat.fetch_add(1, Ordering::Relaxed);
    let Some(b) = bodies(&shared) else {
        return unavailable();
    };
    if has_true(&body, "stream") {
        let bytes = if has_true(&body, "include_usage") {
            b.chat_stream_usage.clone()
        } else {
            b.chat_stream.clone()
        };
        respond(sse_headers(), bytes)
    } else {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        respond(h, b.chat_json.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_scan() {
        assert!(has_true(br#"{"stream": true}"#, "stream"));
        assert!(has_true(br#"{"a":1,"stream" :true}"#, "stream"));
        assert!(!has_true(br#"{"stream": false}"#, "stream"));
        assert!(!has_true(br#"{"x":"stream"}"#, "stream"));
        assert!(has_true(
            br#"{"stream_options":{"include_usage":true},"stream":true}"#,
            "include_usage"
        ));
    }

    #[test]
    fn answer_is_about_one_kilobyte() {
        let b = InstantBodies::render();
        assert!(b.codex_sse.len() > 1024);
        let text: usize = (0..INSTANT_DELTAS).map(|i| delta(i).len()).sum();
        assert_eq!(text, 1040);
    }
}
