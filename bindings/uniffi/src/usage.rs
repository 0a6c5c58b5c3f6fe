//! `UsageTracker`: each account's 5-hour and weekly windows (with where each figure came from),
//! polling them on demand, and the token ledger, over core's [`codexpool_core::UsageTracker`].

use codexpool_core::RefreshScope;
use codexpool_core::poll::PollResult as CorePollResult;
use codexpool_core::usage::{
    AccountUsage as CoreUsage, Credits as CoreCredits, LedgerGroup as CoreGroup, LedgerQuery,
    LedgerRow as CoreRow, ReadingSource as CoreSource, TokenCounts as CoreCounts,
    WindowKind as CoreKind, WindowReading as CoreReading,
};

use crate::runtime::{Home, HomeExt};
use crate::{CodexPoolError, ms};

/// Which quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum WindowKind {
    /// The rolling 5-hour window.
    FiveHour,
    /// The 7-day window.
    Weekly,
}

/// Where a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReadingSource {
    /// The usage endpoint (a poll).
    Poll,
    /// `x-codex-*` headers on a backend response.
    Headers,
    /// A 429 `usage_limit_reached`.
    RateLimit,
}

/// The latest known state of one window. Times are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, uniffi::Record)]
pub struct WindowReading {
    /// 5-hour or weekly.
    pub kind: WindowKind,
    /// Share of the window used, 0–100.
    pub used_percent: f64,
    /// The window's length in minutes.
    pub window_minutes: u32,
    /// When the window resets, if known (ms).
    pub resets_at: Option<i64>,
    /// Where the figure came from.
    pub source: ReadingSource,
    /// When it was observed (ms).
    pub observed_at: i64,
}

impl From<CoreReading> for WindowReading {
    fn from(r: CoreReading) -> Self {
        Self {
            kind: match r.kind {
                CoreKind::FiveHour => WindowKind::FiveHour,
                CoreKind::Weekly => WindowKind::Weekly,
            },
            used_percent: r.used_percent,
            window_minutes: r.window_minutes,
            resets_at: r.resets_at.map(ms),
            source: match r.source {
                CoreSource::Poll => ReadingSource::Poll,
                CoreSource::Headers => ReadingSource::Headers,
                CoreSource::RateLimit => ReadingSource::RateLimit,
            },
            observed_at: ms(r.observed_at),
        }
    }
}

/// Credit balance, as the backend reports it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Credits {
    /// Remaining balance.
    pub balance: Option<f64>,
    /// Whether the account has credits.
    pub has_credits: Option<bool>,
    /// Whether credits are unlimited.
    pub unlimited: Option<bool>,
}

impl From<CoreCredits> for Credits {
    fn from(c: CoreCredits) -> Self {
        Self {
            balance: c.balance,
            has_credits: c.has_credits,
            unlimited: c.unlimited,
        }
    }
}

/// What is known of an account's usage.
#[derive(Debug, Clone, uniffi::Record)]
pub struct AccountUsage {
    /// The account.
    pub account_id: String,
    /// The 5-hour window, if ever seen.
    pub five_hour: Option<WindowReading>,
    /// The weekly window, if ever seen.
    pub weekly: Option<WindowReading>,
    /// Credits, if reported.
    pub credits: Option<Credits>,
}

impl From<CoreUsage> for AccountUsage {
    fn from(u: CoreUsage) -> Self {
        Self {
            account_id: u.account_id,
            five_hour: u.five_hour.map(Into::into),
            weekly: u.weekly.map(Into::into),
            credits: u.credits.map(Into::into),
        }
    }
}

/// One account's poll.
#[derive(Debug, Clone, uniffi::Record)]
pub struct PollResult {
    /// The account.
    pub account_id: String,
    /// Its label.
    pub label: String,
    /// Whether the usage was read (and recorded).
    pub ok: bool,
    /// The plan, when reported.
    pub plan_type: Option<String>,
    /// The windows read.
    pub windows: Vec<WindowReading>,
    /// Credits, when reported.
    pub credits: Option<Credits>,
    /// Why it failed.
    pub error: Option<String>,
    /// `skipped`, `no_account_id`, `unauthorized`, `auth`, `challenge`, `status`, `network` or
    /// `invalid`.
    pub error_kind: Option<String>,
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

/// What to group ledger sums by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum LedgerGroup {
    /// Per platform key.
    Key,
    /// Per account.
    Account,
    /// Per model.
    Model,
    /// Per UTC day (`YYYY-MM-DD`).
    Day,
}

