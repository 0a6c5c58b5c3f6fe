//! OpenAI Chat Completions on top of the Codex Responses backend (PROTOCOL.md §5).
//!
//! [`chat_to_responses`] maps a chat request to a Responses body that already satisfies the body
//! rules (messages to input items, tools flattened, `response_format` to `text.format`, unsupported
//! sampling parameters dropped and named). On the way back, one state machine turns Responses
//! events into chat output and feeds one of two sinks: [`ChatStream`] writes
//! `chat.completion.chunk` SSE frames straight into a [`BytesMut`] (the constant head of every chunk
//! is serialized once per stream, only the delta text is escaped per event), and
//! [`ChatAssembler`] accumulates one `chat.completion` for `stream: false` clients. Sharing the
//! state machine keeps both answers identical: same tool-call indices, same `finish_reason`, same
//! handling of streams that only announce text in `output_item.done`. A refusal (a `refusal`
//! content part, streamed as `response.refusal.delta`) becomes `refusal`, never `content`:
//! openai-python's `chat.completions.parse` reads `message.refusal` to tell a declined request
//! from an answer.
//!
//! The legacy function API (2023, deprecated but still accepted by OpenAI and still sent by
//! older clients such as LangChain's `create_openai_functions_agent`) is translated too:
//! `functions` become the same tools as `tools`, `function_call` the same tool choice as
//! `tool_choice`, and its messages (an assistant `function_call`, a `function` message with the
//! result) become `function_call` / `function_call_output` items. Those messages carry no call
//! ids, so the gateway makes them from the assistant message's position (`call_fn_<index>`) and
//! gives a `function` message the id of the latest unanswered call of its name (a result with
//! no call, e.g. retrieved text put in as one, gets a call of its own). A request that
//! used the legacy form ([`ChatOptions::legacy_functions`]) is answered in it: the state machine
//! announces a call as `function_call` (`delta.function_call`, `message.function_call`) instead
//! of `tool_calls`, ends with `finish_reason: "function_call"`, and passes on only the model's
//! first call, as that API returns one.
//!
//! The backend has no `stop`, so the client's stop sequences ([`ChatOptions::stop`], which ReAct
//! agents rely on) are applied here, in the shared state machine, on the way back. The answer text
//! is cut before the earliest sequence, wherever the deltas split it: a streamed answer holds back
//! only a tail that could still be the start of one, and lets it go as soon as the next text (or
//! a tool call, or the end) shows it is not. After the cut nothing more is sent (text, refusal,
//! reasoning, tool calls) and the finish reason is `stop`. The generation itself still runs to
//! its end upstream: the stream is read to `response.completed`, so the usage the client gets and
//! the request log records is everything generated, not only what was kept. Reasoning text is
//! not searched for stop sequences. Without `stop` nothing is held back or searched.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::event::{
    EventError, EventKind, FailureKind, ItemRef, ResponseRef, ResponsesEvent, TokenUsage,
    UpstreamFailure,
};
use super::responses::include_list;
use super::{
    AssembleError, DEFAULT_INSTRUCTIONS, ObjectWriter, Overrides, RequestError, Shallow,
    UpstreamRequest, bool_field, parse_object, parse_object_with, raw_str, write_json,
};
use crate::sse::{DONE_FRAME, SseEvent};

/// What the route needs to answer a chat client, decided from its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatOptions {
    /// The model asked for (after [`Overrides::model`]); reported when the upstream names none.
    pub model: String,
    /// `stream`: answer with chunks (else one `chat.completion`).
    pub stream: bool,
    /// `stream_options.include_usage`: send a last chunk with `usage` before `[DONE]`.
    pub include_usage: bool,
    /// `stop`: the answer ends before the first of these sequences (at most [`MAX_STOPS`], none
    /// empty). The backend has no such field, so the gateway cuts the text on the way back;
    /// empty means no cutting at all.
    pub stop: Vec<String>,
    /// The request used the legacy `functions` / `function_call` API: a function call is
    /// answered in that form (`message.function_call`, `delta.function_call`, `finish_reason:
    /// "function_call"`), and only the first one the model makes, as that API returns one.
    pub legacy_functions: bool,
}

/// The most `stop` sequences a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// Top-level chat fields that are translated; anything else is dropped and reported.
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "verbosity",
    "stream",
    "stream_options",
    "stop",
    "n",
    "prompt_cache_key",
    "service_tier",
];

/// Maps a Chat Completions request body to a Responses body (already following the body rules).
///
/// Leading `system`/`developer` messages become `instructions` (else [`DEFAULT_INSTRUCTIONS`]),
/// later ones `developer` messages; user text and `image_url` parts become `input_text` and
/// `input_image`; assistant text becomes an `output_text` message and its `tool_calls`
/// `function_call` items; `tool` messages become `function_call_output` items. `tools`,
/// `tool_choice`, `parallel_tool_calls`, `response_format`, `reasoning_effort` (with
/// `summary: "auto"`, so reasoning reaches the client as `reasoning_content`) and `verbosity` are
/// translated.
///
/// The legacy function API is translated as well: `functions` as the same tools as `tools`
/// (and `parallel_tool_calls: false` unless the client sets it, since a legacy answer holds one
/// call), `function_call` (`"auto"`, `"none"`, `{"name"}`) as the same `tool_choice`, an
/// assistant's `function_call` as a `function_call` item with the call id `call_fn_<index of the
/// assistant message>`, and a `function` message as the `function_call_output` of the latest
/// unanswered call of its `name` (none: after a `function_call` item of its own, with no
/// arguments and the id made from its index). Using it sets [`ChatOptions::legacy_functions`];
/// mixing it with `tools` / `tool_choice`, empty `functions` and `function_call` without
/// `functions` are errors, as with OpenAI.
///
/// `stop` stays here, in [`ChatOptions::stop`], for the answer to be cut on the way
/// back; `temperature`, `top_p`, `max_tokens`, penalties, `logprobs`, `seed`, `user`, `metadata`
/// and unknown keys are dropped and listed in [`UpstreamRequest::dropped`]. `n` other than 1 is an
/// error. Errors name the field (`messages[2].role: unknown role "foo"`).
pub fn chat_to_responses(
    body: &[u8],
    overrides: &Overrides<'_>,
) -> Result<(UpstreamRequest, ChatOptions), RequestError> {
    // One pass over the body when it reads well; else the field-by-field reading names the error.
    let (obj, read_messages) = match parse_object_with::<Vec<MessageFields<'_>>>(body, "messages") {
        Some(split) => split,
        None => (parse_object(body)?, None),
    };
    let mut dropped: Vec<String> = Vec::new();
    for (key, value) in &obj.0 {
        if !CHAT_FIELDS.contains(&key.as_ref())
            && !super::is_null(value)
            && !dropped.iter().any(|d| d == key)
        {
            dropped.push(key.to_string());
        }
    }

    let client_model = super::str_field(&obj, "model", || "model".to_owned())?;
    let model: Cow<'_, str> = match (overrides.model, client_model) {
        (Some(forced), _) => Cow::Borrowed(forced),
        (None, Some(model)) if !model.trim().is_empty() => model,
        (None, Some(_)) => return Err(RequestError::field("model", "must not be empty")),
        (None, None) => return Err(RequestError::field("model", "required")),
    };
    if let Some(n) = obj.get("n")
        && n.get() != "1"
    {
        return Err(RequestError::field("n", "only n=1 is supported"));
    }
    // The legacy function API or the tools API, not both:
    // which one the request used decides the form of the answer.
    let functions = not_null(obj.get("functions"));
    let function_call = not_null(obj.get("function_call"));
    for (legacy, given) in [("functions", functions), ("function_call", function_call)] {
        for modern in ["tools", "tool_choice"] {
            if given.is_some() && not_null(obj.get(modern)).is_some() {
                return Err(RequestError::field(
                    legacy,
                    format!("cannot be used together with {modern}"),
                ));
            }
        }
    }
    let legacy_functions = functions.is_some() || function_call.is_some();
    let stream = bool_field(&obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None => false,
        Some(raw) => {
            let options: Shallow<'_> = serde_json::from_str(raw.get())
                .map_err(|_| RequestError::field("stream_options", "must be an object"))?;
            bool_field(&options, "include_usage")
                .map_err(|_| {
                    RequestError::field("stream_options.include_usage", "must be a boolean")
                })?
                .unwrap_or(false)
        }
    };

    let stop = match obj.get("stop") {
        None => Vec::new(),
        Some(raw) => stop_sequences(raw)?,
    };

    let messages = match read_messages {
        Some(messages) => messages,
        None => message_fields(
            obj.get("messages")
                .ok_or_else(|| RequestError::field("messages", "required"))?,
        )?,
    };
    if messages.is_empty() {
        return Err(RequestError::field("messages", "must not be empty"));
    }
    let mut instructions = String::new();
    let mut input: Vec<Item<'_>> = Vec::with_capacity(messages.len());
    let mut leading = true;
    let mut pending = PendingCalls::new();
    for (i, message) in messages.into_iter().enumerate() {
        convert_message(
            i,
            message,
            &mut leading,
            &mut instructions,
            &mut input,
            &mut pending,
        )?;
    }
    if instructions.trim().is_empty() {
        DEFAULT_INSTRUCTIONS.clone_into(&mut instructions);
    }

    // `null` is as good as absent for these too (some clients send every field).
    let tools = match (not_null(obj.get("tools")), functions) {
        (Some(raw), _) => Some(convert_tools(raw)?),
        (None, Some(raw)) => Some(convert_functions(raw)?),
        (None, None) => None,
    };
    let tool_choice = match (not_null(obj.get("tool_choice")), function_call) {
        (Some(raw), _) => Some(convert_tool_choice(raw)?),
        (None, Some(raw)) => {
            let choice = convert_function_call(raw)?;
            // As OpenAI answers.
            if functions.is_none() {
                return Err(RequestError::field(
                    "function_call",
                    "only allowed when functions are given",
                ));
            }
            Some(choice)
        }
        (None, None) => None,
    };
    // The legacy answer holds one function call: unless the client says otherwise, the model is
    // asked for one at a time rather than making several of which the client would see one.
    let parallel_tool_calls =
        bool_field(&obj, "parallel_tool_calls")?.or_else(|| functions.is_some().then_some(false));
    let format = obj
        .get("response_format")
        .map(convert_response_format)
        .transpose()?;
    let verbosity = super::str_field(&obj, "verbosity", || "verbosity".to_owned())?;
    let effort = match overrides.reasoning_effort {
        Some(effort) => Some(Cow::Borrowed(effort)),
        None => super::str_field(&obj, "reasoning_effort", || "reasoning_effort".to_owned())?,
    };
    let prompt_cache_key =
        super::str_field(&obj, "prompt_cache_key", || "prompt_cache_key".to_owned())?;
    let include = include_list(None, effort.is_some())?;

    // A Responses item takes ~50 bytes more than the chat message it comes from.
    let mut out = Vec::with_capacity(body.len() + 256 + 64 * input.len());
    let mut w = ObjectWriter::new(&mut out);
    w.value("model", &*model);
    let instructions_span = w.value_span("instructions", &instructions);
    let first_item = w.items("input", &input, Item::write).unwrap_or_default();
    if let Some(tools) = &tools {
        w.value("tools", tools);
    }
    if let Some(choice) = &tool_choice {
        w.value("tool_choice", choice);
    }
    if let Some(parallel) = parallel_tool_calls {
        w.value("parallel_tool_calls", &parallel);
    }
    if let Some(effort) = &effort {
        w.value(
            "reasoning",
            &Reasoning {
                effort,
                summary: "auto",
            },
        );
    }
    w.raw("store", "false");
    w.raw("stream", "true");
    if !include.is_empty() {
        w.value("include", &include);
    }
    if let Some(key) = &prompt_cache_key {
        w.value("prompt_cache_key", key);
    }
    if format.is_some() || verbosity.is_some() {
        w.value(
            "text",
            &TextConfig {
                format,
                verbosity: verbosity.as_deref(),
            },
        );
    }
    if let Some(tier) = obj.get("service_tier") {
        w.raw("service_tier", tier.get());
    }
    w.end();

    let model = model.into_owned();
    Ok((
        UpstreamRequest {
            body: Bytes::from(out),
            model: model.clone(),
            stream,
            dropped,
            prompt_cache_key: prompt_cache_key.map(Cow::into_owned),
            opening: Some([instructions_span, first_item]),
        },
        ChatOptions {
            model,
            stream,
            include_usage,
            stop,
            legacy_functions,
        },
    ))
}

/// `stop`: a string or an array of at most [`MAX_STOPS`] strings; empty strings are left out
/// (they would match everywhere).
fn stop_sequences(raw: &RawValue) -> Result<Vec<String>, RequestError> {
    const SHAPE: &str = "must be a string or an array of strings";
    let sequences = match raw_str(raw) {
        Some(one) => vec![one],
        None => {
            let items: Vec<&RawValue> =
                serde_json::from_str(raw.get()).map_err(|_| RequestError::field("stop", SHAPE))?;
            if items.len() > MAX_STOPS {
                return Err(RequestError::field(
                    "stop",
                    format!(
                        "at most {MAX_STOPS} sequences are allowed, got {}",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .map(|item| raw_str(item).ok_or_else(|| RequestError::field("stop", SHAPE)))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(sequences
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(Cow::into_owned)
        .collect())
}

/// A Responses input item.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Item<'a> {
    Message {
        role: &'static str,
        content: Vec<Part<'a>>,
    },
    FunctionCall {
        call_id: Cow<'a, str>,
        name: Cow<'a, str>,
        arguments: Cow<'a, str>,
    },
    FunctionCallOutput {
        call_id: Cow<'a, str>,
        output: Text<'a>,
    },
}

impl Item<'_> {
    /// Writes the item as its JSON: messages (most of a conversation) with their fixed keys and
    /// tags as literals, which serde would escape one by one; the rest as serde writes it.
    fn write(&self, out: &mut Vec<u8>) {
        let Self::Message { role, content } = self else {
            return write_json(out, self);
        };
        // Roles are fixed words with nothing to escape.
        out.extend_from_slice(b"{\"type\":\"message\",\"role\":\"");
        out.extend_from_slice(role.as_bytes());
        out.extend_from_slice(b"\",\"content\":[");
        for (i, part) in content.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let (tag, text): (&[u8], _) = match part {
                Part::InputText { text } => (b"{\"type\":\"input_text\",\"text\":", text),
                Part::OutputText { text } => (b"{\"type\":\"output_text\",\"text\":", text),
                Part::InputImage { .. } => {
                    write_json(out, part);
                    continue;
                }
            };
            out.extend_from_slice(tag);
            match text {
                Text::Literal(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Text::Made(text) => write_json(out, text),
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
}

/// A content part of a Responses message.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    InputText {
        text: Text<'a>,
    },
    OutputText {
        text: Text<'a>,
    },
    InputImage {
        image_url: Cow<'a, str>,
        detail: Cow<'a, str>,
    },
}

/// A text on its way upstream: the client's JSON string literal, written back verbatim (message
/// texts are most of a long conversation's bytes; unescaping and re-escaping them cost more than
/// the rest of the translation), or text the gateway put together.
#[derive(Debug, Clone)]
enum Text<'a> {
    /// A JSON string token from the client's body, quotes and escapes included.
    Literal(&'a RawValue),
    /// Text made here (several parts joined).
    Made(Cow<'a, str>),
}

impl<'a> Text<'a> {
    /// `raw` when it is a string literal (a valid JSON value that starts with a quote).
    fn literal(raw: &'a RawValue) -> Option<Self> {
        raw.get().starts_with('"').then_some(Self::Literal(raw))
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Literal(raw) => raw.get() == "\"\"",
            Self::Made(text) => text.is_empty(),
        }
    }

    /// The text itself (unescaped); an error naming `path` when the literal does not decode (a
    /// lone surrogate escape).
    fn into_str(self, path: &dyn Fn() -> String) -> Result<Cow<'a, str>, RequestError> {
        match self {
            Self::Literal(raw) => {
                raw_str(raw).ok_or_else(|| RequestError::field(path(), "is not valid text"))
            }
            Self::Made(text) => Ok(text),
        }
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Literal(raw) => raw.serialize(serializer),
            Self::Made(text) => text.serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct Reasoning<'a> {
    effort: &'a str,
    summary: &'static str,
}

#[derive(Serialize)]
struct TextConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Format<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verbosity: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Format<'a> {
    Text,
    JsonObject,
    JsonSchema {
        name: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<&'a RawValue>,
        schema: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        strict: Option<&'a RawValue>,
    },
}

#[derive(Serialize)]
struct FlatTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a RawValue>,
    parameters: &'a RawValue,
    strict: StrictFlag<'a>,
}

/// The client's `strict`, else `false`: chat tools default to non-strict, Responses tools to
/// strict, and strict mode rejects most hand-written schemas.
enum StrictFlag<'a> {
    Client(&'a RawValue),
    Default,
}

impl Serialize for StrictFlag<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Client(raw) => raw.serialize(s),
            Self::Default => s.serialize_bool(false),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoice<'a> {
    Mode(Cow<'a, str>),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        name: Cow<'a, str>,
    },
}

/// Fields of a chat message, read leniently and checked one by one for precise errors.
#[derive(Deserialize)]
struct MessageFields<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_call_id: Option<&'a RawValue>,
    /// Legacy: the function a `function` message answers.
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    /// Legacy: an assistant message's one call, `{name, arguments}`.
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    image_url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ImageUrlFields<'a> {
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    detail: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolCallFields<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    function: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FunctionFields<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow)]
    strict: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

