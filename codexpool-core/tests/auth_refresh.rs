//! Token refresh against `FakeOpenAi` (which rotates refresh tokens and detects reuse): the
//! request on the wire, rotation persisted in one step, single flight across tasks, across two
//! pools on one database file and across a second OS process, error classification (dead sign-in
//! → `needs_login`, transient → unchanged), the reuse race, and the background refresher.
//!
//! `child_refresh_process` is not a test: it is the entry point of the second process, which
//! re-runs this test binary filtered to that function with `CODEXPOOL_TEST_CHILD_DB` set. Without
//! that variable it returns at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use codexpool_core::auth::{AuthError, RefresherOptions, spawn_refresher_with};
use codexpool_core::import::ImportOutcome;
use codexpool_core::store::{SqliteStore, Store};
use codexpool_core::{AccountPatch, AccountStatus, Config, ManualClock, Pool, Secret};
use codexpool_testkit::{FakeAccount, FakeOpenAi, FakeRefreshFailure};
use support::{fake, file_pool, import, memory_pool, refresh_held};

#[tokio::test]
async fn a_refresh_rotates_and_persists_every_token() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(&fake, &dir.path().join("pool.db")).await;
    let id = import(&pool, &fake, "acct-1").await;
    let before = pool.accounts().get(&id).unwrap().tokens;

    let after = pool.auth().refresh(&id).await.unwrap().tokens;
    let current = fake.current_tokens("acct-1");
    assert_ne!(after.access_token, before.access_token);
    assert_ne!(after.refresh_token, before.refresh_token);
    assert_eq!(after.access_token.expose(), current.access_token);
    assert_eq!(after.refresh_token.expose(), current.refresh_token);
    assert_eq!(after.id_token.expose(), current.id_token);
    assert!(after.expires_at.is_some());
    assert!(after.last_refresh.unwrap() >= before.last_refresh.unwrap());
    let stored = pool.store().get_account(&id).await.unwrap().unwrap();
    assert_eq!(stored.tokens, after, "memory and store agree");

    let req = fake.last_request("/oauth/token").unwrap();
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.body_json().unwrap(),
        serde_json::json!({
            "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
            "grant_type": "refresh_token",
            "refresh_token": before.refresh_token.expose(),
            "scope": "openid profile email",
        })
    );
    assert!(
        req.header("user-agent")
            .unwrap()
            .starts_with("codex_cli_rs/")
    );

    // The rotated token works (the old one would be a reuse), and each call is a refresh of
    // its own, also while the one before is still giving its lease back.
    for n in 2..=20 {
        let again = pool.auth().refresh(&id).await.unwrap().tokens;
        assert_eq!(fake.refresh_count("acct-1"), n);
        assert_eq!(
            again.access_token.expose(),
            fake.current_tokens("acct-1").access_token
        );
    }
}

/// A refresh answer without a `refresh_token` (PROTOCOL.md §1: the issuer need not rotate it)
/// keeps the one that was sent, stored, and it refreshes again.
#[tokio::test]
async fn a_refresh_that_does_not_rotate_keeps_the_refresh_token() {
    let fake = fake();
    fake.set_refresh_rotates(false);
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(&fake, &dir.path().join("pool.db")).await;
    let id = import(&pool, &fake, "acct-1").await;
    let before = pool.accounts().get(&id).unwrap().tokens;
    for n in 1..=2 {
        let after = pool.auth().refresh(&id).await.unwrap().tokens;
        assert_eq!(fake.refresh_count("acct-1"), n);
        assert_ne!(after.access_token, before.access_token);
        assert_eq!(after.refresh_token, before.refresh_token);
        let stored = pool.store().get_account(&id).await.unwrap().unwrap();
        assert_eq!(stored.tokens, after);
        assert_eq!(stored.status, AccountStatus::Active);
    }
    let sent = fake
        .last_request("/oauth/token")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(sent["refresh_token"], before.refresh_token.expose());
}

/// A refresh answer without an `id_token` (PROTOCOL.md §1: optional) keeps the stored one and
/// takes the new access and refresh tokens.
#[tokio::test]
async fn a_refresh_without_an_id_token_keeps_the_stored_one() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(&fake, &dir.path().join("pool.db")).await;
    let id = import(&pool, &fake, "acct-1").await;
    let before = pool.accounts().get(&id).unwrap().tokens;
    fake.set_refresh_returns_id_token(false);
    let after = pool.auth().refresh(&id).await.unwrap().tokens;
    assert_eq!(after.id_token.expose(), before.id_token.expose());
    assert!(!after.id_token.expose().is_empty());
    let current = fake.current_tokens("acct-1");
    assert_eq!(after.access_token.expose(), current.access_token);
    assert_eq!(after.refresh_token.expose(), current.refresh_token);
    let stored = pool.store().get_account(&id).await.unwrap().unwrap();
    assert_eq!(stored.tokens, after, "memory and store agree");
    assert_eq!(
        pool.accounts().get(&id).unwrap().status,
        AccountStatus::Active
    );
}

