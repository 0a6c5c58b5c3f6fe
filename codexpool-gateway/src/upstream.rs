//! The way to the Codex backend: the shared HTTP client, how an upstream request is built
//! (PROTOCOL.md §4 headers, the conversation's stable `session_id`), and the attempt loop that
//! tries accounts until one produces its first semantic event — the point after which the
//! request is committed and never retried.
//!
//! Before that point every failure (connect error, 429, 5xx, a challenge page, `response.failed`,
//! a usage-limit notice, a silent or garbled stream) is reported to the account's lease, which
//! sets its cooldown or exhaustion, and the next account is tried; a 401 refreshes the token once
//! and resends. Nothing has reached the client yet, so the client never sees a failed attempt.
//!
//! The client is hyper's pooled one over rustls (HTTP/2 when the backend offers it): on the
//! benchmark machine a bare relay spent a quarter less CPU per request with it than with reqwest,
//! whose per-request URL and proxy handling showed up in profiles. reqwest still carries the
//! requests when the environment names a proxy for the upstream (`HTTPS_PROXY` and friends,
//! which it understands fully) and those to the fallback upstream.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use bytes::Bytes;
use codexpool_core::http::is_cloudflare_challenge;
use codexpool_core::{
    Config, Demand, Lease, Outcome, PlatformKey, Pool, PoolError, Secret, Timestamp,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::{Digest, Sha256};

use crate::adapt::event::MAX_NOTICE_LEN;
use crate::adapt::{
    EventKind, FailureKind, Preflight, UpstreamFailure, classify_error_body, message_text,
    preflight_item, usage_limit_notice,
};
use crate::error::{ApiError, UPSTREAM_TIMEOUT, UPSTREAM_UNREACHABLE};
use crate::metrics::{Attempt, Metrics};
use crate::record::Record;
use crate::sse::{SseItem, SseReader, read_chunk};

pub use codexpool_core::auth::CODEX_VERSION;
/// Most bytes of a non-200 upstream body read to classify it.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The upstream's answer body as a stream of chunks.
pub(crate) type ByteStream = BoxStream<'static, Result<Bytes, BodyError>>;

/// The upstream body broke off (its description names no URL).
#[derive(Debug)]
pub(crate) struct BodyError(String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request that got no answer.
struct SendError {
    /// No connection could be made.
    connect: bool,
    /// The connection closed or was reset before any answer: most likely a pooled connection
    /// the upstream had closed as idle (without saying so), which a new one mends.
    closed: bool,
    message: String,
}

impl SendError {
    fn of(e: &(dyn std::error::Error + 'static), connect: bool, message: String) -> Self {
        Self {
            connect,
            closed: !connect && closed_before_answer(e),
            message,
        }
    }
}

/// Whether a send failed because its connection closed or was reset before the answer's head.
fn closed_before_answer(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An upstream answer: its head, and its body as it comes.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: ByteStream,
}

/// An error and its causes on one line ("a: b: c"), each said once.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

type DirectClient = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// hyper's pooled client over rustls, one per thread: a request goes out on a connection of the
/// thread that serves it, so the connection's task (spawned where the connection was made) runs
/// beside the request's own instead of handing every chunk to another thread. The server runs
/// each client connection on one thread ([`crate::Server`]); a bare relay built that way served
/// 19 % more requests at concurrency 32 than on a multi-threaded runtime, and with one client
/// shared by its threads only 4 % more.
struct Direct {
    /// Cloned into each thread's client (it shares the TLS configuration).
    connector: HttpsConnector<HttpConnector>,
    /// `UPSTREAM_KEEPALIVE_SECS`, for the threads' clients.
    keepalive: Duration,
    /// Names this upstream in the threads' client lists; dead entries are dropped lazily.
    key: Arc<()>,
}

thread_local! {
    /// This thread's clients, one per live [`Direct`].
    static DIRECT_CLIENTS: std::cell::RefCell<Vec<(std::sync::Weak<()>, DirectClient)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Direct {
    fn new(config: &Config) -> Result<Self, String> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let verifier =
            rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| e.to_string())?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.upstream_connect_timeout));
        // A connection that died without a close (a network change, a sleeping laptop) is found
        // by keep-alives, not by the requests sent on it (they would wait out the idle timeout).
        http.set_keepalive(Some(config.upstream_keepalive));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            connector,
            keepalive: config.upstream_keepalive,
            key: Arc::new(()),
        })
    }

    /// Sends `req` with this thread's client (made on the thread's first request).
    fn request(&self, req: Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        DIRECT_CLIENTS.with_borrow_mut(|clients| {
            // A live weak pointer keeps its allocation, so the address names one `Direct`.
            let key = Arc::as_ptr(&self.key);
            if let Some((_, client)) = clients.iter().find(|(k, _)| k.as_ptr() == key) {
                return client.request(req);
            }
            clients.retain(|(k, _)| k.strong_count() > 0);
            // One HTTP/2 connection carries every request of the thread: pings find it dead
            // (and the pool drops it) before requests wait on it.
            let client = HyperClient::builder(TokioExecutor::new())
                .http2_keep_alive_interval(self.keepalive)
                .http2_keep_alive_timeout(self.keepalive)
                .http2_keep_alive_while_idle(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(self.connector.clone());
            let answer = client.request(req);
            clients.push((Arc::downgrade(&self.key), client));
            answer
        })
    }
}

