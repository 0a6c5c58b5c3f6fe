//! The fallback upstream (`UPSTREAM_FALLBACK_BASE_URL`): where a request goes when no account can
//! serve it. It gets the client's own body (a Responses body without what only the gateway and
//! its accounts can read) and its answer goes back with its status and type; a Responses answer
//! is kept as the accounts' are ([`crate::stored`]), so the conversation can go on through
//! either. A streamed 200 goes on event by event ([`Passing::Events`]): a break in it, or an end
//! before its last event, ends the client's stream with an error in the client's protocol, and
//! the log row says so.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use super::{Answering, FallbackRequest, bound, failure_as_first_event, reject};
use crate::Shared;
use crate::adapt::responses::{Recall, event_response, for_fallback, response_id};
use crate::adapt::{EventKind, TokenUsage};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::record::Record;
use crate::sse::{
    Cut, DEFAULT_MAX_EVENT_BYTES, DONE_FRAME, SseEvent, SseItem, SseParser, read_chunk,
};
use crate::stored::Pending;
use crate::upstream;

/// How the fallback's answer reaches the client.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Passing {
    /// Not streamed: the body as it came.
    Whole,
    /// A stream, byte for byte; a break is a break (the Codex CLI reads it as one and retries).
    Raw,
    /// A stream of whole events in the client's protocol (`chat`: Chat Completions chunks, else
    /// Responses events). A break in it, or an end before its last event, ends it with an error
    /// event (and `[DONE]` for chat). `late`: the client has its headers already (an event
    /// stream), so a 200 that is no event stream cannot go as it came: it is a
    /// `fallback_failed`.
    Events { chat: bool, late: bool },
}

