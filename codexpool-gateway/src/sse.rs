//! Server-Sent Events: an incremental parser for upstream bodies and a cheap frame writer.
//!
//! The Codex backend answers every request as an SSE stream, and every byte of every answer passes
//! through [`SseParser`], so it is built for the hot path: chunks are kept as [`Bytes`] and complete
//! lines are sliced out of them without copying; only a line split across two network chunks is
//! copied (once) into a small carry-over buffer. It follows the WHATWG "event stream interpretation"
//! rules: LF, CRLF and lone CR all end a line (a CRLF split across chunks counts once), a leading
//! UTF-8 BOM is skipped, `data:` lines are joined with `\n`, a blank line dispatches the event, and
//! a block without any `data:` line is not an event. Two deliberate additions for a proxy: comment
//! lines are reported as [`SseItem::Comment`] (they carry no content, but prove the upstream is
//! alive, and a gateway may forward them as keep-alives), and the size of one event is capped
//! ([`DEFAULT_MAX_EVENT_BYTES`]) so a broken upstream cannot make us buffer without bound. At end of
//! input the spec discards an event that was never terminated by a blank line; [`SseParser::finish`]
//! does too, but says so with [`SseError::Truncated`], because for a proxy a cut-off event means a
//! cut-off answer. The writer half ([`write_data`], [`write_event`], [`SseEvent::encode`]) renders
//! frames into a [`BytesMut`] without re-encoding the payload. [`SseReader`] feeds a parser from
//! a body with an idle timeout per read, and names every early stop of the body one way ([`Cut`]).
//!
//! ```
//! use codexpool_gateway::sse::{SseItem, SseParser};
//!
//! let mut parser = SseParser::new();
//! parser.push_slice(b"event: response.created\r\ndata: {\"type\":\"response.cre");
//! assert!(parser.next_item().unwrap().is_none()); // not complete yet
//! parser.push_slice(b"ated\"}\r\n\r\n: keep-alive\n");
//! let Some(SseItem::Event(event)) = parser.next_item().unwrap() else { panic!() };
//! assert_eq!(event.event_type().as_deref(), Some("response.created"));
//! assert!(matches!(parser.next_item().unwrap(), Some(SseItem::Comment(_))));
//! parser.finish().unwrap();
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

/// Default cap on the size of one event (all its field lines), 16 MiB.
///
/// A `response.completed` event repeats the whole answer, so it can be large; anything beyond this is
/// a broken or hostile upstream.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The frame that ends an OpenAI Chat Completions stream.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why the SSE stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// One event (or one unterminated line) grew beyond the configured maximum. The parser drops the
    /// rest of that event and resumes after the next blank line.
    #[error("upstream SSE event is larger than the {limit} byte limit")]
    EventTooLarge {
        /// The configured maximum, in bytes.
        limit: usize,
    },
    /// The input ended inside an event: it was never terminated by a blank line and is discarded.
    #[error("upstream SSE stream ended inside an event ({pending} bytes not terminated)")]
    Truncated {
        /// Bytes of the unfinished event (field lines and the unterminated line).
        pending: usize,
    },
}

/// One item pulled from an [`SseParser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event (terminated by a blank line, with at least one `data:` line).
    Event(SseEvent),
    /// A comment line (`: keep-alive`); the text after the colon and one optional space. Comments
    /// carry no content; they tell the reader the upstream is alive.
    Comment(Bytes),
}

/// One dispatched server-sent event. Cloning is cheap (reference-counted buffers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    event: Option<Bytes>,
    data: Bytes,
    id: Option<Bytes>,
    retry: Option<u64>,
}

impl SseEvent {
    /// An event with only a `data` payload (what the Codex backend sends).
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// Sets the `event:` name.
    #[must_use]
    pub fn with_event(mut self, name: impl Into<Bytes>) -> Self {
        self.event = Some(name.into());
        self
    }

    /// The raw payload: the `data:` lines joined with `\n`, exactly as the upstream sent them.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Consumes the event, returning its payload.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The `event:` name, if the block had one and it is valid UTF-8.
    pub fn event(&self) -> Option<&str> {
        self.event
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The `id:` of this block, if any (it is not carried over to later events).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The `retry:` of this block, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Whether the payload is the Chat Completions end marker `[DONE]`.
    pub fn is_done_marker(&self) -> bool {
        self.data.as_ref() == b"[DONE]"
    }

    /// The event type: the JSON payload's `type` field, else the `event:` name.
    ///
    /// This is a peek, not a validation: when the payload starts with `{"type":"…"` (the Codex
    /// backend always puts `type` first) the rest of the JSON is not read. Otherwise the payload is
    /// scanned for a top-level `type`.
    pub fn event_type(&self) -> Option<Cow<'_, str>> {
        peek_json_type(&self.data).or_else(|| self.event().map(Cow::Borrowed))
    }

