//! Persistence: the object-safe async [`Store`] trait, its records, and two implementations,
//! [`SqliteStore`] (the embedded default) and [`MemoryStore`] (tests, ephemeral pools). Both pass
//! the one conformance suite in [`conformance`]; a PostgreSQL store would go here too.
//!
//! The pool keeps its working state in memory; the store is written through on admin actions
//! and in batches for high-rate data (usage readings, ledger, request log, last-used times).
//! Refreshed tokens are the one write that must not be lost (the issuer has spent the old refresh
//! token): [`Store::save_refreshed_tokens`] gives up in bounded time and
//! [`Store::rescue_refreshed_tokens`] keeps them outside the database until it takes them.

#[cfg(test)]
pub(crate) mod flaky;
mod memory;
pub(crate) mod rescue;
mod sqlite;

pub mod conformance;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

use crate::account::{Account, AccountPatch, Tokens};
use crate::keys::{KeyPatch, PlatformKey};
use crate::request_log::{RequestLogEntry, RequestLogQuery};
use crate::secret::Secret;
use crate::time::Timestamp;
use crate::usage::{Credits, LedgerEntry, LedgerQuery, LedgerRow, WindowReading};

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The database could not be opened or created.
    #[error("cannot open database {path}: {message}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The database was written by a newer codexpool; it is left untouched.
    #[error(
        "database {path} has schema version {found}, newer than this codexpool understands \
         ({supported}); upgrade codexpool or use another database file (CODEXPOOL_DB_PATH)"
    )]
    NewerSchema {
        /// The file.
        path: String,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The file is another program's SQLite database (it has tables and no codexpool schema
    /// version); it is left untouched.
    #[error(
        "{path} is another program's SQLite database (its tables: {tables}), not a codexpool one; \
         it was left as it is"
    )]
    Foreign {
        /// The file.
        path: String,
        /// Some of its tables, comma-separated.
        tables: String,
    },
    /// A unique value (an identity, a key hash) already exists.
    #[error("{what} already exists")]
    Conflict {
        /// What collided.
        what: String,
    },
    /// No such record.
    #[error("no {what} {id:?}")]
    NotFound {
        /// `account`, `key`, …
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A change would leave a record in a state its creation refuses (checked inside the
    /// transaction, against the stored record).
    #[error("invalid {field}: {message}")]
    Refused {
        /// The field at fault.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A stored value could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store's worker has stopped.
    #[error("the store is closed")]
    Closed,
}

/// How a sign-in was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginKind {
    /// Browser redirect to a callback URL.
    Browser,
    /// Device code.
    Device,
}

/// Where a sign-in stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum LoginStatus {
    /// Waiting for the user.
    Pending,
    /// Claimed by a process that is exchanging the code.
    Claimed,
    /// Done: the account was created or updated.
    Completed {
        /// The account.
        account_id: String,
    },
    /// Failed; nothing was stored.
    Failed {
        /// Why.
        error: String,
    },
    /// Cancelled by the user.
    Cancelled,
}

/// A sign-in in progress, kept in the store so another process can finish it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginSession {
    /// The OAuth `state` (also the session's id).
    pub state: String,
    /// Browser or device.
    pub kind: LoginKind,
    /// The PKCE verifier.
    pub code_verifier: Secret,
    /// The redirect URI sent in the authorize URL.
    pub redirect_uri: String,
    /// Label to give the account.
    pub label: Option<String>,
    /// Group to put the account in.
    pub group: Option<String>,
    /// Tags to give the account.
    pub tags: Vec<String>,
    /// Note to give the account.
    pub note: Option<String>,
    /// When it started.
    pub created_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Where it stands.
    pub status: LoginStatus,
}

/// Records the background writer stores together ([`Store::write_records`]).
#[derive(Debug, Default)]
pub struct RecordBatch {
    /// Usage readings, newest per (account, kind); readings of unknown accounts are ignored.
    pub windows: Vec<(String, WindowReading)>,
    /// Credits per account.
    pub credits: Vec<(String, Credits)>,
    /// Token-ledger entries.
    pub ledger: Vec<LedgerEntry>,
    /// Request-log rows.
    pub request_log: Vec<RequestLogEntry>,
    /// When the batch was made, by the pool's clock: `windows` are saved with it (see
    /// [`Store::save_windows`]).
    pub now: Option<Timestamp>,
}

