//! Bench ("instant") mode: the hot endpoints answer with bytes rendered once at start, accept any
//! bearer token and only bump a counter, so a benchmark measures the gateway in front of the fake
//! and not the fake. The answer is a ~1 KB text in 20 deltas.
//!
//! A request whose `model` is `instant-hold-<SECS>` ([`INSTANT_HOLD_PREFIX`]) gets the same
//! answer in two pieces: the first half of its events at once, the rest after `SECS` seconds
//! (at most [`INSTANT_MAX_HOLD_SECS`]). Benchmarks use it to keep many streams open at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
use crate::stream::{Step, StreamGuard, concat, timed_body};
use crate::usage::FakeUsage;

/// Model name the pre-rendered answers carry.
pub const INSTANT_MODEL: &str = "gpt-5-codex";

/// Number of text deltas of the pre-rendered answer.
pub const INSTANT_DELTAS: usize = 20;

/// Prefix of the model names that hold an instant stream open: `instant-hold-30` sends the
/// first half of the events, waits 30 s, then sends the rest.
pub const INSTANT_HOLD_PREFIX: &str = "instant-hold-";

/// The longest hold an `instant-hold-<SECS>` model may ask for; larger values are cut to it.
pub const INSTANT_MAX_HOLD_SECS: u64 = 3600;

/// A pre-rendered SSE answer, whole and split in two halves (for held streams).
struct Split {
    whole: Bytes,
    head: Bytes,
    tail: Bytes,
}

impl Split {
    fn new(steps: &[Step]) -> Self {
        let mid = steps.len() / 2;
        Split {
            whole: concat(steps),
            head: concat(&steps[..mid]),
            tail: concat(&steps[mid..]),
        }
    }
}

/// The pre-rendered answers.
pub(crate) struct InstantBodies {
    codex_sse: Split,
    codex_headers: HeaderMap,
    chat_stream: Split,
    chat_stream_usage: Split,
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
            codex_sse: Split::new(&render_stream(&script, &ctx)),
            codex_headers,
            chat_stream: Split::new(&chat_stream(&script, &chat, false)),
            chat_stream_usage: Split::new(&chat_stream(&script, &chat, true)),
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

/// A streamed answer: whole, or split around a hold when the request asked for one.
fn respond_sse(
    shared: &Arc<Shared>,
    headers: HeaderMap,
    body: &Split,
    hold: Option<Duration>,
) -> Response {
    let Some(hold) = hold else {
        return respond(headers, body.whole.clone());
    };
    let steps = vec![
        Step::Bytes(body.head.clone()),
        Step::Sleep(hold),
        Step::Bytes(body.tail.clone()),
    ];
    let mut response = Response::new(timed_body(steps, StreamGuard::new(shared, None)));
    *response.headers_mut() = headers;
    response
}

/// The hold a request asks for with an `instant-hold-<SECS>` model (the body is parsed only when
/// the prefix occurs in it, so ordinary requests cost one byte scan).
fn hold_of(body: &[u8]) -> Option<Duration> {
    let prefix = INSTANT_HOLD_PREFIX.as_bytes();
    memchr::memmem::find(body, prefix)?;
    #[derive(serde::Deserialize)]
    struct Model<'a> {
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let m: Model<'_> = serde_json::from_slice(body).ok()?;
    let secs: u64 = m.model?.strip_prefix(INSTANT_HOLD_PREFIX)?.parse().ok()?;
    Some(Duration::from_secs(secs.min(INSTANT_MAX_HOLD_SECS)))
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
    while let Some(pos) = memchr::memmem::find(&body[at..], needle) {
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
pub(crate) async fn codex(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.instant_codex.fetch_add(1, Ordering::Relaxed);
    match bodies(&shared) {
        Some(b) => respond_sse(
            &shared,
            b.codex_headers.clone(),
            &b.codex_sse,
            hold_of(&body),
        ),
        None => unavailable(),
    }
}

/// Instant `POST /v1/responses`.
pub(crate) async fn responses(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.instant_responses.fetch_add(1, Ordering::Relaxed);
    match bodies(&shared) {
        Some(b) => respond_sse(&shared, sse_headers(), &b.codex_sse, hold_of(&body)),
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
        let split = if has_true(&body, "include_usage") {
            &b.chat_stream_usage
        } else {
            &b.chat_stream
        };
        respond_sse(&shared, sse_headers(), split, hold_of(&body))
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
    fn hold_comes_from_the_model_name() {
        assert_eq!(hold_of(br#"{"model":"gpt-5","stream":true}"#), None);
        assert_eq!(
            hold_of(br#"{"stream":true,"model": "instant-hold-30"}"#),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            hold_of(br#"{"model":"instant-hold-999999"}"#),
            Some(Duration::from_secs(INSTANT_MAX_HOLD_SECS))
        );
        assert_eq!(hold_of(br#"{"model":"instant-hold-x"}"#), None);
        // The prefix elsewhere in the body is not a model name.
        assert_eq!(hold_of(br#"{"model":"m","input":"instant-hold-5"}"#), None);
    }

    #[test]
    fn halves_make_the_whole() {
        let b = InstantBodies::render();
        for s in [&b.codex_sse, &b.chat_stream, &b.chat_stream_usage] {
            assert_eq!([&s.head[..], &s.tail[..]].concat(), &s.whole[..]);
            let head = std::str::from_utf8(&s.head).unwrap_or_default();
            assert!(
                head.matches("Delta ").count() >= INSTANT_DELTAS / 2 - 1,
                "{head}"
            );
        }
    }

    #[test]
    fn codex_events_put_type_first_like_the_backend() {
        let b = InstantBodies::render();
        let text = std::str::from_utf8(&b.codex_sse.whole).unwrap();
        let mut frames = 0;
        for line in text.lines().filter(|l| l.starts_with("data: ")) {
            frames += 1;
            assert!(line.starts_with("data: {\"type\":\"response."), "{line}");
            assert!(line.contains(",\"sequence_number\":"), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line[6..]).unwrap();
            assert!(v.get("type").is_some() && v.get("sequence_number").is_some());
        }
        assert!(frames > INSTANT_DELTAS);
    }

    #[test]
    fn answer_is_about_one_kilobyte() {
        let b = InstantBodies::render();
        assert!(b.codex_sse.whole.len() > 1024);
        let text: usize = (0..INSTANT_DELTAS).map(|i| delta(i).len()).sum();
        assert_eq!(text, 1040);
    }
}
