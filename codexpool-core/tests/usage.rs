//! Usage and the ledger through the public API: readings from polls, headers and 429s with
//! provenance, staleness, persistence, and ledger sums; the request log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use codexpool_core::keys::NewKey;
use codexpool_core::request_log::{RequestLogEntry, RequestLogQuery};
use codexpool_core::usage::{
    Credits, LedgerEntry, LedgerGroup, LedgerQuery, ReadingSource, TokenCounts, UsageSnapshot,
    WindowKind, WindowReading, parse_usage_json,
};
use codexpool_core::{Clock, Config, Error, ManualClock, Pool};
use common::{START, add_accounts, pool_with};

#[tokio::test]
async fn headers_and_polls_land_with_their_source() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let body = br#"{"rate_limit":{"primary_window":{"used_percent":25,"limit_window_seconds":18000,"reset_after_seconds":600},
        "secondary_window":{"used_percent":50,"limit_window_seconds":604800,"reset_after_seconds":86400}},"credits":{"balance":"7.5"}}"#;
    pool.usage()
        .record(&id, &parse_usage_json(body, clock.now()).unwrap())
        .unwrap();
    let u = pool.usage().get(&id).unwrap();
    assert_eq!(u.five_hour.as_ref().unwrap().source, ReadingSource::Poll);
    assert_eq!(u.weekly.as_ref().unwrap().used_percent, 50.0);
    assert_eq!(u.credits.as_ref().unwrap().balance, Some(7.5));
    assert_eq!(pool.usage().headroom(&id).unwrap(), Some(50.0));

    clock.advance(Duration::from_secs(1));
    let headers: Vec<(&str, &[u8])> = vec![
        ("x-codex-primary-used-percent", b"30"),
        ("x-codex-primary-window-minutes", b"300"),
        ("x-codex-primary-reset-after-seconds", b"500"),
    ];
    assert!(pool.usage().record_headers(&id, headers));
    let u = pool.usage().get(&id).unwrap();
    let five = u.five_hour.unwrap();
    assert_eq!(
        (five.used_percent, five.source, five.observed_at),
        (30.0, ReadingSource::Headers, clock.now())
    );
    assert_eq!(
        u.weekly.unwrap().source,
        ReadingSource::Poll,
        "a window the headers did not mention is kept"
    );
    assert!(
        !pool
            .usage()
            .record_headers(&id, vec![("content-type", b"x".as_slice())])
    );

    let limit = pool
        .usage()
        .record_usage_limit(
            &id,
            br#"{"error":{"type":"usage_limit_reached","resets_in_seconds":120}}"#,
        )
        .unwrap();
    assert_eq!(
        limit.resets_at,
        Some(clock.now().plus(Duration::from_secs(120)))
    );
    assert_eq!(pool.usage().exhausted_until(&id).unwrap(), limit.resets_at);
    assert!(
        pool.usage()
            .record_usage_limit(&id, br#"{"error":{"type":"rate_limit_exceeded"}}"#)
            .is_none()
    );
    assert!(pool.usage().record_usage_limit(&id, b"<html>").is_none());
    // Unknown accounts are ignored without fuss.
    pool.usage()
        .record("missing", &parse_usage_json(body, clock.now()).unwrap())
        .unwrap();
}

#[tokio::test]
async fn readings_persist_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .with("DB_PATH", dir.path().join("p.db").to_str().unwrap())
        .unwrap();
    let clock = ManualClock::new(START);
    let id;
    {
        let pool = Pool::builder(config.clone())
            .clock(Arc::new(clock.clone()))
            .open()
            .await
            .unwrap();
        id = add_accounts(&pool, 1).await.remove(0);
        let h: Vec<(&str, &[u8])> = vec![
            ("x-codex-secondary-used-percent", b"100"),
            ("x-codex-secondary-window-minutes", b"10080"),
            ("x-codex-secondary-reset-after-seconds", b"3600"),
        ];
        pool.usage().record_headers(&id, h);
        pool.flush().await.unwrap();
    }
    let pool = Pool::builder(config)
        .clock(Arc::new(clock.clone()))
        .open()
        .await
        .unwrap();
    let w = pool.usage().get(&id).unwrap().weekly.unwrap();
    assert_eq!(
        (w.kind, w.used_percent, w.source),
        (WindowKind::Weekly, 100.0, ReadingSource::Headers)
    );
    assert!(
        pool.accounts()
            .acquire(&codexpool_core::Demand::any())
            .await
            .is_err(),
        "still exhausted after a restart"
    );
}

