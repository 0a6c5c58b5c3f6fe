//! Usage polling against `FakeOpenAi`: the request on the wire, readings recorded with source
//! `poll` and progress per account, 401/403 → one refresh and a retry, a dead sign-in, the HTML
//! challenge, server errors, skipped accounts, and the background poller (backoff, stop, off).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use codexpool_core::auth::AuthError;
use codexpool_core::poll::{PollError, PollerOptions, spawn_poller_with};
use codexpool_core::usage::ReadingSource;
use codexpool_core::{AccountStatus, RefreshProgress, RefreshScope, spawn_poller};
use codexpool_testkit::{FakeAccount, FakeUsage};
use support::{fake, import, memory_pool};

#[tokio::test]
async fn refreshing_all_records_readings_and_reports_progress() {
    let fake = fake();
    fake.add_account(FakeAccount::new("acct-2"));
    fake.add_account(FakeAccount::new("acct-3"));
    fake.set_usage("acct-1", FakeUsage::new(25.0, 80.0).credits(12.5));
    fake.set_usage("acct-2", FakeUsage::weekly_only(40.0));
    let (pool, _) = memory_pool(&fake, &[]).await;
    let one = import(&pool, &fake, "acct-1").await;
    let two = import(&pool, &fake, "acct-2").await;
    let three = import(&pool, &fake, "acct-3").await;
    pool.accounts().disable(&three).await.unwrap();

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let results = pool
        .usage()
        .refresh(RefreshScope::All, move |p| sink.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(results.len(), 2, "the disabled account is skipped");
    assert!(results.iter().all(|r| r.outcome.is_ok()), "{results:?}");
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0], RefreshProgress::Started { total: 2 });
    for (i, e) in events[1..].iter().enumerate() {
        match e {
            RefreshProgress::Account {
                done,
                total,
                result,
            } => {
                assert_eq!((*done, *total), (i + 1, 2));
                assert!(result.outcome.is_ok());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fake.count("/backend-api/wham/usage"), 2);

    let u = pool.usage().get(&one).unwrap();
    let five = u.five_hour.unwrap();
    assert_eq!(five.used_percent, 25.0);
    assert_eq!(five.source, ReadingSource::Poll);
    assert_eq!(u.weekly.unwrap().used_percent, 80.0);
    assert_eq!(u.credits.unwrap().balance, Some(12.5));
    // The free shape: one weekly window in the primary slot.
    let u = pool.usage().get(&two).unwrap();
    assert!(u.five_hour.is_none());
    assert_eq!(u.weekly.unwrap().used_percent, 40.0);
    assert_eq!(
        pool.accounts().get(&two).unwrap().plan_type.as_deref(),
        Some("free")
    );

    // On the wire.
    let req = fake
        .requests_to("/backend-api/wham/usage")
        .into_iter()
        .find(|r| r.account_id.as_deref() == Some("acct-1"))
        .unwrap();
    let token = pool.accounts().get(&one).unwrap().tokens.access_token;
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {}", token.expose()).as_str())
    );
    assert_eq!(req.header("chatgpt-account-id"), Some("acct-1"));
    assert_eq!(req.header("originator"), Some("codex_cli_rs"));
    assert!(
        req.header("user-agent")
            .unwrap()
            .starts_with("codex_cli_rs/")
    );

    // Serializable for front-ends (RPC, Python).
    let v = serde_json::to_value(&results[0]).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["windows"].as_array().unwrap().len(), 2);
    assert_eq!(v["error"], serde_json::Value::Null);

    // The readings reach the store.
    pool.flush().await.unwrap();
    let stored = pool.store().list_windows().await.unwrap();
    assert!(
        stored
            .iter()
            .any(|(id, r)| *id == one && r.source == ReadingSource::Poll)
    );
}