impl From<LedgerGroup> for CoreGroup {
    fn from(g: LedgerGroup) -> Self {
        match g {
            LedgerGroup::Key => Self::Key,
            LedgerGroup::Account => Self::Account,
            LedgerGroup::Model => Self::Model,
            LedgerGroup::Day => Self::Day,
        }
    }
}

/// Token counts of one response or a sum of them.
#[derive(Debug, Clone, Copy, uniffi::Record)]
pub struct TokenCounts {
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Input tokens served from the prompt cache.
    pub cached_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

impl From<CoreCounts> for TokenCounts {
    fn from(t: CoreCounts) -> Self {
        Self {
            input_tokens: t.input_tokens,
            cached_tokens: t.cached_tokens,
            output_tokens: t.output_tokens,
            reasoning_tokens: t.reasoning_tokens,
        }
    }
}

/// One group's ledger sums.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LedgerRow {
    /// The group's value (key id, account id, model or day); `-` when absent.
    pub group: String,
    /// Requests counted.
    pub requests: u64,
    /// Summed token counts.
    pub tokens: TokenCounts,
    /// Summed input + output.
    pub total_tokens: u64,
}

impl From<CoreRow> for LedgerRow {
    fn from(r: CoreRow) -> Self {
        Self {
            group: r.group,
            requests: r.requests,
            tokens: r.tokens.into(),
            total_tokens: r.total_tokens,
        }
    }
}

/// Usage windows and the token ledger of a pool. Get it with `Pool.usage()`.
#[derive(uniffi::Object)]
pub struct UsageTracker {
    pub(crate) inner: codexpool_core::Pool,
    pub(crate) home: Home,
}

#[uniffi::export]
impl UsageTracker {
    /// Every account's usage, in account order.
    pub fn list(&self) -> Result<Vec<AccountUsage>, CodexPoolError> {
        self.home.ensure()?;
        Ok(self
            .inner
            .usage()
            .list()
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// One account's usage (id or unique prefix).
    pub fn get(&self, account_id: String) -> Result<AccountUsage, CodexPoolError> {
        self.home.ensure()?;
        Ok(self.inner.usage().get(&account_id)?.into())
    }

    /// Polls the usage endpoint now for one account, or every active account when `None`, and
    /// records the readings. Each account's failure is in its result; fails only when
    /// `account_id` matches no account.
    #[uniffi::method(default(account_id = None))]
    pub async fn refresh(
        &self,
        account_id: Option<String>,
    ) -> Result<Vec<PollResult>, CodexPoolError> {
        let usage = self.inner.usage();
        let scope = account_id.map_or(RefreshScope::All, RefreshScope::Account);
        self.home
            .run(async move {
                let results = usage.refresh(scope, |_| {}).await?;
                Ok(results.into_iter().map(Into::into).collect())
            })
            .await
    }

    /// Folds the ledger's entries from the UTC days before the one `before` (ms since the
    /// epoch) falls in into one entry per day, key, account, model and status: every sum stays
    /// the same. How many entries were folded. A server does this by itself for the days
    /// `REQUEST_LOG_DAYS` no longer keeps.
    pub async fn fold_ledger(&self, before: i64) -> Result<u64, CodexPoolError> {
        let usage = self.inner.usage();
        let before = crate::time::arg("before", before)?;
        self.home
            .run(async move { Ok(usage.fold_ledger(before).await?) })
            .await
    }

    /// Sums the token ledger by `group_by`, largest total first; only requests at or after
    /// `since` (ms since the epoch) when given.
    #[uniffi::method(default(since = None))]
    pub async fn ledger(
        &self,
        group_by: LedgerGroup,
        since: Option<i64>,
    ) -> Result<Vec<LedgerRow>, CodexPoolError> {
        let usage = self.inner.usage();
        let mut q = LedgerQuery::by(group_by.into());
        if let Some(t) = since {
            q = q.since(crate::time::arg("since", t)?);
        }
        self.home
            .run(async move {
                Ok(usage
                    .ledger(&q)
                    .await?
                    .into_iter()
                    .map(Into::into)
                    .collect())
            })
            .await
    }
}