/// Client headers never forwarded to the backend (credentials, hop-by-hop, framing, encodings
/// we would have to decode, what proxies in front of the gateway add: the user's address, a
/// CDN's access token). Also never: `x-forwarded-*`, `cf-*`, and what `Connection` names.
const NOT_FORWARDED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "forwarded",
    "via",
    "x-real-ip",
    "true-client-ip",
    "cdn-loop",
    "expect",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-connection",
    "accept-encoding",
    "cookie",
    "chatgpt-account-id",
];

// Header names as constants: a `&str` name is parsed (and, for non-standard names, allocated)
// on every insert.
const ORIGINATOR: HeaderName = HeaderName::from_static("originator");
const VERSION: HeaderName = HeaderName::from_static("version");
const OPENAI_BETA: HeaderName = HeaderName::from_static("openai-beta");
const SESSION_ID: HeaderName = HeaderName::from_static("session_id");
const CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");

/// The HTTP client and fixed request parts, built once per gateway.
pub(crate) struct Upstream {
    /// hyper's pooled client: the hot path. `None` when the environment sends the upstream
    /// through a proxy; `client` carries its requests then.
    direct: Option<Direct>,
    /// For the fallback upstream, and the upstream itself behind a proxy.
    client: reqwest::Client,
    base: String,
    /// `{base}/responses`, parsed once.
    responses_uri: Option<Uri>,
    pub idle_timeout: Duration,
    originator: HeaderValue,
    user_agent: HeaderValue,
    cookie: Option<HeaderValue>,
    pub fallback: Option<Fallback>,
    /// `true` once a stopping server's grace is over: an attempt under way ends, and committed
    /// answers are given it ([`crate::sse::SseReader::stop_on`]).
    stop: tokio::sync::watch::Receiver<bool>,
}

/// The OpenAI-compatible upstream used when no account can serve.
pub(crate) struct Fallback {
    pub base: String,
    pub key: Option<Secret>,
    /// Its own client: it may be on loopback (a local model server) while the upstream is not.
    pub client: reqwest::Client,
}

/// A reqwest client for `base`: proxies from the environment, except for a loopback address
/// (a proxy elsewhere could not reach it).
fn reqwest_client(config: &Config, base: &str) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.upstream_connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(config.upstream_keepalive)
        .http2_keep_alive_interval(config.upstream_keepalive)
        .http2_keep_alive_timeout(config.upstream_keepalive)
        .http2_keep_alive_while_idle(true);
    if codexpool_core::config::is_loopback_url(base) {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| describe(&e))
}

fn header_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

