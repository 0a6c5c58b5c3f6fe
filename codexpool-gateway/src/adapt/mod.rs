//! Protocol adapters between what clients send and what the Codex backend speaks (PROTOCOL.md §4–5).
//!
//! Everything here is pure (no I/O, no clock, no randomness) so the route handlers and the failover
//! loop can be tested without sockets. [`event`] is the typed view of the backend's stream events,
//! the preflight classification that decides when an attempt is committed, and the classification
//! of upstream failures; [`responses`] holds the Responses body rules, the Codex-client
//! pass-through and the non-streaming Responses assembler; [`chat`] maps Chat Completions requests
//! to Responses bodies and translates the event stream back into `chat.completion(.chunk)` objects.
//! JSON that is only forwarded is never re-encoded: bodies are split at the top level into
//! borrowed [`RawValue`]s and written back verbatim, and upstream frames are sliced, not copied.
//!
//! ```
//! use bytes::BytesMut;
//! use codexpool_gateway::adapt::{ChatStream, Overrides, Preflight, chat_to_responses, preflight_item};
//! use codexpool_gateway::sse::{SseItem, SseParser};
//!
//! // The route turns the client's body into the upstream body (POSTed once per attempt) ...
//! let client = br#"{"model":"gpt-5","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
//! let (upstream, options) = chat_to_responses(client, &Overrides::default())?;
//! assert!(upstream.body.starts_with(br#"{"model":"gpt-5","instructions":"#));
//!
//! // ... the failover loop reads the answer until the first semantic event ...
//! let mut parser = SseParser::new();
//! parser.push_slice(b": keep-alive\n\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello\"}\n\n");
//! let mut buffered = Vec::new();
//! while let Some(item) = parser.next_item()? {
//!     let verdict = preflight_item(&item);
//!     buffered.push(item);
//!     match verdict {
//!         Preflight::Pending => continue,
//!         Preflight::Semantic => break, // commit: no other account will be tried
//!         Preflight::Failure(failure) => panic!("next account: {failure}"),
//!     }
//! }
//!
//! // ... and the committed stream is translated for the client.
//! let mut chat = ChatStream::new(&options, 1_700_000_000);
//! let mut out = BytesMut::new();
//! for item in &buffered {
//!     if let SseItem::Event(event) = item {
//!         chat.push(event, &mut out)?;
//!     }
//! }
//! assert!(out.starts_with(b"data: {\"id\":\"chatcmpl-"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod chat;
pub mod event;
pub mod responses;

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use chat::{ChatAssembler, ChatOptions, ChatStream, chat_to_responses};
pub use event::{
    EventError, EventKind, FailureKind, Preflight, ResponsesEvent, TokenUsage, UpstreamFailure,
    classify_error_body, message_text, preflight, preflight_item, preflight_sse,
    usage_limit_notice,
};
pub use responses::{
    ResponseAssembler, apply_body_rules, codex_passthrough, is_codex_client, without_account_state,
};

/// The instructions sent when a non-Codex client gives none: the backend refuses an empty string.
pub const DEFAULT_INSTRUCTIONS: &str = "You are a helpful assistant.";

/// Said in the input when only the system prompt, lifted into `instructions`, asked for JSON:
/// the backend takes `json_object` output only when an input message says "json" (OpenAI's
/// chat and Responses APIs count the system messages, which are input there).
const JSON_DIRECTIVE: &str = "Respond in JSON.";

/// Whether `text` has the word "json" in any case, as the backend looks for it.
fn mentions_json(text: &str) -> bool {
    text.as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"json"))
}

/// At most this many dropped parameters are named (each in up to [`MAX_DROPPED_NAME`]
/// characters); `...` after them says there were more. A body of a million unknown keys would
/// otherwise cost a search per key over all before it and a header of megabytes.
const MAX_DROPPED_NAMES: usize = 32;
const MAX_DROPPED_NAME: usize = 64;

/// Adds a dropped parameter's name to `dropped`, once.
fn note_dropped(dropped: &mut Vec<String>, what: &str) {
    if dropped.len() > MAX_DROPPED_NAMES {
        return;
    }
    let what = match what.char_indices().nth(MAX_DROPPED_NAME) {
        Some((end, _)) => &what[..end],
        None => what,
    };
    if dropped.iter().any(|d| d == what) {
        return;
    }
    dropped.push(if dropped.len() == MAX_DROPPED_NAMES {
        "...".to_owned()
    } else {
        what.to_owned()
    });
}

