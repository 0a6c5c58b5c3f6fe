//! Usage polling (PROTOCOL.md §3): reading each account's windows from
//! `GET {USAGE_BASE_URL}/backend-api/wham/usage`, on demand with per-account progress
//! ([`UsageTracker::refresh`]) and in the background ([`spawn_poller`]), plus
//! [`BackgroundTask`], the handle of every background loop core starts.
//!
//! A 401/403 refreshes the token once (through the single-flight refresh) and retries; an HTML
//! page on a 2xx is a Cloudflare challenge, reported as an error and never parsed as data.
//! Readings are recorded with source `poll`. At most [`MAX_CONCURRENT_POLLS`] accounts are
//! polled at once, and disabled, banned and needs-login accounts are skipped. The background
//! poller adds jitter to its interval and backs off from accounts that keep failing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::account::{Account, AccountFilter, AccountPatch, AccountStatus};
use crate::auth::AuthError;
use crate::error::Result;
use crate::secret::Secret;
use crate::usage::{UsageSnapshot, UsageTracker, parse_usage_json};
use crate::{Config, Pool};

/// Accounts polled at the same time.
pub const MAX_CONCURRENT_POLLS: usize = 4;
/// Longest pause the background poller puts on an account that keeps failing.
pub const MAX_POLL_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// A background loop (poller, refresher). Dropping it stops the loop.
#[must_use = "the background task stops when this handle is dropped"]
#[derive(Debug)]
pub struct BackgroundTask {
    name: &'static str,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl BackgroundTask {
    pub(crate) fn spawn(
        name: &'static str,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            name,
            handle: Some(tokio::spawn(fut)),
        }
    }

    /// A task that does nothing (the feature is turned off).
    pub(crate) fn inert(name: &'static str) -> Self {
        Self { name, handle: None }
    }

    /// What it does (`usage poller`, `token refresher`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the loop is running (false when turned off, stopped, or its pool is gone).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the loop (as dropping does).
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Which accounts [`UsageTracker::refresh`] polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshScope {
    /// Every active account.
    All,
    /// One account (id or unique prefix).
    Account(String),
}

/// Why an account's usage could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PollError {
    /// The account is not active, so it was not polled.
    #[error("skipped: the account is {status}")]
    Skipped {
        /// Its status.
        status: AccountStatus,
    },
    /// The account has no ChatGPT account id to send.
    #[error("the account has no ChatGPT account id")]
    NoAccountId,
    /// The token was refused even after a refresh.
    #[error("the usage endpoint refused the token even after a refresh (HTTP {status})")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
    },
    /// The refresh the 401 called for failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// chatgpt.com answered with a Cloudflare challenge page instead of data.
    #[error(
        "chatgpt.com answered with a Cloudflare challenge page instead of usage data; try again later"
    )]
    Challenge,
    /// Another HTTP status.
    #[error("the usage endpoint answered HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The start of its body.
        message: String,
    },
    /// No answer (connect error, timeout).
    #[error("the usage endpoint could not be reached: {message}")]
    Network {
        /// What happened.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("the usage answer is unreadable: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
}

impl PollError {
    /// A stable name for the kind of failure: `skipped`, `no_account_id`, `unauthorized`,
    /// `auth`, `challenge`, `status`, `network`, `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Skipped { .. } => "skipped",
            Self::NoAccountId => "no_account_id",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Auth(_) => "auth",
            Self::Challenge => "challenge",
            Self::Status { .. } => "status",
            Self::Network { .. } => "network",
            Self::Invalid { .. } => "invalid",
        }
    }
}

/// One account's poll result. Serializes as `{account_id, label, ok, plan_type, windows,
/// credits, error, error_kind}`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PollResult {
    /// The account.
    pub account_id: String,
    /// Its label.
    pub label: String,
    /// The reading (already recorded) or why there is none.
    pub outcome: std::result::Result<UsageSnapshot, PollError>,
}

