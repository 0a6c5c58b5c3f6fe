//! OpenAI Responses requests and answers: the body rules, the Codex-client pass-through, and the
//! non-streaming assembler.
//!
//! A Responses request from an ordinary client goes through [`apply_body_rules`] (PROTOCOL.md §4):
//! the backend insists on `stream: true`, `store: false` and non-empty `instructions`, and refuses
//! parameters it does not know, so those are dropped and named for the `x-codexpool-dropped-params`
//! header. A request from the Codex CLI ([`is_codex_client`]) already speaks the backend's dialect
//! and goes through [`codex_passthrough`], which leaves the body byte-for-byte alone unless a
//! platform key forces the model or the reasoning effort. Both only split the body at the top level:
//! `input`, `tools` and the other large values are copied as raw JSON text, never re-encoded. For
//! clients that asked for `stream: false`, [`ResponseAssembler`] turns the event stream back into
//! the final `response` object (a zero-copy slice of the `response.completed` frame in the common
//! case).
//!
//! The backend keeps nothing, so the gateway keeps the answers itself (`crate::stored`) and the
//! routes apply the body rules with them (the crate-internal `apply_body_rules_with`): a
//! `previous_response_id` or an `item_reference` is expanded into the items it stands for before
//! the body goes upstream, and the input is handed back to be kept with the answer. Requests that
//! refer to nothing pay nothing for it: the items are scanned for ids and references as they
//! always were, and the store is only locked when one is found.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::event::{
    EventError, EventKind, ResponseRef, ResponsesEvent, TokenUsage, UpstreamFailure,
};
use super::{
    AssembleError, DEFAULT_INSTRUCTIONS, JSON_DIRECTIVE, JStr, ObjectWriter, Overrides,
    RequestError, Shallow, UpstreamRequest, as_bool, bool_field, is_null, items_array,
    mentions_json, parse_object, parse_object_with, raw_str, str_field, sub_bytes, with_field,
    write_json,
};
use crate::sse::SseEvent;
use crate::stored::Item;

/// What `include` must ask for when `reasoning` is set: with `store: false` the reasoning items
/// are only reusable in the next turn if they carry their encrypted content.
pub const ENCRYPTED_REASONING: &str = "reasoning.encrypted_content";

/// A Responses request without what belongs to the account that served its conversation so
/// far (PROTOCOL.md §4): `reasoning` input items (their encrypted content only that account can
/// read, and with `store: false` they cannot be looked up by id either) and
/// `previous_response_id`. `None` when there is nothing to drop or the body is not an object.
///
/// ```
/// use codexpool_gateway::adapt::without_account_state;
/// let body = br#"{"model":"gpt-5","input":[{"type":"reasoning","encrypted_content":"gAAA"},{"type":"message","role":"user","content":"hi"}]}"#;
/// let out: serde_json::Value = serde_json::from_slice(&without_account_state(body).unwrap()).unwrap();
/// assert_eq!(out["input"].as_array().unwrap().len(), 1);
/// assert!(without_account_state(br#"{"model":"gpt-5","input":[]}"#).is_none());
/// ```
pub fn without_account_state(body: &[u8]) -> Option<Bytes> {
    // Everything else as sent, byte for byte and in its order: a schema's key order is the
    // order strict output is generated in.
    let obj = parse_object(body).ok()?;
    let is_reasoning = |item: &&RawValue| {
        serde_json::from_str::<ItemHead<'_>>(item.get())
            .ok()
            .and_then(|head| head.kind)
            .is_some_and(|kind| kind.0 == "reasoning")
    };
    let mut changed = false;
    let mut fields = Vec::with_capacity(obj.0.len());
    for (key, value) in &obj.0 {
        match key.as_ref() {
            "previous_response_id" => changed = true,
            "input" => match serde_json::from_str::<Vec<&RawValue>>(value.get()) {
                Ok(items) if items.iter().any(is_reasoning) => {
                    changed = true;
                    let kept: Vec<_> = items.into_iter().filter(|i| !is_reasoning(i)).collect();
                    fields.push((key, Cow::Owned(items_json(&kept))));
                }
                _ => fields.push((key, Cow::Borrowed(value.get()))),
            },
            _ => fields.push((key, Cow::Borrowed(value.get()))),
        }
    }
    if !changed {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut w = ObjectWriter::new(&mut out);
    for (key, json) in fields {
        w.raw(key, &json);
    }
    w.end();
    Some(Bytes::from(out))
}

/// A JSON array of raw items.
fn items_json(items: &[&RawValue]) -> String {
    let mut out = String::with_capacity(items.iter().map(|i| i.get().len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.get());
    }
    out.push(']');
    out
}

/// Whether a request comes from the Codex CLI (or another client speaking the backend's dialect):
/// an `originator` header starting with `codex_`, or any `x-codex-*` header. Takes header
/// (name, value) pairs; names are compared case-insensitively.
///
/// ```
/// use codexpool_gateway::adapt::is_codex_client;
///
/// assert!(is_codex_client([("Originator", "codex_exec")]));
/// assert!(is_codex_client([("x-codex-window-id", "abc:0")]));
/// assert!(!is_codex_client([("user-agent", "OpenAI/Python 1.0")]));
/// ```
pub fn is_codex_client<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>) -> bool {
    headers.into_iter().any(|(name, value)| {
        let codex_originator = name.eq_ignore_ascii_case("originator")
            && value
                .trim()
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case("codex_"));
        let codex_header = name
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-codex-"));
        codex_originator || codex_header
    })
}

/// The top-level fields the backend accepts; everything else is dropped.
#[derive(Default)]
struct Kept<'a> {
    model: Option<&'a RawValue>,
    instructions: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
    tools: Option<&'a RawValue>,
    tool_choice: Option<&'a RawValue>,
    parallel_tool_calls: Option<&'a RawValue>,
    reasoning: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    include: Option<&'a RawValue>,
    prompt_cache_key: Option<&'a RawValue>,
    text: Option<&'a RawValue>,
    service_tier: Option<&'a RawValue>,
    client_metadata: Option<&'a RawValue>,
}

impl<'a> Kept<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match key {
            "model" => &mut self.model,
            "instructions" => &mut self.instructions,
            "input" => &mut self.input,
            "tools" => &mut self.tools,
            "tool_choice" => &mut self.tool_choice,
            "parallel_tool_calls" => &mut self.parallel_tool_calls,
            "reasoning" => &mut self.reasoning,
            "stream" => &mut self.stream,
            "include" => &mut self.include,
            "prompt_cache_key" => &mut self.prompt_cache_key,
            "text" => &mut self.text,
            "service_tier" => &mut self.service_tier,
            "client_metadata" => &mut self.client_metadata,
            _ => return None,
        })
    }
}

/// Applies the Responses body rules (PROTOCOL.md §4) to a client's JSON body.
///
/// Forces `stream: true` and `store: false`; makes `instructions` non-empty by lifting leading
/// `system`/`developer` input messages into it (else [`DEFAULT_INSTRUCTIONS`]); turns a string
/// `input` into one user message; adds [`ENCRYPTED_REASONING`] to `include` when `reasoning` is set;
/// keeps only the fields the backend accepts and reports the others (`null` values are dropped
/// silently: the client did not really ask for them). `overrides` are applied on top; with a forced
/// model the client's `model` may be missing.
///
/// Without the gateway's response store (which the routes use) nothing refers to earlier answers:
/// `previous_response_id` and `item_reference`s are dropped and reported.
///
/// Errors name the field: `model` missing or not a string, `input` missing or neither a string nor
/// an array, `instructions`/`stream`/`reasoning`/`include` of the wrong type.
pub fn apply_body_rules(
    body: &[u8],
    overrides: &Overrides<'_>,
) -> Result<UpstreamRequest, RequestError> {
    apply_body_rules_with(body, overrides, None).map(|(req, _)| req)
}

/// Where the earlier responses a request refers to are looked up: the gateway's response store,
/// seen by one platform key ([`crate::stored`]).
pub(crate) trait Recall {
    /// The input and then the output items of a kept response; `None` when it is not kept.
    fn response(&mut self, id: &str) -> Option<Vec<Arc<Item>>>;
    /// A kept item by its own id (`rs_…`, `msg_…`, `fc_…`).
    fn item(&mut self, id: &str) -> Option<Arc<Item>>;
}

/// A request's input as the response store keeps it with the answer.
pub(crate) type KeptInput = Vec<Arc<Item>>;

