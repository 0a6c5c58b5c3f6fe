//! After commit: the upstream stream relayed to the client, as it comes (no whole-stream
//! buffering, one output chunk per upstream chunk), either as the upstream's own events
//! (Responses clients) or translated into `chat.completion.chunk`s; or, for clients that did not
//! ask for a stream, assembled into one final object.
//!
//! One Responses event may be rewritten: the backend sometimes ends with `response.completed` (or
//! `response.incomplete`) carrying `output: []`, the items having come only as
//! `response.output_item.done` events, and clients that take the final response from that event
//! (openai-python's `responses.stream()`, openai-agents) would see no output. For them the relay
//! keeps the items and puts them back into that one event ([`OutputRefill`]); the Codex CLI reads
//! the items themselves and gets every byte as sent.
//!
//! The relay owns the lease and the request-log record: when it ends — the response completed,
//! the upstream broke, or the client went away and the body was dropped — the lease is released,
//! the upstream connection is closed, and the record is written once with what happened. For
//! Responses clients with `store` on it also keeps the answer, from the final event it writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use codexpool_core::{Lease, Outcome};
use futures_util::StreamExt;

use crate::adapt::event::ResponseRef;
use crate::adapt::responses::event_response;
use crate::adapt::{
    AssembleError, ChatAssembler, ChatStream, EventKind, FailureKind, ResponseAssembler,
    ResponsesEvent, TokenUsage, UpstreamFailure, items_array, sub_bytes, with_field,
};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::sse::{Cut, SseEvent, SseItem, read_chunk, write_data, write_event};
use crate::stored::Pending;
use crate::upstream::{BodyError, Call, Committed, Events};

/// What the client gets.
pub(crate) enum Mode {
    /// The upstream's events, re-framed byte for byte (but see [`Relay::refill_output`]).
    Passthrough,
    /// Chat Completions chunks.
    Chat(Box<ChatStream>),
}

/// An `error` event as the backend sends it, ending a Responses stream; `sequence_number` is
/// its place in the stream (the Vercel AI SDK reads an `error` event only with one).
pub(crate) fn error_event(out: &mut BytesMut, sequence_number: u64, code: &str, message: &str) {
    let body = serde_json::json!({"type": "error", "sequence_number": sequence_number,
        "code": code, "message": message, "param": null});
    write_event(out, "error", body.to_string().as_bytes());
}