#[tokio::test]
async fn steady_readings_still_refresh_the_stored_one_every_minute() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let stored_at = |pool: &Pool| {
        let pool = pool.clone();
        async move {
            pool.flush().await.unwrap();
            pool.store().list_windows().await.unwrap()[0].1.observed_at
        }
    };
    // Steady traffic: the same figures every 10 s for two minutes.
    for _ in 0..13 {
        let h: Vec<(&str, &[u8])> = vec![
            ("x-codex-primary-used-percent", b"40"),
            ("x-codex-primary-window-minutes", b"300"),
        ];
        pool.usage().record_headers(&id, h);
        clock.advance(Duration::from_secs(10));
    }
    let last = clock.now().minus(Duration::from_secs(10));
    let stored = stored_at(&pool).await;
    assert!(
        last.since(stored) < Duration::from_secs(60),
        "the stored reading is {:?} older than the newest",
        last.since(stored)
    );
    assert!(stored > START, "it moved on from the first reading");
}

#[tokio::test]
async fn the_ledger_sums_per_key_account_model_and_day() {
    let (pool, clock) = pool_with(&[]).await;
    for (key, acc, model, input) in [
        ("k1", "a1", "m1", 10u64),
        ("k1", "a2", "m1", 20),
        ("k2", "a1", "m2", 5),
    ] {
        pool.usage().record_tokens(LedgerEntry {
            at: clock.now(),
            key_id: Some(key.into()),
            account_id: Some(acc.into()),
            model: model.into(),
            tokens: TokenCounts {
                input_tokens: input,
                cached_tokens: 1,
                output_tokens: 2,
                reasoning_tokens: 1,
            },
            status: 200,
        });
    }
    let by_key = pool
        .usage()
        .ledger(&LedgerQuery::by(LedgerGroup::Key))
        .await
        .unwrap();
    assert_eq!(by_key.len(), 2);
    assert_eq!(
        (
            by_key[0].group.as_str(),
            by_key[0].requests,
            by_key[0].tokens.input_tokens,
            by_key[0].total_tokens
        ),
        ("k1", 2, 30, 34)
    );
    let by_model = pool
        .usage()
        .ledger(&LedgerQuery::by(LedgerGroup::Model))
        .await
        .unwrap();
    assert_eq!(
        by_model.iter().find(|r| r.group == "m2").unwrap().requests,
        1
    );
    let by_day = pool
        .usage()
        .ledger(&LedgerQuery::by(LedgerGroup::Day))
        .await
        .unwrap();
    assert_eq!(by_day.len(), 1);
    assert_eq!(by_day[0].group, clock.now().to_rfc3339()[..10]);
    let later = pool
        .usage()
        .ledger(
            &LedgerQuery::by(LedgerGroup::Account).since(clock.now().plus(Duration::from_secs(1))),
        )
        .await
        .unwrap();
    assert!(later.is_empty());
    assert!("week".parse::<LedgerGroup>().is_err());
}

#[tokio::test]
async fn the_request_log_is_batched_and_filterable() {
    let (pool, clock) = pool_with(&[]).await;
    let account = add_accounts(&pool, 1).await.remove(0);
    let mut keys = Vec::new();
    for name in ["k0", "k1"] {
        keys.push(
            pool.keys()
                .create(NewKey::named(name))
                .await
                .unwrap()
                .key
                .id,
        );
    }
    for i in 0..3 {
        let mut e = RequestLogEntry::new(format!("r{i}"), clock.now(), "/v1/responses");
        e.key_id = Some(keys[i % 2].clone());
        e.accounts_tried = vec![account.clone()];
        e.status = 200;
        pool.request_log().record(e);
    }
    let log = pool.request_log();
    let ids =
        |rows: Vec<RequestLogEntry>| rows.into_iter().map(|r| r.request_id).collect::<Vec<_>>();
    let all = RequestLogQuery::latest(10);
    assert_eq!(ids(log.list(&all).await.unwrap()), ["r2", "r1", "r0"]);
    assert_eq!(
        ids(log.list(&all.clone().key(keys[1].clone())).await.unwrap()),
        ["r1"]
    );
    // A unique prefix names a key or an account, as everywhere else.
    assert_eq!(
        ids(log
            .list(&all.clone().key(keys[1][..6].to_string()))
            .await
            .unwrap()),
        ["r1"]
    );
    assert_eq!(
        log.list(&all.clone().account(account[..5].to_string()))
            .await
            .unwrap()
            .len(),
        3
    );
    // An unknown one is an error, not an empty answer...
    let err = log.list(&all.clone().key("zz")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    // ...except the full id of a key deleted since: its rows remain.
    pool.keys().delete(&keys[0]).await.unwrap();
    assert_eq!(
        ids(log.list(&all.clone().key(keys[0].clone())).await.unwrap()),
        ["r2", "r0"]
    );
    // A limit is a count of rows: 0 is refused by name, not read as some other number; a
    // query left at its default reads the newest 100.
    let err = log.list(&RequestLogQuery::latest(0)).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, .. } if field == "limit"),
        "{err}"
    );
    assert_eq!(RequestLogQuery::default().limit, 100);
    assert_eq!(
        log.list(&RequestLogQuery::default()).await.unwrap().len(),
        3
    );
}