    /// Appends this event as an SSE frame (`event:`, `id:`, `retry:`, `data:` lines, blank line).
    /// The payload is copied verbatim, split into several `data:` lines only where it contains line
    /// breaks (so it round-trips through a parser).
    pub fn encode(&self, out: &mut BytesMut) {
        if let Some(name) = &self.event {
            write_field(out, b"event: ", name);
        }
        if let Some(id) = &self.id {
            write_field(out, b"id: ", id);
        }
        if let Some(retry) = self.retry {
            out.extend_from_slice(b"retry: ");
            out.extend_from_slice(retry.to_string().as_bytes());
            out.put_u8(b'\n');
        }
        write_data(out, &self.data);
    }
}

/// The `type` of a JSON event payload, read with a fast prefix peek and a full scan as fallback.
///
/// `None` when the payload is not a JSON object with a string `type`.
pub fn peek_json_type(data: &[u8]) -> Option<Cow<'_, str>> {
    if let Some(kind) = peek_leading_type(data) {
        return Some(Cow::Borrowed(kind));
    }
    #[derive(Deserialize)]
    struct TypeOnly<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<BorrowedStr<'a>>,
    }
    serde_json::from_slice::<TypeOnly<'_>>(data)
        .ok()
        .and_then(|t| t.kind)
        .map(|k| k.0)
}

/// A string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct BorrowedStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// `{"type":"x"…` → `x`, without reading the rest. Gives up (`None`) on anything unusual: escapes,
/// another first key, whitespace oddities the slow path handles anyway.
fn peek_leading_type(data: &[u8]) -> Option<&str> {
    let rest = skip_ws(data).strip_prefix(b"{")?;
    let rest = skip_ws(rest).strip_prefix(b"\"type\"")?;
    let rest = skip_ws(rest).strip_prefix(b":")?;
    let rest = skip_ws(rest).strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    let kind = &rest[..end];
    // Control characters are not allowed raw inside a JSON string.
    if kind.iter().any(|&b| b < 0x20) {
        return None;
    }
    std::str::from_utf8(kind).ok()
}

fn skip_ws(data: &[u8]) -> &[u8] {
    let n = data
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &data[n..]
}

/// The fields the parser keeps; others are ignored, as the spec says.
enum Field {
    Data,
    Event,
    Id,
    Retry,
}

/// The data of the event being built. Most events have a single `data:` line, which stays a
/// zero-copy slice of the input; only multi-line payloads are joined into a new buffer.
#[derive(Debug, Default)]
enum DataBuf {
    #[default]
    None,
    One(Bytes),
    Many(BytesMut),
}

