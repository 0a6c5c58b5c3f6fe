//! Token refresh (PROTOCOL.md §1): on demand ([`Auth::refresh`]), for the gateway's 401 path
//! ([`Auth::refresh_after_unauthorized`]) and ahead of expiry in the background
//! ([`spawn_refresher`]).
//!
//! Refresh tokens are single use, so a refresh is single-flight per account twice over:
//!
//! - in this process, the first caller starts one refresh task and every other caller awaits
//!   the same result (the task runs to the end even when its callers go away, on the runtime
//!   the pool was opened on, and [`crate::Pool::flush`] waits for it unless it is only waiting
//!   for another holder, so a rotated refresh token is never lost half-way);
//! - across processes, the task takes the account's refresh lease in the store (a row with an
//!   expiry, [`REFRESH_LEASE_TTL`]), re-reads the stored tokens — when they changed since the
//!   caller looked, another process already refreshed and they are adopted as they are — and
//!   only then posts the refresh and writes the new access, id and refresh tokens in one step.
//!   A process that cannot take the lease polls the store until the holder's tokens appear. A
//!   lease whose holder process no longer exists (it crashed or was killed mid-refresh; on
//!   Linux, judged by `/proc`) is taken over at once instead of after its TTL.
//!
//! A request that met a 401 waits at most [`OTHER_HOLDER_WAIT`] for another holder's refresh,
//! and at most [`UNAUTHORIZED_WAIT`] in all (a slow issuer, a database whose write lock another
//! process holds): then it gets a transient error and tries another account, while the refresh
//! goes on in the background for later requests.
//!
//! Everything after the answer happens inside the lease: the POST waits at most
//! [`REFRESH_POST_TIMEOUT`] and never so long that less than ten seconds of the lease are left
//! to store its answer. The new tokens are offered to the store in attempts of at most five
//! seconds, each of which is certain to have written nothing when it gives up. When the store
//! still refuses them after five seconds (another process holding the database's write lock, a
//! full disk) they are not dropped: the store rescues them (the SQLite store into a private file
//! beside the database, in `rescued-tokens/<db file name>/`), every read of the account sees them
//! from then on — a reload cannot revert a process to the spent token — and the next write of the
//! account, refresh lease on it or opening of the database folds them in (when still newer than
//! what is stored).
//! Only a store that can neither take nor rescue them for [`PERSIST_FOR`] loses them, and says so.
//!
//! Errors are classified: `refresh_token_expired|reused|invalidated`, `invalid_grant` and
//! `app_session_terminated` mean the sign-in is dead (status `needs_login`, except that an
//! account a person disabled stays disabled); after `refresh_token_reused` the store is read once
//! more first, in case another holder rotated the token meanwhile. A reuse right after a refresh
//! of this database whose answer never arrived (the POST timed out, or the process died
//! mid-refresh: its lease row was left behind) is reported as that, not as another holder's
//! doing. Anything else (network, 5xx, an unreadable answer) is transient: the status is
//! unchanged and the background refresher backs off.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::client::describe;
use super::login::error_fields;
use super::{Auth, AuthError, Flight, decode_claims, holder};
use crate::Pool;
use crate::account::{Account, AccountFilter, AccountPatch, AccountStatus, Tokens};
use crate::poll::BackgroundTask;
use crate::secret::Secret;
use crate::store::{LeaseTake, RefreshedTokens, TokenSave};
use crate::sync;
use crate::time::Timestamp;

/// Refresh this long before the access token expires.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(3600);
/// Without an expiry, refresh this long after the last refresh.
pub const REFRESH_WITHOUT_EXP: Duration = Duration::from_secs(45 * 60);
/// How long a refresh lease holds when its holder stops without giving it back (and cannot be
/// seen to be gone).
pub const REFRESH_LEASE_TTL: Duration = Duration::from_secs(60);
/// Longest wait for the issuer's answer to a refresh: well inside [`REFRESH_LEASE_TTL`], so that
/// the answer is stored (or rescued) while the lease still holds.
pub const REFRESH_POST_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest a request that met a 401 waits for another holder's refresh of the account before
/// it tries another account.
pub const OTHER_HOLDER_WAIT: Duration = Duration::from_secs(3);
/// Longest a request that met a 401 waits for its account's refresh, whoever runs it (the
/// refresh goes on; the request tries another account).
pub const UNAUTHORIZED_WAIT: Duration = Duration::from_secs(10);
/// After a refresh a 401 asked for, how long another 401 of the account's new token does not
/// refresh it again: the token is not what the backend refuses then, and every refresh rotates
/// the single-use refresh token for nothing.
pub const UNAUTHORIZED_REFRESH_GAP: Duration = Duration::from_secs(5 * 60);
/// How long the new tokens are offered to a store that can neither take nor rescue them.
const PERSIST_FOR: Duration = Duration::from_secs(40);
/// How often a process waiting for another's refresh re-reads the store.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// First backoff after a transient refresh failure (doubling up to [`BACKOFF_MAX`]).
const BACKOFF_BASE: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// The rescue is written at least this long before the lease runs out.
const RESCUE_MARGIN: Duration = Duration::from_secs(2);
/// A refresh is not posted when less than this would be left for the POST.
const MIN_POST: Duration = Duration::from_secs(2);
/// Longest wait for a lease renewal or give-back while the database is busy.
const LEASE_WRITE_WAIT: Duration = Duration::from_secs(1);