impl Upstream {
    pub fn new(config: &Config, stop: tokio::sync::watch::Receiver<bool>) -> Result<Self, String> {
        let base = config.upstream_base_url.trim_end_matches('/').to_string();
        let client = reqwest_client(config, &base)?;
        let responses_uri = format!("{base}/responses").parse::<Uri>().ok();
        // The proxy variables as curl and reqwest read them (`HTTPS_PROXY`, `NO_PROXY`, …),
        // never for a loopback upstream.
        let behind_proxy = !codexpool_core::config::is_loopback_url(&base)
            && responses_uri
                .as_ref()
                .is_some_and(|u| Matcher::from_system().intercept(u).is_some());
        let direct = if behind_proxy {
            tracing::info!("the upstream is reached through the proxy the environment names");
            None
        } else {
            Some(Direct::new(config)?)
        };
        Ok(Self {
            direct,
            client,
            responses_uri,
            base,
            idle_timeout: config.upstream_stream_idle_timeout,
            originator: header_value(&config.originator)
                .unwrap_or(HeaderValue::from_static("codex_cli_rs")),
            user_agent: header_value(codexpool_core::auth::codex_user_agent())
                .unwrap_or(HeaderValue::from_static("codex_cli_rs")),
            // Sensitive: kept out of HTTP/2 header compression tables and `Debug` output.
            cookie: config
                .upstream_cookie
                .as_ref()
                .and_then(|c| header_value(c.expose()))
                .map(|mut c| {
                    c.set_sensitive(true);
                    c
                }),
            fallback: config
                .upstream_fallback_base_url
                .as_ref()
                .map(|b| {
                    Ok::<_, String>(Fallback {
                        base: b.trim_end_matches('/').to_string(),
                        key: config.upstream_fallback_api_key.clone(),
                        client: reqwest_client(config, b)?,
                    })
                })
                .transpose()?,
            stop,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn url(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    /// The URI of an upstream path, pre-parsed for the hot one.
    fn request_uri(&self, suffix: &str) -> Result<Uri, SendError> {
        match &self.responses_uri {
            Some(u) if suffix == "/responses" => Ok(u.clone()),
            _ => self.url(suffix).parse().map_err(|e| SendError {
                connect: false,
                closed: false,
                message: format!("invalid upstream URL: {e}"),
            }),
        }
    }

    /// Who we are, as the Codex CLI says it: `originator`, `User-Agent`, `version`.
    pub(crate) fn client_headers(&self, headers: &mut HeaderMap) {
        headers.insert(ORIGINATOR, self.originator.clone());
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        headers.insert(VERSION, HeaderValue::from_static(CODEX_VERSION));
    }

    /// Whose request it is: the account's token and id (and the configured cookie).
    pub(crate) fn account_headers(&self, headers: &mut HeaderMap, lease: &Lease, token: &Secret) {
        match header_value(&format!("Bearer {}", token.expose())) {
            Some(mut v) => {
                // Kept out of HTTP/2 header compression tables and `Debug` output.
                v.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, v);
            }
            None => {
                tracing::warn!(account = %lease.account_id(), "the account's access token cannot be sent in a header; sign it in again")
            }
        }
        if let Some(id) = lease
            .account()
            .chatgpt_account_id
            .as_deref()
            .and_then(header_value)
        {
            headers.insert(CHATGPT_ACCOUNT_ID, id);
        }
        if let Some(c) = &self.cookie {
            headers.insert(header::COOKIE, c.clone());
        }
    }

    /// Sends one attempt: the body to `{base}{path}` as the leased account.
    async fn send(
        &self,
        call: &Call,
        body: Bytes,
        lease: &Lease,
        token: &Secret,
    ) -> Result<Answer, SendError> {
        let mut headers = HeaderMap::with_capacity(16);
        match &call.forward_headers {
            // The Codex CLI already speaks the backend's dialect: its headers go as sent.
            Some(h) => {
                headers.clone_from(h);
                // The turn state routes the turn within the account that issued it.
                if lease.moved() {
                    headers.remove(TURN_STATE);
                }
                // The backend wants a session; a client that sent none gets the derived one.
                if !headers.contains_key(SESSION_ID)
                    && !headers.contains_key("session-id")
                    && let Some(v) = header_value(&call.session.id)
                {
                    headers.insert(SESSION_ID, v);
                }
            }
            None => {
                self.client_headers(&mut headers);
                headers.insert(
                    OPENAI_BETA,
                    HeaderValue::from_static("responses=experimental"),
                );
                if let Some(v) = header_value(&call.session.id) {
                    headers.insert(SESSION_ID, v);
                }
            }
        }
        // A JSON answer (compaction) keeps the Codex CLI's own `Accept`.
        if call.sse {
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        } else if !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.account_headers(&mut headers, lease, token);
        match &self.direct {
            Some(client) => {
                let mut req = Request::new(Full::new(body));
                *req.method_mut() = Method::POST;
                *req.uri_mut() = self.request_uri(call.path)?;
                *req.headers_mut() = headers;
                let res = client
                    .request(req)
                    .await
                    .map_err(|e| SendError::of(&e, e.is_connect(), describe(&e)))?;
                let (head, body) = res.into_parts();
                Ok(Answer {
                    status: head.status,
                    headers: head.headers,
                    body: body
                        .into_data_stream()
                        .map(|r| r.map_err(|e| BodyError(describe(&e))))
                        .boxed(),
                })
            }
            None => {
                let res = self
                    .client
                    .post(self.url(call.path))
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SendError::of(&e, e.is_connect(), without_url(&e)))?;
                Ok(Answer {
                    status: res.status(),
                    headers: res.headers().clone(),
                    body: res
                        .bytes_stream()
                        .map(|r| r.map_err(|e| BodyError(without_url(&e))))
                        .boxed(),
                })
            }
        }
    }
}

/// The headers of a Codex CLI request that go upstream as sent.
pub(crate) fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let hop_by_hop = |name: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|listed| listed.trim().eq_ignore_ascii_case(name))
    };
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name_str = name.as_str();
        if !NOT_FORWARDED.contains(&name_str)
            && !name_str.starts_with("x-forwarded-")
            && !name_str.starts_with("cf-")
            && !hop_by_hop(name_str)
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The conversation a request belongs to, as sent upstream in `session_id`, and the key it is
/// pinned to its account under (see [`Session`]).
///
/// The conversation is the client's session header, else its `prompt_cache_key`, else the
/// session of the kept response it continues (`continued`: its `previous_response_id`), else a
/// fingerprint of how the conversation starts (instructions and first input item, which stay
/// the same turn after turn: the `opening` spans of `body` when the adapter knows them, else
/// found by parsing). A derived one is mixed with the key id, so two keys never share a
/// session, and hashed into a UUID-shaped id (stable ids are what give prompt-cache hits
/// upstream).
pub(crate) fn session_id(
    headers: &HeaderMap,
    key: &PlatformKey,
    prompt_cache_key: Option<&str>,
    continued: Option<&str>,
    body: &[u8],
    opening: Option<&[Range<usize>; 2]>,
) -> Session {
    let header = [
        "session_id",
        "session-id",
        "x-session-id",
        "conversation_id",
        "conversation-id",
    ]
    .into_iter()
    .find_map(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    });
    let id = match header.or(continued.filter(|_| prompt_cache_key.is_none())) {
        Some(id) => id.to_owned(),
        None => {
            let mut h = Sha256::new();
            h.update(b"codexpool-session\0");
            h.update(key.id.as_bytes());
            h.update(b"\0");
            match prompt_cache_key {
                Some(k) => h.update(k.as_bytes()),
                None => match opening {
                    Some(spans) => {
                        for span in spans {
                            h.update(&body[span.clone()]);
                        }
                    }
                    None => h.update(conversation_fingerprint(body)),
                },
            }
            uuid_shaped(&h.finalize())
        }
    };
    // The pin is scoped to the key and of fixed size: two keys sending `x-session-id: default`
    // must not move each other's conversations, and a long header is not kept per
    // conversation. Made from the id alone, so a turn that continues a kept response (and
    // inherits its id) keeps its pin.
    let mut h = Sha256::new();
    h.update(b"codexpool-pin\0");
    h.update(key.id.as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    Session {
        pin: uuid_shaped(&h.finalize()),
        id,
    }
}

/// 8-4-4-4-12 hex digits of the first 16 bytes of a digest, written in place (one allocation).
fn uuid_shaped(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, b) in digest[..16].iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    id
}