/// Sends the request to the fallback upstream and answers with its answer (status, type, body,
/// passed on as `passing` says); `keep` is the answer to keep (a Responses client that did not
/// say `store: false`), kept once the answer is complete.
pub(super) async fn call(
    shared: &Shared,
    mut record: Record,
    req: FallbackRequest,
    passing: Passing,
    keep: Option<Box<Pending>>,
) -> Response {
    let Some(fb) = &shared.upstream.fallback else {
        return reject(
            record,
            ApiError::bad_gateway("no_fallback", "no fallback upstream"),
            Protocol::None,
        );
    };
    record.entry.fallback = true;
    shared.metrics.fallback();
    let chat = req.path == "/chat/completions";
    let mut body = req.body;
    if req.path == "/responses" {
        let mut recall = shared.responses.as_ref().map(|r| r.recall(&req.key.id));
        let recall = recall.as_mut().map(|r| r as &mut dyn Recall);
        if let Some(expanded) = for_fallback(&body, recall) {
            body = expanded;
        }
    }
    let body = crate::adapt::bind_client_body(&body, bound(&req.key), chat);
    let mut rb = fb
        .client
        .post(format!("{}{}", fb.base, req.path))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = &fb.key {
        rb = rb.bearer_auth(k.expose());
    }
    if passing != Passing::Whole {
        rb = rb.header(header::ACCEPT, "text/event-stream");
    }
    let idle = shared.upstream.idle_timeout;
    let resp = match tokio::time::timeout(idle, rb.body(body).send()).await {
        Ok(Ok(r)) => r,
        failed => {
            let err = match failed {
                Ok(Err(e)) => ApiError::bad_gateway(
                    "fallback_unreachable",
                    format!("fallback upstream: {}", upstream::without_url(&e)),
                ),
                _ => ApiError::timeout(idle),
            };
            // The row says why the fallback failed, not why no account served.
            record.entry.error_class = Some(err.code.clone());
            return reject(record, err, Protocol::None);
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    // Its own wait passes on; a 429 or 503 without one says 1 s, as the gateway's own do.
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .cloned()
        .or_else(|| {
            matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            )
            .then(|| HeaderValue::from_static("1"))
        });
    record.entry.status = status.as_u16();
    record.first_byte();
    let sse = is_event_stream(content_type.as_ref());
    // A 200 in another type than an event stream (a fallback that streams nothing) goes as it
    // came, unless the client's event stream has begun: it would find the JSON inside it.
    if matches!(passing, Passing::Events { late: true, .. }) && status == StatusCode::OK && !sse {
        let error = ApiError::bad_gateway(
            "fallback_failed",
            format!(
                "the fallback upstream answered a streamed request with a 200 that is no event \
                 stream (content type {})",
                content_type
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
            ),
        );
        record.entry.error_class = Some(error.code.clone());
        return reject(record, error, Protocol::None);
    }
    let events = match passing {
        Passing::Events { chat, .. } if status == StatusCode::OK && sse => {
            Some(Box::new(EventWise::new(chat, Answering::of(&record))))
        }
        _ => None,
    };
    let reader = (status == StatusCode::OK).then(|| {
        let keep = keep.filter(|_| req.path == "/responses");
        Reader::new(keep, sse, chat)
    });
    let passed = Passed {
        body: resp
            .bytes_stream()
            .map_err(|e| upstream::without_url(&e))
            .boxed(),
        guard: Guard {
            record: Some(record),
            status: status.as_u16(),
        },
        reader,
        events,
        idle,
        done: false,
    };
    let body = futures_util::stream::unfold(passed, |mut p| async move {
        let item = p.next().await?;
        Some((item, p))
    });
    let mut res = Response::new(Body::from_stream(body));
    *res.status_mut() = status;
    if let Some(ct) = content_type {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if let Some(wait) = retry_after {
        res.headers_mut().insert(header::RETRY_AFTER, wait);
    }
    res.headers_mut()
        .insert("x-codexpool-fallback", HeaderValue::from_static("1"));
    res
}

fn is_event_stream(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"))
}

/// The fallback's answer on its way to the client.
struct Passed {
    /// Its errors named without the fallback's URL.
    body: BoxStream<'static, Result<Bytes, String>>,
    guard: Guard,
    /// For a 200 answer.
    reader: Option<Reader>,
    /// For [`Passing::Events`], when the answer is a 200.
    events: Option<Box<EventWise>>,
    idle: Duration,
    done: bool,
}

impl Passed {
    /// The next piece for the client; after a break or a silence, an error event (events) or
    /// a break (else).
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        // What went wrong, and the whole events that came before it in the same chunk.
        let (error, before) = loop {
            let chunk = match read_chunk(&mut self.body, self.idle).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => match &self.events {
                    Some(events) if !events.ended => {
                        break (cut_error(Cut::Ended(None)), Bytes::new());
                    }
                    _ => return self.end_well(),
                },
                Err(cut) => break (cut_error(cut), Bytes::new()),
            };
            if let Some(reader) = &mut self.reader {
                reader.see(&chunk);
            }
            let Some(events) = &mut self.events else {
                return Some(Ok(chunk));
            };
            match events.push(chunk) {
                (out, Some(error)) => break (error, out),
                (out, None) if out.is_empty() => {}
                (out, None) => return Some(Ok(out)),
            }
        };
        if self.events.as_ref().is_some_and(|e| e.ended) {
            // Whatever comes after the last event is not the client's business.
            let done = self.end_well().and_then(Result::ok).unwrap_or_default();
            let rest = [before, done].concat();
            return (!rest.is_empty()).then(|| Ok(rest.into()));
        }
        self.done = true;
        // Not kept, but what it used is counted.
        let usage = self.reader.take().and_then(|r| r.usage);
        self.guard.end(Some(error.code.as_str()), usage);
        Some(match &self.events {
            Some(events) => Ok([before, events.failure(&error)].concat().into()),
            None => Err(std::io::Error::other(error.message)),
        })
    }

    /// The answer ended well: its record says so (with the usage it reported), a whole JSON
    /// answer is kept, and a chat stream without `[DONE]` gets one.
    fn end_well(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        self.done = true;
        let usage = self.reader.take().and_then(Reader::end);
        self.guard.end(None, usage);
        let events = self.events.as_ref()?;
        (events.chat && !events.done_sent).then(|| Ok(Bytes::from_static(DONE_FRAME)))
    }
}

/// What the client is told of a cut in the fallback's answer.
fn cut_error(cut: Cut<String>) -> ApiError {
    let mut error = ApiError::from_cut(&cut);
    if !matches!(cut, Cut::Silent(_)) {
        error.message = format!("fallback upstream: {}", error.message);
    }
    error
}