/// The first `sequence_number` in a Responses event's JSON (or in its head), if any: a number
/// that runs to the end of `json` may be cut short, and is not taken.
pub(crate) fn sequence_number(json: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\":";
    // Built once: every event of a Responses stream is looked at (a searcher per call was
    // 2 % of the relay's CPU).
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let rest = &json[FINDER.find(json)? + KEY.len()..];
    let start = rest.iter().position(|b| *b != b' ')?;
    let digits = &rest[start..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// A Responses stream that fails before its first event: `response.created`, `response.failed`
/// with the error, then the `error` event, numbered from 0, as a response that failed at once
/// streams. Clients that build the response from the stream (openai-python's and
/// openai-node's `responses.stream`) want `response.created` first, and report the error only
/// after it.
pub(crate) fn failed_before_any_event(
    out: &mut BytesMut,
    request_id: &str,
    model: Option<&str>,
    created_at: i64,
    error: &ApiError,
) {
    let (code, message) = (&error.code, &error.message);
    let mut response = serde_json::json!({"id": format!("resp_{request_id}"),
        "object": "response", "created_at": created_at, "status": "in_progress",
        "model": model.unwrap_or_default(), "output": [], "error": null,
        "incomplete_details": null});
    let created = serde_json::json!({"type": "response.created", "sequence_number": 0,
        "response": &response});
    write_event(out, "response.created", created.to_string().as_bytes());
    response["status"] = "failed".into();
    response["error"] = serde_json::json!({"code": code, "message": message});
    let failed = serde_json::json!({"type": "response.failed", "sequence_number": 1,
        "response": response});
    write_event(out, "response.failed", failed.to_string().as_bytes());
    error_event(out, 2, code, message);
}

/// The error code of an answer past [`MAX_ANSWER_BYTES`].
const ANSWER_TOO_LARGE: &str = "upstream_answer_too_large";

/// The 502 of an answer past [`MAX_ANSWER_BYTES`].
fn answer_too_large() -> ApiError {
    ApiError::bad_gateway(
        ANSWER_TOO_LARGE,
        format!(
            "upstream: the answer went on past {} MiB without ending",
            MAX_ANSWER_BYTES >> 20
        ),
    )
}

/// How far into an event its `sequence_number` is looked for (the backend writes it second,
/// after `type`).
const SEQUENCE_SCAN: usize = 96;

/// A committed upstream stream on its way to a streaming client.
pub(crate) struct Relay {
    lease: Option<Lease>,
    events: Events,
    mode: Mode,
    record: Record,
    metrics: Arc<Metrics>,
    first_event: Instant,
    pre_send: Duration,
    sent_any: bool,
    /// The `sequence_number` an event of ours would take in a Responses stream: one past the
    /// last relayed (read near the start of each event, where the backend puts it).
    next_sequence: u64,
    done: bool,
    usage: Option<TokenUsage>,
    error_class: Option<String>,
    refill: Option<OutputRefill>,
    /// The answer to keep for `previous_response_id` (Responses clients with `store` on), kept
    /// from the final event as it goes out.
    keep: Option<Box<Pending>>,
    /// The client's answer ended before the upstream's (a chat stop sequence): the rest of
    /// the upstream stream is read off the client's path ([`Drain`]).
    drain: bool,
}

/// Puts the streamed items back into a final event whose `output` is empty.
///
/// It keeps each `response.output_item.done`'s payload (the upstream's bytes, not a copy) until
/// the final event, and reads them only when that event needs them: at most one event per stream
/// is rewritten, and only when its `output` is missing or `[]` and items were seen. The items go
/// in `output_index` order (arrival order for items without one).
#[derive(Debug, Default)]
pub(crate) struct OutputRefill {
    items: Vec<Bytes>,
    /// Bytes in `items`: past [`MAX_ANSWER_BYTES`] nothing more is kept, and the final event
    /// goes out as the upstream sent it (the client has had every item already).
    kept: usize,
    ended: bool,
}

/// The parts of `response.output_item.done` the refill puts back.
#[derive(serde::Deserialize)]
struct ItemEnvelope<'a> {
    output_index: Option<u64>,
    #[serde(borrow)]
    item: Option<&'a serde_json::value::RawValue>,
}

impl OutputRefill {
    /// Sees an event on its way to the client: `Some(payload)` when it must go out with this
    /// payload instead of its own. `response` is what a final event's `response` says (`None`
    /// when it could not be read: such an event is left alone).
    pub(crate) fn see(
        &mut self,
        kind: EventKind,
        event: &SseEvent,
        response: Option<&ResponseRef<'_>>,
    ) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        match kind {
            EventKind::OutputItemDone => {
                self.kept = self.kept.saturating_add(event.data().len());
                if self.kept > MAX_ANSWER_BYTES {
                    if !self.items.is_empty() {
                        tracing::warn!(
                            "the answer's items passed {} MiB: its final event goes out without them",
                            MAX_ANSWER_BYTES >> 20
                        );
                    }
                    self.items = Vec::new();
                } else {
                    self.items.push(event.data().clone());
                }
                None
            }
            EventKind::Completed | EventKind::Incomplete => {
                self.ended = true;
                let items = std::mem::take(&mut self.items);
                if items.is_empty() || !response?.output_is_empty() {
                    return None;
                }
                refilled(event.data(), &items)
            }
            EventKind::Failed | EventKind::Error => {
                self.ended = true;
                self.items = Vec::new();
                None
            }
            _ => None,
        }
    }
}