/// A client request the adapters refuse (answered with HTTP 400); the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The body is not JSON at all.
    #[error("request body is not valid JSON: {message}")]
    InvalidJson {
        /// The parser's description of the problem.
        message: String,
    },
    /// The body is empty (or only whitespace).
    #[error("request body is empty: send a JSON object")]
    Empty,
    /// The body is JSON but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// One field is missing, has the wrong type or an unsupported value.
    #[error("{field}: {problem}")]
    Field {
        /// Path of the field, e.g. `messages[2].role`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A `previous_response_id` or an `item_reference` names a response or an item the gateway
    /// does not keep (never kept, kept for another key, or gone); the message is OpenAI's.
    #[error("{message}")]
    NotFound {
        /// The field that names it: `previous_response_id` or `input[N]`.
        param: String,
        /// OpenAI's error code: `previous_response_not_found` or `item_not_found`.
        code: &'static str,
        /// OpenAI's sentence.
        message: String,
    },
}

impl RequestError {
    pub(crate) fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn previous_not_found(id: &str) -> Self {
        Self::NotFound {
            param: "previous_response_id".into(),
            code: "previous_response_not_found",
            message: format!("Previous response with id '{id}' not found."),
        }
    }

    pub(crate) fn item_not_found(index: usize, id: &str) -> Self {
        Self::NotFound {
            param: format!("input[{index}]"),
            code: "item_not_found",
            message: format!(
                "Item with id '{id}' not found. Items are not persisted when `store` is set to \
                 false. Try again with `store` set to true, or remove this item from your input."
            ),
        }
    }

    /// The offending field's path, when the error is about one field (OpenAI's `error.param`).
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Field { field, .. } => Some(field),
            Self::NotFound { param, .. } => Some(param),
            _ => None,
        }
    }

    /// OpenAI's `error.code` when it has a specific one (`previous_response_not_found`,
    /// `item_not_found`).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::NotFound { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Why a non-streaming answer could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssembleError {
    /// The upstream reported a failure (`response.failed` or `error`).
    #[error("upstream failed: {0}")]
    Failed(UpstreamFailure),
    /// The stream ended before `response.completed` / `response.incomplete`.
    #[error("upstream stream ended before the response completed")]
    Truncated,
    /// An event the assembler needed could not be parsed.
    #[error(transparent)]
    Event(#[from] EventError),
}

/// Values a platform key may bind, applied on top of what the client sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides<'a> {
    /// Replaces the client's `model`.
    pub model: Option<&'a str>,
    /// Sets `reasoning.effort` (`minimal|low|medium|high|…`, not validated here).
    pub reasoning_effort: Option<&'a str>,
}

/// A request body ready for the upstream, with what the route needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// The JSON body to POST to `{base}/responses`. Cheap to clone for each attempt.
    pub body: Bytes,
    /// The model asked for upstream (after [`Overrides::model`]).
    pub model: String,
    /// Whether the client asked for a stream. The upstream body always streams; `false` means the
    /// route assembles the final object.
    pub stream: bool,
    /// Parameter names removed from the client's body, in the order they appeared.
    pub dropped: Vec<String>,
    /// The client's `prompt_cache_key`, if any (a conversation key for account affinity).
    pub prompt_cache_key: Option<String>,
    /// Where the conversation's opening sits in `body` — the `instructions` value, then the
    /// first `input` item (an empty range when there is none) — when the adapter wrote it; `None`
    /// when not known. The session fingerprint hashes these bytes instead of parsing the body a
    /// second time.
    pub opening: Option<[Range<usize>; 2]>,
}

impl UpstreamRequest {
    /// The value for the `x-codexpool-dropped-params` response header (`None` when nothing was
    /// dropped). Names are comma-separated; characters not allowed in a header value are replaced by
    /// `?`, because unknown keys come straight from the client.
    pub fn dropped_params_header(&self) -> Option<String> {
        if self.dropped.is_empty() {
            return None;
        }
        let mut value = String::new();
        for (i, name) in self.dropped.iter().enumerate() {
            if i > 0 {
                value.push_str(", ");
            }
            value.extend(name.chars().map(|c| {
                if c.is_ascii_graphic() && c != ',' {
                    c
                } else {
                    '?'
                }
            }));
        }
        Some(value)
    }
}

/// A JSON string that borrows from the input unless it contains escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct JStr<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// A JSON object split at the top level: keys decoded, values left as raw JSON text. Order and
/// duplicate keys are kept; lookups take the last occurrence, as `serde_json::Value` would.
#[derive(Debug, Default)]
pub(crate) struct Shallow<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Shallow<'a> {
    /// The last value of `key`, `None` when absent or JSON `null`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .filter(|v| !is_null(v))
    }
}

