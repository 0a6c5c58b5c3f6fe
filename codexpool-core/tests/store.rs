//! The store conformance suite on both stores, and what only SQLite has to prove: file mode,
//! directories, schema versions, WAL, and many writers from many handles at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use codexpool_core::store::{
    MemoryStore, RefreshedTokens, SqliteStore, Store, StoreError, conformance,
};

#[tokio::test]
async fn memory_store_conforms() {
    conformance::check_all(&MemoryStore::new()).await.unwrap();
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("pool.db")).await.unwrap();
    conformance::check_all(&store).await.unwrap();
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        s.insert_account(&conformance::sample_account("a1", "c1"))
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.list_accounts().await.unwrap().len(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_creates_parent_dirs_and_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep/er/pool.db");
    let _s = SqliteStore::open(&path).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database file mode {mode:o}");
    // The database's own folder is the owner's only (the RPC token and the servers' files go
    // there too).
    let mode = std::fs::metadata(dir.path().join("deep/er"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "folder mode {mode:o}");
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade codexpool"), "{err}");
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99, "the file was altered");
    let tables: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'accounts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "migrations ran on a newer database");
}

/// A mistyped path to another program's database: refused before anything writes to it (no
/// WAL, no schema, no mode change); an empty SQLite database is codexpool's to fill.
#[tokio::test]
async fn sqlite_refuses_another_programs_database_and_leaves_it_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE notes (x); CREATE TABLE accounts (y); INSERT INTO notes VALUES (1);",
        )
        .unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another program's SQLite database (its tables: accounts, notes)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was altered"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert!(!dir.path().join("other.db-wal").exists());

    let empty = dir.path().join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; VACUUM;")
        .unwrap();
    SqliteStore::open(&empty).await.unwrap();
}

#[tokio::test]
async fn sqlite_open_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SqliteStore::open(file.join("pool.db")).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::open(&garbage).await.unwrap_err();
    assert!(err.to_string().contains("garbage.db"), "{err}");
}

#[tokio::test]
async fn sqlite_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let _s = SqliteStore::open(&path).await.unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn data_version_moves_only_for_other_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let v0 = a.data_version().await.unwrap();
    a.insert_account(&conformance::sample_account("a1", "c1"))
        .await
        .unwrap();
    assert_eq!(
        a.data_version().await.unwrap(),
        v0,
        "own writes do not count"
    );
    b.insert_account(&conformance::sample_account("a2", "c2"))
        .await
        .unwrap();
    let v1 = a.data_version().await.unwrap();
    assert_ne!(v1, v0, "another handle's write is seen");
    // Another handle's request-log rows (most of a busy server's commits) move nothing.
    b.append_request_log(&[codexpool_core::request_log::RequestLogEntry::new(
        "req-1",
        codexpool_core::Timestamp::from_secs(1),
        "/v1/models",
    )])
    .await
    .unwrap();
    assert_eq!(
        a.data_version().await.unwrap(),
        v1,
        "log rows cost no reload"
    );
    // Its key and usage changes do, even twice within one millisecond.
    let k = conformance::sample_key("k1", 7);
    b.insert_key(&k).await.unwrap();
    let v2 = a.data_version().await.unwrap();
    assert_ne!(v2, v1, "a key");
    let patch = codexpool_core::keys::KeyPatch::default().enabled(false);
    let at = codexpool_core::Timestamp::from_secs(5);
    b.patch_key("k1", &patch, at).await.unwrap();
    let v3 = a.data_version().await.unwrap();
    assert_ne!(v3, v2, "a key change");
    let patch = codexpool_core::keys::KeyPatch::default().enabled(true);
    b.patch_key("k1", &patch, at).await.unwrap();
    assert_ne!(
        a.data_version().await.unwrap(),
        v3,
        "another change at the same time"
    );
}

/// Many handles (as many processes would) writing the same file at once: every write lands and
/// none reports `database is locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_see_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let stores: Vec<Arc<SqliteStore>> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Arc::new(SqliteStore::open(&path).await.unwrap()));
        }
        v
    };
    let mut tasks = Vec::new();
    for (n, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let id = format!("s{n}-{i}");
                s.insert_account(&conformance::sample_account(&id, &id))
                    .await?;
                let mut e = codexpool_core::request_log::RequestLogEntry::new(
                    id,
                    codexpool_core::Timestamp::now(),
                    "/x",
                );
                e.status = 200;
                s.append_request_log(&[e]).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(stores[0].list_accounts().await.unwrap().len(), 200);
    let rows = stores[1]
        .list_request_log(&codexpool_core::request_log::RequestLogQuery::latest(1000))
        .await
        .unwrap();
    assert_eq!(rows.len(), 200);
}