/// Incremental SSE parser: [`push`](Self::push) chunks as they arrive, then pull items with
/// [`next_item`](Self::next_item) until it returns `Ok(None)`; call [`finish`](Self::finish) at end
/// of input.
#[derive(Debug)]
pub struct SseParser {
    /// Pushed chunks not yet split into lines.
    queue: VecDeque<Bytes>,
    /// The beginning of a line whose end has not arrived yet.
    partial: BytesMut,
    /// The last line ended with CR at the end of a chunk: a LF at the start of the next one belongs
    /// to it.
    skip_lf: bool,
    /// No line has been completed yet (a BOM may start the stream).
    first_line: bool,
    /// After an oversize error: drop lines until the blank line that ends the event.
    discarding: bool,
    /// While discarding, whether the current (unterminated) line has any bytes.
    discard_line_nonempty: bool,
    data: DataBuf,
    event: Option<Bytes>,
    id: Option<Bytes>,
    retry: Option<u64>,
    /// Whether a field line has been seen since the last blank line.
    in_event: bool,
    /// Bytes of field lines of the current event (each counted with one terminator byte).
    event_bytes: usize,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default event size cap ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that rejects events larger than `max_event_bytes` (field lines, terminators
    /// included). Default: [`DEFAULT_MAX_EVENT_BYTES`] (16 MiB).
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            partial: BytesMut::new(),
            skip_lf: false,
            first_line: true,
            discarding: false,
            discard_line_nonempty: false,
            data: DataBuf::None,
            event: None,
            id: None,
            retry: None,
            in_event: false,
            event_bytes: 0,
            max_event_bytes,
        }
    }

    /// Queues a chunk of the body. Nothing is parsed until [`next_item`](Self::next_item).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.queue.push_back(chunk);
        }
    }

    /// Bytes pushed and not yet parsed into items.
    pub fn queued_bytes(&self) -> usize {
        self.partial.len() + self.queue.iter().map(Bytes::len).sum::<usize>()
    }

    /// Queues a borrowed chunk (copied once; prefer [`push`](Self::push) with [`Bytes`]).
    pub fn push_slice(&mut self, chunk: &[u8]) {
        self.push(Bytes::copy_from_slice(chunk));
    }

    /// The next complete item, `Ok(None)` when the queued bytes hold no further complete item.
    ///
    /// An [`SseError::EventTooLarge`] is not fatal: the oversized event is dropped and parsing
    /// resumes after it.
    pub fn next_item(&mut self) -> Result<Option<SseItem>, SseError> {
        while let Some(line) = self.next_line()? {
            if let Some(item) = self.process_line(line) {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    /// Ends the input. `Ok(())` when the stream stopped on an event boundary; otherwise the
    /// unfinished event is discarded (as the SSE spec says) and reported as
    /// [`SseError::Truncated`]. Call it after [`next_item`](Self::next_item) returned `Ok(None)`:
    /// bytes still queued count as unfinished. The parser is reset and may be reused.
    pub fn finish(&mut self) -> Result<(), SseError> {
        let queued: usize = self.queue.iter().map(Bytes::len).sum();
        // An unterminated comment line carries nothing; anything else was part of an event.
        let partial = if self.partial.first() == Some(&b':') {
            0
        } else {
            self.partial.len()
        };
        let pending = self.event_bytes + partial + queued;
        let truncated = self.in_event
            || self.discarding
            || partial > 0
            || (queued > 0
                && self
                    .queue
                    .iter()
                    .any(|c| !c.iter().all(|&b| is_line_end(b))));
        *self = Self::with_max_event_bytes(self.max_event_bytes);
        if truncated {
            Err(SseError::Truncated { pending })
        } else {
            Ok(())
        }
    }

    /// Splits the next complete line off the queue (without its terminator).
    fn next_line(&mut self) -> Result<Option<Bytes>, SseError> {
        while let Some(chunk) = self.queue.front_mut() {
            if self.skip_lf {
                self.skip_lf = false;
                if chunk.first() == Some(&b'\n') {
                    chunk.advance(1);
                    if chunk.is_empty() {
                        self.queue.pop_front();
                        continue;
                    }
                }
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                // No terminator in this chunk: the whole chunk continues the current line.
                let Some(chunk) = self.queue.pop_front() else {
                    break;
                };
                if self.discarding {
                    self.discard_line_nonempty = true;
                    continue;
                }
                if self.event_bytes + self.partial.len() + chunk.len() > self.max_event_bytes {
                    return Err(self.start_discarding(true));
                }
                self.partial.extend_from_slice(&chunk);
                continue;
            };
            let head = chunk.split_to(end);
            // `chunk` now starts with the terminator.
            let crlf = chunk[0] == b'\r' && chunk.get(1) == Some(&b'\n');
            if chunk[0] == b'\r' && chunk.len() == 1 {
                self.skip_lf = true;
            }
            chunk.advance(if crlf { 2 } else { 1 });
            if chunk.is_empty() {
                self.queue.pop_front();
            }

            if self.discarding {
                let empty = head.is_empty() && !self.discard_line_nonempty;
                self.discard_line_nonempty = false;
                if empty {
                    // The blank line that ends the oversized event: resume normal parsing.
                    self.discarding = false;
                }
                continue;
            }
            let line_len = self.partial.len() + head.len();
            if line_len > 0 && line_len + 1 + self.event_bytes > self.max_event_bytes {
                self.partial.clear();
                return Err(self.start_discarding(false));
            }
            let line = if self.partial.is_empty() {
                head
            } else {
                self.partial.extend_from_slice(&head);
                self.partial.split().freeze()
            };
            return Ok(Some(line));
        }
        Ok(None)
    }

    /// Drops the current event after an oversize error; `mid_line` when the current line has not
    /// ended yet (its tail must be dropped too).
    fn start_discarding(&mut self, mid_line: bool) -> SseError {
        self.partial = BytesMut::new();
        self.reset_event();
        self.discarding = true;
        self.discard_line_nonempty = mid_line;
        self.first_line = false;
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    fn reset_event(&mut self) {
        self.data = DataBuf::None;
        self.event = None;
        self.id = None;
        self.retry = None;
        self.in_event = false;
        self.event_bytes = 0;
    }

    fn process_line(&mut self, mut line: Bytes) -> Option<SseItem> {
        if self.first_line {
            self.first_line = false;
            if line.starts_with(BOM) {
                line.advance(BOM.len());
            }
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            line.advance(1);
            if line.first() == Some(&b' ') {
                line.advance(1);
            }
            return Some(SseItem::Comment(line));
        }
        self.in_event = true;
        self.event_bytes += line.len() + 1;
        let colon = memchr::memchr(b':', &line);
        let field = match &line[..colon.unwrap_or(line.len())] {
            b"data" => Field::Data,
            b"event" => Field::Event,
            b"id" => Field::Id,
            b"retry" => Field::Retry,
            _ => return None,
        };
        // The value reuses the line's handle: no reference-count traffic per field.
        let mut value = line;
        match colon {
            Some(colon) => {
                value.advance(colon + 1);
                if value.first() == Some(&b' ') {
                    value.advance(1);
                }
            }
            None => value.clear(),
        }
        match field {
            Field::Data => self.append_data(value),
            Field::Event => self.event = Some(value),
            // The spec ignores ids containing NUL.
            Field::Id if !value.contains(&0) => self.id = Some(value),
            Field::Id => {}
            Field::Retry => {
                if let Some(ms) = parse_digits(&value) {
                    self.retry = Some(ms);
                }
            }
        }
        None
    }

    fn append_data(&mut self, value: Bytes) {
        self.data = match std::mem::take(&mut self.data) {
            DataBuf::None => DataBuf::One(value),
            DataBuf::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + 1 + value.len());
                joined.extend_from_slice(&first);
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                DataBuf::Many(joined)
            }
            DataBuf::Many(mut joined) => {
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                DataBuf::Many(joined)
            }
        };
    }

    fn dispatch(&mut self) -> Option<SseItem> {
        let data = match std::mem::take(&mut self.data) {
            // A block without data is not an event (its `event:`/`id:` are dropped too).
            DataBuf::None => None,
            DataBuf::One(data) => Some(data),
            DataBuf::Many(data) => Some(data.freeze()),
        };
        let (event, id, retry) = (self.event.take(), self.id.take(), self.retry.take());
        self.reset_event();
        Some(SseItem::Event(SseEvent {
            event,
            data: data?,
            id,
            retry,
        }))
    }
}

/// Why an event stream stopped before its last event, as an [`SseReader`] found it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Cut<E> {
    /// An event the parser could not take (larger than its limit).
    Malformed(SseError),
    /// The body broke off.
    Broke(E),
    /// The body ended; with the event it ended inside, if any.
    Ended(Option<SseError>),
    /// Nothing arrived within the idle timeout.
    Silent(Duration),
    /// The gateway's server is stopping and its grace is over (see [`SseReader::stop_on`]).
    Stopped,
}