/// The payload of a final event with `response.output` set to the items of `payloads` (the
/// `response.output_item.done` events seen); `None` when none of them holds a readable item.
fn refilled(data: &[u8], payloads: &[Bytes]) -> Option<Vec<u8>> {
    let mut items = Vec::with_capacity(payloads.len());
    for payload in payloads {
        // An item that cannot be read is left out here; the client still got its event.
        if let Ok(ItemEnvelope {
            output_index,
            item: Some(item),
        }) = serde_json::from_slice(payload)
        {
            let index = output_index.unwrap_or(items.len() as u64);
            items.push((index, sub_bytes(payload, item.get().as_bytes())));
        }
    }
    if items.is_empty() {
        return None;
    }
    let data = std::str::from_utf8(data).ok()?;
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        response: &'a serde_json::value::RawValue,
    }
    let response = serde_json::from_str::<Envelope<'_>>(data).ok()?.response;
    let output = items_array(&mut items);
    let response = with_field(response.get(), "output", &output)?;
    with_field(data, "response", std::str::from_utf8(&response).ok()?)
}

/// The lease outcome for a failure reported after commit (the request is not retried, but the
/// account's state learns from it as from an earlier failure).
fn late_outcome(f: &UpstreamFailure, lease: &Lease) -> Option<Outcome> {
    crate::upstream::outcome_of(f, lease.now()).0
}

/// What the relay needs from a parsed event: whether it ends the response, its usage, a failure.
fn facts(event: &ResponsesEvent<'_>) -> (bool, Option<TokenUsage>, Option<UpstreamFailure>) {
    match event {
        ResponsesEvent::Completed(r) | ResponsesEvent::Incomplete(r) => (true, r.usage, None),
        ResponsesEvent::Failed(r) => (true, r.usage, Some(r.failure())),
        ResponsesEvent::Error(e) => (true, None, Some(e.to_failure(None))),
        other => (other.kind().is_terminal(), None, None),
    }
}

impl Relay {
    pub fn new(c: Committed, mode: Mode, metrics: Arc<Metrics>, pre_send: Duration) -> Self {
        let Committed {
            lease,
            stream,
            call: Call { mut record, .. },
            ..
        } = c;
        record.entry.status = 200;
        Self {
            lease: Some(lease),
            events: stream.events,
            mode,
            record,
            metrics,
            first_event: stream.first_event,
            pre_send,
            sent_any: false,
            next_sequence: 0,
            done: false,
            usage: None,
            error_class: None,
            refill: None,
            keep: None,
            drain: false,
        }
    }

    /// Keeps the answer in the Responses store once its final event (`response.completed` or
    /// `response.incomplete`, with the output the refill put back) goes out.
    #[must_use]
    pub(crate) fn keep(mut self, pending: Option<Box<Pending>>) -> Self {
        self.keep = pending;
        self
    }

    /// For Responses clients other than the Codex CLI (`on`): a final `response.completed` /
    /// `response.incomplete` with an empty `output` goes out with the items streamed before it
    /// (see [`OutputRefill`]); every other event stays byte for byte. Default: off, every event
    /// as sent (what the Codex CLI must get). Only matters for [`Mode::Passthrough`].
    #[must_use]
    pub(crate) fn refill_output(mut self, on: bool) -> Self {
        self.refill = on.then(OutputRefill::default);
        self
    }

