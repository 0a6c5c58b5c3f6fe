//! An admin change whose caller stops waiting once the change is on its way to the database (an
//! `/rpc` client that disconnects drops the future) still reaches memory: the store and the
//! running pool agree afterwards. The change watcher does not see a process's own commits, so
//! nothing else would repair a difference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use codexpool_core::keys::NewKey;
use codexpool_core::store::{SqliteStore, Store};
use codexpool_core::{AccountStatus, Config, Outcome, Pool, pool::Demand};
use common::add_accounts;

async fn sqlite_pool(dir: &tempfile::TempDir) -> (Pool, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open(dir.path().join("p.db")).await.unwrap());
    let pool = Pool::builder(Config::default())
        .store(store.clone())
        .watch_interval(Duration::ZERO)
        .open()
        .await
        .unwrap();
    (pool, store)
}

/// Polls `call` once (far enough to queue its write on the database thread), then drops it.
async fn cut_short<F: Future>(call: F) {
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the call should still be waiting when dropped"
    );
}

/// Waits (at most 2 s) for `stored` to report the change, then for `memory` to agree with it.
async fn agree<T, S, M>(what: &str, want: T, stored: S, memory: M)
where
    T: PartialEq + Debug,
    S: AsyncFn() -> T,
    M: Fn() -> T,
{
    let mut stored_seen = false;
    for _ in 0..200 {
        stored_seen |= stored().await == want;
        if stored_seen && memory() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored_seen, "{what}: the change never reached the store");
    panic!(
        "{what}: the store has {want:?}, memory still {:?}",
        memory()
    );
}

#[tokio::test]
async fn key_changes_reach_memory_when_the_caller_stops_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, store) = sqlite_pool(&dir).await;
    let keys = pool.keys();
    let k = keys.create(NewKey::named("a")).await.unwrap();
    let secret = k.secret.expose().to_string();
    let id = k.key.id.clone();

    cut_short(keys.disable(&id)).await;
    let stored_key = async || {
        let all = store.list_keys().await.unwrap();
        all.into_iter().find(|k| k.id == id)
    };
    let enabled = async || stored_key().await.map(|k| k.enabled);
    agree("disable", Some(false), enabled, || {
        keys.get(&id).ok().map(|k| k.enabled)
    })
    .await;
    assert!(keys.verify(&secret).is_err(), "a disabled key is refused");

    cut_short(keys.delete(&id)).await;
    let exists = async || stored_key().await.is_some();
    agree("delete", false, exists, || keys.get(&id).is_ok()).await;

    let before = keys.list().len();
    cut_short(keys.create(NewKey::named("b"))).await;
    let stored = async || store.list_keys().await.unwrap().len();
    agree("create", before + 1, stored, || keys.list().len()).await;
}

#[tokio::test]
async fn account_changes_reach_memory_when_the_caller_stops_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, store) = sqlite_pool(&dir).await;
    let accounts = pool.accounts();
    let ids = add_accounts(&pool, 2).await;
    let status = async |id: &str| store.get_account(id).await.unwrap().map(|a| a.status);
    let in_memory = |id: &str| accounts.get(id).ok().map(|a| a.status);

    cut_short(accounts.disable(&ids[0])).await;
    agree(
        "disable",
        Some(AccountStatus::Disabled),
        async || status(&ids[0]).await,
        || in_memory(&ids[0]),
    )
    .await;

    // The pool's own verdict, reported by a request whose client went away meanwhile.
    let lease = accounts.acquire(&Demand::any()).await.unwrap();
    assert_eq!(lease.account_id(), ids[1]);
    cut_short(lease.report(Outcome::Banned {
        reason: "deactivated".into(),
    }))
    .await;
    agree(
        "banned",
        Some(AccountStatus::Banned),
        async || status(&ids[1]).await,
        || in_memory(&ids[1]),
    )
    .await;
    drop(lease);

    cut_short(accounts.remove(&ids[0])).await;
    agree(
        "remove",
        None,
        async || status(&ids[0]).await,
        || in_memory(&ids[0]),
    )
    .await;
}
