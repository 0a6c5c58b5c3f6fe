//! Two pools on one database file, as a server and a CLI in two processes would be (each pool
//! has its own SQLite connection): changes made by one reach the other within a second, with
//! no restart, and concurrent writers never surface `database is locked`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use codexpool_core::import::ImportOutcome;
use codexpool_core::keys::{KeyError, NewKey};
use codexpool_core::{AccountStatus, Config, Demand, Outcome, Pool};

async fn open(path: &std::path::Path) -> Pool {
    Pool::open(
        Config::default()
            .with("DB_PATH", path.to_str().unwrap())
            .unwrap(),
    )
    .await
    .unwrap()
}

/// Two pools on one new database file (keep the directory alive while they are used).
async fn two_pools() -> (tempfile::TempDir, Pool, Pool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let (a, b) = (open(&path).await, open(&path).await);
    (dir, a, b)
}

/// Imports one account through `pool`; its id.
async fn import_one(pool: &Pool) -> String {
    let r = pool
        .accounts()
        .import_bytes("auth.json", &common::auth_json("acct-x", "rt"))
        .await;
    r.results[0].account_id.clone().unwrap()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} not seen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sees_the_cli_changes_without_restart() {
    let (_dir, server, cli) = two_pools().await;

    // An account added elsewhere becomes usable.
    let id = import_one(&cli).await;
    let took = eventually("the new account", || server.accounts().get(&id).is_ok()).await;
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(
        server
            .accounts()
            .acquire(&Demand::any())
            .await
            .unwrap()
            .account_id(),
        id
    );

    // A key created elsewhere verifies; disabled elsewhere, it is refused.
    let key = cli.keys().create(NewKey::named("ci")).await.unwrap();
    let secret = key.secret.expose().to_string();
    eventually("the new key", || server.keys().verify(&secret).is_ok()).await;
    cli.keys().disable(&key.key.id).await.unwrap();
    eventually("the key disabled", || {
        matches!(
            server.keys().verify(&secret),
            Err(KeyError::Disabled { .. })
        )
    })
    .await;

    // An account disabled elsewhere stops being chosen.
    cli.accounts().disable(&id).await.unwrap();
    eventually("the account disabled", || {
        server.accounts().get(&id).unwrap().status == AccountStatus::Disabled
    })
    .await;
    assert!(server.accounts().acquire(&Demand::any()).await.is_err());

    // Usage written by one is read by the other.
    let h: Vec<(&str, &[u8])> = vec![
        ("x-codex-primary-used-percent", b"42"),
        ("x-codex-primary-window-minutes", b"300"),
    ];
    server.usage().record_headers(&id, h);
    server.flush().await.unwrap();
    eventually("the usage reading", || {
        cli.usage()
            .get(&id)
            .unwrap()
            .five_hour
            .is_some_and(|w| w.used_percent == 42.0)
    })
    .await;

    // Removed elsewhere: gone.
    cli.accounts().remove(&id).await.unwrap();
    eventually("the removal", || server.accounts().get(&id).is_err()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_writes_from_two_pools_all_land() {
    let (_dir, a, b) = two_pools().await;
    let mut tasks = Vec::new();
    for (n, pool) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                pool.keys()
                    .create(NewKey::named(format!("k{n}-{i}")))
                    .await
                    .unwrap();
                pool.accounts()
                    .import_bytes("x", &common::auth_json(&format!("acct-{n}-{i}"), "rt"))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    a.reload().await.unwrap();
    assert_eq!(a.keys().list().len(), 50);
    assert_eq!(a.accounts().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_disabling_an_account_wins_over_the_servers_stale_view() {
    let (_dir, server, cli) = two_pools().await;
    let id = import_one(&server).await;
    eventually("the account in the cli", || cli.accounts().get(&id).is_ok()).await;

    // The server holds a lease from before; the person disables the account elsewhere, and the
    // upstream's verdict on that lease arrives before the server has seen the change.
    let lease = server.accounts().acquire(&Demand::any()).await.unwrap();
    cli.accounts().disable(&id).await.unwrap();
    assert_eq!(
        server.accounts().get(&id).unwrap().status,
        AccountStatus::Active,
        "the server must still hold the old view for this test to mean anything"
    );
    lease
        .report(Outcome::Banned {
            reason: "account_deactivated".into(),
        })
        .await;
    drop(lease);

    // Disabled it stays, in the database and in both views.
    for pool in [&server, &cli] {
        pool.reload().await.unwrap();
        let a = pool.accounts().get(&id).unwrap();
        assert_eq!(a.status, AccountStatus::Disabled, "{a:?}");
        assert_eq!(a.status_reason.as_deref(), Some("disabled by a person"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_stored_elsewhere_replace_older_ones_and_queued_ones_stay() {
    use codexpool_core::usage::{Credits, UsageSnapshot};
    let (_dir, server, cli) = two_pools().await;
    let id = import_one(&cli).await;
    server.reload().await.unwrap();
    let credits = |balance: f64| UsageSnapshot {
        credits: Some(Credits {
            balance: Some(balance),
            ..Default::default()
        }),
        ..Default::default()
    };
    let balance = |pool: &Pool| pool.usage().get(&id).unwrap().credits.unwrap().balance;

    // The server knows 3; `codexpool usage --refresh` elsewhere stores 5.
    server.usage().record(&id, &credits(3.0)).unwrap();
    server.flush().await.unwrap();
    cli.usage().record(&id, &credits(5.0)).unwrap();
    cli.flush().await.unwrap();
    server.reload().await.unwrap();
    assert_eq!(balance(&server), Some(5.0), "the newer stored credits win");

    // A reading the server has not written yet is newer than what is stored: it stays.
    server.usage().record(&id, &credits(7.0)).unwrap();
    server.reload().await.unwrap();
    assert_eq!(balance(&server), Some(7.0));
    cli.reload().await.unwrap();
    assert_eq!(balance(&cli), Some(7.0), "and it was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reimport_never_writes_over_tokens_refreshed_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    // A pool that has not yet seen the other process's change (its watcher is off here; a
    // real one is up to half a second behind).
    let stale = Pool::builder(
        Config::default()
            .with("DB_PATH", path.to_str().unwrap())
            .unwrap(),
    )
    .watch_interval(Duration::ZERO)
    .open()
    .await
    .unwrap();
    let other = open(&path).await;
    let file = |refresh, exp| common::auth_json_expiring("acct-r", refresh, exp);

    let r = stale
        .accounts()
        .import_bytes("first", &file("rt-1", 2_000_000_000))
        .await;
    let id = r.results[0].account_id.clone().unwrap();
    // The other process stores newer tokens (a refresh, or a newer file).
    let r = other
        .accounts()
        .import_bytes("newest", &file("rt-3", 2_000_172_800))
        .await;
    assert_eq!(r.updated(), 1, "{r:?}");

    // A file newer than what the stale pool holds, older than what is stored.
    let r = stale
        .accounts()
        .import_bytes("middle", &file("rt-2", 2_000_086_400))
        .await;
    assert_eq!((r.updated(), r.unchanged()), (0, 1), "{r:?}");
    assert!(
        matches!(&r.results[0].outcome, ImportOutcome::Unchanged(why) if why.contains("newer")),
        "{r:?}"
    );
    let stored = |p: &Pool| p.accounts().get(&id).unwrap().tokens.refresh_token;
    assert_eq!(
        stored(&stale).expose(),
        "rt-3",
        "memory has what the store kept"
    );
    assert_eq!(stored(&open(&path).await).expose(), "rt-3");
}