impl<'de> Deserialize<'de> for Shallow<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShallowVisitor;
        impl<'de> Visitor<'de> for ShallowVisitor {
            type Value = Shallow<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
                while let Some(key) = map.next_key::<JStr<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key.0, value));
                }
                Ok(Shallow(entries))
            }
        }
        deserializer.deserialize_map(ShallowVisitor)
    }
}

/// Splits a client body into its top-level fields like [`parse_object`], but reads the value of
/// `key` as a `T` in the same pass and leaves it out of the fields (the last occurrence counts,
/// as with [`Shallow::get`]). A long conversation is most of a body: split off first and read
/// again, it was read twice. `None` when the body does not read that way (not JSON, not an
/// object, a `key` that is not a `T`): [`parse_object`] then names the error.
pub(crate) fn parse_object_with<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    key: &str,
) -> Option<(Shallow<'a>, Option<T>)> {
    struct WithVisitor<'k, T>(&'k str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for WithVisitor<'_, T> {
        type Value = (Shallow<'de>, Option<T>);
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
            let mut value = None;
            while let Some(JStr(key)) = map.next_key()? {
                if key == self.0 {
                    value = Some(map.next_value()?);
                } else {
                    entries.push((key, map.next_value::<&'de RawValue>()?));
                }
            }
            Ok((Shallow(entries), value))
        }
    }
    // From text: one UTF-8 check for the whole body instead of one per captured value.
    let body = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(body);
    let split = de
        .deserialize_map(WithVisitor(key, std::marker::PhantomData))
        .ok()?;
    de.end().ok()?;
    Some(split)
}

/// Splits a client body into its top-level fields.
pub(crate) fn parse_object(body: &[u8]) -> Result<Shallow<'_>, RequestError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => RequestError::NotAnObject,
        _ if body.trim_ascii().is_empty() => RequestError::Empty,
        _ => RequestError::InvalidJson {
            message: e.to_string(),
        },
    })
}

pub(crate) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// `raw` as a string, `None` when it is not one.
pub(crate) fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<JStr<'_>>(raw.get())
        .ok()
        .map(|s| s.0)
}

/// The field as a string: `Ok(None)` when absent/null, an error naming it when of another type.
pub(crate) fn str_field<'a>(
    obj: &Shallow<'a>,
    key: &str,
    path: impl FnOnce() -> String,
) -> Result<Option<Cow<'a, str>>, RequestError> {
    match obj.get(key) {
        None => Ok(None),
        Some(raw) => raw_str(raw)
            .map(Some)
            .ok_or_else(|| RequestError::field(path(), "must be a string")),
    }
}

/// The field as a boolean: `Ok(None)` when absent/null, an error naming it when of another type.
pub(crate) fn bool_field(obj: &Shallow<'_>, key: &str) -> Result<Option<bool>, RequestError> {
    as_bool(key, obj.get(key))
}

/// A value of field `key` as a boolean: `Ok(None)` when absent/null, an error naming the field
/// when of another type.
pub(crate) fn as_bool(key: &str, value: Option<&RawValue>) -> Result<Option<bool>, RequestError> {
    match value.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(RequestError::field(key, "must be a boolean")),
    }
}

/// A sub-slice of `parent` as `Bytes` without copying when it lies inside `parent` (it always does
/// for values borrowed from it; the copy is a guard, never the expected path).
pub(crate) fn sub_bytes(parent: &Bytes, sub: &[u8]) -> Bytes {
    let start = parent.as_ptr() as usize;
    let sub_start = sub.as_ptr() as usize;
    if sub_start >= start && sub_start + sub.len() <= start + parent.len() {
        let offset = sub_start - start;
        parent.slice(offset..offset + sub.len())
    } else {
        Bytes::copy_from_slice(sub)
    }
}

/// Appends `value` as JSON. Only used with types whose serialization cannot fail (strings,
/// numbers, derived structs of those) into a `Vec`, which cannot fail to grow.
pub(crate) fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        debug_assert!(false, "serializing into a Vec cannot fail");
    }
}