/// Persistence for a pool. Object-safe (`Arc<dyn Store>`); every method is one atomic step.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- accounts
    /// Every account.
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// One account.
    async fn get_account(&self, id: &str) -> Result<Option<Account>, StoreError>;
    /// Inserts an account; [`StoreError::Conflict`] when its id or identity
    /// (`chatgpt_account_id`, `chatgpt_user_id`) exists.
    async fn insert_account(&self, account: &Account) -> Result<(), StoreError>;
    /// Applies a patch in one transaction and returns the result; [`StoreError::NotFound`]
    /// when absent, [`StoreError::Conflict`] when the identity collides.
    async fn patch_account(
        &self,
        id: &str,
        patch: &AccountPatch,
        now: Timestamp,
    ) -> Result<Account, StoreError>;
    /// Deletes an account (and its usage readings); `false` when absent.
    async fn delete_account(&self, id: &str) -> Result<bool, StoreError>;
    /// Sets many sort priorities in one transaction; unknown ids are [`StoreError::NotFound`]
    /// and nothing changes.
    async fn set_sort_orders(
        &self,
        orders: &[(String, i64)],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Records last-used times (only moving them forward).
    async fn touch_accounts(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError>;

    // ---- platform keys
    /// Every key.
    async fn list_keys(&self) -> Result<Vec<PlatformKey>, StoreError>;
    /// Inserts a key; [`StoreError::Conflict`] when its id or hash exists.
    async fn insert_key(&self, key: &PlatformKey) -> Result<(), StoreError>;
    /// Applies a patch and returns the result.
    async fn patch_key(
        &self,
        id: &str,
        patch: &KeyPatch,
        now: Timestamp,
    ) -> Result<PlatformKey, StoreError>;
    /// Deletes a key; `false` when absent.
    async fn delete_key(&self, id: &str) -> Result<bool, StoreError>;
    /// Records last-used times (only moving them forward).
    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError>;

    // ---- usage
    /// Every stored window reading with the account it belongs to.
    async fn list_windows(&self) -> Result<Vec<(String, WindowReading)>, StoreError>;
    /// Upserts readings, keeping the newer one per (account, kind). A stored reading observed
    /// after `now` was taken while the clock ran ahead (it was set back since) and gives way to
    /// any, or new readings would be refused until the clock caught up. Readings of unknown
    /// accounts are ignored.
    async fn save_windows(
        &self,
        readings: &[(String, WindowReading)],
        now: Option<Timestamp>,
    ) -> Result<(), StoreError>;
    /// Every account's stored credits.
    async fn list_credits(&self) -> Result<Vec<(String, Credits)>, StoreError>;
    /// Upserts credits.
    async fn save_credits(&self, credits: &[(String, Credits)]) -> Result<(), StoreError>;

    // ---- ledger and request log
    /// Appends ledger entries.
    async fn append_ledger(&self, entries: &[LedgerEntry]) -> Result<(), StoreError>;
    /// Sums the ledger, largest total first.
    async fn ledger_summary(&self, q: &LedgerQuery) -> Result<Vec<LedgerRow>, StoreError>;
    /// Folds the ledger entries of the UTC days before `before` (a day's start) into one entry
    /// per day, key, account, model and status, stamped with the day's start and counting the
    /// requests it stands for, together with what those days were folded into before: every sum
    /// by key, account, model or day stays the same. Takes up to `max_rows` unfolded entries
    /// per call, oldest first, in one transaction; how many it took (fewer than `max_rows`:
    /// nothing is left to fold).
    async fn fold_ledger(&self, before: Timestamp, max_rows: usize) -> Result<u64, StoreError>;
    /// Appends request-log rows.
    async fn append_request_log(&self, entries: &[RequestLogEntry]) -> Result<(), StoreError>;
    /// Writes what the background writer gathered in ONE transaction: all of it or nothing.
    /// A failed batch is retried whole, so a partial write would store its rows twice.
    async fn write_records(&self, batch: Arc<RecordBatch>) -> Result<(), StoreError>;
    /// Reads request-log rows, newest first (oldest first with `q.oldest_first`).
    async fn list_request_log(
        &self,
        q: &RequestLogQuery,
    ) -> Result<Vec<RequestLogEntry>, StoreError>;
    /// Whether the store takes writes: `Err` when it is read-only (a database file or folder
    /// this process may not write). Writes nothing.
    async fn check_writable(&self) -> Result<(), StoreError>;
    /// Moves what is written into the store's main file where it keeps a log beside it
    /// (SQLite's WAL), as far as other connections allow without waiting for them: a copy of
    /// the main file alone then holds it. [`crate::Pool::flush`] ends with it. Default: nothing.
    async fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Deletes up to `max_rows` of the request-log rows that arrived before `before`, the
    /// earliest first, whatever their ids; never the newest row, so ids keep growing. How many
    /// went.
    async fn prune_request_log(
        &self,
        before: Timestamp,
        max_rows: usize,
    ) -> Result<u64, StoreError>;

    // ---- sign-in
    /// Stores a new login session.
    async fn insert_login_session(&self, s: &LoginSession) -> Result<(), StoreError>;
    /// Reads a login session.
    async fn get_login_session(&self, state: &str) -> Result<Option<LoginSession>, StoreError>;
    /// Atomically moves a pending, unexpired session to `Claimed` and returns it; `None` when it
    /// is unknown, expired or not pending (completed at most once, across processes).
    async fn claim_login_session(
        &self,
        state: &str,
        now: Timestamp,
    ) -> Result<Option<LoginSession>, StoreError>;
    /// Sets a session's status.
    async fn set_login_status(&self, state: &str, status: &LoginStatus) -> Result<(), StoreError>;
    /// Deletes sessions that expired before `before`.
    async fn purge_login_sessions(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Takes the refresh lease of an account for `holder` until `now + ttl`, when it is free,
    /// expired, already `holder`'s, or held by `replace` (a holder the caller knows is gone).
    /// Single-flight across processes. A lease row that was never given back (its holder died
    /// mid-refresh, or left it as the mark of a lost answer) is reported as `left_behind`.
    async fn acquire_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        replace: Option<&str>,
    ) -> Result<LeaseTake, StoreError>;
    /// Moves the expiry of `holder`'s lease to `now + ttl` (a zero `ttl` frees it for others
    /// but leaves the row as a mark that a refresh was under way); `false` when `holder` does
    /// not hold it. Gives up after `wait` when the database is busy.
    async fn renew_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        wait: Duration,
    ) -> Result<bool, StoreError>;
    /// Gives the lease back (only if `holder` holds it).
    async fn release_refresh_lease(&self, account_id: &str, holder: &str)
    -> Result<(), StoreError>;
    /// Writes the tokens a refresh obtained, with the rest of [`RefreshedTokens::extra`], in one
    /// step — unless the stored tokens are newer (someone wrote others since the refresh read
    /// them; see [`RefreshedTokens`]). Gives up with an error after `wait` when the database is
    /// busy, and then never writes later: the caller can rescue the tokens instead.
    async fn save_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
        now: Timestamp,
        wait: Duration,
    ) -> Result<TokenSave, StoreError>;
    /// Keeps refreshed tokens that [`Store::save_refreshed_tokens`] could not write somewhere
    /// outside the database (the SQLite store: a private file beside it), from where every read
    /// sees them and the next write of the account folds them in. `false` when this store has
    /// no such place.
    async fn rescue_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
    ) -> Result<bool, StoreError>;

    // ---- change detection
    /// A number that changes when another process (or another handle on the same database)
    /// commits a change the pool holds in memory: accounts, keys, usage (the SQLite store
    /// leaves out the request log and the ledger). It may also move after this handle's own
    /// changes. Compared between calls only; the value itself means nothing.
    async fn data_version(&self) -> Result<u64, StoreError>;

    /// The database file this store keeps the pool in, if any (`None`: in memory). A server
    /// registers beside it only when it is the configured `DB_PATH`: other processes on that
    /// file then find it.
    fn database_file(&self) -> Option<&std::path::Path> {
        None
    }
}