impl serde::Serialize for PollResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct View<'a> {
            account_id: &'a str,
            label: &'a str,
            ok: bool,
            plan_type: Option<&'a str>,
            windows: &'a [crate::usage::WindowReading],
            credits: Option<&'a crate::usage::Credits>,
            error: Option<String>,
            error_kind: Option<&'static str>,
        }
        let snap = self.outcome.as_ref().ok();
        View {
            account_id: &self.account_id,
            label: &self.label,
            ok: snap.is_some(),
            plan_type: snap.and_then(|s| s.plan_type.as_deref()),
            windows: snap.map(|s| s.windows.as_slice()).unwrap_or_default(),
            credits: snap.and_then(|s| s.credits.as_ref()),
            error: self.outcome.as_ref().err().map(ToString::to_string),
            error_kind: self.outcome.as_ref().err().map(PollError::kind),
        }
        .serialize(s)
    }
}

/// Progress of [`UsageTracker::refresh`], for a progress bar.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RefreshProgress {
    /// Polling begins: this many accounts.
    Started {
        /// Accounts to poll.
        total: usize,
    },
    /// One account is done.
    Account {
        /// Accounts done so far (this one included).
        done: usize,
        /// Accounts in all.
        total: usize,
        /// Its result.
        result: PollResult,
    },
}

/// Settings of the background poller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PollerOptions {
    /// Time between rounds (`USAGE_POLL_INTERVAL_SECS`, already clamped to ≥ 30 s by the
    /// config; not clamped here).
    pub interval: Duration,
    /// Each pause is the interval ± this fraction, at random. Default 0.1.
    pub jitter: f64,
    /// Whether polling runs (`!DISABLE_POLLING`).
    pub enabled: bool,
}

impl PollerOptions {
    /// The settings of a config.
    pub fn from_config(config: &Config) -> Self {
        Self {
            interval: config.usage_poll_interval,
            jitter: 0.1,
            enabled: !config.disable_polling,
        }
    }
    /// Sets the interval.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets the jitter fraction (0 = none; at most 0.5).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }
    /// Turns polling on or off.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }
}

/// Starts the background usage poller with the pool's settings (`USAGE_POLL_INTERVAL_SECS`,
/// `DISABLE_POLLING`): one round at once, then every interval with ±10 % jitter; an account that
/// fails waits 2×, 4×, 8×… the interval (at most 6 h) before its next try. Stops when the
/// returned task is dropped or the pool is gone; does nothing when polling is disabled.
pub fn spawn_poller(pool: &Pool) -> BackgroundTask {
    spawn_poller_with(pool, PollerOptions::from_config(pool.config()))
}

/// [`spawn_poller`] with explicit settings.
pub fn spawn_poller_with(pool: &Pool, opts: PollerOptions) -> BackgroundTask {
    if !opts.enabled {
        return BackgroundTask::inert("usage poller");
    }
    let weak = Arc::downgrade(&pool.shared);
    let interval = opts.interval.max(Duration::from_millis(10));
    let jitter = if opts.jitter.is_finite() {
        opts.jitter.clamp(0.0, 0.5)
    } else {
        0.0
    };
    BackgroundTask::spawn("usage poller", async move {
        let mut backoff: HashMap<String, (u32, tokio::time::Instant)> = HashMap::new();
        loop {
            {
                let Some(shared) = weak.upgrade() else { return };
                let pool = Pool { shared };
                let now = tokio::time::Instant::now();
                let accounts: Vec<Account> = pool
                    .accounts()
                    .list(&AccountFilter::default().status(AccountStatus::Active))
                    .into_iter()
                    .filter(|a| backoff.get(&a.id).is_none_or(|(_, next)| *next <= now))
                    .collect();
                let results = pool.usage().poll_accounts(accounts, |_| {}).await;
                let now = tokio::time::Instant::now();
                for r in results {
                    match &r.outcome {
                        Ok(_) => {
                            backoff.remove(&r.account_id);
                        }
                        Err(PollError::Skipped { .. }) => {}
                        Err(e) => {
                            let n = backoff.get(&r.account_id).map_or(0, |(n, _)| *n) + 1;
                            let wait = interval
                                .saturating_mul(1u32 << n.min(16))
                                .min(MAX_POLL_BACKOFF);
                            tracing::warn!(account = %r.account_id, error = %e, retry_in_secs = wait.as_secs(), "usage poll failed");
                            backoff.insert(r.account_id.clone(), (n, now + wait));
                        }
                    }
                }
                let live: std::collections::HashSet<String> = pool
                    .accounts()
                    .list(&AccountFilter::default())
                    .into_iter()
                    .map(|a| a.id)
                    .collect();
                backoff.retain(|id, _| live.contains(id));
            }
            tokio::time::sleep(jittered(interval, jitter)).await;
        }
    })
}