/// A poll answered after a request met the usage limit does not undo it: its figures are of the
/// moment it was asked, older than the limit.
#[tokio::test]
async fn a_poll_in_flight_does_not_undo_a_newer_usage_limit() {
    let fake = fake();
    fake.set_usage("acct-1", FakeUsage::new(40.0, 20.0));
    let (pool, clock) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    fake.usage_delay(Duration::from_millis(800));
    let polling = pool.clone();
    let poll = tokio::spawn(async move { polling.usage().poll_account(&id).await });
    let asked = fake
        .wait_until_async(Duration::from_secs(10), |f| {
            f.count("/backend-api/wham/usage") > 0
        })
        .await;
    assert!(asked, "the poll asked");
    // While the answer travels: a request meets the usage limit, and time goes on.
    clock.advance(Duration::from_secs(10));
    let lease = pool
        .accounts()
        .acquire(&codexpool_core::Demand::any())
        .await
        .unwrap();
    let reset = pool.now().plus(Duration::from_secs(3600));
    lease
        .report(codexpool_core::Outcome::UsageLimit {
            resets_at: Some(reset),
        })
        .await;
    drop(lease);
    clock.advance(Duration::from_secs(10));
    poll.await.unwrap().unwrap();
    let id = pool.accounts().list(&Default::default()).remove(0).id;
    assert_eq!(
        pool.usage().exhausted_until(&id).unwrap(),
        Some(reset),
        "the limit stands"
    );
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries() {
    let fake = fake();
    fake.set_usage("acct-1", FakeUsage::new(10.0, 20.0));
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    fake.expire_access_token("acct-1");
    let snap = pool.usage().poll_account(&id).await.unwrap();
    assert_eq!(snap.windows.len(), 2);
    assert_eq!(fake.refresh_count("acct-1"), 1);
    assert_eq!(fake.count("/backend-api/wham/usage"), 2);
    let reqs = fake.requests_to("/backend-api/wham/usage");
    assert_ne!(
        reqs[0].header("authorization"),
        reqs[1].header("authorization"),
        "retried with the new token"
    );
}

#[tokio::test]
async fn a_dead_sign_in_is_reported_and_then_skipped() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    fake.revoke_sessions("acct-1");
    let results = pool
        .usage()
        .refresh(RefreshScope::Account(id.clone()), |_| {})
        .await
        .unwrap();
    match &results[0].outcome {
        Err(PollError::Auth(AuthError::RefreshDead { code, .. })) => {
            assert_eq!(code, "refresh_token_invalidated")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool.accounts().get(&id).unwrap().status,
        AccountStatus::NeedsLogin
    );
    let before = fake.count("/backend-api/wham/usage");
    let results = pool
        .usage()
        .refresh(RefreshScope::All, |_| {})
        .await
        .unwrap();
    assert!(results.is_empty());
    let results = pool
        .usage()
        .refresh(RefreshScope::Account(id[..4].to_string()), |_| {})
        .await
        .unwrap();
    assert_eq!(
        results[0].outcome,
        Err(PollError::Skipped {
            status: AccountStatus::NeedsLogin
        })
    );
    assert_eq!(fake.count("/backend-api/wham/usage"), before);
}

#[tokio::test]
async fn an_html_answer_is_a_challenge_not_data() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    fake.usage_challenge("acct-1", true);
    let e = pool.usage().poll_account(&id).await.unwrap_err();
    assert_eq!(e, PollError::Challenge);
    assert!(e.to_string().contains("Cloudflare"));
    let u = pool.usage().get(&id).unwrap();
    assert!(u.five_hour.is_none() && u.weekly.is_none());
    assert_eq!(fake.refresh_count("acct-1"), 0);
    // A 403 page from Cloudflare's edge (PROTOCOL.md §3) is a challenge too, not a token the
    // issuer refused: no refresh is spent on it.
    fake.usage_challenge_status("acct-1", Some(403));
    assert_eq!(
        pool.usage().poll_account(&id).await.unwrap_err(),
        PollError::Challenge
    );
    assert_eq!(fake.refresh_count("acct-1"), 0);
    assert_eq!(fake.count("/backend-api/wham/usage"), 2);
}

