//! A chat request as a Responses body: [`chat_to_responses`] and the pieces it writes.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ChatOptions, MAX_STOPS};
use crate::adapt::responses::include_list;
use crate::adapt::{
    DEFAULT_INSTRUCTIONS, JSON_DIRECTIVE, ObjectWriter, Overrides, RequestError, Shallow,
    UpstreamRequest, bool_field, mentions_json, note_dropped, parse_object, parse_object_with,
    raw_str, write_json,
};

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
        if !CHAT_FIELDS.contains(&key.as_ref()) && !crate::adapt::is_null(value) {
            note_dropped(&mut dropped, key);
        }
    }

    let model = crate::adapt::responses::resolve_model(obj.get("model"), overrides)?;
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
    // As OpenAI does: options for a stream that is not asked for are a mistake, not a no-op.
    if !stream && obj.get("stream_options").is_some() {
        return Err(RequestError::field(
            "stream_options",
            "only allowed when stream is true",
        ));
    }

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
            &mut dropped,
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
    // JSON mode asked for only in the system prompt is said again where the backend looks:
    // second, to keep the conversation's first item (its session fingerprint) and the
    // prompt-cache prefix the same from turn to turn.
    if matches!(format, Some(Format::JsonObject))
        && mentions_json(&instructions)
        && !input.iter().any(Item::mentions_json)
    {
        input.insert(
            input.len().min(1),
            Item::Message {
                role: "developer",
                content: vec![Part::InputText {
                    text: Text::Made(Cow::Borrowed(JSON_DIRECTIVE)),
                }],
            },
        );
    }
    let verbosity = crate::adapt::str_field(&obj, "verbosity", || "verbosity".to_owned())?;
    let effort = match overrides.reasoning_effort {
        Some(effort) => Some(Cow::Borrowed(effort)),
        None => {
            crate::adapt::str_field(&obj, "reasoning_effort", || "reasoning_effort".to_owned())?
        }
    };
    let prompt_cache_key =
        crate::adapt::str_field(&obj, "prompt_cache_key", || "prompt_cache_key".to_owned())?;
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
pub(super) enum Item<'a> {
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

/// Reported in [`UpstreamRequest::dropped`] when a message names its participant.
const NAME_DROPPED: &str = "messages[].name";

impl Item<'_> {
    /// Whether a message's text says "json" (escapes in a client's literal are read as is).
    fn mentions_json(&self) -> bool {
        let Self::Message { content, .. } = self else {
            return false;
        };
        content.iter().any(|part| match part {
            Part::InputText { text } | Part::OutputText { text } => mentions_json(match text {
                Text::Literal(raw) => raw.get(),
                Text::Made(text) => text,
            }),
            Part::InputImage { .. } => false,
        })
    }

    /// Writes the item as its JSON: messages (most of a conversation) with their fixed keys and
    /// tags as literals, which serde would escape one by one; the rest as serde writes it.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
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
pub(super) enum Part<'a> {
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
pub(super) enum Text<'a> {
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
    /// `allowed_tools`: the model may call only these (`mode` `auto` or `required`).
    Allowed {
        #[serde(rename = "type")]
        kind: &'static str,
        mode: Cow<'a, str>,
        tools: Vec<ToolChoice<'a>>,
    },
}

