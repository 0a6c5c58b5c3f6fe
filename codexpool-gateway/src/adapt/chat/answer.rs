//! Responses events as chat output: the [`Translator`] state machine and its two sinks,
//! [`ChatStream`] and [`ChatAssembler`].

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::ChatOptions;
use crate::adapt::event::{
    EventError, EventKind, FailureKind, ItemRef, ResponseRef, ResponsesEvent, TokenUsage,
    UpstreamFailure,
};
use crate::adapt::{AssembleError, ObjectWriter, write_json};
use crate::sse::{DONE_FRAME, SseEvent};

/// What the first chunk says of `content`, so that a streamed and an assembled message agree.
#[derive(Clone, Copy)]
enum Opening {
    /// `""`: text (or nothing at all) comes first.
    Text,
    /// `null`: a call or a refusal comes first (as OpenAI streams them; the assembled message
    /// has no text then unless text follows).
    Null,
    /// No `content` key: reasoning comes first, which does not tell what follows.
    Unsaid,
}

/// One piece of chat output, produced by [`Translator`] and rendered by a sink.
enum Op<'x> {
    /// The first chunk, its `delta` as [`Opening`] says.
    Role(Opening),
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
    /// The upstream failed after the answer was cut at a stop sequence (the answer is whole;
    /// the account's failure is still one).
    failed_after_stop: Option<UpstreamFailure>,
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
            failed_after_stop: None,
        }
    }

    /// Parses the events translators care about; others (and untyped payloads) are `None`. A
    /// `response.in_progress` says again what `response.created` said: it is read only when no
    /// `response.created` came before it.
    fn parse<'e>(&self, event: &'e SseEvent) -> Result<Option<ResponsesEvent<'e>>, EventError> {
        match event.event_type() {
            Some(kind) => self.parse_as(EventKind::from_type(&kind), kind, event),
            None => Ok(None),
        }
    }

    /// [`parse`](Self::parse) of an event whose type is read already.
    fn parse_as<'e>(
        &self,
        kind: EventKind,
        name: Cow<'e, str>,
        event: &'e SseEvent,
    ) -> Result<Option<ResponsesEvent<'e>>, EventError> {
        match kind {
            EventKind::ContentPartAdded
            | EventKind::OutputTextDone
            | EventKind::RefusalDone
            | EventKind::FunctionCallArgumentsDone
            | EventKind::Other => Ok(None),
            EventKind::InProgress if self.adopted => Ok(None),
            _ => ResponsesEvent::parse_as(name, event.data()).map(Some),
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
        self.start_with(Opening::Text, sink);
    }

    fn start_with(&mut self, opening: Opening, sink: &mut impl Sink) {
        if !self.started {
            self.started = true;
            sink.op(&self.meta, Op::Role(opening));
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
        self.start_with(Opening::Null, sink);
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
        self.start_with(Opening::Unsaid, sink);
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
        if self.done {
            return;
        }
        if self.end_at_stop(sink) {
            self.failed_after_stop = Some(failure.clone());
            return;
        }
        self.done = true;
        sink.op(&self.meta, Op::Fail(failure));
    }

    /// The upstream failed or broke off before its final event: an answer already cut at a
    /// stop sequence is whole all the same, and finishes (`true`; without usage, which only
    /// the final event tells). Anything else is settled and left unfinished (`false`).
    fn end_at_stop(&mut self, sink: &mut impl Sink) -> bool {
        if self.done {
            return false;
        }
        self.settle(sink);
        if !self.stopped() {
            return false;
        }
        self.start(sink);
        self.done = true;
        sink.op(&self.meta, Op::Finish { reason: "stop" });
        true
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
                self.start_with(Opening::Null, sink);
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
                            self.start_with(Opening::Null, sink);
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
pub(super) struct StopMatcher {
    /// The sequences, none empty.
    stops: Vec<String>,
    /// Text not passed on yet: from where a sequence might start to the end of what arrived.
    held: String,
    /// A sequence matched; the text ended before it.
    pub(super) matched: bool,
}

/// What [`StopMatcher`] makes of the text it has.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// A sequence starts at this byte and none can start before it: the text ends here.
    Stop(usize),
    /// Pass the text on up to this byte and hold the rest (the length: hold nothing).
    Hold(usize),
}

impl StopMatcher {
    /// `None` when no sequence is left after dropping empty ones.
    pub(super) fn new(stops: &[String]) -> Option<Self> {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        (!stops.is_empty()).then(|| Self {
            stops,
            held: String::new(),
            matched: false,
        })
    }

    /// Takes the next piece of text; `emit` gets what can go out now (nothing empty).
    pub(super) fn push(&mut self, text: &str, mut emit: impl FnMut(&str)) {
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
    pub(super) fn flush(&mut self, mut emit: impl FnMut(&str)) {
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
pub(super) fn scan(text: &str, stops: &[String]) -> Scan {
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
pub(super) fn truncated_failure() -> UpstreamFailure {
    UpstreamFailure {
        kind: FailureKind::Server,
        status: None,
        code: Some("stream_truncated".to_owned()),
        message: "upstream stream ended before the response completed".to_owned(),
        param: None,
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

    /// A stop sequence matched: ends the stream now (the finish chunk, `[DONE]`), unless the
    /// client asked for usage, which only the upstream's final event tells. `true` when it
    /// ended it: what the upstream still generates is no part of the answer.
    pub fn end_at_stop_now(&mut self, out: &mut BytesMut) -> bool {
        if self.include_usage || self.translator.done || !self.translator.stopped() {
            return false;
        }
        let mut sink = ChunkSink {
            head: &mut self.head,
            out,
            include_usage: false,
            usage: None,
        };
        self.translator.end_at_stop(&mut sink)
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
        // With `include_usage` every chunk but the usage chunk says `usage: null`, as OpenAI's.
        self.out.extend_from_slice(if self.include_usage {
            br#"}],"usage":null}"#.as_slice()
        } else {
            b"}]}"
        });
        self.out.extend_from_slice(b"\n\n");
    }
}

impl Sink for ChunkSink<'_> {
    fn op(&mut self, meta: &Meta, op: Op<'_>) {
        match op {
            Op::Role(opening) => self.chunk(meta, None, |s| {
                s.out.extend_from_slice(match opening {
                    Opening::Text => br#"{"role":"assistant","content":""}"#,
                    Opening::Null => br#"{"role":"assistant","content":null}"#,
                    Opening::Unsaid => br#"{"role":"assistant"}"#,
                });
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
                    // `null` when the upstream did not say (as an assembled answer leaves it out).
                    let usage = self.usage.map(ChatUsage::from);
                    self.json(&usage);
                    self.out.extend_from_slice(b"}\n\n");
                }
                self.out.extend_from_slice(DONE_FRAME);
            }
            Op::Fail(failure) => {
                // As any failure reaches a chat client mid-stream.
                let error = crate::error::ApiError::from_upstream(failure);
                self.out.extend_from_slice(&error.sse_frame());
                self.out.extend_from_slice(DONE_FRAME);
            }
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
    /// Text deltas not read yet. A message's `response.output_item.done` repeats its whole
    /// text, which is then taken instead (one parse instead of one per delta); they are read
    /// in order when it does not carry the text, and before any other event, which may depend
    /// on the text before it (a stop sequence in it drops a later tool call), or once they
    /// hold [`HELD_MAX`] bytes.
    held: Vec<SseEvent>,
    /// The bytes of the events in `held`.
    held_bytes: usize,
}

/// Most bytes of text delta events an assembler holds unread: a long answer's deltas (each ~200
/// bytes of event for a few characters of text) are read as they come past this, instead of
/// holding a hundred times the text until its message ends.
const HELD_MAX: usize = 64 * 1024;

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
            Op::Role(_) => {}
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
    /// Always `null` (the backend gives none), but present: OpenAI's schema requires the key
    /// in a completion's choice, and strict clients (openai-java's `validate()`) refuse an
    /// answer without it.
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct AssembledMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    /// Always there, `null` without one: OpenAI's schema requires it (as `content`).
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
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    /// Feeds one upstream event. `Ok(true)` once the response is complete;
    /// `Err(AssembleError::Failed)` when the upstream reported a failure.
    pub fn push(&mut self, event: &SseEvent) -> Result<bool, AssembleError> {
        if !self.translator.done
            && let Some(name) = event.event_type()
        {
            let kind = EventKind::from_type(&name);
            if kind == EventKind::OutputTextDelta {
                // After a stop sequence no text is part of the answer.
                if !self.translator.stopped() {
                    self.held_bytes += event.data().len();
                    self.held.push(event.clone());
                    if self.held_bytes > HELD_MAX {
                        self.read_held()?;
                    }
                }
            } else if let Some(parsed) = self.translator.parse_as(kind, name, event)? {
                // A message's done item stands in for its deltas, unless it has a refusal too:
                // then the text goes first, as it came (a stop sequence in it drops the refusal).
                let message_done = matches!(&parsed, ResponsesEvent::OutputItemDone { item, .. }
                    if item.kind.as_deref() == Some("message") && item.refusal().is_empty());
                if !message_done {
                    self.read_held()?;
                }
                let texted = self.translator.texted.len();
                self.translator.handle(&parsed, &mut self.acc);
                if message_done {
                    if self.translator.texted.len() > texted {
                        // The item's whole text was taken: the deltas said it in pieces.
                        self.held.clear();
                        self.held_bytes = 0;
                    } else {
                        self.read_held()?;
                    }
                }
            }
        }
        match &self.acc.failure {
            Some(failure) => Err(AssembleError::Failed(failure.clone())),
            None => Ok(self.translator.done),
        }
    }

    /// The upstream broke off before its final event: `true` when the answer was cut at a
    /// stop sequence before that, and is whole (see [`Translator::end_at_stop`]).
    pub fn end_at_stop(&mut self) -> bool {
        self.read_held().is_ok() && self.translator.end_at_stop(&mut self.acc)
    }

    /// What the upstream reported failing after the answer was cut at a stop sequence (the
    /// answer is whole all the same).
    pub fn failed_after_stop(&self) -> Option<&UpstreamFailure> {
        self.translator.failed_after_stop.as_ref()
    }

    /// Reads the [`held`](Self::held) text deltas, in the order they came.
    fn read_held(&mut self) -> Result<(), EventError> {
        self.held_bytes = 0;
        for event in std::mem::take(&mut self.held) {
            if let Some(parsed) = self.translator.parse(&event)? {
                self.translator.handle(&parsed, &mut self.acc);
            }
        }
        Ok(())
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
                logprobs: None,
                finish_reason,
            }],
            usage: self.translator.usage.map(ChatUsage::from),
        };
        let mut out = Vec::with_capacity(256 + acc.content.len() + acc.reasoning.len());
        write_json(&mut out, &completion);
        Ok(Bytes::from(out))
    }
}
