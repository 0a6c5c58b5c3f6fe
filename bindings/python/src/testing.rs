//! `codexpool.testing`: codexpool-testkit's `FakeOpenAi` (a fake auth.openai.com, chatgpt.com
//! usage endpoint and Codex backend on 127.0.0.1, on its own thread) and its reply scripts, so
//! Python code can be tested against a fake too.

use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use codexpool_testkit::{
    FakeAccount, FakeOpenAi as Fake, FakeTokenUsage, FakeTokens, FakeUsage, Reply as FakeReply,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::args::seconds;
use crate::errors::{CodexPoolError, NotFound};
use crate::json;
use crate::record::{py_bool, quote};

/// What the fake Codex backend answers to one model call. Build one with the static methods;
/// the wrapping methods (`slow_first_byte`, `paced`, `with_usage`, …) return a new reply.
#[pyclass(frozen, module = "codexpool.testing")]
#[derive(Clone)]
pub struct Reply {
    inner: FakeReply,
}

fn reply(inner: FakeReply) -> Reply {
    Reply { inner }
}

#[pymethods]
impl Reply {
    /// An assistant message, streamed one word per delta.
    #[staticmethod]
    fn text(text: &str) -> Reply {
        reply(FakeReply::text(text))
    }
    /// An assistant message streamed in exactly these deltas.
    #[staticmethod]
    fn deltas(deltas: Vec<String>) -> Reply {
        reply(FakeReply::deltas(deltas))
    }
    /// A reasoning summary, then an assistant message.
    #[staticmethod]
    fn reasoning_then_text(reasoning: &str, text: &str) -> Reply {
        reply(FakeReply::reasoning_then_text(reasoning, text))
    }
    /// One function call whose JSON `arguments` arrive in a few chunks.
    #[staticmethod]
    fn tool_call(call_id: String, name: String, arguments: &str) -> Reply {
        reply(FakeReply::tool_call(call_id, name, arguments))
    }
    /// HTTP 429 `usage_limit_reached`; the account's window is also set to 100 % until then.
    #[staticmethod]
    #[pyo3(signature = (resets_in_secs=3600))]
    fn usage_limit_429(resets_in_secs: u64) -> Reply {
        reply(FakeReply::UsageLimit429 { resets_in_secs })
    }
    /// HTTP 429 `rate_limit_exceeded` with `retry-after: 1`.
    #[staticmethod]
    fn rate_limit_429() -> Reply {
        reply(FakeReply::RateLimit429)
    }
    /// A 200 stream that fails (`response.failed`) before any output.
    #[staticmethod]
    fn failed(code: String, message: String) -> Reply {
        reply(FakeReply::failed(code, message))
    }
    /// A 200 stream with some text, then `response.failed`.
    #[staticmethod]
    fn failed_after_text(deltas: Vec<String>, code: String, message: String) -> Reply {
        reply(FakeReply::FailedAfterText {
            deltas,
            code,
            message,
        })
    }
    /// A 200 stream that fails with `server_is_overloaded`.
    #[staticmethod]
    fn overloaded() -> Reply {
        reply(FakeReply::Overloaded)
    }
    /// A 200 answer whose text says the usage limit was hit.
    #[staticmethod]
    fn usage_limit_text() -> Reply {
        reply(FakeReply::UsageLimitText)
    }
    /// Exactly this status and body.
    #[staticmethod]
    #[pyo3(signature = (status, body, content_type="application/json"))]
    fn status(status: u16, body: String, content_type: &str) -> Reply {
        reply(FakeReply::Status {
            status,
            body,
            content_type: content_type.to_string(),
        })
    }
    /// 401 `token_expired`.
    #[staticmethod]
    fn unauthorized() -> Reply {
        reply(FakeReply::Unauthorized)
    }
    /// 403 `account_deactivated`.
    #[staticmethod]
    fn deactivated() -> Reply {
        reply(FakeReply::Deactivated)
    }
    /// 403 Cloudflare challenge page.
    #[staticmethod]
    fn challenge_html() -> Reply {
        reply(FakeReply::ChallengeHtml)
    }
    /// `after_deltas` text deltas, then the connection is dropped.
    #[staticmethod]
    fn cut_mid_stream(after_deltas: usize) -> Reply {
        reply(FakeReply::CutMidStream { after_deltas })
    }
    /// Text deltas, then `response.incomplete` with this reason.
    #[staticmethod]
    fn incomplete(deltas: Vec<String>, reason: String) -> Reply {
        reply(FakeReply::Incomplete { deltas, reason })
    }
    /// A 200 `text/event-stream` with exactly this body.
    #[staticmethod]
    fn raw_sse(body: String) -> Reply {
        reply(FakeReply::RawSse { body })
    }
    /// The head, then silence until the client goes away.
    #[staticmethod]
    fn hang_forever() -> Reply {
        reply(FakeReply::HangForever)
    }
    /// This reply after `delay` seconds of silence (not even the status line).
    fn slow_first_byte(&self, py: Python<'_>, delay: f64) -> PyResult<Reply> {
        let d = seconds(py, "delay", delay)?;
        Ok(reply(self.inner.clone().slow_first_byte(d)))
    }
    /// This reply with `interval` seconds between events.
    fn paced(&self, py: Python<'_>, interval: f64) -> PyResult<Reply> {
        let d = seconds(py, "interval", interval)?;
        Ok(reply(self.inner.clone().paced(d)))
    }
    /// This reply, reporting these token counts.
    #[pyo3(signature = (*, input_tokens=0, output_tokens=0, cached_tokens=0, reasoning_tokens=0))]
    fn with_usage(
        &self,
        input_tokens: u64,
        output_tokens: u64,
        cached_tokens: u64,
        reasoning_tokens: u64,
    ) -> Reply {
        let usage = FakeTokenUsage {
            input_tokens,
            cached_tokens,
            output_tokens,
            reasoning_tokens,
        };
        reply(self.inner.clone().with_usage(usage))
    }
    fn __repr__(&self) -> String {
        format!("Reply({:?})", self.inner)
    }
}

/// A fake OpenAI on `127.0.0.1` (its own thread): the sign-in issuer, the usage endpoint, the
/// Codex backend with scripted replies, and a plain `/v1` OpenAI API. `FakeOpenAi()` starts it;
/// `stop()` (or leaving a `with` block) stops it.
#[pyclass(frozen, module = "codexpool.testing")]
pub struct FakeOpenAi {
    inner: RwLock<Option<Fake>>,
    url: String,
    issuer: String,
    usage_base_url: String,
    codex_base_url: String,
    openai_base_url: String,
    openai_api_key: String,
    client_id: String,
}

fn tokens(py: Python<'_>, t: FakeTokens) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id_token", t.id_token)?;
    d.set_item("access_token", t.access_token)?;
    d.set_item("refresh_token", t.refresh_token)?;
    Ok(d)
}

fn start_fake(
    py: Python<'_>,
    openai_api_key: Option<String>,
    strict_requests: bool,
    instant: bool,
    workers: usize,
) -> PyResult<FakeOpenAi> {
    let mut b = Fake::builder()
        .strict_requests(strict_requests)
        .instant(instant)
        .worker_threads(workers.max(1));
    if let Some(k) = openai_api_key {
        b = b.openai_api_key(k);
    }
    let fake = py
        .detach(|| b.start())
        .map_err(|e| CodexPoolError::new_err(format!("cannot start the fake: {e}")))?;
    Ok(FakeOpenAi {
        url: fake.url(),
        issuer: fake.issuer(),
        usage_base_url: fake.usage_base_url(),
        codex_base_url: fake.codex_base_url(),
        openai_base_url: fake.openai_base_url(),
        openai_api_key: fake.openai_api_key().to_string(),
        client_id: fake.client_id().to_string(),
        inner: RwLock::new(Some(fake)),
    })
}

type Guard<'a> = RwLockReadGuard<'a, Option<Fake>>;

impl FakeOpenAi {
    /// The lock on the fake (`None` inside once stopped).
    fn fake(&self) -> PyResult<Guard<'_>> {
        self.inner
            .read()
            .map_err(|_| CodexPoolError::new_err("the fake is unusable"))
    }

    /// Runs `f` on the running fake (raises when stopped).
    fn with<T>(&self, f: impl FnOnce(&Fake) -> T) -> PyResult<T> {
        let g = self.fake()?;
        match g.as_ref() {
            Some(fake) => Ok(f(fake)),
            None => Err(CodexPoolError::new_err("the fake is stopped")),
        }
    }

    /// Runs `f` on the running fake after checking that it knows `account_id` (the testkit
    /// panics on unknown accounts; Python gets `NotFound`).
    fn with_account<T>(&self, account_id: &str, f: impl FnOnce(&Fake) -> T) -> PyResult<T> {
        self.with(|fake| {
            if fake.has_account(account_id) {
                Ok(f(fake))
            } else {
                Err(NotFound::new_err(format!(
                    "the fake has no account {account_id:?}"
                )))
            }
        })?
    }
}

