//! `SqliteStore`: the embedded default. One connection on a dedicated thread (SQLite calls never
//! block the tokio workers), WAL so readers in other processes never wait, `BEGIN IMMEDIATE` for
//! every write so two processes never deadlock on a lock upgrade, a busy timeout plus a retry so
//! `database is locked` never reaches a user, and numbered migrations tracked by `user_version`.
//! Refreshed tokens the database would not take wait beside it (`rescued-tokens/<db file>/`, see
//! [`rescue`](super::rescue)): reads see them, and the next write of their account or the next
//! opening folds them in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::rescue::{self, Rescue};
use super::{
    LeaseTake, LoginKind, LoginSession, LoginStatus, RecordBatch, RefreshedTokens, Store,
    StoreError, TokenSave,
};
use crate::account::{Account, AccountPatch, AccountStatus, Tokens};
use crate::keys::{KeyPatch, PlatformKey};
use crate::request_log::{RequestLogEntry, RequestLogQuery};
use crate::secret::Secret;
use crate::time::Timestamp;
use crate::usage::{
    Credits, DAY_MS, DayFold, LedgerEntry, LedgerGroup, LedgerQuery, LedgerRow, ReadingSource,
    TokenCounts, WindowKind, WindowReading, day_start,
};

/// The migrations, in order; migration N brings the schema to `user_version` N.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/001_init.sql"),
    include_str!("../../migrations/002_ledger_requests.sql"),
    include_str!("../../migrations/003_request_log_at.sql"),
    include_str!("../../migrations/004_pool_changes.sql"),
];
/// How long SQLite waits on another process's lock before reporting busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a busy write after the busy timeout (rare: a long writer elsewhere).
const BUSY_RETRIES: u32 = 5;
/// How long opening the database tries to fold rescued tokens in before leaving them for later.
const FOLD_AT_OPEN: Duration = Duration::from_secs(2);
/// How long giving a refresh lease back waits for a busy database.
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The SQLite store. Cheap to share (`Arc`); all calls go to one connection thread.
pub struct SqliteStore {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
    /// `PRAGMA data_version` and the change counter when last read (see `data_version`).
    seen: Arc<std::sync::Mutex<(Option<i64>, u64)>>,
    /// Where refreshed tokens the database refused wait (see the module docs).
    rescues: Arc<rescue::Folders>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    // Only a duplicate is a conflict; another constraint (NOT NULL, CHECK, a foreign key, a
    // trigger's `RAISE`) refused a value, and SQLite's own message says which.
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    {
        return StoreError::Conflict {
            what: "a record with the same id or identity".into(),
        };
    }
    StoreError::Backend {
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

fn is_busy(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend { source: Some(s), .. }
        if s.downcast_ref::<rusqlite::Error>().is_some_and(|e| matches!(e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))))
}

/// Runs a write transaction, retrying when another process holds the lock for too long.
fn write<R>(
    conn: &mut Connection,
    f: impl Fn(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut attempt = 0;
    loop {
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let r = f(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(r)
        })();
        match result {
            Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

/// Runs a write transaction, trying while the database is locked by another process until
/// `deadline` and never beginning one after it (a transaction that got the lock commits at
/// once): a caller that waits a little past the deadline sees whatever was written, and one
/// whose call was still queued at the deadline can rely on nothing having been written.
fn write_before<R>(
    conn: &mut Connection,
    deadline: std::time::Instant,
    f: impl Fn(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let result = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break Err(StoreError::Backend {
                message: "database is locked (gave up waiting for another process to finish \
                          writing)"
                    .into(),
                source: None,
            });
        }
        if let Err(e) = conn.busy_timeout(left.max(Duration::from_millis(1))) {
            break Err(db_err(e));
        }
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let r = f(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(r)
        })();
        match result {
            Err(e) if is_busy(&e) => std::thread::sleep(Duration::from_millis(10)),
            other => break other,
        }
    };
    if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
        tracing::warn!(error = %e, "could not restore the database busy timeout");
    }
    result
}

/// Folds rescued tokens into the accounts they belong to (when newer than what is stored), in
/// the transaction `tx`; the ids of the accounts this database has, whose rescues the caller
/// may remove once `tx` commits (folded or out of date).
fn fold_rescues(
    tx: &Connection,
    rescues: &[Rescue],
    now: Timestamp,
) -> Result<Vec<String>, StoreError> {
    let mut ids: Vec<&str> = rescues.iter().map(|r| r.account_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut present = Vec::new();
    for id in ids {
        let Some(mut a) = get_account(tx, id)? else {
            continue;
        };
        if rescue::apply_all(&mut a, rescues) {
            a.updated_at = now;
            write_account(tx, &a, false)?;
        }
        present.push(id.to_string());
    }
    Ok(present)
}

fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map(drop)
}

/// The database holds every sign-in in clear: a file of it (`-wal` and `-shm` included, which
/// SQLite makes with the main file's mode) that any user may read, such as a copy made under a
/// umask of 022, loses the other users' bits, and the log says so; one this process may not
/// change is warned of. A group's bits stay: a team may share a database through its group.
#[cfg(unix)]
fn keep_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if !meta.is_file() || mode & 0o007 == 0 {
            continue;
        }
        let private = std::fs::Permissions::from_mode(mode & 0o770);
        match std::fs::set_permissions(&file, private) {
            Ok(()) => tracing::warn!(
                file = %file.display(),
                "any user could read the database (mode {mode:o}), and it holds every sign-in: \
                 took the other users' access away (mode {:o})",
                mode & 0o770
            ),
            Err(e) => tracing::warn!(
                file = %file.display(),
                error = %e,
                "any user can read the database (mode {mode:o}), and it holds every sign-in: \
                 its owner should take the other users' access away (chmod o-rwx)"
            ),
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let latest = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if current > latest {
        return Err(StoreError::NewerSchema {
            path: path.display().to_string(),
            found: current,
            supported: latest,
        });
    }
    if current == latest {
        return Ok(());
    }
    write(conn, |tx| {
        // Re-read under the write lock: another process may have migrated meanwhile.
        let current: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        if current > latest {
            return Err(StoreError::NewerSchema {
                path: path.display().to_string(),
                found: current,
                supported: latest,
            });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(current).unwrap_or(0))
        {
            tx.execute_batch(sql).map_err(db_err)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )
            .map_err(db_err)?;
        }
        Ok(())
    })
}

