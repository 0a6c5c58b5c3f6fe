//! Prometheus metrics: lock-free counters and histograms (fixed label sets in arrays of atomics,
//! so recording costs a few relaxed atomic adds), the `MetricsLayer` that counts every request
//! and times it until its body ends, and the text exposition for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use codexpool_core::Pool;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use crate::body::Guarded;

/// The routes metrics are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/chat/completions`
    Chat,
    /// `GET /v1/models`
    Models,
    /// Everything else (health, metrics, rpc, 404s).
    Other,
}

impl Route {
    const ALL: [Route; 4] = [Route::Responses, Route::Chat, Route::Models, Route::Other];

    fn of(path: &str) -> Self {
        match path.trim_end_matches('/') {
            p if p.ends_with("/v1/responses") || p.ends_with("/v1/responses/compact") => {
                Self::Responses
            }
            p if p.ends_with("/v1/chat/completions") => Self::Chat,
            p if p.ends_with("/v1/models") => Self::Models,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::Chat => "chat_completions",
            Self::Models => "models",
            Self::Other => "other",
        }
    }
}

/// Which dialect a request spoke (set by the handler as a response extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OpenAI Chat Completions.
    Chat,
    /// OpenAI Responses.
    Responses,
    /// The Codex CLI's own dialect, forwarded as sent.
    Codex,
    /// Not a model request.
    #[default]
    None,
}

impl Protocol {
    const ALL: [Protocol; 4] = [
        Protocol::Chat,
        Protocol::Responses,
        Protocol::Codex,
        Protocol::None,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Chat => "openai_chat",
            Self::Responses => "openai_responses",
            Self::Codex => "codex",
            Self::None => "none",
        }
    }
}

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Committed: output reached the client.
    Ok,
    /// Usage limit reached.
    UsageLimit,
    /// Short rate limit.
    RateLimited,
    /// 401 (before or after the refresh).
    Unauthorized,
    /// Challenge page.
    Challenge,
    /// Account deactivated.
    Deactivated,
    /// 5xx, overload, garbage, a cut before output.
    ServerError,
    /// Could not connect / send.
    Connect,
    /// Silent for longer than the idle timeout.
    Timeout,
    /// The request itself was refused (not retried).
    BadRequest,
}