/// The time limits of a refresh (fixed, but a unit test may shorten them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// [`REFRESH_LEASE_TTL`].
    pub lease_ttl: Duration,
    /// [`REFRESH_POST_TIMEOUT`].
    pub post_timeout: Duration,
    /// Lease time kept free after the POST: a first store attempt and the rescue.
    pub after_post: Duration,
    /// Longest single attempt to store the new tokens.
    pub save_attempt: Duration,
    /// How long the store may refuse the new tokens before they are rescued.
    pub rescue_after: Duration,
    /// [`PERSIST_FOR`].
    pub persist_for: Duration,
    /// [`OTHER_HOLDER_WAIT`].
    pub other_holder_wait: Duration,
    /// [`UNAUTHORIZED_WAIT`].
    pub unauthorized_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_ttl: REFRESH_LEASE_TTL,
            post_timeout: REFRESH_POST_TIMEOUT,
            after_post: Duration::from_secs(10),
            save_attempt: Duration::from_secs(5),
            rescue_after: Duration::from_secs(5),
            persist_for: PERSIST_FOR,
            other_holder_wait: OTHER_HOLDER_WAIT,
            unauthorized_wait: UNAUTHORIZED_WAIT,
        }
    }
}

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
/// A token that expired by this clock when it was issued (a clock far ahead of the issuer's)
/// counts as one without `exp`: refreshing it at once would rotate it on every check.
pub fn refresh_due_at(account: &Account) -> Timestamp {
    let t = &account.tokens;
    match (t.expires_at, t.last_refresh) {
        (Some(exp), Some(last)) if exp > last => exp.minus(REFRESH_AHEAD.min(exp.since(last) / 2)),
        (_, Some(last)) => last.plus(REFRESH_WITHOUT_EXP),
        (Some(exp), None) => exp.minus(REFRESH_AHEAD),
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
    /// The request may have reached the issuer, but no answer came (a timeout, a connection
    /// lost mid-answer): the refresh token may be spent.
    Unanswered(AuthError),
}

/// A flight's task's end, however it ends (a panic in a store included): the flight leaves
/// `flights` and its callers hear a result, so the account's next refresh starts afresh rather
/// than waiting on a flight that will never land.
struct Landing {
    auth: Auth,
    id: String,
    tx: tokio::sync::watch::Sender<Flight>,
}

impl Landing {
    fn land(self, result: Result<Secret, AuthError>) {
        self.leave();
        self.tx.send_modify(|f| f.result = Some(result));
    }

    /// Takes the flight out of `flights`, if it is still this one.
    fn leave(&self) {
        let mut flights = sync::lock(&self.auth.pool.shared.auth.flights);
        if flights
            .get(&self.id)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            flights.remove(&self.id);
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.leave();
        self.tx.send_if_modified(|f| {
            let unanswered = f.result.is_none();
            if unanswered {
                f.result = Some(Err(AuthError::transient(
                    "the refresh stopped before its end",
                )));
            }
            unanswered
        });
    }
}

/// The refresh lease as this process holds it.
struct HeldLease {
    /// When it runs out, counted from before it was asked for.
    until: Instant,
    /// A lease row was there when it was taken: an earlier refresh never finished.
    left_behind: bool,
    /// The POST got no answer: leave the row behind (expired) as the mark of it.
    answer_lost: bool,
    timing: Timing,
}

impl HeldLease {
    /// Time left until `margin` before the lease runs out.
    fn left(&self, margin: Duration) -> Duration {
        self.until
            .checked_sub(margin)
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}

fn tokens_changed(a: &Tokens, b: &Tokens) -> bool {
    a.access_token != b.access_token || a.refresh_token != b.refresh_token
}

fn dead_reason(code: &str, message: Option<&str>, earlier_answer_lost: bool) -> String {
    let why = match code {
        "refresh_token_expired" => "the refresh token expired",
        "refresh_token_reused" if earlier_answer_lost => {
            "the refresh token was already spent by an earlier refresh of this account by \
             codexpool whose answer was lost (it timed out, or the process was stopped \
             mid-refresh), so the new token never reached the database"
        }
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
        self.single_flight(&a.id, a.tokens.clone(), None).await?;
        self.pool
            .accounts()
            .get(&a.id)
            .map_err(AuthError::from_crate)
    }

    /// For a backend 401: the access token to retry with. When the stored token already differs
    /// from `token_seen` (someone refreshed since the request was sent), returns it without a
    /// refresh; otherwise refreshes once (single-flight, see the module docs), unless
    /// `token_seen` is what a refresh for a 401 returned less than [`UNAUTHORIZED_REFRESH_GAP`]
    /// ago in this process (the backend refuses the account then, not its token).
    ///
    /// [`AuthError::RefreshDead`] means the account now needs a new sign-in (its status says
    /// so); [`AuthError::Transient`] means try another account and come back later — also when
    /// another process has been refreshing the account for [`OTHER_HOLDER_WAIT`], the refresh
    /// has taken [`UNAUTHORIZED_WAIT`] (it goes on; later requests get its tokens), or within
    /// the gap above.
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
        let now = self.now();
        let refreshed_for_401 = sync::lock(&self.pool.shared.auth.refreshed_for_401)
            .get(&a.id)
            .filter(|(_, token)| token == token_seen)
            .map(|(at, _)| *at);
        if let Some(at) = refreshed_for_401
            && now < at.plus(UNAUTHORIZED_REFRESH_GAP)
        {
            return Err(AuthError::transient(format!(
                "account {} refused the token a 401 refreshed {} s ago too; not refreshing it \
                 again before {} s have passed",
                a.id,
                now.since(at).as_secs(),
                UNAUTHORIZED_REFRESH_GAP.as_secs()
            )));
        }
        let timing = self.timing();
        // The flight runs in a task of its own: giving up on it here does not stop it.
        let flight = self.single_flight(&a.id, a.tokens, Some(timing.other_holder_wait));
        match tokio::time::timeout(timing.unauthorized_wait, flight).await {
            Ok(Ok(token)) => {
                let mut refreshed = sync::lock(&self.pool.shared.auth.refreshed_for_401);
                refreshed.retain(|_, (at, _)| now < at.plus(UNAUTHORIZED_REFRESH_GAP));
                refreshed.insert(a.id, (now, token.clone()));
                Ok(token)
            }
            Ok(result) => result,
            Err(_) => Err(AuthError::transient(format!(
                "the refresh of account {} is taking longer than {} s; it goes on in the \
                 background",
                a.id,
                timing.unauthorized_wait.as_secs_f32()
            ))),
        }
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
            let result = self
                .single_flight(&a.id, a.tokens.clone(), None)
                .await
                .map(drop);
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

    pub(crate) fn timing(&self) -> Timing {
        *sync::lock(&self.pool.shared.auth.timing)
    }

    /// One refresh per account in this process: joins the one in flight or starts it. With
    /// `patience`, gives up (transient) once the refresh has waited that long for another
    /// holder's lease; the refresh itself goes on.
    async fn single_flight(
        &self,
        id: &str,
        baseline: Tokens,
        patience: Option<Duration>,
    ) -> Result<Secret, AuthError> {
        let mut rx = loop {
            let mut finishing = {
                let mut flights = sync::lock(&self.pool.shared.auth.flights);
                match flights.get(id) {
                    // A flight that has its result is giving its lease back: a caller arriving
                    // now asks for a refresh after that one, started once the lease is back.
                    Some(rx) if rx.borrow().result.is_some() => rx.clone(),
                    Some(rx) => break rx.clone(),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(Flight::default());
                        flights.insert(id.to_string(), rx.clone());
                        drop(flights);
                        // Spawned with `flights` unlocked: on a runtime that has shut down the
                        // task is dropped at once, here, and its landing takes `flights`.
                        let landing = Landing {
                            auth: self.clone(),
                            id: id.to_string(),
                            tx,
                        };
                        self.pool.shared.runtime.spawn(async move {
                            let result = landing
                                .auth
                                .refresh_across_processes(&landing.id, &baseline, &landing.tx)
                                .await;
                            landing.land(result);
                        });
                        break rx;
                    }
                }
            };
            // Ends when the flight's task drops its sender, after it left `flights`.
            while finishing.changed().await.is_ok() {}
        };
        loop {
            let give_up_at = {
                let f = rx.borrow_and_update();
                if let Some(r) = &f.result {
                    return r.clone();
                }
                patience.zip(f.waiting_since).map(|(p, since)| since + p)
            };
            let changed = match give_up_at {
                Some(at) if Instant::now() >= at => {
                    return Err(AuthError::transient(format!(
                        "another process is refreshing the tokens of account {id}; not waiting \
                         for it"
                    )));
                }
                Some(at) => tokio::select! {
                    changed = rx.changed() => changed,
                    () = tokio::time::sleep_until(at) => Ok(()),
                },
                None => rx.changed().await,
            };
            if changed.is_err() {
                return Err(AuthError::transient("the refresh task stopped"));
            }
        }
    }

    /// The cross-process part: adopt tokens another process stored, or take the lease and
    /// refresh.
    async fn refresh_across_processes(
        &self,
        id: &str,
        baseline: &Tokens,
        flight: &tokio::sync::watch::Sender<Flight>,
    ) -> Result<Secret, AuthError> {
        let shared = &self.pool.shared;
        let holder = shared.auth.holder.clone();
        let timing = self.timing();
        let started = Instant::now();
        let mut replace: Option<String> = None;
        loop {
            let stored = shared
                .store
                .get_account(id)
                .await?
                .ok_or_else(|| AuthError::UnknownAccount { id: id.to_string() })?;
            if tokens_changed(&stored.tokens, baseline) {
                return Ok(self.adopt(stored).await);
            }
            let asked = Instant::now();
            let take = shared
                .store
                .acquire_refresh_lease(
                    id,
                    &holder,
                    self.now(),
                    timing.lease_ttl,
                    replace.as_deref(),
                )
                .await?;
            match take {
                LeaseTake::Taken { left_behind } => {
                    if left_behind.is_some() && left_behind == replace {
                        tracing::warn!(account = %id, "took over the refresh lease of a process that no longer exists");
                    }
                    flight.send_modify(|f| f.waiting_since = None);
                    let mut lease = HeldLease {
                        until: asked + timing.lease_ttl,
                        left_behind: left_behind.is_some(),
                        answer_lost: false,
                        timing,
                    };
                    let result = self.refresh_holding_lease(id, baseline, &mut lease).await;
                    // The callers go on now; giving the lease back may wait on a busy database.
                    flight.send_modify(|f| f.result = Some(result.clone()));
                    self.give_back(id, &holder, &lease).await;
                    return result;
                }
                LeaseTake::Held { holder: other, .. } => {
                    if replace.as_deref() != Some(other.as_str()) && holder::is_gone(&other) {
                        replace = Some(other);
                        continue;
                    }
                    replace = None;
                    if flight.borrow().waiting_since.is_none() {
                        flight.send_modify(|f| f.waiting_since = Some(Instant::now()));
                    }
                }
            }
            if started.elapsed() > timing.lease_ttl + Duration::from_secs(5) {
                return Err(AuthError::transient(format!(
                    "another process has been refreshing account {id} for over a minute"
                )));
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Gives the lease back; after a lost answer, leaves its row behind (expired, so nobody
    /// waits for it) as the mark that the refresh token may be spent. Tries again while the
    /// database is busy, as long as the lease would otherwise still hold (the callers have their
    /// result already).
    async fn give_back(&self, id: &str, holder: &str, lease: &HeldLease) {
        let store = &self.pool.shared.store;
        loop {
            let done = if lease.answer_lost {
                store
                    .renew_refresh_lease(id, holder, self.now(), Duration::ZERO, LEASE_WRITE_WAIT)
                    .await
                    .map(drop)
            } else {
                store.release_refresh_lease(id, holder).await
            };
            match done {
                Ok(()) => return,
                Err(e) if lease.left(Duration::ZERO) > LEASE_WRITE_WAIT => {
                    tracing::debug!(account = %id, error = %e, "could not give the refresh lease back yet");
                    tokio::time::sleep(LEASE_WRITE_WAIT).await;
                }
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "could not give the refresh lease back");
                    return;
                }
            }
        }
    }

    /// Under the lease: re-read, refresh, persist.
    async fn refresh_holding_lease(
        &self,
        id: &str,
        baseline: &Tokens,
        lease: &mut HeldLease,
    ) -> Result<Secret, AuthError> {
        let store = &self.pool.shared.store;
        let current = store
            .get_account(id)
            .await?
            .ok_or_else(|| AuthError::UnknownAccount { id: id.to_string() })?;
        if tokens_changed(&current.tokens, baseline) {
            return Ok(self.adopt(current).await);
        }
        // The answer must arrive with enough of the lease left to store (or rescue) it.
        let post_for = lease
            .left(lease.timing.after_post)
            .min(lease.timing.post_timeout);
        if post_for < MIN_POST.min(lease.timing.post_timeout) {
            return Err(AuthError::transient(format!(
                "the database was too slow to refresh account {id} safely; try again later"
            )));
        }
        let sent = current.tokens.refresh_token.clone();
        match self.post_refresh(&sent, post_for).await? {
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
                    refresh_token: refresh_token.map(Secret::new).unwrap_or(sent.clone()),
                    last_refresh: Some(self.now()),
                };
                let mut extra = AccountPatch::default();
                if current.status == AccountStatus::NeedsLogin {
                    // Fresh tokens cure a dead sign-in, but not one a person disabled since.
                    extra = extra
                        .status(AccountStatus::Active, None)
                        .only_from(&[AccountStatus::NeedsLogin]);
                }
                if let Some(c) = &id_claims {
                    if c.chatgpt_plan_type.is_some() && c.chatgpt_plan_type != current.plan_type {
                        extra.plan_type = Some(c.chatgpt_plan_type.clone());
                    }
                    if c.email.is_some() && c.email != current.email {
                        extra.email = Some(c.email.clone());
                    }
                }
                let token = self
                    .persist(id, RefreshedTokens::new(sent, tokens, extra), lease)
                    .await?;
                tracing::info!(account = %id, "refreshed the tokens");
                Ok(token)
            }
            Refreshed::Unanswered(e) => {
                lease.answer_lost = true;
                Err(e)
            }
            Refreshed::Dead { code, message } => {
                if code == "refresh_token_reused"
                    && let Some(again) = store.get_account(id).await?
                    && again.tokens.refresh_token != sent
                {
                    // Another holder rotated it meanwhile: theirs is the live token.
                    return Ok(self.adopt(again).await);
                }
                let reason = dead_reason(&code, message.as_deref(), lease.left_behind);
                tracing::warn!(
                    account = %id,
                    code = %code,
                    earlier_refresh_lost = lease.left_behind,
                    "the sign-in is dead; the account needs a new login"
                );
                // Checked against the stored status and tokens, not `current`: a person may
                // have disabled the account, or signed it in again, while the refresh was on
                // the wire.
                let patch = AccountPatch::default()
                    .status(AccountStatus::NeedsLogin, Some(reason))
                    .only_from(&[AccountStatus::Active, AccountStatus::NeedsLogin])
                    .only_with_refresh_token(sent);
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

    /// Stores rotated tokens: losing them would lose the sign-in (the issuer spent the old
    /// refresh token). Tries the store in bounded attempts; when it still refuses after
    /// `rescue_after`, has it rescue them (see the module docs); a store that can do neither is
    /// tried for [`PERSIST_FOR`], renewing the lease meanwhile. The access token to use.
    async fn persist(
        &self,
        id: &str,
        refreshed: RefreshedTokens,
        lease: &mut HeldLease,
    ) -> Result<Secret, AuthError> {
        let shared = &self.pool.shared;
        let timing = lease.timing;
        let answered = Instant::now();
        let rescue_at = answered + timing.rescue_after.min(lease.left(RESCUE_MARGIN));
        let give_up = answered + timing.persist_for;
        let mut rescue_tried = false;
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        let last = loop {
            attempt += 1;
            let wait = if rescue_tried {
                timing.save_attempt
            } else {
                rescue_at
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(100), timing.save_attempt)
            };
            // Held across the write and the update of memory, so that a reload running
            // meanwhile cannot install what it read before the write. Waited for no longer than
            // the write: a change that holds it on a locked database must not keep these
            // tokens from their rescue.
            let error = match tokio::time::timeout(wait, shared.admin.lock()).await {
                Err(_) => format!("waited {wait:?} for another change of the pool to finish"),
                Ok(_guard) => {
                    // The store gives up by itself after `wait`; this also covers time spent
                    // queued behind its other work.
                    let saved = tokio::time::timeout(
                        wait + Duration::from_secs(1),
                        shared
                            .store
                            .save_refreshed_tokens(id, &refreshed, self.now(), wait),
                    )
                    .await;
                    match saved {
                        Ok(Ok(TokenSave::Saved(a))) => {
                            let token = a.tokens.access_token.clone();
                            sync::write(&shared.accounts).upsert(a);
                            return Ok(token);
                        }
                        Ok(Ok(TokenSave::Superseded(a))) => {
                            tracing::warn!(account = %id, "newer tokens were stored while the refresh was under way; keeping those");
                            let token = a.tokens.access_token.clone();
                            sync::write(&shared.accounts).upsert(a);
                            return Ok(token);
                        }
                        Ok(Err(crate::store::StoreError::NotFound { .. })) => {
                            return Err(AuthError::UnknownAccount { id: id.to_string() });
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("the database did not answer within {wait:?}"),
                    }
                }
            };
            let now = Instant::now();
            if !rescue_tried && now >= rescue_at {
                match shared.store.rescue_refreshed_tokens(id, &refreshed).await {
                    Ok(true) => {
                        tracing::error!(
                            account = %id,
                            error = %error,
                            waited_ms = u64::try_from(now.duration_since(answered).as_millis()).unwrap_or(u64::MAX),
                            "the database would not take the refreshed tokens; they are kept in a private \
                             file beside it (rescued-tokens/) and go into the database with its next write"
                        );
                        return Ok(self.install_rescued(id, &refreshed).await);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(account = %id, error = %e, "could not rescue the refreshed tokens either; still trying the database");
                    }
                }
                rescue_tried = true;
            }
            if now + pause >= give_up {
                break error;
            }
            tracing::warn!(account = %id, error = %error, attempt, "could not save refreshed tokens; retrying");
            if rescue_tried && lease.left(Duration::ZERO) < timing.lease_ttl / 2 {
                let asked = Instant::now();
                match shared
                    .store
                    .renew_refresh_lease(
                        id,
                        &shared.auth.holder,
                        self.now(),
                        timing.lease_ttl,
                        LEASE_WRITE_WAIT,
                    )
                    .await
                {
                    Ok(true) => lease.until = asked + timing.lease_ttl,
                    Ok(false) => {
                        tracing::warn!(account = %id, "lost the refresh lease while saving the refreshed tokens");
                    }
                    Err(_) => {}
                }
            }
            let pause_for = if rescue_tried {
                pause
            } else {
                pause.min(rescue_at.saturating_duration_since(Instant::now()))
            };
            tokio::time::sleep(pause_for).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        };
        tracing::error!(account = %id, "refreshed tokens could not be saved; the account will need a new sign-in");
        Err(AuthError::Store {
            message: format!("the refreshed tokens could not be saved: {last}"),
        })
    }

    /// Installs tokens another process stored into memory; the access token to use. `seen` was
    /// read before `admin` was taken, so a reload (or a change of this process) may have put
    /// something newer in memory since: the account is read again under `admin`, as a reload
    /// reads it. When that read fails, only `seen`'s tokens go into memory (unless older).
    async fn adopt(&self, seen: Account) -> Secret {
        let shared = &self.pool.shared;
        let _guard = shared.admin.lock().await;
        tracing::debug!(account = %seen.id, "adopting tokens refreshed elsewhere");
        match shared.store.get_account(&seen.id).await {
            Ok(Some(a)) => {
                let token = a.tokens.access_token.clone();
                sync::write(&shared.accounts).upsert(a);
                token
            }
            // Removed meanwhile: the next reload drops it from memory.
            Ok(None) => seen.tokens.access_token,
            Err(e) => {
                tracing::debug!(account = %seen.id, error = %e, "could not re-read the account to adopt its tokens; taking only the tokens");
                let mut t = sync::write(&shared.accounts);
                let Some(mut a) = t.get(&seen.id).map(|s| s.account.clone()) else {
                    return seen.tokens.access_token;
                };
                if crate::store::rescue::replaces(&seen.tokens, &a.tokens, false) {
                    a.tokens = seen.tokens;
                }
                let token = a.tokens.access_token.clone();
                t.upsert(a);
                token
            }
        }
    }

    /// Puts rescued tokens into the account as memory has it now (not as it was read before the
    /// POST: a person may have disabled or relabelled it meanwhile); the access token to use.
    /// Tokens newer than the rescued ones, installed meanwhile, stay. A change that keeps the
    /// pool busy (one stuck on the locked database) is waited for briefly: the tokens are safe
    /// on disk, and a reload that raced this one reads them from there.
    async fn install_rescued(&self, id: &str, refreshed: &RefreshedTokens) -> Secret {
        let shared = &self.pool.shared;
        let _guard = tokio::time::timeout(Duration::from_secs(1), shared.admin.lock()).await;
        let mut t = sync::write(&shared.accounts);
        let Some(mut a) = t.get(id).map(|s| s.account.clone()) else {
            return refreshed.tokens.access_token.clone();
        };
        if refreshed.writes_over(&a.tokens) {
            refreshed.apply_to(&mut a, self.now());
        }
        let token = a.tokens.access_token.clone();
        t.upsert(a);
        token
    }

    /// `POST {issuer}/oauth/token` with the refresh grant (JSON), waiting at most `timeout`.
    async fn post_refresh(
        &self,
        refresh_token: &Secret,
        timeout: Duration,
    ) -> Result<Refreshed, AuthError> {
        let config = self.config();
        let sent = self
            .http()?
            .post(format!("{}/oauth/token", config.issuer))
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(timeout)
            .json(&json!({
                "client_id": config.client_id,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token.expose(),
                "scope": "openid profile email",
            }))
            .send()
            .await;
        let unanswered = |e: &reqwest::Error| {
            let error = AuthError::transient(format!("token refresh: {}", describe(e)));
            // Not connected: the token did not leave. Anything later: it may have been spent.
            if e.is_connect() {
                Err(error)
            } else {
                Ok(Refreshed::Unanswered(error))
            }
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return unanswered(&e),
        };
        let status = resp.status().as_u16();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if (200..300).contains(&status) => return unanswered(&e),
            Err(e) => {
                return Err(AuthError::transient(format!(
                    "token refresh: {}",
                    describe(&e)
                )));
            }
        };
        if (200..300).contains(&status) {
            // A success we cannot read still means the issuer took (and spent) the refresh
            // token: as lost as an answer that never came.
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                return Ok(Refreshed::Unanswered(AuthError::transient(format!(
                    "token refresh: HTTP {status} with a body that is not JSON"
                ))));
            };
            let text = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            let Some(access_token) = text("access_token") else {
                return Ok(Refreshed::Unanswered(AuthError::transient(
                    "token refresh: the answer has no access_token",
                )));
            };
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
        // Expired when it came (this clock runs ahead): as without exp, not at every check.
        assert_eq!(
            refresh_due_at(&account(Some(500), Some(1000))),
            Timestamp::from_secs(1000 + 45 * 60)
        );
        // Nothing known: now.
        assert_eq!(
            refresh_due_at(&account(None, None)),
            Timestamp::from_millis(0)
        );
    }

    #[test]
    fn the_post_and_what_follows_fit_in_the_lease() {
        let t = Timing::default();
        // The answer arrives with ten seconds of the lease left: a first attempt to store it,
        // then the rescue, still well before another process may take the lease.
        assert!(t.post_timeout + t.after_post <= t.lease_ttl);
        assert!(t.rescue_after + RESCUE_MARGIN <= t.after_post);
        assert!(t.save_attempt <= t.after_post);
        assert!(t.other_holder_wait * 10 <= t.lease_ttl);
        assert!(t.other_holder_wait < t.unauthorized_wait);
        // The HTTP client's own limit does not cut the refresh short.
        assert!(t.post_timeout >= super::super::client::REQUEST_TIMEOUT);
    }

    /// An in-memory pool (`config`) holding `fake`'s `acct-1` sign-in; the pool and its id.
    async fn pool_with_acct_1(
        fake: &codexpool_testkit::FakeOpenAi,
        config: crate::Config,
    ) -> (Pool, String) {
        pool_on_with_acct_1(
            std::sync::Arc::new(crate::store::MemoryStore::new()),
            fake,
            config,
        )
        .await
    }

    /// Settings whose issuer (and usage endpoint) is a stand-in at `issuer`.
    fn issuer_at(issuer: &str) -> crate::Config {
        crate::Config::default()
            .with("ISSUER", issuer)
            .unwrap()
            .with("USAGE_BASE_URL", issuer)
            .unwrap()
    }

    /// [`pool_with_acct_1`] on `store`.
    async fn pool_on_with_acct_1(
        store: std::sync::Arc<dyn crate::store::Store>,
        fake: &codexpool_testkit::FakeOpenAi,
        config: crate::Config,
    ) -> (Pool, String) {
        let pool = Pool::builder(config)
            .store(store)
            .watch_interval(Duration::ZERO)
            .open()
            .await
            .unwrap();
        let doc = serde_json::to_vec(&fake.auth_json("acct-1")).unwrap();
        let report = pool.accounts().import_bytes("auth.json", &doc).await;
        let id = report.results[0].account_id.clone().unwrap();
        (pool, id)
    }

    /// A request that met a 401 gives up on a slow refresh after `unauthorized_wait` (and tries
    /// another account); the refresh goes on, and its tokens are there for the next request.
    #[tokio::test]
    async fn a_401_waits_for_a_slow_refresh_only_so_long() {
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        fake.refresh_delay(Duration::from_millis(1500));
        let config = crate::Config::default()
            .with("ISSUER", &fake.issuer())
            .unwrap();
        let (pool, id) = pool_with_acct_1(&fake, config).await;
        sync::lock(&pool.shared.auth.timing).unauthorized_wait = Duration::from_millis(200);
        let seen = pool.accounts().get(&id).unwrap().tokens.access_token;

        let started = std::time::Instant::now();
        let e = pool
            .auth()
            .refresh_after_unauthorized(&id, &seen)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("goes on"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let refreshed = fake
            .wait_until_async(Duration::from_secs(10), |_| {
                pool.accounts().get(&id).unwrap().tokens.access_token != seen
            })
            .await;
        assert!(refreshed, "the refresh went on without its caller");
        assert_eq!(
            pool.accounts()
                .get(&id)
                .unwrap()
                .tokens
                .access_token
                .expose(),
            fake.current_tokens("acct-1").access_token
        );
    }

    /// The account's refresh lease is free, but its row stays as the mark of this pool's
    /// refresh whose answer was lost.
    async fn assert_left_its_mark(pool: &Pool, id: &str) {
        let took = pool
            .store()
            .acquire_refresh_lease(id, "next", pool.now(), REFRESH_LEASE_TTL, None)
            .await
            .unwrap();
        assert_eq!(
            took,
            LeaseTake::Taken {
                left_behind: Some(pool.shared.auth.holder.clone())
            }
        );
    }

    #[tokio::test]
    async fn the_refresh_post_times_out_inside_the_lease_and_leaves_its_mark() {
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        // An issuer that takes the connection and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", silent.local_addr().unwrap());
        let (pool, id) = pool_with_acct_1(&fake, issuer_at(&issuer)).await;
        sync::lock(&pool.shared.auth.timing).post_timeout = Duration::from_millis(300);

        let started = std::time::Instant::now();
        let e = pool.auth().refresh(&id).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_left_its_mark(&pool, &id).await;
        drop(silent);
    }

    /// A success whose body cannot be read: the issuer spent the refresh token all the same,
    /// so the refresh leaves the same mark as one whose answer never came.
    #[tokio::test]
    async fn a_refresh_answered_200_with_garbage_leaves_its_mark() {
        use std::io::{Read, Write};
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://{}", garbage.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = garbage.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!");
        });
        let (pool, id) = pool_with_acct_1(&fake, issuer_at(&issuer)).await;
        let e = pool.auth().refresh(&id).await.unwrap_err();
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("not JSON"), "{e}");
        assert_left_its_mark(&pool, &id).await;
        server.join().unwrap();
    }

    #[tokio::test]
    async fn adopting_tokens_keeps_a_change_installed_after_they_were_read() {
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        let (pool, id) = pool_with_acct_1(&fake, crate::Config::default()).await;
        // Another process stores new tokens; a refresh here reads them (`seen`)...
        let mut tokens = pool.accounts().get(&id).unwrap().tokens;
        tokens.access_token = Secret::new("access-from-elsewhere");
        tokens.refresh_token = Secret::new("refresh-from-elsewhere");
        let store = pool.store();
        let now = pool.now();
        let seen = store
            .patch_account(&id, &AccountPatch::default().tokens(tokens.clone()), now)
            .await
            .unwrap();
        // ...and before it takes `admin`, a person disables the account (store and memory).
        pool.accounts().disable(&id).await.unwrap();

        let token = pool.auth().adopt(seen).await;
        assert_eq!(token, tokens.access_token);
        let a = pool.accounts().get(&id).unwrap();
        assert_eq!(a.status, AccountStatus::Disabled, "{a:?}");
        assert_eq!(a.tokens, tokens);
    }

    #[test]
    fn dead_reasons_are_sentences() {
        assert!(dead_reason("refresh_token_reused", None, false).contains("another holder"));
        let lost = dead_reason("refresh_token_reused", None, true);
        assert!(lost.contains("answer was lost"), "{lost}");
        assert!(!lost.contains("another holder"), "{lost}");
        assert!(
            dead_reason("invalid_grant", Some("bad"), true)
                .ends_with("(invalid_grant: bad); sign in again")
        );
    }

    /// A pool whose runtime has shut down (an embedder's temporary runtime) answers a refresh
    /// asked from another runtime with an error: the refresh task is dropped as it is spawned.
    #[test]
    fn a_refresh_after_the_pools_runtime_ended_is_answered() {
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        let config = crate::Config::default()
            .with("ISSUER", &fake.issuer())
            .unwrap();
        let opened = tokio::runtime::Runtime::new().unwrap();
        let (pool, id) = opened.block_on(pool_with_acct_1(&fake, config));
        drop(opened);
        let (done, answer) = std::sync::mpsc::channel();
        let asker = pool.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = done.send(rt.block_on(asker.auth().refresh(&id)).map(|_| ()));
        });
        let result = answer
            .recv_timeout(Duration::from_secs(10))
            .expect("the refresh is answered, not stuck on its own lock");
        let err = result.unwrap_err();
        assert!(err.to_string().contains("stopped before its end"), "{err}");
        assert!(sync::lock(&pool.shared.auth.flights).is_empty());
    }

    /// Reading the request log or the ledger writes what is queued and does not wait for a
    /// refresh in flight (only [`Pool::flush`], before a stop, does).
    #[tokio::test]
    async fn reads_do_not_wait_for_a_refresh_in_flight() {
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        fake.refresh_delay(Duration::from_secs(5));
        let config = crate::Config::default()
            .with("ISSUER", &fake.issuer())
            .unwrap();
        let (pool, id) = pool_with_acct_1(&fake, config).await;
        let refreshing = pool.clone();
        let refresh = tokio::spawn(async move { refreshing.auth().refresh(&id).await });
        while fake.refreshes_held() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let quick = Duration::from_secs(2);
        let rows = tokio::time::timeout(quick, pool.request_log().list(&Default::default()))
            .await
            .expect("the log is read while the refresh waits for its answer");
        assert!(rows.unwrap().is_empty());
        tokio::time::timeout(
            quick,
            pool.usage().ledger(&crate::usage::LedgerQuery::by(
                crate::usage::LedgerGroup::Key,
            )),
        )
        .await
        .expect("the ledger too")
        .unwrap();
        assert!(!refresh.is_finished());
        refresh.abort();
    }

    /// A refresh whose task died (here: a store that panics giving its lease back) does not
    /// stay in flight: the account's next refresh runs, and nothing is left waiting.
    #[tokio::test]
    async fn a_refresh_task_that_panics_leaves_no_flight_behind() {
        let fake = codexpool_testkit::FakeOpenAi::start().unwrap();
        fake.add_account(codexpool_testkit::FakeAccount::new("acct-1"));
        let store = crate::store::flaky::FlakyStore::new();
        let config = crate::Config::default()
            .with("ISSUER", &fake.issuer())
            .unwrap();
        let (pool, id) = pool_on_with_acct_1(store.clone(), &fake, config).await;
        store
            .panic_on_release
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Its outcome depends on where the panic struck; what matters is what comes after.
        let _ = tokio::time::timeout(Duration::from_secs(5), pool.auth().refresh(&id))
            .await
            .expect("the callers of a dead flight are answered");
        let again = tokio::time::timeout(Duration::from_secs(5), pool.auth().refresh(&id))
            .await
            .expect("a new refresh starts");
        assert!(again.is_ok(), "{again:?}");
        assert!(sync::lock(&pool.shared.auth.flights).is_empty());
        assert_eq!(fake.refresh_count("acct-1"), 2);
    }
}
