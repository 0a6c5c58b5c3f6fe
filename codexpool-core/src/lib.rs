//! codexpool-core: pool many ChatGPT (Codex) sign-ins behind one set of local API keys.
//!
//! The domain of codexpool, with no HTTP server in it:
//!
//! - [`AccountPool`]: accounts (label, group, tags, sort, note, status, tokens), import and
//!   export, and selection — [`AccountPool::acquire`] leases the best account that still has
//!   quota for a request.
//! - [`KeyStore`]: platform keys (`sk-cp-…`), stored hashed, verified in O(1) from memory.
//! - [`UsageTracker`]: each account's 5-hour and weekly windows with provenance, and the token
//!   ledger.
//! - [`RequestLog`]: one row per gateway request.
//! - [`auth`]: sign-in (browser with PKCE, device code), token refresh (single-flight across
//!   processes) and the background refresher; [`Pool::auth`] is the handle.
//! - [`poll`]: usage polling on demand ([`UsageTracker::refresh`]) and in the background.
//! - [`store`]: the [`Store`] trait with the SQLite (default) and in-memory
//!   implementations.
//!
//! A [`Pool`] ties them together over one store. Handles are cheap to clone and share.
//!
//! ```
//! use codexpool_core::{Pool, keys::NewKey, pool::Demand};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> codexpool_core::Result<()> {
//! let pool = Pool::in_memory().await?;
//! let key = pool.keys().create(NewKey::named("ci").model("gpt-5-codex")).await?;
//! println!("give this to the client once: {}", key.secret.expose());
//! assert_eq!(pool.keys().verify(key.secret.expose())?.name, "ci");
//! // No account yet, so no lease:
//! assert!(pool.accounts().acquire(&Demand::any()).await.is_err());
//! # Ok(()) }
//! ```

pub mod account;
pub mod auth;
pub mod config;
mod error;
pub mod http;
pub mod id;
pub mod import;
pub mod keys;
pub mod poll;
pub mod pool;
pub mod process;
pub mod request_log;
mod secret;
mod stamp;
pub mod store;
mod sync;
mod time;
pub mod usage;
mod writer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

pub use account::{Account, AccountFilter, AccountPatch, AccountStatus, Tokens};
pub use auth::{Auth, spawn_refresher};
pub use config::{Config, RouteStrategy};
pub use error::{Error, Result};
pub use keys::{KeyStore, PlatformKey};
pub use poll::{BackgroundTask, RefreshProgress, RefreshScope, spawn_poller};
pub use pool::{AccountPool, Demand, Lease, Outcome, PoolError};
pub use request_log::{RequestLog, spawn_pruner};
pub use secret::Secret;
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use usage::UsageTracker;

use crate::keys::KeyTable;
use crate::pool::{Affinity, Gate, Table};
use crate::store::{MemoryStore, SqliteStore, Store};
use crate::writer::Writer;

/// How often an open pool checks the store for other processes' changes.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Every this many watch ticks, last-used times are written.
const STAMP_FLUSH_TICKS: u32 = 10;

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub accounts: RwLock<Table>,
    pub keys: RwLock<KeyTable>,
    /// Serialises write-through changes with reloads, so a reload never installs a snapshot
    /// older than a change made meanwhile.
    pub admin: tokio::sync::Mutex<()>,
    pub writer: Writer,
    pub gate: Gate,
    pub rr_cursor: AtomicUsize,
    pub affinity: Mutex<Affinity>,
    /// Sign-in state: the HTTP client, the refresh-lease holder id, refreshes in flight.
    pub auth: auth::AuthState,
    /// The runtime the pool was opened on, where its own tasks run: a refresh started from a
    /// request served on a shorter-lived runtime (a server's HTTP thread) must not end with it.
    pub runtime: tokio::runtime::Handle,
    /// The process it was opened in: a copy of it dropped in a forked child (where the runtime
    /// has no threads and a lock a parent thread held stays held) touches nothing.
    home: process::Home,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
    /// The store's data version this pool last reloaded at (see [`Pool::catch_up`]).
    seen_version: AtomicU64,
    /// Records the writer dropped that a flush has already reported.
    lost_reported: AtomicU64,
}

