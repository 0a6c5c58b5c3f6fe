//! The Codex backend's stream events as types, the preflight rule, and upstream failure classes.
//!
//! The failover loop reads an upstream answer only until it knows whether the attempt is good: every
//! event goes through [`preflight_sse`] until it says [`Preflight::Semantic`] (commit: from here on
//! the client sees output and the attempt is never retried) or [`Preflight::Failure`] (report the
//! account and try the next one); a non-200 answer goes through [`classify_error_body`] instead.
//! Both produce an [`UpstreamFailure`] whose [`FailureKind`] names what the pool must do with the
//! account. [`ResponsesEvent`] is the typed, borrowed view the translators use: one pass over the
//! event's bytes, strings borrowed unless they contain escapes, and the parts read only on demand
//! (message content, reasoning summaries, the response's `output`) left as raw JSON. Parsing is
//! strict where a wrong shape means a broken stream
//! (a delta without text) and lenient where it only loses information (usage counters, ids,
//! timestamps of the wrong type read as absent).

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::JStr;
use crate::sse::{SseEvent, SseItem, peek_json_type};

/// The event types the gateway distinguishes (PROTOCOL.md §4); anything else is [`Other`](Self::Other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `response.created`
    Created,
    /// `response.in_progress`
    InProgress,
    /// `response.output_item.added`
    OutputItemAdded,
    /// `response.content_part.added`
    ContentPartAdded,
    /// `response.output_text.delta`
    OutputTextDelta,
    /// `response.output_text.done`
    OutputTextDone,
    /// `response.reasoning_summary_text.delta`
    ReasoningSummaryTextDelta,
    /// `response.reasoning_text.delta`
    ReasoningTextDelta,
    /// `response.function_call_arguments.delta`
    FunctionCallArgumentsDelta,
    /// `response.function_call_arguments.done`
    FunctionCallArgumentsDone,
    /// `response.custom_tool_call_input.delta` (a freeform tool's input, e.g. the Codex CLI's
    /// `apply_patch`)
    CustomToolCallInputDelta,
    /// `response.refusal.delta`
    RefusalDelta,
    /// `response.refusal.done`
    RefusalDone,
    /// `response.output_item.done`
    OutputItemDone,
    /// `response.completed`
    Completed,
    /// `response.failed`
    Failed,
    /// `response.incomplete`
    Incomplete,
    /// `error`
    Error,
    /// Any other type: forwarded to Responses clients, ignored by translators.
    Other,
}

impl EventKind {
    /// The kind of a `type` string.
    pub fn from_type(kind: &str) -> Self {
        match kind {
            "response.created" => Self::Created,
            "response.in_progress" => Self::InProgress,
            "response.output_item.added" => Self::OutputItemAdded,
            "response.content_part.added" => Self::ContentPartAdded,
            "response.output_text.delta" => Self::OutputTextDelta,
            "response.output_text.done" => Self::OutputTextDone,
            "response.reasoning_summary_text.delta" => Self::ReasoningSummaryTextDelta,
            "response.reasoning_text.delta" => Self::ReasoningTextDelta,
            "response.function_call_arguments.delta" => Self::FunctionCallArgumentsDelta,
            "response.function_call_arguments.done" => Self::FunctionCallArgumentsDone,
            "response.custom_tool_call_input.delta" => Self::CustomToolCallInputDelta,
            "response.refusal.delta" => Self::RefusalDelta,
            "response.refusal.done" => Self::RefusalDone,
            "response.output_item.done" => Self::OutputItemDone,
            "response.completed" => Self::Completed,
            "response.failed" => Self::Failed,
            "response.incomplete" => Self::Incomplete,
            "error" => Self::Error,
            _ => Self::Other,
        }
    }

    /// The kind of an SSE event, from its JSON `type` (else its `event:` name), with a cheap peek.
    pub fn of(event: &SseEvent) -> Self {
        event
            .event_type()
            .map_or(Self::Other, |kind| Self::from_type(&kind))
    }

    /// Whether this event ends the response (nothing meaningful follows it).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Incomplete | Self::Error
        )
    }
}

/// An upstream event that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The payload has no JSON `type` and the SSE block no `event:` name.
    #[error("upstream event has no type")]
    MissingType,
    /// The payload does not have the shape its type requires.
    #[error("malformed upstream event `{event_type}`: {source}")]
    Malformed {
        /// The event's type.
        event_type: String,
        /// What the JSON parser found.
        #[source]
        source: serde_json::Error,
    },
}

/// A text delta (`output_text`, refusal, reasoning summary or text, function-call arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta<'a> {
    /// Position of the output item the delta belongs to.
    pub output_index: Option<u64>,
    /// Id of that item.
    pub item_id: Option<Cow<'a, str>>,
    /// For reasoning summaries: which summary part.
    pub summary_index: Option<u64>,
    /// The text.
    pub delta: Cow<'a, str>,
}