/// A streamed 200 passed on event by event, so that a failure never lands inside an event.
struct EventWise {
    parser: SseParser,
    chat: bool,
    /// A failure before any Responses event is a response that failed at once, for this
    /// request (see [`failure_as_first_event`]).
    request: Answering,
    /// Events passed on, and the last `sequence_number` among them (an error event is numbered
    /// after it, or after the events passed on when the fallback numbers none).
    events: u64,
    last_sequence: Option<u64>,
    /// The answer's last event went by: for chat `[DONE]`, an error, or a chunk with a
    /// `finish_reason`; for Responses its final event or an `error`.
    ended: bool,
    done_sent: bool,
}

impl EventWise {
    fn new(chat: bool, request: Answering) -> Self {
        Self {
            parser: SseParser::new(),
            chat,
            request,
            events: 0,
            last_sequence: None,
            ended: false,
            done_sent: false,
        }
    }

    /// The whole events (and comments) `chunk` completes, framed; the error when the stream
    /// is broken past reading (an event over the size limit).
    fn push(&mut self, chunk: Bytes) -> (Bytes, Option<ApiError>) {
        self.parser.push(chunk);
        let mut out = BytesMut::new();
        loop {
            match self.parser.next_item() {
                Ok(Some(SseItem::Event(event))) => {
                    self.saw(&event);
                    event.encode(&mut out);
                }
                Ok(Some(SseItem::Comment(text))) => {
                    crate::sse::write_comment(&mut out, &String::from_utf8_lossy(&text));
                }
                Ok(None) => return (out.freeze(), None),
                Err(e) => return (out.freeze(), Some(cut_error(Cut::Malformed(e)))),
            }
        }
    }

    fn saw(&mut self, event: &SseEvent) {
        self.events += 1;
        let data = event.data();
        if self.chat {
            // Only a chunk that may end the answer is parsed.
            let may_end = memchr::memmem::find(data, b"finish_reason").is_some()
                || memchr::memmem::find(data, b"\"error\"").is_some();
            #[derive(serde::Deserialize)]
            struct Chunk {
                #[serde(default)]
                choices: Vec<Choice>,
                error: Option<serde::de::IgnoredAny>,
            }
            #[derive(serde::Deserialize)]
            struct Choice {
                finish_reason: Option<serde::de::IgnoredAny>,
            }
            self.done_sent |= event.is_done_marker();
            self.ended |= event.is_done_marker()
                || may_end
                    && serde_json::from_slice::<Chunk>(data).is_ok_and(|c| {
                        c.error.is_some() || c.choices.iter().any(|c| c.finish_reason.is_some())
                    });
        } else {
            if let Some(n) = crate::relay::sequence_number(data) {
                self.last_sequence = Some(n);
            }
            self.ended |= EventKind::of(event).is_terminal();
        }
    }

    /// The stream's end after `error`, in the client's protocol: an error chunk and `[DONE]`
    /// for chat; for Responses an `error` event numbered after the last one passed on, or a
    /// response that failed at once when none was (see [`failure_as_first_event`]).
    fn failure(&self, error: &ApiError) -> Bytes {
        if self.chat || self.events == 0 {
            return failure_as_first_event(&self.request, error, self.chat);
        }
        let number = self
            .last_sequence
            .map_or(self.events, |n| n.saturating_add(1));
        let mut out = BytesMut::new();
        crate::relay::error_event(&mut out, number, &error.code, &error.message);
        out.freeze()
    }
}

/// Finishes the fallback's record once: when its body ends, breaks off or goes silent.
struct Guard {
    record: Option<Record>,
    status: u16,
}

impl Guard {
    /// `failure`: what went wrong with the fallback's answer, which the row says rather than
    /// why no account served (what it says otherwise); `usage`: what the answer said it used.
    fn end(&mut self, failure: Option<&str>, usage: Option<TokenUsage>) {
        if let Some(mut r) = self.record.take() {
            if let Some(class) = failure {
                r.entry.error_class = Some(class.to_string());
            }
            r.finish(self.status, None, usage);
        }
    }
}

/// Whether a chat chunk has a `usage` object (not `null`), without parsing it.
fn says_usage(data: &[u8]) -> bool {
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let rest = data[at + 7..].trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|v| v.trim_ascii_start().starts_with(b"{"))
    })
}

