//! `AccountPool`: the pooled accounts in memory (organisation, status, runtime state) and the
//! management API over them; selection lives in `select`, the per-request hold
//! in [`Lease`].
//!
//! The table is read on every request and written only by admin actions, sign-ins, refreshes and
//! cross-process reloads. Runtime state that changes per request (inflight, cooldowns, the
//! usage summary) sits in atomics beside each account, so selection takes one read lock and no
//! other lock.

mod lease;
mod select;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lease::Ladder;
pub use lease::{
    CHALLENGE_COOLDOWN, Lease, MAX_RETRY_AFTER, Outcome, RATE_LIMIT_COOLDOWNS,
    UNAUTHORIZED_COOLDOWN, UPSTREAM_ERROR_COOLDOWNS,
};

use crate::Pool;
use crate::account::{Account, AccountFilter, AccountPatch, AccountStatus};
use crate::error::{Error, Result};
use crate::stamp::Stamp;
use crate::sync;
use crate::time::Timestamp;
use crate::usage::{AccountUsage, WindowKind, WindowReading};

/// How long a conversation stays on its account after its last request.
pub const AFFINITY_TTL: Duration = Duration::from_secs(3600);

/// Why no account could be leased.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool is empty.
    #[error("no accounts in the pool: sign in with `codexpool account login` or import one")]
    NoAccounts,
    /// No account belongs to the key's groups.
    #[error("no account belongs to the group(s) this key may use: {}", groups.join(", "))]
    NoneInGroups {
        /// The allowed groups.
        groups: Vec<String>,
    },
    /// No account is active.
    #[error(
        "no active account ({disabled} disabled, {needs_login} need a new sign-in, {banned} deactivated)"
    )]
    NoneActive {
        /// Accounts disabled by a person.
        disabled: usize,
        /// Accounts whose sign-in died.
        needs_login: usize,
        /// Accounts deactivated by OpenAI.
        banned: usize,
    },
    /// Every account has reached a usage limit.
    #[error("every account has reached its usage limit; the first resets at {resets_at}")]
    Exhausted {
        /// The earliest reset.
        resets_at: Timestamp,
    },
    /// Every account is cooling down after upstream errors (or exhausted).
    #[error("every account is cooling down after upstream errors; the first is back at {until}")]
    CoolingDown {
        /// When the first one is usable again.
        until: Timestamp,
    },
    /// Every account is at its inflight cap and none freed up in time.
    #[error(
        "every account is busy (CODEXPOOL_ACCOUNT_MAX_INFLIGHT={cap}); waited {} ms",
        waited.as_millis()
    )]
    Busy {
        /// The per-account cap.
        cap: u32,
        /// How long the request waited.
        waited: Duration,
    },
    /// Every usable account was already tried for this request.
    #[error("all {tried} usable account(s) were already tried for this request")]
    AllTried {
        /// How many.
        tried: usize,
        /// When the first account that is cooling down or exhausted is usable again, if any is.
        back_at: Option<Timestamp>,
    },
}

impl PoolError {
    /// When trying again makes sense, if known.
    pub fn retry_at(&self) -> Option<Timestamp> {
        match self {
            Self::Exhausted { resets_at } => Some(*resets_at),
            Self::CoolingDown { until } => Some(*until),
            Self::AllTried { back_at, .. } => *back_at,
            _ => None,
        }
    }
}

/// What a request needs from an account.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand<'a> {
    /// The model. Selection does not read it yet: every plan serves every Codex model today; it
    /// is kept for routing by plan.
    pub model: Option<&'a str>,
    /// When set and non-empty, only accounts in these groups (the key's policy).
    pub groups: Option<&'a [String]>,
    /// A conversation id: the conversation stays on its account while that account is usable.
    pub affinity: Option<&'a str>,
    /// Accounts already tried for this request.
    pub tried: &'a [String],
}