/// One Codex Responses stream event, borrowing from the event's bytes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ResponsesEvent<'a> {
    /// `response.created`
    Created(ResponseRef<'a>),
    /// `response.in_progress`
    InProgress(ResponseRef<'a>),
    /// `response.output_item.added`
    OutputItemAdded {
        /// Position of the item in the output.
        output_index: Option<u64>,
        /// The item as announced (a function call already has its `call_id` and `name`).
        item: ItemRef<'a>,
    },
    /// `response.content_part.added`
    ContentPartAdded {
        /// Position of the item in the output.
        output_index: Option<u64>,
    },
    /// `response.output_text.delta`
    OutputTextDelta(Delta<'a>),
    /// `response.output_text.done`
    OutputTextDone {
        /// Position of the item in the output.
        output_index: Option<u64>,
        /// The whole text of the part.
        text: Option<Cow<'a, str>>,
    },
    /// `response.reasoning_summary_text.delta`
    ReasoningSummaryTextDelta(Delta<'a>),
    /// `response.reasoning_text.delta`
    ReasoningTextDelta(Delta<'a>),
    /// `response.function_call_arguments.delta`
    FunctionCallArgumentsDelta(Delta<'a>),
    /// `response.custom_tool_call_input.delta`
    CustomToolCallInputDelta(Delta<'a>),
    /// `response.function_call_arguments.done`
    FunctionCallArgumentsDone {
        /// Position of the item in the output.
        output_index: Option<u64>,
        /// Id of the function-call item.
        item_id: Option<Cow<'a, str>>,
        /// The complete arguments.
        arguments: Option<Cow<'a, str>>,
    },
    /// `response.refusal.delta`: the model declines, streamed like text.
    RefusalDelta(Delta<'a>),
    /// `response.refusal.done`
    RefusalDone {
        /// Position of the item in the output.
        output_index: Option<u64>,
        /// The whole refusal text of the part.
        refusal: Option<Cow<'a, str>>,
    },
    /// `response.output_item.done`
    OutputItemDone {
        /// Position of the item in the output.
        output_index: Option<u64>,
        /// The finished item.
        item: ItemRef<'a>,
    },
    /// `response.completed`
    Completed(ResponseRef<'a>),
    /// `response.failed`
    Failed(ResponseRef<'a>),
    /// `response.incomplete`
    Incomplete(ResponseRef<'a>),
    /// `error`
    Error(ErrorRef<'a>),
    /// Another type, not parsed further.
    Other(Cow<'a, str>),
}

impl<'a> ResponsesEvent<'a> {
    /// Parses an SSE event; the type comes from the JSON `type`, else the `event:` name.
    pub fn from_sse(event: &'a SseEvent) -> Result<Self, EventError> {
        let kind = event.event_type().ok_or(EventError::MissingType)?;
        Self::parse_as(kind, event.data())
    }

    /// Parses a JSON payload that carries its own `type`.
    pub fn parse(data: &'a [u8]) -> Result<Self, EventError> {
        let kind = peek_json_type(data).ok_or(EventError::MissingType)?;
        Self::parse_as(kind, data)
    }

    /// Parses `data` as an event of type `kind`. [`Other`](Self::Other) types are not read at all.
    pub fn parse_as(kind: Cow<'a, str>, data: &'a [u8]) -> Result<Self, EventError> {
        let malformed = |source| EventError::Malformed {
            event_type: kind.to_string(),
            source,
        };
        let event_kind = EventKind::from_type(&kind);
        if event_kind == EventKind::Other {
            return Ok(Self::Other(kind));
        }
        // One UTF-8 check for the whole payload: parsing from `&str` then skips the per-string
        // checks a byte-slice parse does for every key and value (a third of the parse time).
        let data = std::str::from_utf8(data)
            .map_err(|e| malformed(<serde_json::Error as serde::de::Error>::custom(e)))?;
        let event = match event_kind {
            EventKind::Other => return Ok(Self::Other(kind)),
            k @ (EventKind::Created
            | EventKind::InProgress
            | EventKind::Completed
            | EventKind::Failed
            | EventKind::Incomplete) => {
                let fields: ResponseEventFields<'a> =
                    serde_json::from_str(data).map_err(malformed)?;
                let response = ResponseRef::from_fields(fields.response);
                match k {
                    EventKind::Created => Self::Created(response),
                    EventKind::InProgress => Self::InProgress(response),
                    EventKind::Completed => Self::Completed(response),
                    EventKind::Failed => Self::Failed(response),
                    _ => Self::Incomplete(response),
                }
            }
            k @ (EventKind::OutputItemAdded | EventKind::OutputItemDone) => {
                let fields: ItemEventFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                let item = ItemRef::from_fields(fields.item);
                let output_index = fields.output_index;
                if k == EventKind::OutputItemAdded {
                    Self::OutputItemAdded { output_index, item }
                } else {
                    Self::OutputItemDone { output_index, item }
                }
            }
            EventKind::ContentPartAdded => {
                let fields: DoneFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                Self::ContentPartAdded {
                    output_index: fields.output_index,
                }
            }
            k @ (EventKind::OutputTextDelta
            | EventKind::RefusalDelta
            | EventKind::ReasoningSummaryTextDelta
            | EventKind::ReasoningTextDelta
            | EventKind::FunctionCallArgumentsDelta
            | EventKind::CustomToolCallInputDelta) => {
                let fields: DeltaFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                let delta = Delta {
                    output_index: fields.output_index,
                    item_id: fields.item_id.map(|s| s.0),
                    summary_index: fields.summary_index,
                    delta: fields.delta.0,
                };
                match k {
                    EventKind::OutputTextDelta => Self::OutputTextDelta(delta),
                    EventKind::RefusalDelta => Self::RefusalDelta(delta),
                    EventKind::ReasoningSummaryTextDelta => Self::ReasoningSummaryTextDelta(delta),
                    EventKind::ReasoningTextDelta => Self::ReasoningTextDelta(delta),
                    EventKind::CustomToolCallInputDelta => Self::CustomToolCallInputDelta(delta),
                    _ => Self::FunctionCallArgumentsDelta(delta),
                }
            }
            EventKind::OutputTextDone => {
                let fields: DoneFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                Self::OutputTextDone {
                    output_index: fields.output_index,
                    text: fields.text.map(|s| s.0),
                }
            }
            EventKind::RefusalDone => {
                let fields: DoneFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                Self::RefusalDone {
                    output_index: fields.output_index,
                    refusal: fields.refusal.map(|s| s.0),
                }
            }
            EventKind::FunctionCallArgumentsDone => {
                let fields: DoneFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                Self::FunctionCallArgumentsDone {
                    output_index: fields.output_index,
                    item_id: fields.item_id.map(|s| s.0),
                    arguments: fields.arguments.map(|s| s.0),
                }
            }
            EventKind::Error => {
                let fields: ErrorFields<'a> = serde_json::from_str(data).map_err(malformed)?;
                Self::Error(ErrorRef::from_event_fields(fields))
            }
        };
        Ok(event)
    }

    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Created(_) => EventKind::Created,
            Self::InProgress(_) => EventKind::InProgress,
            Self::OutputItemAdded { .. } => EventKind::OutputItemAdded,
            Self::ContentPartAdded { .. } => EventKind::ContentPartAdded,
            Self::OutputTextDelta(_) => EventKind::OutputTextDelta,
            Self::OutputTextDone { .. } => EventKind::OutputTextDone,
            Self::ReasoningSummaryTextDelta(_) => EventKind::ReasoningSummaryTextDelta,
            Self::ReasoningTextDelta(_) => EventKind::ReasoningTextDelta,
            Self::FunctionCallArgumentsDelta(_) => EventKind::FunctionCallArgumentsDelta,
            Self::CustomToolCallInputDelta(_) => EventKind::CustomToolCallInputDelta,
            Self::FunctionCallArgumentsDone { .. } => EventKind::FunctionCallArgumentsDone,
            Self::RefusalDelta(_) => EventKind::RefusalDelta,
            Self::RefusalDone { .. } => EventKind::RefusalDone,
            Self::OutputItemDone { .. } => EventKind::OutputItemDone,
            Self::Completed(_) => EventKind::Completed,
            Self::Failed(_) => EventKind::Failed,
            Self::Incomplete(_) => EventKind::Incomplete,
            Self::Error(_) => EventKind::Error,
            Self::Other(_) => EventKind::Other,
        }
    }
}

// Items and responses are read in the same pass as their event (no raw capture first): they
// repeat the whole answer, so a second scan would be the most expensive part of the stream.
#[derive(Deserialize)]
struct ResponseEventFields<'a> {
    #[serde(borrow)]
    response: ResponseFields<'a>,
}

#[derive(Deserialize)]
struct ItemEventFields<'a> {
    output_index: Option<u64>,
    #[serde(borrow)]
    item: ItemFields<'a>,
}

#[derive(Deserialize)]
struct DeltaFields<'a> {
    output_index: Option<u64>,
    #[serde(borrow)]
    item_id: Option<JStr<'a>>,
    summary_index: Option<u64>,
    #[serde(borrow)]
    delta: JStr<'a>,
}

#[derive(Deserialize)]
struct DoneFields<'a> {
    output_index: Option<u64>,
    #[serde(borrow)]
    item_id: Option<JStr<'a>>,
    #[serde(borrow)]
    text: Option<JStr<'a>>,
    #[serde(borrow)]
    arguments: Option<JStr<'a>>,
    #[serde(borrow)]
    refusal: Option<JStr<'a>>,
}

/// Error-ish fields, every one optional and of any type (read leniently afterwards).
#[derive(Deserialize, Default)]
struct ErrorFields<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    detail: Option<&'a RawValue>,
    #[serde(borrow)]
    resets_at: Option<&'a RawValue>,
    #[serde(borrow)]
    resets_in_seconds: Option<&'a RawValue>,
    #[serde(borrow)]
    param: Option<&'a RawValue>,
}

/// An item of the response `output` (message, reasoning, function call, …).
#[derive(Debug, Clone)]
pub struct ItemRef<'a> {
    /// Its `type` (`message`, `reasoning`, `function_call`, …).
    pub kind: Option<Cow<'a, str>>,
    /// Its `id`.
    pub id: Option<Cow<'a, str>>,
    /// For function calls: the id the tool result must quote.
    pub call_id: Option<Cow<'a, str>>,
    /// For function calls: the function name.
    pub name: Option<Cow<'a, str>>,
    /// For function calls: the arguments (JSON text).
    pub arguments: Option<Cow<'a, str>>,
    /// For messages: the role.
    pub role: Option<Cow<'a, str>>,
    content: Option<&'a RawValue>,
    summary: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ItemFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    summary: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
}

impl<'a> ItemRef<'a> {
    /// Reads an item; fails only when it is not a JSON object.
    pub fn parse(raw: &'a RawValue) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw.get()).map(Self::from_fields)
    }

    fn from_fields(f: ItemFields<'a>) -> Self {
        Self {
            kind: f.kind.and_then(lenient_str),
            id: f.id.and_then(lenient_str),
            call_id: f.call_id.and_then(lenient_str),
            name: f.name.and_then(lenient_str),
            arguments: f.arguments.and_then(lenient_str),
            role: f.role.and_then(lenient_str),
            content: f.content,
            summary: f.summary,
        }
    }

    /// Whether the item's type is `function_call`.
    pub fn is_function_call(&self) -> bool {
        self.kind.as_deref() == Some("function_call")
    }

    /// The text of a message item: its `output_text` parts concatenated (a string `content` as
    /// is). `refusal` parts are not text: see [`refusal`](Self::refusal). Empty for other items or
    /// unexpected shapes.
    pub fn text(&self) -> Cow<'a, str> {
        if let Some(text) = self.content.and_then(lenient_str) {
            return text;
        }
        self.parts(|p| {
            let refusal = p.kind.and_then(lenient_str).as_deref() == Some("refusal");
            if refusal { None } else { p.text }
        })
    }

    /// The refusal of a message item: its `refusal` parts (`{"type":"refusal","refusal":…}`)
    /// concatenated. Empty when the model did not decline.
    pub fn refusal(&self) -> Cow<'a, str> {
        // Every answer's message item comes by here: no parse unless a refusal part is there.
        static REFUSAL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""refusal""#));
        if self
            .content
            .is_none_or(|c| REFUSAL.find(c.get().as_bytes()).is_none())
        {
            return Cow::Borrowed("");
        }
        self.parts(|p| {
            let refusal = p.kind.and_then(lenient_str).as_deref() == Some("refusal");
            if refusal { p.refusal } else { None }
        })
    }

    /// The strings `pick` chooses from the content parts, concatenated.
    fn parts(&self, pick: impl Fn(PartFields<'a>) -> Option<&'a RawValue>) -> Cow<'a, str> {
        let Some(content) = self.content else {
            return Cow::Borrowed("");
        };
        let parts: Vec<&'a RawValue> = serde_json::from_str(content.get()).unwrap_or_default();
        let texts = parts.into_iter().filter_map(|part| {
            let p: PartFields<'a> = serde_json::from_str(part.get()).ok()?;
            pick(p).and_then(lenient_str)
        });
        concat(texts, "")
    }

    /// The summary of a reasoning item: its `summary_text` parts joined by a blank line.
    pub fn summary_text(&self) -> Cow<'a, str> {
        let Some(summary) = self.summary else {
            return Cow::Borrowed("");
        };
        let parts: Vec<&'a RawValue> = serde_json::from_str(summary.get()).unwrap_or_default();
        let texts = parts.into_iter().filter_map(|part| {
            let p: PartFields<'a> = serde_json::from_str(part.get()).ok()?;
            p.text.and_then(lenient_str)
        });
        concat(texts, "\n\n")
    }
}

/// Joins texts, borrowing when there is only one.
fn concat<'a>(mut texts: impl Iterator<Item = Cow<'a, str>>, sep: &str) -> Cow<'a, str> {
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = texts.next() else {
        return first;
    };
    let mut joined = first.into_owned();
    for text in std::iter::once(second).chain(texts) {
        joined.push_str(sep);
        joined.push_str(&text);
    }
    Cow::Owned(joined)
}