/// One input item on its way upstream.
enum Piece<'a> {
    /// The client's, as it came.
    Raw(&'a RawValue),
    /// The client's, without its `id`.
    Owned(String),
    /// A kept one: an earlier turn's, or what an `item_reference` names.
    Recalled(Arc<Item>),
    /// A string `input`: one user message around this JSON string.
    Text(&'a RawValue),
}

const TEXT_OPEN: &[u8] =
    br#"{"type":"message","role":"user","content":[{"type":"input_text","text":"#;
const TEXT_CLOSE: &[u8] = b"}]}";

impl Piece<'_> {
    /// The text of a leading `system`/`developer` message that can move into `instructions`.
    fn system_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::Raw(item) => system_message_text(item.get()),
            Self::Owned(json) => system_message_text(json),
            Self::Recalled(item) => system_message_text(item.json()),
            Self::Text(_) => None,
        }
    }

    /// Whether this is a message whose text says "json".
    fn mentions_json(&self) -> bool {
        let json = match self {
            Self::Raw(item) => item.get(),
            Self::Owned(json) => json,
            Self::Recalled(item) => item.json(),
            Self::Text(text) => return mentions_json(text.get()),
        };
        serde_json::from_str::<MessageHead<'_>>(json).is_ok_and(|head| {
            head.role.is_some() && head.content.is_some_and(content_mentions_json)
        })
    }

    /// A client's `system` message as a `developer` one, when it is one.
    fn as_developer(&self) -> Option<String> {
        match self {
            Self::Raw(item) => developer_message(item.get()),
            Self::Owned(json) => developer_message(json),
            // Kept items went upstream already (as developer), or are answers.
            Self::Recalled(_) | Self::Text(_) => None,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Raw(item) => out.extend_from_slice(item.get().as_bytes()),
            Self::Owned(json) => out.extend_from_slice(json.as_bytes()),
            Self::Recalled(item) => out.extend_from_slice(item.json().as_bytes()),
            Self::Text(text) => {
                out.extend_from_slice(TEXT_OPEN);
                out.extend_from_slice(text.get().as_bytes());
                out.extend_from_slice(TEXT_CLOSE);
            }
        }
    }

    /// The item as the store keeps it: exactly what went upstream (one copy of the client's).
    fn into_item(self) -> Arc<Item> {
        match self {
            Self::Recalled(item) => item,
            Self::Owned(json) => Item::input(json),
            Self::Raw(item) => Item::input(item.get()),
            Self::Text(_) => {
                let mut out = Vec::new();
                self.write(&mut out);
                Item::input(as_str(&out))
            }
        }
    }
}

/// [`apply_body_rules`] with the gateway's response store (`recall`), as OpenAI would answer
/// with `store: true`: a `previous_response_id` puts that response's input and output items
/// before the new input; an `item_reference` is replaced by the item it names, and so is a
/// `reasoning` item that is only an id. An id the store does not know (never kept, kept for
/// another key, or gone) is a [`RequestError::NotFound`], never a silent drop.
///
/// Unless the client said `store: false`, the answer is to be kept too: [`ENCRYPTED_REASONING`]
/// is asked for (a reasoning item can only go back to the backend with it), and the second value
/// is the input to keep with the answer — every item as it went upstream, the lifted `system`
/// messages included (instructions do not carry over to the next turn, input items do).
pub(crate) fn apply_body_rules_with(
    body: &[u8],
    overrides: &Overrides<'_>,
    mut recall: Option<&mut dyn Recall>,
) -> Result<(UpstreamRequest, Option<KeptInput>), RequestError> {
    // One pass over the body when `input` is an array of items (a long conversation is most of
    // it); otherwise the field-by-field reading.
    let (obj, input_items) = match parse_object_with::<Vec<&RawValue>>(body, "input") {
        Some(split) => split,
        None => (parse_object(body)?, None),
    };
    let mut kept = Kept::default();
    let mut dropped: Vec<String> = Vec::new();
    let mut store = true;
    let mut previous = None;
    for (key, value) in &obj.0 {
        match kept.slot(key) {
            // The last occurrence wins, as with `serde_json::Value`; `null` means "not given".
            Some(slot) => *slot = Some(*value).filter(|v| !is_null(v)),
            // `store` is always forced upstream; the client's says whether the gateway keeps it.
            None if key == "store" => store = as_bool("store", Some(value))?.unwrap_or(true),
            None if key == "previous_response_id" && recall.is_some() => {
                previous = Some(*value).filter(|v| !is_null(v));
            }
            // What only OpenAI keeps (a conversation object, a stored prompt): answering without
            // it would be answering another question.
            None if matches!(key.as_ref(), "conversation" | "prompt") && !is_null(value) => {
                return Err(RequestError::field(
                    key.as_ref(),
                    "not supported here (the Codex backend keeps no conversations or prompts): \
                     send the instructions and the conversation's items as input",
                ));
            }
            None if !is_null(value) => note(&mut dropped, key),
            None => {}
        }
    }
    let keep = store && recall.is_some();

    let model = resolve_model(kept.model, overrides)?;
    let stream = as_bool("stream", kept.stream)?.unwrap_or(false);

    let mut instructions = match kept.instructions {
        None => String::new(),
        Some(raw) => raw_str(raw)
            .ok_or_else(|| RequestError::field("instructions", "must be a string"))?
            .into_owned(),
    };
    if input_items.is_none() && kept.input.is_none() {
        return Err(RequestError::field("input", "required"));
    }
    if instructions.trim().is_empty() {
        instructions.clear();
    }

    let mut pieces: Vec<Piece<'_>> = Vec::new();
    if let (Some(previous), Some(recall)) = (previous, recall.as_deref_mut()) {
        let id = raw_str(previous)
            .ok_or_else(|| RequestError::field("previous_response_id", "must be a string"))?;
        let items = recall
            .response(&id)
            .ok_or_else(|| RequestError::previous_not_found(&id))?;
        pieces.extend(items.into_iter().map(Piece::Recalled));
    }
    let items = match (input_items, kept.input) {
        (Some(items), _) => Some(items),
        (None, Some(input)) => match input.get().as_bytes().first() {
            // A string is one user message; the JSON string literal is reused as is.
            Some(b'"') => {
                pieces.push(Piece::Text(input));
                None
            }
            Some(b'[') => Some(
                serde_json::from_str::<Vec<&RawValue>>(input.get())
                    .map_err(|e| RequestError::field("input", e.to_string()))?,
            ),
            _ => {
                return Err(RequestError::field(
                    "input",
                    "must be a string or an array of items",
                ));
            }
        },
        (None, None) => None,
    };
    if let Some(items) = items {
        pieces.reserve(items.len());
        for (n, item) in items.into_iter().enumerate() {
            match stored_item(item) {
                StoredItem::None => pieces.push(Piece::Raw(item)),
                StoredItem::Id => match without_id(item.get()) {
                    Some(json) => {
                        note(&mut dropped, "input[].id");
                        pieces.push(Piece::Owned(json));
                    }
                    None => pieces.push(Piece::Raw(item)),
                },
                StoredItem::Reference(id) => match recall.as_deref_mut() {
                    Some(recall) => {
                        let id = id.ok_or_else(|| {
                            RequestError::field(format!("input[{n}].id"), "required")
                        })?;
                        match recall.item(&id) {
                            Some(item) => pieces.push(Piece::Recalled(item)),
                            // Reasoning no longer kept (expired, evicted, a restart): the
                            // conversation goes on without it, as OpenAI's does without
                            // reasoning it cannot read (the Vercel AI SDK refers to its
                            // reasoning on every turn).
                            None if is_reasoning_id(&id) => {
                                note(&mut dropped, "input[].reasoning");
                            }
                            None => return Err(RequestError::item_not_found(n, &id)),
                        }
                    }
                    // Without the store (see the route): reasoning can be left out, as above; a
                    // reference to anything else is refused there.
                    None => note(
                        &mut dropped,
                        match id {
                            Some(id) if is_reasoning_id(&id) => "input[].reasoning",
                            _ => "input[].item_reference",
                        },
                    ),
                },
                // Reasoning that is only an id: the kept item when there is one.
                StoredItem::BareReasoning(id) => {
                    let item = recall
                        .as_deref_mut()
                        .zip(id)
                        .and_then(|(recall, id)| recall.item(&id))
                        .filter(|i| i.replay());
                    match item {
                        Some(item) => pieces.push(Piece::Recalled(item)),
                        None => note(&mut dropped, "input[].reasoning"),
                    }
                }
            }
        }
    }

    let mut lifted = 0;
    let mut lifted_json = false;
    for piece in &pieces {
        let Some(text) = piece.system_text() else {
            break;
        };
        if !instructions.is_empty() && !text.is_empty() {
            instructions.push_str("\n\n");
        }
        lifted_json |= mentions_json(&text);
        instructions.push_str(&text);
        lifted += 1;
    }
    // JSON mode asked for only in a system message that became `instructions`: said again in
    // the input, where the backend looks, second (see `chat_to_responses`).
    let mut directive = None;
    if lifted_json
        && asks_json_object(kept.text)
        && !pieces[lifted..].iter().any(Piece::mentions_json)
    {
        let at = (lifted + 1).min(pieces.len());
        pieces.insert(at, Piece::Owned(json_directive()));
        directive = Some(at);
    }
    // A system message left in the input (not leading, or not only text): the backend refuses
    // the role there ("System messages are not allowed"), so it goes as `developer`, as chat's.
    for piece in &mut pieces[lifted..] {
        if let Some(json) = piece.as_developer() {
            *piece = Piece::Owned(json);
        }
    }
    if instructions.trim().is_empty() {
        DEFAULT_INSTRUCTIONS.clone_into(&mut instructions);
    }
    let reasoning = reasoning_json(kept.reasoning, overrides.reasoning_effort)?;
    let include = include_list(kept.include, reasoning.is_some() || keep)?;

    let input_size: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Raw(item) => item.get().len(),
            Piece::Text(text) => text.get().len() + TEXT_OPEN.len() + TEXT_CLOSE.len(),
            Piece::Owned(json) => json.len(),
            Piece::Recalled(item) => item.json().len(),
        })
        .sum::<usize>()
        + pieces.len()
        + 2;
    // The client's body bounds every other field.
    let mut out = Vec::with_capacity(body.len() + input_size + instructions.len() + 128);
    let mut w = ObjectWriter::new(&mut out);
    w.value("model", &*model);
    let instructions_span = w.value_span("instructions", &instructions);
    // Where the first input item lands (for the session fingerprint).
    let mut first_item = 0..0;
    w.raw_with("input", |out| {
        out.push(b'[');
        let mut written = 0;
        for piece in &pieces[lifted..] {
            // A kept reasoning item without its encrypted content is only an id to the backend.
            if let Piece::Recalled(item) = piece
                && !item.replay()
            {
                note(&mut dropped, "input[].reasoning");
                continue;
            }
            if written > 0 {
                out.push(b',');
            }
            written += 1;
            let start = out.len();
            piece.write(out);
            if written == 1 {
                first_item = start..out.len();
            }
        }
        out.push(b']');
    });
    let passthrough = [
        ("tools", kept.tools),
        ("tool_choice", kept.tool_choice),
        ("parallel_tool_calls", kept.parallel_tool_calls),
    ];
    for (key, value) in passthrough {
        if let Some(value) = value {
            w.raw(key, value.get());
        }
    }
    if let Some(reasoning) = &reasoning {
        w.raw("reasoning", reasoning);
    }
    w.raw("store", "false");
    w.raw("stream", "true");
    if !include.is_empty() {
        w.value("include", &include);
    }
    let passthrough = [
        ("prompt_cache_key", kept.prompt_cache_key),
        ("text", kept.text),
        ("service_tier", kept.service_tier),
        ("client_metadata", kept.client_metadata),
    ];
    for (key, value) in passthrough {
        if let Some(value) = value {
            w.raw(key, value.get());
        }
    }
    w.end();

    let request = UpstreamRequest {
        body: Bytes::from(out),
        model: model.into_owned(),
        stream,
        dropped,
        prompt_cache_key: kept.prompt_cache_key.and_then(raw_str).map(Cow::into_owned),
        opening: Some([instructions_span, first_item]),
    };
    // The directive is this request's, not the conversation's: a later turn that does not ask
    // for JSON must not get it again.
    let input = keep.then(|| {
        let mut pieces = pieces;
        if let Some(at) = directive {
            pieces.remove(at);
        }
        pieces.into_iter().map(Piece::into_item).collect()
    });
    Ok((request, input))
}

