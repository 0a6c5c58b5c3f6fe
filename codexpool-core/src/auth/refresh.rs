//! Token refresh (PROTOCOL.md §1): on demand ([`Auth::refresh`]), for the gateway's 401 path
//! ([`Auth::refresh_after_unauthorized`]) and ahead of expiry in the background
//! ([`spawn_refresher`]).
//!
//! Refresh tokens are single use, so a refresh is single-flight per account twice over:
//!
//! - in this process, the first caller starts one refresh task and every other caller awaits
//!   the same result (the task runs to the end even when its callers go away, so a rotated
//!   refresh token is never lost half-way);
//! - across processes, the task takes the account's refresh lease in the store (an immediate
//!   transaction with an expiry), re-reads the stored tokens — when they changed since the
//!   caller looked, another process already refreshed and they are adopted as they are — and
//!   only then posts the refresh and writes the new access, id and refresh tokens in one step.
//!   A process that cannot take the lease polls the store until the holder's tokens appear.
//!
//! Errors are classified: `refresh_token_expired|reused|invalidated`, `invalid_grant` and
//! `app_session_terminated` mean the sign-in is dead (status `needs_login`, except that an
//! account a person disabled stays disabled); after `refresh_token_reused` the store is read once
//! more first, in case another holder rotated the token meanwhile. Anything else (network, 5xx,
//! an unreadable answer) is transient: the status is unchanged and the background refresher
//! backs off.

use std::time::Duration;

use serde_json::{Value, json};

use super::client::describe;
use super::login::error_fields;
use super::{Auth, AuthError, decode_claims};
use crate::Pool;
use crate::account::{Account, AccountFilter, AccountPatch, AccountStatus, Tokens};
use crate::poll::BackgroundTask;
use crate::secret::Secret;
use crate::sync;
use crate::time::Timestamp;

/// Refresh this long before the access token expires.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(3600);
/// Without an expiry, refresh this long after the last refresh.
pub const REFRESH_WITHOUT_EXP: Duration = Duration::from_secs(45 * 60);
/// How long a refresh lease holds when its holder dies without giving it back.
pub const REFRESH_LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a process waiting for another's refresh re-reads the store.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// First backoff after a transient refresh failure (doubling up to [`BACKOFF_MAX`]).
const BACKOFF_BASE: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// How long the new tokens are offered to the store before giving up: the old refresh token
/// is spent, so losing them loses the sign-in. Well inside [`REFRESH_LEASE_TTL`], so no other
/// process takes the lease (and spends the old token) meanwhile.
const PERSIST_FOR: Duration = Duration::from_secs(40);

/// Issuer error codes that mean the refresh token is dead.
const DEAD_CODES: [&str; 5] = [
    "refresh_token_expired",
    "refresh_token_reused",
    "refresh_token_invalidated",
    "invalid_grant",
    "app_session_terminated",
];

/// When an account's tokens should be refreshed: its access token's `exp` minus an hour (or
/// half the token's life when that is shorter), else 45 minutes after the last refresh, else now.
pub fn refresh_due_at(account: &Account) -> Timestamp {
    let t = &account.tokens;
    match (t.expires_at, t.last_refresh) {
        (Some(exp), Some(last)) if exp > last => exp.minus(REFRESH_AHEAD.min(exp.since(last) / 2)),
        (Some(exp), _) => exp.minus(REFRESH_AHEAD),
        (None, Some(last)) => last.plus(REFRESH_WITHOUT_EXP),
        (None, None) => Timestamp::from_millis(0),
    }
}

/// One account's result in [`Auth::refresh_due`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RefreshAttempt {
    /// The account.
    pub account_id: String,
    /// How it went.
    pub result: Result<(), AuthError>,
}

/// Settings of the background refresher.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefresherOptions {
    /// How often to look for accounts due for a refresh. Default 60 s.
    pub check_interval: Duration,
}

impl Default for RefresherOptions {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(60),
        }
    }
}

impl RefresherOptions {
    /// Sets the check interval.
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.check_interval = d;
        self
    }
}

/// Starts the background refresher with default settings: every minute, refreshes the active
/// accounts that are due ([`refresh_due_at`]), backing off from transient failures. Stops when
/// the returned task is dropped or the pool is gone.
pub fn spawn_refresher(pool: &Pool) -> BackgroundTask {
    spawn_refresher_with(pool, RefresherOptions::default())
}

/// [`spawn_refresher`] with settings.
pub fn spawn_refresher_with(pool: &Pool, opts: RefresherOptions) -> BackgroundTask {
    let weak = std::sync::Arc::downgrade(&pool.shared);
    let every = opts.check_interval.max(Duration::from_millis(10));
    BackgroundTask::spawn("token refresher", async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            let auth = Pool { shared }.auth();
            for a in auth.refresh_due().await {
                if let Err(e) = a.result {
                    tracing::warn!(account = %a.account_id, error = %e, "background token refresh failed");
                }
            }
        }
    })
}