/// Writes a JSON object field by field, in the order given.
pub(crate) struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> ObjectWriter<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_json(self.out, key);
        self.out.push(b':');
    }

    /// A field whose value is already JSON text.
    pub(crate) fn raw(&mut self, key: &str, json: &str) {
        self.raw_with(key, |out| out.extend_from_slice(json.as_bytes()));
    }

    /// A field whose value `write` puts out as JSON text; where it went in the output.
    pub(crate) fn raw_with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        self.key(key);
        let start = self.out.len();
        write(self.out);
        start..self.out.len()
    }

    /// A field serialized with serde.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        self.value_span(key, value);
    }

    /// A field serialized with serde; where its value went in the output.
    pub(crate) fn value_span<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Range<usize> {
        self.key(key);
        let start = self.out.len();
        write_json(self.out, value);
        start..self.out.len()
    }

    /// An array field, each item written by `write`; where its first item went in the output.
    pub(crate) fn items<T>(
        &mut self,
        key: &str,
        items: &[T],
        write: impl Fn(&T, &mut Vec<u8>),
    ) -> Option<Range<usize>> {
        self.key(key);
        self.out.push(b'[');
        let mut first = None;
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            let start = self.out.len();
            write(item, self.out);
            first.get_or_insert(start..self.out.len());
        }
        self.out.push(b']');
        first
    }

    pub(crate) fn end(self) {
        self.out.push(b'}');
    }
}