impl<E> Cut<E> {
    /// The error code a client and the request log are given for it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_stream",
            Self::Broke(_) | Self::Ended(_) => "upstream_cut",
            Self::Silent(_) => crate::error::UPSTREAM_TIMEOUT,
            Self::Stopped => "server_stopped",
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for Cut<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(e) | Self::Ended(Some(e)) => e.fmt(f),
            Self::Broke(e) => write!(f, "the upstream stream broke off: {e}"),
            Self::Ended(None) => f.write_str("the upstream stream ended before its last event"),
            Self::Silent(idle) => write!(f, "the upstream sent nothing for {} s", idle.as_secs()),
            Self::Stopped => f.write_str("the gateway is stopping; ask again"),
        }
    }
}

/// The next chunk of `body`, `None` at its end, waiting at most `idle` for it.
pub async fn read_chunk<S, E>(body: &mut S, idle: Duration) -> Result<Option<Bytes>, Cut<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    match tokio::time::timeout(idle, body.next()).await {
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(Cut::Broke(e)),
        Ok(None) => Ok(None),
        Err(_) => Err(Cut::Silent(idle)),
    }
}

/// Pulls items out of a body as it arrives: an [`SseParser`] fed from the body, each read
/// waiting at most the idle timeout, every way the body can stop early told as one [`Cut`].
/// Items read ahead can be [handed back](Self::hand_back) to come out first.
pub struct SseReader<S> {
    body: S,
    parser: SseParser,
    held: VecDeque<SseItem>,
    idle: Duration,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl<S, E> SseReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    /// Reads `body`, waiting at most `idle` for each chunk.
    pub fn new(body: S, idle: Duration) -> Self {
        Self {
            body,
            parser: SseParser::new(),
            held: VecDeque::new(),
            idle,
            stop: None,
        }
    }