/// What the token endpoint answered.
enum Refreshed {
    Ok {
        access_token: String,
        refresh_token: Option<String>,
        id_token: Option<String>,
    },
    Dead {
        code: String,
        message: Option<String>,
    },
}

fn tokens_changed(a: &Tokens, b: &Tokens) -> bool {
    a.access_token != b.access_token || a.refresh_token != b.refresh_token
}

fn dead_reason(code: &str, message: Option<&str>) -> String {
    let why = match code {
        "refresh_token_expired" => "the refresh token expired",
        "refresh_token_reused" => {
            "the refresh token was already used by another holder of this sign-in (a Codex CLI \
             or another codexpool sharing it)"
        }
        "refresh_token_invalidated" => "the refresh token was revoked",
        "app_session_terminated" => "the session was ended (signed out elsewhere)",
        _ => "the issuer refused the refresh token",
    };
    match message {
        Some(m) if !m.is_empty() => format!("{why} ({code}: {m}); sign in again"),
        _ => format!("{why} ({code}); sign in again"),
    }
}

impl Auth {
    /// Refreshes an account's tokens now (id or unique prefix) and returns the account with
    /// them. When another task or process is refreshing it already, waits for that result
    /// instead of spending the refresh token twice.
    pub async fn refresh(&self, account_id: &str) -> Result<Account, AuthError> {
        let a = self
            .pool
            .accounts()
            .get(account_id)
            .map_err(AuthError::from_crate)?;
        self.single_flight(&a.id, a.tokens.clone()).await?;
        self.pool
            .accounts()
            .get(&a.id)
            .map_err(AuthError::from_crate)
    }

    /// For a backend 401: the access token to retry with. When the stored token already differs
    /// from `token_seen` (someone refreshed since the request was sent), returns it without a
    /// refresh; otherwise refreshes once (single-flight, see the module docs).
    ///
    /// [`AuthError::RefreshDead`] means the account now needs a new sign-in (its status says
    /// so); [`AuthError::Transient`] means try another account and come back later.
    pub async fn refresh_after_unauthorized(
        &self,
        account_id: &str,
        token_seen: &Secret,
    ) -> Result<Secret, AuthError> {
        let a = {
            let t = sync::read(&self.pool.shared.accounts);
            t.get(account_id).map(|s| s.account.clone())
        };
        let a = match a {
            Some(a) => a,
            None => self.account_from_store(account_id).await?,
        };
        if a.tokens.access_token != *token_seen {
            return Ok(a.tokens.access_token);
        }
        self.single_flight(&a.id, a.tokens).await
    }

    /// Refreshes every active account that is due ([`refresh_due_at`]) and not backing off from
    /// a transient failure; what the background refresher runs each tick.
    pub async fn refresh_due(&self) -> Vec<RefreshAttempt> {
        let now = self.now();
        let due: Vec<Account> = {
            let backoff = sync::lock(&self.pool.shared.auth.backoff);
            self.pool
                .accounts()
                .list(&AccountFilter::default().status(AccountStatus::Active))
                .into_iter()
                .filter(|a| refresh_due_at(a) <= now)
                .filter(|a| backoff.get(&a.id).is_none_or(|(_, next)| *next <= now))
                .collect()
        };
        let mut out = Vec::with_capacity(due.len());
        for a in due {
            let result = self.single_flight(&a.id, a.tokens.clone()).await.map(drop);
            let mut backoff = sync::lock(&self.pool.shared.auth.backoff);
            match &result {
                Err(e) if e.is_transient() => {
                    let n = backoff.get(&a.id).map_or(0, |(n, _)| *n);
                    let wait = BACKOFF_BASE
                        .saturating_mul(1u32 << n.min(10))
                        .min(BACKOFF_MAX);
                    backoff.insert(a.id.clone(), (n + 1, self.now().plus(wait)));
                }
                _ => {
                    backoff.remove(&a.id);
                }
            }
            out.push(RefreshAttempt {
                account_id: a.id,
                result,
            });
        }
        out
    }