/// The clock ran 8 h ahead and was set back (a dual-boot machine, NTP): a usage limit met
/// after that is recorded, not refused as older than what the clock saw while it was ahead,
/// in memory and in the database (another process, or a restart, sees it too).
#[tokio::test]
async fn a_clock_set_back_does_not_freeze_usage() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .with("DB_PATH", dir.path().join("p.db").to_str().unwrap())
        .unwrap();
    let clock = ManualClock::new(START);
    let open = || {
        Pool::builder(config.clone())
            .clock(Arc::new(clock.clone()))
            .open()
    };
    let pool = open().await.unwrap();
    let id = add_accounts(&pool, 1).await.remove(0);
    clock.advance(Duration::from_secs(8 * 3600));
    let body = br#"{"rate_limit":{"primary_window":{"used_percent":40,"limit_window_seconds":18000,"reset_after_seconds":9000}}}"#;
    pool.usage()
        .record(&id, &parse_usage_json(body, clock.now()).unwrap())
        .unwrap();
    pool.flush().await.unwrap();
    clock.set(START);
    let limit = br#"{"error":{"type":"usage_limit_reached","resets_in_seconds":3600}}"#;
    assert!(pool.usage().record_usage_limit(&id, limit).is_some());
    let until = Some(START.plus(Duration::from_secs(3600)));
    assert_eq!(pool.usage().exhausted_until(&id).unwrap(), until);
    pool.flush().await.unwrap();
    let other = open().await.unwrap();
    assert_eq!(other.usage().exhausted_until(&id).unwrap(), until);
}

/// A usage limit that names no reset (a `response.failed` in a 200 stream) on an account whose
/// 5-hour window is known at 97 % (the backend refuses before 100 % on some plans): the account
/// rests until that window resets, not for a whole 5-hour window from now.
#[tokio::test]
async fn a_usage_limit_without_a_reset_takes_the_fullest_windows() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let headers: Vec<(&str, &[u8])> = vec![
        ("x-codex-primary-used-percent", b"97"),
        ("x-codex-primary-window-minutes", b"300"),
        ("x-codex-primary-reset-after-seconds", b"1800"),
        ("x-codex-secondary-used-percent", b"20"),
        ("x-codex-secondary-window-minutes", b"10080"),
        ("x-codex-secondary-reset-after-seconds", b"259200"),
    ];
    assert!(pool.usage().record_headers(&id, headers));
    let lease = pool
        .accounts()
        .acquire(&codexpool_core::Demand::any())
        .await
        .unwrap();
    lease
        .report(codexpool_core::Outcome::UsageLimit { resets_at: None })
        .await;
    drop(lease);
    assert_eq!(
        pool.usage().exhausted_until(&id).unwrap(),
        Some(clock.now().plus(Duration::from_secs(1800)))
    );
    // A poll of the same window that finds it at 97 % does not undo the refusal.
    let body = br#"{"rate_limit":{"allowed":true,"limit_reached":false,"primary_window":{"used_percent":97,"limit_window_seconds":18000,"reset_after_seconds":1790}}}"#;
    clock.advance(Duration::from_secs(10));
    pool.usage()
        .record(&id, &parse_usage_json(body, clock.now()).unwrap())
        .unwrap();
    assert!(pool.usage().exhausted_until(&id).unwrap().is_some());
}