/// A database without codexpool's schema version that holds tables is another program's.
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version != 0 {
        return Ok(());
    }
    let mut names = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name LIMIT 4",
        )
        .map_err(db_err)?;
    let names: Vec<String> = names
        .query_map([], |r| r.get(0))
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    if names.is_empty() {
        return Ok(());
    }
    let mut tables = names[..names.len().min(3)].join(", ");
    if names.len() > 3 {
        tables.push_str(", …");
    }
    Err(StoreError::Foreign {
        path: path.display().to_string(),
        tables,
    })
}

/// An open connection and its entry in [`OPEN_FILES`], dropped in that order (the file counts
/// as open until the connection is closed, on a panic too).
struct Opened {
    conn: Connection,
    _file: OpenFile,
}

fn open_connection(path: &Path) -> Result<Opened, StoreError> {
    let open_err = |message: String| StoreError::Open {
        path: path.display().to_string(),
        message,
    };
    if path.is_dir() {
        return Err(open_err("that is a folder, not a database file".into()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The owner's only: beside the database go the RPC token and the servers' files.
        crate::import::create_private_dir(dir).map_err(|e| {
            // A file where a folder of the path should be.
            let blocked = dir.ancestors().find(|a| a.is_file());
            open_err(match blocked {
                Some(file) => format!(
                    "cannot create the folder {}: {} is a file",
                    dir.display(),
                    file.display()
                ),
                None => format!("cannot create {}: {e}", dir.display()),
            })
        })?;
    }
    if !path.exists() {
        create_private_file(path).map_err(|e| open_err(e.to_string()))?;
    }
    // Before SQLite opens it (its bookkeeping for the file starts there): a fork from now on
    // finds the file open.
    let file = OpenFile::register(path);
    let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    // Before anything writes to it (WAL, mode, schema): a mistyped path to another program's
    // database must not become a codexpool one.
    refuse_foreign(&conn, path).map_err(|e| match e {
        StoreError::Backend { message, .. } => open_err(message),
        e => e,
    })?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| open_err(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(format!(
            "could not switch to WAL (journal mode is {mode})"
        )));
    }
    // Once SQLite took the file for a database (a mistyped path to some other file is left as
    // it was), and with its `-wal` and `-shm`, made with the file's mode.
    #[cfg(unix)]
    keep_private(path);
    // FULL, not WAL's usual NORMAL: NORMAL may lose the last commits on power loss, and a
    // rotated refresh token must survive once stored (the issuer has spent the old one). It costs
    // one fsync of the WAL per transaction, and transactions are few: one per admin change, per
    // token refresh and per background batch (a batch gathers for 200 ms or up to 2000 records,
    // so never one per request).
    conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;")
        .map_err(db_err)?;
    migrate(&mut conn, path)?;
    Ok(Opened { conn, _file: file })
}

/// The database files this process's stores have open, with the process that opened them.
/// SQLite keeps its lock bookkeeping per process and file: a child forked while its parent had
/// a file open inherits that bookkeeping (but not the locks), believes it holds locks it does
/// not, and so must not open that file again: its writes could be lost to the parent's
/// checkpoint, or corrupt the file. The entries of a parent stay in the child, as that
/// bookkeeping does.
static OPEN_FILES: std::sync::Mutex<Vec<(PathBuf, u32)>> = std::sync::Mutex::new(Vec::new());

/// The process this one was forked from, if it had `path` open then.
fn opened_before_a_fork(path: &Path) -> Option<u32> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let me = std::process::id();
    crate::sync::lock(&OPEN_FILES)
        .iter()
        .find(|(p, pid)| *p == canonical && *pid != me)
        .map(|(_, pid)| *pid)
}

/// This process has a database file open while it lives (see [`OPEN_FILES`]).
struct OpenFile(Option<PathBuf>);

impl OpenFile {
    fn register(path: &Path) -> Self {
        let canonical = std::fs::canonicalize(path).ok();
        if let Some(p) = &canonical {
            crate::sync::lock(&OPEN_FILES).push((p.clone(), std::process::id()));
        }
        Self(canonical)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let Some(path) = &self.0 else { return };
        let me = std::process::id();
        let mut files = crate::sync::lock(&OPEN_FILES);
        if let Some(i) = files.iter().position(|(p, pid)| p == path && *pid == me) {
            files.swap_remove(i);
        }
    }
}