impl<'a> Demand<'a> {
    /// Any account.
    pub fn any() -> Self {
        Self::default()
    }
    /// Sets the model.
    pub fn model(mut self, m: &'a str) -> Self {
        self.model = Some(m);
        self
    }
    /// Restricts to groups.
    pub fn groups(mut self, g: &'a [String]) -> Self {
        self.groups = Some(g);
        self
    }
    /// Sets the conversation id.
    pub fn affinity(mut self, key: &'a str) -> Self {
        self.affinity = Some(key);
        self
    }
    /// Excludes accounts already tried.
    pub fn tried(mut self, t: &'a [String]) -> Self {
        self.tried = t;
        self
    }
}

/// A window's figures in one atomic, for selection without locks: read in one load, so a
/// reader never pairs one reading's share with another's reset (an exhausted window's 100 %
/// with the next window's reset would bench the account for hours).
pub(crate) struct WindowCell(AtomicU64);

/// The low bits hold the used share × 1000 (0..=100,000); all ones = unknown. The high bits
/// hold when the reading stops being valid (its reset), in ms since the epoch.
const USED_BITS: u32 = 17;
const UNKNOWN: u64 = (1 << USED_BITS) - 1;

impl WindowCell {
    fn new() -> Self {
        Self(AtomicU64::new(UNKNOWN))
    }

    fn set(&self, r: Option<&WindowReading>) {
        let packed = r.map_or(UNKNOWN, |r| {
            let end = r.resets_at.unwrap_or_else(|| {
                r.observed_at
                    .plus(Duration::from_secs(u64::from(r.window_minutes) * 60))
            });
            #[allow(clippy::cast_sign_loss)]
            let until = end.as_millis().clamp(0, i64::MAX >> USED_BITS) as u64;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let milli = (r.used_percent.clamp(0.0, 100.0) * 1000.0).round() as u64;
            until << USED_BITS | milli
        });
        self.0.store(packed, Ordering::Relaxed);
    }

    /// (used %, valid until) when known and not stale.
    fn fresh(&self, now: i64) -> Option<(f64, i64)> {
        let packed = self.0.load(Ordering::Relaxed);
        let used = packed & UNKNOWN;
        #[allow(clippy::cast_possible_wrap)]
        let until = (packed >> USED_BITS) as i64;
        #[allow(clippy::cast_precision_loss)]
        (used != UNKNOWN && now < until).then(|| (used as f64 / 1000.0, until))
    }
}

/// Per-account runtime state, kept across table rebuilds.
pub(crate) struct SlotState {
    pub inflight: AtomicU32,
    pub cooldown_until: AtomicI64,
    /// Failures in a row on each [`Ladder`], counted apart: two upstream errors do not make
    /// the next rate limit a third strike.
    pub strikes: [AtomicU32; 2],
    five_hour: WindowCell,
    weekly: WindowCell,
    /// Detailed readings (with provenance), for reports.
    pub usage: std::sync::Mutex<AccountUsage>,
    /// `observed_at` (ms) of the newest reading of each window handed to the store.
    stored_at: [AtomicI64; 2],
    pub used: Stamp,
}

impl SlotState {
    fn new(account: &Account) -> Self {
        Self {
            inflight: AtomicU32::new(0),
            cooldown_until: AtomicI64::new(0),
            strikes: [AtomicU32::new(0), AtomicU32::new(0)],
            five_hour: WindowCell::new(),
            weekly: WindowCell::new(),
            usage: std::sync::Mutex::new(AccountUsage {
                account_id: account.id.clone(),
                ..Default::default()
            }),
            stored_at: [AtomicI64::new(i64::MIN), AtomicI64::new(i64::MIN)],
            used: Stamp::new(account.last_used_at),
        }
    }