fn not_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| !super::is_null(r))
}

/// `raw` parsed as `T`, or an error naming `path`.
fn fields<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    path: &dyn Fn() -> String,
) -> Result<T, RequestError> {
    serde_json::from_str(raw.get()).map_err(|_| RequestError::field(path(), "must be an object"))
}

/// A required string field.
fn required_str<'a>(
    raw: Option<&'a RawValue>,
    path: &dyn Fn() -> String,
) -> Result<Cow<'a, str>, RequestError> {
    match not_null(raw) {
        None => Err(RequestError::field(path(), "required")),
        Some(raw) => raw_str(raw).ok_or_else(|| RequestError::field(path(), "must be a string")),
    }
}

/// A required string field as a [`Text`] (its literal, kept as it arrived).
fn required_text<'a>(
    raw: Option<&'a RawValue>,
    path: &dyn Fn() -> String,
) -> Result<Text<'a>, RequestError> {
    match not_null(raw) {
        None => Err(RequestError::field(path(), "required")),
        Some(raw) => {
            Text::literal(raw).ok_or_else(|| RequestError::field(path(), "must be a string"))
        }
    }
}

/// An array field as raw elements.
fn array<'a>(
    raw: &'a RawValue,
    path: &dyn Fn() -> String,
) -> Result<Vec<&'a RawValue>, RequestError> {
    serde_json::from_str(raw.get()).map_err(|_| RequestError::field(path(), "must be an array"))
}

/// The messages' fields, in one pass over what is most of a long request; when that fails, a
/// second pass finds the message at fault and names it.
fn message_fields(messages: &RawValue) -> Result<Vec<MessageFields<'_>>, RequestError> {
    if let Ok(all) = serde_json::from_str(messages.get()) {
        return Ok(all);
    }
    let raws: Vec<&RawValue> = serde_json::from_str(messages.get())
        .map_err(|_| RequestError::field("messages", "must be an array"))?;
    raws.into_iter()
        .enumerate()
        .map(|(i, m)| fields(m, &|| format!("messages[{i}]")))
        .collect()
}

/// Legacy assistant `function_call`s not answered yet by a `function` message: the function's
/// name and the index of the assistant message, which the call id is made from.
type PendingCalls<'a> = Vec<(Cow<'a, str>, usize)>;

/// The call id of the legacy `function_call` of the assistant message at `index`. Legacy
/// messages carry no ids, but Responses input pairs a call and its output by id; made from the
/// position, the same history gets the same ids on every turn (what prompt caching needs).
fn legacy_call_id(index: usize) -> String {
    format!("call_fn_{index}")
}

fn convert_message<'a>(
    i: usize,
    m: MessageFields<'a>,
    leading: &mut bool,
    instructions: &mut String,
    input: &mut Vec<Item<'a>>,
    pending: &mut PendingCalls<'a>,
) -> Result<(), RequestError> {
    let path = |field: &str| format!("messages[{i}]{field}");
    let role = required_str(m.role, &|| path(".role"))?;
    let content = not_null(m.content);
    let content_path = || path(".content");
    match role.as_ref() {
        "system" | "developer" => {
            let text = text_content(content, &content_path, false)?;
            if *leading {
                if !instructions.is_empty() && !text.is_empty() {
                    instructions.push_str("\n\n");
                }
                instructions.push_str(&text.into_str(&content_path)?);
            } else {
                input.push(Item::Message {
                    role: "developer",
                    content: vec![Part::InputText { text }],
                });
            }
            return Ok(());
        }
        "user" => input.push(Item::Message {
            role: "user",
            content: user_content(content, &content_path)?,
        }),
        "assistant" => {
            let text = text_content(content, &content_path, true)?;
            if !text.is_empty() {
                input.push(Item::Message {
                    role: "assistant",
                    content: vec![Part::OutputText { text }],
                });
            }
            if let Some(call) = not_null(m.function_call) {
                let call_path = |field: &str| format!("messages[{i}].function_call{field}");
                let f: FunctionFields<'a> = fields(call, &|| call_path(""))?;
                let name = required_str(f.name, &|| call_path(".name"))?;
                pending.push((name.clone(), i));
                input.push(Item::FunctionCall {
                    call_id: Cow::Owned(legacy_call_id(i)),
                    name,
                    arguments: call_arguments(f.arguments),
                });
            }
            if let Some(calls) = not_null(m.tool_calls) {
                let calls_path = || path(".tool_calls");
                for (k, call) in array(calls, &calls_path)?.into_iter().enumerate() {
                    let call_path = |field: &str| format!("messages[{i}].tool_calls[{k}]{field}");
                    input.push(convert_tool_call(call, &call_path)?);
                }
            }
        }
        "tool" => {
            let call_id = required_str(m.tool_call_id, &|| path(".tool_call_id"))?;
            let output = text_content(content, &content_path, false)?;
            input.push(Item::FunctionCallOutput { call_id, output });
        }
        // Legacy: the result of the latest unanswered assistant `function_call` of that name.
        // The legacy API never required the call (apps put retrieved text in as a function
        // result); the backend pairs every output with a call, so a result without one gets a
        // call of its own, with no arguments, made from this message's index.
        "function" => {
            let name = required_str(m.name, &|| path(".name"))?;
            let output = text_content(content, &content_path, false)?;
            let call_id = match pending.iter().rposition(|(called, _)| *called == name) {
                Some(at) => legacy_call_id(pending.remove(at).1),
                None => {
                    input.push(Item::FunctionCall {
                        call_id: Cow::Owned(legacy_call_id(i)),
                        name,
                        arguments: Cow::Borrowed("{}"),
                    });
                    legacy_call_id(i)
                }
            };
            input.push(Item::FunctionCallOutput {
                call_id: Cow::Owned(call_id),
                output,
            });
        }
        other => {
            return Err(RequestError::field(
                path(".role"),
                format!("unknown role {}", quoted(other)),
            ));
        }
    }
    *leading = false;
    Ok(())
}

fn convert_tool_call<'a>(
    call: &'a RawValue,
    path: &dyn Fn(&str) -> String,
) -> Result<Item<'a>, RequestError> {
    let c: ToolCallFields<'a> = fields(call, &|| path(""))?;
    if let Some(kind) = not_null(c.kind) {
        let kind =
            raw_str(kind).ok_or_else(|| RequestError::field(path(".type"), "must be a string"))?;
        if kind != "function" {
            return Err(RequestError::field(
                path(".type"),
                format!("unsupported tool call type {}", quoted(&kind)),
            ));
        }
    }
    let call_id = required_str(c.id, &|| path(".id"))?;
    let function =
        not_null(c.function).ok_or_else(|| RequestError::field(path(".function"), "required"))?;
    let f: FunctionFields<'a> = fields(function, &|| path(".function"))?;
    let name = required_str(f.name, &|| path(".function.name"))?;
    Ok(Item::FunctionCall {
        call_id,
        name,
        arguments: call_arguments(f.arguments),
    })
}

/// A call's `arguments` as JSON text (`{}` when missing).
fn call_arguments(arguments: Option<&RawValue>) -> Cow<'_, str> {
    match not_null(arguments) {
        None => Cow::Borrowed("{}"),
        // Arguments are JSON text; some clients send the object itself.
        Some(raw) => raw_str(raw).unwrap_or(Cow::Borrowed(raw.get())),
    }
}

/// Text of a system/assistant/tool message: a string, or `text` (and for assistants `refusal`)
/// parts joined by newlines.
fn text_content<'a>(
    content: Option<&'a RawValue>,
    path: &dyn Fn() -> String,
    assistant: bool,
) -> Result<Text<'a>, RequestError> {
    let Some(content) = content else {
        return Ok(Text::Made(Cow::Borrowed("")));
    };
    if let Some(text) = Text::literal(content) {
        return Ok(text);
    }
    let parts = serde_json::from_str::<Vec<&RawValue>>(content.get())
        .map_err(|_| RequestError::field(path(), "must be a string or an array of parts"))?;
    let mut texts: Vec<Text<'a>> = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let part_path = |field: &str| format!("{}[{j}]{field}", path());
        let p: PartFields<'a> = fields(part, &|| part_path(""))?;
        let kind = required_str(p.kind, &|| part_path(".type"))?;
        let text = match kind.as_ref() {
            "text" => required_text(p.text, &|| part_path(".text"))?,
            "refusal" if assistant => required_text(p.refusal, &|| part_path(".refusal"))?,
            other => {
                return Err(RequestError::field(
                    part_path(".type"),
                    format!("unsupported content part {}", quoted(other)),
                ));
            }
        };
        texts.push(text);
    }
    Ok(match texts.len() {
        0 => Text::Made(Cow::Borrowed("")),
        1 => texts.swap_remove(0),
        _ => {
            let texts = texts
                .into_iter()
                .map(|t| t.into_str(path))
                .collect::<Result<Vec<_>, _>>()?;
            Text::Made(Cow::Owned(texts.join("\n")))
        }
    })
}

fn user_content<'a>(
    content: Option<&'a RawValue>,
    path: &dyn Fn() -> String,
) -> Result<Vec<Part<'a>>, RequestError> {
    let Some(content) = content else {
        return Err(RequestError::field(path(), "required"));
    };
    if let Some(text) = Text::literal(content) {
        return Ok(vec![Part::InputText { text }]);
    }
    let parts = serde_json::from_str::<Vec<&RawValue>>(content.get())
        .map_err(|_| RequestError::field(path(), "must be a string or an array of parts"))?;
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let part_path = |field: &str| format!("{}[{j}]{field}", path());
        let p: PartFields<'a> = fields(part, &|| part_path(""))?;
        let kind = required_str(p.kind, &|| part_path(".type"))?;
        out.push(match kind.as_ref() {
            "text" => Part::InputText {
                text: required_text(p.text, &|| part_path(".text"))?,
            },
            "image_url" => {
                let image = not_null(p.image_url)
                    .ok_or_else(|| RequestError::field(part_path(".image_url"), "required"))?;
                let (url, detail) = match raw_str(image) {
                    Some(url) => (url, None),
                    None => {
                        let f: ImageUrlFields<'a> = fields(image, &|| part_path(".image_url"))?;
                        let url = required_str(f.url, &|| part_path(".image_url.url"))?;
                        (url, not_null(f.detail).and_then(raw_str))
                    }
                };
                Part::InputImage {
                    image_url: url,
                    detail: detail.unwrap_or(Cow::Borrowed("auto")),
                }
            }
            other => {
                return Err(RequestError::field(
                    part_path(".type"),
                    format!("unsupported content part {}", quoted(other)),
                ));
            }
        });
    }
    Ok(out)
}

/// The JSON schema used when a function declares no parameters.
fn empty_parameters() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| {
        RawValue::from_string(r#"{"type":"object","properties":{}}"#.to_owned())
            .unwrap_or_else(|_| RawValue::NULL.to_owned())
    })
}

fn convert_tools(raw: &RawValue) -> Result<Vec<FlatTool<'_>>, RequestError> {
    let tools = array(raw, &|| "tools".to_owned())?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let path = |field: &str| format!("tools[{i}]{field}");
        let t: ToolCallFields<'_> = fields(tool, &|| path(""))?;
        let kind = required_str(t.kind, &|| path(".type"))?;
        if kind != "function" {
            return Err(RequestError::field(
                path(".type"),
                format!("unsupported tool type {}", quoted(&kind)),
            ));
        }
        let function = not_null(t.function)
            .ok_or_else(|| RequestError::field(path(".function"), "required"))?;
        out.push(function_tool(function, &|field| {
            format!("tools[{i}].function{field}")
        })?);
    }
    Ok(out)
}

/// Legacy `functions`: each one what a tool's `function` holds; at least one, as OpenAI asks.
fn convert_functions(raw: &RawValue) -> Result<Vec<FlatTool<'_>>, RequestError> {
    let functions = array(raw, &|| "functions".to_owned())?;
    if functions.is_empty() {
        return Err(RequestError::field("functions", "must not be empty"));
    }
    functions
        .into_iter()
        .enumerate()
        .map(|(i, function)| function_tool(function, &|field| format!("functions[{i}]{field}")))
        .collect()
}

/// A function declaration `{name, description?, parameters?, strict?}` as a Responses tool;
/// `path("")` names the declaration in errors.
fn function_tool<'a>(
    function: &'a RawValue,
    path: &dyn Fn(&str) -> String,
) -> Result<FlatTool<'a>, RequestError> {
    let f: FunctionFields<'a> = fields(function, &|| path(""))?;
    Ok(FlatTool {
        kind: "function",
        name: required_str(f.name, &|| path(".name"))?,
        description: not_null(f.description),
        parameters: not_null(f.parameters).unwrap_or(empty_parameters()),
        strict: not_null(f.strict).map_or(StrictFlag::Default, StrictFlag::Client),
    })
}

fn convert_tool_choice(raw: &RawValue) -> Result<ToolChoice<'_>, RequestError> {
    if let Some(mode) = raw_str(raw) {
        return match mode.as_ref() {
            "none" | "auto" | "required" => Ok(ToolChoice::Mode(mode)),
            other => Err(RequestError::field(
                "tool_choice",
                format!("unsupported value {}", quoted(other)),
            )),
        };
    }
    let c: ToolCallFields<'_> = fields(raw, &|| "tool_choice".to_owned())?;
    let kind = required_str(c.kind, &|| "tool_choice.type".to_owned())?;
    if kind != "function" {
        return Err(RequestError::field(
            "tool_choice.type",
            format!("unsupported tool choice {}", quoted(&kind)),
        ));
    }
    let function = not_null(c.function)
        .ok_or_else(|| RequestError::field("tool_choice.function", "required"))?;
    let f: FunctionFields<'_> = fields(function, &|| "tool_choice.function".to_owned())?;
    Ok(ToolChoice::Function {
        kind: "function",
        name: required_str(f.name, &|| "tool_choice.function.name".to_owned())?,
    })
}