impl Drop for Shared {
    /// The last handle is gone: the last-used times the watcher has not written yet are written
    /// on the pool's runtime (as the writer writes what is queued when it ends), not lost with
    /// the memory that held them. Dropped unwritten only when that runtime is gone too.
    fn drop(&mut self) {
        if !self.home.is_here() {
            // A copy in a forked child: the writer's task, the store's thread and the runtime
            // are the parent's, and a lock a parent thread held at the fork stays held here.
            // Dropping the writer's sender or the store's would wake them through those locks:
            // both are left as they are.
            std::mem::forget(std::mem::replace(&mut self.writer, Writer::detached()));
            std::mem::forget(self.store.clone());
            return;
        }
        if let Some(h) = sync::lock(&self.watcher).take() {
            h.abort();
        }
        let accounts = sync::read(&self.accounts).dirty_stamps();
        let keys = sync::read(&self.keys).dirty_stamps();
        if accounts.is_empty() && keys.is_empty() {
            return;
        }
        let store = self.store.clone();
        self.runtime.spawn(async move {
            let accounts = match accounts.is_empty() {
                true => Ok(()),
                false => store.touch_accounts(&accounts).await,
            };
            let keys = match keys.is_empty() {
                true => Ok(()),
                false => store.touch_keys(&keys).await,
            };
            if let Err(e) = accounts.and(keys) {
                tracing::warn!(error = %e, "could not write last-used times");
            }
        });
    }
}

/// A handle on a [`Pool`] that does not keep it open: [`WeakPool::upgrade`] gives the pool
/// while any other handle (a [`Pool`] clone, a server) still holds it.
#[derive(Clone)]
pub struct WeakPool(Weak<Shared>);

impl WeakPool {
    /// The pool, if it is still open.
    pub fn upgrade(&self) -> Option<Pool> {
        self.0.upgrade().map(|shared| Pool { shared })
    }
}

/// A pool of accounts, keys and usage over one store. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("db_path", &self.shared.config.db_path)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`] with non-default parts.
pub struct PoolBuilder {
    config: Config,
    store: Option<Arc<dyn Store>>,
    clock: Arc<dyn Clock>,
    watch_interval: Option<Duration>,
}

impl PoolBuilder {
    /// Uses this store (default: [`SqliteStore`] at `config.db_path`).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often to look for other processes' changes (default 500 ms; `Duration::ZERO` turns
    /// the watcher off).
    pub fn watch_interval(mut self, d: Duration) -> Self {
        self.watch_interval = Some(d);
        self
    }

    /// Opens the store (creating the database if needed), loads the pool into memory and starts
    /// the background writer and change watcher on the current tokio runtime.
    pub async fn open(self) -> Result<Pool> {
        let store = match self.store {
            Some(s) => s,
            None => Arc::new(SqliteStore::open(&self.config.db_path).await?),
        };
        let writer = Writer::spawn(store.clone(), self.clock.clone());
        let shared = Arc::new(Shared {
            store,
            clock: self.clock,
            config: Arc::new(self.config),
            accounts: RwLock::new(Table::default()),
            keys: RwLock::new(KeyTable::default()),
            admin: tokio::sync::Mutex::new(()),
            writer,
            gate: Gate::default(),
            rr_cursor: AtomicUsize::new(0),
            affinity: Mutex::new(Affinity::default()),
            auth: auth::AuthState::new(),
            runtime: tokio::runtime::Handle::current(),
            home: process::Home::here(),
            watcher: Mutex::new(None),
            seen_version: AtomicU64::new(0),
            lost_reported: AtomicU64::new(0),
        });
        let pool = Pool { shared };
        let version = pool.shared.store.data_version().await?;
        pool.reload().await?;
        pool.shared.seen_version.store(version, Ordering::Relaxed);
        let interval = self.watch_interval.unwrap_or(DEFAULT_WATCH_INTERVAL);
        if !interval.is_zero() {
            let task = tokio::spawn(watch(Arc::downgrade(&pool.shared), interval));
            *sync::lock(&pool.shared.watcher) = Some(task.abort_handle());
        }
        Ok(pool)
    }
}

/// Polls the store's data version; reloads on change; writes last-used times now and then.
async fn watch(weak: Weak<Shared>, interval: Duration) {
    // The first tick after one interval: the pool has just read the store.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else { return };
        let pool = Pool { shared };
        n = n.wrapping_add(1);
        if let Err(e) = pool.catch_up().await {
            tracing::warn!(error = %e, "could not catch up with changes another process made");
        }
        if n.is_multiple_of(STAMP_FLUSH_TICKS) {
            if let Err(e) = pool.flush_stamps().await {
                tracing::warn!(error = %e, "could not write last-used times");
            }
            let now = pool.shared.clock.now().as_millis();
            sync::lock(&pool.shared.affinity).purge(now);
        }
    }
}

impl Pool {
    /// A builder over `config`.
    pub fn builder(config: Config) -> PoolBuilder {
        PoolBuilder {
            config,
            store: None,
            clock: Arc::new(SystemClock),
            watch_interval: None,
        }
    }