#[tokio::test]
async fn server_errors_and_an_unknown_scope_are_reported() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    fake.usage_status("acct-1", Some(502));
    let results = pool
        .usage()
        .refresh(RefreshScope::Account(id.clone()), |_| {})
        .await
        .unwrap();
    assert!(matches!(
        results[0].outcome,
        Err(PollError::Status { status: 502, .. })
    ));
    let v = serde_json::to_value(&results[0]).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["error_kind"].clone()),
        (false.into(), "status".into())
    );
    assert!(v["error"].as_str().unwrap().contains("HTTP 502"));
    // A 401 that a refresh does not cure.
    fake.usage_status("acct-1", Some(401));
    assert_eq!(
        pool.usage().poll_account(&id).await,
        Err(PollError::Unauthorized { status: 401 })
    );
    assert_eq!(
        fake.refresh_count("acct-1"),
        1,
        "refreshed once, not in a loop"
    );
    assert!(
        pool.usage()
            .refresh(RefreshScope::Account("ffffffffffff".into()), |_| {})
            .await
            .is_err()
    );
    // An unreachable usage endpoint.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let (down, _) = memory_pool(
        &fake,
        &[("USAGE_BASE_URL", &format!("http://127.0.0.1:{port}"))],
    )
    .await;
    let did = import(&down, &fake, "acct-1").await;
    assert!(matches!(
        down.usage().poll_account(&did).await,
        Err(PollError::Network { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_poller_polls_backs_off_and_stops() {
    let fake = fake();
    fake.add_account(FakeAccount::new("acct-2"));
    let (pool, _) = memory_pool(&fake, &[]).await;
    import(&pool, &fake, "acct-1").await;
    import(&pool, &fake, "acct-2").await;
    fake.usage_status("acct-2", Some(500));
    let count = |acct: &str| {
        fake.requests_to("/backend-api/wham/usage")
            .iter()
            .filter(|r| r.account_id.as_deref() == Some(acct))
            .count()
    };
    let task = spawn_poller_with(
        &pool,
        PollerOptions::from_config(pool.config())
            .enabled(true)
            .interval(Duration::from_millis(100))
            .jitter(0.0),
    );
    assert!(task.is_running());
    tokio::time::sleep(Duration::from_millis(1250)).await;
    let (healthy, failing) = (count("acct-1"), count("acct-2"));
    assert!(healthy >= 6, "healthy account polled {healthy} times");
    assert!(
        failing <= 4 && failing * 2 < healthy,
        "a failing account backs off (2×, 4×, 8× the interval): {failing} vs {healthy}"
    );
    task.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped_at = count("acct-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count("acct-1"), stopped_at, "no polls after stop");
}

#[tokio::test]
async fn disable_polling_turns_the_poller_off() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[("DISABLE_POLLING", "1")]).await;
    import(&pool, &fake, "acct-1").await;
    let task = spawn_poller(&pool);
    assert!(!task.is_running());
    assert_eq!(task.name(), "usage poller");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.count("/backend-api/wham/usage"), 0);

    let (pool, _) = memory_pool(&fake, &[("DISABLE_POLLING", "0")]).await;
    import(&pool, &fake, "acct-1").await;
    let task = spawn_poller(&pool);
    assert!(task.is_running());
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f
            .count("/backend-api/wham/usage")
            == 1)
            .await,
        "the first round runs at once"
    );
    drop(task);
}

#[tokio::test]
async fn a_403_refreshes_once_and_retries() {
    let fake = fake();
    fake.set_usage("acct-1", FakeUsage::new(30.0, 40.0));
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    let before = pool.accounts().get(&id).unwrap().tokens.access_token;
    fake.usage_status_once("acct-1", 403);
    let snap = pool.usage().poll_account(&id).await.unwrap();
    assert_eq!(snap.windows.len(), 2);
    assert_eq!(fake.refresh_count("acct-1"), 1, "exactly one refresh");
    let reqs = fake.requests_to("/backend-api/wham/usage");
    assert_eq!(reqs.len(), 2, "the refused poll and its retry");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {}", before.expose()).as_str())
    );
    let after = pool.accounts().get(&id).unwrap().tokens.access_token;
    assert_ne!(after.expose(), before.expose(), "the refresh was stored");
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {}", after.expose()).as_str()),
        "retried with the new token"
    );
    let u = pool.usage().get(&id).unwrap();
    assert_eq!(u.five_hour.unwrap().used_percent, 30.0);
    assert_eq!(u.weekly.unwrap().used_percent, 40.0);
    // The next poll needs no refresh.
    pool.usage().poll_account(&id).await.unwrap();
    assert_eq!(fake.refresh_count("acct-1"), 1);
}