/// `work`'s output, or `None` when the server's shutdown grace ends first.
async fn until_stopped<F: Future>(upstream: &Upstream, work: F) -> Option<F::Output> {
    let mut stop = upstream.stop.clone();
    tokio::select! {
        biased;
        out = work => Some(out),
        Ok(_) = stop.wait_for(|stopping| *stopping) => None,
    }
}

/// The answer to a request the server's shutdown ended before an account answered it.
fn stopped(mut record: Record) -> Failed {
    let error = ApiError::server_stopped();
    record.entry.error_class = Some(error.code.clone());
    Failed {
        error,
        record,
        no_account: false,
    }
}

/// A request's conversation.
pub(crate) struct Session {
    /// The `session_id` sent upstream: the client's own id as it sent it, else a derived one.
    pub id: String,
    /// What the pool pins the conversation to its account under.
    pub pin: String,
}

/// One client request on its way upstream.
pub(crate) struct Call {
    pub key: Arc<PlatformKey>,
    pub body: Bytes,
    pub model: String,
    /// `/responses` or `/responses/compact`.
    pub path: &'static str,
    /// Whether the answer is an SSE stream (read up to its first semantic event before
    /// committing); `false` for JSON answers, committed on a 200.
    pub sse: bool,
    /// Set for Codex CLI clients: their headers, forwarded as sent.
    pub forward_headers: Option<HeaderMap>,
    pub session: Session,
    pub record: Record,
    pub arrived: Instant,
    /// The answer is assembled before the client sees any of it: the conversation moves to an
    /// account only with a whole answer (see `relay::collect`), not at its first event.
    pub assembled: bool,
    /// What the last account tried failed with: what the client hears when no account is left.
    pub failed: Option<ApiError>,
    /// Time spent on attempts that failed: past two idle timeouts the request tries no further
    /// account (a client kept waiting a timeout per account could wait for hours). Two silent
    /// upstreams end it so, and so do slow failures (a proxy's 524 after 100 s on each), also
    /// those of assembled answers that failed part-way.
    pub failing: Duration,
    /// Part-way failures of an assembled answer (not counting an account's own usage or rate
    /// limit, which says nothing of the request): at [`PART_WAY_TRIES`] no further account is
    /// tried (each try was generated, and billed, up to its failure; a request the backend
    /// keeps failing would otherwise cost, and cool down, every account), and the fallback
    /// upstream, if any, gets it as when no account is left.
    pub part_way: u8,
}

/// The upstream's answer as events.
pub(crate) type Events = SseReader<ByteStream>;

/// An upstream answer read up to its first semantic event.
pub(crate) struct Opened {
    /// Its events, those read so far first (the semantic event last).
    pub events: Events,
    /// When the first semantic event arrived (for the gateway-overhead metric).
    pub first_event: Instant,
}