/// A pool (memory, manual clock) with account `acct-1` whose token a 401 has just had
/// refreshed: the pool, its clock, the account id, the token refused and the new one.
async fn refreshed_for_a_401(fake: &FakeOpenAi) -> (Pool, ManualClock, String, Secret, Secret) {
    let (pool, clock) = memory_pool(fake, &[]).await;
    let id = import(&pool, fake, "acct-1").await;
    let old = pool.accounts().get(&id).unwrap().tokens.access_token;
    let new = pool
        .auth()
        .refresh_after_unauthorized(&id, &old)
        .await
        .unwrap();
    assert_ne!(new, old);
    assert_eq!(fake.refresh_count("acct-1"), 1);
    (pool, clock, id, old, new)
}

#[tokio::test]
async fn a_401_with_a_stale_token_uses_the_new_one_without_refreshing() {
    let fake = fake();
    let (pool, _, id, old, new) = refreshed_for_a_401(&fake).await;
    // Another request that was sent with the old token comes back 401 later.
    let again = pool
        .auth()
        .refresh_after_unauthorized(&id, &old)
        .await
        .unwrap();
    assert_eq!(again, new);
    assert_eq!(fake.refresh_count("acct-1"), 1);
}

/// An account whose freshly refreshed token is refused too (the backend refuses the account,
/// not the token) is not refreshed again at every request: each refresh would rotate its
/// single-use refresh token for nothing.
#[tokio::test]
async fn a_401_right_after_a_401_refresh_does_not_refresh_again() {
    let fake = fake();
    let (pool, clock, id, _, new) = refreshed_for_a_401(&fake).await;
    // The new token is refused as well.
    let e = pool
        .auth()
        .refresh_after_unauthorized(&id, &new)
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::Transient { .. }), "{e:?}");
    clock.advance(Duration::from_secs(4 * 60));
    assert!(
        pool.auth()
            .refresh_after_unauthorized(&id, &new)
            .await
            .is_err()
    );
    assert_eq!(fake.refresh_count("acct-1"), 1, "not rotated for nothing");
    // Later, a 401 refreshes again (the token may have been revoked since).
    clock.advance(Duration::from_secs(60));
    let current = pool.accounts().get(&id).unwrap().tokens.access_token;
    assert_eq!(current, new);
    let newer = pool
        .auth()
        .refresh_after_unauthorized(&id, &new)
        .await
        .unwrap();
    assert_ne!(newer, new);
    assert_eq!(fake.refresh_count("acct-1"), 2);
    // Tokens that came another way (a scheduled refresh, a sign-in) are not held to the gap.
    let scheduled = pool.auth().refresh(&id).await.unwrap().tokens.access_token;
    assert_eq!(fake.refresh_count("acct-1"), 3);
    pool.auth()
        .refresh_after_unauthorized(&id, &scheduled)
        .await
        .unwrap();
    assert_eq!(fake.refresh_count("acct-1"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_in_one_process_refresh_once() {
    let fake = fake();
    fake.refresh_delay(Duration::from_millis(200));
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    let seen = pool.accounts().get(&id).unwrap().tokens.access_token;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (pool, id, seen) = (pool.clone(), id.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                pool.auth()
                    .refresh_after_unauthorized(&id, &seen)
                    .await
                    .unwrap()
            } else {
                pool.auth().refresh(&id).await.unwrap().tokens.access_token
            }
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    assert_eq!(fake.refresh_count("acct-1"), 1);
    let current = fake.current_tokens("acct-1").access_token;
    assert!(tokens.iter().all(|t| t.expose() == current));
}

/// Runs `body` in a child test process (when `db_var` names its database; otherwise this is the
/// parent's test run and nothing happens) with a pool on that database and the account id.
fn in_child<F, Fut>(db_var: &str, body: F)
where
    F: FnOnce(Pool, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Ok(db) = std::env::var(db_var) else {
        return;
    };
    let issuer = std::env::var("CODEXPOOL_TEST_CHILD_ISSUER").unwrap();
    let account = std::env::var("CODEXPOOL_TEST_CHILD_ACCOUNT").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = Config::default()
            .with("DB_PATH", &db)
            .unwrap()
            .with("ISSUER", &issuer)
            .unwrap();
        let pool = Pool::builder(config)
            .watch_interval(Duration::ZERO)
            .open()
            .await
            .unwrap();
        body(pool, account).await;
    });
}