impl Attempt {
    const ALL: [Attempt; 10] = [
        Attempt::Ok,
        Attempt::UsageLimit,
        Attempt::RateLimited,
        Attempt::Unauthorized,
        Attempt::Challenge,
        Attempt::Deactivated,
        Attempt::ServerError,
        Attempt::Connect,
        Attempt::Timeout,
        Attempt::BadRequest,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UsageLimit => "usage_limit",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Challenge => "challenge",
            Self::Deactivated => "deactivated",
            Self::ServerError => "server_error",
            Self::Connect => "connect_error",
            Self::Timeout => "timeout",
            Self::BadRequest => "bad_request",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket, then one for what lies beyond the last: `+Inf` and the count are their sum,
    /// read once, so a snapshot taken while others observe still only grows bucket to bucket.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = cumulative + self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Every metric of a gateway. Shared (`Arc`) by the layer, the handlers and `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: [[[AtomicU64; 4]; 5]; 4],
    active: AtomicI64,
    attempts: [AtomicU64; 10],
    failovers: AtomicU64,
    fallbacks: AtomicU64,
    shed: AtomicU64,
    refreshes_after_401: AtomicU64,
    header_readings: AtomicU64,
    latency: [Histogram; 4],
    overhead: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts one upstream attempt.
    pub fn attempt(&self, a: Attempt) {
        self.attempts[a as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a move to the next account.
    pub fn failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused at once because the gateway was at its limit (`HTTP_QUEUE_*`).
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request served by the fallback upstream.
    pub fn fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a token refresh after a 401.
    pub fn refresh_after_401(&self) {
        self.refreshes_after_401.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a usage reading taken from `x-codex-*` headers.
    pub fn header_reading(&self) {
        self.header_readings.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time the gateway itself spent on a request (before the upstream call and
    /// between the upstream's first event and the client's first byte).
    pub fn overhead(&self, d: Duration) {
        self.overhead.observe(d);
    }

    /// Requests in flight.
    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with per-account figures read from the pool.
    pub fn render(&self, pool: &Pool) -> String {
        self.render_without(pool, 0)
    }

    /// [`Metrics::render`] for `GET /metrics`, whose own request is in flight while it renders
    /// and is not counted in `codexpool_active_requests` (an idle gateway shows 0, not 1).
    pub(crate) fn render_scrape(&self, pool: &Pool) -> String {
        self.render_without(pool, 1)
    }

    fn render_without(&self, pool: &Pool, scrapes: i64) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP codexpool_requests_total Client requests by route, status class and protocol.\n");
        out.push_str("# TYPE codexpool_requests_total counter\n");
        for (r, route) in Route::ALL.iter().enumerate() {
            for (s, class) in STATUS_CLASSES.iter().enumerate() {
                for (p, proto) in Protocol::ALL.iter().enumerate() {
                    let n = self.requests[r][s][p].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "codexpool_requests_total{{route=\"{}\",status=\"{class}\",protocol=\"{}\"}} {n}",
                            route.label(),
                            proto.label()
                        );
                    }
                }
            }
        }
        out.push_str(
            "# HELP codexpool_active_requests Client requests in flight (until their body ends).\n",
        );
        out.push_str("# TYPE codexpool_active_requests gauge\n");
        let active = (self.active() - scrapes).max(0);
        let _ = writeln!(out, "codexpool_active_requests {active}");
        out.push_str("# HELP codexpool_upstream_attempts_total Upstream attempts by outcome.\n");
        out.push_str("# TYPE codexpool_upstream_attempts_total counter\n");
        for a in Attempt::ALL {
            let _ = writeln!(
                out,
                "codexpool_upstream_attempts_total{{outcome=\"{}\"}} {}",
                a.label(),
                self.attempts[a as usize].load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "codexpool_failovers_total",
                "Moves to the next account before any output.",
                &self.failovers,
            ),
            (
                "codexpool_shed_requests_total",
                "Requests refused with 503 at once: the gateway was at its HTTP_QUEUE_* limit.",
                &self.shed,
            ),
            (
                "codexpool_fallback_requests_total",
                "Requests served by the fallback upstream.",
                &self.fallbacks,
            ),
            (
                "codexpool_token_refreshes_after_401_total",
                "Token refreshes after a 401.",
                &self.refreshes_after_401,
            ),
            (
                "codexpool_usage_header_readings_total",
                "Usage readings taken from x-codex-* headers.",
                &self.header_readings,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let cooldowns = self.attempts[Attempt::RateLimited as usize].load(Ordering::Relaxed)
            + self.attempts[Attempt::ServerError as usize].load(Ordering::Relaxed)
            + self.attempts[Attempt::Connect as usize].load(Ordering::Relaxed)
            + self.attempts[Attempt::Challenge as usize].load(Ordering::Relaxed)
            + self.attempts[Attempt::Timeout as usize].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP codexpool_cooldown_marks_total Accounts put on cooldown after an upstream failure.\n\
             # TYPE codexpool_cooldown_marks_total counter\ncodexpool_cooldown_marks_total {cooldowns}"
        );
        out.push_str("# HELP codexpool_request_duration_seconds Time from request to the end of the response body.\n");
        out.push_str("# TYPE codexpool_request_duration_seconds histogram\n");
        for (r, route) in Route::ALL.iter().enumerate() {
            self.latency[r].render(
                &mut out,
                "codexpool_request_duration_seconds",
                &format!("route=\"{}\"", route.label()),
            );
        }
        out.push_str("# HELP codexpool_gateway_overhead_seconds Time the gateway itself added to a request.\n");
        out.push_str("# TYPE codexpool_gateway_overhead_seconds histogram\n");
        self.overhead
            .render(&mut out, "codexpool_gateway_overhead_seconds", "");
        // Each metric's samples form one group after its HELP and TYPE lines (the text format
        // requires it).
        let accounts: Vec<_> = pool
            .accounts()
            .list(&Default::default())
            .into_iter()
            .filter_map(|a| Some((pool.accounts().runtime(&a.id).ok()?, a.id)))
            .collect();
        out.push_str("# HELP codexpool_account_inflight Requests in flight per account.\n");
        out.push_str("# TYPE codexpool_account_inflight gauge\n");
        for (rt, id) in &accounts {
            let _ = writeln!(
                out,
                "codexpool_account_inflight{{account=\"{id}\"}} {}",
                rt.inflight
            );
        }
        out.push_str(
            "# HELP codexpool_account_usable Whether the account could take a request now.\n",
        );
        out.push_str("# TYPE codexpool_account_usable gauge\n");
        for (rt, id) in &accounts {
            let _ = writeln!(
                out,
                "codexpool_account_usable{{account=\"{id}\"}} {}",
                u8::from(rt.usable)
            );
        }
        out
    }
}

/// Counts and times every request until its response body ends.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    R: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    R::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = Route::of(req.uri().path());
        let metrics = self.metrics.clone();
        metrics.active.fetch_add(1, Ordering::Relaxed);
        let guard = Finish {
            metrics,
            route,
            started: Instant::now(),
            status: 0,
            protocol: Protocol::None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut guard = guard;
            let res = fut.await?;
            guard.status = res.status().as_u16();
            guard.protocol = res
                .extensions()
                .get::<Protocol>()
                .copied()
                .unwrap_or_default();
            Ok(res.map(|body| Guarded::wrap(body, guard)))
        })
    }
}

/// Records a request when its response body is done (or dropped, e.g. by a client that left).
struct Finish {
    metrics: Arc<Metrics>,
    route: Route,
    started: Instant,
    status: u16,
    protocol: Protocol,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.active.fetch_sub(1, Ordering::Relaxed);
        // Gone before the response began: 499, as the request log has it (not "1xx").
        let status = if self.status == 0 { 499 } else { self.status };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let r = Route::ALL
            .iter()
            .position(|x| *x == self.route)
            .unwrap_or(3);
        let p = Protocol::ALL
            .iter()
            .position(|x| *x == self.protocol)
            .unwrap_or(3);
        m.requests[r][class][p].fetch_add(1, Ordering::Relaxed);
        m.latency[r].observe(self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets only grow from one bound to the next and end at `+Inf` = `_count`, also in a
    /// snapshot taken while other threads observe.
    #[test]
    fn histogram_snapshots_stay_cumulative_under_concurrent_observations() {
        let h = Arc::new(Histogram::default());
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..200_000_u64 {
                        // Both within the buckets and past the last one.
                        h.observe(Duration::from_millis(if i % 2 == 0 {
                            1
                        } else {
                            1_000_000
                        }));
                    }
                })
            })
            .collect();
        for _ in 0..2_000 {
            let mut out = String::new();
            h.render(&mut out, "t", "");
            let counts: Vec<u64> = out
                .lines()
                .filter(|l| l.starts_with("t_bucket") || l.starts_with("t_count"))
                .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{out}");
            let (inf, count) = (counts[counts.len() - 2], counts[counts.len() - 1]);
            assert_eq!(inf, count, "{out}");
        }
        for w in writers {
            w.join().unwrap();
        }
        let mut out = String::new();
        h.render(&mut out, "t", "");
        assert!(out.contains("t_count 400000"), "{out}");
    }

    /// A client gone before the response began is a 4xx (499 in the request log), not a "1xx".
    #[test]
    fn a_request_left_before_its_answer_counts_as_4xx() {
        let metrics = Arc::new(Metrics::default());
        drop(Finish {
            metrics: metrics.clone(),
            route: Route::ALL[0],
            started: Instant::now(),
            status: 0,
            protocol: Protocol::None,
        });
        let p = Protocol::ALL
            .iter()
            .position(|x| *x == Protocol::None)
            .unwrap();
        let by_class: Vec<u64> = (0..STATUS_CLASSES.len())
            .map(|c| metrics.requests[0][c][p].load(Ordering::Relaxed))
            .collect();
        assert_eq!(by_class, [0, 0, 0, 1, 0]);
    }
}