/// The client's Responses body as the fallback upstream can take it: that upstream holds none
/// of what the gateway kept and cannot read the accounts' encrypted reasoning. So
/// `previous_response_id` becomes the kept response's items in front of the input, an
/// `item_reference` the item it names (both from `recall`, as for the accounts), items lose
/// their `id`s, and reasoning items are left out. `None` when none of this applies: the body
/// then goes as sent. A reference `recall` does not know stays as it is (the fallback says what
/// it makes of it).
pub(crate) fn for_fallback(body: &[u8], mut recall: Option<&mut dyn Recall>) -> Option<Bytes> {
    let (obj, items) = match parse_object_with::<Vec<&RawValue>>(body, "input") {
        Some(split) => split,
        None => (parse_object(body).ok()?, None),
    };
    let mut changed = false;
    let mut input: Vec<Cow<'_, str>> = Vec::new();
    let previous = obj.get("previous_response_id").and_then(raw_str);
    let mut recalled_previous = false;
    if let (Some(id), Some(recall)) = (&previous, recall.as_deref_mut())
        && let Some(kept) = recall.response(id)
    {
        (changed, recalled_previous) = (true, true);
        input.extend(
            kept.iter()
                .filter_map(|item| fallback_item(item.json(), None))
                .map(|item| Cow::Owned(item.into_owned())),
        );
    }
    if let Some(text) = obj.get("input").filter(|v| v.get().starts_with('"')) {
        // A string is one message: nothing of it to change, only the kept turn to put before.
        if !recalled_previous {
            return None;
        }
        let mut item = Vec::with_capacity(text.get().len() + TEXT_OPEN.len() + TEXT_CLOSE.len());
        Piece::Text(text).write(&mut item);
        input.push(Cow::Owned(as_str(&item).to_owned()));
    }
    for item in items.iter().flatten() {
        let out = fallback_item(item.get(), recall.as_deref_mut());
        changed |= !matches!(out, Some(Cow::Borrowed(_)));
        input.extend(out);
    }
    if !changed {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + input.iter().map(|i| i.len() + 1).sum::<usize>());
    let mut w = ObjectWriter::new(&mut out);
    let mut wrote_input = false;
    let write_input = |w: &mut ObjectWriter<'_>| {
        w.raw_with("input", |out| {
            out.push(b'[');
            for (n, item) in input.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(item.as_bytes());
            }
            out.push(b']');
        });
    };
    for (key, value) in &obj.0 {
        match key.as_ref() {
            "previous_response_id" if recalled_previous => {}
            "input" if wrote_input => {}
            "input" => {
                write_input(&mut w);
                wrote_input = true;
            }
            _ => w.raw(key, value.get()),
        }
    }
    if !wrote_input {
        write_input(&mut w);
    }
    w.end();
    Some(Bytes::from(out))
}

/// One input item for the fallback upstream: without its `id` (borrowed when it has none), the
/// kept item an `item_reference` names (from `recall`), `None` for reasoning. What does not
/// read as an item goes as it is.
fn fallback_item<'a>(
    json: &'a str,
    recall: Option<&mut (dyn Recall + '_)>,
) -> Option<Cow<'a, str>> {
    let Ok(head) = serde_json::from_str::<ItemHead<'_>>(json) else {
        return Some(Cow::Borrowed(json));
    };
    match head.kind.as_ref().map(|k| &*k.0) {
        Some("reasoning") => None,
        Some("item_reference") => {
            let kept = head.id.and_then(raw_str).zip(recall);
            match kept.and_then(|(id, recall)| recall.item(&id)) {
                Some(kept) => fallback_item(kept.json(), None).map(|i| Cow::Owned(i.into_owned())),
                // One the gateway does not know: it is all the item there is.
                None => Some(Cow::Borrowed(json)),
            }
        }
        _ if head.id.is_some() => Some(without_id(json).map_or(Cow::Borrowed(json), Cow::Owned)),
        _ => Some(Cow::Borrowed(json)),
    }
}

/// Forwards a Codex CLI body as sent, except for a forced model or reasoning effort.
///
/// Without overrides (or when they match what was sent) the returned body is `body` itself, not
/// a copy. With them, only the top-level `model` / `reasoning` values are rewritten; every other
/// value is copied as raw JSON text, in the original order. Errors: the body is not a JSON object,
/// or `model` is missing (without an override) or not a string.
pub fn codex_passthrough(
    body: Bytes,
    overrides: &Overrides<'_>,
) -> Result<UpstreamRequest, RequestError> {
    let obj = parse_object(&body)?;
    let client_model = str_field(&obj, "model", || "model".to_owned())?;
    let stream = bool_field(&obj, "stream")?.unwrap_or(false);
    let prompt_cache_key = obj
        .get("prompt_cache_key")
        .and_then(raw_str)
        .map(Cow::into_owned);
    let model = match (overrides.model, &client_model) {
        (Some(forced), _) => forced.to_owned(),
        (None, Some(model)) => model.to_string(),
        (None, None) => return Err(RequestError::field("model", "required")),
    };
    let rewrite_model = client_model.as_deref() != Some(model.as_str());
    let reasoning = obj.get("reasoning");
    let rewrite_effort = match overrides.reasoning_effort {
        None => false,
        Some(effort) => current_effort(reasoning).as_deref() != Some(effort),
    };
    let (new_body, opening) = if rewrite_model || rewrite_effort {
        let new_reasoning = if rewrite_effort {
            reasoning_json(reasoning, overrides.reasoning_effort)?
        } else {
            None
        };
        let new_body = rewrite_top_level(&obj, &model, new_reasoning.as_deref(), body.len());
        (new_body, None)
    } else {
        (body.clone(), Some(opening_spans(&body, &obj)))
    };
    Ok(UpstreamRequest {
        body: new_body,
        model,
        stream,
        dropped: Vec::new(),
        prompt_cache_key,
        opening,
    })
}

/// Where a body forwarded as sent starts its conversation, found in the split it was read with
/// (the fingerprint would read the body, and its `input`, again): the `instructions` value and
/// the first `input` item, or the first 1 KiB of the body when it has neither.
fn opening_spans(body: &[u8], obj: &Shallow<'_>) -> [std::ops::Range<usize>; 2] {
    // Every value of the split borrows from `body`.
    let span = |raw: &str| {
        let start = raw.as_ptr() as usize - body.as_ptr() as usize;
        start..start + raw.len()
    };
    let instructions = obj.get("instructions").map_or(0..0, |raw| span(raw.get()));
    // Only the first item is read: the rest of the array was checked with the body.
    let first_item = obj
        .get("input")
        .and_then(|raw| raw.get().strip_prefix('['))
        .and_then(|items| {
            serde_json::Deserializer::from_str(items)
                .into_iter::<&RawValue>()
                .next()?
                .ok()
        })
        .map_or(0..0, |item| span(item.get()));
    if instructions.is_empty() && first_item.is_empty() {
        return [0..body.len().min(1024), 0..0];
    }
    [instructions, first_item]
}

/// `obj` with every `model` replaced by `model` and (when given) every `reasoning` by `reasoning`;
/// missing keys are appended.
fn rewrite_top_level(
    obj: &Shallow<'_>,
    model: &str,
    reasoning: Option<&str>,
    size: usize,
) -> Bytes {
    let mut out = Vec::with_capacity(size + 64);
    let mut w = ObjectWriter::new(&mut out);
    let (mut saw_model, mut saw_reasoning) = (false, false);
    for (key, value) in &obj.0 {
        match (key.as_ref(), reasoning) {
            ("model", _) => {
                saw_model = true;
                w.value(key, model);
            }
            ("reasoning", Some(reasoning)) => {
                saw_reasoning = true;
                w.raw(key, reasoning);
            }
            _ => w.raw(key, value.get()),
        }
    }
    if !saw_model {
        w.value("model", model);
    }
    if let (false, Some(reasoning)) = (saw_reasoning, reasoning) {
        w.raw("reasoning", reasoning);
    }
    w.end();
    Bytes::from(out)
}

