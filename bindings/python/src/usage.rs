//! `pool.usage`: each account's 5-hour and weekly windows (with where each figure came from),
//! polling them on demand, and the token ledger, over core's `UsageTracker`.

use std::sync::Mutex;

use codexpool_core::RefreshProgress;
use codexpool_core::RefreshScope;
use codexpool_core::poll::PollResult as CorePollResult;
use codexpool_core::usage::{self, LedgerGroup, LedgerQuery};
use pyo3::prelude::*;

use crate::errors::OrRaise;
use crate::record::record;
use crate::runtime::{Home, HomeExt};
use crate::time::{self, Time, opt};

record! {
    /// The latest reading of one window: `kind` is `five_hour` or `weekly`, `source` is `poll`,
    /// `headers` or `rate-limit`.
    WindowReading as "WindowReading" {
        kind: String,
        used_percent: f64,
        window_minutes: u32,
        resets_at: Option<Time>,
        source: String,
        observed_at: Time,
    }
}

impl From<usage::WindowReading> for WindowReading {
    fn from(r: usage::WindowReading) -> Self {
        Self {
            kind: r.kind.as_str().into(),
            used_percent: r.used_percent,
            window_minutes: r.window_minutes,
            resets_at: opt(r.resets_at),
            source: r.source.as_str().into(),
            observed_at: Time(r.observed_at),
        }
    }
}

record! {
    /// Credit balance, as the backend reports it.
    Credits as "Credits" {
        balance: Option<f64>,
        has_credits: Option<bool>,
        unlimited: Option<bool>,
    }
}

impl From<usage::Credits> for Credits {
    fn from(c: usage::Credits) -> Self {
        Self {
            balance: c.balance,
            has_credits: c.has_credits,
            unlimited: c.unlimited,
        }
    }
}

record! {
    /// What is known of one account's usage.
    AccountUsage as "AccountUsage" {
        account_id: String,
        five_hour: Option<WindowReading>,
        weekly: Option<WindowReading>,
        credits: Option<Credits>,
    }
}

impl From<usage::AccountUsage> for AccountUsage {
    fn from(u: usage::AccountUsage) -> Self {
        Self {
            account_id: u.account_id,
            five_hour: u.five_hour.map(Into::into),
            weekly: u.weekly.map(Into::into),
            credits: u.credits.map(Into::into),
        }
    }
}

record! {
    /// One account's poll: the windows read (already recorded), or `error` and `error_kind`
    /// (`skipped`, `no_account_id`, `unauthorized`, `auth`, `challenge`, `status`, `network`,
    /// `invalid`).
    PollResult as "PollResult" {
        account_id: String,
        label: String,
        ok: bool,
        plan_type: Option<String>,
        windows: Vec<WindowReading>,
        credits: Option<Credits>,
        error: Option<String>,
        error_kind: Option<String>,
    }
}

impl From<CorePollResult> for PollResult {
    fn from(r: CorePollResult) -> Self {
        let (ok, plan_type, windows, credits, error, error_kind) = match r.outcome {
            Ok(s) => (
                true,
                s.plan_type,
                s.windows.into_iter().map(Into::into).collect(),
                s.credits.map(Into::into),
                None,
                None,
            ),
            Err(e) => (
                false,
                None,
                Vec::new(),
                None,
                Some(e.to_string()),
                Some(e.kind().to_string()),
            ),
        };
        Self {
            account_id: r.account_id,
            label: r.label,
            ok,
            plan_type,
            windows,
            credits,
            error,
            error_kind,
        }
    }
}

record! {
    /// Token counts of one response.
    TokenCounts as "TokenCounts" {
        input_tokens: u64,
        cached_tokens: u64,
        output_tokens: u64,
        reasoning_tokens: u64,
    }
}

impl From<usage::TokenCounts> for TokenCounts {
    fn from(t: usage::TokenCounts) -> Self {
        Self {
            input_tokens: t.input_tokens,
            cached_tokens: t.cached_tokens,
            output_tokens: t.output_tokens,
            reasoning_tokens: t.reasoning_tokens,
        }
    }
}

record! {
    /// One group's sums in the ledger; `group` is the key id, account id, model or UTC day
    /// (`-` when absent).
    LedgerRow as "LedgerRow" {
        group: String,
        requests: u64,
        input_tokens: u64,
        cached_tokens: u64,
        output_tokens: u64,
        reasoning_tokens: u64,
        total_tokens: u64,
    }
}

impl From<usage::LedgerRow> for LedgerRow {
    fn from(r: usage::LedgerRow) -> Self {
        Self {
            group: r.group,
            requests: r.requests,
            input_tokens: r.tokens.input_tokens,
            cached_tokens: r.tokens.cached_tokens,
            output_tokens: r.tokens.output_tokens,
            reasoning_tokens: r.tokens.reasoning_tokens,
            total_tokens: r.total_tokens,
        }
    }
}