/// The `response` object of `response.created/in_progress/completed/failed/incomplete`.
#[derive(Debug, Clone)]
pub struct ResponseRef<'a> {
    /// `id` (`resp_…`).
    pub id: Option<Cow<'a, str>>,
    /// `model` as the upstream reports it.
    pub model: Option<Cow<'a, str>>,
    /// `created_at`, epoch seconds.
    pub created_at: Option<i64>,
    /// `status` (`in_progress`, `completed`, `failed`, `incomplete`).
    pub status: Option<Cow<'a, str>>,
    /// `error`, for failed responses.
    pub error: Option<ErrorRef<'a>>,
    /// `incomplete_details.reason` (`max_output_tokens`, `content_filter`).
    pub incomplete_reason: Option<Cow<'a, str>>,
    /// `usage`, when present and an object.
    pub usage: Option<TokenUsage>,
    output: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseFields<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    incomplete_details: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    output: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct IncompleteFields<'a> {
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
}

impl<'a> ResponseRef<'a> {
    /// Reads a response object; fails only when it is not a JSON object.
    pub fn parse(raw: &'a RawValue) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw.get()).map(Self::from_fields)
    }

    fn from_fields(f: ResponseFields<'a>) -> Self {
        Self {
            id: f.id.and_then(lenient_str),
            model: f.model.and_then(lenient_str),
            created_at: f.created_at.and_then(lenient_i64),
            status: f.status.and_then(lenient_str),
            error: f.error.map(ErrorRef::from_raw),
            incomplete_reason: f
                .incomplete_details
                .and_then(|d| serde_json::from_str::<IncompleteFields<'a>>(d.get()).ok())
                .and_then(|d| d.reason)
                .and_then(lenient_str),
            usage: f.usage.and_then(TokenUsage::from_raw),
            output: f.output,
        }
    }

    /// The raw `output` array, if present.
    pub fn output(&self) -> Option<&'a RawValue> {
        self.output
    }

    /// Whether `output` is missing or an empty array (the backend sometimes sends `output: []` in
    /// `response.completed` and only streams the items).
    pub fn output_is_empty(&self) -> bool {
        // A raw value is valid JSON: an empty array is `[`, maybe whitespace, `]`.
        self.output.is_none_or(|o| {
            o.get()
                .trim_start()
                .strip_prefix('[')
                .is_some_and(|rest| rest.trim_start().starts_with(']'))
        })
    }

    /// The failure a `response.failed` describes.
    pub fn failure(&self) -> UpstreamFailure {
        self.error.as_ref().map_or_else(
            || ErrorRef::default().to_failure(None),
            |e| e.to_failure(None),
        )
    }
}

/// An error object (`response.error`, the `error` event, or a non-200 body), read leniently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorRef<'a> {
    /// `code` (`usage_limit_reached`, `server_is_overloaded`, …).
    pub code: Option<Cow<'a, str>>,
    /// `type` of the error object.
    pub kind: Option<Cow<'a, str>>,
    /// `message` (or FastAPI's `detail`).
    pub message: Option<Cow<'a, str>>,
    /// `resets_at`, epoch seconds (usage limits).
    pub resets_at: Option<i64>,
    /// `resets_in_seconds` (usage limits).
    pub resets_in_seconds: Option<u64>,
    /// `param`: the request parameter at fault.
    pub param: Option<Cow<'a, str>>,
}

impl<'a> ErrorRef<'a> {
    /// Reads an error object leniently: a string becomes the message, anything else is empty.
    pub fn from_raw(raw: &'a RawValue) -> Self {
        if let Some(message) = lenient_str(raw) {
            return Self {
                message: Some(message),
                ..Self::default()
            };
        }
        serde_json::from_str::<ErrorFields<'a>>(raw.get())
            .map(|f| Self::from_fields(&f, true))
            .unwrap_or_default()
    }

    fn from_fields(f: &ErrorFields<'a>, with_type: bool) -> Self {
        Self {
            code: f.code.and_then(lenient_str),
            kind: if with_type {
                f.kind.and_then(lenient_str)
            } else {
                None
            },
            message: f
                .message
                .and_then(lenient_str)
                .or_else(|| f.detail.and_then(lenient_str)),
            resets_at: f.resets_at.and_then(lenient_i64),
            resets_in_seconds: f.resets_in_seconds.and_then(lenient_u64),
            param: f.param.and_then(lenient_str),
        }
    }

    /// The `error` event: `{type:"error", code, message}` or `{type:"error", error:{…}}`.
    fn from_event_fields(f: ErrorFields<'a>) -> Self {
        match f.error {
            Some(nested) => {
                let mut e = Self::from_raw(nested);
                let outer = Self::from_fields(&f, false);
                e.code = e.code.or(outer.code);
                e.message = e.message.or(outer.message);
                e
            }
            None => Self::from_fields(&f, false),
        }
    }

    /// A body-level error: `{error:{…}}`, `{detail:{…}}`, or fields at the top.
    fn from_body(f: ErrorFields<'a>) -> Self {
        if let Some(nested) = f.error.or(f.detail.filter(|d| d.get().starts_with('{'))) {
            let mut e = Self::from_raw(nested);
            let outer = Self::from_fields(&f, true);
            e.code = e.code.or(outer.code);
            e.kind = e.kind.or(outer.kind);
            e.message = e.message.or(outer.message);
            e.resets_at = e.resets_at.or(outer.resets_at);
            e.resets_in_seconds = e.resets_in_seconds.or(outer.resets_in_seconds);
            e.param = e.param.or(outer.param);
            e
        } else {
            Self::from_fields(&f, true)
        }
    }

    /// Classifies this error. `status` is the HTTP status when it came with a non-200 answer.
    pub fn to_failure(&self, status: Option<u16>) -> UpstreamFailure {
        let message = self.message.as_deref().unwrap_or("");
        let mut kind = classify_code(self.code.as_deref(), self.kind.as_deref(), status);
        if let FailureKind::UsageLimit {
            resets_at,
            resets_in,
        } = &mut kind
        {
            *resets_at = self.resets_at;
            *resets_in = self
                .resets_in_seconds
                .or_else(|| retry_in_from_text(message));
        }
        if let FailureKind::RateLimited { retry_after } = &mut kind {
            *retry_after = self.resets_in_seconds;
        }
        let message = if message.is_empty() {
            match status {
                Some(status) => format!("upstream answered HTTP {status}"),
                None => "upstream reported a failure".to_owned(),
            }
        } else {
            upstream_text(message)
        };
        UpstreamFailure {
            kind,
            status,
            // A code is a short word; what is longer is cut (it goes into every log row).
            code: self
                .code
                .as_deref()
                .or(self.kind.as_deref())
                .map(|c| truncate(c, MAX_CODE)),
            message,
            param: self.param.as_deref().map(|p| truncate(p, MAX_MESSAGE)),
        }
    }
}

/// Token counts of one response (`response.completed.response.usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenUsage {
    /// `input_tokens`
    pub input_tokens: u64,
    /// `input_tokens_details.cached_tokens` (prompt-cache hits, part of `input_tokens`)
    pub cached_tokens: u64,
    /// `output_tokens`
    pub output_tokens: u64,
    /// `output_tokens_details.reasoning_tokens` (part of `output_tokens`)
    pub reasoning_tokens: u64,
    /// `total_tokens`; when missing, `input_tokens + output_tokens`
    pub total_tokens: u64,
}