/// Whether an item id is a reasoning item's (`rs_…`): reasoning a conversation can go on
/// without when it is no longer kept.
fn is_reasoning_id(id: &str) -> bool {
    id.starts_with("rs_")
}

/// The model asked for upstream: the key's, else the client's (a non-empty string).
pub(crate) fn resolve_model<'a>(
    raw: Option<&'a RawValue>,
    overrides: &Overrides<'a>,
) -> Result<Cow<'a, str>, RequestError> {
    let client = match raw {
        None => None,
        Some(raw) => {
            Some(raw_str(raw).ok_or_else(|| RequestError::field("model", "must be a string"))?)
        }
    };
    match (overrides.model, client) {
        (Some(forced), _) => Ok(Cow::Borrowed(forced)),
        (None, Some(model)) if !model.trim().is_empty() => Ok(model),
        (None, Some(_)) => Err(RequestError::field("model", "must not be empty")),
        (None, None) => Err(RequestError::field("model", "required")),
    }
}

#[derive(Deserialize)]
struct EffortOnly<'a> {
    #[serde(borrow)]
    effort: Option<JStr<'a>>,
}

fn current_effort(reasoning: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let reasoning = reasoning?;
    serde_json::from_str::<EffortOnly<'_>>(reasoning.get())
        .ok()?
        .effort
        .map(|e| e.0)
}

/// The `reasoning` value to send: the client's (raw) or, with an effort override, the client's
/// object with `effort` set. `None` when neither exists.
pub(crate) fn reasoning_json<'a>(
    reasoning: Option<&'a RawValue>,
    effort: Option<&str>,
) -> Result<Option<Cow<'a, str>>, RequestError> {
    let not_object = || RequestError::field("reasoning", "must be an object");
    match (reasoning, effort) {
        (None, None) => Ok(None),
        (Some(raw), None) => {
            if raw.get().starts_with('{') {
                Ok(Some(Cow::Borrowed(raw.get())))
            } else {
                Err(not_object())
            }
        }
        (raw, Some(effort)) => {
            let mut map: serde_json::Map<String, serde_json::Value> = match raw {
                Some(raw) => serde_json::from_str(raw.get()).map_err(|_| not_object())?,
                None => serde_json::Map::new(),
            };
            map.insert("effort".to_owned(), effort.into());
            let mut out = Vec::new();
            write_json(&mut out, &map);
            Ok(Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned())))
        }
    }
}

/// The `include` list to send: the client's entries (deduplicated, in order) plus
/// [`ENCRYPTED_REASONING`] when reasoning is on.
pub(crate) fn include_list(
    include: Option<&RawValue>,
    reasoning: bool,
) -> Result<Vec<Cow<'_, str>>, RequestError> {
    let mut list: Vec<Cow<'_, str>> = Vec::new();
    if let Some(raw) = include {
        let entries: Vec<JStr<'_>> = serde_json::from_str(raw.get())
            .map_err(|_| RequestError::field("include", "must be an array of strings"))?;
        for entry in entries {
            if !list.contains(&entry.0) {
                list.push(entry.0);
            }
        }
    }
    if reasoning && !list.iter().any(|e| e == ENCRYPTED_REASONING) {
        list.push(Cow::Borrowed(ENCRYPTED_REASONING));
    }
    Ok(list)
}

/// What of an input item refers to a stored item (the backend keeps nothing: `store: false`).
enum StoredItem<'a> {
    /// Nothing: it goes as is.
    None,
    /// An `id` the backend would look up: sent without it.
    Id,
    /// An `item_reference` (to this id).
    Reference(Option<Cow<'a, str>>),
    /// A `reasoning` item without its encrypted content: only a reference (to this id).
    BareReasoning(Option<Cow<'a, str>>),
}

#[derive(Deserialize)]
struct ItemHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<JStr<'a>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    encrypted_content: Option<&'a RawValue>,
}

/// Items replayed from an earlier answer carry ids (`msg_…`, `rs_…`, `fc_…`) that the backend
/// tries to look up and, with `store: false`, answers 404 "Item with id … not found". Clients
/// replay them as they got them (openai-agents, the Vercel AI SDK, `input += response.output`).
fn stored_item(item: &RawValue) -> StoredItem<'_> {
    // Built once: building a searcher costs more than searching an item.
    static ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""id""#));
    static REFERENCE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"item_reference"));
    let text = item.get().as_bytes();
    // Most items (messages typed by a person) mention none of these: no parse.
    if ID.find(text).is_none() && REFERENCE.find(text).is_none() {
        return StoredItem::None;
    }
    let Ok(head) = serde_json::from_str::<ItemHead<'_>>(item.get()) else {
        return StoredItem::None;
    };
    let id = || head.id.and_then(raw_str);
    match head.kind.as_ref().map(|k| &*k.0) {
        Some("item_reference") => StoredItem::Reference(id()),
        Some("reasoning") if head.encrypted_content.is_none_or(|c| c.get() == "null") => {
            StoredItem::BareReasoning(id())
        }
        _ if head.id.is_some() => StoredItem::Id,
        _ => StoredItem::None,
    }
}

/// An item without its top-level `id`, fields otherwise in order (`None` if not an object).
fn without_id(item: &str) -> Option<String> {
    let fields: Shallow<'_> = serde_json::from_str(item).ok()?;
    let mut out = Vec::with_capacity(item.len());
    let mut w = ObjectWriter::new(&mut out);
    for (key, value) in fields.0.iter().filter(|(k, _)| k != "id") {
        w.raw(key, value.get());
    }
    w.end();
    String::from_utf8(out).ok()
}

/// What the response store keeps of a final `response` object ([`stored_parts`]).
#[derive(Debug)]
pub(crate) struct StoredParts {
    /// The object without `output` (JSON).
    pub shell: String,
    /// The output items.
    pub output: Vec<OutputPart>,
}

/// One output item as the response store keeps it.
#[derive(Debug)]
pub(crate) struct OutputPart {
    /// Its own id (`rs_…`, `msg_…`, `fc_…`).
    pub id: Option<String>,
    /// Its JSON without `id`, as it can go back upstream.
    pub json: String,
    /// Not a reasoning item without its encrypted content.
    pub replay: bool,
    /// A reasoning item with encrypted content (only the account that made it can read it).
    pub encrypted_reasoning: bool,
}

/// The string `id` of a response object, the rest of it left unread; `None` when it is not an
/// object with one.
pub(crate) fn response_id(response: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    // A struct may also be read from an array: only an object will do.
    if !response.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    let head: Head<'_> = serde_json::from_slice(response).ok()?;
    head.id.and_then(raw_str).map(Cow::into_owned)
}

/// Splits a final `response` object into what the response store keeps once something refers to
/// it; `None` when it is not an object. One pass over the object and one over each item.
pub(crate) fn stored_parts(response: &[u8]) -> Option<StoredParts> {
    let fields: Shallow<'_> = serde_json::from_slice(response).ok()?;
    let mut shell = Vec::with_capacity(512);
    let mut w = ObjectWriter::new(&mut shell);
    let mut output = Vec::new();
    for (key, value) in &fields.0 {
        if key == "output" {
            let items: Vec<&RawValue> = serde_json::from_str(value.get()).unwrap_or_default();
            output = items.into_iter().map(output_part).collect();
        } else {
            w.raw(key, value.get());
        }
    }
    w.end();
    Some(StoredParts {
        shell: as_str(&shell).to_owned(),
        output,
    })
}

fn output_part(item: &RawValue) -> OutputPart {
    let Ok(fields) = serde_json::from_str::<Shallow<'_>>(item.get()) else {
        return OutputPart {
            id: None,
            json: item.get().to_owned(),
            replay: true,
            encrypted_reasoning: false,
        };
    };
    let mut json = Vec::with_capacity(item.get().len());
    let mut w = ObjectWriter::new(&mut json);
    let mut id = None;
    for (key, value) in &fields.0 {
        if key == "id" {
            id = raw_str(value).map(Cow::into_owned);
        } else {
            w.raw(key, value.get());
        }
    }
    w.end();
    let reasoning = fields.get("type").and_then(raw_str).as_deref() == Some("reasoning");
    let encrypted = fields.get("encrypted_content").is_some();
    OutputPart {
        id,
        json: as_str(&json).to_owned(),
        replay: !reasoning || encrypted,
        encrypted_reasoning: reasoning && encrypted,
    }
}

/// The `response` object of a `response.*` event's payload (JSON text, borrowed).
pub(crate) fn event_response(data: &[u8]) -> Option<&str> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        response: Option<&'a RawValue>,
    }
    let envelope: Envelope<'_> = serde_json::from_slice(data).ok()?;
    envelope.response.map(RawValue::get)
}

fn note(dropped: &mut Vec<String>, what: &str) {
    super::note_dropped(dropped, what);
}

#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TextPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: JStr<'a>,
    #[serde(borrow)]
    text: JStr<'a>,
}

/// A part of a message's content, for its text if it has one (images and files have none).
#[derive(Deserialize)]
struct PartText<'a> {
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

/// Whether a message's `content` (a string or parts) says "json" in its text: the data of
/// images and files is not looked into (a long base64 string says "json" somewhere by chance).
fn content_mentions_json(content: &RawValue) -> bool {
    let raw = content.get();
    if raw.starts_with('"') {
        return mentions_json(raw);
    }
    serde_json::from_str::<Vec<PartText<'_>>>(raw).is_ok_and(|parts| {
        parts
            .iter()
            .filter_map(|p| p.text)
            .any(|t| t.get().starts_with('"') && mentions_json(t.get()))
    })
}