/// Fields of a chat message, read leniently and checked one by one for precise errors.
#[derive(Deserialize)]
pub(super) struct MessageFields<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_call_id: Option<&'a RawValue>,
    /// The function a legacy `function` message answers; on other roles, the participant's
    /// name, which Responses input has no place for (dropped and reported).
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    /// An assistant message's refusal, as OpenAI returns it (`content` then null).
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
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
    /// `tool_choice.allowed_tools`.
    #[serde(borrow)]
    allowed_tools: Option<&'a RawValue>,
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
    raw.filter(|r| !crate::adapt::is_null(r))
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
    dropped: &mut Vec<String>,
) -> Result<(), RequestError> {
    let path = |field: &str| format!("messages[{i}]{field}");
    let role = required_str(m.role, &|| path(".role"))?;
    if !matches!(role.as_ref(), "function" | "tool") && not_null(m.name).is_some() {
        note_dropped(dropped, NAME_DROPPED);
    }
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
            let refusal = match not_null(m.refusal) {
                Some(_) => required_text(m.refusal, &|| path(".refusal"))?,
                None => Text::Made(Cow::Borrowed("")),
            };
            let parts: Vec<_> = [text, refusal]
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(|text| Part::OutputText { text })
                .collect();
            if !parts.is_empty() {
                input.push(Item::Message {
                    role: "assistant",
                    content: parts,
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
        // Valid in strict mode too, which requires every object to close its properties.
        RawValue::from_string(
            r#"{"type":"object","properties":{},"required":[],"additionalProperties":false}"#
                .to_owned(),
        )
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
    if kind == "allowed_tools" {
        let allowed = not_null(c.allowed_tools)
            .ok_or_else(|| RequestError::field("tool_choice.allowed_tools", "required"))?;
        return allowed_tools(allowed);
    }
    named_function(&kind, c.function, "tool_choice", "tool choice")
}

/// A choice of one function (`{type: "function", function: {name}}`, read as `kind` and
/// `function`) at `path`; another `type` is an unsupported `what`.
fn named_function<'a>(
    kind: &str,
    function: Option<&'a RawValue>,
    path: &str,
    what: &str,
) -> Result<ToolChoice<'a>, RequestError> {
    if kind != "function" {
        return Err(RequestError::field(
            format!("{path}.type"),
            format!("unsupported {what} {}", quoted(kind)),
        ));
    }
    let function = not_null(function)
        .ok_or_else(|| RequestError::field(format!("{path}.function"), "required"))?;
    let f: FunctionFields<'a> = fields(function, &|| format!("{path}.function"))?;
    Ok(ToolChoice::Function {
        kind: "function",
        name: required_str(f.name, &|| format!("{path}.function.name"))?,
    })
}

/// `tool_choice.allowed_tools` (`{mode, tools: [{type: "function", function: {name}}]}`) as
/// the Responses API says it (`{type: "allowed_tools", mode, tools: [{type, name}]}`).
fn allowed_tools(raw: &RawValue) -> Result<ToolChoice<'_>, RequestError> {
    #[derive(Deserialize)]
    struct AllowedFields<'a> {
        #[serde(borrow)]
        mode: Option<&'a RawValue>,
        #[serde(borrow)]
        tools: Option<&'a RawValue>,
    }
    let path = "tool_choice.allowed_tools";
    let a: AllowedFields<'_> = fields(raw, &|| path.to_owned())?;
    let mode = required_str(a.mode, &|| format!("{path}.mode"))?;
    if !matches!(mode.as_ref(), "auto" | "required") {
        return Err(RequestError::field(
            format!("{path}.mode"),
            format!(r#"must be "auto" or "required", not {}"#, quoted(&mode)),
        ));
    }
    let list = not_null(a.tools)
        .ok_or_else(|| RequestError::field(format!("{path}.tools"), "required"))?;
    let list = array(list, &|| format!("{path}.tools"))?;
    if list.is_empty() {
        return Err(RequestError::field(
            format!("{path}.tools"),
            "must not be empty",
        ));
    }
    let mut tools = Vec::with_capacity(list.len());
    for (i, tool) in list.into_iter().enumerate() {
        let at = |field: &str| format!("{path}.tools[{i}]{field}");
        let t: ToolCallFields<'_> = fields(tool, &|| at(""))?;
        let kind = required_str(t.kind, &|| at(".type"))?;
        tools.push(named_function(&kind, t.function, &at(""), "tool type")?);
    }
    Ok(ToolChoice::Allowed {
        kind: "allowed_tools",
        mode,
        tools,
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