/// Legacy `function_call`: `"auto"`, `"none"` or `{"name": …}`, as `tool_choice` would say it.
fn convert_function_call(raw: &RawValue) -> Result<ToolChoice<'_>, RequestError> {
    if let Some(mode) = raw_str(raw) {
        return match mode.as_ref() {
            "none" | "auto" => Ok(ToolChoice::Mode(mode)),
            other => Err(RequestError::field(
                "function_call",
                format!("unsupported value {}", quoted(other)),
            )),
        };
    }
    let f: FunctionFields<'_> = serde_json::from_str(raw.get()).map_err(|_| {
        RequestError::field(
            "function_call",
            r#"must be "auto", "none" or an object with a name"#,
        )
    })?;
    Ok(ToolChoice::Function {
        kind: "function",
        name: required_str(f.name, &|| "function_call.name".to_owned())?,
    })
}

#[derive(Deserialize)]
struct ResponseFormatFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    json_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JsonSchemaFields<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
    #[serde(borrow)]
    strict: Option<&'a RawValue>,
}

fn convert_response_format(raw: &RawValue) -> Result<Format<'_>, RequestError> {
    let f: ResponseFormatFields<'_> = fields(raw, &|| "response_format".to_owned())?;
    let kind = required_str(f.kind, &|| "response_format.type".to_owned())?;
    match kind.as_ref() {
        "text" => Ok(Format::Text),
        "json_object" => Ok(Format::JsonObject),
        "json_schema" => {
            let schema = not_null(f.json_schema)
                .ok_or_else(|| RequestError::field("response_format.json_schema", "required"))?;
            let s: JsonSchemaFields<'_> =
                fields(schema, &|| "response_format.json_schema".to_owned())?;
            let name = match not_null(s.name) {
                None => Cow::Borrowed("response"),
                Some(_) => required_str(s.name, &|| "response_format.json_schema.name".to_owned())?,
            };
            Ok(Format::JsonSchema {
                name,
                description: not_null(s.description),
                schema: not_null(s.schema).unwrap_or(empty_parameters()),
                strict: not_null(s.strict),
            })
        }
        other => Err(RequestError::field(
            "response_format.type",
            format!("unsupported format {}", quoted(other)),
        )),
    }
}

/// `"value"` with JSON escaping, for error messages (client strings may hold anything).
fn quoted(value: &str) -> String {
    let mut out = Vec::with_capacity(value.len() + 2);
    write_json(&mut out, value);
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Responses events → chat output
// ---------------------------------------------------------------------------------------------

/// One piece of chat output, produced by [`Translator`] and rendered by a sink.
enum Op<'x> {
    /// The first chunk: `content` is `""`, or `null` when the answer opens with a call (as
    /// OpenAI streams it, so that a streamed and an assembled message agree).
    Role {
        call_first: bool,
    },
    Content(&'x str),
    Refusal(&'x str),
    Reasoning(&'x str),
    ToolStart {
        index: usize,
        id: &'x str,
        name: &'x str,
    },
    ToolArgs {
        index: usize,
        args: &'x str,
    },
    /// The legacy answer's function call (instead of `ToolStart`, with
    /// [`ChatOptions::legacy_functions`]).
    FunctionStart {
        name: &'x str,
    },
    /// More of its arguments (instead of `ToolArgs`).
    FunctionArgs(&'x str),
    Finish {
        reason: &'static str,
    },
    Fail(&'x UpstreamFailure),
}

/// Identity of the chat answer; fixed once the first piece of output is produced.
#[derive(Debug, Clone)]
struct Meta {
    id: String,
    model: String,
    created: i64,
}

#[derive(Debug)]
struct ToolState {
    output_index: Option<u64>,
    item_id: Option<String>,
    args_sent: bool,
}

/// The state machine shared by [`ChatStream`] and [`ChatAssembler`].
#[derive(Debug)]
struct Translator {
    meta: Meta,
    /// A `response.created` (or `response.in_progress`) named the response.
    adopted: bool,
    started: bool,
    done: bool,
    tools: Vec<ToolState>,
    /// Output indices of message items whose text arrived as deltas.
    texted: Vec<Option<u64>>,
    /// Output indices of message items whose refusal arrived as deltas.
    refused: Vec<Option<u64>>,
    /// Output indices of reasoning items whose text arrived as deltas.
    reasoned: Vec<Option<u64>>,
    /// (output index, summary index) of the last reasoning text, to separate summary parts.
    last_reasoning: Option<(Option<u64>, Option<u64>)>,
    usage: Option<TokenUsage>,
    /// The client's `stop` sequences at work; `None` (nothing held, nothing scanned) without.
    stop: Option<StopMatcher>,
    /// [`ChatOptions::legacy_functions`]: one function call, announced as `function_call`.
    legacy: bool,
}

/// Used when the upstream never names its response (it always does in practice).
const FALLBACK_ID: &str = "chatcmpl-codexpool";

impl Translator {
    fn new(options: &ChatOptions, created: i64) -> Self {
        Self {
            meta: Meta {
                id: FALLBACK_ID.to_owned(),
                model: options.model.clone(),
                created,
            },
            adopted: false,
            started: false,
            done: false,
            tools: Vec::new(),
            texted: Vec::new(),
            refused: Vec::new(),
            reasoned: Vec::new(),
            last_reasoning: None,
            usage: None,
            stop: StopMatcher::new(&options.stop),
            legacy: options.legacy_functions,
        }
    }

    /// Parses the events translators care about; others (and untyped payloads) are `None`. A
    /// `response.in_progress` says again what `response.created` said: it is read only when no
    /// `response.created` came before it.
    fn parse<'e>(&self, event: &'e SseEvent) -> Result<Option<ResponsesEvent<'e>>, EventError> {
        let Some(kind) = event.event_type() else {
            return Ok(None);
        };
        match EventKind::from_type(&kind) {
            EventKind::ContentPartAdded
            | EventKind::OutputTextDone
            | EventKind::RefusalDone
            | EventKind::FunctionCallArgumentsDone
            | EventKind::Other => Ok(None),
            EventKind::InProgress if self.adopted => Ok(None),
            _ => ResponsesEvent::parse_as(kind, event.data()).map(Some),
        }
    }

    fn adopt(&mut self, response: &ResponseRef<'_>) {
        self.adopted = true;
        if self.started {
            return;
        }
        if let Some(id) = response.id.as_deref().filter(|id| !id.is_empty()) {
            self.meta.id = format!("chatcmpl-{}", id.strip_prefix("resp_").unwrap_or(id));
        }
        if let Some(model) = response.model.as_deref().filter(|m| !m.is_empty()) {
            model.clone_into(&mut self.meta.model);
        }
        if let Some(created) = response.created_at {
            self.meta.created = created;
        }
    }

    fn start(&mut self, sink: &mut impl Sink) {
        self.start_with(false, sink);
    }

    fn start_with(&mut self, call_first: bool, sink: &mut impl Sink) {
        if !self.started {
            self.started = true;
            sink.op(&self.meta, Op::Role { call_first });
        }
    }

    /// Answer text: to the sink as it comes, or through the stop matcher when there is one.
    fn content(&mut self, text: &str, sink: &mut impl Sink) {
        self.start(sink);
        let meta = &self.meta;
        match &mut self.stop {
            None => sink.op(meta, Op::Content(text)),
            Some(stop) => stop.push(text, |t| sink.op(meta, Op::Content(t))),
        }
    }

    /// The answer text is interrupted (by a tool call, a refusal or the end): what the stop
    /// matcher held back is settled now, passed on or cut.
    fn settle(&mut self, sink: &mut impl Sink) {
        if let Some(stop) = &mut self.stop {
            let meta = &self.meta;
            stop.flush(|t| sink.op(meta, Op::Content(t)));
        }
    }

    /// A stop sequence matched: the answer ended there, nothing after it goes out.
    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.matched)
    }

    /// A function call from the model begins: the text so far is settled and the call is
    /// announced. `None` when it is not part of the answer: after a stop sequence, or a legacy
    /// answer's second call (the legacy API returns one function call; the model's later ones
    /// are dropped, and their arguments find no call here and are dropped too).
    fn announce_call(
        &mut self,
        output_index: Option<u64>,
        item: &ItemRef<'_>,
        sink: &mut impl Sink,
    ) -> Option<usize> {
        self.settle(sink);
        if self.stopped() || (self.legacy && !self.tools.is_empty()) {
            return None;
        }
        let index = self.tools.len();
        self.tools.push(ToolState {
            output_index,
            item_id: item.id.as_deref().map(str::to_owned),
            args_sent: false,
        });
        self.start_with(true, sink);
        let name = item.name.as_deref().unwrap_or("");
        let op = if self.legacy {
            Op::FunctionStart { name }
        } else {
            let id = item.call_id.as_deref().or(item.id.as_deref()).unwrap_or("");
            Op::ToolStart { index, id, name }
        };
        sink.op(&self.meta, op);
        Some(index)
    }

    /// Arguments of the announced call at `index`.
    fn call_args(&mut self, index: usize, args: &str, sink: &mut impl Sink) {
        self.tools[index].args_sent = true;
        let op = if self.legacy {
            Op::FunctionArgs(args)
        } else {
            Op::ToolArgs { index, args }
        };
        sink.op(&self.meta, op);
    }

    fn find_tool(&self, output_index: Option<u64>, item_id: Option<&str>) -> Option<usize> {
        self.tools.iter().position(|t| {
            (output_index.is_some() && t.output_index == output_index)
                || (item_id.is_some() && t.item_id.as_deref() == item_id)
        })
    }

    fn reasoning(&mut self, key: (Option<u64>, Option<u64>), text: &str, sink: &mut impl Sink) {
        if text.is_empty() {
            return;
        }
        let separate = self.last_reasoning.is_some_and(|last| last != key);
        self.last_reasoning = Some(key);
        if !self.reasoned.contains(&key.0) {
            self.reasoned.push(key.0);
        }
        self.start(sink);
        if separate {
            sink.op(&self.meta, Op::Reasoning(&format!("\n\n{text}")));
        } else {
            sink.op(&self.meta, Op::Reasoning(text));
        }
    }

    fn finish(&mut self, reason: &'static str, response: &ResponseRef<'_>, sink: &mut impl Sink) {
        self.adopt(response);
        self.usage = response.usage;
        self.settle(sink);
        self.start(sink);
        self.done = true;
        // Cut at a stop sequence, the answer ended there whatever the generation did after it.
        let reason = if self.stopped() { "stop" } else { reason };
        sink.op(&self.meta, Op::Finish { reason });
    }

    fn fail(&mut self, failure: &UpstreamFailure, sink: &mut impl Sink) {
        if !self.done {
            self.settle(sink);
            self.done = true;
            sink.op(&self.meta, Op::Fail(failure));
        }
    }

    fn handle(&mut self, event: &ResponsesEvent<'_>, sink: &mut impl Sink) {
        use ResponsesEvent as E;
        if self.done {
            return;
        }
        // After a stop sequence only the end of the response matters (its usage, its outcome):
        // the generation runs on upstream, but none of it is part of the answer.
        if self.stopped() && !event.kind().is_terminal() {
            return;
        }
        match event {
            E::Created(response) | E::InProgress(response) => self.adopt(response),
            E::OutputItemAdded { output_index, item } if item.is_function_call() => {
                self.announce_call(*output_index, item, sink);
            }
            E::OutputTextDelta(d) if !d.delta.is_empty() => {
                if !self.texted.contains(&d.output_index) {
                    self.texted.push(d.output_index);
                }
                self.content(&d.delta, sink);
            }
            E::RefusalDelta(d) if !d.delta.is_empty() => {
                self.settle(sink);
                if self.stopped() {
                    return;
                }
                if !self.refused.contains(&d.output_index) {
                    self.refused.push(d.output_index);
                }
                self.start(sink);
                sink.op(&self.meta, Op::Refusal(&d.delta));
            }
            E::ReasoningSummaryTextDelta(d) | E::ReasoningTextDelta(d) => {
                self.reasoning((d.output_index, d.summary_index), &d.delta, sink);
            }
            E::FunctionCallArgumentsDelta(d) if !d.delta.is_empty() => {
                if let Some(index) = self.find_tool(d.output_index, d.item_id.as_deref()) {
                    self.call_args(index, &d.delta, sink);
                }
            }
            E::OutputItemDone { output_index, item } => match item.kind.as_deref() {
                Some("function_call") => {
                    let args = item.arguments.as_deref().unwrap_or("");
                    let found = self.find_tool(*output_index, item.id.as_deref());
                    // Never announced: announce it now, whole.
                    let Some(index) =
                        found.or_else(|| self.announce_call(*output_index, item, sink))
                    else {
                        return;
                    };
                    if !self.tools[index].args_sent && !args.is_empty() {
                        self.call_args(index, args, sink);
                    }
                }
                // Whatever of the message did not arrive as deltas arrives now, whole.
                Some("message") => {
                    if !self.texted.contains(output_index) {
                        let text = item.text();
                        if !text.is_empty() {
                            self.texted.push(*output_index);
                            self.content(&text, sink);
                        }
                    }
                    if !self.refused.contains(output_index) {
                        let refusal = item.refusal();
                        if !refusal.is_empty() {
                            self.settle(sink);
                            if self.stopped() {
                                return;
                            }
                            self.refused.push(*output_index);
                            self.start(sink);
                            sink.op(&self.meta, Op::Refusal(&refusal));
                        }
                    }
                }
                Some("reasoning") if !self.reasoned.contains(output_index) => {
                    let summary = item.summary_text();
                    self.reasoning((*output_index, None), &summary, sink);
                }
                _ => {}
            },
            E::Completed(response) => {
                let reason = match (self.tools.is_empty(), self.legacy) {
                    (true, _) => "stop",
                    (false, false) => "tool_calls",
                    (false, true) => "function_call",
                };
                self.finish(reason, response, sink);
            }
            E::Incomplete(response) => {
                let reason = match response.incomplete_reason.as_deref() {
                    Some("content_filter") => "content_filter",
                    _ => "length",
                };
                self.finish(reason, response, sink);
            }
            E::Failed(response) => self.fail(&response.failure(), sink),
            E::Error(error) => self.fail(&error.to_failure(None), sink),
            _ => {}
        }
    }
}

/// Emulates the client's `stop` sequences on the answer text (the backend has none).
///
/// Text is passed on as it comes except for a tail that could still be the start of a stop
/// sequence (never longer than the longest sequence less one byte, and always whole characters:
/// it starts where a sequence would start). That tail waits for the next text, or for
/// [`flush`](Self::flush) when the text is interrupted or ends. The cut is where the earliest
/// sequence starts in the whole text, however the text was split into deltas: a match is only
/// taken once no sequence starting before it can still complete.
#[derive(Debug)]
struct StopMatcher {
    /// The sequences, none empty.
    stops: Vec<String>,
    /// Text not passed on yet: from where a sequence might start to the end of what arrived.
    held: String,
    /// A sequence matched; the text ended before it.
    matched: bool,
}

/// What [`StopMatcher`] makes of the text it has.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A sequence starts at this byte and none can start before it: the text ends here.
    Stop(usize),
    /// Pass the text on up to this byte and hold the rest (the length: hold nothing).
    Hold(usize),
}

impl StopMatcher {
    /// `None` when no sequence is left after dropping empty ones.
    fn new(stops: &[String]) -> Option<Self> {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        (!stops.is_empty()).then(|| Self {
            stops,
            held: String::new(),
            matched: false,
        })
    }