/// `d` ± up to `fraction` of it, at random; `d` itself when that does not fit a `Duration`
/// (`mul_f64` would panic, and a panic ends the poller without a word).
fn jittered(d: Duration, fraction: f64) -> Duration {
    if fraction.is_nan() || fraction <= 0.0 {
        return d;
    }
    use rand::Rng;
    let f: f64 = rand::rng().random_range(-fraction..=fraction);
    Duration::try_from_secs_f64(d.as_secs_f64() * (1.0 + f)).unwrap_or(d)
}

/// Runs `f` over `items` with at most `limit` at once, calling `done` as each one finishes;
/// returns the outputs in input order.
pub(crate) async fn run_limited<T, O, F, Fut>(
    items: Vec<T>,
    limit: usize,
    f: F,
    mut done: impl FnMut(&O),
) -> Vec<O>
where
    T: Send + 'static,
    O: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = O> + Send + 'static,
{
    let n = items.len();
    let slots = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let slots = slots.clone();
        let fut = f(item);
        set.spawn(async move {
            let _permit = slots.acquire_owned().await;
            (i, fut.await)
        });
    }
    let mut out: Vec<Option<O>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, o)) => {
                done(&o);
                out[i] = Some(o);
            }
            Err(e) => tracing::warn!(error = %e, "a usage poll task failed"),
        }
    }
    out.into_iter().flatten().collect()
}

impl UsageTracker {
    /// Polls the usage endpoint for `scope` (every active account, or one account), at most
    /// four at once, records the readings (source `poll`) and reports each account's result to
    /// `progress` as it finishes. Returns the results in account order.
    ///
    /// Fails only when `scope` names no account; each account's failure is in its result.
    pub async fn refresh(
        &self,
        scope: RefreshScope,
        progress: impl Fn(RefreshProgress) + Send + Sync,
    ) -> Result<Vec<PollResult>> {
        let accounts = match scope {
            RefreshScope::All => self
                .pool
                .accounts()
                .list(&AccountFilter::default().status(AccountStatus::Active)),
            RefreshScope::Account(id) => vec![self.pool.accounts().get(&id)?],
        };
        let total = accounts.len();
        progress(RefreshProgress::Started { total });
        let mut n = 0;
        Ok(self
            .poll_accounts(accounts, |r| {
                n += 1;
                progress(RefreshProgress::Account {
                    done: n,
                    total,
                    result: r.clone(),
                });
            })
            .await)
    }

    pub(crate) async fn poll_accounts(
        &self,
        accounts: Vec<Account>,
        done: impl FnMut(&PollResult),
    ) -> Vec<PollResult> {
        let pool = self.pool.clone();
        run_limited(
            accounts,
            MAX_CONCURRENT_POLLS,
            move |a| {
                let pool = pool.clone();
                async move {
                    let outcome = if a.status == AccountStatus::Active {
                        pool.usage().poll_one(&a).await
                    } else {
                        Err(PollError::Skipped { status: a.status })
                    };
                    PollResult {
                        account_id: a.id,
                        label: a.label,
                        outcome,
                    }
                }
            },
            done,
        )
        .await
    }

    /// Polls one account now (whatever its status) and records the reading.
    pub async fn poll_account(
        &self,
        account_id: &str,
    ) -> std::result::Result<UsageSnapshot, PollError> {
        let a = self
            .pool
            .accounts()
            .get(account_id)
            .map_err(|e| PollError::Auth(AuthError::from_crate(e)))?;
        self.poll_one(&a).await
    }