/// Reads a 200 answer of the fallback as it goes by, whatever the client gets of it: the token
/// usage it reports (a chat chunk's or answer's `usage`, a Responses answer's), for the log row
/// and the ledger, and, when the answer is to be kept, the `response` of its
/// `response.completed` (or `response.incomplete`) event, or the whole body when it is not a
/// stream, as the accounts' answers are kept. Only an answer that arrives whole is kept (a
/// stream cut before its final event, or an answer larger than an SSE event may be, is not).
struct Reader {
    form: Form,
    chat: bool,
    keep: Option<Box<Pending>>,
    usage: Option<TokenUsage>,
}

enum Form {
    Stream(Box<SseParser>),
    Json(Vec<u8>),
    /// Nothing more to read: the last event went by, or the answer is past reading.
    Read,
}

impl Reader {
    /// For an answer that is an event stream (`sse`) or not, of Chat Completions (`chat`) or
    /// Responses, to keep or not.
    fn new(mut keep: Option<Box<Pending>>, sse: bool, chat: bool) -> Self {
        if let Some(pending) = &mut keep {
            pending.served_by_fallback();
        }
        let form = match sse {
            true => Form::Stream(Box::default()),
            false => Form::Json(Vec::new()),
        };
        Self {
            form,
            chat,
            keep,
            usage: None,
        }
    }

    /// Looks at the next chunk of the answer.
    fn see(&mut self, chunk: &Bytes) {
        match &mut self.form {
            Form::Json(body) if body.len() + chunk.len() <= DEFAULT_MAX_EVENT_BYTES => {
                body.extend_from_slice(chunk);
            }
            Form::Json(_) => self.form = Form::Read,
            Form::Stream(parser) => {
                parser.push(chunk.clone());
                loop {
                    match parser.next_item() {
                        Ok(Some(SseItem::Event(event))) => {
                            if self.chat {
                                // Only the chunk that says so (`usage` is `null` in the others
                                // when the client asked for it).
                                if says_usage(event.data()) {
                                    self.usage = TokenUsage::of_answer(event.data()).or(self.usage);
                                }
                                continue;
                            }
                            if !matches!(
                                EventKind::of(&event),
                                EventKind::Completed | EventKind::Incomplete
                            ) {
                                continue;
                            }
                            if let Some(response) = event_response(event.data()) {
                                self.answer(response.as_bytes());
                            }
                            self.form = Form::Read;
                            return;
                        }
                        Ok(Some(SseItem::Comment(_))) => {}
                        Ok(None) => return,
                        Err(_) => {
                            self.form = Form::Read;
                            return;
                        }
                    }
                }
            }
            Form::Read => {}
        }
    }

    /// The answer ended: a JSON one is read now. The usage it reported.
    fn end(mut self) -> Option<TokenUsage> {
        if let Form::Json(body) = std::mem::replace(&mut self.form, Form::Read) {
            self.answer(&body);
        }
        self.usage
    }