/// What [`Store::acquire_refresh_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseTake {
    /// The caller holds the lease now.
    Taken {
        /// The holder of a lease row that was there and never given back: a refresh by that
        /// holder was under way when it died or lost its answer, so the refresh token it sent
        /// may be spent.
        left_behind: Option<String>,
    },
    /// Another holder has it.
    Held {
        /// Who (as it named itself).
        holder: String,
        /// Until when, unless given back or renewed.
        until: Timestamp,
    },
}

/// What a refresh obtained, for [`Store::save_refreshed_tokens`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefreshedTokens {
    /// The refresh token the issuer took for them: stored tokens holding it are replaced
    /// whatever their times say; other stored tokens only when older (by the access token's
    /// expiry, else the last refresh), as an import keeps the newer sign-in.
    pub spent: Secret,
    /// The new tokens.
    pub tokens: Tokens,
    /// What else to change with them (status, plan, email); its `tokens` are ignored.
    pub extra: AccountPatch,
}

impl RefreshedTokens {
    /// Tokens obtained by spending `spent`, with `extra` changes.
    pub fn new(spent: Secret, tokens: Tokens, extra: AccountPatch) -> Self {
        Self {
            spent,
            tokens,
            extra,
        }
    }

    /// Whether they are written over `stored`: when they are the same tokens (nothing is lost
    /// by writing them again) or replace them.
    pub(crate) fn writes_over(&self, stored: &Tokens) -> bool {
        let same = self.tokens.access_token == stored.access_token
            && self.tokens.refresh_token == stored.refresh_token;
        same || rescue::replaces(&self.tokens, stored, stored.refresh_token == self.spent)
    }

    /// `a` with the tokens and the extra changes.
    pub(crate) fn apply_to(&self, a: &mut Account, now: Timestamp) {
        let mut patch = self.extra.clone();
        patch.tokens = Some(self.tokens.clone());
        patch.apply_to(a, now);
    }
}

/// How [`Store::save_refreshed_tokens`] ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TokenSave {
    /// Written (or they were stored already); the account as stored now.
    Saved(Account),
    /// Not written: the stored tokens are newer. The account as stored.
    Superseded(Account),
}

/// The ledger order every store returns: largest total first, then by group name.
pub(crate) fn sort_ledger(rows: &mut [LedgerRow]) {
    rows.sort_by(|a, b| {
        b.total_tokens
            .cmp(&a.total_tokens)
            .then_with(|| a.group.cmp(&b.group))
    });
}