/// An input item as OpenAI lists it (`GET /v1/responses/{id}/input_items`): a message without
/// its `type` gets it, and one given the short way (`"content": "text"`) one text part (the
/// assistant's `output_text`, everyone else's `input_text`); any other item is as it is.
pub(crate) fn listed_item(item: &str) -> Cow<'_, str> {
    let Ok(head) = serde_json::from_str::<MessageHead<'_>>(item) else {
        return Cow::Borrowed(item);
    };
    let short = head.content.and_then(raw_str);
    if head.role.is_none() || (head.kind.is_some() && short.is_none()) {
        return Cow::Borrowed(item);
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str(item) else {
        return Cow::Borrowed(item);
    };
    if let (Some(Value::String(role)), Some(text)) = (fields.get("role"), short) {
        let part = match role.as_str() {
            "assistant" => json!({"type": "output_text", "text": text, "annotations": []}),
            _ => json!({"type": "input_text", "text": text}),
        };
        fields.insert("content".into(), json!([part]));
    }
    fields
        .entry("type")
        .or_insert_with(|| Value::from("message"));
    Cow::Owned(Value::Object(fields).to_string())
}

/// The text of a `system`/`developer` message item made only of text, else `None` (the item stays
/// in `input`).
fn system_message_text(item: &str) -> Option<Cow<'_, str>> {
    let head: MessageHead<'_> = serde_json::from_str(item).ok()?;
    if head
        .kind
        .is_some_and(|k| raw_str(k).as_deref() != Some("message"))
    {
        return None;
    }
    let role = raw_str(head.role?)?;
    if role != "system" && role != "developer" {
        return None;
    }
    let content = head.content?;
    if let Some(text) = raw_str(content) {
        return Some(text);
    }
    let parts: Vec<TextPart<'_>> = serde_json::from_str(content.get()).ok()?;
    let mut texts = Vec::with_capacity(parts.len());
    for part in parts {
        if part.kind.0 != "input_text" && part.kind.0 != "text" {
            return None;
        }
        texts.push(part.text.0);
    }
    Some(match texts.len() {
        1 => texts.swap_remove(0),
        _ => Cow::Owned(texts.join("\n")),
    })
}

/// Whether a Responses `text` setting asks for `json_object` output.
fn asks_json_object(text: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct TextSetting<'a> {
        #[serde(borrow)]
        format: Option<FormatHead<'a>>,
    }
    #[derive(Deserialize)]
    struct FormatHead<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<JStr<'a>>,
    }
    text.and_then(|t| serde_json::from_str::<TextSetting<'_>>(t.get()).ok())
        .and_then(|t| t.format?.kind)
        .is_some_and(|k| k.0 == "json_object")
}

/// [`JSON_DIRECTIVE`] as an input message.
fn json_directive() -> String {
    // Nothing in it to escape.
    format!(
        r#"{{"type":"message","role":"developer","content":[{{"type":"input_text","text":"{JSON_DIRECTIVE}"}}]}}"#
    )
}

/// `item` with its role `developer` when it is a `system` message, else `None`.
fn developer_message(item: &str) -> Option<String> {
    static SYSTEM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""system""#));
    // Most items do not say it anywhere: no parse.
    SYSTEM.find(item.as_bytes())?;
    let head: MessageHead<'_> = serde_json::from_str(item).ok()?;
    if head
        .kind
        .is_some_and(|k| raw_str(k).as_deref() != Some("message"))
    {
        return None;
    }
    let role = head.role?.get();
    if role != r#""system""# {
        return None;
    }
    // The role's literal is a slice of `item`: replaced where it stands, the rest as sent.
    let at = (role.as_ptr() as usize).checked_sub(item.as_ptr() as usize)?;
    let after = item.get(at + role.len()..)?;
    Some(format!(r#"{}"developer"{after}"#, item.get(..at)?))
}

fn as_str(json: &[u8]) -> &str {
    // Built from valid UTF-8 pieces only; the fallback is never taken.
    std::str::from_utf8(json).unwrap_or("null")
}

/// The parts of an item/response event the assembler keeps verbatim.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    output_index: Option<u64>,
    #[serde(borrow)]
    item: Option<&'a RawValue>,
    #[serde(borrow)]
    response: Option<&'a RawValue>,
}

fn missing(field: &'static str) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::missing_field(field)
}

/// Rebuilds the final `response` object from a Responses event stream, for `stream: false`
/// clients.
///
/// The answer is the `response` of `response.completed` (or `response.incomplete`) as the
/// upstream sent it, sliced out of the frame without copying; when that object has `output: []`
/// (the backend sometimes sends the items only as `response.output_item.done` events) the items
/// seen are put back in, in `output_index` order.
#[derive(Debug, Default)]
pub struct ResponseAssembler {
    items: Vec<(u64, Bytes)>,
    response: Option<Bytes>,
    failure: Option<UpstreamFailure>,
    usage: Option<TokenUsage>,
}