/// An attempt that produced its first semantic event: the client gets this one.
pub(crate) struct Committed {
    pub lease: Lease,
    pub stream: Opened,
    /// When the attempt began (its request was sent).
    pub started: Instant,
    /// The call, its record included: an assembled answer that fails part-way goes to the
    /// attempt loop again (see `routes::assembled`).
    pub call: Call,
    /// Upstream headers the client needs too (Codex CLI clients only, see [`CODEX_ANSWER_HEADERS`]).
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// Answer headers the Codex CLI acts on: the turn's sticky-routing token (replayed on every
/// request of the turn), the model catalogue's ETag, and whether reasoning was included. The
/// `x-codex-*` usage headers stay here: they describe one account of the pool, and the CLI would
/// stop at that account's limit although others have quota.
pub(crate) const CODEX_ANSWER_HEADERS: [&str; 3] = [
    "x-codex-turn-state",
    "x-models-etag",
    "x-reasoning-included",
];

/// The request header a client replays its turn state in.
const TURN_STATE: &str = "x-codex-turn-state";

/// Why no attempt committed.
pub(crate) struct Failed {
    pub error: ApiError,
    pub record: Record,
    /// No account could take the request at all (the fallback upstream may).
    pub no_account: bool,
}

pub(crate) fn outcome_of(f: &UpstreamFailure, now: Timestamp) -> (Option<Outcome>, Attempt) {
    match &f.kind {
        FailureKind::UsageLimit {
            resets_at,
            resets_in,
        } => {
            // "In N seconds" first: counted from our clock, it holds when that clock is off.
            let resets_at = resets_in
                .map(|s| now.plus(Duration::from_secs(s)))
                .or_else(|| resets_at.map(Timestamp::from_secs));
            (Some(Outcome::UsageLimit { resets_at }), Attempt::UsageLimit)
        }
        FailureKind::RateLimited { retry_after } => (
            Some(Outcome::RateLimited {
                retry_after: retry_after.map(Duration::from_secs),
            }),
            Attempt::RateLimited,
        ),
        FailureKind::Challenge => (Some(Outcome::Challenge), Attempt::Challenge),
        FailureKind::Deactivated => (
            Some(Outcome::Banned {
                reason: f
                    .code
                    .clone()
                    .unwrap_or_else(|| "account_deactivated".into()),
            }),
            Attempt::Deactivated,
        ),
        FailureKind::Unauthorized => (Some(Outcome::Unauthorized), Attempt::Unauthorized),
        FailureKind::BadRequest => (None, Attempt::BadRequest),
        _ => (
            Some(Outcome::UpstreamError),
            match f.code.as_deref() {
                Some(UPSTREAM_TIMEOUT) => Attempt::Timeout,
                Some(UPSTREAM_UNREACHABLE) => Attempt::Connect,
                _ => Attempt::ServerError,
            },
        ),
    }
}

fn failure(kind: FailureKind, code: &str, message: String) -> UpstreamFailure {
    UpstreamFailure {
        kind,
        status: None,
        code: Some(code.into()),
        message,
        param: None,
    }
}

/// How one attempt on one account ended.
// A return value moved once per attempt: boxing the big variant would cost an allocation per
// request for nothing.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// With the answer headers the client gets too.
    Committed(Opened, Vec<(&'static str, HeaderValue)>),
    /// Try the next account.
    Next(UpstreamFailure),
    /// Stop: answer the client with this.
    Stop(UpstreamFailure),
}

impl Step {
    /// After a failure: the next account, unless the request itself is at fault (another
    /// account would refuse it too), whether it came as an HTTP error or inside a 200 stream.
    fn after(f: UpstreamFailure) -> Self {
        if f.retry_elsewhere() {
            Step::Next(f)
        } else {
            Step::Stop(f)
        }
    }
}

/// How many idle timeouts a request may spend on attempts that failed before it tries no
/// further account.
const FAILING_BUDGET_IDLES: u32 = 2;

/// Accounts an assembled answer may fail part-way on (see [`Call::part_way`]).
const PART_WAY_TRIES: u8 = 2;

/// Tries accounts until one commits. `record` travels with the call and comes back either way.
pub(crate) async fn run(
    pool: &Pool,
    upstream: &Upstream,
    metrics: &Metrics,
    mut call: Call,
) -> Result<Committed, Failed> {
    let budget = upstream.idle_timeout.saturating_mul(FAILING_BUDGET_IDLES);
    // An assembled answer that failed part-way comes back here; past the budget, or the
    // part-way failures it may have, its failure is the answer (or the fallback's).
    if (call.failing >= budget || call.part_way >= PART_WAY_TRIES)
        && let Some(error) = call.failed.take()
    {
        call.record.entry.error_class = Some(error.code.clone());
        return Err(Failed {
            error,
            record: call.record,
            no_account: true,
        });
    }
    let portable = std::sync::OnceLock::new();
    let key = call.key.clone();
    let groups = (!key.allowed_groups.is_empty()).then_some(key.allowed_groups.as_slice());
    loop {
        // The log row's list of accounts tried is also the list the pool must skip.
        let demand = Demand {
            model: Some(&call.model),
            groups,
            affinity: Some(&call.session.pin),
            tried: &call.record.entry.accounts_tried,
        };
        // A stopping server's grace may end first, here (waiting for an account's slot) or
        // during the attempt: no account is blamed, none more is tried.
        let Some(acquired) = until_stopped(upstream, pool.accounts().acquire(&demand)).await else {
            return Err(stopped(call.record));
        };
        let lease = match acquired {
            Ok(l) => l,
            Err(e) => {
                let now = pool.now();
                let error = match (&e, &call.failed) {
                    // The accounts tried here failed (and now cool down because of it): the last
                    // failure says why; exhaustion stays a 429 with its reset time.
                    (PoolError::AllTried { .. } | PoolError::CoolingDown { .. }, Some(f)) => {
                        let mut err = f.clone();
                        if let Some(at) = e.retry_at() {
                            err = err.retry_after(crate::error::retry_after_secs(at, now));
                        }
                        err
                    }
                    _ => ApiError::from_pool(&e, now),
                };
                call.record.entry.error_class = Some(match &call.failed {
                    Some(f) => f.code.clone(),
                    None => error.code.clone(),
                });
                return Err(Failed {
                    error,
                    record: call.record,
                    no_account: true,
                });
            }
        };
        if !call.record.entry.accounts_tried.is_empty() {
            metrics.failover();
        }
        call.record
            .entry
            .accounts_tried
            .push(lease.account_id().to_string());
        let bodies = Bodies {
            call: &call,
            portable: &portable,
        };
        let started = Instant::now();
        let Some(step) =
            until_stopped(upstream, attempt(pool, upstream, metrics, bodies, &lease)).await
        else {
            return Err(stopped(call.record));
        };
        match step {
            Step::Committed(mut stream, headers) => {
                metrics.attempt(Attempt::Ok);
                if !call.assembled {
                    lease.commit();
                }
                stream.events.stop_on(upstream.stop.clone());
                call.record.entry.account_id = Some(lease.account_id().to_string());
                return Ok(Committed {
                    lease,
                    stream,
                    started,
                    call,
                    headers,
                });
            }
            Step::Next(f) => {
                let (outcome, kind) = outcome_of(&f, pool.now());
                metrics.attempt(kind);
                if let Some(o) = outcome {
                    lease.report(o).await;
                }
                call.failing += started.elapsed();
                // An account's own limit is no verdict on the upstream: the others may serve,
                // and when none is left the refusal says when to come back.
                let own_limit = matches!(
                    f.kind,
                    FailureKind::UsageLimit { .. } | FailureKind::RateLimited { .. }
                );
                if call.failing >= budget && !own_limit {
                    call.record.entry.error_class = Some(f.error_code().to_string());
                    return Err(Failed {
                        error: ApiError::from_upstream(&f),
                        record: call.record,
                        // As when no account is left: the fallback upstream may still answer.
                        no_account: true,
                    });
                }
                tracing::debug!(account = %lease.account_id(), failure = %f, "attempt failed; trying the next account");
                call.failed = Some(ApiError::from_upstream(&f));
            }
            Step::Stop(f) => {
                metrics.attempt(Attempt::BadRequest);
                call.record.entry.account_id = Some(lease.account_id().to_string());
                call.record.entry.error_class = Some(f.error_code().to_string());
                return Err(Failed {
                    error: ApiError::from_upstream(&f),
                    record: call.record,
                    no_account: false,
                });
            }
        }
    }
}

/// How many times an attempt is sent again, on the same account, after its connection closed
/// before answering: an upstream (a proxy) that closes idle connections without saying so may
/// have closed several of the pooled ones.
const CLOSED_RESENDS: u32 = 2;

/// One account: send (and once more after a 401 refresh, or after a connection that closed
/// before answering), then read until the first semantic event.
async fn attempt(
    pool: &Pool,
    upstream: &Upstream,
    metrics: &Metrics,
    bodies: Bodies<'_>,
    lease: &Lease,
) -> Step {
    let call = bodies.call;
    let mut token = lease.access_token();
    let mut refreshed = false;
    // A conversation that left its account goes without what that account made for it. (Only
    // then is the body looked into: a long conversation costs a full parse.)
    let mut body = match lease.moved().then(|| bodies.portable()).flatten() {
        Some(p) => p.clone(),
        None => call.body.clone(),
    };
    let mut made_portable = lease.moved();
    // Sends again after a connection that closed before answering (see `SendError::closed`).
    let mut resent_closed = 0;
    let response = loop {
        let sent = tokio::time::timeout(
            upstream.idle_timeout,
            upstream.send(call, body.clone(), lease, &token),
        )
        .await;
        let response = match sent {
            Err(_) => {
                return Step::Next(failure(
                    FailureKind::Server,
                    UPSTREAM_TIMEOUT,
                    "no response headers before the idle timeout".into(),
                ));
            }
            Ok(Err(e)) if e.closed && resent_closed < CLOSED_RESENDS => {
                // The account is not at fault: on a new connection, without a strike.
                resent_closed += 1;
                tracing::debug!(account = %lease.account_id(), error = %e.message, "the upstream connection closed before answering: sending again");
                continue;
            }
            Ok(Err(e)) => {
                let what = if e.connect {
                    "cannot connect"
                } else {
                    "request failed"
                };
                return Step::Next(failure(
                    FailureKind::Server,
                    UPSTREAM_UNREACHABLE,
                    format!("{what}: {}", e.message),
                ));
            }
            Ok(Ok(r)) => r,
        };
        let account = lease.account_id();
        if pool.usage().record_headers(
            account,
            response
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        ) {
            metrics.header_reading();
        }
        if response.status == StatusCode::UNAUTHORIZED && !refreshed {
            refreshed = true;
            metrics.refresh_after_401();
            // Its stream (or pooled connection) is not held through the refresh.
            drop(response);
            match pool
                .auth()
                .refresh_after_unauthorized(account, &token)
                .await
            {
                Ok(t) => {
                    token = t;
                    continue;
                }
                Err(e) => {
                    return Step::Next(failure(
                        FailureKind::Unauthorized,
                        "token_refresh_failed",
                        e.to_string(),
                    ));
                }
            }
        }
        // Bytes no one asked for (a proxy's compression): no parser reads them.
        if let Some(encoding) = unasked_encoding(&response.headers) {
            return Step::after(failure(
                FailureKind::Server,
                "upstream_bad_encoding",
                format!(
                    "upstream answered with content-encoding {encoding}, which was not asked for"
                ),
            ));
        }
        // A 200 that is no event stream where one was asked for (a JSON error, a proxy's page)
        // is read as a refusal: what it says, not a stream that "ended inside an event".
        let no_stream = call.sse && !is_event_stream(&response.headers);
        if response.status != StatusCode::OK || no_stream || is_a_challenge(&response.headers) {
            let f = read_failure(upstream, response).await;
            // Reasoning another account encrypted (the conversation's pin was lost, e.g. by a
            // restart): once more without it, on the same account.
            if f.code.as_deref() == Some(FOREIGN_REASONING)
                && !made_portable
                && let Some(p) = bodies.portable()
            {
                tracing::debug!(account = %account, "resending without another account's reasoning");
                made_portable = true;
                body = p.clone();
                continue;
            }
            return Step::after(f);
        }
        break response;
    };
    let headers = match call.forward_headers {
        Some(_) => CODEX_ANSWER_HEADERS
            .into_iter()
            .filter_map(|name| Some((name, response.headers.get(name)?.clone())))
            .collect(),
        None => Vec::new(),
    };
    if !call.sse {
        let opened = Opened {
            events: Events::new(response.body, upstream.idle_timeout),
            first_event: Instant::now(),
        };
        return Step::Committed(opened, headers);
    }
    match preflight(upstream, response.body).await {
        Ok(opened) => Step::Committed(opened, headers),
        Err(step) => step,
    }
}

/// Most event bytes held back before the first output (reasoning items, progress events): past
/// this the attempt commits, so an upstream that never gets to its output cannot grow the
/// gateway's memory without bound (the relay's idle timeout still watches it).
const PREFLIGHT_HOLD: usize = 4 * 1024 * 1024;

/// How long the rest of a usage-limit notice is waited for.
const NOTICE_READ: Duration = Duration::from_secs(2);

/// A usage-limit notice that began with `text`, read on to the end of its text (briefly) so
/// that the wait it names is known; `None` if it is not a notice after all, and then `read`
/// holds every item read, to serve the answer whole. Not a notice: text too long for one, or
/// text still coming after [`NOTICE_READ`] (the backend writes its notice at once; a model
/// writes at its own pace). Served wrongly, a notice is text a person reads; refused wrongly,
/// an answer would bench a healthy account for hours.
async fn read_notice(
    events: &mut Events,
    mut text: String,
    read: &mut VecDeque<SseItem>,
) -> Option<UpstreamFailure> {
    let until = tokio::time::Instant::now() + NOTICE_READ;
    while text.len() <= MAX_NOTICE_LEN {
        let item = match tokio::time::timeout_at(until, events.next()).await {
            Err(_) => return None,
            Ok(Err(_)) => break,
            Ok(Ok(item)) => item,
        };
        let piece = message_text(&item);
        let terminal = matches!(&item, SseItem::Event(e) if EventKind::of(e).is_terminal());
        read.push_back(item);
        match piece {
            Some((more, false)) => text.push_str(&more),
            Some((whole, true)) => return usage_limit_notice(&whole),
            None if terminal => break,
            None => {}
        }
    }
    usage_limit_notice(&text)
}

/// The backend's code for encrypted reasoning it cannot read (another account made it).
const FOREIGN_REASONING: &str = "invalid_encrypted_content";

/// A call's body, and the same without what belongs to the account that served the conversation
/// so far, made the first time it is needed and shared by the call's attempts.
#[derive(Clone, Copy)]
struct Bodies<'a> {
    call: &'a Call,
    portable: &'a std::sync::OnceLock<Option<Bytes>>,
}

impl Bodies<'_> {
    /// `None` when the body holds nothing account-bound.
    fn portable(&self) -> Option<&Bytes> {
        self.portable
            .get_or_init(|| crate::adapt::without_account_state(&self.call.body))
            .as_ref()
    }
}