#[tokio::test]
async fn a_poll_that_says_limit_reached_exhausts_the_account_before_100_percent() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    for flag in [r#""limit_reached":true"#, r#""allowed":false"#] {
        let body = format!(
            r#"{{"rate_limit":{{{flag},
            "primary_window":{{"used_percent":97,"limit_window_seconds":18000,"reset_after_seconds":600}},
            "secondary_window":{{"used_percent":40,"limit_window_seconds":604800,"reset_after_seconds":86400}}}}}}"#
        );
        let snap = parse_usage_json(body.as_bytes(), clock.now()).unwrap();
        pool.usage().record(&id, &snap).unwrap();
        let until = pool.usage().exhausted_until(&id).unwrap();
        assert_eq!(
            until,
            Some(clock.now().plus(Duration::from_secs(600))),
            "{flag}: the 5-hour window binds"
        );
        assert!(
            pool.accounts()
                .acquire(&codexpool_core::Demand::any())
                .await
                .is_err()
        );
        assert_eq!(
            pool.usage().get(&id).unwrap().weekly.unwrap().used_percent,
            40.0,
            "the other window is as reported"
        );
        // The window resets: the account is back.
        clock.advance(Duration::from_secs(601));
        assert!(
            pool.accounts()
                .acquire(&codexpool_core::Demand::any())
                .await
                .is_ok()
        );
    }
    // Neither flag: 97 % is not exhaustion (the headroom guard handles it).
    let body = br#"{"rate_limit":{"allowed":true,"limit_reached":false,
        "primary_window":{"used_percent":97,"limit_window_seconds":18000,"reset_after_seconds":600}}}"#;
    pool.usage()
        .record(&id, &parse_usage_json(body, clock.now()).unwrap())
        .unwrap();
    assert_eq!(pool.usage().exhausted_until(&id).unwrap(), None);
}

/// A pool on a database file with `REQUEST_LOG_DAYS` = `days` and `old` rows from 31 days ago,
/// one from 29 days ago and one from now; a token-ledger entry for each.
async fn old_request_log(dir: &std::path::Path, days: &str, old: usize) -> (Pool, ManualClock) {
    let mut config = Config::default();
    config
        .set("DB_PATH", dir.join("pool.db").to_str().unwrap())
        .unwrap();
    config.set("REQUEST_LOG_DAYS", days).unwrap();
    let clock = ManualClock::new(common::START);
    let pool = Pool::builder(config)
        .clock(Arc::new(clock.clone()))
        .open()
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    let now = clock.now();
    let mut at = vec![now.minus(day * 31); old];
    at.extend([now.minus(day * 29), now]);
    for (i, at) in at.into_iter().enumerate() {
        pool.request_log()
            .record(RequestLogEntry::new(format!("r{i}"), at, "/v1/responses"));
        pool.usage().record_tokens(LedgerEntry {
            at,
            key_id: Some("k1".into()),
            account_id: Some("a1".into()),
            model: "m1".into(),
            tokens: TokenCounts {
                input_tokens: 3,
                cached_tokens: 1,
                output_tokens: 2,
                reasoning_tokens: 0,
            },
            status: 200,
        });
    }
    pool.flush().await.unwrap();
    (pool, clock)
}

/// The token ledger's rows in the database and the requests they count, per UTC day.
async fn ledger_days(pool: &Pool, dir: &std::path::Path) -> (i64, Vec<(String, u64)>) {
    let c = rusqlite::Connection::open(dir.join("pool.db")).unwrap();
    let rows = c
        .query_row("SELECT COUNT(*) FROM token_ledger", [], |r| r.get(0))
        .unwrap();
    let mut days: Vec<(String, u64)> = pool
        .usage()
        .ledger(&LedgerQuery::by(LedgerGroup::Day))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.group, r.requests))
        .collect();
    days.sort();
    (rows, days)
}

async fn log_ids(pool: &Pool) -> Vec<String> {
    let rows = pool
        .request_log()
        .list(&RequestLogQuery::latest(100_000))
        .await
        .unwrap();
    rows.into_iter().map(|r| r.request_id).collect()
}

