//! Timed response bodies: a reply is rendered into a list of [`Step`]s (bytes, pauses, a cut, a
//! hang) that a body stream plays back, and a [`StreamGuard`] that lives as long as the answer
//! does, so the fake knows how many answers are open and which ones the client abandoned.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use crate::record::StreamStatus;
use crate::state::Shared;

/// One step of a timed body.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Send these bytes.
    Bytes(Bytes),
    /// Wait.
    Sleep(Duration),
    /// Drop the connection (no proper end of the body).
    Cut,
    /// Send nothing more, until the client goes away.
    Hang,
}

impl Step {
    pub(crate) fn text(s: impl Into<String>) -> Step {
        Step::Bytes(Bytes::from(s.into()))
    }
}

/// Inserts a pause before every `Bytes` step but the first.
pub(crate) fn pace(steps: Vec<Step>, interval: Duration) -> Vec<Step> {
    let mut out = Vec::with_capacity(steps.len() * 2);
    let mut first = true;
    for step in steps {
        if matches!(step, Step::Bytes(_)) {
            if !first {
                out.push(Step::Sleep(interval));
            }
            first = false;
        }
        out.push(step);
    }
    out
}

/// Concatenates steps that are only bytes (for pre-rendered bodies and non-streamed answers).
pub(crate) fn concat(steps: &[Step]) -> Bytes {
    let mut out = Vec::new();
    for step in steps {
        if let Step::Bytes(b) = step {
            out.extend_from_slice(b);
        }
    }
    Bytes::from(out)
}

/// Counts an answer as open from the moment a handler starts until its body is dropped.
pub(crate) struct StreamGuard {
    shared: Arc<Shared>,
    seq: Option<u64>,
    streaming: bool,
    done: bool,
    /// The account whose open answers this one counts among, until its last byte is handed
    /// over (see [`crate::FakeOpenAi::peak_open_streams`]).
    account: Option<String>,
}

impl StreamGuard {
    pub(crate) fn new(shared: &Arc<Shared>, seq: Option<u64>) -> Self {
        shared.open_streams.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: Arc::clone(shared),
            seq,
            streaming: false,
            done: false,
            account: None,
        }
    }

    /// Counts the answer among `account`'s open ones.
    pub(crate) fn of_account(mut self, account: &str) -> Self {
        let mut all = lock(&self.shared.account_streams);
        let (open, peak) = all.entry(account.to_owned()).or_default();
        *open += 1;
        *peak = (*peak).max(*open);
        drop(all);
        self.account = Some(account.to_owned());
        self
    }

    /// The answer's last byte is handed over (or it ended): no longer open for its account.
    fn leave_account(&mut self) {
        if let Some(account) = self.account.take()
            && let Some((open, _)) = lock(&self.shared.account_streams).get_mut(&account)
        {
            *open -= 1;
        }
    }

    /// The answer will be a timed body: record it as an open stream.
    fn start_streaming(&mut self) {
        self.streaming = true;
        if let Some(seq) = self.seq {
            self.shared.set_stream_status(seq, StreamStatus::Open);
        }
    }

    fn finish(&mut self, status: StreamStatus) {
        self.done = true;
        self.leave_account();
        if self.streaming
            && let Some(seq) = self.seq
        {
            self.shared.set_stream_status(seq, status);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.leave_account();
        if !self.done {
            self.shared.cancelled_streams.fetch_add(1, Ordering::SeqCst);
            if let Some(seq) = self.seq {
                self.shared.set_stream_status(seq, StreamStatus::Cancelled);
            }
        }
        self.shared.open_streams.fetch_sub(1, Ordering::SeqCst);
        self.shared.notify.notify_waiters();
    }
}

/// A body that plays `steps` back; the guard settles how it ended.
pub(crate) fn timed_body(steps: Vec<Step>, mut guard: StreamGuard) -> Body {
    guard.start_streaming();
    let stream = futures_util::stream::unfold(
        (steps.into_iter().peekable(), guard),
        |(mut steps, mut guard)| async move {
            loop {
                match steps.next() {
                    None => {
                        guard.finish(StreamStatus::Finished);
                        return None;
                    }
                    Some(Step::Bytes(bytes)) => {
                        // The last bytes: the client may end its request as soon as they
                        // arrive, before this body is asked for more.
                        if steps.peek().is_none() {
                            guard.leave_account();
                        }
                        return Some((Ok(bytes), (steps, guard)));
                    }
                    Some(Step::Sleep(d)) => tokio::time::sleep(d).await,
                    Some(Step::Cut) => {
                        guard.finish(StreamStatus::Cut);
                        let err = std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "FakeOpenAi: connection cut by script",
                        );
                        return Some((Err(err), (steps, guard)));
                    }
                    Some(Step::Hang) => std::future::pending::<()>().await,
                }
            }
        },
    );
    Body::from_stream(stream)
}

/// What to answer: status, headers and either a plain body or timed steps.
pub(crate) struct Outcome {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: OutcomeBody,
}

/// The body of an [`Outcome`].
pub(crate) enum OutcomeBody {
    Full(Bytes),
    Steps(Vec<Step>),
}

/// Waits `head_delay` (before any byte of the head), then answers. The guard ends with the
/// body: at once for a plain body, when the steps are played (or abandoned) for a timed one.
pub(crate) async fn deliver(
    outcome: Outcome,
    head_delay: Duration,
    mut guard: StreamGuard,
) -> Response {
    if !head_delay.is_zero() {
        // If the client leaves now, this future is dropped with the guard: a cancellation.
        tokio::time::sleep(head_delay).await;
    }
    let body = match outcome.body {
        OutcomeBody::Full(bytes) => {
            guard.finish(StreamStatus::Finished);
            Body::from(bytes)
        }
        OutcomeBody::Steps(steps) => timed_body(steps, guard),
    };
    let mut response = Response::new(body);
    *response.status_mut() = outcome.status;
    *response.headers_mut() = outcome.headers;
    response
}

/// Applies a reply's timing wrappers to an outcome: `pace` between the events of a stream, and
/// `after_headers` of silence right after the head (an SSE body first gets one `: keep-alive`
/// comment, so the head and a first byte really are on the wire before the silence).
pub(crate) fn with_timing(
    mut outcome: Outcome,
    after_headers: Option<Duration>,
    pace_interval: Option<Duration>,
) -> Outcome {
    if let (Some(interval), OutcomeBody::Steps(steps)) = (pace_interval, &mut outcome.body) {
        *steps = pace(std::mem::take(steps), interval);
    }
    if let Some(delay) = after_headers {
        let is_sse = outcome
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let mut steps = Vec::new();
        if is_sse {
            steps.push(Step::text(": keep-alive\n\n"));
        }
        steps.push(Step::Sleep(delay));
        match outcome.body {
            OutcomeBody::Full(bytes) => steps.push(Step::Bytes(bytes)),
            OutcomeBody::Steps(rest) => steps.extend(rest),
        }
        outcome.body = OutcomeBody::Steps(steps);
    }
    outcome
}

/// Before a cut, give the connection a moment to flush what was already sent.
pub(crate) fn cut_steps() -> [Step; 2] {
    [Step::Sleep(Duration::from_millis(20)), Step::Cut]
}

/// A lock that a panic in another holder does not poison.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
