//! Route handlers. Each model route turns the client's body into an upstream call (through the
//! adapters), hands it to the attempt loop, and answers with a stream, one assembled object, or
//! an error; [`dispatch`] is the part they share.

pub(crate) mod chat;
mod fallback;
pub(crate) mod models;
pub(crate) mod responses;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;

use crate::Shared;
use crate::adapt::responses::response_id;
use crate::adapt::{
    ChatAssembler, ChatOptions, ChatStream, Overrides, ResponseAssembler, UpstreamRequest,
};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::record::Record;
use crate::relay::{Missed, Mode, Relay, collect};
use crate::stored::Pending;
use crate::upstream::{self, Call, Committed, Failed};

/// While a streaming client waits on a slow upstream, it gets an SSE comment this often.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Longest pause between the parts of a request body (as long as hyper gives a request's
/// headers).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `{id}` in a route's path. One that is not text (percent-encoded bytes that are not
/// UTF-8) is a 400 in the OpenAI shape, not axum's plain-text rejection.
pub(crate) struct PathId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(Self(id)),
            Err(e) => {
                let mut error = ApiError::bad_request("invalid_value", e.body_text());
                error.param = Some("id".into());
                let mut res = error.into_response();
                res.extensions_mut().insert(Protocol::None);
                Err(res)
            }
        }
    }
}

/// The request id the request-id layer set.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(crate::stack::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The body stopped arriving (see [`crate::GatewayBuilder::body_idle_timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("nothing more of the request body arrived for {} ms", .0.as_millis())]
struct BodyStalled(Duration);

/// A request body whose frames may be at most `idle` apart. The timer is made only when a frame
/// is not there at once (a small body usually is), and a frame only notes its time: the timer
/// moves when it fires early, not on every frame.
struct IdleBody {
    inner: Body,
    idle: Duration,
    last: tokio::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            this.last = tokio::time::Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let (idle, due) = (this.idle, this.last + this.idle);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while timer.as_mut().poll(cx).is_ready() {
            // Frames came since it was set: the wait runs from the last one.
            if timer.deadline() < due {
                timer.as_mut().reset(due);
                continue;
            }
            return Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a JSON request body, refusing other content types and compressed bodies (415) and
/// bodies over the limit (413) before they are buffered, and one whose frames come more than
/// `idle` apart (408).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let text = ct.to_str().unwrap_or("");
        let mime = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(ApiError::unsupported_media_type(text));
        }
    }
    // A compressed body would read as "not valid JSON": say what is wrong instead.
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let text = encoding.to_str().unwrap_or("");
        if !text.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::unsupported_encoding(text));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let body = IdleBody {
        inner: body,
        idle,
        last: tokio::time::Instant::now(),
        timer: None,
    };
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(limit))
        }
        Err(e) if e.downcast_ref::<BodyStalled>().is_some() => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::bad_request(
            "unreadable_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Keys whose values never reach a body preview.
const SECRET_WORDS: [&str; 6] = [
    "key",
    "token",
    "secret",
    "password",
    "authorization",
    "cookie",
];

/// A redacted preview of a JSON body for the request log: values under keys that look like
/// credentials become `*****`, and so do credentials inside any text ([`mask_secrets`]); then
/// the text is cut to `max` bytes.
pub(crate) fn preview(body: &[u8], max: usize) -> Option<String> {
    if max == 0 {
        return None;
    }
    fn redact(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    let k = k.to_ascii_lowercase();
                    if SECRET_WORDS.iter().any(|w| k.contains(w))
                        && !k.ends_with("_tokens")
                        && k != "max_tokens"
                    {
                        *v = serde_json::Value::String("*****".into());
                    } else {
                        redact(v);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
            serde_json::Value::String(text) => {
                // A JSON document pasted as text (an `auth.json`) is redacted as one.
                if text.trim_start().starts_with('{')
                    && let Ok(mut inner) = serde_json::from_str::<serde_json::Value>(text)
                {
                    redact(&mut inner);
                    *text = inner.to_string();
                }
                if let Some(masked) = crate::secrets::mask_secrets(text) {
                    *text = masked;
                }
            }
            _ => {}
        }
    }
    let mut text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            redact(&mut v);
            v.to_string()
        }
        Err(_) => String::from("<not JSON>"),
    };
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    Some(text)
}