    /// Opens the pool at `config.db_path` (SQLite, created on first use).
    pub async fn open(config: Config) -> Result<Pool> {
        Self::builder(config).open().await
    }

    /// An empty pool in memory, with default settings.
    pub async fn in_memory() -> Result<Pool> {
        Self::builder(Config::default())
            .store(Arc::new(MemoryStore::new()))
            .open()
            .await
    }

    /// A handle that does not keep the pool open (e.g. to flush the pools still open when a
    /// process exits).
    pub fn downgrade(&self) -> WeakPool {
        WeakPool(Arc::downgrade(&self.shared))
    }

    /// The accounts.
    pub fn accounts(&self) -> AccountPool {
        AccountPool { pool: self.clone() }
    }

    /// The platform keys.
    pub fn keys(&self) -> KeyStore {
        KeyStore { pool: self.clone() }
    }

    /// Usage windows and the token ledger.
    pub fn usage(&self) -> UsageTracker {
        UsageTracker { pool: self.clone() }
    }

    /// Sign-in and token refresh.
    pub fn auth(&self) -> auth::Auth {
        auth::Auth { pool: self.clone() }
    }

    /// The request log.
    pub fn request_log(&self) -> RequestLog {
        RequestLog { pool: self.clone() }
    }

    /// The settings the pool was opened with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The pool's clock.
    pub fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Reloads when another process changed the store since this pool last did; whether it
    /// did. The change watcher calls this every half second; a process that just changed the
    /// store can ask a server to call it at once (the admin RPC's `pool/catch_up`), so that the
    /// change holds there as soon as it is made.
    pub async fn catch_up(&self) -> Result<bool> {
        let shared = &self.shared;
        let version = shared.store.data_version().await?;
        if version == shared.seen_version.load(Ordering::Acquire) {
            return Ok(false);
        }
        // The version counts as seen only once the reload worked: a failed one is tried again
        // on the next call, not only after a further change.
        self.reload().await?;
        shared.seen_version.store(version, Ordering::Release);
        Ok(true)
    }

    /// Re-reads accounts, keys and usage from the store, keeping runtime state (inflight,
    /// cooldowns) and newer in-memory readings. The change watcher calls this when another
    /// process writes; call it yourself to be sure.
    ///
    /// Credits carry no time of their own: this pool's queued records are written first, so the
    /// stored credits are the last any process stored, and they replace what memory has.
    pub async fn reload(&self) -> Result<()> {
        let shared = &self.shared;
        // What it dropped is for `flush` to report.
        let _ = shared.writer.flush().await;
        let _guard = shared.admin.lock().await;
        let accounts = shared.store.list_accounts().await?;
        let keys = shared.store.list_keys().await?;
        let windows = shared.store.list_windows().await?;
        let credits = shared.store.list_credits().await?;
        {
            let now = shared.clock.now();
            let mut t = sync::write(&shared.accounts);
            let new = Table::rebuild(accounts, &t);
            *t = new;
            for (id, r) in windows {
                if let Some(s) = t.get(&id) {
                    let mut u = sync::lock(&s.state.usage);
                    s.state.mark_stored(r.kind, r.observed_at);
                    u.merge(r, now);
                    s.state.sync_cells(&u);
                }
            }
            for (id, c) in credits {
                if let Some(s) = t.get(&id) {
                    sync::lock(&s.state.usage).credits = Some(c);
                }
            }
        }
        let mut kt = sync::write(&shared.keys);
        let new = KeyTable::rebuild(keys, &kt);
        *kt = new;
        Ok(())
    }