    /// Writes one item for the client; `true` when it ended the response.
    async fn emit(&mut self, item: SseItem, out: &mut BytesMut) -> bool {
        let SseItem::Event(event) = item else {
            // Comments prove liveness upstream; clients may use them the same way (SSE clients
            // skip them, and a chat client shown none of the reasoning would otherwise see
            // nothing at all while it goes on).
            out.extend_from_slice(b": keep-alive\n\n");
            return false;
        };
        let (terminal, usage, failure) = match &mut self.mode {
            Mode::Passthrough => {
                // A frame without a type is no event a client can use (OpenAI's SDKs fail on
                // it, the Codex CLI skips it): not passed on.
                let Some(name) = event.event_type() else {
                    tracing::debug!("an upstream event without a type was not passed on");
                    return false;
                };
                let kind = EventKind::from_type(&name);
                let data = event.data();
                let head = &data[..data.len().min(SEQUENCE_SCAN)];
                self.next_sequence = sequence_number(head)
                    .unwrap_or(self.next_sequence)
                    .saturating_add(1);
                // Only a final event is read (once, for the relay and the refill alike).
                let parsed = kind.is_terminal().then(|| ResponsesEvent::from_sse(&event));
                // A final event that does not read is not passed on as it came (a client would
                // fail on it, or take it for the answer): the stream ends with an error event.
                if let Some(Err(e)) = &parsed {
                    let f = UpstreamFailure::malformed(e);
                    error_event(out, self.next_sequence, f.error_code(), &f.message);
                    self.error_class = Some(f.error_code().to_string());
                    if let Some(lease) = &self.lease
                        && let Some(o) = late_outcome(&f, lease)
                    {
                        lease.report(o).await;
                    }
                    return true;
                }
                let response = match &parsed {
                    Some(Ok(ResponsesEvent::Completed(r) | ResponsesEvent::Incomplete(r))) => {
                        Some(r)
                    }
                    _ => None,
                };
                let rewritten = self
                    .refill
                    .as_mut()
                    .and_then(|r| r.see(kind, &event, response));
                match &rewritten {
                    // The rewritten final event keeps its `event:` name (the backend sends no
                    // `id:` or `retry:`).
                    Some(data) => match event.event() {
                        Some(name) => write_event(out, name, data),
                        None => write_data(out, data),
                    },
                    None => event.encode(out),
                }
                // The final event, read: its answer is kept (an unreadable one is not).
                if let Some(id) = response.and_then(|r| r.id.as_deref())
                    && let Some(pending) = self.keep.take()
                {
                    let data = rewritten.as_deref().unwrap_or(event.data());
                    if let Some(response) = event_response(data) {
                        pending.finish(id, response.as_bytes());
                    }
                }
                match parsed {
                    Some(Ok(parsed)) => {
                        let (_, usage, failure) = facts(&parsed);
                        (true, usage, failure)
                    }
                    _ => (false, None, None),
                }
            }
            // One parse serves the translator and the relay's own bookkeeping.
            Mode::Chat(chat) => {
                match chat.push_with(&event, out, |p| p.map_or((false, None, None), facts)) {
                    // The answer ended at a stop sequence: the client has all of it now.
                    Ok((false, ..)) if chat.end_at_stop_now(out) => {
                        self.drain = true;
                        return true;
                    }
                    Ok(facts) => facts,
                    Err(e) => {
                        let f = UpstreamFailure::malformed(&e);
                        chat.fail(&f, out);
                        self.error_class = Some("malformed_event".into());
                        return true;
                    }
                }
            }
        };
        if usage.is_some() {
            self.usage = usage;
        }
        if let Some(f) = failure {
            self.error_class = Some(f.error_code().to_string());
            if let Some(lease) = &self.lease
                && let Some(o) = late_outcome(&f, lease)
            {
                lease.report(o).await;
            }
        }
        terminal
    }