/// The background writer retries a failed batch whole, so SQLite must write it all or nothing:
/// a ledger entry written before the request log failed would be counted twice on the retry.
#[tokio::test]
async fn sqlite_writes_a_record_batch_all_or_nothing() {
    use codexpool_core::Timestamp;
    use codexpool_core::request_log::{RequestLogEntry, RequestLogQuery};
    use codexpool_core::store::RecordBatch;
    use codexpool_core::usage::{LedgerEntry, TokenCounts};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let at = Timestamp::from_secs(1_800_000_000);
    let batch = Arc::new(RecordBatch {
        ledger: vec![LedgerEntry {
            at,
            key_id: None,
            account_id: None,
            model: "m".into(),
            tokens: TokenCounts::default(),
            status: 200,
        }],
        request_log: vec![RequestLogEntry::new("r1", at, "/v1/responses")],
        ..RecordBatch::default()
    });
    // The request-log insert fails after the ledger insert (as a full disk would).
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER full BEFORE INSERT ON request_log BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    assert!(store.write_records(batch.clone()).await.is_err());
    assert_eq!(
        ledger_requests(&store).await,
        0,
        "nothing of the failed batch"
    );
    other.execute_batch("DROP TRIGGER full;").unwrap();
    store.write_records(batch).await.unwrap();
    assert_eq!(
        ledger_requests(&store).await,
        1,
        "the retry writes the entry once"
    );
    let log = store
        .list_request_log(&RequestLogQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
}

/// A database from before the ledger could be folded (schema 1) opens with every entry counting
/// one request; folding leaves one row per day and group, with the same sums.
#[tokio::test]
async fn sqlite_folds_old_ledger_days_into_a_row_per_group_even_for_rows_of_schema_1() {
    use codexpool_core::Timestamp;
    use codexpool_core::usage::{LedgerGroup, LedgerQuery};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    // 08:00 UTC on a day; three days of entries, two keys, 500 a day each.
    let day0 = 1_800_000_000_i64 * 1000;
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("../migrations/001_init.sql"))
            .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        let tx = c.unchecked_transaction().unwrap();
        let mut st = tx
            .prepare(
                "INSERT INTO token_ledger (at, key_id, account_id, model, input_tokens, cached_tokens, output_tokens, reasoning_tokens, status)
                 VALUES (?1, ?2, 'a1', 'm1', 10, 4, 3, 1, 200)",
            )
            .unwrap();
        for day in 0..3 {
            for i in 0..1000 {
                let key = if i % 2 == 0 { "k1" } else { "k2" };
                st.execute(rusqlite::params![day0 + day * 86_400_000 + i * 1000, key])
                    .unwrap();
            }
        }
        drop(st);
        tx.commit().unwrap();
    }
    let rows = |path: &std::path::Path| -> i64 {
        let c = rusqlite::Connection::open(path).unwrap();
        c.query_row("SELECT COUNT(*) FROM token_ledger", [], |r| r.get(0))
            .unwrap()
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        ledger_requests(&store).await,
        3000,
        "old rows count one each"
    );
    async fn sums(store: &SqliteStore) -> Vec<Vec<codexpool_core::usage::LedgerRow>> {
        let mut all = Vec::new();
        for g in [LedgerGroup::Key, LedgerGroup::Day] {
            all.push(store.ledger_summary(&LedgerQuery::by(g)).await.unwrap());
        }
        all
    }
    let before = sums(&store).await;
    let day2 = Timestamp::from_millis(day0 + 2 * 86_400_000);
    assert_eq!(store.fold_ledger(day2, 1500).await.unwrap(), 1500);
    assert_eq!(store.fold_ledger(day2, 1500).await.unwrap(), 500);
    assert_eq!(store.fold_ledger(day2, 1500).await.unwrap(), 0);
    assert_eq!(rows(&path), 2 * 2 + 1000, "a row per key on days 0 and 1");
    assert_eq!(sums(&store).await, before, "the same sums");
    let by_day = &before[1];
    assert!(
        by_day
            .iter()
            .all(|r| r.requests == 1000 && r.tokens.input_tokens == 10_000)
    );
}

async fn ledger_requests(s: &SqliteStore) -> u64 {
    use codexpool_core::usage::{LedgerGroup, LedgerQuery};
    s.ledger_summary(&LedgerQuery::by(LedgerGroup::Model))
        .await
        .unwrap()
        .iter()
        .map(|r| r.requests)
        .sum()
}