    /// A wait for the body ends in [`Cut::Stopped`] once `stop` is `true` (a server's grace
    /// is over): what was read before still comes out first.
    pub fn stop_on(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    /// The next item, waiting for the body as long as it takes (an idle timeout per chunk).
    /// Cancel-safe: a chunk is taken only once it has arrived.
    pub async fn next(&mut self) -> Result<SseItem, Cut<E>> {
        loop {
            if let Some(item) = self.ready()? {
                return Ok(item);
            }
            self.fill().await?;
        }
    }

    /// The next item from what has arrived already, without waiting.
    pub fn ready(&mut self) -> Result<Option<SseItem>, Cut<E>> {
        if let Some(item) = self.held.pop_front() {
            return Ok(Some(item));
        }
        self.parser.next_item().map_err(Cut::Malformed)
    }

    /// Waits for the next chunk of the body (see [`ready`](Self::ready)); the end of the body
    /// is a [`Cut::Ended`]: a stream of events ends after its last event, not before.
    pub async fn fill(&mut self) -> Result<(), Cut<E>> {
        let read = read_chunk(&mut self.body, self.idle);
        let chunk = match &mut self.stop {
            None => read.await?,
            Some(stop) => tokio::select! {
                biased;
                // A sender gone (the gateway dropped) is no stop: the branch is off then.
                Ok(_) = stop.wait_for(|stopping| *stopping) => return Err(Cut::Stopped),
                chunk = read => chunk?,
            },
        };
        match chunk {
            Some(chunk) => {
                self.parser.push(chunk);
                Ok(())
            }
            None => Err(Cut::Ended(self.parser.finish().err())),
        }
    }

    /// Puts `items` (read earlier) before everything not yet read.
    pub fn hand_back(&mut self, mut items: VecDeque<SseItem>) {
        items.append(&mut self.held);
        self.held = items;
    }

    /// Bytes arrived and not yet parsed into items.
    pub fn queued_bytes(&self) -> usize {
        self.parser.queued_bytes()
    }

    /// How long each read waits.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The body, for an answer that is no event stream (nothing must have been read yet).
    pub fn into_body(self) -> S {
        self.body
    }
}

fn is_line_end(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

/// ASCII digits only (as the spec wants for `retry`); `None` on anything else or on overflow.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Appends `data: …\n\n`. A payload containing line breaks becomes several `data:` lines, so a
/// parser reads back exactly `data` (with CRLF/CR normalised to LF).
pub fn write_data(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 8);
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                out.extend_from_slice(rest);
                break;
            }
            Some(end) => {
                out.extend_from_slice(&rest[..end]);
                out.put_u8(b'\n');
                let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[end + skip..];
            }
        }
    }
    out.extend_from_slice(b"\n\n");
}

/// Appends `event: <name>\ndata: …\n\n`. A line break in `name` would start a new field, so the name
/// is cut at the first one.
pub fn write_event(out: &mut BytesMut, name: &str, data: &[u8]) {
    write_field(out, b"event: ", name.as_bytes());
    write_data(out, data);
}

/// Appends a comment frame `: <text>\n\n` (a keep-alive). The text is cut at the first line break.
pub fn write_comment(out: &mut BytesMut, text: &str) {
    write_field(out, b": ", text.as_bytes());
    out.put_u8(b'\n');
}

/// A single `data: …\n\n` frame.
pub fn data_frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    write_data(&mut out, data);
    out.freeze()
}