/// A Cloudflare page can come with a 200: `cf-mitigated: challenge` or an HTML body where an
/// event stream (or JSON) belongs.
fn is_a_challenge(headers: &HeaderMap) -> bool {
    is_cloudflare_challenge(headers)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("text/html"))
}

/// Whether an answer says it is an event stream, or says nothing (some proxies drop the
/// header; the events then speak for themselves).
fn is_event_stream(headers: &HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers.get(header::CONTENT_TYPE).is_none_or(|ct| {
        let ct = ct.as_bytes().trim_ascii_start();
        ct.len() >= SSE.len() && ct[..SSE.len()].eq_ignore_ascii_case(SSE)
    })
}

/// A `content-encoding` other than `identity` (none is asked for).
fn unasked_encoding(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_ENCODING)?;
    let text = String::from_utf8_lossy(value.as_bytes())
        .trim()
        .to_ascii_lowercase();
    (!text.is_empty() && text != "identity").then(|| text.chars().take(40).collect())
}

/// What a refused answer (non-200, a challenge page, a 200 that is no event stream) says.
async fn read_failure(upstream: &Upstream, response: Answer) -> UpstreamFailure {
    let Answer {
        status,
        headers,
        body,
    } = response;
    let body = read_limited(body, ERROR_BODY_LIMIT, upstream.idle_timeout).await;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let cf = is_cloudflare_challenge(&headers);
    let mut f = classify_error_body(status.as_u16(), content_type, &body, cf);
    if let FailureKind::RateLimited { retry_after: None } = f.kind {
        let ra = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after_secs(v, std::time::SystemTime::now()));
        f.kind = FailureKind::RateLimited { retry_after: ra };
    }
    f
}