    /// The next piece of the response, `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // What goes out is about what came in (events pass as they are, or shrink to chat
        // chunks): one allocation rather than a doubling every few events.
        let mut out = BytesMut::with_capacity(self.events.queued_bytes());
        loop {
            loop {
                match self.events.ready() {
                    Ok(Some(item)) => {
                        if self.emit(item, &mut out).await {
                            self.complete().await;
                            return self.hand_out(out);
                        }
                    }
                    Ok(None) => break,
                    Err(cut) => return self.cut_off(cut, out).await,
                }
            }
            if !out.is_empty() {
                return self.hand_out(out);
            }
            if let Err(cut) = self.events.fill().await {
                return self.cut_off(cut, out).await;
            }
            out.reserve(self.events.queued_bytes());
        }
    }

    /// Ends a stream the upstream cut off: the client learns it from the stream itself.
    async fn cut_off(&mut self, cut: Cut<BodyError>, mut out: BytesMut) -> Option<Bytes> {
        let f = cut_failure(&cut);
        match &mut self.mode {
            // An end without a final event, in the chat adapter's own words.
            Mode::Chat(chat) if matches!(cut, Cut::Ended(_)) => chat.finish(&mut out),
            Mode::Chat(chat) => chat.fail(&f, &mut out),
            Mode::Passthrough => error_event(&mut out, self.next_sequence, cut.code(), &f.message),
        }
        self.error_class = Some(cut.code().into());
        // A stopping gateway is no fault of the account's.
        if let Some(lease) = &self.lease
            && !matches!(cut, Cut::Stopped)
        {
            lease.report(Outcome::UpstreamError).await;
        }
        self.finish_record();
        self.hand_out(out)
    }

    fn hand_out(&mut self, out: BytesMut) -> Option<Bytes> {
        if !self.sent_any {
            self.sent_any = true;
            self.record.first_byte();
            self.metrics
                .overhead(self.pre_send + self.first_event.elapsed());
        }
        Some(out.freeze())
    }

    async fn complete(&mut self) {
        if self.drain {
            // The row and the lease go with the rest of the upstream stream: its usage and its
            // end are still to come.
            self.record.first_byte();
            self.done = true;
            let idle = self.events.idle();
            let drain = Drain {
                events: std::mem::replace(
                    &mut self.events,
                    Events::new(futures_util::stream::empty().boxed(), idle),
                ),
                lease: self.lease.take(),
                record: self.record.hand_over(),
            };
            tokio::spawn(drain.run());
            return;
        }
        if let Some(lease) = &self.lease
            && self.error_class.is_none()
        {
            lease.report(Outcome::Success).await;
        }
        if let Mode::Chat(chat) = &self.mode {
            self.usage = self.usage.or(chat.usage());
        }
        self.finish_record();
    }

    fn finish_record(&mut self) {
        // The bytes handed out next may be the first ones (a whole answer in one read): noted
        // before the row is written.
        self.record.first_byte();
        self.done = true;
        // Release the account at once; the client may still be reading the last bytes.
        self.lease = None;
        self.record
            .finish(200, self.error_class.as_deref(), self.usage);
    }
}

/// A stream the upstream cut off, as a failure.
fn cut_failure(cut: &Cut<BodyError>) -> UpstreamFailure {
    UpstreamFailure {
        kind: FailureKind::Server,
        status: None,
        code: Some(cut.code().into()),
        message: cut.to_string(),
        param: None,
    }
}

/// The rest of an upstream stream whose client has its whole answer already (a chat stop
/// sequence matched): read to its end for the request's usage and outcome, which the log row
/// and the account's report take, while the account stays leased (the backend generates on;
/// dropping the stream would also lose the usage).
struct Drain {
    events: Events,
    lease: Option<Lease>,
    record: Record,
}

impl Drain {
    async fn run(mut self) {
        let (usage, failure) = loop {
            match self.events.next().await {
                Ok(SseItem::Event(event)) if EventKind::of(&event).is_terminal() => {
                    break match ResponsesEvent::from_sse(&event) {
                        Ok(parsed) => {
                            let (_, usage, failure) = facts(&parsed);
                            (usage, failure)
                        }
                        Err(e) => (None, Some(UpstreamFailure::malformed(&e))),
                    };
                }
                Ok(_) => {}
                Err(cut) => {
                    break (
                        None,
                        (!matches!(cut, Cut::Stopped)).then(|| cut_failure(&cut)),
                    );
                }
            }
        };
        if let Some(lease) = &self.lease {
            let outcome = match &failure {
                None => Some(Outcome::Success),
                Some(f) => late_outcome(f, lease),
            };
            if let Some(o) = outcome {
                lease.report(o).await;
            }
        }
        drop(self.lease);
        let class = failure.as_ref().map(|f| f.error_code().to_string());
        self.record.finish(200, class.as_deref(), usage);
    }
}

/// The two non-streaming assemblers, driven the same way.
pub(crate) trait Assemble {
    fn push(&mut self, event: &SseEvent) -> Result<bool, AssembleError>;
    /// The stream broke off: whether the answer is whole anyway (a chat answer cut at a stop
    /// sequence before).
    fn end_at_stop(&mut self) -> bool;
    /// A failure reported after the answer was whole (see [`ChatAssembler::failed_after_stop`]).
    fn failed_after_stop(&self) -> Option<&UpstreamFailure>;
    fn usage(&self) -> Option<TokenUsage>;
    fn finish(self) -> Result<Bytes, AssembleError>;
}