impl SqliteStore {
    /// Opens (or creates, with mode 0600 and its parent directories) the database at `path`
    /// and brings its schema up to date. A database from a newer codexpool is refused and left
    /// untouched, as is one the process this one was forked from had open at the fork.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = opened_before_a_fork(&path) {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: format!(
                    "process {parent}, which this one was forked from, had it open: SQLite's \
                     locks do not survive a fork, so this process must not open it again; fork \
                     before opening it, or start the child as a new program (Python: \
                     multiprocessing's spawn or forkserver method)"
                ),
            });
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let p = path.clone();
        let rescues = Arc::new(rescue::Folders::for_db(&path));
        let folders = rescues.clone();
        std::thread::Builder::new()
            .name("codexpool-sqlite".into())
            .spawn(move || {
                let mut opened = match open_connection(&p) {
                    Ok(mut o) => {
                        // Tokens a refresh could not store last time: in now, if newer.
                        // This database's own are done with once read (an account removed
                        // since has no use for them); a legacy one only when its account is
                        // here (it may be another database's).
                        let own = rescue::read(&folders.own, None);
                        let legacy = rescue::read(&folders.legacy, None);
                        let rescues = [legacy.as_slice(), own.as_slice()].concat();
                        if !rescues.is_empty() {
                            let deadline = std::time::Instant::now() + FOLD_AT_OPEN;
                            match write_before(&mut o.conn, deadline, |tx| {
                                fold_rescues(tx, &rescues, Timestamp::now())
                            }) {
                                Ok(present) => {
                                    rescue::remove(&own);
                                    let here = |r: &&Rescue| present.contains(&r.account_id);
                                    let legacy_here: Vec<Rescue> =
                                        legacy.iter().filter(here).cloned().collect();
                                    rescue::remove(&legacy_here);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "could not store rescued tokens yet; they stay beside the database");
                                }
                            }
                        }
                        let _ = ready_tx.send(Ok(()));
                        o
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    job(&mut opened.conn);
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Self {
            tx,
            path,
            seen: Arc::default(),
            rescues,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Last-used times: `sql` sets `?2` on the row `?1` when it is later than the stored one.
    async fn touch(
        &self,
        sql: &'static str,
        used: &[(String, Timestamp)],
    ) -> Result<(), StoreError> {
        let used = used.to_vec();
        self.call(move |c| {
            write(c, |tx| {
                let mut st = tx.prepare_cached(sql).map_err(db_err)?;
                for (id, t) in &used {
                    st.execute(params![id, t.as_millis()]).map_err(db_err)?;
                }
                Ok(())
            })
        })
        .await
    }
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

fn json_list(text: &str) -> rusqlite::Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

const ACCOUNT_COLUMNS: &str = "id, label, email, chatgpt_account_id, chatgpt_user_id, plan_type, group_name, tags, sort, note, \
    status, status_reason, id_token, access_token, refresh_token, access_expires_at, last_refresh_at, created_at, updated_at, last_used_at";

fn account_from_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    let status: String = r.get(10)?;
    let user: String = r.get(4)?;
    Ok(Account {
        id: r.get(0)?,
        label: r.get(1)?,
        email: r.get(2)?,
        chatgpt_account_id: r.get(3)?,
        chatgpt_user_id: (!user.is_empty()).then_some(user),
        plan_type: r.get(5)?,
        group: r.get(6)?,
        tags: json_list(&r.get::<_, String>(7)?)?,
        sort: r.get(8)?,
        note: r.get(9)?,
        status: status.parse().unwrap_or(AccountStatus::Disabled),
        status_reason: r.get(11)?,
        tokens: Tokens {
            id_token: Secret::new(r.get::<_, String>(12)?),
            access_token: Secret::new(r.get::<_, String>(13)?),
            refresh_token: Secret::new(r.get::<_, String>(14)?),
            expires_at: ts(r.get(15)?),
            last_refresh: ts(r.get(16)?),
        },
        created_at: Timestamp::from_millis(r.get(17)?),
        updated_at: Timestamp::from_millis(r.get(18)?),
        last_used_at: ts(r.get(19)?),
    })
}

fn get_account(conn: &Connection, id: &str) -> Result<Option<Account>, StoreError> {
    conn.query_row(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"),
        [id],
        account_from_row,
    )
    .optional()
    .map_err(db_err)
}

/// Inserts (`insert`) or updates by id (an UPDATE, not a REPLACE: a REPLACE would delete the
/// row and cascade to its usage readings).
fn write_account(tx: &Connection, a: &Account, insert: bool) -> Result<(), StoreError> {
    let sql = if insert {
        format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)"
        )
    } else {
        "UPDATE accounts SET label=?2, email=?3, chatgpt_account_id=?4, chatgpt_user_id=?5, plan_type=?6, group_name=?7,
           tags=?8, sort=?9, note=?10, status=?11, status_reason=?12, id_token=?13, access_token=?14, refresh_token=?15,
           access_expires_at=?16, last_refresh_at=?17, created_at=?18, updated_at=?19, last_used_at=?20 WHERE id=?1"
            .to_string()
    };
    tx.execute(
        &sql,
        params![
            a.id,
            a.label,
            a.email,
            a.chatgpt_account_id,
            a.chatgpt_user_id.clone().unwrap_or_default(),
            a.plan_type,
            a.group,
            to_json(&a.tags),
            a.sort,
            a.note,
            a.status.as_str(),
            a.status_reason,
            a.tokens.id_token.expose(),
            a.tokens.access_token.expose(),
            a.tokens.refresh_token.expose(),
            a.tokens.expires_at.map(Timestamp::as_millis),
            a.tokens.last_refresh.map(Timestamp::as_millis),
            a.created_at.as_millis(),
            a.updated_at.as_millis(),
            a.last_used_at.map(Timestamp::as_millis),
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

const KEY_COLUMNS: &str = "id, name, secret_hash, hint, model, allowed_models, allowed_groups, reasoning_effort, enabled, \
    expires_at, created_at, updated_at, last_used_at";

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<PlatformKey> {
    let hash: Vec<u8> = r.get(2)?;
    Ok(PlatformKey {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_hash: hash.try_into().unwrap_or([0; 32]),
        hint: r.get(3)?,
        model: r.get(4)?,
        allowed_models: json_list(&r.get::<_, String>(5)?)?,
        allowed_groups: json_list(&r.get::<_, String>(6)?)?,
        reasoning_effort: r.get(7)?,
        enabled: r.get(8)?,
        expires_at: ts(r.get(9)?),
        created_at: Timestamp::from_millis(r.get(10)?),
        updated_at: Timestamp::from_millis(r.get(11)?),
        last_used_at: ts(r.get(12)?),
    })
}

fn write_key(tx: &Connection, k: &PlatformKey, insert: bool) -> Result<(), StoreError> {
    let sql = if insert {
        format!(
            "INSERT INTO platform_keys ({KEY_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"
        )
    } else {
        "UPDATE platform_keys SET name=?2, secret_hash=?3, hint=?4, model=?5, allowed_models=?6, allowed_groups=?7,
           reasoning_effort=?8, enabled=?9, expires_at=?10, created_at=?11, updated_at=?12, last_used_at=?13 WHERE id=?1"
            .to_string()
    };
    tx.execute(
        &sql,
        params![
            k.id,
            k.name,
            &k.secret_hash[..],
            k.hint,
            k.model,
            to_json(&k.allowed_models),
            to_json(&k.allowed_groups),
            k.reasoning_effort,
            k.enabled,
            k.expires_at.map(Timestamp::as_millis),
            k.created_at.as_millis(),
            k.updated_at.as_millis(),
            k.last_used_at.map(Timestamp::as_millis),
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn log_from_row(r: &Row<'_>) -> rusqlite::Result<RequestLogEntry> {
    let tokens: Option<String> = r.get(12)?;
    let mut e = RequestLogEntry::new(
        r.get::<_, String>(1)?,
        Timestamp::from_millis(r.get(2)?),
        r.get::<_, String>(6)?,
    );
    e.id = r.get(0)?;
    e.key_id = r.get(3)?;
    e.accounts_tried = json_list(&r.get::<_, String>(4)?)?;
    e.account_id = r.get(5)?;
    e.model = r.get(7)?;
    e.status = u16::try_from(r.get::<_, i64>(8)?).unwrap_or(0);
    e.stream = r.get(9)?;
    e.latency_ms = to_u64(r.get(10)?);
    e.ttfb_ms = r.get::<_, Option<i64>>(11)?.map(to_u64);
    e.tokens = tokens.and_then(|t| serde_json::from_str(&t).ok());
    e.error_class = r.get(13)?;
    e.fallback = r.get(14)?;
    e.body_preview = r.get(15)?;
    Ok(e)
}

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<LoginSession> {
    let kind: String = r.get(1)?;
    let status: String = r.get(10)?;
    Ok(LoginSession {
        state: r.get(0)?,
        kind: if kind == "device" {
            LoginKind::Device
        } else {
            LoginKind::Browser
        },
        code_verifier: Secret::new(r.get::<_, String>(2)?),
        redirect_uri: r.get(3)?,
        label: r.get(4)?,
        group: r.get(5)?,
        tags: json_list(&r.get::<_, String>(6)?)?,
        note: r.get(7)?,
        created_at: Timestamp::from_millis(r.get(8)?),
        expires_at: Timestamp::from_millis(r.get(9)?),
        status: serde_json::from_str(&status).unwrap_or(LoginStatus::Failed {
            error: format!("unreadable status {status}"),
        }),
    })
}

const SESSION_COLUMNS: &str = "state, kind, code_verifier, redirect_uri, label, group_name, tags, note, created_at, expires_at, status";

fn insert_windows(
    tx: &rusqlite::Transaction<'_>,
    readings: &[(String, WindowReading)],
    now: Option<Timestamp>,
) -> Result<(), StoreError> {
    let mut st = tx
            .prepare_cached(
                "INSERT INTO usage_windows (account_id, kind, used_percent, window_minutes, resets_at, source, observed_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1)
                 ON CONFLICT (account_id, kind) DO UPDATE SET used_percent = excluded.used_percent,
                   window_minutes = excluded.window_minutes, resets_at = excluded.resets_at,
                   source = excluded.source, observed_at = excluded.observed_at
                 WHERE excluded.observed_at >= usage_windows.observed_at
                   OR usage_windows.observed_at > ?8",
            )
            .map_err(db_err)?;
    for (id, r) in readings {
        st.execute(params![
            id,
            r.kind.as_str(),
            r.used_percent,
            r.window_minutes,
            r.resets_at.map(Timestamp::as_millis),
            r.source.as_str(),
            r.observed_at.as_millis(),
            now.map_or(i64::MAX, Timestamp::as_millis)
        ])
        .map_err(db_err)?;
    }
    Ok(())
}

fn insert_credits(
    tx: &rusqlite::Transaction<'_>,
    credits: &[(String, Credits)],
) -> Result<(), StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO usage_credits (account_id, balance, has_credits, unlimited)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1)",
        )
        .map_err(db_err)?;
    for (id, cr) in credits {
        st.execute(params![id, cr.balance, cr.has_credits, cr.unlimited])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Ledger entries, each with the requests it counts.
fn insert_ledger<'a>(
    tx: &rusqlite::Transaction<'_>,
    entries: impl IntoIterator<Item = (&'a LedgerEntry, u64)>,
) -> Result<(), StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO token_ledger (at, key_id, account_id, model, input_tokens, cached_tokens, output_tokens, reasoning_tokens, status, requests)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(db_err)?;
    for (e, requests) in entries {
        st.execute(params![
            e.at.as_millis(),
            e.key_id,
            e.account_id,
            e.model,
            to_i64(e.tokens.input_tokens),
            to_i64(e.tokens.cached_tokens),
            to_i64(e.tokens.output_tokens),
            to_i64(e.tokens.reasoning_tokens),
            e.status,
            to_i64(requests)
        ])
        .map_err(db_err)?;
    }
    Ok(())
}

/// The columns [`ledger_from_row`] reads.
const LEDGER_COLUMNS: &str = "id, at, key_id, account_id, model, input_tokens, cached_tokens, output_tokens, reasoning_tokens, status, requests";

/// A ledger row: its id, the entry, the requests it counts.
fn ledger_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, LedgerEntry, u64)> {
    let entry = LedgerEntry {
        at: Timestamp::from_millis(r.get(1)?),
        key_id: r.get(2)?,
        account_id: r.get(3)?,
        model: r.get(4)?,
        tokens: TokenCounts {
            input_tokens: to_u64(r.get(5)?),
            cached_tokens: to_u64(r.get(6)?),
            output_tokens: to_u64(r.get(7)?),
            reasoning_tokens: to_u64(r.get(8)?),
        },
        status: r.get(9)?,
    };
    Ok((r.get(0)?, entry, to_u64(r.get(10)?)))
}

fn insert_request_log(
    tx: &rusqlite::Transaction<'_>,
    entries: &[RequestLogEntry],
) -> Result<(), StoreError> {
    let mut st = tx
            .prepare_cached(
                "INSERT INTO request_log (request_id, at, key_id, accounts_tried, account_id, route, model, status, stream,
                   latency_ms, ttfb_ms, tokens, error_class, fallback, body_preview)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .map_err(db_err)?;
    for e in entries {
        st.execute(params![
            e.request_id,
            e.at.as_millis(),
            e.key_id,
            to_json(&e.accounts_tried),
            e.account_id,
            e.route,
            e.model,
            e.status,
            e.stream,
            to_i64(e.latency_ms),
            e.ttfb_ms.map(to_i64),
            e.tokens.as_ref().map(to_json),
            e.error_class,
            e.fallback,
            e.body_preview
        ])
        .map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn database_file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let dir = self.rescues.clone();
        self.call(move |c| {
            // Rescued tokens are the live ones until the database takes them. Read first: a
            // process that folds them in commits, then removes the file, so a file gone by now
            // is in the rows read next (read after, a fold in between would leave the rows'
            // spent tokens).
            let rescues = dir.read(None);
            let mut st = c
                .prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts"))
                .map_err(db_err)?;
            let mut all: Vec<Account> = st
                .query_map([], account_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)?;
            if !rescues.is_empty() {
                for a in &mut all {
                    rescue::apply_all(a, &rescues);
                }
            }
            Ok(all)
        })
        .await
    }

    async fn get_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let (id, dir) = (id.to_string(), self.rescues.clone());
        self.call(move |c| {
            // Rescued tokens before the row, as in `list_accounts`.
            let rescues = dir.read(Some(&id));
            let mut a = get_account(c, &id)?;
            if let Some(a) = &mut a {
                rescue::apply_all(a, &rescues);
            }
            Ok(a)
        })
        .await
    }

    async fn insert_account(&self, account: &Account) -> Result<(), StoreError> {
        let a = account.clone();
        self.call(move |c| write(c, |tx| write_account(tx, &a, true)))
            .await
    }

    async fn patch_account(
        &self,
        id: &str,
        patch: &AccountPatch,
        now: Timestamp,
    ) -> Result<Account, StoreError> {
        let (id, patch, dir) = (id.to_string(), patch.clone(), self.rescues.clone());
        self.call(move |c| {
            let rescues = dir.read(Some(&id));
            let a = write(c, |tx| {
                let mut a = get_account(tx, &id)?.ok_or_else(|| StoreError::NotFound {
                    what: "account",
                    id: id.clone(),
                })?;
                // Rescued tokens go in with any write of their account; tokens the patch
                // brings (a sign-in, an import that found them newer) win over them.
                rescue::apply_all(&mut a, &rescues);
                patch.apply_to(&mut a, now);
                write_account(tx, &a, false)?;
                Ok(a)
            })?;
            rescue::remove(&rescues);
            Ok(a)
        })
        .await
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        let (id, dir) = (id.to_string(), self.rescues.clone());
        self.call(move |c| {
            let rescues = dir.read(Some(&id));
            let found = write(c, |tx| {
                tx.execute("DELETE FROM refresh_leases WHERE account_id = ?1", [&id])
                    .map_err(db_err)?;
                Ok(tx
                    .execute("DELETE FROM accounts WHERE id = ?1", [&id])
                    .map_err(db_err)?
                    > 0)
            })?;
            rescue::remove(&rescues);
            Ok(found)
        })
        .await
    }

    async fn set_sort_orders(
        &self,
        orders: &[(String, i64)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let orders = orders.to_vec();
        self.call(move |c| {
            write(c, |tx| {
                for (id, sort) in &orders {
                    let n = tx
                        .execute(
                            "UPDATE accounts SET sort = ?2, updated_at = ?3 WHERE id = ?1",
                            params![id, sort, now.as_millis()],
                        )
                        .map_err(db_err)?;
                    if n == 0 {
                        return Err(StoreError::NotFound {
                            what: "account",
                            id: id.clone(),
                        });
                    }
                }
                Ok(())
            })
        })
        .await
    }

    async fn touch_accounts(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.touch(
            "UPDATE accounts SET last_used_at = ?2 \
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            used,
        )
        .await
    }

    async fn list_keys(&self) -> Result<Vec<PlatformKey>, StoreError> {
        self.call(|c| {
            let mut st = c
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM platform_keys"))
                .map_err(db_err)?;
            st.query_map([], key_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)
        })
        .await
    }

    async fn insert_key(&self, key: &PlatformKey) -> Result<(), StoreError> {
        let k = key.clone();
        self.call(move |c| write(c, |tx| write_key(tx, &k, true)))
            .await
    }

    async fn patch_key(
        &self,
        id: &str,
        patch: &KeyPatch,
        now: Timestamp,
    ) -> Result<PlatformKey, StoreError> {
        let (id, patch) = (id.to_string(), patch.clone());
        self.call(move |c| {
            write(c, |tx| {
                let mut k = tx
                    .query_row(
                        &format!("SELECT {KEY_COLUMNS} FROM platform_keys WHERE id = ?1"),
                        [&id],
                        key_from_row,
                    )
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| StoreError::NotFound {
                        what: "key",
                        id: id.clone(),
                    })?;
                patch.apply_to(&mut k, now)?;
                write_key(tx, &k, false)?;
                Ok(k)
            })
        })
        .await
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            write(c, |tx| {
                Ok(tx
                    .execute("DELETE FROM platform_keys WHERE id = ?1", [&id])
                    .map_err(db_err)?
                    > 0)
            })
        })
        .await
    }

    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.touch(
            "UPDATE platform_keys SET last_used_at = ?2 \
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            used,
        )
        .await
    }

    async fn list_windows(&self) -> Result<Vec<(String, WindowReading)>, StoreError> {
        self.call(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT account_id, kind, used_percent, window_minutes, resets_at, source, observed_at FROM usage_windows",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    let kind: String = r.get(1)?;
                    let source: String = r.get(5)?;
                    Ok((
                        r.get::<_, String>(0)?,
                        WindowKind::parse(&kind),
                        r.get::<_, f64>(2)?,
                        r.get::<_, u32>(3)?,
                        ts(r.get(4)?),
                        ReadingSource::parse(&source),
                        Timestamp::from_millis(r.get(6)?),
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, kind, used, minutes, resets_at, source, observed_at) = row.map_err(db_err)?;
                let (Some(kind), Some(source)) = (kind, source) else {
                    return Err(StoreError::Corrupt(format!("usage window of account {id} has an unknown kind or source")));
                };
                out.push((id, WindowReading { kind, used_percent: used, window_minutes: minutes, resets_at, source, observed_at }));
            }
            Ok(out)
        })
        .await
    }

    async fn save_windows(
        &self,
        readings: &[(String, WindowReading)],
        now: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let readings = readings.to_vec();
        self.call(move |c| write(c, |tx| insert_windows(tx, &readings, now)))
            .await
    }

    async fn list_credits(&self) -> Result<Vec<(String, Credits)>, StoreError> {
        self.call(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT account_id, balance, has_credits, unlimited FROM usage_credits",
                )
                .map_err(db_err)?;
            st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    Credits {
                        balance: r.get(1)?,
                        has_credits: r.get(2)?,
                        unlimited: r.get(3)?,
                    },
                ))
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)
        })
        .await
    }

    async fn save_credits(&self, credits: &[(String, Credits)]) -> Result<(), StoreError> {
        let credits = credits.to_vec();
        self.call(move |c| write(c, |tx| insert_credits(tx, &credits)))
            .await
    }

    async fn append_ledger(&self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.call(move |c| write(c, |tx| insert_ledger(tx, entries.iter().map(|e| (e, 1)))))
            .await
    }

    async fn ledger_summary(&self, q: &LedgerQuery) -> Result<Vec<LedgerRow>, StoreError> {
        let q = *q;
        self.call(move |c| {
            let group = match q.group_by {
                LedgerGroup::Key => "COALESCE(key_id, '-')",
                LedgerGroup::Account => "COALESCE(account_id, '-')",
                LedgerGroup::Model => "model",
                LedgerGroup::Day => "strftime('%Y-%m-%d', at / 1000, 'unixepoch')",
            };
            let sql = format!(
                "SELECT {group} AS g, TOTAL(requests), TOTAL(input_tokens), TOTAL(cached_tokens), TOTAL(output_tokens), TOTAL(reasoning_tokens)
                 FROM token_ledger WHERE at >= ?1 GROUP BY g"
            );
            // TOTAL sums in floating point: exact up to 2^53 (far beyond any real use), and
            // counts of garbage from an upstream saturate where SUM would fail the query.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let sum = |r: &Row<'_>, i| r.get::<_, f64>(i).map(|v| v as u64);
            let mut st = c.prepare_cached(&sql).map_err(db_err)?;
            let mut rows: Vec<LedgerRow> = st
                .query_map([q.since.map_or(i64::MIN, Timestamp::as_millis)], |r| {
                    let tokens = TokenCounts {
                        input_tokens: sum(r, 2)?,
                        cached_tokens: sum(r, 3)?,
                        output_tokens: sum(r, 4)?,
                        reasoning_tokens: sum(r, 5)?,
                    };
                    Ok(LedgerRow { group: r.get(0)?, requests: sum(r, 1)?, total_tokens: tokens.total(), tokens })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)?;
            super::sort_ledger(&mut rows);
            Ok(rows)
        })
        .await
    }

    async fn fold_ledger(&self, before: Timestamp, max_rows: usize) -> Result<u64, StoreError> {
        let before = day_start(before).as_millis();
        let max_rows = to_i64(max_rows as u64);
        self.call(move |c| {
            write(c, |tx| {
                let mut ids = Vec::new();
                let mut days = BTreeSet::new();
                let mut fold = DayFold::default();
                // The oldest unfolded entries (the `at` index walks them in time order)...
                let mut st = tx
                    .prepare_cached(&format!(
                        "SELECT {LEDGER_COLUMNS} FROM token_ledger
                         WHERE at < ?1 AND at % {DAY_MS} != 0 ORDER BY at LIMIT ?2"
                    ))
                    .map_err(db_err)?;
                for row in st
                    .query_map(params![before, max_rows], ledger_from_row)
                    .map_err(db_err)?
                {
                    let (id, entry, requests) = row.map_err(db_err)?;
                    ids.push(id);
                    days.insert(day_start(entry.at));
                    fold.add(entry, requests);
                }
                let taken = ids.len() as u64;
                // ...and what their days were folded into before.
                let mut st = tx
                    .prepare_cached(&format!(
                        "SELECT {LEDGER_COLUMNS} FROM token_ledger WHERE at = ?1"
                    ))
                    .map_err(db_err)?;
                for day in days {
                    for row in st
                        .query_map([day.as_millis()], ledger_from_row)
                        .map_err(db_err)?
                    {
                        let (id, entry, requests) = row.map_err(db_err)?;
                        ids.push(id);
                        fold.add(entry, requests);
                    }
                }
                let mut st = tx
                    .prepare_cached("DELETE FROM token_ledger WHERE id = ?1")
                    .map_err(db_err)?;
                for id in ids {
                    st.execute([id]).map_err(db_err)?;
                }
                let folded: Vec<_> = fold.into_entries().collect();
                insert_ledger(tx, folded.iter().map(|(e, n)| (e, *n)))?;
                Ok(taken)
            })
        })
        .await
    }

    async fn append_request_log(&self, entries: &[RequestLogEntry]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.call(move |c| write(c, |tx| insert_request_log(tx, &entries)))
            .await
    }

    async fn write_records(&self, batch: Arc<RecordBatch>) -> Result<(), StoreError> {
        self.call(move |c| {
            write(c, |tx| {
                insert_windows(tx, &batch.windows, batch.now)?;
                insert_credits(tx, &batch.credits)?;
                insert_ledger(tx, batch.ledger.iter().map(|e| (e, 1)))?;
                insert_request_log(tx, &batch.request_log)
            })
        })
        .await
    }

    async fn list_request_log(
        &self,
        q: &RequestLogQuery,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        let q = q.clone();
        self.call(move |c| {
            // Filters in SQL for the indexed columns; the account filter looks inside the JSON list.
            macro_rules! select {
                ($order:literal) => {
                    concat!(
                        "SELECT id, request_id, at, key_id, accounts_tried, account_id, route, model, status, stream, latency_ms,
                           ttfb_ms, tokens, error_class, fallback, body_preview
                         FROM request_log
                         WHERE (?1 IS NULL OR key_id = ?1)
                           AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(request_log.accounts_tried) WHERE value = ?2))
                           AND id > ?3
                         ORDER BY id ",
                        $order,
                        " LIMIT ?4"
                    )
                };
            }
            let sql = if q.oldest_first {
                select!("ASC")
            } else {
                select!("DESC")
            };
            let mut st = c.prepare_cached(sql).map_err(db_err)?;
            st.query_map(
                params![q.key_id, q.account_id, q.after_id.unwrap_or(0), to_i64(q.limit as u64)],
                log_from_row,
            )
            .map_err(db_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.call(|c| {
            // Starting a write on a table is refused at once by a read-only database; matching
            // no row, it changes nothing.
            write(c, |tx| {
                tx.execute("UPDATE refresh_leases SET holder = holder WHERE 0", [])
                    .map(drop)
                    .map_err(db_err)
            })
        })
        .await
    }

    async fn checkpoint(&self) -> Result<(), StoreError> {
        // PASSIVE: whatever no other connection holds back, without waiting for it (a server's
        // own checkpoints fold in the rest).
        self.call(|c| {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(db_err)
        })
        .await
    }

    async fn prune_request_log(
        &self,
        before: Timestamp,
        max_rows: usize,
    ) -> Result<u64, StoreError> {
        let max_rows = to_i64(max_rows as u64);
        self.call(move |c| {
            write(c, |tx| {
                // The oldest rows before the cutoff, by time (its index: no scan of the rows
                // kept, and rows dated ahead at low ids do not block the rest).
                let n = tx
                    .execute(
                        "DELETE FROM request_log WHERE id IN (
                           SELECT id FROM request_log
                           WHERE at < ?1 AND id < (SELECT max(id) FROM request_log)
                           ORDER BY at LIMIT ?2)",
                        params![before.as_millis(), max_rows],
                    )
                    .map_err(db_err)?;
                Ok(n as u64)
            })
        })
        .await
    }

    async fn insert_login_session(&self, s: &LoginSession) -> Result<(), StoreError> {
        let s = s.clone();
        self.call(move |c| {
            write(c, |tx| {
                tx.execute(
                    &format!("INSERT INTO login_sessions ({SESSION_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"),
                    params![
                        s.state,
                        match s.kind {
                            LoginKind::Browser => "browser",
                            LoginKind::Device => "device",
                        },
                        s.code_verifier.expose(),
                        s.redirect_uri,
                        s.label,
                        s.group,
                        to_json(&s.tags),
                        s.note,
                        s.created_at.as_millis(),
                        s.expires_at.as_millis(),
                        to_json(&s.status)
                    ],
                )
                .map_err(db_err)?;
                Ok(())
            })
        })
        .await
    }

    async fn get_login_session(&self, state: &str) -> Result<Option<LoginSession>, StoreError> {
        let state = state.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM login_sessions WHERE state = ?1"),
                [&state],
                session_from_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn claim_login_session(
        &self,
        state: &str,
        now: Timestamp,
    ) -> Result<Option<LoginSession>, StoreError> {
        let state = state.to_string();
        self.call(move |c| {
            write(c, |tx| {
                let s = tx
                    .query_row(
                        &format!("SELECT {SESSION_COLUMNS} FROM login_sessions WHERE state = ?1"),
                        [&state],
                        session_from_row,
                    )
                    .optional()
                    .map_err(db_err)?;
                match s {
                    Some(mut s) if s.status == LoginStatus::Pending && s.expires_at > now => {
                        s.status = LoginStatus::Claimed;
                        tx.execute(
                            "UPDATE login_sessions SET status = ?2 WHERE state = ?1",
                            params![state, to_json(&s.status)],
                        )
                        .map_err(db_err)?;
                        Ok(Some(s))
                    }
                    _ => Ok(None),
                }
            })
        })
        .await
    }

    async fn set_login_status(&self, state: &str, status: &LoginStatus) -> Result<(), StoreError> {
        let (state, status) = (state.to_string(), to_json(status));
        self.call(move |c| {
            write(c, |tx| {
                let n = tx
                    .execute(
                        "UPDATE login_sessions SET status = ?2 WHERE state = ?1",
                        params![state, status],
                    )
                    .map_err(db_err)?;
                if n == 0 {
                    return Err(StoreError::NotFound {
                        what: "login session",
                        id: state.clone(),
                    });
                }
                Ok(())
            })
        })
        .await
    }

    async fn purge_login_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.call(move |c| {
            write(c, |tx| {
                let n = tx
                    .execute(
                        "DELETE FROM login_sessions WHERE expires_at < ?1",
                        [before.as_millis()],
                    )
                    .map_err(db_err)?;
                Ok(n as u64)
            })
        })
        .await
    }

    async fn acquire_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        replace: Option<&str>,
    ) -> Result<LeaseTake, StoreError> {
        let (id, holder, dir) = (
            account_id.to_string(),
            holder.to_string(),
            self.rescues.clone(),
        );
        let replace = replace.map(str::to_string);
        let until = now.plus(ttl).as_millis();
        self.call(move |c| {
            // A refresh is about to read the account: rescued tokens go in first.
            let rescues = dir.read(Some(&id));
            let took = write(c, |tx| {
                let current: Option<(String, i64)> = tx
                    .query_row(
                        "SELECT holder, expires_at FROM refresh_leases WHERE account_id = ?1",
                        [&id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db_err)?;
                if let Some((h, exp)) = &current
                    && *h != holder
                    && *exp > now.as_millis()
                    && Some(h) != replace.as_ref()
                {
                    return Ok(LeaseTake::Held {
                        holder: h.clone(),
                        until: Timestamp::from_millis(*exp),
                    });
                }
                tx.execute(
                    "INSERT INTO refresh_leases (account_id, holder, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                    params![id, holder, until],
                )
                .map_err(db_err)?;
                fold_rescues(tx, &rescues, now)?;
                Ok(LeaseTake::Taken {
                    left_behind: current.map(|(h, _)| h),
                })
            })?;
            if matches!(took, LeaseTake::Taken { .. }) {
                rescue::remove(&rescues);
            }
            Ok(took)
        })
        .await
    }

    async fn renew_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        wait: Duration,
    ) -> Result<bool, StoreError> {
        let (id, holder) = (account_id.to_string(), holder.to_string());
        let until = now.plus(ttl).as_millis();
        let deadline = std::time::Instant::now() + wait;
        self.call(move |c| {
            write_before(c, deadline, |tx| {
                let n = tx
                    .execute(
                        "UPDATE refresh_leases SET expires_at = ?3 WHERE account_id = ?1 AND holder = ?2",
                        params![id, holder, until],
                    )
                    .map_err(db_err)?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn release_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let (id, holder) = (account_id.to_string(), holder.to_string());
        // Not worth blocking this connection long: an unreleased lease runs out by itself.
        let deadline = std::time::Instant::now() + LEASE_RELEASE_WAIT;
        self.call(move |c| {
            write_before(c, deadline, |tx| {
                tx.execute(
                    "DELETE FROM refresh_leases WHERE account_id = ?1 AND holder = ?2",
                    params![id, holder],
                )
                .map_err(db_err)?;
                Ok(())
            })
        })
        .await
    }

    async fn save_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
        now: Timestamp,
        wait: Duration,
    ) -> Result<TokenSave, StoreError> {
        let (id, refreshed, dir) = (
            account_id.to_string(),
            refreshed.clone(),
            self.rescues.clone(),
        );
        // Counted from the call, not from when the connection gets to it.
        let deadline = std::time::Instant::now() + wait;
        self.call(move |c| {
            let rescues = dir.read(Some(&id));
            let saved = write_before(c, deadline, |tx| {
                let mut a = get_account(tx, &id)?.ok_or_else(|| StoreError::NotFound {
                    what: "account",
                    id: id.clone(),
                })?;
                let folded = rescue::apply_all(&mut a, &rescues);
                if !refreshed.writes_over(&a.tokens) {
                    if folded {
                        a.updated_at = now;
                        write_account(tx, &a, false)?;
                    }
                    return Ok(TokenSave::Superseded(a));
                }
                refreshed.apply_to(&mut a, now);
                write_account(tx, &a, false)?;
                Ok(TokenSave::Saved(a))
            })?;
            rescue::remove(&rescues);
            Ok(saved)
        })
        .await
    }

    async fn rescue_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
    ) -> Result<bool, StoreError> {
        // Not through the connection: it may be stuck behind the very lock this works around.
        let (id, refreshed, dir) = (
            account_id.to_string(),
            refreshed.clone(),
            self.rescues.clone(),
        );
        tokio::task::spawn_blocking(move || {
            rescue::write(&dir, &id, &refreshed.spent, &refreshed.tokens).map(|_| true)
        })
        .await
        .map_err(|e| StoreError::Backend {
            message: format!("the rescue task failed: {e}"),
            source: None,
        })?
    }

    /// The pool's change counter (moved by every change to accounts, keys and usage, see
    /// migration 4), read only when another connection has committed since the last call
    /// (`PRAGMA data_version`): the request-log and ledger batches of other processes, most
    /// of their commits, leave it where it was and cost no reload. This connection's own
    /// changes move the counter too, so the first look after another process's commit may
    /// count them once.
    async fn data_version(&self) -> Result<u64, StoreError> {
        let seen = self.seen.clone();
        self.call(move |c| {
            let commits: i64 = c
                .query_row("PRAGMA data_version", [], |r| r.get(0))
                .map_err(db_err)?;
            let mut seen = crate::sync::lock(&seen);
            if seen.0 != Some(commits) {
                let changes: i64 = c
                    .query_row("SELECT n FROM pool_changes", [], |r| r.get(0))
                    .map_err(db_err)?;
                *seen = (Some(commits), to_u64(changes));
            }
            Ok(seen.1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commits_are_synced_before_they_count() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("p.db")).unwrap().conn;
        let level: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(level, 2, "synchronous=FULL");
    }
}