/// A refusal before any upstream call: logged, then answered.
pub(crate) fn reject(mut record: Record, error: ApiError, protocol: Protocol) -> Response {
    record.finish(error.status.as_u16(), Some(&error.code), None);
    let error = match protocol {
        Protocol::Codex => error.for_codex(),
        _ => error,
    };
    with_protocol(error.into_response(), protocol)
}

fn with_protocol(mut res: Response, protocol: Protocol) -> Response {
    res.extensions_mut().insert(protocol);
    res
}

/// How the client wants its answer.
pub(crate) enum Answer {
    /// Upstream events as they come.
    ResponsesStream,
    /// The final `response` object.
    ResponsesJson,
    /// `chat.completion.chunk`s.
    ChatStream(ChatOptions),
    /// One `chat.completion`.
    ChatJson(ChatOptions),
}

impl Answer {
    fn streams(&self) -> bool {
        matches!(self, Self::ResponsesStream | Self::ChatStream(_))
    }

    fn mode(&self, created: i64) -> Mode {
        match self {
            Self::ChatStream(o) => Mode::Chat(Box::new(ChatStream::new(o, created))),
            _ => Mode::Passthrough,
        }
    }
}

/// What the fallback upstream needs: the client's own body, the path in its dialect, and the key
/// (whose bound model and effort apply there too, and whose kept responses a Responses body may
/// refer to).
pub(crate) struct FallbackRequest {
    pub body: Bytes,
    pub path: &'static str,
    pub key: Arc<codexpool_core::PlatformKey>,
}

/// What `key` binds (model, reasoning effort), applied on top of the client's body.
fn bound(key: &codexpool_core::PlatformKey) -> Overrides<'_> {
    Overrides {
        model: key.model.as_deref(),
        reasoning_effort: key.reasoning_effort.as_deref(),
    }
}