    /// One refresh per account in this process: joins the one in flight or starts it.
    async fn single_flight(&self, id: &str, baseline: Tokens) -> Result<Secret, AuthError> {
        let mut rx = {
            let mut flights = sync::lock(&self.pool.shared.auth.flights);
            match flights.get(id) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    flights.insert(id.to_string(), rx.clone());
                    let (auth, id) = (self.clone(), id.to_string());
                    tokio::spawn(async move {
                        let result = auth.refresh_across_processes(&id, &baseline).await;
                        sync::lock(&auth.pool.shared.auth.flights).remove(&id);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r
                .clone()
                .unwrap_or_else(|| Err(AuthError::transient("the refresh ended without a result"))),
            Err(_) => Err(AuthError::transient("the refresh task stopped")),
        }
    }

    /// The cross-process part: adopt tokens another process stored, or take the lease and
    /// refresh.
    async fn refresh_across_processes(
        &self,
        id: &str,
        baseline: &Tokens,
    ) -> Result<Secret, AuthError> {
        let shared = &self.pool.shared;
        let holder = shared.auth.holder.clone();
        let started = tokio::time::Instant::now();
        loop {
            let stored = shared
                .store
                .get_account(id)
                .await?
                .ok_or_else(|| AuthError::UnknownAccount { id: id.to_string() })?;
            if tokens_changed(&stored.tokens, baseline) {
                let token = stored.tokens.access_token.clone();
                self.adopt(stored).await;
                return Ok(token);
            }
            if shared
                .store
                .acquire_refresh_lease(id, &holder, self.now(), REFRESH_LEASE_TTL)
                .await?
            {
                let result = self.refresh_holding_lease(id, baseline).await;
                if let Err(e) = shared.store.release_refresh_lease(id, &holder).await {
                    tracing::warn!(account = %id, error = %e, "could not release the refresh lease");
                }
                return result;
            }
            if started.elapsed() > REFRESH_LEASE_TTL + Duration::from_secs(5) {
                return Err(AuthError::transient(format!(
                    "another process has been refreshing account {id} for over a minute"
                )));
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Under the lease: re-read, refresh, persist.
    async fn refresh_holding_lease(
        &self,
        id: &str,
        baseline: &Tokens,
    ) -> Result<Secret, AuthError> {
        let store = &self.pool.shared.store;
        let current = store
            .get_account(id)
            .await?
            .ok_or_else(|| AuthError::UnknownAccount { id: id.to_string() })?;
        if tokens_changed(&current.tokens, baseline) {
            let token = current.tokens.access_token.clone();
            self.adopt(current).await;
            return Ok(token);
        }
        let sent = current.tokens.refresh_token.clone();
        match self.post_refresh(&sent).await? {
            Refreshed::Ok {
                access_token,
                refresh_token,
                id_token,
            } => {
                let access_claims = decode_claims(&access_token).ok();
                let id_claims = id_token.as_deref().and_then(|t| decode_claims(t).ok());
                let tokens = Tokens {
                    expires_at: access_claims
                        .as_ref()
                        .and_then(|c| c.expires_at)
                        .or_else(|| id_claims.as_ref().and_then(|c| c.expires_at)),
                    id_token: id_token
                        .map(Secret::new)
                        .unwrap_or_else(|| current.tokens.id_token.clone()),
                    access_token: Secret::new(access_token),
                    refresh_token: refresh_token.map(Secret::new).unwrap_or(sent),
                    last_refresh: Some(self.now()),
                };
                let mut patch = AccountPatch::default().tokens(tokens.clone());
                if current.status == AccountStatus::NeedsLogin {
                    // Fresh tokens cure a dead sign-in, but not one a person disabled since.
                    patch = patch
                        .status(AccountStatus::Active, None)
                        .only_from(&[AccountStatus::NeedsLogin]);
                }
                if let Some(c) = &id_claims {
                    if c.chatgpt_plan_type.is_some() && c.chatgpt_plan_type != current.plan_type {
                        patch.plan_type = Some(c.chatgpt_plan_type.clone());
                    }
                    if c.email.is_some() && c.email != current.email {
                        patch.email = Some(c.email.clone());
                    }
                }
                self.persist(id, patch).await?;
                tracing::info!(account = %id, "refreshed the tokens");
                Ok(tokens.access_token)
            }
            Refreshed::Dead { code, message } => {
                if code == "refresh_token_reused"
                    && let Some(again) = store.get_account(id).await?
                    && again.tokens.refresh_token != sent
                {
                    // Another holder rotated it meanwhile: theirs is the live token.
                    let token = again.tokens.access_token.clone();
                    self.adopt(again).await;
                    return Ok(token);
                }
                let reason = dead_reason(&code, message.as_deref());
                tracing::warn!(account = %id, code = %code, "the sign-in is dead; the account needs a new login");
                // Checked against the stored status, not `current`: a person may have
                // disabled the account while the refresh was on the wire.
                let patch = AccountPatch::default()
                    .status(AccountStatus::NeedsLogin, Some(reason))
                    .only_from(&[AccountStatus::Active, AccountStatus::NeedsLogin]);
                if let Err(e) = self.pool.accounts().apply_patch(id, patch).await {
                    tracing::warn!(account = %id, error = %e, "could not store the needs_login status");
                }
                Err(AuthError::RefreshDead {
                    account_id: id.to_string(),
                    code,
                })
            }
        }
    }

    /// Writes rotated tokens, retrying: losing them would lose the sign-in.
    async fn persist(&self, id: &str, patch: AccountPatch) -> Result<(), AuthError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        let last = loop {
            attempt += 1;
            match self.pool.accounts().apply_patch(id, patch.clone()).await {
                Ok(_) => return Ok(()),
                Err(crate::Error::NotFound { .. }) => {
                    return Err(AuthError::UnknownAccount { id: id.to_string() });
                }
                Err(e) if started.elapsed() + pause < PERSIST_FOR => {
                    tracing::warn!(account = %id, error = %e, attempt, "could not save refreshed tokens; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => break Some(e),
            }
        };
        tracing::error!(account = %id, "refreshed tokens could not be saved; the account will need a new sign-in");
        Err(AuthError::Store {
            message: format!(
                "the refreshed tokens could not be saved: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ),
        })
    }

    /// Installs tokens another process stored into memory.
    async fn adopt(&self, account: Account) {
        let shared = &self.pool.shared;
        let _guard = shared.admin.lock().await;
        tracing::debug!(account = %account.id, "adopting tokens refreshed elsewhere");
        sync::write(&shared.accounts).upsert(account);
    }

    /// `POST {issuer}/oauth/token` with the refresh grant (JSON).
    async fn post_refresh(&self, refresh_token: &Secret) -> Result<Refreshed, AuthError> {
        let config = self.config();
        let resp = self
            .http()?
            .post(format!("{}/oauth/token", config.issuer))
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&json!({
                "client_id": config.client_id,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token.expose(),
                "scope": "openid profile email",
            }))
            .send()
            .await
            .map_err(|e| AuthError::transient(format!("token refresh: {}", describe(&e))))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AuthError::transient(format!("token refresh: {}", describe(&e))))?;
        if (200..300).contains(&status) {
            let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
                AuthError::transient(format!(
                    "token refresh: HTTP {status} with a body that is not JSON"
                ))
            })?;
            let text = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            let access_token = text("access_token").ok_or_else(|| {
                AuthError::transient("token refresh: the answer has no access_token")
            })?;
            return Ok(Refreshed::Ok {
                access_token,
                refresh_token: text("refresh_token"),
                id_token: text("id_token"),
            });
        }
        let (code, message) = error_fields(&bytes);
        if matches!(status, 400 | 401)
            && let Some(code) = code.as_deref().filter(|c| DEAD_CODES.contains(c))
        {
            return Ok(Refreshed::Dead {
                code: code.to_string(),
                message,
            });
        }
        Err(AuthError::transient(format!(
            "token refresh: HTTP {status}{}",
            code.or(message)
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(expires_at: Option<i64>, last_refresh: Option<i64>) -> Account {
        Account {
            id: "a".into(),
            label: "a".into(),
            email: None,
            chatgpt_account_id: None,
            chatgpt_user_id: None,
            plan_type: None,
            group: None,
            tags: vec![],
            sort: 0,
            note: None,
            status: AccountStatus::Active,
            status_reason: None,
            tokens: Tokens {
                id_token: Secret::new("i"),
                access_token: Secret::new("a"),
                refresh_token: Secret::new("r"),
                expires_at: expires_at.map(Timestamp::from_secs),
                last_refresh: last_refresh.map(Timestamp::from_secs),
            },
            created_at: Timestamp::from_secs(0),
            updated_at: Timestamp::from_secs(0),
            last_used_at: None,
        }
    }

    #[test]
    fn due_times() {
        let day = 86_400;
        // exp − 1 h.
        assert_eq!(
            refresh_due_at(&account(Some(10 * day), Some(0))),
            Timestamp::from_secs(10 * day - 3600)
        );
        assert_eq!(
            refresh_due_at(&account(Some(10 * day), None)),
            Timestamp::from_secs(10 * day - 3600)
        );
        // A short-lived token: half its life, not a refresh storm.
        assert_eq!(
            refresh_due_at(&account(Some(1000 + 1800), Some(1000))),
            Timestamp::from_secs(1000 + 900)
        );
        // No exp: 45 min after the last refresh.
        assert_eq!(
            refresh_due_at(&account(None, Some(1000))),
            Timestamp::from_secs(1000 + 45 * 60)
        );
        // Nothing known: now.
        assert_eq!(
            refresh_due_at(&account(None, None)),
            Timestamp::from_millis(0)
        );
    }

    #[test]
    fn dead_reasons_are_sentences() {
        assert!(dead_reason("refresh_token_reused", None).contains("another holder"));
        assert!(
            dead_reason("invalid_grant", Some("bad"))
                .ends_with("(invalid_grant: bad); sign in again")
        );
    }
}