impl ResponseAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event. `Ok(true)` once the response is complete (later events are ignored);
    /// `Err(AssembleError::Failed)` when the upstream reported a failure.
    pub fn push(&mut self, event: &SseEvent) -> Result<bool, AssembleError> {
        if let Some(failure) = &self.failure {
            return Err(AssembleError::Failed(failure.clone()));
        }
        if self.response.is_some() {
            return Ok(true);
        }
        let kind = EventKind::of(event);
        match kind {
            EventKind::OutputItemDone
            | EventKind::Completed
            | EventKind::Incomplete
            | EventKind::Failed
            | EventKind::Error => {}
            // Nothing else contributes to the final object: not even parsed.
            _ => return Ok(false),
        }
        if matches!(kind, EventKind::Failed | EventKind::Error) {
            return match ResponsesEvent::from_sse(event)? {
                ResponsesEvent::Failed(response) => Err(self.fail(response.failure())),
                ResponsesEvent::Error(error) => Err(self.fail(error.to_failure(None))),
                _ => Ok(false),
            };
        }
        // Items and the final response are kept as the upstream's bytes: capture them raw.
        let malformed = |source| EventError::Malformed {
            event_type: event.event_type().unwrap_or_default().into_owned(),
            source,
        };
        let envelope: RawEnvelope<'_> =
            serde_json::from_slice(event.data()).map_err(|e| AssembleError::Event(malformed(e)))?;
        if kind == EventKind::OutputItemDone {
            let item = envelope
                .item
                .ok_or_else(|| AssembleError::Event(malformed(missing("item"))))?;
            let index = envelope.output_index.unwrap_or(self.items.len() as u64);
            self.items
                .push((index, sub_bytes(event.data(), item.get().as_bytes())));
            return Ok(false);
        }
        let raw = envelope
            .response
            .ok_or_else(|| AssembleError::Event(malformed(missing("response"))))?;
        let response = ResponseRef::parse(raw).map_err(|e| AssembleError::Event(malformed(e)))?;
        self.usage = response.usage;
        self.response = Some(if response.output_is_empty() && !self.items.is_empty() {
            self.with_items(raw)
        } else {
            sub_bytes(event.data(), raw.get().as_bytes())
        });
        Ok(true)
    }

    fn fail(&mut self, failure: UpstreamFailure) -> AssembleError {
        self.failure = Some(failure.clone());
        AssembleError::Failed(failure)
    }

    /// The usage reported by the final event, once seen.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The final `response` object (JSON). Fails if the upstream failed or the stream ended first.
    pub fn finish(self) -> Result<Bytes, AssembleError> {
        if let Some(failure) = self.failure {
            return Err(AssembleError::Failed(failure));
        }
        self.response.ok_or(AssembleError::Truncated)
    }

    /// `response` with its `output` replaced by the items seen.
    fn with_items(&mut self, response: &RawValue) -> Bytes {
        let output = items_array(&mut self.items);
        with_field(response.get(), "output", &output).map_or_else(
            || Bytes::copy_from_slice(response.get().as_bytes()),
            Bytes::from,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::FailureKind;
    use proptest::prelude::*;

    #[test]
    fn short_messages_are_listed_as_openai_lists_them() {
        let listed = |item: &str| serde_json::from_str::<Value>(&listed_item(item)).unwrap();
        assert_eq!(
            listed(r#"{"role":"assistant","content":"A"}"#),
            json!({"type": "message", "role": "assistant",
                   "content": [{"type": "output_text", "text": "A", "annotations": []}]})
        );
        assert_eq!(
            listed(r#"{"type":"message","role":"developer","content":"D"}"#),
            json!({"type": "message", "role": "developer",
                   "content": [{"type": "input_text", "text": "D"}]})
        );
        assert_eq!(
            listed(r#"{"role":"user","content":[{"type":"input_text","text":"q"}]}"#),
            json!({"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "q"}]})
        );
        // Anything else goes as it is, byte for byte.
        for item in [
            r#"{"type":"message","role":"user","content":[{"type":"input_text","text":"q"}]}"#,
            r#"{"type":"function_call_output","call_id":"c","output":"o"}"#,
            "not json",
        ] {
            assert!(
                matches!(listed_item(item), Cow::Borrowed(b) if b == item),
                "{item}"
            );
        }
    }

    const FIXTURE: &str = include_str!("testdata/codex-cli-0.171-request.json");

    fn rules(body: Value) -> (Value, UpstreamRequest) {
        let req =
            apply_body_rules(&serde_json::to_vec(&body).unwrap(), &Overrides::default()).unwrap();
        (serde_json::from_slice(&req.body).unwrap(), req)
    }

    fn rules_err(body: &str) -> String {
        apply_body_rules(body.as_bytes(), &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    /// A response store in a map.
    #[derive(Default)]
    struct FakeRecall {
        responses: std::collections::HashMap<&'static str, Vec<Arc<Item>>>,
        items: std::collections::HashMap<&'static str, Arc<Item>>,
    }

    impl Recall for FakeRecall {
        fn response(&mut self, id: &str) -> Option<Vec<Arc<Item>>> {
            self.responses.get(id).cloned()
        }
        fn item(&mut self, id: &str) -> Option<Arc<Item>> {
            self.items.get(id).cloned()
        }
    }

    fn with_recall(
        body: Value,
        recall: &mut FakeRecall,
    ) -> Result<(Value, UpstreamRequest, Option<KeptInput>), RequestError> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let (req, kept) = apply_body_rules_with(&bytes, &Overrides::default(), Some(recall))?;
        Ok((serde_json::from_slice(&req.body).unwrap(), req, kept))
    }

    #[test]
    fn previous_responses_and_references_are_expanded() {
        let sys = Item::input(r#"{"role":"system","content":"Be brief."}"#);
        let q1 = Item::input(r#"{"role":"user","content":"Q1"}"#);
        let bare = Item::kept("rs_0", r#"{"type":"reasoning","summary":[]}"#, false);
        let rs = Item::kept(
            "rs_1",
            r#"{"type":"reasoning","summary":[],"encrypted_content":"gAAA"}"#,
            true,
        );
        let msg = Item::kept(
            "msg_1",
            r#"{"type":"message","role":"assistant","content":[{"type":"output_text","text":"A1"}]}"#,
            true,
        );
        let mut recall = FakeRecall::default();
        recall.responses.insert(
            "resp_1",
            vec![
                sys.clone(),
                q1.clone(),
                bare.clone(),
                rs.clone(),
                msg.clone(),
            ],
        );
        for (id, item) in [("rs_0", &bare), ("rs_1", &rs), ("msg_1", &msg)] {
            recall.items.insert(id, item.clone());
        }
        let (body, req, kept) = with_recall(
            json!({"model": "m", "previous_response_id": "resp_1", "input": [
                {"type": "item_reference", "id": "msg_1"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "reasoning", "id": "rs_0", "summary": []},
                {"role": "user", "content": "Q2"},
            ]}),
            &mut recall,
        )
        .unwrap();
        // The earlier system message is lifted again; the kept items go as they were kept;
        // reasoning without its encrypted content is left out (named in the header).
        assert_eq!(body["instructions"], "Be brief.");
        let item = |json: &str| serde_json::from_str::<Value>(json).unwrap();
        assert_eq!(
            body["input"],
            json!([item(q1.json()), item(rs.json()), item(msg.json()), item(msg.json()),
                   item(rs.json()), {"role": "user", "content": "Q2"}])
        );
        assert_eq!(req.dropped, ["input[].reasoning"]);
        assert!(body.get("previous_response_id").is_none());
        assert_eq!(body["include"], json!([ENCRYPTED_REASONING]));
        // The opening is turn 1's, so the conversation keeps its session.
        let [_, first] = req.opening.clone().unwrap();
        assert_eq!(&req.body[first], q1.json().as_bytes());
        // Kept: the same items (shared, not copied), the lifted one too, and the new one.
        let kept = kept.unwrap();
        assert_eq!(kept.len(), 8);
        assert!(Arc::ptr_eq(&kept[0], &sys) && Arc::ptr_eq(&kept[5], &msg));
        assert_eq!(
            item(kept[7].json()),
            json!({"role": "user", "content": "Q2"})
        );
    }

    #[test]
    fn unknown_references_are_errors_naming_the_field() {
        let mut recall = FakeRecall::default();
        let err = |body: Value, recall: &mut FakeRecall| with_recall(body, recall).unwrap_err();
        let e = err(
            json!({"model": "m", "input": "x", "previous_response_id": "resp_x"}),
            &mut recall,
        );
        assert_eq!(
            e.to_string(),
            "Previous response with id 'resp_x' not found."
        );
        assert_eq!(
            (e.param(), e.code()),
            (
                Some("previous_response_id"),
                Some("previous_response_not_found")
            )
        );
        let e = err(
            json!({"model": "m", "input": ["a", "b", {"type": "item_reference", "id": "fc_9"}]}),
            &mut recall,
        );
        assert!(
            e.to_string().starts_with("Item with id 'fc_9' not found."),
            "{e}"
        );
        assert_eq!(
            (e.param(), e.code()),
            (Some("input[2]"), Some("item_not_found"))
        );
        let e = err(
            json!({"model": "m", "input": [{"type": "item_reference"}]}),
            &mut recall,
        );
        assert_eq!(e.to_string(), "input[0].id: required");
        let e = err(
            json!({"model": "m", "input": "x", "previous_response_id": 5}),
            &mut recall,
        );
        assert_eq!(e.to_string(), "previous_response_id: must be a string");
        // `null` is "not given".
        assert!(
            with_recall(
                json!({"model": "m", "input": "x", "previous_response_id": null}),
                &mut recall
            )
            .is_ok()
        );
    }

    #[test]
    fn store_false_keeps_nothing_and_asks_for_nothing_more() {
        let mut recall = FakeRecall::default();
        let (body, _, kept) = with_recall(
            json!({"model": "m", "input": "Hi", "store": false}),
            &mut recall,
        )
        .unwrap();
        assert!(kept.is_none());
        assert!(body.get("include").is_none());
        let (body, req, kept) =
            with_recall(json!({"model": "m", "input": "Hi"}), &mut recall).unwrap();
        assert_eq!(body["include"], json!([ENCRYPTED_REASONING]));
        assert!(req.dropped.is_empty());
        // A string input is kept as the message it became.
        let kept = kept.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(kept[0].json()).unwrap(),
            body["input"][0]
        );
    }

    #[test]
    fn replayed_items_lose_what_points_at_stored_items() {
        let (body, req) = rules(json!({
            "model": "gpt-5",
            "input": [
                {"type": "message", "role": "user", "content": "Plan a trip"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAA"},
                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Where to?", "annotations": []}]},
                {"type": "item_reference", "id": "fc_1"},
                {"type": "message", "role": "user", "content": "Mention \"id\" here"},
            ],
        }));
        assert_eq!(
            body["input"],
            json!([
                {"type": "message", "role": "user", "content": "Plan a trip"},
                {"type": "reasoning", "summary": [], "encrypted_content": "gAAA"},
                {"type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "Where to?", "annotations": []}]},
                {"type": "message", "role": "user", "content": "Mention \"id\" here"},
            ])
        );
        assert_eq!(
            req.dropped,
            ["input[].reasoning", "input[].id", "input[].item_reference"]
        );
        // Items without ids go byte for byte.
        let (_, plain) = rules(json!({"model": "m", "input": [
            {"type": "message", "role": "user", "content": "hi"}]}));
        assert!(plain.dropped.is_empty());
    }

    #[test]
    fn body_rules_shape() {
        let (body, req) = rules(json!({
            "model": "gpt-5",
            "input": "Say hi",
            "temperature": 0.2,
            "top_p": null,
            "max_output_tokens": 100,
            "store": true,
            "stream": false,
            "metadata": {"a": "b"},
            "previous_response_id": "resp_1",
            "frobnicate": 1,
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "text": {"format": {"type": "text"}},
        }));
        assert_eq!(
            body,
            json!({
                "model": "gpt-5",
                "instructions": DEFAULT_INSTRUCTIONS,
                "input": [{"type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": "Say hi"}]}],
                "tools": [{"type": "function", "name": "f", "parameters": {}}],
                "store": false,
                "stream": true,
                "text": {"format": {"type": "text"}},
            })
        );
        // (`json!` sorts keys, so the body arrived in alphabetical order.)
        assert_eq!(
            req.dropped,
            [
                "frobnicate",
                "max_output_tokens",
                "metadata",
                "previous_response_id",
                "temperature"
            ]
        );
        // Dropped names keep the client's order, once each.
        let ordered = apply_body_rules(
            br#"{"user":"u","model":"m","input":"x","temperature":1,"user":"v","seed":null}"#,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(ordered.dropped, ["user", "temperature"]);
        assert_eq!(
            ordered.dropped_params_header().as_deref(),
            Some("user, temperature")
        );
        assert!(!req.stream);
        assert_eq!(req.model, "gpt-5");
        // Key order is the canonical one.
        let text = std::str::from_utf8(&req.body).unwrap();
        assert!(
            text.starts_with(r#"{"model":"gpt-5","instructions":"#),
            "{text}"
        );
    }

    #[test]
    fn lifts_leading_system_messages() {
        let (body, req) = rules(json!({
            "model": "m",
            "instructions": "Base.",
            "stream": true,
            "prompt_cache_key": "conv-1",
            "input": [
                {"role": "system", "content": "Be brief."},
                {"type": "message", "role": "developer",
                 "content": [{"type": "input_text", "text": "One"}, {"type": "input_text", "text": "Two"}]},
                {"role": "user", "content": "Q"},
                {"role": "system", "content": "later system stays"},
            ],
        }));
        assert_eq!(body["instructions"], "Base.\n\nBe brief.\n\nOne\nTwo");
        assert_eq!(
            body["input"],
            json!([{"role": "user", "content": "Q"}, {"role": "developer", "content": "later system stays"}])
        );
        assert!(req.stream);
        assert_eq!(req.prompt_cache_key.as_deref(), Some("conv-1"));
        // A system message with an image is not lifted (and stops the lifting).
        let (body, _) = rules(json!({
            "model": "m",
            "input": [
                {"role": "system", "content": [{"type": "input_image", "image_url": "x"}]},
                {"role": "system", "content": "s"},
            ],
        }));
        assert_eq!(body["instructions"], DEFAULT_INSTRUCTIONS);
        assert_eq!(
            body["input"],
            json!([
                {"role": "developer", "content": [{"type": "input_image", "image_url": "x"}]},
                {"role": "developer", "content": "s"},
            ]),
            "the backend takes no system role in the input"
        );
        // Only the role changes, wherever it stands; other items mentioning "system" stay.
        let (body, _) = rules(json!({
            "model": "m",
            "input": [
                {"role": "user", "content": "\"system\" prompt?"},
                {"content": [{"type": "input_text", "text": "x"}], "role": "system", "type": "message"},
                {"type": "function_call_output", "call_id": "c", "output": "\"system\""},
            ],
        }));
        assert_eq!(
            body["input"],
            json!([
                {"role": "user", "content": "\"system\" prompt?"},
                {"content": [{"type": "input_text", "text": "x"}], "role": "developer", "type": "message"},
                {"type": "function_call_output", "call_id": "c", "output": "\"system\""},
            ])
        );
    }

    /// What belongs to the account goes; the rest stays as sent, key order included (a
    /// schema's order is the order strict output is generated in).
    #[test]
    fn account_state_is_cut_out_of_the_body_as_sent() {
        let body = br#"{"model":"m","previous_response_id":"resp_1","input":[{"type":"reasoning","encrypted_content":"gA"},{"role":"user","content":"hi"}],"text":{"format":{"type":"json_schema","schema":{"properties":{"z":{},"a":{}}}}},"store":false}"#;
        let out = without_account_state(body).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"m","input":[{"role":"user","content":"hi"}],"text":{"format":{"type":"json_schema","schema":{"properties":{"z":{},"a":{}}}}},"store":false}"#
        );
        // Only the id, or a string input: the id goes; nothing to cut: `None`.
        let out = without_account_state(br#"{"input":"hi","previous_response_id":"r"}"#);
        assert_eq!(out.as_deref(), Some(&br#"{"input":"hi"}"#[..]));
        assert!(
            without_account_state(br#"{"input":[{"type":"message"}],"b":{"y":1,"x":2}}"#).is_none()
        );
        assert!(without_account_state(b"[1]").is_none());
    }

    /// JSON mode asked for only in a lifted system message is said in the input too, second.
    #[test]
    fn json_mode_from_a_lifted_system_message_is_said_in_the_input() {
        let directive = json!({"type": "message", "role": "developer",
            "content": [{"type": "input_text", "text": JSON_DIRECTIVE}]});
        let body = |input: Value| {
            json!({"model": "m", "input": input,
            "text": {"format": {"type": "json_object"}}})
        };
        let (out, _) = rules(body(json!([
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "{}"},
            {"role": "user", "content": "Q2"},
        ])));
        assert_eq!(out["instructions"], "Answer in JSON.");
        assert_eq!(out["input"][1], directive);
        assert_eq!(out["input"].as_array().unwrap().len(), 4);
        let (out, _) = rules(body(json!([{"role": "system", "content": "JSON please"}])));
        assert_eq!(out["input"], json!([directive]));
        // An image's data that says "json" by chance is no text that asks for it.
        let (out, _) = rules(body(json!([
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,AAjSoNAA"},
                {"type": "input_text", "text": "What is it?"},
            ]},
        ])));
        assert_eq!(out["input"][1], directive, "{out}");
        let (out, _) = rules(body(json!([
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": [{"type": "input_text", "text": "as json"}]},
        ])));
        assert_eq!(
            out["input"].as_array().unwrap().len(),
            1,
            "said in a part: {out}"
        );
        // Said in a message already, not asked in a system message, or another format: as sent.
        for (input, text) in [
            (
                json!([{"role": "system", "content": "JSON"}, {"role": "user", "content": "a json"}]),
                json!({"format": {"type": "json_object"}}),
            ),
            (
                json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]),
                json!({"format": {"type": "json_object"}}),
            ),
            (
                json!([{"role": "system", "content": "JSON"}, {"role": "user", "content": "Q"}]),
                json!({"format": {"type": "text"}}),
            ),
        ] {
            let (out, _) = rules(json!({"model": "m", "input": input, "text": text}));
            assert_eq!(out["input"].as_array().unwrap().len(), 1, "{out}");
        }
    }

    #[test]
    fn reasoning_include_and_overrides() {
        let (body, _) = rules(json!({
            "model": "m", "input": [],
            "reasoning": {"effort": "low", "summary": "auto"},
            "include": ["message.output_text.logprobs", "message.output_text.logprobs"],
        }));
        assert_eq!(
            body["include"],
            json!(["message.output_text.logprobs", ENCRYPTED_REASONING])
        );
        let (body, _) = rules(json!({"model": "m", "input": [], "reasoning": {},
                                     "include": [ENCRYPTED_REASONING]}));
        assert_eq!(body["include"], json!([ENCRYPTED_REASONING]));
        let (body, _) = rules(json!({"model": "m", "input": [], "reasoning": null}));
        assert!(body.get("include").is_none() && body.get("reasoning").is_none());

        let overrides = Overrides {
            model: Some("forced"),
            reasoning_effort: Some("high"),
        };
        let req = apply_body_rules(
            br#"{"input":"x","reasoning":{"summary":"auto","effort":"low"}}"#,
            &overrides,
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(req.model, "forced");
        assert_eq!(body["model"], "forced");
        assert_eq!(
            body["reasoning"],
            json!({"summary": "auto", "effort": "high"})
        );
        assert_eq!(body["include"], json!([ENCRYPTED_REASONING]));
    }

    #[test]
    fn input_items_read_in_one_pass_or_field_by_field_agree() {
        let rules = |body: &str| apply_body_rules(body.as_bytes(), &Overrides::default());
        let items = r#"[{"type":"message","role":"user","content":"a"}]"#;
        let body = format!(r#"{{"model":"m","input":{items}}}"#);
        assert!(parse_object_with::<Vec<&RawValue>>(body.as_bytes(), "input").is_some());
        let one_pass = rules(&body).unwrap();
        // The last `input` counts, whichever way the body is read.
        let later_array = rules(&format!(r#"{{"model":"m","input":"b","input":{items}}}"#));
        assert_eq!(later_array.unwrap().body, one_pass.body);
        let later_text = rules(&format!(r#"{{"model":"m","input":{items},"input":"b"}}"#));
        let v: Value = serde_json::from_slice(&later_text.unwrap().body).unwrap();
        assert_eq!(v["input"][0]["content"][0]["text"], "b");
        // Errors keep their order and their words.
        for (body, error) in [
            (r#"{"model":5,"input":[]}"#, "model: must be a string"),
            (r#"{"model":"m","input":null}"#, "input: required"),
            (
                r#"{"model":"m","input":[1,]}"#,
                "request body is not valid JSON",
            ),
            (
                r#"{"model":"m","input":[]} ]"#,
                "request body is not valid JSON",
            ),
        ] {
            let e = rules(body).unwrap_err().to_string();
            assert!(e.starts_with(error), "{e} for {body}");
        }
    }

    #[test]
    fn body_rule_errors_name_the_field() {
        assert_eq!(rules_err("[]"), "request body must be a JSON object");
        assert!(rules_err("{").starts_with("request body is not valid JSON"));
        assert_eq!(rules_err(r#"{"input":"x"}"#), "model: required");
        assert_eq!(
            rules_err(r#"{"model":5,"input":"x"}"#),
            "model: must be a string"
        );
        assert_eq!(rules_err(r#"{"model":"m"}"#), "input: required");
        assert_eq!(
            rules_err(r#"{"model":"m","input":{"a":1}}"#),
            "input: must be a string or an array of items"
        );
        assert_eq!(
            rules_err(r#"{"model":"m","input":"x","instructions":[1]}"#),
            "instructions: must be a string"
        );
        assert_eq!(
            rules_err(r#"{"model":"m","input":"x","stream":"yes"}"#),
            "stream: must be a boolean"
        );
        assert_eq!(
            rules_err(r#"{"model":"m","input":"x","store":"yes"}"#),
            "store: must be a boolean"
        );
        assert_eq!(
            rules_err(r#"{"model":"m","input":"x","reasoning":"high"}"#),
            "reasoning: must be an object"
        );
        assert_eq!(
            rules_err(r#"{"model":"m","input":"x","include":"x"}"#),
            "include: must be an array of strings"
        );
        let err =
            apply_body_rules(br#"{"model":1,"input":"x"}"#, &Overrides::default()).unwrap_err();
        assert_eq!(err.param(), Some("model"));
    }

    #[test]
    fn fixture_is_a_codex_client_and_passes_through_untouched() {
        let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
        let headers: Vec<(&str, &str)> = fixture["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        assert!(is_codex_client(headers.iter().copied()));
        // Each signal alone is enough.
        assert!(is_codex_client(
            headers.iter().copied().filter(|(k, _)| *k == "originator")
        ));
        assert!(is_codex_client(
            headers
                .iter()
                .copied()
                .filter(|(k, _)| k.starts_with("x-codex-"))
        ));
        let others = headers
            .iter()
            .copied()
            .filter(|(k, _)| *k != "originator" && !k.starts_with("x-codex-"));
        assert!(!is_codex_client(others));
        assert!(!is_codex_client([
            ("originator", "codexpool"),
            ("x-codexy", "1")
        ]));

        // The body exactly as captured (key order included).
        #[derive(Deserialize)]
        struct Capture<'a> {
            #[serde(borrow)]
            body: &'a RawValue,
        }
        let capture: Capture<'_> = serde_json::from_str(FIXTURE).unwrap();
        let body = Bytes::copy_from_slice(capture.body.get().as_bytes());
        let req = codex_passthrough(body.clone(), &Overrides::default()).unwrap();
        assert_eq!(
            req.body.as_ptr(),
            body.as_ptr(),
            "no override: the same buffer"
        );
        assert_eq!(req.model, "fake-model");
        assert!(req.stream);
        assert!(req.dropped.is_empty());
        assert_eq!(
            req.prompt_cache_key.as_deref(),
            Some("01a217a1-6072-7ea0-a145-90dfa33c3126")
        );
        // Same model forced: still untouched.
        let same = Overrides {
            model: Some("fake-model"),
            reasoning_effort: None,
        };
        assert_eq!(
            codex_passthrough(body.clone(), &same)
                .unwrap()
                .body
                .as_ptr(),
            body.as_ptr()
        );

        let forced = Overrides {
            model: Some("gpt-5-codex"),
            reasoning_effort: Some("high"),
        };
        let req = codex_passthrough(body.clone(), &forced).unwrap();
        let mut expected = fixture["body"].clone();
        expected["model"] = json!("gpt-5-codex");
        expected["reasoning"] = json!({"summary": "auto", "effort": "high"});
        let got: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(got, expected);
        assert_eq!(req.model, "gpt-5-codex");
        // Key order is kept: the same keys in the same order as captured.
        let keys = |b: &[u8]| -> Vec<String> {
            let obj: Shallow<'_> = serde_json::from_slice(b).unwrap();
            obj.0.iter().map(|(k, _)| k.to_string()).collect()
        };
        assert_eq!(keys(&req.body), keys(&body));
        assert!(
            std::str::from_utf8(&req.body)
                .unwrap()
                .starts_with(r#"{"model":"gpt-5-codex","#)
        );
    }

    #[test]
    fn passthrough_appends_missing_fields_and_validates() {
        let forced = Overrides {
            model: Some("m2"),
            reasoning_effort: Some("low"),
        };
        let req = codex_passthrough(Bytes::from_static(br#"{"input":[]}"#), &forced).unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(
            body,
            json!({"input": [], "model": "m2", "reasoning": {"effort": "low"}})
        );
        let err = |b: &'static [u8]| {
            codex_passthrough(Bytes::from_static(b), &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(br#"{"input":[]}"#), "model: required");
        assert_eq!(err(br#"{"model":[]}"#), "model: must be a string");
        assert_eq!(err(b"\"x\""), "request body must be a JSON object");
    }

    fn frame(json: &str) -> SseEvent {
        SseEvent::new(json.to_owned())
    }

    #[test]
    fn assembler_returns_the_completed_response_zero_copy() {
        let mut a = ResponseAssembler::new();
        let completed = frame(
            r#"{"type":"response.completed","response":{"id":"resp_1","output":[{"type":"message"}],"usage":{"input_tokens":2,"output_tokens":3,"total_tokens":5}}}"#,
        );
        assert!(
            !a.push(&frame(r#"{"type":"response.created","response":{}}"#))
                .unwrap()
        );
        assert!(a.push(&completed).unwrap());
        assert!(a.push(&frame("garbage after the end")).unwrap());
        assert_eq!(a.usage().map(|u| u.total_tokens), Some(5));
        let out = a.finish().unwrap();
        assert_eq!(
            out.as_ref(),
            br#"{"id":"resp_1","output":[{"type":"message"}],"usage":{"input_tokens":2,"output_tokens":3,"total_tokens":5}}"#
        );
        let start = completed.data().as_ptr() as usize;
        assert!((start..start + completed.data().len()).contains(&(out.as_ptr() as usize)));
    }

    #[test]
    fn assembler_rebuilds_empty_output_from_items() {
        let mut a = ResponseAssembler::new();
        a.push(&frame(
            r#"{"type":"response.output_item.done","output_index":1,"item":{"type":"message","id":"m"}}"#,
        ))
        .unwrap();
        a.push(&frame(
            r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"r"}}"#,
        ))
        .unwrap();
        a.push(&frame(
            r#"{"type":"response.incomplete","response":{"id":"x","output":[],"status":"incomplete"}}"#,
        ))
        .unwrap();
        let out: Value = serde_json::from_slice(&a.finish().unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"id": "x", "status": "incomplete",
                   "output": [{"type": "reasoning", "id": "r"}, {"type": "message", "id": "m"}]})
        );
    }

    #[test]
    fn assembler_reports_failures_and_truncation() {
        let mut a = ResponseAssembler::new();
        let err = a
            .push(&frame(
                r#"{"type":"response.failed","response":{"error":{"code":"server_is_overloaded","message":"busy"}}}"#,
            ))
            .unwrap_err();
        assert!(matches!(&err, AssembleError::Failed(f) if f.kind == FailureKind::Overloaded));
        assert!(matches!(a.finish(), Err(AssembleError::Failed(_))));
        let mut a = ResponseAssembler::new();
        a.push(&frame(
            r#"{"type":"response.output_text.delta","delta":"x"}"#,
        ))
        .unwrap();
        assert!(matches!(a.finish(), Err(AssembleError::Truncated)));
        let mut a = ResponseAssembler::new();
        assert!(matches!(
            a.push(&frame(r#"{"type":"response.completed","response":[]}"#)),
            Err(AssembleError::Event(_))
        ));
    }

    proptest! {
        #[test]
        fn request_adapters_never_panic(value in crate::adapt::testing::arb_json(),
                                        extra in crate::adapt::testing::arb_json()) {
            let mut object = serde_json::Map::new();
            for key in ["model", "input", "instructions", "reasoning", "include", "stream"] {
                object.insert(key.into(), value.clone());
            }
            object.insert("input".into(), extra.clone());
            for body in [Value::Object(object), value.clone(), extra.clone(),
                         json!({"model": "m", "input": extra.clone(), "reasoning": value.clone()})] {
                let bytes = serde_json::to_vec(&body).unwrap();
                for overrides in [Overrides::default(), Overrides { model: Some("f"), reasoning_effort: Some("high") }] {
                    if let Ok(req) = apply_body_rules(&bytes, &overrides) {
                        let out: Value = serde_json::from_slice(&req.body).unwrap();
                        prop_assert_eq!(&out["stream"], &json!(true));
                        prop_assert_eq!(&out["store"], &json!(false));
                        prop_assert!(out["instructions"].as_str().is_some_and(|i| !i.trim().is_empty()));
                    }
                    if let Ok(req) = codex_passthrough(Bytes::from(bytes.clone()), &overrides) {
                        let _: Value = serde_json::from_slice(&req.body).unwrap();
                    }
                    let mut recall = FakeRecall::default();
                    recall.items.insert("rs_1", Item::kept("rs_1", "{\"type\":\"reasoning\"}", false));
                    if let Ok((req, _)) = apply_body_rules_with(&bytes, &overrides, Some(&mut recall)) {
                        let _: Value = serde_json::from_slice(&req.body).unwrap();
                    }
                }
                // The fallback's body is JSON whenever the client's was.
                let mut recall = FakeRecall::default();
                recall.responses.insert("resp_1", vec![Item::kept("msg_1", "{\"type\":\"message\"}", true)]);
                recall.items.insert("msg_1", Item::kept("msg_1", "{\"type\":\"message\"}", true));
                let with_refs = json!({"previous_response_id": "resp_1", "input": [
                    {"type": "item_reference", "id": "msg_1"}, extra.clone(), value.clone()]});
                for body in [body, with_refs] {
                    let bytes = serde_json::to_vec(&body).unwrap();
                    if let Some(out) = for_fallback(&bytes, Some(&mut recall)) {
                        let _: Value = serde_json::from_slice(&out).unwrap();
                    }
                }
            }
        }

        #[test]
        fn request_adapters_survive_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = apply_body_rules(&data, &Overrides::default());
            let _ = for_fallback(&data, None);
            let _ = codex_passthrough(Bytes::from(data), &Overrides::default());
        }
    }

    #[test]
    fn for_fallback_keeps_what_it_cannot_expand_and_drops_reasoning() {
        let fb = |body: &str, recall: Option<&mut FakeRecall>| {
            for_fallback(body.as_bytes(), recall.map(|r| r as &mut dyn Recall))
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        let mut recall = FakeRecall::default();
        // Nothing to do: sent as is (`None`), also with a string input or a body that is no object.
        assert_eq!(
            fb(
                r#"{"model":"m","input":[{"role":"user","content":"x"}]}"#,
                None
            ),
            None
        );
        assert_eq!(fb(r#"{"model":"m","input":"x"}"#, Some(&mut recall)), None);
        assert_eq!(fb("[1]", None), None);
        // An unknown reference stays for the fallback to refuse; the reasoning goes, ids go.
        let body = r#"{"previous_response_id":"resp_x","input":[{"type":"reasoning","id":"rs_1","encrypted_content":"gA"},{"type":"item_reference","id":"msg_x"},{"id":"msg_2","type":"message","role":"assistant","content":"a"},7],"model":"m"}"#;
        assert_eq!(
            fb(body, Some(&mut recall)).unwrap(),
            r#"{"previous_response_id":"resp_x","model":"m","input":[{"type":"item_reference","id":"msg_x"},{"type":"message","role":"assistant","content":"a"},7]}"#
        );
        // A known one: its kept items, without reasoning, where the id was.
        recall.responses.insert(
            "resp_x",
            vec![
                Item::input(r#"{"role":"user","content":"q"}"#),
                Item::kept(
                    "rs_1",
                    r#"{"type":"reasoning","encrypted_content":"gA"}"#,
                    true,
                ),
            ],
        );
        assert_eq!(
            fb(
                r#"{"model":"m","previous_response_id":"resp_x","input":"q2"}"#,
                Some(&mut recall)
            )
            .unwrap(),
            r#"{"model":"m","input":[{"role":"user","content":"q"},{"type":"message","role":"user","content":[{"type":"input_text","text":"q2"}]}]}"#
        );
    }
}