impl Assemble for ChatAssembler {
    fn push(&mut self, event: &SseEvent) -> Result<bool, AssembleError> {
        ChatAssembler::push(self, event)
    }
    fn end_at_stop(&mut self) -> bool {
        ChatAssembler::end_at_stop(self)
    }
    fn failed_after_stop(&self) -> Option<&UpstreamFailure> {
        ChatAssembler::failed_after_stop(self)
    }
    fn usage(&self) -> Option<TokenUsage> {
        ChatAssembler::usage(self)
    }
    fn finish(self) -> Result<Bytes, AssembleError> {
        ChatAssembler::finish(self)
    }
}

impl Assemble for ResponseAssembler {
    fn push(&mut self, event: &SseEvent) -> Result<bool, AssembleError> {
        ResponseAssembler::push(self, event)
    }
    fn end_at_stop(&mut self) -> bool {
        false
    }
    fn failed_after_stop(&self) -> Option<&UpstreamFailure> {
        None
    }
    fn usage(&self) -> Option<TokenUsage> {
        ResponseAssembler::usage(self)
    }
    fn finish(self) -> Result<Bytes, AssembleError> {
        ResponseAssembler::finish(self)
    }
}

/// The most event bytes an answer assembled for a non-streaming client may take, and the most
/// a Responses stream's items kept for its final event ([`OutputRefill`]) may: an upstream that
/// never ends its answer would otherwise fill the memory. The longest real answer (128k
/// tokens, each piece of text in a delta, again in its item and in the final event) is a few
/// MiB of events.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Reads a committed stream to its end into one JSON answer.
pub(crate) async fn collect<A: Assemble>(c: Committed, mut asm: A) -> Result<Bytes, Missed> {
    let Committed {
        lease,
        stream,
        started,
        mut call,
        ..
    } = c;
    let mut events = stream.events;
    // Ok: the answer is whole, and what failed after it was (its class, what the account
    // learns). Err: the error, its class, what the account learns, whether another account may
    // do better.
    type Late = Option<(String, Option<Outcome>)>;
    let result: Result<Late, (ApiError, String, Option<Outcome>, bool)> = async {
        let mut read = 0usize;
        loop {
            let event = match events.next().await {
                Ok(SseItem::Event(event)) => event,
                Ok(SseItem::Comment(_)) => continue,
                Err(cut) => {
                    let error = ApiError::from_cut(&cut);
                    let class = error.code.clone();
                    // The client has waited the whole idle timeout already: not once more.
                    // A stopping gateway tries no other account, and blames none.
                    let (outcome, elsewhere) = match cut {
                        Cut::Stopped => (None, false),
                        Cut::Silent(_) => (Some(Outcome::UpstreamError), false),
                        _ => (Some(Outcome::UpstreamError), true),
                    };
                    if asm.end_at_stop() {
                        return Ok(Some((class, outcome)));
                    }
                    return Err((error, class, outcome, elsewhere));
                }
            };
            read = read.saturating_add(event.data().len());
            if read > MAX_ANSWER_BYTES {
                // The upstream's doing, not the account's: no strike, and no other account
                // (the same request would run on there too).
                return Err((answer_too_large(), ANSWER_TOO_LARGE.into(), None, false));
            }
            match asm.push(&event) {
                Ok(true) => {
                    let late = asm.failed_after_stop();
                    return Ok(late.map(|f| (f.error_code().to_string(), late_outcome(f, &lease))));
                }
                Ok(false) => {}
                Err(AssembleError::Failed(f)) => {
                    return Err((
                        ApiError::from_upstream(&f),
                        f.error_code().to_string(),
                        late_outcome(&f, &lease),
                        f.retry_elsewhere(),
                    ));
                }
                Err(e) => {
                    return Err((
                        ApiError::bad_gateway("malformed_event", e.to_string()),
                        "malformed_event".into(),
                        Some(Outcome::UpstreamError),
                        true,
                    ));
                }
            }
        }
    }
    .await;
    let record = &mut call.record;
    match result {
        Ok(late) => {
            let (class, outcome) = match late {
                Some((class, outcome)) => (Some(class), outcome),
                None => (None, Some(Outcome::Success)),
            };
            // The whole answer is this account's: so is the conversation now (a success's
            // report says so too).
            if !matches!(outcome, Some(Outcome::Success)) {
                lease.commit();
            }
            if let Some(o) = outcome {
                lease.report(o).await;
            }
            drop(lease);
            let usage = asm.usage();
            match asm.finish() {
                Ok(json) => {
                    record.first_byte();
                    record.finish(200, class.as_deref(), usage);
                    Ok(json)
                }
                Err(e) => {
                    let err = ApiError::bad_gateway("malformed_event", e.to_string());
                    record.finish(err.status.as_u16(), Some("malformed_event"), usage);
                    Err(Missed::Final(err))
                }
            }
        }
        Err((error, class, outcome, elsewhere)) => {
            // An account's own limit says nothing of the request (see `Call::part_way`).
            let own_limit = matches!(
                outcome,
                Some(Outcome::UsageLimit { .. } | Outcome::RateLimited { .. })
            );
            if let Some(o) = outcome {
                lease.report(o).await;
            }
            drop(lease);
            if elsewhere {
                tracing::debug!(failure = %class, "an assembled answer failed part-way; trying the next account");
                call.part_way += u8::from(!own_limit);
                call.failing += started.elapsed();
                call.failed = Some(error);
                return Err(Missed::Retry(Box::new(call)));
            }
            record.finish(error.status.as_u16(), Some(&class), asm.usage());
            Err(Missed::Final(error))
        }
    }
}