    /// Runs a write-through change (the store, then memory) as a task of its own and waits for
    /// it. A caller that stops waiting (an HTTP client that disconnects drops its future) then
    /// cannot leave the store changed and memory not: nothing else brings them back together,
    /// since the change watcher does not see this process's own commits. Take `admin` inside `f`.
    pub(crate) async fn write_through<T, F>(&self, f: impl FnOnce(Pool) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::spawn(f(self.clone())).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down.
            Err(_) => Err(store::StoreError::Closed.into()),
        }
    }

    /// Writes the last-used times that moved; a time counts as written only once its write
    /// succeeded, so one that failed is tried again by the next flush.
    async fn flush_stamps(&self) -> Result<()> {
        let accounts = sync::read(&self.shared.accounts).dirty_stamps();
        let keys = sync::read(&self.shared.keys).dirty_stamps();
        let mut result = Ok(());
        if !accounts.is_empty() {
            match self.shared.store.touch_accounts(&accounts).await {
                Ok(()) => sync::read(&self.shared.accounts).mark_flushed(&accounts),
                Err(e) => result = Err(e.into()),
            }
        }
        if !keys.is_empty() {
            match self.shared.store.touch_keys(&keys).await {
                Ok(()) => sync::read(&self.shared.keys).mark_flushed(&keys),
                Err(e) => result = result.and(Err(e.into())),
            }
        }
        result
    }

    /// `Err` when the store does not take writes (a database file or folder this process may
    /// only read): a process that serves needs them for usage, the request log and refreshed
    /// sign-ins. Writes nothing.
    pub async fn check_writable(&self) -> Result<()> {
        Ok(self.shared.store.check_writable().await?)
    }

    /// Waits for the token refreshes this process is making (a refresh token the issuer
    /// rotated must be stored, or the sign-in is lost; one that waits for another holder's
    /// lease has sent nothing and is not waited for), then writes everything queued (usage
    /// readings, ledger, request log, last-used times), and has the store fold its log into its
    /// main file ([`Store::checkpoint`]: a copy of `codexpool.db` alone then holds it all).
    /// Call it before shutting down.
    ///
    /// A [`StoreError::Backend`] that says how many when records queued since the last flush
    /// could not be written (the store refused them, or was down, through every retry): they
    /// are dropped, each drop also logged.
    pub async fn flush(&self) -> Result<()> {
        let flights: Vec<_> = sync::lock(&self.shared.auth.flights)
            .values()
            .cloned()
            .collect();
        for mut flight in flights {
            // Err: the flight already ended and dropped its sender.
            let _ = flight
                .wait_for(|f| f.result.is_some() || f.waiting_since.is_some())
                .await;
        }
        let written = self.write_queued().await;
        if let Err(e) = self.shared.store.checkpoint().await {
            // Nothing is lost: the log beside the file holds it (a read-only database cannot
            // checkpoint).
            tracing::debug!(error = %e, "could not checkpoint the store");
        }
        let lost = written?;
        let reported = self
            .shared
            .lost_reported
            .fetch_max(lost.records, Ordering::AcqRel);
        Ok(lost.since(reported)?)
    }

    /// Writes what is queued (usage readings, ledger, request log, last-used times), without
    /// waiting for refreshes: before a read that should see this process's own rows. What the
    /// writer dropped is left for [`flush`](Self::flush) to report.
    pub(crate) async fn write_queued(&self) -> Result<writer::Lost> {
        let lost = self.shared.writer.flush().await;
        self.flush_stamps().await?;
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::flaky::FlakyStore;

    /// Records the writer had to drop (the store down through every retry) make the next
    /// flush an error that says how many; the flush after it, with nothing more lost, is fine.
    #[tokio::test(start_paused = true)]
    async fn a_flush_says_when_queued_records_were_dropped() {
        use crate::request_log::{RequestLogEntry, RequestLogQuery};
        let store = FlakyStore::new();
        let pool = Pool::builder(Config::default())
            .store(store.clone())
            .watch_interval(Duration::ZERO)
            .open()
            .await
            .unwrap();
        let at = crate::time::Timestamp::from_secs(1_700_000_000);
        let log = pool.request_log();
        store.set_down(true);
        log.record(RequestLogEntry::new("lost-1", at, "chat_completions"));
        log.record(RequestLogEntry::new("lost-2", at, "chat_completions"));
        // A read writes what is queued first (here: gives it up); the loss is still the
        // flush's to report.
        assert!(log.list(&RequestLogQuery::latest(10)).await.is_err());
        store.set_down(false);
        let err = pool.flush().await.unwrap_err().to_string();
        assert!(
            err.contains("2 records") && err.contains("dropped") && err.contains("store down"),
            "{err}"
        );
        log.record(RequestLogEntry::new("kept", at, "chat_completions"));
        pool.flush().await.unwrap();
        let rows = log.list(&RequestLogQuery::latest(10)).await.unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["kept"]);
    }

    /// A change another process made is picked up even when the first reload after it fails:
    /// the watcher tries again on its next tick, not only after a further change.
    #[tokio::test]
    async fn the_watcher_reloads_again_after_a_failed_reload() {
        let store = FlakyStore::new();
        let pool = Pool::builder(Config::default())
            .store(store.clone())
            .watch_interval(Duration::from_millis(10))
            .open()
            .await
            .unwrap();
        // "Another process" adds an account while the database fails for a moment.
        store.set_down(true);
        let account = store::conformance::sample_account("a1", "acct-elsewhere");
        store.inner.insert_account(&account).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            pool.accounts().get(&account.id).is_err(),
            "the reloads fail"
        );
        store.set_down(false);
        let started = std::time::Instant::now();
        while pool.accounts().get(&account.id).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the change was never picked up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