/// A JSON array of raw items, in their `output_index` order (the final `output` a stream's
/// `response.output_item.done` events add up to).
pub(crate) fn items_array(items: &mut [(u64, Bytes)]) -> String {
    items.sort_by_key(|(index, _)| *index);
    let mut out = Vec::with_capacity(items.iter().map(|(_, i)| i.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, (_, item)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    // Items are slices of UTF-8 event payloads.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `object` (the text of a JSON object) with the value of `key` replaced by `value` (JSON text),
/// or added at the end when absent; the other fields are kept verbatim and in order. `None` when
/// `object` is not a JSON object.
pub(crate) fn with_field(object: &str, key: &str, value: &str) -> Option<Vec<u8>> {
    let fields: Shallow<'_> = serde_json::from_str(object).ok()?;
    let mut out = Vec::with_capacity(object.len() + key.len() + value.len() + 4);
    let mut w = ObjectWriter::new(&mut out);
    let mut seen = false;
    for (k, v) in &fields.0 {
        if k == key {
            seen = true;
            w.raw(k, value);
        } else {
            w.raw(k, v.get());
        }
    }
    if !seen {
        w.raw(key, value);
    }
    w.end();
    Some(out)
}

/// The client's own body (`chat`: Chat Completions, else Responses) with what its key binds,
/// for an upstream that takes the client's dialect (the fallback): every `model` replaced by the
/// bound model, and the bound effort as `reasoning_effort` (chat) or `reasoning.effort`
/// (Responses, the object's other fields kept). The body as sent when the key binds neither, or
/// when it is not a JSON object (the adapters refuse those before any upstream is asked).
pub(crate) fn bind_client_body(body: &Bytes, overrides: Overrides<'_>, chat: bool) -> Bytes {
    if overrides == Overrides::default() {
        return body.clone();
    }
    let Ok(obj) = parse_object(body) else {
        return body.clone();
    };
    let effort_key = if chat {
        "reasoning_effort"
    } else {
        "reasoning"
    };
    let effort = overrides.reasoning_effort.map(|effort| match chat {
        true => serde_json::Value::from(effort).to_string(),
        // A `reasoning` that is not an object was refused before: the bound effort alone then.
        false => responses::reasoning_json(obj.get("reasoning"), Some(effort))
            .or_else(|_| responses::reasoning_json(None, Some(effort)))
            .ok()
            .flatten()
            .map(Cow::into_owned)
            .unwrap_or_default(),
    });
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut w = ObjectWriter::new(&mut out);
    let (mut saw_model, mut saw_effort) = (false, false);
    for (key, value) in &obj.0 {
        match (key.as_ref(), overrides.model, &effort) {
            ("model", Some(model), _) => {
                saw_model = true;
                w.value(key, model);
            }
            (k, _, Some(effort)) if k == effort_key => {
                saw_effort = true;
                w.raw(key, effort);
            }
            _ => w.raw(key, value.get()),
        }
    }
    if let (false, Some(model)) = (saw_model, overrides.model) {
        w.value("model", model);
    }
    if let (false, Some(effort)) = (saw_effort, &effort) {
        w.raw(effort_key, effort);
    }
    w.end();
    Bytes::from(out)
}

/// Helpers shared by the adapters' property tests.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;

    /// Arbitrary JSON values biased towards the keys and values the adapters look at.
    pub(crate) fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                "message",
                "function_call",
                "reasoning",
                "output_text",
                "user",
                "system",
                "assistant",
                "tool",
                "developer",
                "text",
                "image_url",
                "function",
            ])
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "type",
                        "role",
                        "content",
                        "text",
                        "id",
                        "call_id",
                        "name",
                        "arguments",
                        "summary",
                        "output",
                        "usage",
                        "error",
                        "code",
                        "message",
                        "input_tokens",
                        "tool_calls",
                        "function",
                        "image_url",
                        "url",
                        "refusal",
                        "x",
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..6,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shallow_keeps_order_and_borrows() {
        let body = br#"{"b":[1,2],"a":"x","b":{"c":null},"n":null}"#;
        let obj = parse_object(body).unwrap();
        let keys: Vec<&str> = obj.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "b", "n"]);
        assert_eq!(obj.get("b").unwrap().get(), r#"{"c":null}"#);
        assert!(obj.get("n").is_none());
        assert!(matches!(obj.0[1].0, Cow::Borrowed(_)));
        assert_eq!(parse_object(b"[1]").unwrap_err(), RequestError::NotAnObject);
        assert_eq!(parse_object(b"").unwrap_err(), RequestError::Empty);
        assert_eq!(parse_object(b" \r\n").unwrap_err(), RequestError::Empty);
        assert!(matches!(
            parse_object(b"{\"a\":").unwrap_err(),
            RequestError::InvalidJson { .. }
        ));
        assert!(matches!(
            parse_object(b"{} x").unwrap_err(),
            RequestError::InvalidJson { .. }
        ));
        // Deep nesting is skipped without recursion (no stack overflow) and kept verbatim.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let obj = parse_object(deep.as_bytes()).unwrap();
        assert_eq!(obj.get("a").unwrap().get().len(), 200_000);
    }

    #[test]
    fn jstr_borrows_without_escapes() {
        let s: JStr<'_> = serde_json::from_str("\"abc\"").unwrap();
        assert!(matches!(s.0, Cow::Borrowed("abc")));
        let s: JStr<'_> = serde_json::from_str("\"a\\nb\"").unwrap();
        assert_eq!(s.0, "a\nb");
    }

    #[test]
    fn dropped_header_is_a_valid_header_value() {
        let req = UpstreamRequest {
            body: Bytes::new(),
            model: "m".into(),
            stream: true,
            dropped: vec!["temperature".into(), "wéird key,\n".into()],
            prompt_cache_key: None,
            opening: None,
        };
        assert_eq!(
            req.dropped_params_header().as_deref(),
            Some("temperature, w?ird?key??")
        );
    }

    #[test]
    fn bind_client_body_applies_the_key_once() {
        let bind = |body: &str, model, effort, chat| {
            let overrides = Overrides {
                model,
                reasoning_effort: effort,
            };
            let out = bind_client_body(&Bytes::copy_from_slice(body.as_bytes()), overrides, chat);
            String::from_utf8(out.to_vec()).unwrap()
        };
        let body = r#"{"model":"a","reasoning_effort":null,"n":1,"model":"b"}"#;
        assert_eq!(bind(body, None, None, true), body, "nothing bound: as sent");
        assert_eq!(
            bind(body, Some("m"), Some("low"), true),
            r#"{"model":"m","reasoning_effort":"low","n":1,"model":"m"}"#
        );
        assert_eq!(
            bind(r#"{"input":"x"}"#, Some("m"), Some("high"), false),
            r#"{"input":"x","model":"m","reasoning":{"effort":"high"}}"#
        );
        assert_eq!(
            bind(
                r#"{"model":"a","reasoning":{"summary":"auto","effort":"low"}}"#,
                None,
                Some("high"),
                false
            ),
            r#"{"model":"a","reasoning":{"effort":"high","summary":"auto"}}"#
        );
        // Not an object (refused before any upstream is asked): left alone.
        assert_eq!(bind("[1]", Some("m"), None, true), "[1]");
    }

    #[test]
    fn with_field_replaces_or_appends() {
        let out = with_field(
            r#"{"a":1, "output" : [], "b":{"c":"\u00e9"}}"#,
            "output",
            "[2]",
        );
        assert_eq!(out.unwrap(), br#"{"a":1,"output":[2],"b":{"c":"\u00e9"}}"#);
        let out = with_field(r#"{"a":1}"#, "output", "[]");
        assert_eq!(out.unwrap(), br#"{"a":1,"output":[]}"#);
        assert!(with_field("[1]", "output", "[]").is_none());
    }

    #[test]
    fn sub_bytes_slices_or_copies() {
        let parent = Bytes::from_static(b"hello world");
        let sub = sub_bytes(&parent, &parent[6..]);
        assert_eq!(sub.as_ref(), b"world");
        assert_eq!(sub.as_ptr(), parent[6..].as_ptr());
        let other = b"world".to_vec();
        assert_eq!(sub_bytes(&parent, &other).as_ref(), b"world");
    }
}