    async fn poll_one(&self, a: &Account) -> std::result::Result<UsageSnapshot, PollError> {
        let chatgpt_id = a.chatgpt_account_id.clone().ok_or(PollError::NoAccountId)?;
        let auth = self.pool.auth();
        let token = self
            .pool
            .accounts()
            .get(&a.id)
            .map(|x| x.tokens.access_token)
            .unwrap_or_else(|_| a.tokens.access_token.clone());
        // The answer describes the moment it was asked: a reading stamped on arrival would be
        // newer than a usage limit a request met while it travelled, and undo it.
        let mut asked = self.pool.now();
        let mut answer = self.get_usage(&token, &chatgpt_id).await?;
        if matches!(answer.0, 401 | 403) && !answer.2 {
            let fresh = auth.refresh_after_unauthorized(&a.id, &token).await?;
            asked = self.pool.now();
            answer = self.get_usage(&fresh, &chatgpt_id).await?;
            if matches!(answer.0, 401 | 403) && !answer.2 {
                return Err(PollError::Unauthorized { status: answer.0 });
            }
        }
        let (status, body, html) = answer;
        if html && ((200..300).contains(&status) || status == 403) {
            return Err(PollError::Challenge);
        }
        if !(200..300).contains(&status) {
            return Err(PollError::Status {
                status,
                message: crate::auth::excerpt(&body),
            });
        }
        let snap =
            parse_usage_json(&body, asked).map_err(|message| PollError::Invalid { message })?;
        self.record(&a.id, &snap).map_err(|e| PollError::Invalid {
            message: e.to_string(),
        })?;
        if let Some(plan) = &snap.plan_type
            && a.plan_type.as_deref() != Some(plan.as_str())
        {
            let patch = AccountPatch {
                plan_type: Some(Some(plan.clone())),
                ..Default::default()
            };
            if let Err(e) = self.pool.accounts().apply_patch(&a.id, patch).await {
                tracing::debug!(account = %a.id, error = %e, "could not store the plan type");
            }
        }
        Ok(snap)
    }

    /// `(status, body, is a challenge page)` of one usage request.
    async fn get_usage(
        &self,
        token: &Secret,
        chatgpt_account_id: &str,
    ) -> std::result::Result<(u16, Vec<u8>, bool), PollError> {
        let auth = self.pool.auth();
        let config = self.pool.config();
        let resp = auth
            .http()?
            .get(format!("{}/backend-api/wham/usage", config.usage_base_url))
            .bearer_auth(token.expose())
            .header("ChatGPT-Account-ID", chatgpt_account_id)
            .header("originator", &config.originator)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| PollError::Network {
                message: crate::auth::describe(&e),
            })?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let challenge_header = crate::http::is_cloudflare_challenge(resp.headers());
        let body = resp.bytes().await.map_err(|e| PollError::Network {
            message: crate::auth::describe(&e),
        })?;
        // Any markup where JSON belongs is a page here (a firewall's XML too): not a sign-in
        // problem to refresh for.
        let html = challenge_header
            || crate::http::is_html_page(content_type.as_deref(), &body)
            || body.trim_ascii_start().first() == Some(&b'<');
        Ok((status, body.to_vec(), html))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn run_limited_caps_concurrency_and_keeps_order() {
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let mut seen = 0;
        let out = run_limited(
            (0..12).collect::<Vec<u32>>(),
            4,
            |i| {
                let (now, max) = (now.clone(), max.clone());
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5 + u64::from(i % 3))).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                }
            },
            |_| seen += 1,
        )
        .await;
        assert_eq!(out, (0..12).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(seen, 12);
        assert_eq!(max.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn jitter_stays_in_range() {
        let d = Duration::from_secs(100);
        for _ in 0..100 {
            let j = jittered(d, 0.1);
            assert!(
                j >= Duration::from_secs(90) && j <= Duration::from_secs(110),
                "{j:?}"
            );
        }
        assert_eq!(jittered(d, 0.0), d);
        assert_eq!(jittered(d, f64::NAN), d);
    }

    #[test]
    fn jitter_never_overflows() {
        // Any interval a caller may hand `PollerOptions::interval`: no panic, which would end
        // the poller without a word.
        for _ in 0..100 {
            assert!(jittered(Duration::MAX, 0.5) >= Duration::MAX / 2);
        }
    }
}