/// A `usage` object in the Responses names, or the Chat Completions ones (`prompt_tokens`, …);
/// some servers send both, so each is a field of its own (aliases would make that an error).
#[derive(Deserialize)]
struct UsageFields<'a> {
    #[serde(borrow)]
    input_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    input_tokens_details: Option<&'a RawValue>,
    #[serde(borrow)]
    output_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    output_tokens_details: Option<&'a RawValue>,
    #[serde(borrow)]
    total_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt_tokens_details: Option<&'a RawValue>,
    #[serde(borrow)]
    completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    completion_tokens_details: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UsageDetails<'a> {
    #[serde(borrow)]
    cached_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_tokens: Option<&'a RawValue>,
}

/// More tokens than any one answer counts (the largest context windows are a few million).
const MAX_TOKENS: u64 = 1 << 32;

impl TokenUsage {
    /// Reads a `usage` object, in the Responses names or the Chat Completions ones. `None` when
    /// it is not an object, or a count is beyond any answer's (over 2^32); counters that are
    /// missing, negative or not numbers count as 0.
    pub fn from_json(usage: &[u8]) -> Option<Self> {
        serde_json::from_slice::<&RawValue>(usage)
            .ok()
            .and_then(Self::from_raw)
    }

    /// The `usage` of a whole answer (a Responses `response`, a `chat.completion` or a chat
    /// chunk); `None` when it has none (or `null`).
    pub fn of_answer(answer: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            usage: Option<&'a RawValue>,
        }
        let answer: Answer<'_> = serde_json::from_slice(answer).ok()?;
        answer.usage.and_then(Self::from_raw)
    }

    fn from_raw(raw: &RawValue) -> Option<Self> {
        let f: UsageFields<'_> = serde_json::from_str(raw.get()).ok()?;
        let num = |v: Option<&RawValue>| v.and_then(lenient_u64).unwrap_or(0);
        fn details(v: Option<&RawValue>) -> Option<UsageDetails<'_>> {
            v.and_then(|d| serde_json::from_str(d.get()).ok())
        }
        let input_details = details(f.input_tokens_details.or(f.prompt_tokens_details));
        let output_details = details(f.output_tokens_details.or(f.completion_tokens_details));
        let input_tokens = num(f.input_tokens.or(f.prompt_tokens));
        let output_tokens = num(f.output_tokens.or(f.completion_tokens));
        let usage = Self {
            input_tokens,
            cached_tokens: num(input_details.and_then(|d| d.cached_tokens)),
            output_tokens,
            reasoning_tokens: num(output_details.and_then(|d| d.reasoning_tokens)),
            total_tokens: f
                .total_tokens
                .and_then(lenient_u64)
                .unwrap_or_else(|| input_tokens.saturating_add(output_tokens)),
        };
        // No answer counts billions of tokens: such a count is garbage, and summed into the
        // ledger it would stay there for good (sums saturate).
        let counts = [
            usage.input_tokens,
            usage.cached_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
            usage.total_tokens,
        ];
        if counts.iter().any(|n| *n > MAX_TOKENS) {
            tracing::warn!(
                ?counts,
                "the upstream reported impossible token counts: not counted"
            );
            return None;
        }
        Some(usage)
    }
}

/// What one event means for the attempt that is not committed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// Nothing the client would see yet (created, in progress, item added, …): keep buffering.
    Pending,
    /// The first semantic output (text, refusal, reasoning or tool-call delta, a finished item with
    /// content, or the end of the response): commit, flush the buffer, never retry this request.
    Semantic,
    /// The attempt failed before any output: report it and try the next account.
    Failure(UpstreamFailure),
}

/// Classifies one parsed event for the failover loop (see [`Preflight`]).
pub fn preflight(event: &ResponsesEvent<'_>) -> Preflight {
    use ResponsesEvent as E;
    match event {
        E::OutputTextDelta(d) => text_preflight(&d.delta),
        E::OutputTextDone { text, .. } => {
            text.as_deref().map_or(Preflight::Pending, text_preflight)
        }
        E::ReasoningSummaryTextDelta(d)
        | E::ReasoningTextDelta(d)
        | E::RefusalDelta(d)
        | E::FunctionCallArgumentsDelta(d)
        | E::CustomToolCallInputDelta(d) => {
            if d.delta.is_empty() {
                Preflight::Pending
            } else {
                Preflight::Semantic
            }
        }
        // A refusal is an answer the client sees (`message.refusal`), never the usage notice.
        E::RefusalDone { refusal, .. } => {
            if refusal.as_deref().is_none_or(str::is_empty) {
                Preflight::Pending
            } else {
                Preflight::Semantic
            }
        }
        E::FunctionCallArgumentsDone { .. } | E::Completed(_) | E::Incomplete(_) => {
            Preflight::Semantic
        }
        E::OutputItemDone { item, .. } => match item.kind.as_deref() {
            Some("message") => match text_preflight(&item.text()) {
                Preflight::Pending if !item.refusal().is_empty() => Preflight::Semantic,
                verdict => verdict,
            },
            // Reasoning that only carries encrypted content is not output the client can see.
            Some("reasoning") if item.summary_text().is_empty() => Preflight::Pending,
            _ => Preflight::Semantic,
        },
        E::Failed(response) => Preflight::Failure(response.failure()),
        E::Error(error) => Preflight::Failure(error.to_failure(None)),
        E::Created(_)
        | E::InProgress(_)
        | E::OutputItemAdded { .. }
        | E::ContentPartAdded { .. }
        | E::Other(_) => Preflight::Pending,
    }
}

/// [`preflight`] on a raw SSE event. Kinds that are always pending are not parsed; an event that
/// cannot be parsed is a failure (code `malformed_event`): nothing has reached the client, so
/// another account may do better.
pub fn preflight_sse(event: &SseEvent) -> Preflight {
    match EventKind::of(event) {
        EventKind::Created
        | EventKind::InProgress
        | EventKind::OutputItemAdded
        | EventKind::ContentPartAdded
        | EventKind::Other => Preflight::Pending,
        _ => match ResponsesEvent::from_sse(event) {
            Ok(parsed) => preflight(&parsed),
            Err(err) => Preflight::Failure(UpstreamFailure::malformed(&err)),
        },
    }
}

/// [`preflight_sse`] on anything the SSE parser yields: a comment (`: keep-alive`) is
/// [`Preflight::Pending`].
pub fn preflight_item(item: &SseItem) -> Preflight {
    match item {
        SseItem::Event(event) => preflight_sse(event),
        SseItem::Comment(_) => Preflight::Pending,
    }
}

fn text_preflight(text: &str) -> Preflight {
    if text.is_empty() {
        return Preflight::Pending;
    }
    match usage_limit_notice(text) {
        Some(failure) => Preflight::Failure(failure),
        None => Preflight::Semantic,
    }
}

/// The message text an event carries: a delta's piece (`false`), or a finished text part's or
/// message item's whole text (`true`). For reading a usage-limit notice to its end.
pub fn message_text(item: &SseItem) -> Option<(String, bool)> {
    let SseItem::Event(event) = item else {
        return None;
    };
    match EventKind::of(event) {
        EventKind::OutputTextDelta | EventKind::OutputTextDone | EventKind::OutputItemDone => {}
        _ => return None,
    }
    match ResponsesEvent::from_sse(event).ok()? {
        ResponsesEvent::OutputTextDelta(d) => Some((d.delta.into_owned(), false)),
        ResponsesEvent::OutputTextDone { text, .. } => Some((text?.into_owned(), true)),
        ResponsesEvent::OutputItemDone { item, .. } if item.kind.as_deref() == Some("message") => {
            Some((item.text().into_owned(), true))
        }
        _ => None,
    }
}

/// Phrasings of the backend's "usage limit" notice, sent as model text inside a 200 stream.
const USAGE_LIMIT_PHRASES: &[&str] = &[
    "hit your usage limit",
    "reached your usage limit",
    "exceeded your usage limit",
    "usage limit has been reached",
    "usage_limit_reached",
];

/// The backend's notice is short; a long text that happens to contain the phrase is an answer.
pub(crate) const MAX_NOTICE_LEN: usize = 2048;