    /// A whole answer (a Responses `response`, or a whole JSON body): its usage, and kept.
    fn answer(&mut self, answer: &[u8]) {
        self.usage = TokenUsage::of_answer(answer);
        if let Some(pending) = self.keep.take()
            && let Some(id) = response_id(answer)
        {
            pending.finish(&id, answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use codexpool_core::{ManualClock, Timestamp};

    use super::*;
    use crate::stored::{RESPONSES_TTL, ResponseStore};

    fn store() -> Arc<ResponseStore> {
        let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
        Arc::new(ResponseStore::new(1 << 20, RESPONSES_TTL, Arc::new(clock)))
    }

    /// Feeds `chunks` to a reader for an answer of `content_type` (Responses when `keep` is
    /// a store, else Chat Completions), then ends it; the usage it read.
    fn read(
        keep: Option<&Arc<ResponseStore>>,
        content_type: &'static str,
        chunks: &[&str],
    ) -> Option<TokenUsage> {
        let pending = keep.map(|store| Pending::new(store.clone(), "k", Vec::new()));
        let sse = is_event_stream(Some(&HeaderValue::from_static(content_type)));
        let mut reader = Reader::new(pending, sse, keep.is_none());
        for chunk in chunks {
            reader.see(&Bytes::copy_from_slice(chunk.as_bytes()));
        }
        reader.end()
    }

    fn feed(store: &Arc<ResponseStore>, content_type: &'static str, chunks: &[&str]) {
        read(Some(store), content_type, chunks);
    }

    #[test]
    fn reads_the_usage_an_answer_reports() {
        let total = |u: Option<TokenUsage>| u.map(|u| (u.input_tokens, u.total_tokens));
        let usage = r#""usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}"#;
        // A chat stream: the chunk with `usage`, whatever came before or after.
        let stream = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"hi\"}}}}],\"usage\":null}}\n\ndata: {{\"choices\":[],{usage}}}\n\ndata: [DONE]\n\n"
        );
        let (a, b) = stream.split_at(40);
        assert_eq!(
            total(read(None, "text/event-stream", &[a, b])),
            Some((7, 10))
        );
        // A chat answer.
        let answer = format!("{{\"object\":\"chat.completion\",\"choices\":[],{usage}}}");
        assert_eq!(
            total(read(None, "application/json", &[&answer])),
            Some((7, 10))
        );
        // A Responses stream and answer, kept or not.
        let response =
            r#"{"id":"resp_9","output":[],"usage":{"input_tokens":4,"output_tokens":1}}"#;
        let s = store();
        let event =
            format!("data: {{\"type\":\"response.completed\",\"response\":{response}}}\n\n");
        assert_eq!(
            total(read(Some(&s), "text/event-stream", &[&event])),
            Some((4, 5))
        );
        assert!(s.get("k", "resp_9").is_some());
        assert_eq!(
            total(read(Some(&store()), "application/json", &[response])),
            Some((4, 5))
        );
        // Spaced as a pretty printer spaces it.
        let spaced = "data: {\"choices\": [], \"usage\" : {\"prompt_tokens\": 7, \"completion_tokens\": 3}}\n\n";
        assert_eq!(
            total(read(None, "text/event-stream", &[spaced])),
            Some((7, 10))
        );
        assert!(!says_usage(br#"{"usage":null}"#) && !says_usage(br#"{"x":"usage"}"#));
        // None said, or not readable.
        assert_eq!(read(None, "text/event-stream", &["data: [DONE]\n\n"]), None);
        assert_eq!(read(None, "application/json", &["{\"usage\":"]), None);
    }

    const ANSWER: &str = r#"{"id":"resp_1","object":"response","output":[]}"#;

    #[test]
    fn keeps_a_whole_answer_and_nothing_else() {
        let s = store();
        // JSON in pieces.
        feed(&s, "application/json", &[&ANSWER[..10], &ANSWER[10..]]);
        assert_eq!(s.get("k", "resp_1").as_deref(), Some(ANSWER.as_bytes()));
        // The final event split across chunks, after other events and a comment.
        let s = store();
        let stream = format!(
            ": hi\n\nevent: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"resp_1\"}}}}\n\nevent: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{ANSWER}}}\n\n"
        );
        let (a, b) = stream.split_at(stream.len() - 20);
        feed(&s, "text/event-stream; charset=utf-8", &[a, b]);
        assert_eq!(s.get("k", "resp_1").as_deref(), Some(ANSWER.as_bytes()));

        // An incomplete answer is kept too, as the accounts' are.
        let s = store();
        let incomplete =
            format!("data: {{\"type\":\"response.incomplete\",\"response\":{ANSWER}}}\n\n");
        feed(&s, "text/event-stream", &[&incomplete]);
        assert_eq!(s.get("k", "resp_1").as_deref(), Some(ANSWER.as_bytes()));

        // Not kept: garbage, JSON without an id, a stream cut before its final event, a final
        // event without a response.
        let s = store();
        feed(&s, "application/json", &["{\"id\":\"resp_2\",\"out"]);
        feed(
            &s,
            "application/json",
            &[r#"{"object":"response"}"#, "\u{0}"],
        );
        feed(&s, "application/json", &["[\"resp_3\"]"]);
        feed(
            &s,
            "text/event-stream",
            &[
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_4\"}}\n\n",
            ],
        );
        feed(
            &s,
            "text/event-stream",
            &["data: {\"type\":\"response.completed\",\"response\":7}\n\n"],
        );
        for id in ["resp_2", "resp_3", "resp_4"] {
            assert_eq!(s.get("k", id), None, "{id}");
        }
    }
}