/// A `Retry-After` value in seconds: a number of seconds, or an HTTP date (RFC 9110 allows
/// both; a date already past is 0).
fn retry_after_secs(value: &str, now: std::time::SystemTime) -> Option<u64> {
    let value = value.trim();
    value.parse().ok().or_else(|| {
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(now).map_or(0, |d| d.as_secs()))
    })
}

/// Reads until the first semantic event; `Err` is the step to take instead.
async fn preflight(upstream: &Upstream, body: ByteStream) -> Result<Opened, Step> {
    let mut events = Events::new(body, upstream.idle_timeout);
    let mut buffered = VecDeque::new();
    let mut held = 0;
    loop {
        let item = events
            .next()
            .await
            .map_err(|cut| Step::Next(failure(FailureKind::Server, cut.code(), cut.to_string())))?;
        // Comments in a row say one thing (the upstream is alive): one is kept, so a long wait
        // for the first output does not pile them up.
        if matches!(item, SseItem::Comment(_))
            && matches!(buffered.back(), Some(SseItem::Comment(_)))
        {
            continue;
        }
        let mut verdict = preflight_item(&item);
        // Counted with what holding an item costs besides its data.
        held += 64
            + match &item {
                SseItem::Event(e) => e.data().len(),
                SseItem::Comment(c) => c.len(),
            };
        if held > PREFLIGHT_HOLD && matches!(verdict, Preflight::Pending) {
            verdict = Preflight::Semantic;
        }
        buffered.push_back(item);
        match verdict {
            Preflight::Pending => {}
            Preflight::Semantic => {
                events.hand_back(buffered);
                return Ok(Opened {
                    events,
                    first_event: Instant::now(),
                });
            }
            Preflight::Failure(f) => {
                let f = match buffered.back().and_then(message_text) {
                    // A usage-limit notice in the text: the wait it names may come in the
                    // deltas after the phrase.
                    Some((start, false)) => {
                        match read_notice(&mut events, start, &mut buffered).await {
                            Some(notice) => notice,
                            // An answer that begins like one: it is served.
                            None => {
                                events.hand_back(buffered);
                                return Ok(Opened {
                                    events,
                                    first_event: Instant::now(),
                                });
                            }
                        }
                    }
                    _ => f,
                };
                return Err(Step::after(f));
            }
        }
    }
}