/// The usage-limit failure an early text announces, if it is the backend's notice.
///
/// The match is per delta: the notice arrives as one piece, while model output is streamed a few
/// tokens at a time, so a phrase split across deltas is ordinary text.
pub fn usage_limit_notice(text: &str) -> Option<UpstreamFailure> {
    if text.len() > MAX_NOTICE_LEN
        || !USAGE_LIMIT_PHRASES
            .iter()
            .any(|phrase| contains_ignore_ascii_case(text, phrase))
    {
        return None;
    }
    Some(UpstreamFailure {
        kind: FailureKind::UsageLimit {
            resets_at: None,
            resets_in: retry_in_from_text(text),
        },
        status: None,
        code: Some("usage_limit_reached".to_owned()),
        message: upstream_text(text.trim()),
        param: None,
    })
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Seconds in "… try again in 2 hours 5 minutes." / "try again in 3d 4h", if the text says so.
fn retry_in_from_text(text: &str) -> Option<u64> {
    const MARKER: &str = "try again in";
    let lower = text.to_ascii_lowercase();
    let start = lower.find(MARKER)? + MARKER.len();
    let mut tokens = lower[start..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty() && *t != "and");
    let mut total = 0u64;
    let mut seen = false;
    while let Some(token) = tokens.next() {
        let digits = token.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            break;
        }
        let Ok(n) = token[..digits].parse::<u64>() else {
            break;
        };
        let unit_token = if digits < token.len() {
            &token[digits..]
        } else {
            match tokens.next() {
                Some(t) => t,
                None => break,
            }
        };
        let unit = unit_token.trim_end_matches(|c: char| !c.is_ascii_alphabetic());
        let seconds: u64 = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            _ => break,
        };
        total = total.saturating_add(n.saturating_mul(seconds));
        seen = true;
        if unit.len() != unit_token.len() {
            // Punctuation after the unit ends the sentence.
            break;
        }
    }
    seen.then_some(total)
}

/// What went wrong upstream, named for what the failover loop does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The account's quota is used up (`usage_limit_reached`): exhausted until the reset.
    UsageLimit {
        /// When the window resets, epoch seconds.
        resets_at: Option<i64>,
        /// Seconds until the reset.
        resets_in: Option<u64>,
    },
    /// A short rate limit (429 other than usage): brief cooldown, next account.
    RateLimited {
        /// Seconds the upstream asked to wait, if it said.
        retry_after: Option<u64>,
    },
    /// `server_is_overloaded`: brief cooldown, next account.
    Overloaded,
    /// HTTP 401: refresh the token once and resend.
    Unauthorized,
    /// An HTML page or `cf-mitigated: challenge`: cool down briefly, next account.
    Challenge,
    /// `account_deactivated` / `workspace_deactivated`: the account is banned; stop using it.
    Deactivated,
    /// HTTP 403 that is neither a challenge nor a deactivation (e.g. plan or region): next account.
    Forbidden,
    /// HTTP 5xx or `server_error`: short cooldown, next account.
    Server,
    /// The request itself was refused (400, 404, 413, 422, `context_length_exceeded`, …): another
    /// account would refuse it too, so the error goes to the client.
    BadRequest,
    /// Anything else: treated as transient.
    Other,
}

/// A failed attempt, from a non-200 answer or from inside a 200 stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// What the pool should do about it.
    pub kind: FailureKind,
    /// HTTP status, when the failure was a non-200 answer.
    pub status: Option<u16>,
    /// The upstream's error code or type, if it sent one.
    pub code: Option<String>,
    /// A short human-readable description (at most ~500 bytes; never contains credentials).
    pub message: String,
    /// The request parameter the upstream named as at fault, if it did.
    pub param: Option<String>,
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FailureKind::UsageLimit { .. } => "usage limit reached",
            FailureKind::RateLimited { .. } => "rate limited",
            FailureKind::Overloaded => "upstream overloaded",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Challenge => "challenge page",
            FailureKind::Deactivated => "account deactivated",
            FailureKind::Forbidden => "forbidden",
            FailureKind::Server => "upstream server error",
            FailureKind::BadRequest => "request refused",
            FailureKind::Other => "upstream failure",
        };
        f.write_str(what)?;
        match (self.status, &self.code) {
            (Some(status), Some(code)) => write!(f, " (HTTP {status}, {code})")?,
            (Some(status), None) => write!(f, " (HTTP {status})")?,
            (None, Some(code)) => write!(f, " ({code})")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for UpstreamFailure {}

impl UpstreamFailure {
    /// Whether another account could succeed where this one failed. Only a refused request
    /// ([`FailureKind::BadRequest`]) is the client's problem.
    pub fn retry_elsewhere(&self) -> bool {
        !matches!(self.kind, FailureKind::BadRequest)
    }

    /// The OpenAI `error.type` to show a client.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            FailureKind::UsageLimit { .. } | FailureKind::RateLimited { .. } => "rate_limit_error",
            FailureKind::BadRequest => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The OpenAI `error.code` to show a client: the upstream's code, else one for the kind.
    pub fn error_code(&self) -> &str {
        if let Some(code) = &self.code {
            return code;
        }
        match self.kind {
            FailureKind::UsageLimit { .. } => "usage_limit_reached",
            FailureKind::RateLimited { .. } => "rate_limit_exceeded",
            FailureKind::Overloaded => "server_is_overloaded",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Challenge => "upstream_challenge",
            FailureKind::Deactivated => "account_deactivated",
            FailureKind::Forbidden => "forbidden",
            FailureKind::BadRequest => "invalid_request",
            FailureKind::Server | FailureKind::Other => "upstream_error",
        }
    }

    /// An event that could not be parsed.
    pub fn malformed(err: &EventError) -> Self {
        Self {
            kind: FailureKind::Other,
            status: None,
            code: Some("malformed_event".to_owned()),
            message: truncate(&err.to_string(), MAX_MESSAGE),
            param: None,
        }
    }
}

/// Classifies a non-200 upstream answer (PROTOCOL.md §4). `body` may be a prefix of the body (the
/// caller bounds how much it reads); `cf_mitigated` is whether the `cf-mitigated` header said
/// `challenge`.
pub fn classify_error_body(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    cf_mitigated: bool,
) -> UpstreamFailure {
    if cf_mitigated {
        return UpstreamFailure {
            kind: FailureKind::Challenge,
            status: Some(status),
            code: Some("cf_mitigated".to_owned()),
            message: "Cloudflare challenge (cf-mitigated)".to_owned(),
            param: None,
        };
    }
    let html = codexpool_core::http::is_html_page(content_type, body);
    if !html && let Ok(fields) = serde_json::from_slice::<ErrorFields<'_>>(body) {
        return ErrorRef::from_body(fields).to_failure(Some(status));
    }
    let text = String::from_utf8_lossy(body);
    if let Some(code) = ["account_deactivated", "workspace_deactivated"]
        .into_iter()
        .find(|code| text.contains(code))
    {
        return UpstreamFailure {
            kind: FailureKind::Deactivated,
            status: Some(status),
            code: Some(code.to_owned()),
            message: upstream_text(text.trim()),
            param: None,
        };
    }
    if html {
        // What challenge pages say; not the bare word "challenge": Cloudflare puts its
        // `/cdn-cgi/challenge-platform/` script into ordinary pages too (a 502, a 1015).
        let challenge = [
            "cf-chl",
            "_cf_chl",
            "just a moment",
            "attention required",
            "captcha",
            "challenge-form",
        ]
        .into_iter()
        .any(|marker| contains_ignore_ascii_case(&text, marker));
        // Only a page that says so, or a refusal of access, is a challenge: a proxy's "413
        // Request Entity Too Large" page is about the request, not about the account.
        // Any other page means what its status means (a proxy's 408 goes elsewhere, a 401
        // refreshes), as for a body in JSON or plain text.
        let kind = match status {
            _ if challenge => FailureKind::Challenge,
            403 | 200..=399 => FailureKind::Challenge,
            _ => classify_code(None, None, Some(status)),
        };
        return UpstreamFailure {
            kind,
            status: Some(status),
            code: None,
            message: format!("upstream answered HTTP {status} with an HTML page"),
            param: None,
        };
    }
    ErrorRef {
        message: Some(Cow::Borrowed(text.trim())),
        ..ErrorRef::default()
    }
    .to_failure(Some(status))
}

/// Maps an upstream error code/type and HTTP status to what the pool should do.
fn classify_code(code: Option<&str>, kind: Option<&str>, status: Option<u16>) -> FailureKind {
    let is = |name: &str| code == Some(name) || kind == Some(name);
    let starts = |prefix: &str| {
        code.is_some_and(|c| c.starts_with(prefix)) || kind.is_some_and(|k| k.starts_with(prefix))
    };
    if is("account_deactivated") || is("workspace_deactivated") || is("deactivated_workspace") {
        return FailureKind::Deactivated;
    }
    if is("usage_limit_reached") || is("usage_not_included") || is("insufficient_quota") {
        return FailureKind::UsageLimit {
            resets_at: None,
            resets_in: None,
        };
    }
    if is("server_is_overloaded") || is("overloaded") || is("slow_down") {
        return FailureKind::Overloaded;
    }
    if starts("rate_limit") {
        return FailureKind::RateLimited { retry_after: None };
    }
    match status {
        Some(401) => return FailureKind::Unauthorized,
        // Payment required: about the account's plan or billing, not about the request.
        Some(402 | 403) => return FailureKind::Forbidden,
        Some(429) => return FailureKind::RateLimited { retry_after: None },
        // The upstream (or a proxy before it) gave up waiting for the request: the next
        // attempt is likely to go through.
        Some(408) => return FailureKind::Server,
        _ => {}
    }
    if is("context_length_exceeded")
        || is("invalid_prompt")
        || is("invalid_request_error")
        || is("unsupported_model")
        || is("model_not_found")
    {
        return FailureKind::BadRequest;
    }
    match status {
        Some(503) if is("overloaded_error") => FailureKind::Overloaded,
        Some(s) if s >= 500 => FailureKind::Server,
        Some(s) if s >= 400 => FailureKind::BadRequest,
        _ if is("server_error") => FailureKind::Server,
        _ => FailureKind::Other,
    }
}