/// The usage figures of a pool (`pool.usage`).
#[pyclass(frozen, module = "codexpool")]
pub struct UsageTracker {
    inner: codexpool_core::UsageTracker,
    home: Home,
}

impl UsageTracker {
    pub(crate) fn new(pool: &codexpool_core::Pool, home: Home) -> Self {
        Self {
            inner: pool.usage(),
            home,
        }
    }
}

/// Calls a Python progress callback with the GIL; keeps the first exception it raises (and
/// stops calling it) so that `refresh` can raise it at the end.
struct Progress {
    callback: Option<Py<PyAny>>,
    error: Mutex<Option<PyErr>>,
}

impl Progress {
    fn report(&self, p: RefreshProgress) {
        let Some(cb) = &self.callback else { return };
        let Ok(mut error) = self.error.lock() else {
            return;
        };
        if error.is_some() {
            return;
        }
        let (done, total, result) = match p {
            RefreshProgress::Started { total } => (0, total, None),
            RefreshProgress::Account {
                done,
                total,
                result,
            } => (done, total, Some(PollResult::from(result))),
            _ => return,
        };
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (done, total, result)) {
                *error = Some(e);
            }
        });
    }
}

#[pymethods]
impl UsageTracker {
    /// Every account's usage, in account order.
    fn list(&self) -> PyResult<Vec<AccountUsage>> {
        self.home.ensure()?;
        Ok(self.inner.list().into_iter().map(Into::into).collect())
    }

    /// One account's usage.
    fn get(&self, py: Python<'_>, account_id: &str) -> PyResult<AccountUsage> {
        self.home.ensure()?;
        self.inner.get(account_id).map(Into::into).or_raise(py)
    }

    /// The smallest share (0–100) left over the account's fresh windows; `None` when unknown.
    fn headroom(&self, py: Python<'_>, account_id: &str) -> PyResult<Option<f64>> {
        self.home.ensure()?;
        self.inner.headroom(account_id).or_raise(py)
    }

    /// When the account can serve again, if a window is exhausted.
    fn exhausted_until(&self, py: Python<'_>, account_id: &str) -> PyResult<Option<Time>> {
        self.home.ensure()?;
        Ok(opt(self.inner.exhausted_until(account_id).or_raise(py)?))
    }

    /// Polls the usage endpoint for one account (id or prefix) or every active one, records
    /// the readings and returns each account's result. `progress(done, total, result)` is called
    /// from the calling thread: once with `(0, total, None)`, then as each account finishes.
    #[pyo3(signature = (account=None, progress=None))]
    fn refresh(
        &self,
        py: Python<'_>,
        account: Option<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<PollResult>> {
        let scope = account.map_or(RefreshScope::All, RefreshScope::Account);
        let progress = Progress {
            callback: progress,
            error: Mutex::new(None),
        };
        let inner = self.inner.clone();
        let p = &progress;
        let results = self
            .home
            .run(
                py,
                async move { inner.refresh(scope, |e| p.report(e)).await },
            )?
            .or_raise(py)?;
        if let Some(e) = progress.error.into_inner().ok().flatten() {
            return Err(e);
        }
        Ok(results.into_iter().map(Into::into).collect())
    }

    /// Token sums grouped by `key`, `account`, `model` or `day`, largest total first; `since`
    /// (datetime, RFC 3339 string or epoch seconds) keeps only later requests.
    #[pyo3(signature = (group_by="account", since=None))]
    fn ledger(
        &self,
        py: Python<'_>,
        group_by: &str,
        since: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<LedgerRow>> {
        let mut q = LedgerQuery::by(group_by.parse::<LedgerGroup>().or_raise(py)?);
        if let Some(s) = since {
            q = q.since(time::from_arg(s, "since")?);
        }
        let inner = self.inner.clone();
        let rows = self
            .home
            .run(py, async move { inner.ledger(&q).await })?
            .or_raise(py)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Folds the ledger's entries from the UTC days before the one `before` (a `datetime`, an
    /// RFC 3339 string or epoch seconds) falls in into one entry per day, key, account, model and
    /// status: every sum stays the same. How many entries were folded. A server does this by
    /// itself for the days `REQUEST_LOG_DAYS` no longer keeps.
    fn fold_ledger(&self, py: Python<'_>, before: &Bound<'_, PyAny>) -> PyResult<u64> {
        let before = time::from_arg(before, "before")?;
        let inner = self.inner.clone();
        self.home
            .run(py, async move { inner.fold_ledger(before).await })?
            .or_raise(py)
    }

    fn __repr__(&self) -> String {
        "UsageTracker()".into()
    }
}