/// Why [`collect`] has no answer.
pub(crate) enum Missed {
    /// The answer: an error (the record is written).
    Final(ApiError),
    /// The upstream failed part-way in a way another account may not: nothing reached the
    /// client, so the call (its record still open, the account in its tried list, the failure
    /// and the time it took counted in it) can go to the attempt loop again.
    Retry(Box<Call>),
}

/// A committed JSON answer (a compaction), read whole before it goes out: it is small, and an
/// upstream that breaks off part-way is then a clear error the client can retry, not a 200
/// with half a document. The record is written and the account's outcome reported here.
pub(crate) async fn whole_body(c: Committed) -> Result<Bytes, ApiError> {
    let Committed {
        lease,
        stream,
        call: Call { mut record, .. },
        ..
    } = c;
    let idle = stream.events.idle();
    let mut body = stream.events.into_body();
    let mut whole = BytesMut::new();
    let failed = loop {
        match read_chunk(&mut body, idle).await {
            Ok(Some(chunk)) if whole.len() + chunk.len() > MAX_ANSWER_BYTES => {
                break Some((answer_too_large(), None));
            }
            Ok(Some(chunk)) => whole.extend_from_slice(&chunk),
            Ok(None) => break None,
            // A stopping gateway blames no account.
            Err(cut) => {
                let outcome = (!matches!(cut, Cut::Stopped)).then_some(Outcome::UpstreamError);
                break Some((ApiError::from_cut(&cut), outcome));
            }
        }
    };
    match failed {
        None => {
            lease.report(Outcome::Success).await;
            drop(lease);
            record.first_byte();
            record.finish(200, None, None);
            Ok(whole.freeze())
        }
        Some((error, outcome)) => {
            if let Some(o) = outcome {
                lease.report(o).await;
            }
            drop(lease);
            record.finish(error.status.as_u16(), Some(&error.code), None);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_read_whole() {
        assert_eq!(
            sequence_number(br#"{"type":"a","sequence_number": 7,"x":1}"#),
            Some(7)
        );
        assert_eq!(sequence_number(br#"{"type":"a"}"#), None);
        assert_eq!(sequence_number(br#"{"sequence_number":"x"}"#), None);
        assert_eq!(
            sequence_number(br#"{"sequence_number":99999999999999999999999}"#),
            None
        );
        // A head that ends inside the number: 123 is not 12.
        assert_eq!(sequence_number(br#"{"sequence_number":12"#), None);
    }

    fn ev(json: &str) -> SseEvent {
        SseEvent::new(json.to_owned())
    }

    fn see(refill: &mut OutputRefill, event: &SseEvent) -> Option<Vec<u8>> {
        let parsed = ResponsesEvent::from_sse(event).ok();
        let response = match &parsed {
            Some(ResponsesEvent::Completed(r) | ResponsesEvent::Incomplete(r)) => Some(r),
            _ => None,
        };
        refill.see(EventKind::of(event), event, response)
    }

    #[test]
    fn refill_rewrites_one_empty_final_event() {
        let mut refill = OutputRefill::default();
        let items = [
            r#"{"type":"response.output_item.done","output_index":1,"item":{"id":"b"}}"#,
            r#"{"type":"response.output_item.done","item":{"id":"c","x":"\u00e9"}}"#,
            r#"{"type":"response.output_item.done","output_index":0,"item":{"id":"a"}}"#,
            r#"{"type":"response.output_item.done","output_index":"bad","item":{}}"#,
            r#"{"type":"response.output_text.delta","delta":"x"}"#,
        ];
        for json in items {
            assert_eq!(see(&mut refill, &ev(json)), None, "{json}");
        }
        let out = see(
            &mut refill,
            &ev(
                r#"{"type":"response.completed","response":{"id":"r","output":[],"usage":{}},"sequence_number":9}"#,
            ),
        );
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            r#"{"type":"response.completed","response":{"id":"r","output":[{"id":"a"},{"id":"b"},{"id":"c","x":"\u00e9"}],"usage":{}},"sequence_number":9}"#
        );
        // Once per stream: the items are gone.
        assert!(refill.items.is_empty());
        assert_eq!(
            see(
                &mut refill,
                &ev(r#"{"type":"response.completed","response":{"output":[]}}"#)
            ),
            None
        );

        // A missing `output` is empty too; an output that is there, or no items, is left alone.
        let item = r#"{"type":"response.output_item.done","output_index":0,"item":{"id":"a"}}"#;
        let mut refill = OutputRefill::default();
        see(&mut refill, &ev(item));
        let out = see(
            &mut refill,
            &ev(r#"{"type":"response.incomplete","response":{"id":"r"}}"#),
        );
        assert_eq!(
            out.as_deref(),
            Some(
                &br#"{"type":"response.incomplete","response":{"id":"r","output":[{"id":"a"}]}}"#[..]
            )
        );
        let mut refill = OutputRefill::default();
        see(&mut refill, &ev(item));
        let full = r#"{"type":"response.completed","response":{"output":[{"id":"a"}]}}"#;
        assert_eq!(see(&mut refill, &ev(full)), None);
        let mut refill = OutputRefill::default();
        assert_eq!(
            see(
                &mut refill,
                &ev(r#"{"type":"response.completed","response":{"output":[]}}"#)
            ),
            None
        );
        // A failure ends it without a rewrite.
        let mut refill = OutputRefill::default();
        see(&mut refill, &ev(item));
        assert_eq!(
            see(
                &mut refill,
                &ev(r#"{"type":"response.failed","response":{}}"#)
            ),
            None
        );
        assert!(refill.items.is_empty());
    }

    /// Items past [`MAX_ANSWER_BYTES`] are not kept (an upstream that never ends would fill the
    /// memory): the final event then goes out as it came.
    #[test]
    fn refill_keeps_no_more_than_the_cap() {
        let pad = "x".repeat(MAX_ANSWER_BYTES / 4);
        let big = ev(&format!(
            r#"{{"type":"response.output_item.done","output_index":0,"item":{{"id":"a","pad":"{pad}"}}}}"#
        ));
        let done = ev(r#"{"type":"response.completed","response":{"output":[]}}"#);
        let mut refill = OutputRefill::default();
        for _ in 0..3 {
            assert_eq!(see(&mut refill, &big), None);
        }
        assert_eq!(
            refill.items.len(),
            3,
            "under the cap: kept (shared, not copied)"
        );
        assert!(see(&mut refill, &done).is_some());
        let mut refill = OutputRefill::default();
        for _ in 0..5 {
            see(&mut refill, &big);
        }
        assert!(refill.items.is_empty(), "past the cap: dropped");
        see(
            &mut refill,
            &ev(r#"{"type":"response.output_item.done","output_index":1,"item":{"id":"b"}}"#),
        );
        assert!(refill.items.is_empty(), "and nothing after it");
        assert_eq!(see(&mut refill, &done), None);
    }
}