/// `<prefix><value up to the first line break>\n`.
fn write_field(out: &mut BytesMut, prefix: &[u8], value: &[u8]) {
    let value = match memchr::memchr2(b'\n', b'\r', value) {
        Some(end) => &value[..end],
        None => value,
    };
    out.extend_from_slice(prefix);
    out.extend_from_slice(value);
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A body of `chunks`, then `end` (`Some`: it breaks with that error; `None`: it ends).
    fn body(
        chunks: &[&'static str],
        end: Option<&'static str>,
    ) -> impl Stream<Item = Result<Bytes, &'static str>> + Unpin {
        let chunks = chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes())));
        futures_util::stream::iter(chunks.chain(end.map(Err)))
    }

    fn data(item: SseItem) -> Bytes {
        match item {
            SseItem::Event(e) => e.into_data(),
            SseItem::Comment(c) => c,
        }
    }

    #[tokio::test]
    async fn a_reader_tells_every_early_stop_one_way() {
        const IDLE: Duration = Duration::from_secs(5);
        // Items handed back come first, then the body's, across chunk boundaries.
        let mut reader = SseReader::new(body(&["data: b\n", "\n: c\n\n"], None), IDLE);
        let first = reader.next().await.unwrap();
        reader.hand_back(VecDeque::from([SseItem::Event(SseEvent::new("a")), first]));
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(data(reader.next().await.unwrap()));
        }
        assert_eq!(seen, ["a", "b", "c"]);
        // A clean end is still an end before the last event: the reader cannot know which
        // event is the last.
        let cut = reader.next().await.unwrap_err();
        assert!(matches!(cut, Cut::Ended(None)), "{cut:?}");
        assert_eq!(
            (cut.code(), cut.to_string().as_str()),
            (
                "upstream_cut",
                "the upstream stream ended before its last event"
            )
        );

        // An end inside an event says how much was cut.
        let mut reader = SseReader::new(body(&["data: a\n\ndata: partial"], None), IDLE);
        assert_eq!(data(reader.next().await.unwrap()), "a");
        let cut = reader.next().await.unwrap_err();
        assert!(
            matches!(cut, Cut::Ended(Some(SseError::Truncated { .. }))),
            "{cut:?}"
        );

        // A break keeps its reason; nothing waits past it.
        let mut reader = SseReader::new(body(&["data: a\n"], Some("reset by peer")), IDLE);
        let cut = reader.next().await.unwrap_err();
        assert_eq!(cut.code(), "upstream_cut");
        assert_eq!(
            cut.to_string(),
            "the upstream stream broke off: reset by peer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_is_a_timeout_after_the_idle_time() {
        let idle = Duration::from_secs(300);
        let silent = futures_util::stream::pending::<Result<Bytes, &'static str>>();
        let mut reader = SseReader::new(silent, idle);
        let start = tokio::time::Instant::now();
        let cut = reader.next().await.unwrap_err();
        assert_eq!(start.elapsed(), idle);
        assert!(matches!(cut, Cut::Silent(d) if d == idle), "{cut:?}");
        assert_eq!(cut.code(), crate::error::UPSTREAM_TIMEOUT);
        assert_eq!(cut.to_string(), "the upstream sent nothing for 300 s");
    }

    /// A stop ends a wait for the body, but not before what arrived already; a stop signal whose
    /// sender is gone stops nothing.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_after_what_arrived() {
        let waiting = futures_util::stream::iter([Ok(Bytes::from_static(b"data: a\n\n"))])
            .chain(futures_util::stream::pending::<Result<Bytes, &'static str>>());
        let mut reader = SseReader::new(waiting, Duration::from_secs(300));
        let (signal, stop) = tokio::sync::watch::channel(false);
        reader.stop_on(stop);
        assert_eq!(data(reader.next().await.unwrap()), "a");
        let stopping = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            signal.send_replace(true);
            signal
        });
        let start = tokio::time::Instant::now();
        let cut = reader.next().await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(matches!(cut, Cut::Stopped), "{cut:?}");
        assert_eq!(cut.code(), "server_stopped");
        drop(stopping.await.unwrap());

        let silent = futures_util::stream::pending::<Result<Bytes, &'static str>>();
        let mut reader = SseReader::new(silent, Duration::from_secs(300));
        reader.stop_on(tokio::sync::watch::channel(false).1);
        let cut = reader.next().await.unwrap_err();
        assert!(matches!(cut, Cut::Silent(_)), "{cut:?}");
    }

    /// Feeds `input` split at `cuts` and returns everything the parser produced, errors included.
    fn parse_chunks(
        chunks: &[&[u8]],
        max: usize,
    ) -> (Vec<Result<SseItem, SseError>>, Result<(), SseError>) {
        let mut parser = SseParser::with_max_event_bytes(max);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(Bytes::copy_from_slice(chunk));
            loop {
                match parser.next_item() {
                    Ok(Some(item)) => out.push(Ok(item)),
                    Ok(None) => break,
                    Err(e) => out.push(Err(e)),
                }
            }
        }
        let end = parser.finish();
        (out, end)
    }

    fn parse_all(input: &[u8]) -> (Vec<Result<SseItem, SseError>>, Result<(), SseError>) {
        parse_chunks(&[input], DEFAULT_MAX_EVENT_BYTES)
    }

    fn events(items: &[Result<SseItem, SseError>]) -> Vec<SseEvent> {
        items
            .iter()
            .filter_map(|i| match i {
                Ok(SseItem::Event(e)) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    const SAMPLE: &[u8] = b"\xEF\xBB\xBF: hello\r\n\
event: response.created\r\n\
data: {\"type\":\"response.created\",\"t\":\"h\xC3\xA9\xE2\x82\xAC\"}\r\n\
\r\n\
data: line one\n\
data: line two\n\
id: 7\n\
retry: 1500\n\
\n\
data:no-space\r\r\
event: ignored-without-data\n\
\n\
data\n\
\n\
: keep-alive\n\
data: {\"type\":\"response.completed\"}\n\n";

    #[test]
    fn parses_fields_line_endings_and_comments() {
        let (items, end) = parse_all(SAMPLE);
        end.unwrap();
        assert_eq!(items.len(), 7, "{items:?}");
        assert_eq!(items[0], Ok(SseItem::Comment(Bytes::from_static(b"hello"))));
        let evs = events(&items);
        assert_eq!(evs.len(), 5);
        assert_eq!(evs[0].event(), Some("response.created"));
        assert_eq!(evs[0].event_type().as_deref(), Some("response.created"));
        assert_eq!(
            evs[0].data().as_ref(),
            "{\"type\":\"response.created\",\"t\":\"hé€\"}".as_bytes()
        );
        assert_eq!(evs[1].data().as_ref(), b"line one\nline two");
        assert_eq!(evs[1].id(), Some("7"));
        assert_eq!(evs[1].retry(), Some(1500));
        assert_eq!(evs[1].event_type(), None);
        assert_eq!(evs[2].data().as_ref(), b"no-space");
        // `data` without a colon is a data line with an empty value.
        assert_eq!(evs[3].data().as_ref(), b"");
        assert_eq!(
            items[5],
            Ok(SseItem::Comment(Bytes::from_static(b"keep-alive")))
        );
        assert_eq!(evs[4].event_type().as_deref(), Some("response.completed"));
    }

    #[test]
    fn split_at_every_byte_gives_the_same_items() {
        let (whole, whole_end) = parse_all(SAMPLE);
        for cut in 0..=SAMPLE.len() {
            let (a, b) = SAMPLE.split_at(cut);
            let (items, end) = parse_chunks(&[a, b], DEFAULT_MAX_EVENT_BYTES);
            assert_eq!(items, whole, "cut at {cut}");
            assert_eq!(end, whole_end, "cut at {cut}");
        }
        // And one byte at a time.
        let singles: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        let (items, end) = parse_chunks(&singles, DEFAULT_MAX_EVENT_BYTES);
        assert_eq!(items, whole);
        assert_eq!(end, whole_end);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let (items, end) = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], 1024);
        end.unwrap();
        let evs = events(&items);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data().as_ref(), b"a\nb");
        // A lone CR followed by a chunk that does not start with LF still ends the line.
        let (items, _) = parse_chunks(&[b"data: a\r", b"\r"], 1024);
        assert_eq!(events(&items)[0].data().as_ref(), b"a");
    }

    #[test]
    fn single_line_data_is_zero_copy() {
        let chunk = Bytes::from_static(b"data: {\"type\":\"x\"}\n\n");
        let mut parser = SseParser::new();
        parser.push(chunk.clone());
        let Some(SseItem::Event(ev)) = parser.next_item().unwrap() else {
            panic!("no event")
        };
        let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
        assert!(range.contains(&(ev.data().as_ptr() as usize)));
    }

    #[test]
    fn unterminated_event_is_reported_as_truncated() {
        let (items, end) = parse_all(b"data: {\"a\":1}\n\ndata: {\"b\"");
        assert_eq!(events(&items).len(), 1);
        assert_eq!(end, Err(SseError::Truncated { pending: 10 }));
        // Field lines without the blank line: truncated too (spec: not dispatched).
        let (items, end) = parse_all(b"data: x\n");
        assert!(items.is_empty());
        assert!(matches!(end, Err(SseError::Truncated { .. })));
        // Trailing comments and line ends are a clean end.
        assert_eq!(parse_all(b"data: x\n\n: bye").1, Ok(()));
        assert_eq!(parse_all(b"data: x\n\n\n\r\n").1, Ok(()));
        assert_eq!(parse_all(b"").1, Ok(()));
    }

    #[test]
    fn oversize_event_errors_then_resumes() {
        let big = format!("data: {}\n\n", "x".repeat(100));
        let input = format!("data: ok1\n\n{big}data: ok2\n\n");
        for cut in 0..input.len() {
            let (a, b) = input.as_bytes().split_at(cut);
            let (items, end) = parse_chunks(&[a, b], 64);
            end.unwrap();
            let errors: Vec<_> = items.iter().filter(|i| i.is_err()).collect();
            assert_eq!(
                errors,
                vec![&Err(SseError::EventTooLarge { limit: 64 })],
                "cut {cut}"
            );
            let data: Vec<_> = events(&items).iter().map(|e| e.data().clone()).collect();
            assert_eq!(
                data,
                vec![Bytes::from_static(b"ok1"), Bytes::from_static(b"ok2")]
            );
        }
        // A line that never ends cannot grow the buffer past the limit.
        let mut parser = SseParser::with_max_event_bytes(64);
        let mut errors = 0;
        for _ in 0..100 {
            parser.push(Bytes::from_static(
                b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ));
            while let Some(r) = parser.next_item().transpose() {
                errors += usize::from(r.is_err());
            }
            assert!(parser.partial.len() <= 64);
        }
        assert_eq!(errors, 1);
        // Many data lines add up.
        let (items, _) = parse_chunks(&[&b"data: 0123456789\n".repeat(10)], 100);
        assert_eq!(items, vec![Err(SseError::EventTooLarge { limit: 100 })]);
    }

    #[test]
    fn event_type_peek_and_fallbacks() {
        let ev = SseEvent::new(&b"{\"type\":\"response.output_text.delta\",\"delta\":\"x\"}"[..]);
        assert_eq!(
            ev.event_type().as_deref(),
            Some("response.output_text.delta")
        );
        // Not first: full scan.
        let ev = SseEvent::new(&b"{\"delta\":\"x\", \"type\" : \"a.b\"}"[..]);
        assert_eq!(ev.event_type().as_deref(), Some("a.b"));
        // Escaped: full scan decodes it.
        let ev = SseEvent::new(&b"{\"type\":\"a\\u002eb\"}"[..]);
        assert_eq!(ev.event_type().as_deref(), Some("a.b"));
        // No JSON type: the event line.
        let ev = SseEvent::new(&b"[DONE]"[..]).with_event(&b"done"[..]);
        assert_eq!(ev.event_type().as_deref(), Some("done"));
        assert!(ev.is_done_marker());
        let ev = SseEvent::new(&b"{\"type\":5}"[..]);
        assert_eq!(ev.event_type(), None);
        let ev = SseEvent::new(&b"{\"type\":\"\x01\"}"[..]);
        assert_eq!(ev.event_type(), None);
    }

    #[test]
    fn writer_round_trips() {
        let mut out = BytesMut::new();
        write_data(&mut out, b"{\"a\":1}");
        assert_eq!(out.as_ref(), b"data: {\"a\":1}\n\n");
        out.clear();
        write_event(&mut out, "x\ny", b"one\r\ntwo\rthree\nfour");
        assert_eq!(
            out.as_ref(),
            b"event: x\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
        out.clear();
        write_comment(&mut out, "keep-alive");
        assert_eq!(out.as_ref(), b": keep-alive\n\n");
        assert_eq!(data_frame(b"").as_ref(), b"data: \n\n");

        let ev = SseEvent {
            event: Some(Bytes::from_static(b"e")),
            data: Bytes::from_static(b"a\nb"),
            id: Some(Bytes::from_static(b"1")),
            retry: Some(5),
        };
        let mut out = BytesMut::new();
        ev.encode(&mut out);
        let (items, end) = parse_all(&out);
        end.unwrap();
        assert_eq!(events(&items), vec![ev]);
    }

    #[test]
    fn retry_needs_digits() {
        assert_eq!(parse_digits(b"123"), Some(123));
        assert_eq!(parse_digits(b""), None);
        assert_eq!(parse_digits(b"12a"), None);
        assert_eq!(parse_digits(b"99999999999999999999999"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_does_not_matter(
            input in proptest::collection::vec(
                prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), Just(b'd'),
                    Just(b'a'), Just(b't'), any::<u8>()
                ],
                0..400,
            ),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            max in 1usize..200,
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&input[last..p]);
                last = p;
            }
            chunks.push(&input[last..]);
            let whole = parse_chunks(&[&input], max);
            let split = parse_chunks(&chunks, max);
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn written_frames_parse_back(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let frame = data_frame(&data);
            let (items, end) = parse_all(&frame);
            prop_assert_eq!(end, Ok(()));
            let evs = events(&items);
            prop_assert_eq!(evs.len(), 1);
            // Line breaks are normalised to LF by the SSE format itself.
            let normalised = String::from_utf8_lossy(&data).replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(String::from_utf8_lossy(evs[0].data()), normalised);
        }
    }
}