/// Child-process entry of `two_pools_and_a_second_process_refresh_once` (not a test; see the
/// module docs). Opens the database, says `@@child ready`, waits for a line on stdin, refreshes,
/// prints `@@child token <access token>` or `@@child error <message>`.
#[test]
fn child_refresh_process() {
    in_child("CODEXPOOL_TEST_CHILD_DB", |pool, account| async move {
        assert!(pool.accounts().get(&account).is_ok());
        println!("@@child ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        match pool.auth().refresh(&account).await {
            Ok(a) => println!("@@child token {}", a.tokens.access_token.expose()),
            Err(e) => println!("@@child error {e}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_and_a_second_process_refresh_once() {
    let fake = fake();
    fake.refresh_delay(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let b = file_pool(&fake, &path).await;
    let id = import(&a, &fake, "acct-1").await;
    b.reload().await.unwrap();
    let seen = b.accounts().get(&id).unwrap().tokens.access_token;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_refresh_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CODEXPOOL_TEST_CHILD_DB", &path)
        .env("CODEXPOOL_TEST_CHILD_ISSUER", fake.issuer())
        .env("CODEXPOOL_TEST_CHILD_ACCOUNT", &id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The child's own lines (libtest may print around them).
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let line = lines_rx
                    .recv()
                    .await
                    .expect("the child process ended early");
                if let Some((_, said)) = line.split_once("@@child ") {
                    return said.to_string();
                }
            }
        })
        .await
        .expect("the child process did not answer")
    };
    assert_eq!(next_line().await, "ready");

    // Go: the child, pool A (explicitly) and pool B (after a 401) refresh at the same moment.
    writeln!(stdin, "go").unwrap();
    let (auth_a, auth_b) = (a.auth(), b.auth());
    let (ra, rb) = tokio::join!(
        auth_a.refresh(&id),
        auth_b.refresh_after_unauthorized(&id, &seen)
    );
    let child_line = next_line().await;
    assert!(child.wait().unwrap().success());

    let current = fake.current_tokens("acct-1");
    assert_eq!(
        fake.refresh_count("acct-1"),
        1,
        "exactly one refresh request"
    );
    assert_eq!(
        ra.unwrap().tokens.access_token.expose(),
        current.access_token
    );
    assert_eq!(rb.unwrap().expose(), current.access_token);
    assert_eq!(child_line, format!("token {}", current.access_token));
    for pool in [&a, &b] {
        let t = pool.accounts().get(&id).unwrap().tokens;
        assert_eq!(t.access_token.expose(), current.access_token);
        assert_eq!(t.refresh_token.expose(), current.refresh_token);
    }
    let stored = a.store().get_account(&id).await.unwrap().unwrap();
    assert_eq!(stored.tokens.refresh_token.expose(), current.refresh_token);
    assert_eq!(stored.status, AccountStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_stale_memory_adopts_tokens_refreshed_elsewhere() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let b = file_pool(&fake, &path).await;
    let id = import(&a, &fake, "acct-1").await;
    b.reload().await.unwrap();
    a.auth().refresh(&id).await.unwrap();
    // B has not reloaded: its memory holds the spent refresh token. Refreshing must not spend it.
    let t = b.auth().refresh(&id).await.unwrap().tokens;
    assert_eq!(fake.refresh_count("acct-1"), 1);
    assert_eq!(
        t.access_token.expose(),
        fake.current_tokens("acct-1").access_token
    );
}

#[tokio::test]
async fn dead_refresh_tokens_mean_a_new_sign_in() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let cases = [
        (FakeRefreshFailure::Expired, "refresh_token_expired"),
        (FakeRefreshFailure::Reused, "refresh_token_reused"),
        (FakeRefreshFailure::Invalidated, "refresh_token_invalidated"),
        (FakeRefreshFailure::InvalidGrant, "invalid_grant"),
        (
            FakeRefreshFailure::SessionTerminated,
            "app_session_terminated",
        ),
        // The same codes in the OAuth shape, `{"error": <code>}`.
        (
            FakeRefreshFailure::OAuth {
                status: 401,
                error: "refresh_token_reused".into(),
            },
            "refresh_token_reused",
        ),
        (
            FakeRefreshFailure::OAuth {
                status: 400,
                error: "refresh_token_expired".into(),
            },
            "refresh_token_expired",
        ),
    ];
    for (i, (failure, code)) in cases.into_iter().enumerate() {
        let name = format!("acct-dead-{i}");
        fake.add_account(FakeAccount::new(&name));
        let id = import(&pool, &fake, &name).await;
        let before = pool.accounts().get(&id).unwrap().tokens;
        fake.fail_next_refresh(&name, failure);
        let e = pool.auth().refresh(&id).await.unwrap_err();
        assert_eq!(
            e,
            AuthError::RefreshDead {
                account_id: id.clone(),
                code: code.into()
            }
        );
        assert!(e.to_string().contains("sign in again"), "{e}");
        let a = pool.accounts().get(&id).unwrap();
        assert_eq!(a.status, AccountStatus::NeedsLogin, "{code}");
        assert!(a.status_reason.unwrap().contains(code));
        assert_eq!(a.tokens, before, "tokens unchanged");
        let stored = pool.store().get_account(&id).await.unwrap().unwrap();
        assert_eq!(stored.status, AccountStatus::NeedsLogin);
    }

    // A refresh that works again (the scripted failure did not consume the token) revives it.
    let id = pool.accounts().list(&Default::default())[0].id.clone();
    pool.auth().refresh(&id).await.unwrap();
    let a = pool.accounts().get(&id).unwrap();
    assert_eq!(a.status, AccountStatus::Active);
    assert_eq!(a.status_reason, None);
}

#[tokio::test]
async fn a_disabled_account_stays_disabled_when_its_sign_in_dies() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    pool.accounts().disable(&id).await.unwrap();
    fake.fail_next_refresh("acct-1", FakeRefreshFailure::Expired);
    let e = pool.auth().refresh(&id).await.unwrap_err();
    assert!(matches!(e, AuthError::RefreshDead { .. }));
    let a = pool.accounts().get(&id).unwrap();
    assert_eq!(a.status, AccountStatus::Disabled);
    assert_eq!(a.status_reason.as_deref(), Some("disabled by a person"));

    // Also when the person disables it while the refresh that finds the sign-in dead is on
    // the wire (the refresh read the account as active before it went out).
    fake.add_account(FakeAccount::new("acct-2"));
    let id = import(&pool, &fake, "acct-2").await;
    fake.fail_next_refresh("acct-2", FakeRefreshFailure::Expired);
    fake.refresh_delay(Duration::from_millis(500));
    let held = fake.refreshes_held();
    let refreshing = tokio::spawn({
        let pool = pool.clone();
        let id = id.clone();
        async move { pool.auth().refresh(&id).await }
    });
    // The fake holds the request on the wire for the delay.
    refresh_held(&fake, held, 5).await;
    pool.accounts().disable(&id).await.unwrap();
    let e = refreshing.await.unwrap().unwrap_err();
    assert!(matches!(e, AuthError::RefreshDead { .. }), "{e}");
    for a in [
        pool.accounts().get(&id).unwrap(),
        pool.store().get_account(&id).await.unwrap().unwrap(),
    ] {
        assert_eq!(a.status, AccountStatus::Disabled, "{a:?}");
        assert_eq!(a.status_reason.as_deref(), Some("disabled by a person"));
    }
}

/// Tokens written while the refresh that finds the sign-in dead is on the wire (a new sign-in,
/// an import, another process's refresh) are a live sign-in: the verdict was on the old one.
#[tokio::test]
async fn a_sign_in_renewed_while_the_dead_one_is_refreshed_stays_active() {
    use codexpool_core::AccountPatch;
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    let old = pool.accounts().get(&id).unwrap().tokens;
    fake.fail_next_refresh("acct-1", FakeRefreshFailure::Invalidated);
    fake.refresh_delay(Duration::from_millis(500));
    let refreshing = refresh_on_the_wire(&fake, &pool, &id).await;
    let mut renewed = old.clone();
    renewed.refresh_token = codexpool_core::Secret::from("rt-signed-in-again");
    renewed.expires_at = old.expires_at.map(|t| t.plus(Duration::from_secs(3600)));
    pool.store()
        .patch_account(
            &id,
            &AccountPatch::default().tokens(renewed.clone()),
            pool.now(),
        )
        .await
        .unwrap();
    let e = refreshing.await.unwrap().unwrap_err();
    assert!(matches!(e, AuthError::RefreshDead { .. }), "{e}");
    let stored = pool.store().get_account(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, AccountStatus::Active, "{stored:?}");
    assert_eq!(stored.tokens.refresh_token, renewed.refresh_token);
    assert_eq!(
        pool.accounts().get(&id).unwrap().status,
        AccountStatus::Active
    );
}

#[tokio::test]
async fn transient_failures_leave_the_account_alone() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    let before = pool.accounts().get(&id).unwrap().tokens;
    for failure in [
        FakeRefreshFailure::ServerError(503),
        FakeRefreshFailure::ServerError(500),
        FakeRefreshFailure::Custom {
            status: 400,
            code: "slow_down".into(),
        },
        FakeRefreshFailure::Custom {
            status: 429,
            code: "refresh_token_expired".into(),
        },
    ] {
        fake.fail_next_refresh("acct-1", failure.clone());
        let e = pool.auth().refresh(&id).await.unwrap_err();
        assert!(e.is_transient(), "{failure:?}: {e:?}");
        let a = pool.accounts().get(&id).unwrap();
        assert_eq!(a.status, AccountStatus::Active);
        assert_eq!(a.tokens, before);
    }
    // The issuer unreachable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let (down, _) = memory_pool(&fake, &[("ISSUER", &format!("http://127.0.0.1:{port}"))]).await;
    let did = import(&down, &fake, "acct-1").await;
    let e = down.auth().refresh(&did).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(
        down.accounts().get(&did).unwrap().status,
        AccountStatus::Active
    );
    // And then it works.
    pool.auth().refresh(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_error_after_another_holder_rotated_adopts_their_tokens() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let b = file_pool(&fake, &path).await;
    let id = import(&a, &fake, "acct-1").await;
    fake.refresh_delay(Duration::from_millis(300));
    fake.fail_next_refresh("acct-1", FakeRefreshFailure::Reused);
    let refreshing = {
        let a = a.clone();
        let id = id.clone();
        tokio::spawn(async move { a.auth().refresh(&id).await })
    };
    // While A's refresh is on the wire, another holder (ignoring the lease, like a Codex CLI
    // sharing the sign-in) stores the tokens it rotated.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut doc = fake.auth_json("acct-1");
    doc["tokens"]["access_token"] = "at_theirs".into();
    doc["tokens"]["refresh_token"] = "rt_theirs".into();
    b.accounts()
        .import_bytes("other holder", &serde_json::to_vec(&doc).unwrap())
        .await;
    let account = refreshing.await.unwrap().unwrap();
    assert_eq!(account.tokens.access_token.expose(), "at_theirs");
    assert_eq!(account.tokens.refresh_token.expose(), "rt_theirs");
    assert_eq!(account.status, AccountStatus::Active);
}

#[tokio::test]
async fn refresh_due_refreshes_what_is_due_and_backs_off_from_failures() {
    let fake = fake();
    let (pool, clock) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    let exp = pool.accounts().get(&id).unwrap().tokens.expires_at.unwrap();

    assert!(pool.auth().refresh_due().await.is_empty(), "not due yet");
    assert_eq!(fake.refresh_count("acct-1"), 0);

    // Within the hour before expiry: refreshed.
    clock.set(exp.minus(Duration::from_secs(30 * 60)));
    let done = pool.auth().refresh_due().await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result, Ok(()));
    assert_eq!(fake.refresh_count("acct-1"), 1);
    assert!(pool.auth().refresh_due().await.is_empty(), "fresh again");

    // A transient failure: not retried until the backoff has passed.
    let exp = pool.accounts().get(&id).unwrap().tokens.expires_at.unwrap();
    clock.set(exp.minus(Duration::from_secs(60)));
    fake.fail_next_refresh("acct-1", FakeRefreshFailure::ServerError(502));
    let done = pool.auth().refresh_due().await;
    assert!(done[0].result.as_ref().unwrap_err().is_transient());
    assert!(pool.auth().refresh_due().await.is_empty(), "backing off");
    clock.advance(Duration::from_secs(61));
    assert_eq!(pool.auth().refresh_due().await[0].result, Ok(()));
    assert_eq!(fake.refresh_count("acct-1"), 3);

    // Accounts that are not active are left alone.
    pool.accounts()
        .update(
            &id,
            AccountPatch::default().status(AccountStatus::NeedsLogin, None),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(30 * 24 * 3600));
    assert!(pool.auth().refresh_due().await.is_empty());
}