#[tokio::test]
async fn the_pruner_deletes_request_log_rows_older_than_request_log_days() {
    let dir = tempfile::tempdir().unwrap();
    // More old rows than one prune transaction takes.
    let (pool, _clock) = old_request_log(dir.path(), "30", 12_000).await;
    let (rows, days) = ledger_days(&pool, dir.path()).await;
    assert_eq!(rows, 12_002);
    let pruner = codexpool_core::spawn_pruner(&pool);
    assert!(pruner.is_running());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log_ids(&pool).await.len() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pruner did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log_ids(&pool).await, ["r12001", "r12000"]);
    // The ledger's day from 31 days ago is one row now (the pruner folds after it deletes),
    // counting what it counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ledger_days(&pool, dir.path()).await.0 > 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pruner did not fold the ledger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ledger_days(&pool, dir.path()).await, (3, days));

    // New rows get new ids: a follower of the log misses nothing.
    let last = pool
        .request_log()
        .list(&RequestLogQuery::latest(1))
        .await
        .unwrap()[0]
        .id;
    pool.request_log()
        .record(RequestLogEntry::new("next", common::START, "/v1/models"));
    let after = pool
        .request_log()
        .list(&RequestLogQuery::latest(10).after(last))
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].request_id, "next");
}

#[tokio::test]
async fn request_log_days_0_keeps_every_row_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, _clock) = old_request_log(dir.path(), "0", 3).await;
    let pruner = codexpool_core::spawn_pruner(&pool);
    assert!(!pruner.is_running(), "inert when turned off");
    assert_eq!(log_ids(&pool).await.len(), 5);
    // The API prunes on demand all the same.
    let cutoff = common::START.minus(Duration::from_secs(30 * 86_400));
    assert_eq!(pool.request_log().prune(cutoff).await.unwrap(), 3);
    assert_eq!(log_ids(&pool).await, ["r4", "r3"]);
    let (rows, days) = ledger_days(&pool, dir.path()).await;
    assert_eq!(rows, 5, "the ledger is kept whole too");
    assert_eq!(pool.usage().fold_ledger(cutoff).await.unwrap(), 3);
    assert_eq!(ledger_days(&pool, dir.path()).await, (3, days));

    let mut config = Config::default();
    for bad in ["-1", "36501", "a week", ""] {
        let err = config.set("REQUEST_LOG_DAYS", bad).unwrap_err().to_string();
        assert!(err.contains("REQUEST_LOG_DAYS"), "{bad:?}: {err}");
    }
    assert_eq!(config.request_log_days, 30);
}

#[tokio::test]
async fn a_reading_that_is_not_a_share_is_refused_and_later_records_still_land() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::builder(
        Config::default()
            .with("DB_PATH", dir.path().join("p.db").to_str().unwrap())
            .unwrap(),
    )
    .watch_interval(Duration::ZERO)
    .open()
    .await
    .unwrap();
    let id = add_accounts(&pool, 1).await.remove(0);
    let now = pool.now();
    let snap = |used: f64, balance: Option<f64>| UsageSnapshot {
        windows: vec![WindowReading {
            kind: WindowKind::FiveHour,
            used_percent: used,
            window_minutes: 300,
            resets_at: Some(now.plus(Duration::from_secs(600))),
            source: ReadingSource::Poll,
            observed_at: now,
        }],
        credits: balance.map(|b| Credits {
            balance: Some(b),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (used, balance) in [
        (f64::NAN, None),
        (f64::INFINITY, None),
        (-1.0, None),
        (10.0, Some(f64::NAN)),
    ] {
        let err = pool.usage().record(&id, &snap(used, balance)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{used} / {balance:?}: {err:?}"
        );
        assert_eq!(
            pool.usage().get(&id).unwrap().five_hour,
            None,
            "nothing recorded"
        );
    }
    // Over 100 % means used up, as the parsers read it.
    pool.usage().record(&id, &snap(150.0, None)).unwrap();
    assert_eq!(
        pool.usage()
            .get(&id)
            .unwrap()
            .five_hour
            .unwrap()
            .used_percent,
        100.0
    );

    // What is queued after a refused reading is written (a bad batch would be dropped whole).
    pool.request_log()
        .record(RequestLogEntry::new("after", now, "/v1/responses"));
    pool.flush().await.unwrap();
    let rows = pool
        .request_log()
        .list(&RequestLogQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let stored = pool.store().list_windows().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].1.used_percent, 100.0);
}