    /// Takes the next piece of text; `emit` gets what can go out now (nothing empty).
    fn push(&mut self, text: &str, mut emit: impl FnMut(&str)) {
        if self.matched {
            return;
        }
        let mut out = |t: &str| {
            if !t.is_empty() {
                emit(t);
            }
        };
        if self.held.is_empty() {
            // Most deltas: scanned where they are, only a possible tail is copied.
            match scan(text, &self.stops) {
                Scan::Stop(at) => {
                    out(&text[..at]);
                    self.matched = true;
                }
                Scan::Hold(at) => {
                    out(&text[..at]);
                    self.held.push_str(&text[at..]);
                }
            }
            return;
        }
        self.held.push_str(text);
        match scan(&self.held, &self.stops) {
            Scan::Stop(at) => {
                out(&self.held[..at]);
                self.held = String::new();
                self.matched = true;
            }
            Scan::Hold(at) => {
                out(&self.held[..at]);
                self.held.drain(..at);
            }
        }
    }

    /// No more text follows what arrived (for now): the held tail goes out, up to a sequence
    /// complete in it.
    fn flush(&mut self, mut emit: impl FnMut(&str)) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let end = match earliest_stop(&held, &self.stops) {
            Some(at) => {
                self.matched = true;
                at
            }
            None => held.len(),
        };
        if end > 0 {
            emit(&held[..end]);
        }
    }
}

/// Where the first complete sequence starts in `text`.
fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Decides how much of `text` can go out: up to the first complete sequence, unless a sequence
/// may still start earlier (the end of `text` is the beginning of one), in which case the text
/// from there is held.
fn scan(text: &str, stops: &[String]) -> Scan {
    let complete = earliest_stop(text, stops);
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    // A sequence that does not fit in the rest of `text` starts less than `longest` bytes from
    // its end.
    let from = text.len().saturating_sub(longest.saturating_sub(1));
    let until = complete.unwrap_or(text.len());
    let bytes = text.as_bytes();
    for at in from..until {
        if !text.is_char_boundary(at) {
            continue;
        }
        let rest = &bytes[at..];
        if stops
            .iter()
            .any(|s| s.len() > rest.len() && s.as_bytes().starts_with(rest))
        {
            return Scan::Hold(at);
        }
    }
    match complete {
        Some(at) => Scan::Stop(at),
        None => Scan::Hold(text.len()),
    }
}