#[tokio::test]
async fn rescued_tokens_are_read_at_once_and_stored_at_the_next_opening_when_newer() {
    use codexpool_core::account::Tokens;
    use codexpool_core::{AccountPatch, Secret, Timestamp};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let rescue_dir = dir.path().join("rescued-tokens").join("pool.db");
    let s = SqliteStore::open(&path).await.unwrap();
    let a1 = conformance::sample_account("a1", "c1");
    let a2 = conformance::sample_account("a2", "c2");
    s.insert_account(&a1).await.unwrap();
    s.insert_account(&a2).await.unwrap();
    let tokens = |rt: &str, exp: Option<Timestamp>| Tokens {
        id_token: Secret::from("id-rescued"),
        access_token: Secret::from(format!("access-{rt}")),
        refresh_token: Secret::from(rt),
        expires_at: exp,
        last_refresh: a1.tokens.last_refresh,
    };
    let exp = a1.tokens.expires_at.unwrap();
    // a1: the successor of the stored token. a2: tokens older than the stored ones.
    let newer = tokens(
        "rt-a1-new",
        Some(exp.plus(std::time::Duration::from_secs(60))),
    );
    let older = tokens(
        "rt-a2-old",
        Some(exp.minus(std::time::Duration::from_secs(60))),
    );
    for (id, spent, t) in [
        ("a1", a1.tokens.refresh_token.clone(), &newer),
        ("a2", Secret::from("rt-unrelated"), &older),
    ] {
        let r = RefreshedTokens::new(spent, t.clone(), AccountPatch::default());
        assert!(s.rescue_refreshed_tokens(id, &r).await.unwrap());
    }
    assert_eq!(std::fs::read_dir(&rescue_dir).unwrap().count(), 2);

    // Read at once, from either read.
    assert_eq!(s.get_account("a1").await.unwrap().unwrap().tokens, newer);
    let all = s.list_accounts().await.unwrap();
    let find = |id: &str| all.iter().find(|a| a.id == id).unwrap().tokens.clone();
    assert_eq!(find("a1"), newer);
    assert_eq!(find("a2"), a2.tokens, "older tokens are not taken");
    drop(s);

    // Stored when the database is opened next; both files are done with.
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(std::fs::read_dir(&rescue_dir).unwrap().count(), 0);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let stored = |id: &str| -> String {
        raw.query_row(
            "SELECT refresh_token FROM accounts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(stored("a1"), "rt-a1-new");
    assert_eq!(stored("a2"), a2.tokens.refresh_token.expose());
    assert_eq!(s.get_account("a1").await.unwrap().unwrap().tokens, newer);
}

/// Another database in the same folder (a backup copy has the same account ids) neither takes
/// a database's rescued tokens nor removes them; a rescue in the folder earlier builds used is
/// folded in by the database that has its account, and left alone by the others.
#[tokio::test]
async fn rescued_tokens_stay_with_their_database() {
    use codexpool_core::AccountPatch;
    use codexpool_core::account::Tokens;
    use codexpool_core::{Secret, Timestamp};

    let dir = tempfile::tempdir().unwrap();
    let (work, backup) = (dir.path().join("work.db"), dir.path().join("backup.db"));
    let a1 = conformance::sample_account("a1", "c1");
    let a2 = conformance::sample_account("a2", "c2");
    for path in [&work, &backup] {
        let s = SqliteStore::open(path).await.unwrap();
        s.insert_account(&a1).await.unwrap();
    }
    let later = |rt: &str| Tokens {
        id_token: Secret::from("id-rescued"),
        access_token: Secret::from(format!("access-{rt}")),
        refresh_token: Secret::from(rt),
        expires_at: Some(Timestamp::now().plus(std::time::Duration::from_secs(7200))),
        last_refresh: Some(Timestamp::now()),
    };
    let s = SqliteStore::open(&work).await.unwrap();
    let r = RefreshedTokens::new(
        a1.tokens.refresh_token.clone(),
        later("rt-work"),
        AccountPatch::default(),
    );
    assert!(s.rescue_refreshed_tokens("a1", &r).await.unwrap());
    drop(s);
    // A rescue an earlier build left in the shared folder, of an account only `work` has.
    let s = SqliteStore::open(dir.path().join("scratch.db"))
        .await
        .unwrap();
    s.insert_account(&a2).await.unwrap();
    let r = RefreshedTokens::new(
        a2.tokens.refresh_token.clone(),
        later("rt-legacy"),
        AccountPatch::default(),
    );
    assert!(s.rescue_refreshed_tokens("a2", &r).await.unwrap());
    drop(s);
    let shared = dir.path().join("rescued-tokens");
    let scratch = shared.join("scratch.db");
    let legacy = std::fs::read_dir(&scratch)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    std::fs::rename(legacy.path(), shared.join(legacy.file_name())).unwrap();
    std::fs::remove_dir(&scratch).unwrap();
    let count = |p: &std::path::Path| {
        std::fs::read_dir(p)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
            .count()
    };

    // The backup opens: it takes neither, and both files stay.
    let b = SqliteStore::open(&backup).await.unwrap();
    assert_eq!(
        b.get_account("a1").await.unwrap().unwrap().tokens,
        a1.tokens
    );
    assert!(b.get_account("a2").await.unwrap().is_none());
    drop(b);
    assert_eq!(count(&shared.join("work.db")), 1);
    assert_eq!(count(&shared), 1, "the legacy rescue is left");

    // Work takes its own; the legacy one, of an account it lacks, stays too.
    let w = SqliteStore::open(&work).await.unwrap();
    assert_eq!(
        w.get_account("a1")
            .await
            .unwrap()
            .unwrap()
            .tokens
            .refresh_token,
        Secret::from("rt-work")
    );
    drop(w);
    assert_eq!(count(&shared.join("work.db")), 0);
    assert_eq!(count(&shared), 1);

    // A database with that account reads it at once (as earlier builds did), and folds it in
    // and removes it when opened next.
    let w2 = dir.path().join("has-a2.db");
    let a2_refresh_token = |s: SqliteStore| async move {
        let a = s.get_account("a2").await.unwrap().unwrap();
        a.tokens.refresh_token
    };
    let s = SqliteStore::open(&w2).await.unwrap();
    s.insert_account(&a2).await.unwrap();
    assert_eq!(a2_refresh_token(s).await, Secret::from("rt-legacy"));
    assert_eq!(count(&shared), 1);
    let s = SqliteStore::open(&w2).await.unwrap();
    assert_eq!(a2_refresh_token(s).await, Secret::from("rt-legacy"));
    assert_eq!(count(&shared), 0);
}

/// A database any user may read (a copy made under a umask of 022, an empty file made by hand)
/// loses the other users' access when it is opened, its `-wal` and `-shm` too.
#[cfg(unix)]
#[tokio::test]
async fn a_database_any_user_may_read_loses_their_access() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.db");
    let first = SqliteStore::open(&path).await.unwrap();
    first
        .insert_account(&conformance::sample_account("a1", "c1"))
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let wal = dir.path().join("copy.db-wal");
    assert_eq!((mode(&path), mode(&wal)), (0o600, 0o600), "created private");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o664)).unwrap();
    let s = SqliteStore::open(&path).await.unwrap();
    // The other users' bits go; a group's stay (a team may share the database through it).
    assert_eq!(mode(&path), 0o640);
    assert_eq!(mode(&wal), 0o660);
    assert!(s.get_account("a1").await.unwrap().is_some());
}