#[tokio::test]
async fn the_background_refresher_refreshes_and_stops_when_dropped() {
    let fake = fake();
    let (pool, clock) = memory_pool(&fake, &[]).await;
    let id = import(&pool, &fake, "acct-1").await;
    let exp = pool.accounts().get(&id).unwrap().tokens.expires_at.unwrap();
    clock.set(exp.minus(Duration::from_secs(10)));
    let task = spawn_refresher_with(
        &pool,
        RefresherOptions::default().check_interval(Duration::from_millis(20)),
    );
    assert!(task.is_running());
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.refresh_count("acct-1") == 1)
            .await
    );
    // The fake counts the request on arrival; the new tokens land a moment later.
    let started = std::time::Instant::now();
    while pool
        .accounts()
        .get(&id)
        .unwrap()
        .tokens
        .access_token
        .expose()
        != fake.current_tokens("acct-1").access_token
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "tokens not stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.stop();
    // Due again, but nobody is refreshing any more.
    clock.advance(Duration::from_secs(30 * 24 * 3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.refresh_count("acct-1"), 1);
}

#[tokio::test]
async fn take_over_goes_on_past_dead_sign_ins_and_reports_each() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    for n in ["acct-a", "acct-b", "acct-c", "acct-d"] {
        fake.add_account(FakeAccount::new(n));
        std::fs::write(
            dir.path().join(format!("{n}.json")),
            fake.auth_json(n).to_string(),
        )
        .unwrap();
    }
    fake.revoke_sessions("acct-b");
    fake.revoke_sessions("acct-c");
    let (pool, _) = memory_pool(&fake, &[]).await;
    let mut report = pool.accounts().import_path(dir.path()).await.unwrap();
    assert_eq!(report.imported(), 4);

    let e = pool.accounts().take_over(&mut report).await.unwrap_err();
    let codexpool_core::Error::TakeOver { input, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(input.ends_with("acct-b.json"), "the first failure: {input}");
    let taken: Vec<bool> = report.results.iter().map(|r| r.taken_over).collect();
    assert_eq!(taken, [true, false, false, true], "{report:?}");
    let failed: Vec<bool> = report
        .results
        .iter()
        .map(|r| r.take_over_error.is_some())
        .collect();
    assert_eq!(failed, [false, true, true, false], "{report:?}");
    assert!(
        report.results[2]
            .take_over_error
            .as_deref()
            .unwrap()
            .contains("sign in again"),
        "{report:?}"
    );
    assert_eq!(fake.refresh_count("acct-a"), 1);
    assert_eq!(fake.refresh_count("acct-d"), 1, "tried after the failures");
    assert_eq!(pool.accounts().list(&Default::default()).len(), 4);
}