/// A 200 with this body and type, plus our headers.
fn respond(
    body: Body,
    content_type: &'static str,
    extra: &[(&'static str, HeaderValue)],
) -> Response {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type == "text/event-stream" {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    for (k, v) in extra {
        h.insert(*k, v.clone());
    }
    res
}

type Run = BoxFuture<'static, Result<Committed, Failed>>;

enum BodyState {
    /// Headers went out early (a slow upstream): keep-alives until the attempt loop is done.
    Waiting {
        run: Run,
        mode: Mode,
        refill: bool,
        shared: Arc<Shared>,
        pre_send: Duration,
        fallback: FallbackRequest,
        pending: Option<Box<Pending>>,
    },
    /// The committed stream (which keeps the answer once its final event has gone out).
    Relaying(Box<Relay>),
    /// No account could serve and the fallback upstream answered 200: its events (see
    /// [`fallback::Passing::Events`]).
    Forwarding(axum::body::BodyDataStream),
    Done,
}

/// A keep-alive comment for a streaming client waiting on a slow upstream.
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

fn relay_body(state: BodyState) -> Body {
    // Headers sent early go out with a first comment: a client reading the body should not wait
    // a whole interval more for its first byte.
    let opening = matches!(state, BodyState::Waiting { .. })
        .then(|| Ok::<Bytes, Infallible>(Bytes::from_static(KEEPALIVE_COMMENT)));
    let stream = futures_util::stream::unfold(state, |state| async move {
        match state {
            BodyState::Done => None,
            BodyState::Relaying(mut relay) => {
                let chunk = relay.next_chunk().await?;
                Some((Ok::<Bytes, Infallible>(chunk), BodyState::Relaying(relay)))
            }
            BodyState::Forwarding(mut body) => {
                use futures_util::StreamExt;
                // A fallback's event stream ends in an error event of its own, not in a body
                // error; a break in anything else (a 200 that was no stream) just ends it.
                let chunk = body.next().await?.ok()?;
                Some((Ok(chunk), BodyState::Forwarding(body)))
            }
            BodyState::Waiting {
                mut run,
                mode,
                refill,
                shared,
                pre_send,
                fallback,
                mut pending,
            } => {
                tokio::select! {
                    result = &mut run => match result {
                        Ok(c) => {
                            if let Some(p) = &mut pending {
                                p.served_by(c.lease.account_id());
                            }
                            let mut relay = Box::new(Relay::new(c, mode, shared.metrics.clone(), pre_send).refill_output(refill).keep(pending));
                            let chunk = relay.next_chunk().await.unwrap_or_default();
                            Some((Ok(chunk), BodyState::Relaying(relay)))
                        }
                        Err(Failed { error, record, no_account }) => {
                            let (frame, next) = if no_account && shared.upstream.fallback.is_some() {
                                late_fallback(&shared, record, fallback, &mode, pending).await
                            } else {
                                late_failure(record, &error, &mode)
                            };
                            Some((Ok(frame), next))
                        }
                    },
                    () = tokio::time::sleep(shared.keepalive) => {
                        Some((Ok(Bytes::from_static(KEEPALIVE_COMMENT)), BodyState::Waiting { run, mode, refill, shared, pre_send, fallback, pending }))
                    }
                }
            }
        }
    });
    Body::from_stream(futures_util::StreamExt::chain(
        futures_util::stream::iter(opening),
        stream,
    ))
}

/// The attempt loop failed after the headers went out: the error as the last event, in the
/// client's protocol (an OpenAI error chunk and `[DONE]` for chat; for Responses clients, a
/// response that failed at once).
fn late_failure(mut record: Record, error: &ApiError, mode: &Mode) -> (Bytes, BodyState) {
    let frame = failure_as_first_event(&Answering::of(&record), error, is_chat(mode));
    record.finish(200, Some(&error.code), None);
    (frame, BodyState::Done)
}

fn is_chat(mode: &Mode) -> bool {
    matches!(mode, Mode::Chat(_))
}

/// The request a stream answers, as a response that failed at once names it.
struct Answering {
    request_id: String,
    model: Option<String>,
    /// When it arrived: the response's `created_at`.
    at: codexpool_core::Timestamp,
}

impl Answering {
    fn of(record: &Record) -> Self {
        let e = &record.entry;
        Self {
            request_id: e.request_id.clone(),
            model: e.model.clone(),
            at: e.at,
        }
    }
}

/// An error that ends a stream whose headers went out: an OpenAI error chunk and `[DONE]` for
/// chat (before any event or after some), and before any event a response that failed at once
/// for Responses clients (see [`crate::relay::failed_before_any_event`]).
fn failure_as_first_event(request: &Answering, error: &ApiError, chat: bool) -> Bytes {
    if chat {
        return [
            error.sse_frame(),
            Bytes::from_static(crate::sse::DONE_FRAME),
        ]
        .concat()
        .into();
    }
    let mut out = bytes::BytesMut::new();
    let (id, model) = (&request.request_id, request.model.as_deref());
    let created_at = request.at.as_secs();
    crate::relay::failed_before_any_event(&mut out, id, model, created_at, error);
    out.freeze()
}

/// No account could serve after the headers went out: the fallback upstream's answer continues
/// the stream when it is a 200, else the client gets why it is not.
async fn late_fallback(
    shared: &Shared,
    record: Record,
    req: FallbackRequest,
    mode: &Mode,
    keep: Option<Box<Pending>>,
) -> (Bytes, BodyState) {
    use futures_util::StreamExt;
    let request = Answering::of(&record);
    let passing = fallback::Passing::Events {
        chat: is_chat(mode),
        late: true,
    };
    let res = fallback::call(shared, record, req, passing, keep).await;
    let status = res.status();
    let mut body = res.into_body().into_data_stream();
    if status == StatusCode::OK {
        return match body.next().await {
            Some(Ok(first)) => (first, BodyState::Forwarding(body)),
            _ => (Bytes::new(), BodyState::Done),
        };
    }
    // The fallback's own error body, its first 4 KiB (its record, already holding the status,
    // is finished when the body is dropped).
    let detail = collect_text(body, 4096).await;
    let error = ApiError::bad_gateway(
        "fallback_failed",
        format!("the fallback upstream answered {status}: {detail}"),
    );
    let frame = failure_as_first_event(&request, &error, is_chat(mode));
    (frame, BodyState::Done)
}

/// Up to `limit` bytes of a body as text (the rest is not waited for).
async fn collect_text(mut body: axum::body::BodyDataStream, limit: usize) -> String {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(Ok(chunk)) = body.next().await
    {
        let room = limit - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Our own answer headers for a committed attempt (the account that serves), and the upstream's
/// that the client needs (see [`upstream::CODEX_ANSWER_HEADERS`]).
fn answer_headers(extra: &mut Vec<(&'static str, HeaderValue)>, committed: &Committed) {
    if let Ok(v) = HeaderValue::from_str(committed.lease.account_id()) {
        extra.push(("x-codexpool-account", v));
    }
    extra.extend(committed.headers.iter().cloned());
}

/// Runs the attempt loop for a call and answers the client; `pending` is the answer to keep
/// (Responses clients that did not say `store: false`), kept once it is complete.
pub(crate) async fn dispatch(
    shared: Arc<Shared>,
    call: Call,
    answer: Answer,
    extra: Vec<(&'static str, HeaderValue)>,
    protocol: Protocol,
    fallback: FallbackRequest,
    mut pending: Option<Box<Pending>>,
) -> Response {
    let pre_send = call.arrived.elapsed();
    let mut call = call;
    call.assembled = !answer.streams();
    let s = shared.clone();
    let mut run: Run =
        Box::pin(async move { upstream::run(&s.pool, &s.upstream, &s.metrics, call).await });
    let created = shared.pool.now().as_secs();
    // Ordinary Responses clients get the streamed items in an empty final `output`; the Codex CLI
    // reads the items themselves and gets every byte as sent.
    let refill = protocol == Protocol::Responses;
    // The Codex CLI gets no early headers: the answer headers it acts on (its turn state) come
    // with the attempt that commits, and a failure must reach it as the HTTP error it reads
    // (keep-alive comments would not reset its stream timer anyway: it times events).
    let result = if answer.streams() && protocol != Protocol::Codex {
        match tokio::time::timeout(shared.keepalive, &mut run).await {
            Ok(r) => r,
            Err(_) => {
                // The upstream is slow: send the headers now and keep the connection alive.
                let state = BodyState::Waiting {
                    run,
                    mode: answer.mode(created),
                    refill,
                    shared,
                    pre_send,
                    fallback,
                    pending,
                };
                return with_protocol(
                    respond(relay_body(state), "text/event-stream", &extra),
                    protocol,
                );
            }
        }
    } else {
        run.await
    };
    let committed = match result {
        Ok(c) => c,
        Err(failed) => {
            if failed.no_account && shared.upstream.fallback.is_some() {
                // A streamed answer goes on event by event, as after early headers; the Codex
                // CLI gets the bytes (it reads a transport break as one and retries).
                let passing = match (answer.streams(), protocol) {
                    (false, _) => fallback::Passing::Whole,
                    (true, Protocol::Codex) => fallback::Passing::Raw,
                    (true, _) => fallback::Passing::Events {
                        chat: matches!(answer, Answer::ChatStream(_)),
                        late: false,
                    },
                };
                let res = fallback::call(&shared, failed.record, fallback, passing, pending).await;
                return with_protocol(res, protocol);
            }
            return reject(failed.record, failed.error, protocol);
        }
    };
    let res = match answer {
        Answer::ResponsesStream | Answer::ChatStream(_) => {
            let mut extra = extra;
            answer_headers(&mut extra, &committed);
            if let Some(p) = &mut pending {
                p.served_by(committed.lease.account_id());
            }
            let relay = Relay::new(
                committed,
                answer.mode(created),
                shared.metrics.clone(),
                pre_send,
            )
            .refill_output(refill)
            .keep(pending);
            respond(
                relay_body(BodyState::Relaying(Box::new(relay))),
                "text/event-stream",
                &extra,
            )
        }
        Answer::ResponsesJson | Answer::ChatJson(_) => {
            // For an assembled answer, the gateway's own share is the work before the upstream
            // call.
            shared.metrics.overhead(pre_send);
            let assembly = Assembly {
                answer: &answer,
                created,
                protocol,
                fallback,
            };
            assembled(&shared, committed, assembly, extra, pending).await
        }
    };
    with_protocol(res, protocol)
}

/// What an assembled answer is assembled into.
struct Assembly<'a> {
    answer: &'a Answer,
    created: i64,
    protocol: Protocol,
    /// Where the client's request goes when no account is left to try again.
    fallback: FallbackRequest,
}

/// An assembled (non-streaming) answer. The client sees nothing until it is complete, so an
/// upstream that fails part-way (cut off, garbled, a failure event another account may not
/// have) goes to the attempt loop again, the next account, as a failure before the first event
/// does: "fails over before the client sees a byte" holds for the whole answer.
async fn assembled(
    shared: &Shared,
    mut committed: Committed,
    how: Assembly<'_>,
    mut extra: Vec<(&'static str, HeaderValue)>,
    mut pending: Option<Box<Pending>>,
) -> Response {
    let ours = extra.len();
    loop {
        extra.truncate(ours);
        answer_headers(&mut extra, &committed);
        if let Some(p) = &mut pending {
            p.served_by(committed.lease.account_id());
        }
        let collected = match how.answer {
            Answer::ChatJson(opts) => {
                collect(committed, ChatAssembler::new(opts, how.created)).await
            }
            _ => collect(committed, ResponseAssembler::new()).await,
        };
        let call = match collected {
            Ok(json) => {
                if let Some(p) = pending
                    && let Some(id) = response_id(&json)
                {
                    p.finish(&id, &json);
                }
                return respond(Body::from(json), "application/json", &extra);
            }
            Err(Missed::Final(e)) => return e.into_response(),
            Err(Missed::Retry(call)) => call,
        };
        committed =
            match upstream::run(&shared.pool, &shared.upstream, &shared.metrics, *call).await {
                Ok(c) => c,
                // No account left: the fallback upstream when there is one, else the client (and
                // the log) hear what went wrong on the last account tried, and when an account is
                // back (the pool's `Retry-After`).
                Err(failed) if failed.no_account && shared.upstream.fallback.is_some() => {
                    let (record, req) = (failed.record, how.fallback);
                    let passing = fallback::Passing::Whole;
                    return fallback::call(shared, record, req, passing, pending).await;
                }
                Err(failed) => return reject(failed.record, failed.error, how.protocol),
            };
    }
}

/// A model request read and checked up to its adapter: the key, the record, the body.
pub(crate) struct Intake {
    shared: Arc<Shared>,
    key: Arc<codexpool_core::PlatformKey>,
    headers: HeaderMap,
    record: Record,
    arrived: Instant,
    /// The client's body.
    pub bytes: Bytes,
    protocol: Protocol,
    /// The Codex CLI is the client: its body and headers go upstream as sent.
    codex: bool,
    /// The session of the kept response this request continues (see [`upstream::session_id`]).
    pub continued_session: Option<Arc<str>>,
}

impl Intake {
    /// Starts the record and reads the body (415/413/400 answered here).
    pub async fn read(
        shared: Arc<Shared>,
        key: Arc<codexpool_core::PlatformKey>,
        headers: HeaderMap,
        body: Body,
        route: &str,
        protocol: Protocol,
    ) -> Result<Self, Response> {
        let mut record = Record::new(
            shared.pool.clone(),
            request_id(&headers),
            route,
            Some(key.id.clone()),
        )
        .ended_by(&shared.stopping);
        let arrived = Instant::now();
        let bytes = match read_body(&headers, body, shared.max_body, shared.body_idle).await {
            Ok(b) => b,
            Err(e) => return Err(reject(record, e, protocol)),
        };
        record.entry.body_preview = preview(&bytes, shared.preview_max);
        let codex = protocol == Protocol::Codex;
        Ok(Self {
            shared,
            key,
            headers,
            record,
            arrived,
            bytes,
            protocol,
            codex,
            continued_session: None,
        })
    }

    /// What the key binds (model, reasoning effort), for the adapters.
    pub fn overrides(&self) -> Overrides<'_> {
        bound(&self.key)
    }

    /// Refuses the request before any upstream call.
    pub fn reject(self, error: ApiError) -> Response {
        reject(self.record, error, self.protocol)
    }

    /// Notes the adapted request, checks the key may use its model, and builds the call.
    fn into_call(
        mut self,
        up: UpstreamRequest,
        path: &'static str,
        sse: bool,
    ) -> Result<(Call, Parts), Box<Response>> {
        self.record.entry.model = Some(up.model.clone());
        self.record.entry.stream = up.stream;
        if let Err(e) = self.key.resolve_model(Some(&up.model)) {
            return Err(Box::new(self.reject(ApiError::from_key(&e))));
        }
        let extra = up
            .dropped_params_header()
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .map(|v| vec![("x-codexpool-dropped-params", v)])
            .unwrap_or_default();
        let session = upstream::session_id(
            &self.headers,
            &self.key,
            up.prompt_cache_key.as_deref(),
            self.continued_session.as_deref(),
            &up.body,
            up.opening.as_ref(),
        );
        let fallback_key = Arc::clone(&self.key);
        let call = Call {
            forward_headers: self.codex.then(|| upstream::forwardable(&self.headers)),
            key: self.key,
            body: up.body,
            model: up.model,
            path,
            sse,
            session,
            record: self.record,
            arrived: self.arrived,
            assembled: false,
            failed: None,
            failing: Duration::ZERO,
            part_way: 0,
        };
        Ok((
            call,
            Parts {
                shared: self.shared,
                extra,
                protocol: self.protocol,
                client_body: self.bytes,
                key: fallback_key,
            },
        ))
    }

    /// Sends a streamed (`sse`) call and answers as `answer` asks; `fallback_path` is where the
    /// fallback upstream takes the client's own body; `pending` is the answer to keep.
    pub async fn dispatch(
        self,
        up: UpstreamRequest,
        answer: Answer,
        fallback_path: &'static str,
        mut pending: Option<Box<Pending>>,
    ) -> Response {
        match self.into_call(up, "/responses", true) {
            Ok((call, p)) => {
                if let Some(pending) = &mut pending {
                    pending.in_session(&call.session.id);
                }
                let fallback = FallbackRequest {
                    body: p.client_body,
                    path: fallback_path,
                    key: p.key,
                };
                dispatch(
                    p.shared, call, answer, p.extra, p.protocol, fallback, pending,
                )
                .await
            }
            Err(res) => *res,
        }
    }

    /// Sends a call whose answer is JSON, relayed as is.
    pub async fn dispatch_json(self, up: UpstreamRequest, path: &'static str) -> Response {
        let (call, p) = match self.into_call(up, path, false) {
            Ok(x) => x,
            Err(res) => return *res,
        };
        match upstream::run(&p.shared.pool, &p.shared.upstream, &p.shared.metrics, call).await {
            Ok(c) => {
                let mut extra = p.extra;
                answer_headers(&mut extra, &c);
                let res = match crate::relay::whole_body(c).await {
                    Ok(json) => respond(json.into(), "application/json", &extra),
                    Err(error) => error.into_response(),
                };
                with_protocol(res, p.protocol)
            }
            Err(failed) => reject(failed.record, failed.error, p.protocol),
        }
    }
}

/// What a call leaves behind for the answer.
struct Parts {
    shared: Arc<Shared>,
    extra: Vec<(&'static str, HeaderValue)>,
    protocol: Protocol,
    client_body: Bytes,
    key: Arc<codexpool_core::PlatformKey>,
}

/// A 404 in the OpenAI shape for unknown routes (naming the path the client sent, also when the
/// gateway is nested under a prefix).
pub(crate) async fn not_found(uri: axum::extract::OriginalUri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

/// A 405 in the OpenAI shape.
pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::extract::OriginalUri,
) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

/// `GET /health`.
pub(crate) async fn health(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    let accounts = shared.pool.accounts();
    let all = accounts.list(&Default::default());
    let usable = all
        .iter()
        .filter(|a| accounts.runtime(&a.id).is_ok_and(|r| r.usable))
        .count();
    axum::Json(
        serde_json::json!({"status": "ok", "accounts": all.len(), "usable_accounts": usable}),
    )
    .into_response()
}

/// `GET /metrics`.
pub(crate) async fn metrics(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    let text = shared.metrics.render_scrape(&shared.pool);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