/// Reads at most `limit` bytes of a body (the rest is dropped with the connection).
async fn read_limited(mut stream: ByteStream, limit: usize, idle: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        let Ok(Some(chunk)) = read_chunk(&mut stream, idle).await else {
            break;
        };
        out.extend_from_slice(&chunk[..chunk.len().min(limit - out.len())]);
    }
    out
}

/// A reqwest error's text, causes included, without the URL (it may carry query parameters).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut s = describe(e);
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<upstream>");
    }
    s
}

/// How a conversation starts: its instructions and first input item (or, for a body without
/// those, its first 1 KiB). Turn after turn, these bytes stay the same.
fn conversation_fingerprint(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(obj) = crate::adapt::parse_object(body) {
        if let Some(i) = obj.get("instructions") {
            out.extend_from_slice(i.get().as_bytes());
        }
        if let Some(first) = obj
            .get("input")
            .and_then(|raw| {
                serde_json::from_str::<Vec<&serde_json::value::RawValue>>(raw.get()).ok()
            })
            .and_then(|items| items.first().map(|i| i.get().to_string()))
        {
            out.extend_from_slice(first.as_bytes());
        }
    }
    if out.is_empty() {
        out.extend_from_slice(&body[..body.len().min(1024)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::{
        Overrides, UpstreamRequest, apply_body_rules, chat_to_responses, codex_passthrough,
    };

    /// Each thread builds its own client for each live upstream, and forgets the dead ones.
    #[test]
    fn every_thread_has_its_own_client_for_each_upstream() {
        let clients = || DIRECT_CLIENTS.with_borrow(Vec::len);
        let req = || {
            let mut r = Request::new(Full::new(Bytes::new()));
            *r.uri_mut() = Uri::from_static("http://127.0.0.1:9/responses");
            r
        };
        let config = Config::default();
        let a = Direct::new(&config).unwrap();
        let b = Direct::new(&config).unwrap();
        assert_eq!(clients(), 0);
        drop(a.request(req()));
        drop(a.request(req()));
        assert_eq!(clients(), 1);
        drop(b.request(req()));
        assert_eq!(clients(), 2);
        // Another thread: clients of its own, these untouched.
        std::thread::scope(|s| {
            s.spawn(|| {
                drop(a.request(req()));
                assert_eq!(clients(), 1);
            });
        });
        assert_eq!(clients(), 2);
        // A dropped upstream's client goes when this thread next makes one.
        drop(a);
        let c = Direct::new(&config).unwrap();
        drop(c.request(req()));
        assert_eq!(clients(), 2);
        drop(b.request(req()));
        assert_eq!(clients(), 2);
    }

    fn assert_opening_is_the_parsed_fingerprint(up: &UpstreamRequest, body: &str) {
        let opening = up
            .opening
            .as_ref()
            .unwrap_or_else(|| panic!("no opening: {body}"));
        let spans: Vec<u8> = opening
            .iter()
            .flat_map(|span| up.body[span.clone()].iter().copied())
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&spans),
            String::from_utf8_lossy(&conversation_fingerprint(&up.body)),
            "{body}"
        );
    }

    /// The spans the adapters report hold exactly the bytes the parsing fingerprint finds, so a
    /// conversation keeps its session id whichever way it is computed.
    #[test]
    fn the_adapters_opening_is_the_parsed_fingerprint() {
        for body in [
            r#"{"model":"m","messages":[{"role":"system","content":"Be \"brief\"."},
                {"role":"user","content":"hi \u00e9"},{"role":"assistant","content":"yo"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"}]}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"only rules"}]}"#,
        ] {
            let (up, _) = chat_to_responses(body.as_bytes(), &Overrides::default()).unwrap();
            assert_opening_is_the_parsed_fingerprint(&up, body);
        }
        for body in [
            r#"{"model":"m","input":"hi \u00e9"}"#,
            r#"{"model":"m","instructions":"Rules.","input":[
                {"role":"system","content":"lifted"},
                {"type":"message","role":"user","content":[{"type":"input_text","text":"a"}]},
                {"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]}]}"#,
            r#"{"model":"m","input":[]}"#,
        ] {
            let up = apply_body_rules(body.as_bytes(), &Overrides::default()).unwrap();
            assert_opening_is_the_parsed_fingerprint(&up, body);
        }
        // A Codex CLI body, forwarded as sent: the spans come from the split it was read with.
        let long = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(2000));
        for body in [
            r#"{"model":"m","instructions":"Rules.","input":[ {"type":"message","role":"user","content":"a"} ,{"b":1}]}"#,
            r#"{"model":"m","instructions":null,"input":[7, 8]}"#,
            r#"{"model":"m","input":[ "s" ],"instructions":{"x":[1]},"instructions":"last wins"}"#,
            r#"{"model":"m","input":[],"instructions":""}"#,
            r#"{"model":"m","input":"a string"}"#,
            r#"{"model":"m","input":[]}"#,
            r#"{"model":"m"}"#,
            &long,
        ] {
            let up =
                codex_passthrough(Bytes::from(body.to_owned()), &Overrides::default()).unwrap();
            assert_opening_is_the_parsed_fingerprint(&up, body);
        }
        // A rewritten body (a forced model) leaves the fingerprint to the parse.
        let forced = Overrides {
            model: Some("other"),
            ..Overrides::default()
        };
        let body = r#"{"model":"m","instructions":"Rules.","input":[{"a":1}]}"#;
        let up = codex_passthrough(Bytes::from(body), &forced).unwrap();
        assert!(up.opening.is_none());
    }
}