#[tokio::test]
async fn take_over_refreshes_each_codex_cli_sign_in_an_import_wrote() {
    let fake = fake();
    fake.add_account(FakeAccount::new("acct-2"));
    fake.add_account(FakeAccount::new("acct-3"));
    let (pool, _) = memory_pool(&fake, &[]).await;
    let cli_copy = fake.current_tokens("acct-1").refresh_token;
    let auth_json = serde_json::to_vec(&fake.auth_json("acct-1")).unwrap();
    let mut report = pool.accounts().import_bytes("auth.json", &auth_json).await;
    assert!(report.results[0].codex_cli);
    assert!(
        report.results[0]
            .warning
            .as_deref()
            .unwrap()
            .contains("take-over")
    );
    // Not a Codex CLI sign-in (an export-shaped document): nothing to take over.
    let mut plain = fake.auth_json("acct-2");
    plain.as_object_mut().unwrap().remove("OPENAI_API_KEY");
    plain.as_object_mut().unwrap().remove("last_refresh");
    let mut other = pool
        .accounts()
        .import_bytes("plain.json", &serde_json::to_vec(&plain).unwrap())
        .await;
    assert!(!other.results[0].codex_cli, "{other:?}");
    report.results.append(&mut other.results);

    assert_eq!(pool.accounts().take_over(&mut report).await.unwrap(), 1);
    assert_eq!(fake.refresh_count("acct-1"), 1);
    assert_eq!(fake.refresh_count("acct-2"), 0);
    // The Codex CLI's copy is spent; codexpool's is the live one.
    let live = fake.current_tokens("acct-1").refresh_token;
    assert_ne!(live, cli_copy);
    let id = report.results[0].account_id.clone().unwrap();
    let stored = pool.accounts().get(&id).unwrap().tokens;
    assert_eq!(stored.refresh_token.expose(), live);
    let warning = report.results[0].warning.as_deref().unwrap();
    assert!(warning.starts_with("took over auth.json"), "{warning}");
    assert!(warning.contains("codex login"), "{warning}");
    assert_eq!(report.results[1].warning, None);
    let taken: Vec<bool> = report.results.iter().map(|r| r.taken_over).collect();
    assert_eq!(taken, [true, false]);

    // A refresh that fails names the source and leaves the account imported.
    fake.fail_next_refresh("acct-3", FakeRefreshFailure::Expired);
    let auth_json = serde_json::to_vec(&fake.auth_json("acct-3")).unwrap();
    let mut report = pool
        .accounts()
        .import_bytes("other/auth.json", &auth_json)
        .await;
    let e = pool.accounts().take_over(&mut report).await.unwrap_err();
    let codexpool_core::Error::TakeOver {
        input,
        account_id,
        cause,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(input, "other/auth.json");
    assert_eq!(Some(account_id), report.results[0].account_id.as_ref());
    assert!(matches!(cause, AuthError::RefreshDead { .. }), "{cause:?}");
    assert!(!report.results[0].taken_over);
    assert!(report.results[0].take_over_error.is_some());
    // Not the advice to import with take-over, which is what failed, nor to try again: the
    // issuer declared it dead.
    let warning = report.results[0].warning.as_deref().unwrap();
    assert!(
        warning.contains("no longer valid")
            && warning.contains("codexpool account login")
            && !warning.contains("--take-over"),
        "{warning}"
    );
    assert!(
        e.to_string()
            .starts_with("could not take over other/auth.json: "),
        "{e}"
    );
    assert!(pool.accounts().get(account_id).is_ok());

    // A refresh that failed for a while (the issuer's 503): the file still shares its sign-in,
    // and a later take-over may work.
    fake.add_account(FakeAccount::new("acct-4"));
    fake.fail_next_refresh("acct-4", FakeRefreshFailure::ServerError(503));
    let auth_json = serde_json::to_vec(&fake.auth_json("acct-4")).unwrap();
    let mut report = pool
        .accounts()
        .import_bytes("fourth.json", &auth_json)
        .await;
    pool.accounts().take_over(&mut report).await.unwrap_err();
    let warning = report.results[0].warning.as_deref().unwrap();
    assert!(
        warning.contains("still shares") && warning.contains("again later"),
        "{warning}"
    );
}

#[tokio::test]
async fn reimporting_the_file_after_a_refresh_keeps_the_newer_sign_in() {
    let fake = fake();
    let (pool, clock) = memory_pool(&fake, &[]).await;
    // `~/.codex/auth.json` as it was when first imported.
    let file = serde_json::to_vec(&fake.auth_json("acct-1")).unwrap();
    let id = pool
        .accounts()
        .import_bytes("auth.json", &file)
        .await
        .results[0]
        .account_id
        .clone()
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    let refreshed = pool.auth().refresh(&id).await.unwrap().tokens;

    // A startup script imports the same file again: its refresh token is spent by now.
    let r = pool.accounts().import_bytes("auth.json", &file).await;
    assert_eq!((r.updated(), r.unchanged()), (0, 1), "{r:?}");
    let ImportOutcome::Unchanged(why) = &r.results[0].outcome else {
        unreachable!()
    };
    assert!(why.contains("newer"), "{why}");
    assert_eq!(pool.accounts().get(&id).unwrap().tokens, refreshed);
    pool.auth()
        .refresh(&id)
        .await
        .expect("the sign-in still works");
}

#[tokio::test]
async fn rotated_tokens_wait_out_a_store_that_fails_for_a_few_seconds() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let pool = file_pool(&fake, &path).await;
    let id = import(&pool, &fake, "acct-1").await;
    // The store refuses account updates for a while (as a briefly full disk would).
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER full BEFORE UPDATE ON accounts BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    let refreshing = tokio::spawn({
        let pool = pool.clone();
        let id = id.clone();
        async move { pool.auth().refresh(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!refreshing.is_finished(), "still offering the tokens");
    other.execute_batch("DROP TRIGGER full;").unwrap();
    let after = refreshing.await.unwrap().unwrap().tokens;
    let live = fake.current_tokens("acct-1");
    assert_eq!(after.refresh_token.expose(), live.refresh_token);
    let stored = SqliteStore::open(&path)
        .await
        .unwrap()
        .get_account(&id)
        .await
        .unwrap()
        .unwrap()
        .tokens;
    assert_eq!(stored, after, "the rotated tokens reached the store");
    pool.auth().refresh(&id).await.expect("and they work");
}

/// A refresh of `id` started in a task of its own, once the fake holds its POST (the issuer
/// answers when its refresh delay is over).
async fn refresh_on_the_wire(
    fake: &FakeOpenAi,
    pool: &Pool,
    id: &str,
) -> tokio::task::JoinHandle<Result<codexpool_core::Account, AuthError>> {
    let held = fake.refreshes_held();
    let refreshing = tokio::spawn({
        let (pool, id) = (pool.clone(), id.to_string());
        async move { pool.auth().refresh(&id).await }
    });
    refresh_held(fake, held, 5).await;
    refreshing
}

/// The account `refreshing` returns, within 20 s, with the live tokens it got, which went to
/// the rescue folder beside the database at `path` (it was locked).
async fn rescued(
    refreshing: tokio::task::JoinHandle<Result<codexpool_core::Account, AuthError>>,
    path: &std::path::Path,
    fake: &FakeOpenAi,
) -> codexpool_core::Account {
    let after = tokio::time::timeout(Duration::from_secs(20), refreshing)
        .await
        .expect("the refresh waited on the locked database")
        .unwrap()
        .unwrap();
    assert_eq!(rescue_files(path).len(), 1, "the tokens were rescued");
    assert_eq!(
        after.tokens.refresh_token.expose(),
        fake.current_tokens("acct-1").refresh_token
    );
    after
}

/// The files in the rescue folder beside the database at `path`.
fn rescue_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let folder = path.parent().unwrap().join("rescued-tokens");
    match std::fs::read_dir(folder.join(path.file_name().unwrap())) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_survive_a_database_that_stays_locked() {
    let fake = fake();
    fake.refresh_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let id = import(&a, &fake, "acct-1").await;
    let spent = a.accounts().get(&id).unwrap().tokens.refresh_token;

    let refreshing = refresh_on_the_wire(&fake, &a, &id).await;
    // While the refresh is on the wire (the fake holds it 1.5 s), another process takes the
    // write lock and keeps it (for longer than the refresh lease, as far as this test is
    // concerned).
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();

    // The refresh does not hang on the lock, and does not drop what the issuer rotated.
    let after = tokio::time::timeout(Duration::from_secs(20), refreshing)
        .await
        .expect("the refresh waited on the locked database")
        .unwrap()
        .unwrap()
        .tokens;
    let live = fake.current_tokens("acct-1");
    assert_eq!(after.refresh_token.expose(), live.refresh_token);
    let stored: String = locker
        .query_row(
            "SELECT refresh_token FROM accounts WHERE id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, spent.expose(), "the database never took them");
    let files = rescue_files(&path);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains(&live.refresh_token));
    assert!(!text.contains(spent.expose()), "no spent token in the file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The store is the cross-process truth: a reload does not take this process back to the
    // spent token, and another process opening the pool meanwhile gets the live one.
    a.reload().await.unwrap();
    assert_eq!(a.accounts().get(&id).unwrap().tokens, after);
    let b = file_pool(&fake, &path).await;
    assert_eq!(b.accounts().get(&id).unwrap().tokens, after);

    // The lock goes; the other process refreshes with the live token (no reuse), and the
    // rescue is folded into the database and removed.
    drop(locker);
    let t = b
        .auth()
        .refresh(&id)
        .await
        .expect("the sign-in survived")
        .tokens;
    assert_eq!(fake.refresh_count("acct-1"), 2);
    assert_eq!(
        t.refresh_token.expose(),
        fake.current_tokens("acct-1").refresh_token
    );
    assert!(rescue_files(&path).is_empty(), "{:?}", rescue_files(&path));
    let stored = SqliteStore::open(&path)
        .await
        .unwrap()
        .get_account(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.tokens, t);
    assert_eq!(stored.status, AccountStatus::Active);
    a.reload().await.unwrap();
    assert_eq!(a.accounts().get(&id).unwrap().tokens, t);
}

/// A change of another account that waits on the locked database (holding the pool's change
/// lock meanwhile, its write retrying for half a minute) does not keep the refreshed tokens from
/// their rescue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stuck_on_a_locked_database_does_not_delay_the_rescue() {
    let fake = fake();
    fake.refresh_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let id = import(&a, &fake, "acct-1").await;
    fake.add_account(codexpool_testkit::FakeAccount::new("acct-2"));
    let other = import(&a, &fake, "acct-2").await;

    let refreshing = refresh_on_the_wire(&fake, &a, &id).await;
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let disabling = tokio::spawn({
        let a = a.clone();
        async move { a.accounts().disable(&other).await }
    });
    rescued(refreshing, &path, &fake).await;
    drop(locker);
    disabling.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescued_tokens_do_not_undo_a_disable_made_while_the_refresh_was_on_the_wire() {
    let fake = fake();
    fake.refresh_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let id = import(&a, &fake, "acct-1").await;

    let refreshing = refresh_on_the_wire(&fake, &a, &id).await;
    // The refresh read the account as active before it went out; a person disables it now,
    // then another process keeps the write lock, so the new tokens are rescued.
    a.accounts().disable(&id).await.unwrap();
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let after = rescued(refreshing, &path, &fake).await;
    assert_eq!(after.status, AccountStatus::Disabled, "{after:?}");
    assert_eq!(after.status_reason.as_deref(), Some("disabled by a person"));
    let status: String = locker
        .query_row("SELECT status FROM accounts WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "disabled");
    drop(locker);
    a.reload().await.unwrap();
    let reloaded = a.accounts().get(&id).unwrap();
    assert_eq!(reloaded.status, AccountStatus::Disabled);
    assert_eq!(reloaded.tokens, after.tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rescued_by_a_process_that_died_are_stored_when_the_pool_opens() {
    let fake = fake();
    fake.refresh_delay(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let id = {
        let seed = file_pool(&fake, &path).await;
        import(&seed, &fake, "acct-1").await
    };
    // The refreshing process runs on its own runtime, which is shut down ("killed") once its
    // tokens are rescued.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let held = fake.refreshes_held();
    let refreshing = rt.spawn({
        let (fake, path, id) = (fake.clone(), path.clone(), id.clone());
        async move {
            let pool = file_pool(&fake, &path).await;
            pool.auth().refresh(&id).await.map(|a| a.tokens)
        }
    });
    refresh_held(&fake, held, 5).await;
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let rescued = tokio::time::timeout(Duration::from_secs(20), refreshing)
        .await
        .expect("no rescue")
        .unwrap()
        .unwrap();
    rt.shutdown_background();
    assert_eq!(rescue_files(&path).len(), 1);
    drop(locker);

    // Opening the pool stores them (they are newer than the stored ones) and removes the file.
    let pool = file_pool(&fake, &path).await;
    assert!(rescue_files(&path).is_empty());
    let raw = rusqlite::Connection::open(&path).unwrap();
    let stored: String = raw
        .query_row(
            "SELECT refresh_token FROM accounts WHERE id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, rescued.refresh_token.expose());
    assert_eq!(
        stored,
        fake.current_tokens("acct-1").refresh_token,
        "the live one"
    );
    assert_eq!(pool.accounts().get(&id).unwrap().tokens, rescued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_after_a_lost_answer_says_so() {
    let fake = fake();
    fake.add_account(FakeAccount::new("acct-2"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    // An issuer that takes the refresh and hangs up without an answer (what a timeout or a
    // crash mid-refresh leaves behind: the issuer may have rotated the token meanwhile).
    let hangup = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", hangup.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::Read;
        for conn in hangup.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 4096];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let cut_off = Pool::builder(support::config(
        &fake,
        &[("DB_PATH", path.to_str().unwrap()), ("ISSUER", &issuer)],
    ))
    .watch_interval(Duration::ZERO)
    .open()
    .await
    .unwrap();
    let pool = file_pool(&fake, &path).await;
    let id = import(&pool, &fake, "acct-1").await;
    let other = import(&pool, &fake, "acct-2").await;
    cut_off.reload().await.unwrap();

    let e = cut_off.auth().refresh(&id).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    // The issuer had rotated the token: the next refresh is refused as a reuse.
    fake.fail_next_refresh("acct-1", FakeRefreshFailure::Reused);
    let e = pool.auth().refresh(&id).await.unwrap_err();
    assert!(matches!(e, AuthError::RefreshDead { .. }), "{e:?}");
    let reason = pool.accounts().get(&id).unwrap().status_reason.unwrap();
    assert!(reason.contains("answer was lost"), "{reason}");
    assert!(!reason.contains("another holder"), "{reason}");

    // Without a lost answer of ours, a reuse is still blamed on another holder.
    fake.fail_next_refresh("acct-2", FakeRefreshFailure::Reused);
    pool.auth().refresh(&other).await.unwrap_err();
    let reason = pool.accounts().get(&other).unwrap().status_reason.unwrap();
    assert!(reason.contains("another holder"), "{reason}");
}

/// Child-process entry of `a_refresh_killed_mid_flight_does_not_hold_the_account` (not a
/// test): opens the database, takes the refresh lease by starting a refresh (which the fake
/// holds on the wire) and waits to be killed.
#[test]
fn child_killed_mid_refresh() {
    in_child("CODEXPOOL_TEST_KILLED_DB", |pool, account| async move {
        let _ = pool.auth().refresh(&account).await;
        println!("@@child the refresh ended before the kill");
    });
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_killed_mid_flight_does_not_hold_the_account() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let pool = file_pool(&fake, &path).await;
    let id = import(&pool, &fake, "acct-1").await;

    fake.refresh_delay(Duration::from_secs(30));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_killed_mid_refresh",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CODEXPOOL_TEST_KILLED_DB", &path)
        .env("CODEXPOOL_TEST_CHILD_ISSUER", fake.issuer())
        .env("CODEXPOOL_TEST_CHILD_ACCOUNT", &id)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Its refresh is on the wire and held there (so it holds the lease): kill it there. (A
    // request only recorded might still take the delay set below, and the failure meant for
    // the next one.)
    refresh_held(&fake, 0, 20).await;
    child.kill().unwrap();
    child.wait().unwrap();
    fake.refresh_delay(Duration::ZERO);

    // The issuer may have rotated the token before the process died.
    fake.fail_next_refresh("acct-1", FakeRefreshFailure::Reused);
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), pool.auth().refresh(&id))
        .await
        .expect("waited for the dead process's lease")
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, AuthError::RefreshDead { .. }), "{e:?}");
    let reason = pool.accounts().get(&id).unwrap().status_reason.unwrap();
    assert!(reason.contains("answer was lost"), "{reason}");
}