/// Keeps messages short enough for a log line or a client error.
/// The longest upstream error message (and `param`) passed on, in bytes.
const MAX_MESSAGE: usize = 500;

/// The longest upstream error code passed on and logged, in bytes.
const MAX_CODE: usize = 64;

/// Text an upstream wrote, as it is passed on and logged: credentials masked (a proxy or a
/// misconfigured backend may echo the request's `Authorization` header, the account's token),
/// cut to [`MAX_MESSAGE`].
fn upstream_text(text: &str) -> String {
    let masked = crate::secrets::mask_secrets(text);
    truncate(masked.as_deref().unwrap_or(text), MAX_MESSAGE)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A string value; `None` for other types.
fn lenient_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    super::raw_str(raw)
}

/// An integer (a float is truncated, a numeric string parsed); `None` for anything else.
fn lenient_i64(raw: &RawValue) -> Option<i64> {
    let text = raw.get();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    // `as` saturates; out-of-range values are nonsense anyway.
    Some(f as i64)
}

/// A non-negative integer; `None` for anything else (negative numbers included).
fn lenient_u64(raw: &RawValue) -> Option<u64> {
    lenient_i64(raw).and_then(|n| u64::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(json: &str) -> SseEvent {
        SseEvent::new(json.to_owned())
    }

    fn failure_kind(p: Preflight) -> FailureKind {
        match p {
            Preflight::Failure(f) => f.kind,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn kinds_from_types() {
        assert_eq!(
            EventKind::from_type("response.output_text.delta"),
            EventKind::OutputTextDelta
        );
        assert_eq!(EventKind::from_type("error"), EventKind::Error);
        assert_eq!(
            EventKind::from_type("response.refusal.delta"),
            EventKind::RefusalDelta
        );
        let ResponsesEvent::RefusalDelta(d) = ResponsesEvent::parse(
            br#"{"type":"response.refusal.delta","item_id":"msg_1","output_index":2,"content_index":0,"delta":"No"}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((d.output_index, d.delta.as_ref()), (Some(2), "No"));
        let done = ResponsesEvent::parse(
            br#"{"type":"response.refusal.done","output_index":2,"refusal":"No."}"#,
        )
        .unwrap();
        assert_eq!(done.kind(), EventKind::RefusalDone);
        assert!(matches!(done, ResponsesEvent::RefusalDone { refusal: Some(r), .. } if r == "No."));
        assert_eq!(EventKind::from_type("response.new_thing"), EventKind::Other);
        assert!(EventKind::Completed.is_terminal());
        assert!(!EventKind::OutputItemDone.is_terminal());
        let e = ev(r#"{"x":1}"#).with_event("response.completed");
        assert_eq!(EventKind::of(&e), EventKind::Completed);
    }

    #[test]
    fn parses_deltas_borrowed() {
        let data = br#"{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":1,"content_index":0,"delta":"Hello","logprobs":[]}"#;
        let ResponsesEvent::OutputTextDelta(d) = ResponsesEvent::parse(data).unwrap() else {
            panic!()
        };
        assert_eq!(d.output_index, Some(1));
        assert_eq!(d.item_id.as_deref(), Some("msg_1"));
        assert!(matches!(d.delta, Cow::Borrowed("Hello")));
        let data =
            br#"{"type":"response.reasoning_summary_text.delta","summary_index":2,"delta":"a\"b"}"#;
        let ResponsesEvent::ReasoningSummaryTextDelta(d) = ResponsesEvent::parse(data).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.delta, "a\"b");
        assert_eq!(d.summary_index, Some(2));
        // A delta without text is malformed.
        let err = ResponsesEvent::parse(br#"{"type":"response.output_text.delta"}"#).unwrap_err();
        assert!(
            err.to_string().contains("response.output_text.delta"),
            "{err}"
        );
        assert!(matches!(
            ResponsesEvent::parse(br#"{"type":"response.output_text.delta","delta":5}"#),
            Err(EventError::Malformed { .. })
        ));
        assert!(matches!(
            ResponsesEvent::parse(b"[DONE]"),
            Err(EventError::MissingType)
        ));
        // Unknown types are not read.
        let ResponsesEvent::Other(kind) =
            ResponsesEvent::parse(br#"{"type":"x.y", garbage"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(kind, "x.y");
    }

    #[test]
    fn parses_items_and_responses() {
        let data = br#"{"type":"response.output_item.added","output_index":2,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_9","name":"shell"}}"#;
        let ResponsesEvent::OutputItemAdded { output_index, item } =
            ResponsesEvent::parse(data).unwrap()
        else {
            panic!()
        };
        assert_eq!(output_index, Some(2));
        assert!(item.is_function_call());
        assert_eq!(item.call_id.as_deref(), Some("call_9"));
        assert_eq!(item.name.as_deref(), Some("shell"));

        let data = br#"{"type":"response.output_item.done","output_index":0,"item":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi ","annotations":[]},{"type":"refusal","refusal":"no"}]}}"#;
        let ResponsesEvent::OutputItemDone { item, .. } = ResponsesEvent::parse(data).unwrap()
        else {
            panic!()
        };
        assert_eq!(item.text(), "Hi ");
        assert_eq!(item.refusal(), "no");
        assert_eq!(item.role.as_deref(), Some("assistant"));

        let data = br#"{"type":"response.output_item.done","item":{"type":"reasoning","summary":[{"type":"summary_text","text":"a"},{"type":"summary_text","text":"b"}],"content":7}}"#;
        let ResponsesEvent::OutputItemDone { item, .. } = ResponsesEvent::parse(data).unwrap()
        else {
            panic!()
        };
        assert_eq!(item.summary_text(), "a\n\nb");
        assert_eq!(item.text(), "");

        let data = br#"{"type":"response.completed","response":{"id":"resp_1","object":"response","created_at":1700000000,"model":"gpt-5","status":"completed","output":[],"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":15}}}"#;
        let ResponsesEvent::Completed(r) = ResponsesEvent::parse(data).unwrap() else {
            panic!()
        };
        assert_eq!(r.id.as_deref(), Some("resp_1"));
        assert_eq!(r.created_at, Some(1_700_000_000));
        assert!(r.output_is_empty());
        assert_eq!(
            r.usage,
            Some(TokenUsage {
                input_tokens: 10,
                cached_tokens: 4,
                output_tokens: 5,
                reasoning_tokens: 2,
                total_tokens: 15
            })
        );
        let data = br#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[{"type":"message"}]}}"#;
        let ResponsesEvent::Incomplete(r) = ResponsesEvent::parse(data).unwrap() else {
            panic!()
        };
        assert_eq!(r.incomplete_reason.as_deref(), Some("max_output_tokens"));
        assert!(!r.output_is_empty());
        // Empty: missing, `null`, or an array of nothing; not with items or of another type.
        for (output, empty) in [
            ("", true),
            (r#","output":[ ]"#, true),
            (",\"output\":\n[\n\t]", true),
            (r#","output":[[]]"#, false),
            (r#","output":[{}]"#, false),
            (r#","output": null"#, true),
            (r#","output":"[]""#, false),
        ] {
            let data =
                format!(r#"{{"type":"response.completed","response":{{"id":"r"{output}}}}}"#);
            let ResponsesEvent::Completed(r) = ResponsesEvent::parse(data.as_bytes()).unwrap()
            else {
                panic!()
            };
            assert_eq!(r.output_is_empty(), empty, "{data}");
        }
        assert!(ResponsesEvent::parse(br#"{"type":"response.completed","response":5}"#).is_err());
        assert!(ResponsesEvent::parse(br#"{"type":"response.completed"}"#).is_err());
    }

    #[test]
    fn usage_is_lenient() {
        let u = TokenUsage::from_json(
            br#"{"input_tokens":"12","output_tokens":-3,"input_tokens_details":null,"output_tokens_details":{"reasoning_tokens":[1]},"total_tokens":2.9}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            TokenUsage {
                input_tokens: 12,
                cached_tokens: 0,
                output_tokens: 0,
                reasoning_tokens: 0,
                total_tokens: 2
            }
        );
        assert_eq!(TokenUsage::from_json(b"[1]"), None);
        assert_eq!(TokenUsage::from_json(b"nope"), None);
        assert_eq!(
            TokenUsage::from_json(br#"{"input_tokens":3,"output_tokens":4}"#)
                .map(|u| u.total_tokens),
            Some(7)
        );
        // Counts no answer has are garbage: not counted at all (summed, they would stay).
        for usage in [
            r#"{"input_tokens":1180591620717411303424,"output_tokens":4}"#,
            r#"{"input_tokens":3,"output_tokens":4,"total_tokens":9223372036854775807}"#,
            r#"{"input_tokens":3,"input_tokens_details":{"cached_tokens":4294967297}}"#,
        ] {
            assert_eq!(TokenUsage::from_json(usage.as_bytes()), None, "{usage}");
        }
        assert!(
            TokenUsage::from_json(br#"{"input_tokens":2000000,"output_tokens":128000}"#).is_some()
        );
    }

    #[test]
    fn usage_in_chat_names_and_of_whole_answers() {
        let chat = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        assert_eq!(
            TokenUsage::of_answer(chat),
            Some(TokenUsage {
                input_tokens: 10,
                cached_tokens: 4,
                output_tokens: 5,
                reasoning_tokens: 2,
                total_tokens: 15
            })
        );
        // Both names at once (some OpenAI-compatible servers): the Responses ones.
        let both = br#"{"usage":{"input_tokens":3,"prompt_tokens":3,"output_tokens":1,"completion_tokens":1}}"#;
        assert_eq!(TokenUsage::of_answer(both).map(|u| u.total_tokens), Some(4));
        let response =
            br#"{"id":"resp_1","output":[],"usage":{"input_tokens":1,"output_tokens":2}}"#;
        assert_eq!(
            TokenUsage::of_answer(response).map(|u| u.total_tokens),
            Some(3)
        );
        for none in [&br#"{"usage":null}"#[..], br#"{"choices":[]}"#, b"[]", b"{"] {
            assert_eq!(TokenUsage::of_answer(none), None);
        }
    }

    #[test]
    fn preflight_classifies_the_stream_prefix() {
        let pending = [
            r#"{"type":"response.created","response":{"id":"r"}}"#,
            r#"{"type":"response.in_progress","response":{"id":"r"}}"#,
            r#"{"type":"response.output_item.added","item":{"type":"message"}}"#,
            r#"{"type":"response.content_part.added","output_index":0}"#,
            r#"{"type":"response.reasoning_summary_part.added"}"#,
            r#"{"type":"response.output_text.delta","delta":""}"#,
            r#"{"type":"response.refusal.delta","delta":""}"#,
            r#"{"type":"response.refusal.done","refusal":""}"#,
            r#"{"type":"response.output_item.done","item":{"type":"reasoning","summary":[],"encrypted_content":"gAAA"}}"#,
            r#"{"type":"response.custom_tool_call_input.delta","item_id":"ctc_1","delta":""}"#,
        ];
        for json in pending {
            assert_eq!(preflight_sse(&ev(json)), Preflight::Pending, "{json}");
        }
        let comment = SseItem::Comment(bytes::Bytes::from_static(b"keep-alive"));
        assert_eq!(preflight_item(&comment), Preflight::Pending);
        let semantic = [
            r#"{"type":"response.output_text.delta","delta":"Hi"}"#,
            r#"{"type":"response.reasoning_summary_text.delta","delta":"Thinking"}"#,
            r#"{"type":"response.reasoning_text.delta","delta":"x"}"#,
            r#"{"type":"response.function_call_arguments.delta","delta":"{"}"#,
            // A freeform tool's input (the Codex CLI's apply_patch) as it is written.
            r#"{"type":"response.custom_tool_call_input.delta","item_id":"ctc_1","output_index":0,"delta":"*** Begin Patch"}"#,
            r#"{"type":"response.output_item.done","item":{"type":"function_call","name":"f","arguments":"{}"}}"#,
            r#"{"type":"response.output_item.done","item":{"type":"message","content":[{"type":"output_text","text":"ok"}]}}"#,
            r#"{"type":"response.completed","response":{"output":[]}}"#,
            // A refusal is output too: the failover commits on it.
            r#"{"type":"response.refusal.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"I can't"}"#,
            r#"{"type":"response.refusal.done","output_index":0,"refusal":"I can't help with that."}"#,
            r#"{"type":"response.output_item.done","item":{"type":"message","content":[{"type":"refusal","refusal":"No."}]}}"#,
            // Even when it reads like the usage notice: only text deltas carry that.
            r#"{"type":"response.refusal.delta","delta":"You've hit your usage limit."}"#,
        ];
        for json in semantic {
            assert_eq!(preflight_sse(&ev(json)), Preflight::Semantic, "{json}");
        }
    }

    #[test]
    fn preflight_finds_failures_inside_200_streams() {
        let failed = ev(
            r#"{"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":"usage_limit_reached","message":"The usage limit has been reached","resets_in_seconds":120}}}"#,
        );
        assert_eq!(
            failure_kind(preflight_sse(&failed)),
            FailureKind::UsageLimit {
                resets_at: None,
                resets_in: Some(120)
            }
        );
        let overloaded = ev(
            r#"{"type":"response.failed","response":{"error":{"code":"server_is_overloaded","message":"busy"}}}"#,
        );
        assert_eq!(
            failure_kind(preflight_sse(&overloaded)),
            FailureKind::Overloaded
        );
        let error = ev(r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down"}"#);
        let Preflight::Failure(f) = preflight_sse(&error) else {
            panic!()
        };
        assert_eq!(f.kind, FailureKind::RateLimited { retry_after: None });
        assert_eq!(f.code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(f.message, "slow down");
        let nested = ev(
            r#"{"type":"error","error":{"type":"invalid_request_error","code":"context_length_exceeded","message":"too long"}}"#,
        );
        let Preflight::Failure(f) = preflight_sse(&nested) else {
            panic!()
        };
        assert_eq!(f.kind, FailureKind::BadRequest);
        assert!(!f.retry_elsewhere());
        let deactivated =
            ev(r#"{"type":"response.failed","response":{"error":{"code":"account_deactivated"}}}"#);
        assert_eq!(
            failure_kind(preflight_sse(&deactivated)),
            FailureKind::Deactivated
        );
        // An unknown failure with no detail is still a failure.
        assert_eq!(
            failure_kind(preflight_sse(&ev(
                r#"{"type":"response.failed","response":{}}"#
            ))),
            FailureKind::Other
        );
        // A semantic-looking event that cannot be parsed: fail over.
        let Preflight::Failure(f) =
            preflight_sse(&ev(r#"{"type":"response.output_text.delta","delta":[]}"#))
        else {
            panic!()
        };
        assert_eq!(f.code.as_deref(), Some("malformed_event"));
    }

    #[test]
    fn usage_limit_text_notice() {
        for text in [
            "You've hit your usage limit. Upgrade to Pro or try again in 2 hours 5 minutes.",
            "you have HIT YOUR USAGE LIMIT",
            "You’ve reached your usage limit, try again in 3d 4h",
        ] {
            let delta = format!(
                r#"{{"type":"response.output_text.delta","delta":{}}}"#,
                serde_json::to_string(text).unwrap()
            );
            let kind = failure_kind(preflight_sse(&ev(&delta)));
            assert!(matches!(kind, FailureKind::UsageLimit { .. }), "{text}");
        }
        let f = usage_limit_notice("You've hit your usage limit. Try again in 2 hours 5 minutes.")
            .unwrap();
        assert_eq!(
            f.kind,
            FailureKind::UsageLimit {
                resets_at: None,
                resets_in: Some(2 * 3600 + 5 * 60)
            }
        );
        assert_eq!(
            retry_in_from_text("try again in 3d 4h"),
            Some(3 * 86_400 + 4 * 3600)
        );
        assert_eq!(retry_in_from_text("try again in 10 seconds, ok"), Some(10));
        assert_eq!(retry_in_from_text("try again in a while"), None);
        assert_eq!(retry_in_from_text("try again in 5 parsecs"), None);
        assert!(usage_limit_notice("Hello! How can I help?").is_none());
        let long = format!("{} hit your usage limit", "x".repeat(3000));
        assert!(usage_limit_notice(&long).is_none());
        // The notice as a whole message item counts too.
        let done = ev(
            r#"{"type":"response.output_item.done","item":{"type":"message","content":[{"type":"output_text","text":"You've hit your usage limit."}]}}"#,
        );
        assert!(matches!(
            failure_kind(preflight_sse(&done)),
            FailureKind::UsageLimit { .. }
        ));
    }

    #[test]
    fn upstream_error_text_is_bounded_and_masked() {
        // A code is cut to a short word (it goes into every log row), a message to 500 bytes.
        let long = "c".repeat(10_000);
        let body = format!(r#"{{"error":{{"code":"{long}","message":"{long}"}}}}"#);
        let f = classify_error_body(500, Some("application/json"), body.as_bytes(), false);
        assert_eq!(
            f.code.as_deref().map(str::len),
            Some(MAX_CODE + '…'.len_utf8())
        );
        assert!(f.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        // An upstream that echoes the request's Authorization header: the token stays here.
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJlbWFpbCI6ImFAYi5jIn0.c2lnbmF0dXJl";
        for (content_type, body) in [
            (
                "application/json",
                format!(
                    r#"{{"error":{{"message":"bad request: Authorization: Bearer {token}"}}}}"#
                ),
            ),
            ("text/plain", format!("echo: authorization: Bearer {token}")),
            (
                "text/plain",
                format!("account_deactivated (Bearer {token})"),
            ),
        ] {
            let f = classify_error_body(400, Some(content_type), body.as_bytes(), false);
            assert!(!f.message.contains("eyJ"), "{}", f.message);
            assert!(f.message.contains("Bearer *****"), "{}", f.message);
        }
        let notice = usage_limit_notice(&format!(
            "You've hit your usage limit (Bearer {token}). Try again in 5 minutes."
        ))
        .unwrap();
        assert!(!notice.message.contains("eyJ"), "{}", notice.message);
    }

    #[test]
    fn classifies_non_200_answers() {
        let body = br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_at":1730947200,"resets_in_seconds":3600}}"#;
        let f = classify_error_body(429, Some("application/json"), body, false);
        assert_eq!(
            f.kind,
            FailureKind::UsageLimit {
                resets_at: Some(1_730_947_200),
                resets_in: Some(3600)
            }
        );
        assert_eq!(f.code.as_deref(), Some("usage_limit_reached"));
        assert_eq!(f.status, Some(429));

        let f = classify_error_body(
            429,
            Some("application/json"),
            br#"{"error":{"code":"rate_limit_exceeded","message":"x","resets_in_seconds":7}}"#,
            false,
        );
        assert_eq!(
            f.kind,
            FailureKind::RateLimited {
                retry_after: Some(7)
            }
        );
        let f = classify_error_body(429, None, b"too many", false);
        assert_eq!(f.kind, FailureKind::RateLimited { retry_after: None });
        assert_eq!(f.message, "too many");

        let f = classify_error_body(
            401,
            Some("application/json"),
            br#"{"detail":"Unauthorized"}"#,
            false,
        );
        assert_eq!(f.kind, FailureKind::Unauthorized);
        assert_eq!(f.message, "Unauthorized");

        let f = classify_error_body(
            403,
            Some("application/json"),
            br#"{"error":{"message":"Your OpenAI account has been deactivated","type":"invalid_request_error","code":"account_deactivated"}}"#,
            false,
        );
        assert_eq!(f.kind, FailureKind::Deactivated);
        let f = classify_error_body(
            402,
            None,
            br#"{"detail":{"code":"deactivated_workspace"}}"#,
            false,
        );
        assert_eq!(f.kind, FailureKind::Deactivated);
        let f = classify_error_body(403, Some("text/plain"), b"workspace_deactivated", false);
        assert_eq!(f.kind, FailureKind::Deactivated);

        let html = b"<!DOCTYPE html><html><head><title>Just a moment...</title>";
        let f = classify_error_body(403, Some("text/html; charset=UTF-8"), html, false);
        assert_eq!(f.kind, FailureKind::Challenge);
        let f = classify_error_body(503, None, html, false);
        assert_eq!(f.kind, FailureKind::Challenge);
        let f = classify_error_body(502, None, b"  <html><body>Bad gateway</body></html>", false);
        assert_eq!(f.kind, FailureKind::Server);
        // A proxy's page about the request is not a challenge: no account is cooled for it.
        let page = b"<html><head><title>413 Request Entity Too Large</title></head>\
                     <body><center>cloudflare</center></body></html>";
        let f = classify_error_body(413, Some("text/html"), page, false);
        assert_eq!(f.kind, FailureKind::BadRequest);
        assert!(!f.retry_elsewhere());
        let f = classify_error_body(429, Some("text/html"), b"<html>Error 1015</html>", false);
        assert!(matches!(f.kind, FailureKind::RateLimited { .. }), "{f:?}");
        // Cloudflare's detection script on an ordinary error page makes no challenge of it.
        let script = r#"<script src="/cdn-cgi/challenge-platform/scripts/jsd/main.js"></script>"#;
        let page = format!("<html><title>Error 1015</title>{script}</html>");
        let f = classify_error_body(429, Some("text/html"), page.as_bytes(), false);
        assert!(matches!(f.kind, FailureKind::RateLimited { .. }), "{f:?}");
        let page = format!("<html><title>502 Bad gateway</title>{script}</html>");
        let f = classify_error_body(502, Some("text/html"), page.as_bytes(), false);
        assert_eq!(f.kind, FailureKind::Server);
        let page = r#"<html><title>Attention Required! | Cloudflare</title></html>"#;
        let f = classify_error_body(503, Some("text/html"), page.as_bytes(), false);
        assert_eq!(f.kind, FailureKind::Challenge);
        let f = classify_error_body(403, Some("text/html"), b"<html>Access denied</html>", false);
        assert_eq!(f.kind, FailureKind::Challenge);
        // Other pages mean what their status means, as in any other body.
        let page = b"<html><head><title>408 Request Time-out</title></head></html>";
        let f = classify_error_body(408, Some("text/html"), page, false);
        assert_eq!(f.kind, FailureKind::Server);
        assert!(f.retry_elsewhere());
        let f = classify_error_body(401, Some("text/html"), b"<html>401</html>", false);
        assert_eq!(f.kind, FailureKind::Unauthorized);
        let f = classify_error_body(402, Some("text/html"), b"<html>402</html>", false);
        assert_eq!(f.kind, FailureKind::Forbidden);
        // Payment required that is not a deactivation: the account's billing, tried elsewhere.
        let f = classify_error_body(
            402,
            Some("application/json"),
            br#"{"detail":{"code":"payment_required"}}"#,
            false,
        );
        assert_eq!(f.kind, FailureKind::Forbidden);
        assert!(f.retry_elsewhere());
        let f = classify_error_body(200, Some("application/json"), b"{}", true);
        assert_eq!(f.kind, FailureKind::Challenge);

        let f = classify_error_body(500, None, b"", false);
        assert_eq!(f.kind, FailureKind::Server);
        assert_eq!(f.message, "upstream answered HTTP 500");
        let f = classify_error_body(408, Some("text/plain"), b"Request Timeout", false);
        assert_eq!(
            f.kind,
            FailureKind::Server,
            "a timed-out request is tried elsewhere"
        );
        assert!(f.retry_elsewhere());
        let f = classify_error_body(
            503,
            Some("application/json"),
            br#"{"error":{"code":"server_is_overloaded"}}"#,
            false,
        );
        assert_eq!(f.kind, FailureKind::Overloaded);
        let f = classify_error_body(
            400,
            Some("application/json"),
            br#"{"detail":"Unsupported model"}"#,
            false,
        );
        assert_eq!(f.kind, FailureKind::BadRequest);
        assert!(!f.retry_elsewhere());
        assert_eq!(f.error_type(), "invalid_request_error");
        assert!(f.to_string().contains("Unsupported model"), "{f}");
        let long = "é".repeat(1000);
        let f = classify_error_body(500, None, long.as_bytes(), false);
        assert!(f.message.len() < 520);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            status in 0u16..1000,
            cf in any::<bool>(),
            kind in prop::sample::select(vec![
                "response.created", "response.output_item.added", "response.output_text.delta",
                "response.output_item.done", "response.completed", "response.failed", "error",
                "response.function_call_arguments.done", "response.content_part.added",
                "response.refusal.delta", "response.refusal.done",
            ]),
        ) {
            let _ = classify_error_body(status, Some("application/json"), &data, cf);
            let _ = classify_error_body(status, None, &data, cf);
            let _ = TokenUsage::from_json(&data);
            let event = SseEvent::new(data.clone()).with_event(kind);
            let _ = preflight_sse(&event);
            if let Ok(parsed) = ResponsesEvent::from_sse(&event) {
                let _ = preflight(&parsed);
            }
            if let Ok(text) = std::str::from_utf8(&data) {
                let _ = usage_limit_notice(text);
                let _ = retry_in_from_text(text);
            }
        }

        #[test]
        fn arbitrary_json_events_never_panic(value in crate::adapt::testing::arb_json(), kind in prop::sample::select(vec![
            "response.created", "response.output_item.added", "response.output_text.delta",
            "response.output_item.done", "response.completed", "response.failed", "error",
            "response.incomplete",
        ])) {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), kind.into());
            for key in ["response", "item", "delta", "error", "output_index", "code", "message"] {
                object.insert(key.into(), value.clone());
            }
            let data = serde_json::to_vec(&object).unwrap();
            let event = SseEvent::new(data);
            let _ = preflight_sse(&event);
            if let Ok(ResponsesEvent::OutputItemDone { item, .. }) = ResponsesEvent::from_sse(&event) {
                let _ = item.text();
                let _ = item.refusal();
                let _ = item.summary_text();
            }
            let _ = classify_error_body(429, None, event.data(), false);
        }
    }
}
