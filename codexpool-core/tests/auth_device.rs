//! The device-code sign-in end to end against `FakeOpenAi`: the user code and verification URL,
//! polling while the code is pending (`interval` as a string or a number), the exchange with
//! the device redirect URI, the 15-minute limit and cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use codexpool_core::auth::{AuthError, LoginOptions};
use codexpool_core::store::{LoginKind, LoginStatus};
use codexpool_testkit::{DeviceInterval, FakeAccount, FakeOpenAi};
use support::{fake, memory_pool};

/// A device-code sign-in started with the default options.
async fn started(pool: &codexpool_core::Pool) -> codexpool_core::auth::DeviceLogin {
    pool.auth()
        .device_start(LoginOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn device_sign_in_end_to_end() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let device = pool
        .auth()
        .device_start(LoginOptions::default().label("headless").group("servers"))
        .await
        .unwrap();
    assert_eq!(device.verification_url, fake.device_verification_url());
    assert_eq!(Some(device.user_code.clone()), fake.latest_user_code());
    assert_eq!(device.interval_secs, 1, "the string \"1\"");
    let usercode = fake
        .last_request("/api/accounts/deviceauth/usercode")
        .unwrap();
    assert_eq!(
        usercode.body_json().unwrap(),
        serde_json::json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann"})
    );
    let info = pool.auth().login_status(&device.state).await.unwrap();
    assert_eq!(info.kind, LoginKind::Device);
    assert_eq!(info.status, LoginStatus::Pending);

    fake.auto_approve_device(1, "acct-1");
    let done = device.wait().await.unwrap();
    assert!(done.created);
    assert_eq!(done.account.label, "headless");
    assert_eq!(done.account.group.as_deref(), Some("servers"));
    assert_eq!(done.account.chatgpt_account_id.as_deref(), Some("acct-1"));
    assert_eq!(
        done.account.tokens.refresh_token.expose(),
        fake.current_tokens("acct-1").refresh_token
    );
    let poll = fake
        .last_request("/api/accounts/deviceauth/token")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(poll["user_code"], device.user_code.as_str());
    assert!(poll["device_auth_id"].as_str().is_some());
    let form = fake.last_request("/oauth/token").unwrap().body_form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], fake.device_redirect_uri());
    assert!(!form["code_verifier"].is_empty());
    assert_eq!(
        pool.auth()
            .login_status(&device.state)
            .await
            .unwrap()
            .status,
        LoginStatus::Completed {
            account_id: done.account.id.clone()
        }
    );
}

/// A pending code is polled until approved, every `interval` (a number here). Pending is said
/// with 404 this time (PROTOCOL.md §1: 403 or 404); a 429 (polled too fast) is no refusal
/// either: the next poll waits twice as long.
#[tokio::test]
async fn a_pending_code_is_polled_until_approved_with_a_numeric_interval() {
    for (pending, waited) in [(404, 900), (429, 1900)] {
        let fake = FakeOpenAi::builder()
            .device_interval(DeviceInterval::Number(1))
            .account(FakeAccount::new("acct-1"))
            .start()
            .unwrap();
        let fake = Arc::new(fake);
        let (pool, _) = memory_pool(&fake, &[]).await;
        let device = started(&pool).await;
        assert_eq!(device.interval_secs, 1);
        fake.set_device_pending_status(pending);
        fake.auto_approve_device(2, "acct-1");
        let started = std::time::Instant::now();
        let done = pool.auth().device_wait(&device).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(waited),
            "{pending}: waited {:?}",
            started.elapsed()
        );
        assert_eq!(
            fake.count("/api/accounts/deviceauth/token"),
            2,
            "pending once, then approved"
        );
        assert_eq!(done.account.email.as_deref(), Some("acct-1@example.com"));
    }
}

#[tokio::test]
async fn the_device_code_expires_after_fifteen_minutes() {
    let fake = fake();
    let (pool, clock) = memory_pool(&fake, &[]).await;
    let device = started(&pool).await;
    clock.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(device.wait().await.unwrap_err(), AuthError::DeviceExpired);
    assert!(pool.accounts().is_empty());
    assert_eq!(fake.count("/oauth/token"), 0);
}

#[tokio::test]
async fn a_cancelled_device_login_stops_waiting() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let device = started(&pool).await;
    let waiter = {
        let device = device.clone();
        tokio::spawn(async move { device.wait().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pool.auth().login_cancel(&device.state).await.unwrap());
    let r = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap_err(), AuthError::Cancelled);
    assert!(pool.accounts().is_empty());
}

#[tokio::test]
async fn a_refused_device_start_says_why() {
    let fake = FakeOpenAi::builder()
        .client_id("another-client")
        .start()
        .unwrap();
    let (pool, _) = memory_pool(&fake, &[]).await;
    match pool.auth().device_start(LoginOptions::default()).await {
        Err(AuthError::Device {
            status: 400,
            message,
        }) => {
            assert!(message.contains("client_id"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_issuer_is_named_with_scheme_host_and_port() {
    let fake = fake();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = format!("http://127.0.0.1:{port}");
    let (pool, _) = memory_pool(&fake, &[("ISSUER", &issuer)]).await;
    let e = pool
        .auth()
        .device_start(LoginOptions::default())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "could not connect ({issuer}/api/accounts/deviceauth/usercode)"
        )),
        "{text}"
    );
}