#[pymethods]
impl FakeOpenAi {
    /// Starts a fake on a free port. `openai_api_key` is the key of the `/v1` API (default
    /// `sk-fake`); `strict_requests` checks bodies like the real backend; `instant` is bench
    /// mode; `workers` is the server's thread count.
    #[new]
    #[pyo3(signature = (*, openai_api_key=None, strict_requests=true, instant=false, workers=1))]
    fn new(
        py: Python<'_>,
        openai_api_key: Option<String>,
        strict_requests: bool,
        instant: bool,
        workers: usize,
    ) -> PyResult<Self> {
        start_fake(py, openai_api_key, strict_requests, instant, workers)
    }

    /// Same as `FakeOpenAi(...)`.
    #[staticmethod]
    #[pyo3(signature = (*, openai_api_key=None, strict_requests=true, instant=false, workers=1))]
    fn start(
        py: Python<'_>,
        openai_api_key: Option<String>,
        strict_requests: bool,
        instant: bool,
        workers: usize,
    ) -> PyResult<Self> {
        start_fake(py, openai_api_key, strict_requests, instant, workers)
    }

    /// `http://127.0.0.1:PORT`.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }
    /// The OAuth issuer (the `issuer` setting).
    #[getter]
    fn issuer(&self) -> &str {
        &self.issuer
    }
    /// The `usage_base_url` setting.
    #[getter]
    fn usage_base_url(&self) -> &str {
        &self.usage_base_url
    }
    /// The Codex backend (the `upstream_base_url` setting).
    #[getter]
    fn codex_base_url(&self) -> &str {
        &self.codex_base_url
    }
    /// The plain OpenAI API (`…/v1`).
    #[getter]
    fn openai_base_url(&self) -> &str {
        &self.openai_base_url
    }
    /// The key of the plain OpenAI API.
    #[getter]
    fn openai_api_key(&self) -> &str {
        &self.openai_api_key
    }
    /// The OAuth client id it expects.
    #[getter]
    fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Pool settings that point at this fake: `issuer`, `usage_base_url`, `upstream_base_url`
    /// (pass them as `Pool.open(path, **fake.settings())`).
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("issuer", &self.issuer)?;
        d.set_item("usage_base_url", &self.usage_base_url)?;
        d.set_item("upstream_base_url", &self.codex_base_url)?;
        Ok(d)
    }

    /// Adds an account (signed in once) and returns its tokens
    /// (`id_token`, `access_token`, `refresh_token`).
    #[pyo3(signature = (account_id, *, email=None, plan=None, user_id=None, label=None))]
    fn add_account<'py>(
        &self,
        py: Python<'py>,
        account_id: &str,
        email: Option<String>,
        plan: Option<String>,
        user_id: Option<String>,
        label: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut a = FakeAccount::new(account_id);
        if let Some(e) = email {
            a = a.email(e);
        }
        if let Some(p) = plan {
            a = a.plan(p);
        }
        if let Some(u) = user_id {
            a = a.user_id(u);
        }
        if let Some(l) = label {
            a = a.label(l);
        }
        let t = self.with(|fake| {
            if fake.has_account(account_id) {
                Err(crate::errors::Conflict::new_err(format!(
                    "the fake already has an account {account_id:?}"
                )))
            } else {
                Ok(fake.add_account(a))
            }
        })??;
        tokens(py, t)
    }

    /// Whether the fake has this account.
    fn has_account(&self, account_id: &str) -> PyResult<bool> {
        self.with(|f| f.has_account(account_id))
    }

    /// A Codex CLI `auth.json` (as a dict) with the account's current tokens.
    fn auth_json<'py>(&self, py: Python<'py>, account_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with_account(account_id, |f| f.auth_json(account_id))?;
        json::to_py(py, &v)
    }

    /// The account's current tokens (they change with each refresh).
    fn current_tokens<'py>(
        &self,
        py: Python<'py>,
        account_id: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = self.with_account(account_id, |f| f.current_tokens(account_id))?;
        tokens(py, t)
    }

    /// The account's current access tokens answer 401 until a refresh.
    fn expire_access_token(&self, account_id: &str) -> PyResult<()> {
        self.with_account(account_id, |f| f.expire_access_token(account_id))
    }

    /// Every sign-in of the account is revoked (refreshes fail).
    fn revoke_sessions(&self, account_id: &str) -> PyResult<()> {
        self.with_account(account_id, |f| f.revoke_sessions(account_id))
    }

    /// How many refreshes the account has seen.
    fn refresh_count(&self, account_id: &str) -> PyResult<usize> {
        self.with_account(account_id, |f| f.refresh_count(account_id))
    }

    /// The next browser sign-in signs in as this account.
    fn set_next_login(&self, account_id: &str) -> PyResult<()> {
        self.with_account(account_id, |f| f.set_next_login(account_id))
    }

    /// The next authorize request redirects back with `error=…`.
    fn fail_next_authorize(&self, error: &str, description: &str) -> PyResult<()> {
        self.with(|f| f.fail_next_authorize(error, description))
    }

    /// The device code most recently issued gets approved as this account.
    fn approve_latest_device(&self, account_id: &str) -> PyResult<bool> {
        self.with_account(account_id, |f| f.approve_latest_device(account_id))
    }

    /// From now on, device codes are approved as this account on their `after_polls`-th poll.
    fn auto_approve_device(&self, after_polls: u32, account_id: &str) -> PyResult<()> {
        self.with_account(account_id, |f| {
            f.auto_approve_device(after_polls, account_id)
        })
    }

    /// Sets the account's usage windows (used %, 0–100): a 5-hour primary and a weekly
    /// secondary window, as the usage endpoint and the `x-codex-*` headers report them.
    #[pyo3(signature = (account_id, primary_used=0.0, secondary_used=0.0, *, plan=None, credits_balance=0.0, limit_reached=false))]
    fn set_usage(
        &self,
        account_id: &str,
        primary_used: f64,
        secondary_used: f64,
        plan: Option<String>,
        credits_balance: f64,
        limit_reached: bool,
    ) -> PyResult<()> {
        let mut u = FakeUsage::new(primary_used, secondary_used);
        u.plan_type = plan;
        u.credits_balance = credits_balance;
        u.limit_reached = limit_reached;
        self.with_account(account_id, |f| f.set_usage(account_id, u))
    }

    /// Queues a reply for the account's next Codex request.
    fn push_reply(&self, account_id: &str, reply: &Reply) -> PyResult<()> {
        let r = reply.inner.clone();
        self.with_account(account_id, |f| f.push_reply(account_id, r))
    }

    /// Queues a reply for the next Codex request of any account.
    fn push_reply_any(&self, reply: &Reply) -> PyResult<()> {
        let r = reply.inner.clone();
        self.with(|f| f.push_reply_any(r))
    }

    /// The account's reply when its queue is empty (`None`: the built-in answer).
    fn set_default_reply(&self, account_id: &str, reply: Option<&Reply>) -> PyResult<()> {
        let r = reply.map(|r| r.inner.clone());
        self.with_account(account_id, |f| f.set_default_reply(account_id, r))
    }

    /// Every account's reply when its queues are empty (`None`: the built-in answer).
    fn set_global_default_reply(&self, reply: Option<&Reply>) -> PyResult<()> {
        let r = reply.map(|r| r.inner.clone());
        self.with(|f| f.set_global_default_reply(r))
    }

    /// Queues a reply for the plain `/v1` API.
    fn push_openai_reply(&self, reply: &Reply) -> PyResult<()> {
        let r = reply.inner.clone();
        self.with(|f| f.push_openai_reply(r))
    }

    /// Replies still queued for the account.
    fn pending_replies(&self, account_id: &str) -> PyResult<usize> {
        self.with_account(account_id, |f| f.pending_replies(account_id))
    }

    /// Requests received on a path (e.g. `/backend-api/codex/responses`).
    fn count(&self, path: &str) -> PyResult<usize> {
        self.with(|f| f.count(path))
    }

    /// The requests received (on `path` only, when given), oldest first, each as a dict with
    /// `method`, `path`, `query`, `headers` (lowercase names), `body` (text) and `account_id`.
    #[pyo3(signature = (path=None))]
    fn requests<'py>(
        &self,
        py: Python<'py>,
        path: Option<&str>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let reqs = self.with(|f| match path {
            Some(p) => f.requests_to(p),
            None => f.requests(),
        })?;
        reqs.into_iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("method", r.method)?;
                d.set_item("path", r.path)?;
                d.set_item("query", r.query)?;
                let h = PyDict::new(py);
                for (name, value) in r.headers.iter() {
                    h.set_item(name.as_str(), String::from_utf8_lossy(value.as_bytes()))?;
                }
                d.set_item("headers", h)?;
                d.set_item("body", String::from_utf8_lossy(&r.body))?;
                d.set_item("account_id", r.account_id)?;
                Ok(d)
            })
            .collect()
    }

    /// Forgets the recorded requests.
    fn clear_requests(&self) -> PyResult<()> {
        self.with(Fake::clear_requests)
    }

    /// Codex streams still open.
    fn open_streams(&self) -> PyResult<usize> {
        self.with(Fake::open_streams)
    }

    /// Streams the client left before the end.
    fn cancelled_streams(&self) -> PyResult<usize> {
        self.with(Fake::cancelled_streams)
    }

    /// Whether it still runs.
    #[getter]
    fn running(&self) -> bool {
        self.inner.read().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Stops the server and joins its thread. Safe to call more than once, from any thread.
    fn stop(&self, py: Python<'_>) {
        // Without the GIL: the lock may be held by a call that needs the GIL to finish.
        py.detach(|| {
            let fake = match self.inner.write() {
                Ok(mut g) => g.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(f) = fake {
                f.shutdown();
            }
        });
    }

    /// Waits up to `timeout` seconds until no Codex stream is open; whether that happened.
    /// Raises when the fake is (or gets) stopped.
    #[pyo3(signature = (timeout=5.0))]
    fn wait_streams_closed(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let d: Duration = seconds(py, "timeout", timeout)?;
        let deadline = std::time::Instant::now() + d;
        // The lock is held for each look only, never while the GIL is released: a `stop`
        // waiting for it would otherwise stall every other call that takes it with the GIL.
        loop {
            if self.with(Fake::open_streams)? == 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            py.detach(|| std::thread::sleep(Duration::from_millis(2)));
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.stop(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "FakeOpenAi(url={}, running={})",
            quote(&self.url),
            py_bool(self.running())
        )
    }
}