/// Where [`Translator`] output goes.
trait Sink {
    fn op(&mut self, meta: &Meta, op: Op<'_>);
}

/// The failure reported when the upstream stream ends without a final event.
fn truncated_failure() -> UpstreamFailure {
    UpstreamFailure {
        kind: FailureKind::Server,
        status: None,
        code: Some("stream_truncated".to_owned()),
        message: "upstream stream ended before the response completed".to_owned(),
    }
}

/// Translates a Responses event stream into `chat.completion.chunk` SSE frames.
///
/// Feed every upstream event (after the failover loop committed) to [`push`](Self::push), then
/// call [`finish`](Self::finish) at end of input; send whatever they append to `out`. The output is
/// a `role` chunk, `content` / `refusal` / `reasoning_content` / `tool_calls` (or, with
/// [`ChatOptions::legacy_functions`], `function_call`) chunks, a chunk with `finish_reason`, the
/// `usage` chunk when asked, and `data: [DONE]`; a failure becomes an `{"error":{…}}` frame
/// followed by `[DONE]`.
#[derive(Debug)]
pub struct ChatStream {
    translator: Translator,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…` — the same for every chunk.
    head: Vec<u8>,
    include_usage: bool,
}

impl ChatStream {
    /// A translator for one response; `created` (epoch seconds) is used if the upstream does not
    /// say when the response was created.
    pub fn new(options: &ChatOptions, created: i64) -> Self {
        Self {
            translator: Translator::new(options, created),
            head: Vec::new(),
            include_usage: options.include_usage,
        }
    }

    /// Translates one upstream event, appending frames to `out`. Unknown event types are ignored;
    /// an event of a known type that cannot be parsed is an error (and nothing is written: call
    /// [`fail`](Self::fail) to end the stream with an error frame).
    pub fn push(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), EventError> {
        if self.translator.done {
            return Ok(());
        }
        if let Some(parsed) = self.translator.parse(event)? {
            self.push_event(&parsed, out);
        }
        Ok(())
    }

    /// Like [`push`](Self::push), and shows the parsed event (`None` when it was not parsed:
    /// a type the translator ignores, or the stream already ended) to `seen` first, so a caller
    /// that needs facts from the same event (usage, failures) does not parse it again.
    pub fn push_with<R>(
        &mut self,
        event: &SseEvent,
        out: &mut BytesMut,
        seen: impl FnOnce(Option<&ResponsesEvent<'_>>) -> R,
    ) -> Result<R, EventError> {
        if self.translator.done {
            return Ok(seen(None));
        }
        let parsed = self.translator.parse(event)?;
        let r = seen(parsed.as_ref());
        if let Some(parsed) = &parsed {
            self.push_event(parsed, out);
        }
        Ok(r)
    }

    /// Translates one already-parsed event.
    pub fn push_event(&mut self, event: &ResponsesEvent<'_>, out: &mut BytesMut) {
        let mut sink = ChunkSink {
            head: &mut self.head,
            out,
            include_usage: self.include_usage,
            usage: None,
        };
        if let ResponsesEvent::Completed(r) | ResponsesEvent::Incomplete(r) = event {
            sink.usage = r.usage;
        }
        self.translator.handle(event, &mut sink);
    }

    /// Ends the stream with an error frame and `[DONE]` (no-op once the stream has ended).
    pub fn fail(&mut self, failure: &UpstreamFailure, out: &mut BytesMut) {
        let mut sink = ChunkSink {
            head: &mut self.head,
            out,
            include_usage: self.include_usage,
            usage: None,
        };
        self.translator.fail(failure, &mut sink);
    }

    /// End of the upstream body: if no final event arrived, ends the stream with an error frame
    /// (`stream_truncated`) and `[DONE]`, never silently.
    pub fn finish(&mut self, out: &mut BytesMut) {
        self.fail(&truncated_failure(), out);
    }

    /// Whether the chat stream has ended (`[DONE]` written).
    pub fn is_done(&self) -> bool {
        self.translator.done
    }

    /// The usage reported by the final event, once seen.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.translator.usage
    }
}

/// Renders translator output as chunk frames.
struct ChunkSink<'s> {
    head: &'s mut Vec<u8>,
    out: &'s mut BytesMut,
    include_usage: bool,
    usage: Option<TokenUsage>,
}

impl ChunkSink<'_> {
    fn json<T: Serialize + ?Sized>(&mut self, value: &T) {
        if serde_json::to_writer((&mut *self.out).writer(), value).is_err() {
            debug_assert!(false, "serializing into memory cannot fail");
        }
    }

    fn begin(&mut self, meta: &Meta) {
        if self.head.is_empty() {
            let mut w = ObjectWriter::new(self.head);
            w.value("id", &meta.id);
            w.raw("object", r#""chat.completion.chunk""#);
            w.value("created", &meta.created);
            w.value("model", &meta.model);
            // Left open (no `end`): each chunk appends its own fields and the closing brace.
        }
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(self.head);
    }

    /// A chunk whose only choice has `delta` (written by `delta`) and `finish_reason`.
    fn chunk(&mut self, meta: &Meta, finish: Option<&str>, delta: impl FnOnce(&mut Self)) {
        self.begin(meta);
        self.out
            .extend_from_slice(br#","choices":[{"index":0,"delta":"#);
        delta(self);
        self.out.extend_from_slice(br#","finish_reason":"#);
        match finish {
            Some(reason) => self.json(reason),
            None => self.out.extend_from_slice(b"null"),
        }
        self.out.extend_from_slice(b"}]}\n\n");
    }
}

impl Sink for ChunkSink<'_> {
    fn op(&mut self, meta: &Meta, op: Op<'_>) {
        match op {
            Op::Role { call_first } => self.chunk(meta, None, |s| {
                let delta: &[u8] = if call_first {
                    br#"{"role":"assistant","content":null}"#
                } else {
                    br#"{"role":"assistant","content":""}"#
                };
                s.out.extend_from_slice(delta);
            }),
            Op::Content(text) => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(br#"{"content":"#);
                s.json(text);
                s.out.put_u8(b'}');
            }),
            Op::Refusal(text) => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(br#"{"refusal":"#);
                s.json(text);
                s.out.put_u8(b'}');
            }),
            Op::Reasoning(text) => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(br#"{"reasoning_content":"#);
                s.json(text);
                s.out.put_u8(b'}');
            }),
            Op::ToolStart { index, id, name } => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(br#"{"tool_calls":[{"index":"#);
                s.json(&index);
                s.out.extend_from_slice(br#","id":"#);
                s.json(id);
                s.out
                    .extend_from_slice(br#","type":"function","function":{"name":"#);
                s.json(name);
                s.out.extend_from_slice(br#","arguments":""}}]}"#);
            }),
            Op::ToolArgs { index, args } => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(br#"{"tool_calls":[{"index":"#);
                s.json(&index);
                s.out.extend_from_slice(br#","function":{"arguments":"#);
                s.json(args);
                s.out.extend_from_slice(b"}}]}");
            }),
            Op::FunctionStart { name } => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(br#"{"function_call":{"name":"#);
                s.json(name);
                s.out.extend_from_slice(br#","arguments":""}}"#);
            }),
            Op::FunctionArgs(args) => self.chunk(meta, None, |s| {
                s.out
                    .extend_from_slice(br#"{"function_call":{"arguments":"#);
                s.json(args);
                s.out.extend_from_slice(b"}}");
            }),
            Op::Finish { reason } => {
                self.chunk(meta, Some(reason), |s| s.out.extend_from_slice(b"{}"));
                if self.include_usage {
                    self.begin(meta);
                    self.out.extend_from_slice(br#","choices":[],"usage":"#);
                    let usage = ChatUsage::from(self.usage.unwrap_or_default());
                    self.json(&usage);
                    self.out.extend_from_slice(b"}\n\n");
                }
                self.out.extend_from_slice(DONE_FRAME);
            }
            Op::Fail(failure) => {
                self.out.extend_from_slice(b"data: ");
                self.json(&ErrorBody::from(failure));
                self.out.extend_from_slice(b"\n\n");
                self.out.extend_from_slice(DONE_FRAME);
            }
        }
    }
}

/// `{"error":{"message","type","code"}}`, the OpenAI error shape.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
}

impl<'a> From<&'a UpstreamFailure> for ErrorBody<'a> {
    fn from(failure: &'a UpstreamFailure) -> Self {
        Self {
            error: ErrorDetail {
                message: &failure.message,
                kind: failure.error_type(),
                code: failure.error_code(),
            },
        }
    }
}

/// Chat `usage`.
#[derive(Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
    completion_tokens_details: ReasoningTokens,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

impl From<TokenUsage> for ChatUsage {
    fn from(u: TokenUsage) -> Self {
        Self {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: CachedTokens {
                cached_tokens: u.cached_tokens,
            },
            completion_tokens_details: ReasoningTokens {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

/// Assembles one `chat.completion` from a Responses event stream, for `stream: false` clients.
#[derive(Debug)]
pub struct ChatAssembler {
    translator: Translator,
    acc: Accumulated,
}

#[derive(Debug, Default)]
struct Accumulated {
    content: String,
    refusal: String,
    reasoning: String,
    tool_calls: Vec<AssembledCall>,
    /// The legacy answer's one function call.
    function_call: Option<AssembledFunction>,
    finish_reason: Option<&'static str>,
    failure: Option<UpstreamFailure>,
}

#[derive(Debug, Serialize)]
struct AssembledCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: AssembledFunction,
}

#[derive(Debug, Serialize)]
struct AssembledFunction {
    name: String,
    arguments: String,
}

impl Sink for Accumulated {
    fn op(&mut self, _meta: &Meta, op: Op<'_>) {
        match op {
            Op::Role { .. } => {}
            Op::Content(text) => self.content.push_str(text),
            Op::Refusal(text) => self.refusal.push_str(text),
            Op::Reasoning(text) => self.reasoning.push_str(text),
            Op::ToolStart { id, name, .. } => self.tool_calls.push(AssembledCall {
                id: id.to_owned(),
                kind: "function",
                function: AssembledFunction {
                    name: name.to_owned(),
                    arguments: String::new(),
                },
            }),
            Op::ToolArgs { index, args } => {
                if let Some(call) = self.tool_calls.get_mut(index) {
                    call.function.arguments.push_str(args);
                }
            }
            Op::FunctionStart { name } => {
                self.function_call = Some(AssembledFunction {
                    name: name.to_owned(),
                    arguments: String::new(),
                });
            }
            Op::FunctionArgs(args) => {
                if let Some(call) = &mut self.function_call {
                    call.arguments.push_str(args);
                }
            }
            Op::Finish { reason } => self.finish_reason = Some(reason),
            Op::Fail(failure) => self.failure = Some(failure.clone()),
        }
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssembledMessage<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct AssembledMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "no_calls")]
    tool_calls: &'a [AssembledCall],
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<&'a AssembledFunction>,
}

fn no_calls(calls: &&[AssembledCall]) -> bool {
    calls.is_empty()
}

impl ChatAssembler {
    /// An assembler for one response; `created` (epoch seconds) is used if the upstream does not
    /// say when the response was created.
    pub fn new(options: &ChatOptions, created: i64) -> Self {
        Self {
            translator: Translator::new(options, created),
            acc: Accumulated::default(),
        }
    }

    /// Feeds one upstream event. `Ok(true)` once the response is complete;
    /// `Err(AssembleError::Failed)` when the upstream reported a failure.
    pub fn push(&mut self, event: &SseEvent) -> Result<bool, AssembleError> {
        if !self.translator.done
            && let Some(parsed) = self.translator.parse(event)?
        {
            self.translator.handle(&parsed, &mut self.acc);
        }
        match &self.acc.failure {
            Some(failure) => Err(AssembleError::Failed(failure.clone())),
            None => Ok(self.translator.done),
        }
    }

    /// The usage reported by the final event, once seen.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.translator.usage
    }

    /// The `chat.completion` object (JSON). Fails if the upstream failed or the stream ended
    /// before the final event.
    pub fn finish(self) -> Result<Bytes, AssembleError> {
        let acc = self.acc;
        if let Some(failure) = acc.failure {
            return Err(AssembleError::Failed(failure));
        }
        let Some(finish_reason) = acc.finish_reason else {
            return Err(AssembleError::Truncated);
        };
        let meta = &self.translator.meta;
        // No text next to tool calls, a function call or a refusal: `content: null`, as OpenAI
        // answers.
        let called = !acc.tool_calls.is_empty() || acc.function_call.is_some();
        let content = if acc.content.is_empty() && (called || !acc.refusal.is_empty()) {
            None
        } else {
            Some(acc.content.as_str())
        };
        let completion = Completion {
            id: &meta.id,
            object: "chat.completion",
            created: meta.created,
            model: &meta.model,
            choices: [Choice {
                index: 0,
                message: AssembledMessage {
                    role: "assistant",
                    content,
                    refusal: Some(acc.refusal.as_str()).filter(|r| !r.is_empty()),
                    reasoning_content: Some(acc.reasoning.as_str()).filter(|r| !r.is_empty()),
                    tool_calls: &acc.tool_calls,
                    function_call: acc.function_call.as_ref(),
                },
                finish_reason,
            }],
            usage: self.translator.usage.map(ChatUsage::from),
        };
        let mut out = Vec::with_capacity(256 + acc.content.len() + acc.reasoning.len());
        write_json(&mut out, &completion);
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{SseItem, SseParser};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn convert(body: Value) -> (Value, UpstreamRequest, ChatOptions) {
        let (req, options) =
            chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default()).unwrap();
        (serde_json::from_slice(&req.body).unwrap(), req, options)
    }

    fn convert_err(body: Value) -> String {
        chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn items_are_written_as_serde_writes_them() {
        let raw = |json: &'static str| -> &'static RawValue {
            Box::leak(RawValue::from_string(json.to_owned()).unwrap())
        };
        let items = [
            Item::Message {
                role: "user",
                content: vec![
                    Part::InputText {
                        text: Text::Literal(raw(r#""say \"hi\"\n\u00e9""#)),
                    },
                    Part::InputImage {
                        image_url: "data:image/png;base64,AAAA".into(),
                        detail: "auto".into(),
                    },
                    Part::InputText {
                        text: Text::Made("two\nparts \"joined\" \u{1}".into()),
                    },
                ],
            },
            Item::Message {
                role: "assistant",
                content: vec![Part::OutputText {
                    text: Text::Literal(raw(r#""""#)),
                }],
            },
            Item::Message {
                role: "developer",
                content: Vec::new(),
            },
            Item::FunctionCall {
                call_id: "call_1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            },
            Item::FunctionCallOutput {
                call_id: "call_1".into(),
                output: Text::Literal(raw(r#""ok""#)),
            },
        ];
        for item in &items {
            let mut ours = Vec::new();
            item.write(&mut ours);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(item).unwrap()
            );
        }
    }

    #[test]
    fn maps_a_full_chat_request() {
        let (body, req, options) = convert(json!({
            "model": "gpt-5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "image_url", "image_url": "https://x/y.png"},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "a cat"}]},
                {"role": "assistant", "content": "A cat."},
                {"role": "system", "content": "Later rule."},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "look", "description": "Look", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "noop", "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": {"type": "object"}, "strict": true}},
            "reasoning_effort": "high",
            "verbosity": "low",
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5,
            "max_tokens": 10,
            "max_completion_tokens": 10,
            "stop": ["x"],
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "logprobs": false,
            "user": "u",
            "seed": 1,
            "metadata": {},
            "n": 1,
            "top_p": null,
        }));
        assert_eq!(
            body,
            json!({
                "model": "gpt-5",
                "instructions": "Be brief.\n\nUse tools.",
                "input": [
                    {"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": "What is in this image?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                        {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                    ]},
                    {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{\"q\":1}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Later rule."}]},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
                ],
                "tools": [
                    {"type": "function", "name": "look", "description": "Look",
                     "parameters": {"type": "object"}, "strict": false},
                    {"type": "function", "name": "noop",
                     "parameters": {"type": "object", "properties": {}}, "strict": true},
                ],
                "tool_choice": {"type": "function", "name": "look"},
                "parallel_tool_calls": false,
                "reasoning": {"effort": "high", "summary": "auto"},
                "store": false,
                "stream": true,
                "include": ["reasoning.encrypted_content"],
                "text": {"format": {"type": "json_schema", "name": "answer",
                                    "schema": {"type": "object"}, "strict": true},
                         "verbosity": "low"},
            })
        );
        // (`json!` sorts keys, so the body arrived in alphabetical order.)
        assert_eq!(
            req.dropped,
            [
                "frequency_penalty",
                "logprobs",
                "max_completion_tokens",
                "max_tokens",
                "metadata",
                "presence_penalty",
                "seed",
                "temperature",
                "user"
            ]
        );
        assert_eq!(
            options,
            ChatOptions {
                model: "gpt-5".into(),
                stream: true,
                include_usage: true,
                stop: vec!["x".to_owned()],
                legacy_functions: false,
            }
        );
    }

    #[test]
    fn one_pass_reading_and_field_by_field_reading_agree() {
        // Read in one pass: the last `messages` counts, other fields are kept (and dropped).
        let body = br#"{"model":"m","messages":[{"role":"user","content":"first"}],
            "temperature":1,"messages":[{"role":"user","content":"last \"q\""}]}"#;
        let (obj, messages) =
            parse_object_with::<Vec<MessageFields<'_>>>(body, "messages").unwrap();
        assert_eq!(messages.unwrap().len(), 1);
        assert!(obj.get("messages").is_none() && obj.get("temperature").is_some());
        let (req, _) = chat_to_responses(body, &Overrides::default()).unwrap();
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(v["input"][0]["content"][0]["text"], "last \"q\"");
        assert_eq!(v["input"].as_array().unwrap().len(), 1);
        assert_eq!(req.dropped, ["temperature"]);
        // What does not read in one pass is read field by field: the same errors, in the same
        // order (the model is checked before the messages), as without the one-pass reading.
        for (body, error) in [
            (
                &br#"{"model":"m","messages":[{"role":"user","content":"x"},5]}"#[..],
                "messages[1]: ",
            ),
            (br#"{"messages":[5]}"#, "model: required"),
            (br#"{"model":"m","messages":null}"#, "messages: required"),
            (br#"{"model":"m"}"#, "messages: required"),
            (
                br#"{"model":"m","messages":{}}"#,
                "messages: must be an array",
            ),
            (
                br#"{"model":"m","messages":[]}"#,
                "messages: must not be empty",
            ),
            (br#"[{"model":"m"}]"#, "must be a JSON object"),
            (br#"{"model":"m","messages":[]} x"#, "not valid JSON"),
            (b"{\"model\":\"m\xff\",\"messages\":[]}", "not valid JSON"),
        ] {
            let split = parse_object_with::<Vec<MessageFields<'_>>>(body, "messages");
            assert!(split.is_none_or(|(_, m)| m.is_none_or(|m| m.is_empty())));
            let e = chat_to_responses(body, &Overrides::default()).unwrap_err();
            assert!(
                e.to_string().contains(error),
                "{e} for {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn message_texts_go_upstream_as_their_client_literals() {
        // Escapes as a client may write them; serde_json would write `é` and `😀` unescaped.
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"Rule: say \"hi\"\u00e9"},
            {"role":"user","content":"line\none \u00e9 \ud83d\ude00 \"q\" \\"},
            {"role":"assistant","content":[{"type":"text","text":"A\tB"}]},
            {"role":"assistant","content":[{"type":"text","text":"x\u00e9"},{"type":"text","text":"y"}]},
            {"role":"tool","tool_call_id":"c","content":"out\/put"}]}"#;
        let (req, _) = chat_to_responses(body, &Overrides::default()).unwrap();
        let text = std::str::from_utf8(&req.body).unwrap();
        // Single texts are copied byte for byte ...
        for literal in [
            r#""line\none \u00e9 \ud83d\ude00 \"q\" \\""#,
            r#""A\tB""#,
            r#""out\/put""#,
        ] {
            assert!(text.contains(literal), "{literal} not verbatim in {text}");
        }
        // ... and mean what they meant; joined and instruction texts are decoded and re-encoded.
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(v["instructions"], "Rule: say \"hi\"é");
        assert_eq!(
            v["input"][0]["content"][0]["text"],
            "line\none é 😀 \"q\" \\"
        );
        assert_eq!(v["input"][1]["content"][0]["text"], "A\tB");
        assert_eq!(v["input"][2]["content"][0]["text"], "xé\ny");
        assert_eq!(v["input"][3]["output"], "out/put");
        // Text that must be decoded and does not decode is refused, naming the field.
        let lone = br#"{"model":"m","messages":[{"role":"system","content":"\ud800"},{"role":"user","content":"x"}]}"#;
        let err = chat_to_responses(lone, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("messages[0].content"), "{err}");
        // A text that is not a string is still refused, naming the field.
        let bad =
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#;
        let err = chat_to_responses(bad, &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("messages[0].content[0].text"),
            "{err}"
        );
    }

    #[test]
    fn minimal_request_and_overrides() {
        let (body, req, options) = convert(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"}, "tool_choice": "auto"}));
        assert_eq!(body["instructions"], DEFAULT_INSTRUCTIONS);
        assert_eq!(body["text"], json!({"format": {"type": "json_object"}}));
        assert_eq!(body["tool_choice"], "auto");
        assert!(body.get("reasoning").is_none() && body.get("include").is_none());
        assert!(req.dropped.is_empty() && !options.stream && !options.include_usage);

        let overrides = Overrides {
            model: Some("forced"),
            reasoning_effort: Some("low"),
        };
        let (req, options) = chat_to_responses(
            br#"{"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high"}"#,
            &overrides,
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["model"], "forced");
        assert_eq!(options.model, "forced");
        assert_eq!(body["reasoning"]["effort"], "low");
    }

    #[test]
    fn request_errors_name_the_field() {
        let user = json!({"role": "user", "content": "hi"});
        let cases = [
            (json!({"messages": [user]}), "model: required"),
            (json!({"model": "m"}), "messages: required"),
            (
                json!({"model": "m", "messages": {}}),
                "messages: must be an array",
            ),
            (
                json!({"model": "m", "messages": []}),
                "messages: must not be empty",
            ),
            (
                json!({"model": "m", "messages": [user, user, {"role": "foo"}]}),
                "messages[2].role: unknown role \"foo\"",
            ),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "messages[0].role: required",
            ),
            (
                json!({"model": "m", "messages": [5]}),
                "messages[0]: must be an object",
            ),
            (
                json!({"model": "m", "messages": [user, user, "hello"]}),
                "messages[2]: must be an object",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "messages[0].content: required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0].type: unsupported content part \"input_audio\"",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content[0].image_url.url: required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id: required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]}),
                "messages[0].tool_calls[0].function.name: required",
            ),
            (
                json!({"model": "m", "messages": [user], "n": 2}),
                "n: only n=1 is supported",
            ),
            (
                json!({"model": "m", "messages": [user], "tools": [{"type": "custom"}]}),
                "tools[0].type: unsupported tool type \"custom\"",
            ),
            (
                json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name: required",
            ),
            (
                json!({"model": "m", "messages": [user], "tool_choice": "sometimes"}),
                "tool_choice: unsupported value \"sometimes\"",
            ),
            (
                json!({"model": "m", "messages": [user], "response_format": {"type": "yaml"}}),
                "response_format.type: unsupported format \"yaml\"",
            ),
            (
                json!({"model": "m", "messages": [user], "stream": "yes"}),
                "stream: must be a boolean",
            ),
            (
                json!({"model": "m", "messages": [user], "stream_options": {"include_usage": 1}}),
                "stream_options.include_usage: must be a boolean",
            ),
            (
                json!({"model": "m", "messages": [user], "reasoning_effort": 3}),
                "reasoning_effort: must be a string",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(convert_err(body.clone()), expected, "{body}");
        }
    }

    /// Runs events through a [`ChatStream`] and returns the frames' payloads as JSON
    /// (`"[DONE]"` as a string).
    fn stream_frames(options: &ChatOptions, events: &[Value], finish: bool) -> Vec<Value> {
        let mut chat = ChatStream::new(options, 42);
        let mut out = BytesMut::new();
        for event in events {
            let sse = SseEvent::new(serde_json::to_vec(event).unwrap());
            chat.push(&sse, &mut out).unwrap();
        }
        if finish {
            chat.finish(&mut out);
        }
        let mut parser = SseParser::new();
        parser.push(out.freeze());
        let mut frames = Vec::new();
        while let Some(item) = parser.next_item().unwrap() {
            let SseItem::Event(event) = item else {
                panic!("comment")
            };
            frames.push(if event.is_done_marker() {
                json!("[DONE]")
            } else {
                serde_json::from_slice(event.data()).unwrap()
            });
        }
        parser.finish().unwrap();
        frames
    }

    /// A realistic Codex stream: reasoning summary, text, a tool call with streamed arguments.
    fn codex_stream() -> Vec<Value> {
        let response = |status: &str, output: Value, usage: Value| {
            json!({"id": "resp_abc", "object": "response", "created_at": 1_700_000_000,
                   "status": status, "model": "gpt-5-codex", "output": output, "usage": usage})
        };
        let message = json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": "Hello, world"}]});
        let call = json!({"id": "fc_1", "type": "function_call", "status": "completed",
            "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"});
        let reasoning = json!({"id": "rs_1", "type": "reasoning", "encrypted_content": "gAAAA",
            "summary": [{"type": "summary_text", "text": "Thinking about it"}]});
        vec![
            json!({"type": "response.created", "sequence_number": 0,
                   "response": response("in_progress", json!([]), Value::Null)}),
            json!({"type": "response.in_progress", "sequence_number": 1,
                   "response": response("in_progress", json!([]), Value::Null)}),
            json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                   "item": {"id": "rs_1", "type": "reasoning", "summary": []}}),
            json!({"type": "response.reasoning_summary_part.added", "sequence_number": 3,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                   "part": {"type": "summary_text", "text": ""}}),
            json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 4,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": "Thinking"}),
            json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 5,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": " about it"}),
            json!({"type": "response.reasoning_summary_text.done", "sequence_number": 6,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0, "text": "Thinking about it"}),
            json!({"type": "response.output_item.done", "sequence_number": 7, "output_index": 0,
                   "item": reasoning}),
            json!({"type": "response.output_item.added", "sequence_number": 8, "output_index": 1,
                   "item": {"id": "msg_1", "type": "message", "status": "in_progress",
                            "role": "assistant", "content": []}}),
            json!({"type": "response.content_part.added", "sequence_number": 9, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0,
                   "part": {"type": "output_text", "annotations": [], "text": ""}}),
            json!({"type": "response.output_text.delta", "sequence_number": 10, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0, "delta": "Hello", "logprobs": []}),
            json!({"type": "response.output_text.delta", "sequence_number": 11, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0, "delta": ", world", "logprobs": []}),
            json!({"type": "response.output_text.done", "sequence_number": 12, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0, "text": "Hello, world"}),
            json!({"type": "response.content_part.done", "sequence_number": 13, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0,
                   "part": {"type": "output_text", "annotations": [], "text": "Hello, world"}}),
            json!({"type": "response.output_item.done", "sequence_number": 14, "output_index": 1,
                   "item": message}),
            json!({"type": "response.output_item.added", "sequence_number": 15, "output_index": 2,
                   "item": {"id": "fc_1", "type": "function_call", "status": "in_progress",
                            "call_id": "call_1", "name": "get_weather", "arguments": ""}}),
            json!({"type": "response.function_call_arguments.delta", "sequence_number": 16,
                   "item_id": "fc_1", "output_index": 2, "delta": "{\"city\":"}),
            json!({"type": "response.function_call_arguments.delta", "sequence_number": 17,
                   "item_id": "fc_1", "output_index": 2, "delta": "\"Paris\"}"}),
            json!({"type": "response.function_call_arguments.done", "sequence_number": 18,
                   "item_id": "fc_1", "output_index": 2, "arguments": "{\"city\":\"Paris\"}"}),
            json!({"type": "response.output_item.done", "sequence_number": 19, "output_index": 2,
                   "item": call}),
            json!({"type": "response.some_future_event", "sequence_number": 20, "payload": [1, 2]}),
            json!({"type": "response.completed", "sequence_number": 21,
                   "response": response("completed", json!([reasoning, message, call]),
                       json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 64},
                              "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 16},
                              "total_tokens": 140}))}),
        ]
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-5-codex",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn full_codex_stream_becomes_the_exact_chunk_sequence() {
        let options = ChatOptions {
            model: "client-model".into(),
            stream: true,
            include_usage: true,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let frames = stream_frames(&options, &codex_stream(), false);
        let expected = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"reasoning_content": "Thinking"}), Value::Null),
            chunk(json!({"reasoning_content": " about it"}), Value::Null),
            chunk(json!({"content": "Hello"}), Value::Null),
            chunk(json!({"content": ", world"}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            usage_frame(),
            json!("[DONE]"),
        ];
        assert_eq!(frames, expected);
        // Without include_usage: no usage chunk; finish() after the end adds nothing.
        let options = ChatOptions {
            include_usage: false,
            ..options
        };
        let frames = stream_frames(&options, &codex_stream(), true);
        assert_eq!(frames.len(), expected.len() - 1);
        assert_eq!(frames.last(), Some(&json!("[DONE]")));
    }

    #[test]
    fn non_streaming_assembly_matches() {
        let options = ChatOptions {
            model: "m".into(),
            stream: false,
            include_usage: false,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let mut assembler = ChatAssembler::new(&options, 42);
        let mut done = false;
        for event in codex_stream() {
            done = assembler
                .push(&SseEvent::new(serde_json::to_vec(&event).unwrap()))
                .unwrap();
        }
        assert!(done);
        assert_eq!(assembler.usage().map(|u| u.total_tokens), Some(140));
        let out: Value = serde_json::from_slice(&assembler.finish().unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-abc", "object": "chat.completion", "created": 1_700_000_000,
                "model": "gpt-5-codex",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Hello, world",
                    "reasoning_content": "Thinking about it",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                          "prompt_tokens_details": {"cached_tokens": 64},
                          "completion_tokens_details": {"reasoning_tokens": 16}}
            })
        );
    }

    fn assemble(events: &[Value]) -> Result<Value, AssembleError> {
        let options = ChatOptions {
            model: "m".into(),
            stream: false,
            include_usage: false,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let mut assembler = ChatAssembler::new(&options, 42);
        for event in events {
            assembler.push(&SseEvent::new(serde_json::to_vec(event).unwrap()))?;
        }
        assembler
            .finish()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// `response.in_progress` repeats `response.created` and is skipped after it (even a
    /// garbled one), but names the response when no `response.created` came.
    #[test]
    fn in_progress_names_the_response_only_without_created() {
        let delta = json!({"type": "response.output_text.delta", "output_index": 0, "delta": "hi"});
        let done = json!({"type": "response.completed", "response": {"output": []}});
        let out = assemble(&[
            json!({"type": "response.created", "response": {"id": "resp_a", "model": "m-a"}}),
            json!({"type": "response.in_progress", "response": "not an object"}),
            delta.clone(),
            done.clone(),
        ])
        .unwrap();
        assert_eq!(out["id"], "chatcmpl-a");
        assert_eq!(out["model"], "m-a");
        let out = assemble(&[
            json!({"type": "response.in_progress", "response": {"id": "resp_b", "model": "m-b"}}),
            delta,
            done,
        ])
        .unwrap();
        assert_eq!(out["id"], "chatcmpl-b");
        assert_eq!(out["model"], "m-b");
        assert_eq!(out["choices"][0]["message"]["content"], "hi");
    }

    #[test]
    fn tool_only_answer_has_null_content_and_items_without_deltas_count() {
        // No deltas at all: text and tool call only in output_item.done.
        let out = assemble(&[
            json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": "{}"}}),
            json!({"type": "response.completed", "response": {"output": []}}),
        ])
        .unwrap();
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["id"], "chatcmpl-codexpool");
        assert_eq!(out["created"], 42);
        assert_eq!(out["model"], "m");
        assert!(out.get("usage").is_none());

        let out = assemble(&[
            json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "message", "content": [{"type": "output_text", "text": "only done"}]}}),
            json!({"type": "response.incomplete", "response": {
                "incomplete_details": {"reason": "max_output_tokens"}}}),
        ])
        .unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "only done");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        let out = assemble(&[json!({"type": "response.incomplete", "response": {
            "incomplete_details": {"reason": "content_filter"}}})])
        .unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(out["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn failures_after_output_become_an_error_chunk() {
        let options = ChatOptions {
            model: "m".into(),
            stream: true,
            include_usage: true,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let events = [
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"}),
            json!({"type": "response.failed", "response": {"error": {
                "code": "server_is_overloaded", "message": "Our servers are busy"}}}),
            json!({"type": "response.output_text.delta", "delta": "ignored after the end"}),
        ];
        let frames = stream_frames(&options, &events, true);
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(frames[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            frames[2],
            json!({"error": {"message": "Our servers are busy", "type": "server_error",
                             "code": "server_is_overloaded"}})
        );
        assert_eq!(frames[3], json!("[DONE]"));

        // A stream that just stops is not a silent end either.
        let frames = stream_frames(&options, &events[..1], true);
        assert_eq!(frames[2]["error"]["code"], "stream_truncated");
        assert_eq!(frames[3], json!("[DONE]"));

        // The `error` event, and the assembler's view of failures.
        let error = json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow"});
        let frames = stream_frames(&options, std::slice::from_ref(&error), false);
        assert_eq!(frames[0]["error"]["type"], "rate_limit_error");
        assert!(matches!(
            assemble(&[events[0].clone(), error]),
            Err(AssembleError::Failed(f)) if f.code.as_deref() == Some("rate_limit_exceeded")
        ));
        assert!(matches!(
            assemble(&events[..1]),
            Err(AssembleError::Truncated)
        ));
    }

    #[test]
    fn reasoning_parts_are_separated_and_escapes_survive() {
        let options = ChatOptions {
            model: "m".into(),
            stream: true,
            include_usage: false,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let events = [
            json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "A"}),
            json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 1, "delta": "B"}),
            json!({"type": "response.output_text.delta", "output_index": 1, "delta": "quote \" nl \n uni \u{e9} \u{1F600}"}),
            json!({"type": "response.completed", "response": {"id": "resp_\"x"}}),
        ];
        let frames = stream_frames(&options, &events, true);
        assert_eq!(frames[1]["choices"][0]["delta"]["reasoning_content"], "A");
        assert_eq!(
            frames[2]["choices"][0]["delta"]["reasoning_content"],
            "\n\nB"
        );
        assert_eq!(
            frames[3]["choices"][0]["delta"]["content"],
            "quote \" nl \n uni \u{e9} \u{1F600}"
        );
        assert_eq!(frames[4]["choices"][0]["finish_reason"], "stop");
        // The id was fixed by the first chunk (no response.created came before).
        assert_eq!(frames[4]["id"], "chatcmpl-codexpool");
    }

    #[test]
    fn malformed_known_events_are_errors_unknown_ones_are_ignored() {
        let options = ChatOptions {
            model: "m".into(),
            stream: true,
            include_usage: false,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let mut chat = ChatStream::new(&options, 1);
        let mut out = BytesMut::new();
        chat.push(&SseEvent::new(&b"not json at all"[..]), &mut out)
            .unwrap();
        chat.push(
            &SseEvent::new(&br#"{"type":"response.new","x":"#[..]),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        assert!(
            chat.push(
                &SseEvent::new(&br#"{"type":"response.output_text.delta"}"#[..]),
                &mut out
            )
            .is_err()
        );
        chat.fail(&truncated_failure(), &mut out);
        assert!(chat.is_done());
        assert!(out.ends_with(DONE_FRAME));
    }

    #[test]
    fn refusals_become_refusal_not_content() {
        let options = ChatOptions {
            model: "m".into(),
            stream: true,
            include_usage: false,
            stop: Vec::new(),
            legacy_functions: false,
        };
        let item = json!({"type": "message", "role": "assistant",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}]});
        let streamed = [
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "content": []}}),
            json!({"type": "response.content_part.added", "output_index": 0, "content_index": 0, "part": {"type": "refusal", "refusal": ""}}),
            json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": "I can't"}),
            json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": " help with that."}),
            json!({"type": "response.refusal.done", "output_index": 0, "content_index": 0, "refusal": "I can't help with that."}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            json!({"type": "response.completed", "response": {"output": [item]}}),
        ];
        let frames = stream_frames(&options, &streamed, true);
        let deltas: Vec<&Value> = frames[1..frames.len() - 1]
            .iter()
            .map(|f| &f["choices"][0]["delta"])
            .collect();
        assert_eq!(
            deltas,
            [
                &json!({"refusal": "I can't"}),
                &json!({"refusal": " help with that."}),
                &json!({})
            ],
            "the deltas once, not again from output_item.done: {frames:?}"
        );
        assert_eq!(
            frames[frames.len() - 2]["choices"][0]["finish_reason"],
            "stop"
        );

        for events in [&streamed[..], &streamed[5..]] {
            let out = assemble(events).unwrap();
            assert_eq!(
                out["choices"][0],
                json!({"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": null, "refusal": "I can't help with that."}}),
                "{events:?}"
            );
        }
        // Only in output_item.done (no deltas): streamed whole, once.
        let frames = stream_frames(&options, &streamed[5..], true);
        assert_eq!(
            frames[1]["choices"][0]["delta"],
            json!({"refusal": "I can't help with that."})
        );
        // Text next to a refusal stays content.
        let mixed = json!({"type": "message", "content": [
            {"type": "output_text", "text": "Partly: "}, {"type": "refusal", "refusal": "no."}]});
        let out = assemble(&[
            json!({"type": "response.output_item.done", "output_index": 0, "item": mixed}),
            json!({"type": "response.completed", "response": {}}),
        ])
        .unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "Partly: ");
        assert_eq!(out["choices"][0]["message"]["refusal"], "no.");
    }

    #[test]
    fn stop_is_read_and_no_longer_dropped() {
        let user = json!({"role": "user", "content": "hi"});
        let cases = [
            (json!("\nObservation:"), vec!["\nObservation:"]),
            (json!(["a", "", "b\u{e9}"]), vec!["a", "b\u{e9}"]),
            (json!(["", ""]), vec![]),
            (json!([]), vec![]),
            (json!(""), vec![]),
            (Value::Null, vec![]),
            (json!(["1", "2", "3", "4"]), vec!["1", "2", "3", "4"]),
        ];
        for (stop, expected) in cases {
            let (body, req, options) =
                convert(json!({"model": "m", "messages": [user], "stop": stop}));
            assert_eq!(options.stop, expected, "{stop}");
            assert!(req.dropped.is_empty(), "{stop}: {:?}", req.dropped);
            assert!(body.get("stop").is_none(), "the backend has no `stop`");
        }
    }

    #[test]
    fn bad_stop_values_are_refused_naming_stop() {
        let user = json!({"role": "user", "content": "hi"});
        let shape = "stop: must be a string or an array of strings";
        let cases = [
            (json!(5), shape),
            (json!({"seq": "x"}), shape),
            (json!(true), shape),
            (json!(["ok", 5]), shape),
            (json!(["ok", null]), shape),
            (json!([["nested"]]), shape),
            (
                json!(["1", "2", "3", "4", "5"]),
                "stop: at most 4 sequences are allowed, got 5",
            ),
        ];
        for (stop, expected) in cases {
            let body = json!({"model": "m", "messages": [user], "stop": stop});
            let err = chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default())
                .unwrap_err();
            assert_eq!(err.to_string(), expected, "{stop}");
            assert_eq!(err.param(), Some("stop"), "{stop}");
        }
    }

    fn stop_options(stream: bool, stop: &[&str]) -> ChatOptions {
        ChatOptions {
            model: "m".into(),
            stream,
            include_usage: stream,
            stop: stop.iter().map(|s| (*s).to_owned()).collect(),
            legacy_functions: false,
        }
    }

    /// The backend's final event, with its usage (the whole generation's).
    fn completed() -> Value {
        json!({"type": "response.completed", "response": {"id": "resp_s", "usage":
            {"input_tokens": 10, "output_tokens": 7, "total_tokens": 17}}})
    }

    /// A text answer in these deltas, then [`completed`].
    fn text_events(deltas: &[&str]) -> Vec<Value> {
        let mut events = vec![json!({"type": "response.created", "response": {"id": "resp_s"}})];
        events.extend(
            deltas.iter().map(
                |d| json!({"type": "response.output_text.delta", "output_index": 0, "delta": d}),
            ),
        );
        events.push(completed());
        events
    }

    /// The `delta.content` of each streamed chunk that has one (the role chunk's `""` left out),
    /// and the finish reasons.
    fn streamed_content(stop: &[&str], events: &[Value]) -> (Vec<String>, Vec<String>) {
        let frames = stream_frames(&stop_options(true, stop), events, true);
        assert_eq!(frames.last(), Some(&json!("[DONE]")), "{frames:?}");
        let content = frames
            .iter()
            .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let finish = frames
            .iter()
            .filter_map(|f| f["choices"][0]["finish_reason"].as_str())
            .map(str::to_owned)
            .collect();
        (content, finish)
    }

    fn assembled_with_stop(stop: &[&str], events: &[Value]) -> Value {
        assemble_with(&stop_options(false, stop), events)
    }

    #[test]
    fn a_stop_split_across_deltas_is_caught() {
        let stop = ["\nObservation:"];
        let events = text_events(&["Thought: look", " it up\nObs", "ervation: 42", "\nmore"]);
        let frames = stream_frames(&stop_options(true, &stop), &events, true);
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 42,
                   "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        assert_eq!(
            frames,
            [
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Thought: look"}), Value::Null),
                // "\nObs" held back: it could be (and is) the start of the stop sequence.
                chunk(json!({"content": " it up"}), Value::Null),
                chunk(json!({}), json!("stop")),
                // The usage of the whole generation, which ran to its end upstream.
                json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 42,
                       "model": "m", "choices": [], "usage": {
                           "prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
                           "prompt_tokens_details": {"cached_tokens": 0},
                           "completion_tokens_details": {"reasoning_tokens": 0}}}),
                json!("[DONE]"),
            ]
        );
        let out = assembled_with_stop(&stop, &events);
        assert_eq!(
            out["choices"][0]["message"]["content"],
            "Thought: look it up"
        );
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["usage"]["completion_tokens"], 7);
        // The same text without `stop` goes out whole, delta by delta.
        let (content, _) = streamed_content(&[], &events);
        assert_eq!(
            content.concat(),
            "Thought: look it up\nObservation: 42\nmore"
        );
        assert_eq!(content.len(), 4);
    }

    #[test]
    fn the_earliest_stop_wins() {
        let cases: [(&[&str], &[&str], &str); 6] = [
            (&["world", "o"], &["Hello world"], "Hell"),
            (&["o", "world"], &["Hello", " world"], "Hell"),
            // A tie: the cut is at the position, whichever sequence matched there.
            (&["ab", "abc"], &["zabc"], "z"),
            (&["abc", "ab"], &["za", "bc"], "z"),
            // "tion" is complete first, but "\nObservation:" starts earlier and completes later
            // (or does not, and "tion" was the earliest after all).
            (&["tion", "\nObservation:"], &["x\nObservation", ": y"], "x"),
            (
                &["tion", "\nObservation:"],
                &["x\nObservation", "; y"],
                "x\nObserva",
            ),
        ];
        for (stop, deltas, expected) in cases {
            let events = text_events(deltas);
            let (content, finish) = streamed_content(stop, &events);
            assert_eq!(content.concat(), expected, "{stop:?} {deltas:?}");
            assert_eq!(finish, ["stop"]);
            let out = assembled_with_stop(stop, &events);
            assert_eq!(
                out["choices"][0]["message"]["content"], expected,
                "{stop:?} {deltas:?}"
            );
        }
    }

    #[test]
    fn a_stop_at_the_very_start_leaves_empty_content() {
        let events = text_events(&["STOP", " and the rest"]);
        let frames = stream_frames(&stop_options(true, &["STOP"]), &events, true);
        let deltas: Vec<&Value> = frames[..frames.len() - 2]
            .iter()
            .map(|f| &f["choices"][0]["delta"])
            .collect();
        assert_eq!(
            deltas,
            [&json!({"role": "assistant", "content": ""}), &json!({})],
            "{frames:?}"
        );
        assert_eq!(frames[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(frames[2]["usage"]["completion_tokens"], 7);
        let out = assembled_with_stop(&["STOP"], &events);
        assert_eq!(out["choices"][0]["message"]["content"], "");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn without_a_match_the_held_text_is_flushed_once() {
        let stop = ["\nObservation:"];
        // Held and then let go when the next delta shows it is no stop sequence ...
        let (content, finish) =
            streamed_content(&stop, &text_events(&["Hello\nObs", "erv", "ing"]));
        assert_eq!(content, ["Hello", "\nObserving"]);
        assert_eq!(finish, ["stop"]);
        // ... or held to the end, and sent before the final chunk.
        let events = text_events(&["Hello", " \nObs"]);
        let frames = stream_frames(&stop_options(true, &stop), &events, true);
        let tail: Vec<&Value> = frames[frames.len() - 4..frames.len() - 2]
            .iter()
            .map(|f| &f["choices"][0])
            .collect();
        assert_eq!(
            tail,
            [
                &json!({"index": 0, "delta": {"content": "\nObs"}, "finish_reason": null}),
                &json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
            ]
        );
        let (content, _) = streamed_content(&stop, &events);
        assert_eq!(content.concat(), "Hello \nObs");
        let out = assembled_with_stop(&stop, &events);
        assert_eq!(out["choices"][0]["message"]["content"], "Hello \nObs");
        // An answer cut short keeps its finish reason.
        let incomplete = [
            json!({"type": "response.output_text.delta", "delta": "Hello \nObs"}),
            json!({"type": "response.incomplete", "response": {
                "incomplete_details": {"reason": "max_output_tokens"}}}),
        ];
        let (content, finish) = streamed_content(&stop, &incomplete);
        assert_eq!(
            (content.concat().as_str(), finish.as_slice()),
            ("Hello \nObs", &["length".to_owned()][..])
        );
        // A failure: the held text goes out before the error, nothing is lost.
        let failed = [
            json!({"type": "response.output_text.delta", "delta": "Half \nObs"}),
            json!({"type": "response.failed", "response": {"error": {
                "code": "server_is_overloaded", "message": "busy"}}}),
        ];
        let frames = stream_frames(&stop_options(true, &stop), &failed, true);
        assert_eq!(frames[2]["choices"][0]["delta"]["content"], "\nObs");
        assert_eq!(frames[3]["error"]["code"], "server_is_overloaded");
    }

    /// Feeds `pieces` to a matcher for `stop`; what went out, piece by piece, and whether a
    /// sequence matched.
    fn match_pieces(stop: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stop.iter().map(|s| (*s).to_owned()).collect();
        let mut matcher = StopMatcher::new(&stops).unwrap();
        let mut out = Vec::new();
        for piece in pieces {
            matcher.push(piece, |t| out.push(t.to_owned()));
        }
        matcher.flush(|t| out.push(t.to_owned()));
        (out, matcher.matched)
    }

    #[test]
    fn multi_byte_characters_around_the_hold_back() {
        /// Stop sequences, the text's pieces, what goes out piece by piece, whether it matched.
        type Case = (
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
            bool,
        );
        let cases: [Case; 6] = [
            // The held tail is a whole emoji (4 bytes), let go with the next text.
            (
                &["\u{1F600}\u{1F600}"],
                &["a\u{1F600}", "b"],
                &["a", "\u{1F600}b"],
                false,
            ),
            (
                &["\u{1F600}\u{1F600}"],
                &["a\u{1F600}", "\u{1F600}b"],
                &["a"],
                true,
            ),
            (&["日本語"], &["これは日本", "語です"], &["これは"], true),
            (
                &["日本語"],
                &["これは日本", "人です"],
                &["これは", "日本人です"],
                false,
            ),
            // A one-character sequence of two bytes holds nothing back.
            (&["é"], &["caf", "fé!"], &["caf", "f"], true),
            // Around multi-byte text the tail starts on a character boundary.
            (&["ab"], &["éa", "éb"], &["é", "aéb"], false),
        ];
        for (stop, pieces, expected, matched) in cases {
            let (out, m) = match_pieces(stop, pieces);
            assert_eq!(out, expected, "{stop:?} {pieces:?}");
            assert_eq!(m, matched, "{stop:?} {pieces:?}");
        }
        assert_eq!(
            scan(
                "xé\u{1F600}",
                &["\u{1F600}!".to_owned(), "é\u{1F600}?".to_owned()]
            ),
            Scan::Hold(1)
        );
        assert_eq!(scan("xé", &["éa".to_owned()]), Scan::Hold(1));
        assert_eq!(scan("xéa", &["éa".to_owned()]), Scan::Stop(1));
    }

    #[test]
    fn output_after_the_stop_is_not_returned() {
        let stop = ["\nObservation:"];
        let call_added = json!({"type": "response.output_item.added", "output_index": 1,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f"}});
        let call_args = json!({"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"});
        let call_done = json!({"type": "response.output_item.done", "output_index": 1, "item": {
            "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}});
        let reasoning = json!({"type": "response.reasoning_summary_text.delta", "output_index": 0,
            "summary_index": 0, "delta": "plan: say \nObservation: then stop"});
        let text = |index: u64, delta: &str| json!({"type": "response.output_text.delta", "output_index": index, "delta": delta});
        // Reasoning first (never searched for stops), then text with the stop, then a tool call
        // and more text: the answer is the text before the stop, nothing else.
        let after = [
            reasoning.clone(),
            text(0, "Answer: 4\nObservation: late"),
            call_added.clone(),
            call_args.clone(),
            call_done.clone(),
            text(2, " and more"),
            json!({"type": "response.output_item.done", "output_index": 2, "item": {
                "type": "message", "content": [{"type": "output_text", "text": "never sent"}]}}),
            json!({"type": "response.refusal.delta", "output_index": 3, "delta": "no"}),
            completed(),
        ];
        let frames = stream_frames(&stop_options(true, &stop), &after, true);
        assert_eq!(
            frames[1]["choices"][0]["delta"]["reasoning_content"],
            "plan: say \nObservation: then stop"
        );
        assert_eq!(frames[2]["choices"][0]["delta"]["content"], "Answer: 4");
        assert_eq!(
            frames[3]["choices"][0]["finish_reason"], "stop",
            "{frames:?}"
        );
        assert_eq!(frames[4]["usage"]["total_tokens"], 17);
        assert_eq!(frames.len(), 6, "{frames:?}");
        let out = assembled_with_stop(&stop, &after);
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": "Answer: 4", "reasoning_content": "plan: say \nObservation: then stop"}})
        );
        assert_eq!(out["usage"]["total_tokens"], 17);

        // A tool call before the cut text is part of the answer; the finish reason is the stop.
        let before = [
            call_added,
            call_args,
            call_done,
            text(2, "Calling.\nObs"),
            text(2, "ervation: x"),
            completed(),
        ];
        let out = assembled_with_stop(&stop, &before);
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], "Calling.");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        let (content, finish) = streamed_content(&stop, &before);
        assert_eq!(
            (content, finish),
            (vec!["Calling.".to_owned()], vec!["stop".to_owned()])
        );

        // A tool call interrupts the text: what was held goes out before the call, and a
        // sequence cannot span the call.
        let settled = [
            text(0, "See \nObs"),
            json!({"type": "response.output_item.added", "output_index": 1,
                "item": {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "g"}}),
            text(2, "ervation:"),
            completed(),
        ];
        let out = assembled_with_stop(&stop, &settled);
        assert_eq!(
            out["choices"][0]["message"]["content"],
            "See \nObservation:"
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        let only_done = [
            json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "message", "content": [{"type": "output_text", "text": "Done.\nObservation: x"}]}}),
            completed(),
        ];
        let out = assembled_with_stop(&stop, &only_done);
        assert_eq!(out["choices"][0]["message"]["content"], "Done.");
    }

    #[test]
    fn legacy_functions_translate_like_tools() {
        let user = json!({"role": "user", "content": "hi"});
        let declared = json!([
            {"name": "look", "description": "Look", "parameters": {"type": "object"}},
            {"name": "noop", "strict": true},
        ]);
        let tools: Vec<Value> = declared
            .as_array()
            .unwrap()
            .iter()
            .map(|f| json!({"type": "function", "function": f}))
            .collect();
        let choices = [
            (json!("auto"), json!("auto")),
            (json!("none"), json!("none")),
            (
                json!({"name": "look"}),
                json!({"type": "function", "function": {"name": "look"}}),
            ),
        ];
        for (legacy, modern) in choices {
            let (body, req, options) = convert(json!({"model": "m", "messages": [user],
                "functions": declared, "function_call": legacy}));
            let (expected, _, modern_options) = convert(json!({"model": "m", "messages": [user],
                "tools": tools, "tool_choice": modern}));
            assert_eq!(body["tools"], expected["tools"], "{legacy}");
            assert_eq!(body["tool_choice"], expected["tool_choice"], "{legacy}");
            assert!(req.dropped.is_empty(), "{legacy}: {:?}", req.dropped);
            assert!(options.legacy_functions && !modern_options.legacy_functions);
            // The legacy answer holds one call: the model is asked for one at a time.
            assert_eq!(body["parallel_tool_calls"], false);
            assert!(expected.get("parallel_tool_calls").is_none());
        }
        let (body, _, _) =
            convert(json!({"model": "m", "messages": [user], "functions": declared}));
        assert_eq!(
            body["tools"],
            json!([
                {"type": "function", "name": "look", "description": "Look",
                 "parameters": {"type": "object"}, "strict": false},
                {"type": "function", "name": "noop",
                 "parameters": {"type": "object", "properties": {}}, "strict": true},
            ])
        );
        assert!(body.get("tool_choice").is_none());
        // The client's own parallel_tool_calls stands.
        let (body, _, _) = convert(json!({"model": "m", "messages": [user],
            "functions": declared, "parallel_tool_calls": true}));
        assert_eq!(body["parallel_tool_calls"], true);
        // Null is absent: no legacy form, nothing dropped, and no conflict with the tools.
        let (body, req, options) = convert(json!({"model": "m", "messages": [user],
            "functions": null, "function_call": null, "tools": tools, "tool_choice": "auto"}));
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));
        assert!(req.dropped.is_empty() && !options.legacy_functions);
        // And the other way round.
        let (body, req, options) = convert(json!({"model": "m", "messages": [user],
            "tools": null, "tool_choice": null, "functions": declared}));
        assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));
        assert!(req.dropped.is_empty() && options.legacy_functions);
    }

    #[test]
    fn legacy_function_messages_become_paired_items() {
        let call = |name: &str, arguments: Value| {
            json!({"role": "assistant", "content": null,
                   "function_call": {"name": name, "arguments": arguments}})
        };
        let result = |name: &str, content: Value| -> Value {
            json!({"role": "function", "name": name, "content": content})
        };
        let (body, req, options) = convert(json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather in Paris and Rome, and the time?"},
            call("weather", json!("{\"city\":\"Paris\"}")),
            result("weather", json!("sunny")),
            {"role": "assistant", "content": "Now Rome.",
             "function_call": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
            call("time", json!({"tz": "CET"})),
            result("time", json!("noon")),
            result("weather", json!([{"type": "text", "text": "rainy"}])),
            {"role": "assistant", "content": null, "function_call": {"name": "weather"}},
            {"role": "assistant", "content": null, "function_call": {"name": "weather"}},
            result("weather", json!("cloudy")),
            result("weather", json!(null)),
            {"role": "user", "content": "Thanks"},
        ]}));
        let call_item = |id: &str, name: &str, arguments: &str| -> Value {
            json!({"type": "function_call", "call_id": id, "name": name, "arguments": arguments})
        };
        let output = |id: &str, output: &str| -> Value {
            json!({"type": "function_call_output", "call_id": id, "output": output})
        };
        assert_eq!(
            body["input"],
            json!([
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Weather in Paris and Rome, and the time?"}]},
                // Ids made from the assistant message's position: `call_fn_<index>`.
                call_item("call_fn_1", "weather", "{\"city\":\"Paris\"}"),
                output("call_fn_1", "sunny"),
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "Now Rome."}]},
                call_item("call_fn_3", "weather", "{\"city\":\"Rome\"}"),
                call_item("call_fn_4", "time", "{\"tz\":\"CET\"}"),
                // A result answers the latest unanswered call of its name.
                output("call_fn_4", "noon"),
                output("call_fn_3", "rainy"),
                call_item("call_fn_7", "weather", "{}"),
                call_item("call_fn_8", "weather", "{}"),
                output("call_fn_8", "cloudy"),
                output("call_fn_7", ""),
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "Thanks"}]},
            ])
        );
        // Legacy messages alone do not make the answer legacy (the tools decide that).
        assert!(req.dropped.is_empty() && !options.legacy_functions);
        // A history with both forms keeps both.
        let (body, _, _) = convert(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            call("f", json!("{}")),
            result("f", json!("a")),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_x", "content": "b"},
        ], "tools": [{"type": "function", "function": {"name": "f"}}]}));
        let ids: Vec<&Value> = body["input"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("call_id"))
            .collect();
        assert_eq!(ids, ["call_fn_1", "call_fn_1", "call_x", "call_x"]);
    }

    #[test]
    fn legacy_function_errors_name_the_field() {
        let user = json!({"role": "user", "content": "hi"});
        let functions = json!([{"name": "f"}]);
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let call = |name: &str| {
            json!({"role": "assistant", "content": null,
                   "function_call": {"name": name, "arguments": "{}"}})
        };
        let with = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [user]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let messages = |messages: Value| json!({"model": "m", "messages": messages});
        let cases = [
            (
                with(json!({"functions": functions, "tools": tools})),
                "functions: cannot be used together with tools",
            ),
            (
                with(json!({"function_call": "auto", "tool_choice": "auto"})),
                "function_call: cannot be used together with tool_choice",
            ),
            (
                with(json!({"functions": functions, "tool_choice": "none"})),
                "functions: cannot be used together with tool_choice",
            ),
            (
                with(json!({"function_call": {"name": "f"}, "tools": tools})),
                "function_call: cannot be used together with tools",
            ),
            (
                with(json!({"functions": "x"})),
                "functions: must be an array",
            ),
            (
                with(json!({"functions": [{"description": "no name"}]})),
                "functions[0].name: required",
            ),
            (
                with(json!({"functions": [{"name": "f"}, 5]})),
                "functions[1]: must be an object",
            ),
            (
                with(json!({"functions": [{"name": 5}]})),
                "functions[0].name: must be a string",
            ),
            (
                with(json!({"function_call": 5})),
                "function_call: must be \"auto\", \"none\" or an object with a name",
            ),
            (
                with(json!({"function_call": "required"})),
                "function_call: unsupported value \"required\"",
            ),
            (
                with(json!({"function_call": {}})),
                "function_call.name: required",
            ),
            (
                with(json!({"function_call": "auto"})),
                "function_call: only allowed when functions are given",
            ),
            (
                with(json!({"functions": []})),
                "functions: must not be empty",
            ),
            (
                messages(json!([user, call("f"), {"role": "function", "content": "x"}])),
                "messages[2].name: required",
            ),
            (
                messages(
                    json!([user, {"role": "assistant", "function_call": {"arguments": "{}"}}]),
                ),
                "messages[1].function_call.name: required",
            ),
            (
                messages(json!([user, {"role": "assistant", "function_call": "f"}])),
                "messages[1].function_call: must be an object",
            ),
        ];
        for (body, expected) in cases {
            let err = chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default())
                .unwrap_err();
            assert_eq!(err.to_string(), expected, "{body}");
            let param = expected.split(": ").next();
            assert_eq!(err.param(), param, "{body}");
        }
    }

    #[test]
    fn a_legacy_function_result_without_a_call_gets_one() {
        // Retrieved text put in as a function result, with no function declared or called.
        let (body, _, options) = convert(json!({"model": "m", "messages": [
            {"role": "user", "content": "Where does Bob live?"},
            {"role": "function", "name": "get_context", "content": "Bob lives in Paris"},
            {"role": "assistant", "content": null,
             "function_call": {"name": "get_context", "arguments": "{}"}},
            {"role": "function", "name": "get_context", "content": "He moved to Rome"},
            {"role": "function", "name": "get_context", "content": "In 2024"},
        ]}));
        assert!(!options.legacy_functions, "no functions declared");
        let call = |id: &str| -> Value {
            json!({"type": "function_call", "call_id": id, "name": "get_context",
                   "arguments": "{}"})
        };
        let output = |id: &str, text: &str| -> Value {
            json!({"type": "function_call_output", "call_id": id, "output": text})
        };
        assert_eq!(
            body["input"].as_array().unwrap()[1..],
            [
                call("call_fn_1"),
                output("call_fn_1", "Bob lives in Paris"),
                call("call_fn_2"),
                output("call_fn_2", "He moved to Rome"),
                call("call_fn_4"),
                output("call_fn_4", "In 2024"),
            ]
        );
    }

    /// The usage chunk [`codex_stream`] ends with.
    fn usage_frame() -> Value {
        json!({"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-5-codex", "choices": [],
               "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                         "prompt_tokens_details": {"cached_tokens": 64},
                         "completion_tokens_details": {"reasoning_tokens": 16}}})
    }

    fn legacy_options(stream: bool) -> ChatOptions {
        ChatOptions {
            model: "m".into(),
            stream,
            include_usage: stream,
            stop: Vec::new(),
            legacy_functions: true,
        }
    }

    fn assemble_with(options: &ChatOptions, events: &[Value]) -> Value {
        let mut assembler = ChatAssembler::new(options, 42);
        for event in events {
            assembler
                .push(&SseEvent::new(serde_json::to_vec(event).unwrap()))
                .unwrap();
        }
        serde_json::from_slice(&assembler.finish().unwrap()).unwrap()
    }

    #[test]
    fn a_legacy_answer_has_one_function_call() {
        let frames = stream_frames(&legacy_options(true), &codex_stream(), false);
        let expected = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"reasoning_content": "Thinking"}), Value::Null),
            chunk(json!({"reasoning_content": " about it"}), Value::Null),
            chunk(json!({"content": "Hello"}), Value::Null),
            chunk(json!({"content": ", world"}), Value::Null),
            chunk(
                json!({"function_call": {"name": "get_weather", "arguments": ""}}),
                Value::Null,
            ),
            chunk(
                json!({"function_call": {"arguments": "{\"city\":"}}),
                Value::Null,
            ),
            chunk(
                json!({"function_call": {"arguments": "\"Paris\"}"}}),
                Value::Null,
            ),
            chunk(json!({}), json!("function_call")),
            usage_frame(),
            json!("[DONE]"),
        ];
        assert_eq!(frames, expected);

        let out = assemble_with(&legacy_options(false), &codex_stream());
        assert_eq!(
            out["choices"],
            json!([{"index": 0, "finish_reason": "function_call", "message": {
                "role": "assistant", "content": "Hello, world",
                "reasoning_content": "Thinking about it",
                "function_call": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}}])
        );
        assert_eq!(out["usage"]["total_tokens"], 140);

        // A call that only arrives whole, in output_item.done; no text: `content: null`.
        let done_only = [
            json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": "{}"}}),
            json!({"type": "response.completed", "response": {"id": "resp_abc"}}),
        ];
        let out = assemble_with(&legacy_options(false), &done_only);
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "finish_reason": "function_call", "message": {
                "role": "assistant", "content": null,
                "function_call": {"name": "f", "arguments": "{}"}}})
        );
        let frames = stream_frames(&legacy_options(true), &done_only, false);
        let deltas: Vec<&Value> = frames[..3].iter().map(|f| &f["choices"][0]).collect();
        assert_eq!(
            deltas,
            [
                // A call first: `content` null, as in the assembled message.
                &json!({"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}),
                &json!({"index": 0, "delta": {"function_call": {"name": "f", "arguments": ""}}, "finish_reason": null}),
                &json!({"index": 0, "delta": {"function_call": {"arguments": "{}"}}, "finish_reason": null}),
            ]
        );
        assert_eq!(frames[3]["choices"][0]["finish_reason"], "function_call");
    }

    #[test]
    fn a_legacy_answer_keeps_the_first_of_several_calls() {
        let added = |index: u64, name: &str| {
            json!({"type": "response.output_item.added", "output_index": index, "item": {
                "type": "function_call", "id": format!("fc_{index}"), "call_id": format!("call_{index}"),
                "name": name, "arguments": ""}})
        };
        let args = |index: u64, delta: &str| {
            json!({"type": "response.function_call_arguments.delta", "output_index": index,
                   "item_id": format!("fc_{index}"), "delta": delta})
        };
        let done = |index: u64, name: &str, arguments: &str| {
            json!({"type": "response.output_item.done", "output_index": index, "item": {
                "type": "function_call", "id": format!("fc_{index}"), "call_id": format!("call_{index}"),
                "name": name, "arguments": arguments}})
        };
        let events = [
            added(0, "first"),
            args(0, "{\"a\":"),
            added(1, "second"),
            args(1, "{\"b\":2}"),
            args(0, "1}"),
            done(0, "first", "{\"a\":1}"),
            done(1, "second", "{\"b\":2}"),
            // One that never was announced, only done: dropped as well.
            done(2, "third", "{\"c\":3}"),
            completed(),
        ];
        let out = assemble_with(&legacy_options(false), &events);
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "finish_reason": "function_call", "message": {
                "role": "assistant", "content": null,
                "function_call": {"name": "first", "arguments": "{\"a\":1}"}}})
        );
        let frames = stream_frames(&legacy_options(true), &events, false);
        let deltas: Vec<&Value> = frames
            .iter()
            .filter(|f| f.get("choices").is_some_and(|c| c[0].is_object()))
            .map(|f| &f["choices"][0]["delta"])
            .collect();
        assert_eq!(
            deltas,
            [
                &json!({"role": "assistant", "content": null}),
                &json!({"function_call": {"name": "first", "arguments": ""}}),
                &json!({"function_call": {"arguments": "{\"a\":"}}),
                &json!({"function_call": {"arguments": "1}"}}),
                &json!({}),
            ],
            "{frames:?}"
        );
        // The modern form returns all three.
        let modern = ChatOptions {
            legacy_functions: false,
            ..legacy_options(false)
        };
        let out = assemble_with(&modern, &events);
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn the_legacy_flag_keeps_stop_refusals_reasoning_and_usage() {
        // Answers without a function call are the same in both forms.
        let refusal =
            json!({"type": "message", "content": [{"type": "refusal", "refusal": "No."}]});
        let answers = [
            text_events(&["Thought: x", "\nObservation: y"]),
            vec![
                json!({"type": "response.reasoning_summary_text.delta", "output_index": 0,
                       "summary_index": 0, "delta": "hmm"}),
                json!({"type": "response.refusal.delta", "output_index": 1, "delta": "No."}),
                json!({"type": "response.output_item.done", "output_index": 1, "item": refusal}),
                completed(),
            ],
        ];
        for stop in [&[][..], &["\nObservation:"][..]] {
            for events in &answers {
                for stream in [true, false] {
                    let modern = stop_options(stream, stop);
                    let legacy = ChatOptions {
                        legacy_functions: true,
                        ..modern.clone()
                    };
                    if stream {
                        assert_eq!(
                            stream_frames(&legacy, events, true),
                            stream_frames(&modern, events, true),
                            "{stop:?} {events:?}"
                        );
                    } else {
                        assert_eq!(
                            assemble_with(&legacy, events),
                            assemble_with(&modern, events),
                            "{stop:?} {events:?}"
                        );
                    }
                }
            }
        }
        // A stop sequence before the call: the call is not part of the answer.
        let stop = ["\nObservation:"];
        let legacy = |stream| ChatOptions {
            legacy_functions: true,
            ..stop_options(stream, &stop)
        };
        let call_done = json!({"type": "response.output_item.done", "output_index": 1, "item": {
            "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}});
        let text = |index: u64, delta: &str| json!({"type": "response.output_text.delta", "output_index": index, "delta": delta});
        let cut_first = [
            text(0, "Go\nObservation: x"),
            call_done.clone(),
            completed(),
        ];
        let out = assemble_with(&legacy(false), &cut_first);
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Go"}})
        );
        // A call before the cut text stays; the finish reason is the stop.
        let call_first = [call_done, text(2, "Done\nObservation: x"), completed()];
        let out = assemble_with(&legacy(false), &call_first);
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": "Done", "function_call": {"name": "f", "arguments": "{}"}}})
        );
        let frames = stream_frames(&legacy(true), &call_first, false);
        let deltas: Vec<&Value> = frames[1..4]
            .iter()
            .map(|f| &f["choices"][0]["delta"])
            .collect();
        assert_eq!(
            deltas,
            [
                &json!({"function_call": {"name": "f", "arguments": ""}}),
                &json!({"function_call": {"arguments": "{}"}}),
                &json!({"content": "Done"}),
            ]
        );
        assert_eq!(frames[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(frames[5]["usage"]["total_tokens"], 17);
    }

    proptest! {
        /// The cut is where the earliest sequence starts in the whole text, whatever the deltas;
        /// what goes out is a prefix of the text, in non-empty pieces.
        #[test]
        fn the_cut_does_not_depend_on_the_deltas(
            chars in proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '\u{1F600}', '\n']), 0..24),
            stops in proptest::collection::vec(
                proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '\u{1F600}', '\n']), 0..5), 1..5),
            cuts in proptest::collection::vec(0usize..24, 0..6),
        ) {
            let text: String = chars.iter().collect();
            let stops: Vec<String> = stops.iter().map(|s| s.iter().collect()).collect();
            let mut bounds: Vec<usize> = cuts.iter().filter_map(|&c| text.char_indices().nth(c).map(|(i, _)| i)).collect();
            bounds.sort_unstable();
            bounds.dedup();
            let mut pieces = Vec::new();
            let mut last = 0;
            for b in bounds.into_iter().chain([text.len()]) {
                pieces.push(&text[last..b]);
                last = b;
            }
            let expected_end = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
            let Some(mut matcher) = StopMatcher::new(&stops) else {
                prop_assert!(stops.iter().all(String::is_empty));
                return Ok(());
            };
            let mut out = Vec::new();
            for piece in &pieces {
                matcher.push(piece, |t| out.push(t.to_owned()));
            }
            matcher.flush(|t| out.push(t.to_owned()));
            prop_assert!(out.iter().all(|p| !p.is_empty()));
            prop_assert_eq!(out.concat(), &text[..expected_end.unwrap_or(text.len())]);
            prop_assert_eq!(matcher.matched, expected_end.is_some());
        }
    }

    proptest! {
        #[test]
        fn chat_request_adapter_never_panics(value in crate::adapt::testing::arb_json(),
                                             message in crate::adapt::testing::arb_json()) {
            let bodies = [
                value.clone(),
                json!({"model": "m", "messages": value.clone()}),
                json!({"model": "m", "messages": [message.clone(), value.clone()], "tools": value.clone(),
                       "tool_choice": message.clone(), "response_format": value.clone()}),
                json!({"model": "m", "messages": [{"role": "user", "content": value.clone()},
                                                 {"role": "assistant", "tool_calls": value.clone(), "content": message.clone()},
                                                 {"role": "tool", "tool_call_id": "x", "content": value.clone()}]}),
                json!({"model": "m", "functions": value.clone(), "function_call": message.clone(),
                       "messages": [{"role": "assistant", "function_call": value.clone(), "content": message.clone()},
                                    {"role": "function", "name": message.clone(), "content": value.clone()},
                                    {"role": "assistant", "function_call": {"name": "f", "arguments": value.clone()}},
                                    {"role": "function", "name": "f", "content": message.clone()}]}),
            ];
            for body in bodies {
                let bytes = serde_json::to_vec(&body).unwrap();
                if let Ok((req, _)) = chat_to_responses(&bytes, &Overrides::default()) {
                    let out: Value = serde_json::from_slice(&req.body).unwrap();
                    prop_assert_eq!(&out["stream"], &json!(true));
                }
            }
        }

        #[test]
        fn translator_never_panics(values in proptest::collection::vec(crate::adapt::testing::arb_json(), 0..12),
                                   kinds in proptest::collection::vec(prop::sample::select(vec![
                                       "response.created", "response.output_item.added",
                                       "response.output_text.delta", "response.reasoning_summary_text.delta",
                                       "response.function_call_arguments.delta", "response.output_item.done",
                                       "response.completed", "response.failed", "response.incomplete", "error",
                                   ]), 12),
                                   garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
            let options = ChatOptions { model: "m".into(), stream: true, include_usage: true, stop: Vec::new(), legacy_functions: false };
            let mut chat = ChatStream::new(&options, 0);
            let mut assembler = ChatAssembler::new(&options, 0);
            let with_stop = ChatOptions { stop: vec!["a".into(), "\n\u{e9}".into()], ..options.clone() };
            let mut stopping = ChatStream::new(&with_stop, 0);
            let legacy = ChatOptions { legacy_functions: true, ..with_stop.clone() };
            let mut legacy_chat = ChatStream::new(&legacy, 0);
            let mut legacy_assembler = ChatAssembler::new(&legacy, 0);
            let mut out = BytesMut::new();
            let mut stopped_out = BytesMut::new();
            let mut legacy_out = BytesMut::new();
            for (value, kind) in values.iter().zip(&kinds) {
                let mut object = serde_json::Map::new();
                object.insert("type".into(), (*kind).into());
                for key in ["response", "item", "delta", "output_index", "summary_index", "item_id", "code"] {
                    object.insert(key.into(), value.clone());
                }
                let event = SseEvent::new(serde_json::to_vec(&object).unwrap());
                let _ = chat.push(&event, &mut out);
                let _ = stopping.push(&event, &mut stopped_out);
                let _ = legacy_chat.push(&event, &mut legacy_out);
                let _ = assembler.push(&event);
                let _ = legacy_assembler.push(&event);
                let junk = SseEvent::new(garbage.clone()).with_event(*kind);
                let _ = chat.push(&junk, &mut out);
                let _ = stopping.push(&junk, &mut stopped_out);
                let _ = legacy_chat.push(&junk, &mut legacy_out);
                let _ = assembler.push(&junk);
                let _ = legacy_assembler.push(&junk);
            }
            chat.finish(&mut out);
            stopping.finish(&mut stopped_out);
            legacy_chat.finish(&mut legacy_out);
            let _ = assembler.finish();
            let _ = legacy_assembler.finish();
            // Whatever came in, the output is well-formed SSE ending in [DONE].
            for out in [out, stopped_out, legacy_out] {
                prop_assert!(out.ends_with(DONE_FRAME));
                let mut parser = SseParser::new();
                parser.push(out.freeze());
                while let Some(item) = parser.next_item().unwrap() {
                    if let SseItem::Event(e) = item
                        && !e.is_done_marker()
                    {
                        let _: Value = serde_json::from_slice(e.data()).unwrap();
                    }
                }
                prop_assert!(parser.finish().is_ok());
            }
        }
    }
}