    /// Takes an inflight unit unless at the cap (0 = no cap).
    pub fn try_take(&self, cap: u32) -> bool {
        if cap == 0 {
            self.inflight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        // SeqCst pairs with the gate (see `Gate`): free on x86, where these are locked anyway.
        self.inflight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn cool_until(&self, t: Timestamp) {
        self.cooldown_until
            .fetch_max(t.as_millis(), Ordering::Relaxed);
    }

    /// A failure that climbs `ladder` on repeats (a success clears the strikes); `first`, the
    /// upstream's own wait, is believed the first time, and repeats climb the ladder one step
    /// behind it.
    ///
    /// Requests in flight together fail together: while the cooldown of the first failure
    /// runs, the others of the burst add no strike (a longer wait still counts), or one burst
    /// would bench the account for hours. The first failure claims its strike by setting the
    /// cooldown, so failures of one burst reported on several threads at once are one strike.
    pub fn strike(&self, now: Timestamp, ladder: Ladder, first: Option<Duration>) {
        let steps = ladder.steps();
        let step = |n: usize| steps[n.min(steps.len() - 1)];
        let strikes = &self.strikes[ladder as usize];
        let mut current = self.cooldown_until.load(Ordering::Acquire);
        loop {
            if current > now.as_millis() {
                // Still as long as a first failure holds the account: the running cooldown may
                // be another failure's shorter one (a challenge's 6 s).
                self.cool_until(now.plus(first.unwrap_or(step(0))));
                return;
            }
            let n = strikes.load(Ordering::Acquire) as usize;
            let cooldown = match (first, n) {
                (None, n) => step(n),
                (Some(r), 0) => r,
                (Some(r), n) => r.max(step(n - 1)),
            };
            // At least 1 ms, so that the claim is seen by the others of the burst.
            let until = now.plus(cooldown).as_millis().max(now.as_millis() + 1);
            match self.cooldown_until.compare_exchange(
                current,
                until,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    strikes.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Err(seen) => current = seen,
            }
        }
    }

    pub fn exhausted_until(&self, now: i64) -> Option<i64> {
        [&self.five_hour, &self.weekly]
            .into_iter()
            .filter_map(|w| {
                w.fresh(now)
                    .filter(|(used, _)| *used >= 100.0)
                    .map(|(_, until)| until)
            })
            .max()
    }

    /// (below the guard, share left, earliest reset) over the fresh windows.
    pub fn headroom(&self, now: i64) -> (bool, f64, i64) {
        let mut guarded = false;
        let mut left = 100.0f64;
        let mut reset = i64::MAX;
        for (cell, kind) in [
            (&self.five_hour, WindowKind::FiveHour),
            (&self.weekly, WindowKind::Weekly),
        ] {
            if let Some((used, until)) = cell.fresh(now) {
                let l = (100.0 - used).max(0.0);
                guarded |= l < kind.guard_percent_left();
                left = left.min(l);
                reset = reset.min(until);
            }
        }
        (guarded, left, reset)
    }

    /// How long before `at` the stored reading of `kind` was observed.
    pub fn stored_age(&self, kind: WindowKind, at: Timestamp) -> Duration {
        let stored = self.stored_at[kind as usize].load(Ordering::Relaxed);
        Duration::from_millis(u64::try_from(at.as_millis().saturating_sub(stored)).unwrap_or(0))
    }

    /// Notes that a reading of `kind` observed at `at` is (or is about to be) stored.
    pub fn mark_stored(&self, kind: WindowKind, at: Timestamp) {
        self.stored_at[kind as usize].fetch_max(at.as_millis(), Ordering::Relaxed);
    }

    /// Refreshes the atomics from the detailed readings.
    pub fn sync_cells(&self, usage: &AccountUsage) {
        self.five_hour.set(usage.five_hour.as_ref());
        self.weekly.set(usage.weekly.as_ref());
    }
}

/// An account snapshot and its runtime state.
pub(crate) struct Slot {
    pub account: Account,
    pub state: Arc<SlotState>,
}

/// The in-memory account table, ordered by (sort, label, id).
#[derive(Default)]
pub(crate) struct Table {
    pub order: Vec<Arc<Slot>>,
    by_id: HashMap<String, Arc<Slot>>,
    /// (chatgpt_account_id, chatgpt_user_id) → local id.
    by_identity: HashMap<(String, String), String>,
}

fn order_key(a: &Account) -> (i64, String, &str) {
    (a.sort, a.label.to_lowercase(), a.id.as_str())
}

fn identity_key(a: &Account) -> Option<(String, String)> {
    a.identity()
        .map(|(acc, user)| (acc.to_string(), user.to_string()))
}

impl Table {
    pub fn get(&self, id: &str) -> Option<&Arc<Slot>> {
        self.by_id.get(id)
    }

    /// The slot of an id, of a unique id prefix (an exact id is a hash lookup), else of the
    /// one account with that exact label or email (emails compared without regard to case).
    pub fn resolve(&self, id: &str) -> Result<&Arc<Slot>> {
        if let Some(s) = self.by_id.get(id) {
            return Ok(s);
        }
        let found = crate::id::resolve_prefix("account", id, self.by_id.keys());
        let id = crate::id::or_by_name("account", found, "label or email", id, |name| {
            self.order
                .iter()
                .filter(|s| {
                    s.account.label == name
                        || s.account
                            .email
                            .as_deref()
                            .is_some_and(|e| e.eq_ignore_ascii_case(name))
                })
                .map(|s| s.account.id.clone())
                .collect()
        })?;
        self.by_id.get(&id).ok_or(Error::NotFound {
            what: "account",
            id,
        })
    }

    pub fn find_identity(&self, account_id: &str, user_id: &str) -> Option<&Arc<Slot>> {
        let id = self
            .by_identity
            .get(&(account_id.to_string(), user_id.to_string()))?;
        self.by_id.get(id)
    }

    fn index(&mut self, slot: &Arc<Slot>) {
        self.by_id.insert(slot.account.id.clone(), slot.clone());
        if let Some(k) = identity_key(&slot.account) {
            self.by_identity.insert(k, slot.account.id.clone());
        }
    }

    fn unindex(&mut self, a: &Account) {
        self.by_id.remove(&a.id);
        if let Some(k) = identity_key(a)
            && self.by_identity.get(&k) == Some(&a.id)
        {
            self.by_identity.remove(&k);
        }
    }

    /// Inserts or replaces an account, keeping its runtime state and the order.
    pub fn upsert(&mut self, account: Account) -> Arc<Slot> {
        let old = self.by_id.get(&account.id).cloned();
        let state = old
            .as_ref()
            .map_or_else(|| Arc::new(SlotState::new(&account)), |o| o.state.clone());
        let slot = Arc::new(Slot { account, state });
        if let Some(old) = &old {
            self.unindex(&old.account);
        }
        self.index(&slot);
        let old_pos = old
            .as_ref()
            .and_then(|o| self.order.iter().position(|s| Arc::ptr_eq(s, o)));
        match old_pos {
            Some(i) if order_key(&self.order[i].account) == order_key(&slot.account) => {
                self.order[i] = slot.clone()
            }
            other => {
                if let Some(i) = other {
                    self.order.remove(i);
                }
                let key = order_key(&slot.account);
                let at = self.order.partition_point(|s| order_key(&s.account) < key);
                self.order.insert(at, slot.clone());
            }
        }
        slot
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<Slot>> {
        let slot = self.by_id.get(id).cloned()?;
        self.unindex(&slot.account);
        self.order.retain(|s| !Arc::ptr_eq(s, &slot));
        Some(slot)
    }

    /// A new table from stored accounts, keeping the runtime state of known ids.
    pub fn rebuild(accounts: Vec<Account>, old: &Table) -> Table {
        let mut t = Table::default();
        for a in accounts {
            let state = old
                .by_id
                .get(&a.id)
                .map(|s| s.state.clone())
                .unwrap_or_else(|| Arc::new(SlotState::new(&a)));
            let slot = Arc::new(Slot { account: a, state });
            t.index(&slot);
            t.order.push(slot);
        }
        t.order
            .sort_by(|a, b| order_key(&a.account).cmp(&order_key(&b.account)));
        t
    }

    /// Last-used times not yet in the store; [`Table::mark_flushed`] once they are.
    pub fn dirty_stamps(&self) -> Vec<(String, Timestamp)> {
        self.order
            .iter()
            .filter_map(|s| s.state.used.dirty().map(|t| (s.account.id.clone(), t)))
            .collect()
    }

    pub fn mark_flushed(&self, written: &[(String, Timestamp)]) {
        for (id, t) in written {
            if let Some(s) = self.by_id.get(id) {
                s.state.used.mark_flushed(*t);
            }
        }
    }
}

/// Wakes requests waiting for an inflight slot. Cheap when nobody waits.
///
/// A release frees its slot (`inflight` decrement), then reads `waiting`; a waiter counts itself
/// in `waiting`, then tries for a slot, reading `inflight` (`select::evaluate`, then
/// `SlotState::try_take`). Every one of these four accesses is SeqCst, so at least one side sees
/// the other: the release notifies, or the waiter's try finds the slot free. (A weaker read on
/// either side would let both miss, and the waiter sleep until its timeout.)
#[derive(Default)]
pub(crate) struct Gate {
    notify: tokio::sync::Notify,
    waiting: AtomicUsize,
}

impl Gate {
    pub fn release(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// One request counted among the gate's waiters until dropped.
struct Waiting<'a>(&'a Gate);

impl<'a> Waiting<'a> {
    fn new(gate: &'a Gate) -> Self {
        gate.waiting.fetch_add(1, Ordering::SeqCst);
        Self(gate)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Conversation → account, for `AFFINITY_TTL` after the last use.
#[derive(Default)]
pub(crate) struct Affinity {
    map: HashMap<String, (String, i64)>,
}

/// Conversations remembered at most. Past it the expired ones go, then the least recently used
/// down to half: each such sweep costs one pass over the map, and half the map's inserts pass
/// before the next, so a busy gateway never sweeps on every request (a lost pin costs only a
/// cache miss upstream).
const AFFINITY_CAP: usize = 100_000;

impl Affinity {
    fn get(&self, key: &str, now: i64) -> Option<&str> {
        self.map
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(id, _)| id.as_str())
    }

    fn set(&mut self, key: &str, account: &str, now: i64) {
        let exp = now + i64::try_from(AFFINITY_TTL.as_millis()).unwrap_or(i64::MAX);
        if let Some(v) = self.map.get_mut(key) {
            v.0.clear();
            v.0.push_str(account);
            v.1 = exp;
            return;
        }
        if self.map.len() >= AFFINITY_CAP {
            self.make_room(now);
        }
        self.map.insert(key.to_string(), (account.to_string(), exp));
    }

    /// Drops the expired entries, then the oldest until at most half the cap remain.
    fn make_room(&mut self, now: i64) {
        self.purge(now);
        let keep = AFFINITY_CAP / 2;
        if self.map.len() > keep {
            let mut expiries: Vec<i64> = self.map.values().map(|(_, e)| *e).collect();
            let drop = expiries.len() - keep;
            let (_, cut, _) = expiries.select_nth_unstable(drop - 1);
            let cut = *cut;
            self.map.retain(|_, (_, e)| *e > cut);
        }
    }

    pub fn purge(&mut self, now: i64) {
        self.map.retain(|_, (_, e)| *e > now);
    }
}

/// The runtime view of one account, for reports and tests.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AccountRuntime {
    /// Requests in flight.
    pub inflight: u32,
    /// Cooling down until, if so.
    pub cooldown_until: Option<Timestamp>,
    /// Exhausted until, if so.
    pub exhausted_until: Option<Timestamp>,
    /// Whether it could take a request now (ignoring groups).
    pub usable: bool,
}

/// Handle to the accounts of a [`Pool`]. Cheap to clone.
#[derive(Clone)]
pub struct AccountPool {
    pub(crate) pool: Pool,
}

impl AccountPool {
    /// Accounts matching a filter, ordered by sort then label.
    pub fn list(&self, filter: &AccountFilter) -> Vec<Account> {
        let t = sync::read(&self.pool.shared.accounts);
        t.order
            .iter()
            .filter(|s| s.account.matches(filter))
            .map(|s| Self::snapshot(s))
            .collect()
    }

    fn snapshot(s: &Slot) -> Account {
        let mut a = s.account.clone();
        a.last_used_at = s.state.used.get().or(a.last_used_at);
        a
    }

    /// One account by id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<Account> {
        let t = sync::read(&self.pool.shared.accounts);
        t.resolve(id).map(|s| Self::snapshot(s))
    }

    /// The number of accounts.
    pub fn len(&self) -> usize {
        sync::read(&self.pool.shared.accounts).order.len()
    }

    /// Whether the pool has no accounts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes an account (label, group, tags, sort, note, status…).
    pub async fn update(&self, id: &str, patch: AccountPatch) -> Result<Account> {
        let patch = patch.validate()?;
        let id = self.get(id)?.id;
        self.apply_patch(&id, patch).await
    }

    /// Writes a validated patch through to the store, then to memory (both, also when the
    /// caller stops waiting).
    pub(crate) async fn apply_patch(&self, id: &str, patch: AccountPatch) -> Result<Account> {
        let id = id.to_string();
        self.pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                let a = shared
                    .store
                    .patch_account(&id, &patch, shared.clock.now())
                    .await
                    .map_err(|e| Error::from_store(e, "account", &id))?;
                sync::write(&shared.accounts).upsert(a.clone());
                Ok(a)
            })
            .await
    }

    /// Sets a status decided by the pool itself (a dead sign-in, a deactivation). An account a
    /// person disabled stays disabled, also when that happened in another process a moment ago.
    pub(crate) async fn set_automatic_status(
        &self,
        id: &str,
        status: AccountStatus,
        reason: String,
    ) -> Result<()> {
        let patch = AccountPatch::default()
            .status(status, Some(reason))
            .only_from(&AccountStatus::AUTOMATIC);
        self.apply_patch(id, patch).await.map(|_| ())
    }

    /// Turns an account on (clearing the status reason).
    pub async fn enable(&self, id: &str) -> Result<Account> {
        self.update(id, AccountPatch::default().enabled(true)).await
    }

    /// Turns an account off. It stays off until a person enables it.
    pub async fn disable(&self, id: &str) -> Result<Account> {
        self.update(id, AccountPatch::default().enabled(false))
            .await
    }

    /// Deletes an account and its usage readings. Requests in flight on it finish.
    pub async fn remove(&self, id: &str) -> Result<Account> {
        let a = self.get(id)?;
        self.pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                if !shared.store.delete_account(&a.id).await? {
                    return Err(Error::NotFound {
                        what: "account",
                        id: a.id,
                    });
                }
                sync::write(&shared.accounts).remove(&a.id);
                Ok(a)
            })
            .await
    }

    /// Sets many sort priorities at once (ids or unique prefixes); all or nothing.
    pub async fn set_sort_orders(&self, orders: &[(String, i64)]) -> Result<Vec<Account>> {
        let resolved: Vec<(String, i64)> = orders
            .iter()
            .map(|(id, s)| Ok((self.get(id)?.id, *s)))
            .collect::<Result<_>>()?;
        // Two entries for one account (its id and a prefix of it): which should win?
        let mut seen = std::collections::HashSet::new();
        if let Some((id, _)) = resolved.iter().find(|(id, _)| !seen.insert(id)) {
            return Err(Error::invalid(
                "orders",
                format!("account {id} is given more than once"),
            ));
        }
        self.pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                let now = shared.clock.now();
                shared.store.set_sort_orders(&resolved, now).await?;
                let mut t = sync::write(&shared.accounts);
                let mut out = Vec::with_capacity(resolved.len());
                for (id, sort) in &resolved {
                    if let Some(slot) = t.get(id) {
                        let mut a = slot.account.clone();
                        a.sort = *sort;
                        a.updated_at = now;
                        out.push(t.upsert(a).account.clone());
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Inserts a new account (write-through). Fails with a conflict when the identity exists.
    pub(crate) async fn insert(&self, account: Account) -> Result<Account> {
        self.pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                shared.store.insert_account(&account).await?;
                sync::write(&shared.accounts).upsert(account.clone());
                Ok(account)
            })
            .await
    }

    /// The account with this OpenAI identity, if any.
    pub fn find_identity(
        &self,
        chatgpt_account_id: &str,
        chatgpt_user_id: &str,
    ) -> Option<Account> {
        let t = sync::read(&self.pool.shared.accounts);
        t.find_identity(chatgpt_account_id, chatgpt_user_id)
            .map(|s| Self::snapshot(s))
    }

    /// The runtime view of an account.
    pub fn runtime(&self, id: &str) -> Result<AccountRuntime> {
        let shared = &self.pool.shared;
        let now = shared.clock.now().as_millis();
        let t = sync::read(&shared.accounts);
        let s = t.resolve(id)?;
        let cool = s.state.cooldown_until.load(Ordering::Relaxed);
        let usable = matches!(
            select::evaluate(s, &Demand::any(), now, shared.config.account_max_inflight),
            select::Verdict::Usable { .. }
        );
        Ok(AccountRuntime {
            inflight: s.state.inflight.load(Ordering::Relaxed),
            cooldown_until: (cool > now).then(|| Timestamp::from_millis(cool)),
            exhausted_until: s.state.exhausted_until(now).map(Timestamp::from_millis),
            usable,
        })
    }

    /// Requests in flight over all accounts.
    pub fn total_inflight(&self) -> u32 {
        let t = sync::read(&self.pool.shared.accounts);
        t.order
            .iter()
            .map(|s| s.state.inflight.load(Ordering::Relaxed))
            .sum()
    }

    /// Leases the best account for a request (see the crate docs for the rules). When every
    /// candidate is at its inflight cap, waits up to `REQUEST_GATE_WAIT_TIMEOUT_MS` for one to
    /// free up.
    pub async fn acquire(&self, demand: &Demand<'_>) -> Result<Lease, PoolError> {
        let shared = &self.pool.shared;
        let started = tokio::time::Instant::now();
        let timeout = shared.config.request_gate_wait_timeout;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Created before trying: it receives any release from here on.
            let notified = shared.gate.notify.notified();
            match self.try_acquire(demand) {
                Ok(lease) => return Ok(lease),
                Err(select::Failure::Final(e)) => return Err(e),
                Err(select::Failure::Busy) => {
                    if waiting.is_none() {
                        // Releases notify only while someone waits: count this request, then try
                        // once more, so a slot freed before the count was seen is not missed.
                        waiting = Some(Waiting::new(&shared.gate));
                        continue;
                    }
                    let waited = started.elapsed();
                    let Some(left) = timeout.checked_sub(waited).filter(|d| !d.is_zero()) else {
                        return Err(PoolError::Busy {
                            cap: shared.config.account_max_inflight,
                            waited,
                        });
                    };
                    let _ = tokio::time::timeout(left, notified).await;
                }
            }
        }
    }

    /// Like [`acquire`](Self::acquire), without waiting: [`PoolError::Busy`] at once when every
    /// candidate is at its inflight cap. For work that can do without an account (a catalogue
    /// with a built-in stand-in) and should not queue before requests.
    pub fn acquire_now(&self, demand: &Demand<'_>) -> Result<Lease, PoolError> {
        self.try_acquire(demand).map_err(|f| match f {
            select::Failure::Final(e) => e,
            select::Failure::Busy => PoolError::Busy {
                cap: self.pool.shared.config.account_max_inflight,
                waited: Duration::ZERO,
            },
        })
    }

    /// One selection attempt, without waiting.
    fn try_acquire(&self, demand: &Demand<'_>) -> Result<Lease, select::Failure> {
        let shared = &self.pool.shared;
        let now = shared.clock.now();
        let cap = shared.config.account_max_inflight;
        let t = sync::read(&shared.accounts);
        let pinned = demand.affinity.and_then(|key| {
            sync::lock(&shared.affinity)
                .get(key, now.as_millis())
                .map(str::to_string)
        });
        if let (Some(key), Some(id)) = (demand.affinity, &pinned)
            && let Some(slot) = t.get(id)
            && matches!(
                select::evaluate(slot, demand, now.as_millis(), cap),
                select::Verdict::Usable { .. }
            )
            && slot.state.try_take(cap)
        {
            return Ok(Lease {
                slot: slot.clone(),
                pool: self.pool.clone(),
                moved: false,
                conversation: Some(key.into()),
            });
        }
        let slot = select::pick(
            &t,
            demand,
            shared.config.route_strategy,
            &shared.rr_cursor,
            now,
            cap,
        )?;
        let moved = pinned.is_some_and(|id| id != slot.account.id);
        Ok(Lease {
            slot,
            pool: self.pool.clone(),
            moved,
            conversation: demand.affinity.map(Into::into),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{ReadingSource, WindowKind};
    use std::sync::atomic::AtomicBool;

    fn reading(used_percent: f64, resets_at: i64) -> WindowReading {
        WindowReading {
            kind: WindowKind::FiveHour,
            used_percent,
            window_minutes: 300,
            resets_at: Some(Timestamp::from_millis(resets_at)),
            source: ReadingSource::Headers,
            observed_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn the_affinity_map_is_bounded_and_keeps_the_newest() {
        let mut a = Affinity::default();
        let n = AFFINITY_CAP + 10;
        for i in 0..n {
            a.set(&format!("conv-{i}"), "acc", i64::try_from(i).unwrap());
            assert!(a.map.len() <= AFFINITY_CAP, "{} entries", a.map.len());
        }
        let now = i64::try_from(n).unwrap();
        assert_eq!(a.get(&format!("conv-{}", n - 1), now), Some("acc"));
        assert_eq!(
            a.get(&format!("conv-{}", AFFINITY_CAP - 1), now),
            Some("acc")
        );
        assert_eq!(a.get("conv-0", now), None, "the least recently used went");
        // Using a conversation again makes it the newest.
        a.set("conv-0", "other", now);
        assert_eq!(a.get("conv-0", now), Some("other"));
    }

    #[test]
    fn a_window_cell_gives_back_what_was_set() {
        let cell = WindowCell::new();
        assert_eq!(cell.fresh(0), None, "unknown at first");
        cell.set(Some(&reading(42.5, 1_800_000_000_000)));
        assert_eq!(cell.fresh(1_000), Some((42.5, 1_800_000_000_000)));
        assert_eq!(cell.fresh(1_800_000_000_000), None, "stale at its reset");
        cell.set(Some(&reading(250.0, 5)));
        assert_eq!(cell.fresh(4), Some((100.0, 5)), "the share is clamped");
        cell.set(None);
        assert_eq!(cell.fresh(0), None);
    }

    /// A reader never pairs one reading's share with another's reset: an exhausted window
    /// until soon, then a fresh one with a later reset, must never read as exhausted until the
    /// later reset (that benches the account for hours).
    #[test]
    fn a_window_cell_is_never_read_half_written() {
        let (soon, later) = (3_600_000, 18_000_000);
        let (exhausted, fresh) = (reading(100.0, soon), reading(0.0, later));
        let cell = WindowCell::new();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..2_000_000 {
                    cell.set(Some(if i % 2 == 0 { &exhausted } else { &fresh }));
                }
                done.store(true, Ordering::Relaxed);
            });
            while !done.load(Ordering::Relaxed) {
                if let Some((used, until)) = cell.fresh(0) {
                    assert!(
                        (used, until) == (100.0, soon) || (used, until) == (0.0, later),
                        "read {used}% until {until}"
                    );
                }
            }
        });
    }
}