#[tokio::test]
async fn the_memory_store_has_nowhere_to_rescue_to() {
    use codexpool_core::AccountPatch;
    let s = MemoryStore::new();
    let a = conformance::sample_account("a1", "c1");
    let r = RefreshedTokens::new(
        a.tokens.refresh_token.clone(),
        a.tokens.clone(),
        AccountPatch::default(),
    );
    assert!(!s.rescue_refreshed_tokens("a1", &r).await.unwrap());
}

#[tokio::test]
async fn sqlite_names_a_refused_value_as_such_not_as_a_duplicate() {
    use codexpool_core::usage::{ReadingSource, WindowKind, WindowReading};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("pool.db")).await.unwrap();
    s.insert_account(&conformance::sample_account("a1", "c1"))
        .await
        .unwrap();
    // SQLite stores NaN as NULL, which `used_percent REAL NOT NULL` refuses.
    let reading = WindowReading {
        kind: WindowKind::FiveHour,
        used_percent: f64::NAN,
        window_minutes: 300,
        resets_at: None,
        source: ReadingSource::Poll,
        observed_at: codexpool_core::Timestamp::from_secs(1_800_000_000),
    };
    let batch = codexpool_core::store::RecordBatch {
        windows: vec![("a1".into(), reading)],
        ..Default::default()
    };
    let err = s.write_records(Arc::new(batch)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend { message, .. } if message.contains("NOT NULL")),
        "{err:?}"
    );

    // A real duplicate still is a conflict.
    let err = s
        .insert_account(&conformance::sample_account("a1", "c2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
}
