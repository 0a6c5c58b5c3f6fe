//! The browser sign-in end to end against `FakeOpenAi` over real HTTP: the authorize URL, the
//! callback listener (driven by an HTTP client playing the browser), manual completion from a
//! pasted redirect URL, completion by another pool on the same database, and every failure the
//! issue names (unknown or expired state, `error=` callbacks, failed exchanges, a taken or
//! non-loopback LOGIN_ADDR, garbage and slow clients).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use codexpool_core::auth::{AuthError, LoginOptions, pkce_challenge};
use codexpool_core::store::{LoginKind, LoginStatus};
use codexpool_core::{AccountPatch, AccountStatus};
use support::{authorize, fake, file_pool, get, memory_pool};

fn no_listen() -> LoginOptions {
    LoginOptions::default().listen(false)
}

#[tokio::test]
async fn the_authorize_url_carries_every_parameter_in_order() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let login = pool.auth().login_start(no_listen()).await.unwrap();
    let url = login.url();
    let (base, query) = url.split_once('?').unwrap();
    assert_eq!(base, format!("{}/oauth/authorize", fake.issuer()));
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let session = pool
        .store()
        .get_login_session(login.state())
        .await
        .unwrap()
        .unwrap();
    let verifier = session.code_verifier.expose().to_string();
    assert_eq!(verifier.len(), 86, "base64url of 64 bytes");
    assert_eq!(login.state().len(), 43, "base64url of 32 bytes");
    let challenge = pkce_challenge(&verifier);
    assert_eq!(
        pairs,
        vec![
            ("response_type", "code"),
            ("client_id", "app_EMoamEEZ73f0CkXaXp7hrann"),
            (
                "redirect_uri",
                "http%3A%2F%2F127.0.0.1%3A1455%2Fauth%2Fcallback"
            ),
            ("scope", "openid%20profile%20email%20offline_access"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("id_token_add_organizations", "true"),
            ("codex_cli_simplified_flow", "true"),
            ("state", login.state()),
            ("originator", "codex_cli_rs"),
        ]
    );
    assert_eq!(session.kind, LoginKind::Browser);
    assert_eq!(session.redirect_uri, "http://127.0.0.1:1455/auth/callback");
    assert_eq!(session.status, LoginStatus::Pending);
    assert_eq!(
        session.expires_at,
        session.created_at.plus(Duration::from_secs(15 * 60))
    );
    assert!(login.listen_addr().is_none());
    assert!(!login.browser_opened());

    // The fake (which checks the parameters like the issuer) accepts it.
    let location = authorize(url).await;
    assert!(location.starts_with("http://127.0.0.1:1455/auth/callback?code="));
    let seen = fake.last_authorize_query().unwrap();
    assert!(seen.contains(&("code_challenge".into(), challenge)));

    // A pinned workspace is the last parameter.
    let login = pool
        .auth()
        .login_start(no_listen().allowed_workspace_id("ws 1/2"))
        .await
        .unwrap();
    assert!(
        login.url().ends_with(&format!(
            "&state={}&originator=codex_cli_rs&allowed_workspace_id=ws%201%2F2",
            login.state()
        )),
        "{}",
        login.url()
    );
}

/// A label, group or note too long for an account is refused before anyone is sent to sign in.
#[tokio::test]
async fn a_sign_in_with_too_long_a_label_is_refused_at_once() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    for opts in [
        no_listen().label("x".repeat(201)),
        no_listen().group("x".repeat(201)),
    ] {
        match pool.auth().login_start(opts.clone()).await {
            Err(AuthError::Invalid { message, .. }) => {
                assert!(message.contains("at most 200"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pool.auth().device_start(opts).await,
            Err(AuthError::Invalid { .. })
        ));
    }
}

#[tokio::test]
async fn browser_sign_in_through_the_callback_listener() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let login = pool
        .auth()
        .login_start(
            LoginOptions::default()
                .label(" Work ")
                .group("team-a")
                .tags(["ci", "eu"])
                .note("shared seat"),
        )
        .await
        .unwrap();
    let port = login.port().unwrap();
    assert_ne!(port, 0);
    assert_eq!(
        login.redirect_uri(),
        format!("http://127.0.0.1:{port}/auth/callback"),
        "LOGIN_ADDR port 0: the redirect URI follows the bound port"
    );

    // The browser: the issuer redirects to the listener, which answers a page.
    let location = authorize(login.url()).await;
    assert!(location.starts_with(login.redirect_uri()), "{location}");
    let (status, page) = get(&location).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("You can close this window"), "{page}");

    let done = login.wait().await.unwrap();
    assert!(done.created);
    let a = &done.account;
    assert_eq!(a.label, "Work");
    assert_eq!(a.group.as_deref(), Some("team-a"));
    assert_eq!(a.tags, vec!["ci".to_string(), "eu".to_string()]);
    assert_eq!(a.note.as_deref(), Some("shared seat"));
    assert_eq!(a.email.as_deref(), Some("acct-1@example.com"));
    assert_eq!(a.plan_type.as_deref(), Some("plus"));
    assert_eq!(a.chatgpt_account_id.as_deref(), Some("acct-1"));
    assert_eq!(a.status, AccountStatus::Active);
    let current = fake.current_tokens("acct-1");
    assert_eq!(a.tokens.access_token.expose(), current.access_token);
    assert_eq!(a.tokens.refresh_token.expose(), current.refresh_token);
    assert_eq!(a.tokens.id_token.expose(), current.id_token);
    assert!(a.tokens.expires_at.is_some());
    // Stored, not only in memory.
    let stored = pool.store().get_account(&a.id).await.unwrap().unwrap();
    assert_eq!(stored.tokens.refresh_token.expose(), current.refresh_token);

    // The exchange, on the wire.
    let exchange = fake.last_request("/oauth/token").unwrap();
    assert_eq!(
        exchange.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = exchange.body_form();
    let session = pool
        .store()
        .get_login_session(login.state())
        .await
        .unwrap()
        .unwrap();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], code);
    assert_eq!(form["redirect_uri"], login.redirect_uri());
    assert_eq!(form["client_id"], "app_EMoamEEZ73f0CkXaXp7hrann");
    assert_eq!(form["code_verifier"], session.code_verifier.expose());
    assert_eq!(form.len(), 5);
    assert_eq!(
        pool.auth()
            .login_status(login.state())
            .await
            .unwrap()
            .status,
        LoginStatus::Completed {
            account_id: a.id.clone()
        }
    );

    // A replayed callback completes nothing twice (the listener has stopped; so use the API).
    let again = pool.auth().login_complete(&location).await.unwrap_err();
    assert_eq!(
        again,
        AuthError::AlreadyCompleted {
            account_id: Some(a.id.clone())
        }
    );
    assert_eq!(fake.count("/oauth/token"), 1);
    assert_eq!(pool.accounts().len(), 1);
}

#[tokio::test]
async fn signing_in_again_updates_the_account_and_revives_it() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let id = support::import(&pool, &fake, "acct-1").await;
    pool.accounts()
        .update(
            &id,
            AccountPatch::default().label("old").status(
                AccountStatus::NeedsLogin,
                Some("refresh_token_expired".into()),
            ),
        )
        .await
        .unwrap();
    let login = pool
        .auth()
        .login_start(no_listen().label("new").group("g"))
        .await
        .unwrap();
    let location = authorize(login.url()).await;
    let done = pool.auth().login_complete(&location).await.unwrap();
    assert!(!done.created);
    assert_eq!(done.account.id, id);
    assert_eq!(done.account.label, "new");
    assert_eq!(done.account.group.as_deref(), Some("g"));
    assert_eq!(done.account.status, AccountStatus::Active);
    assert_eq!(done.account.status_reason, None);
    assert_eq!(pool.accounts().len(), 1);
}

#[tokio::test]
async fn unknown_and_expired_states_store_nothing() {
    let fake = fake();
    let (pool, clock) = memory_pool(&fake, &[]).await;
    let login = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap();
    let callback = login.redirect_uri().to_string();

    // A state nobody started: an error page, nothing stored, the listener keeps waiting.
    let (status, page) = get(&format!("{callback}?code=ac_x&state=forged")).await;
    assert_eq!(status, 400);
    assert!(page.contains("unknown state"), "{page}");
    assert_eq!(fake.count("/oauth/token"), 0);
    assert_eq!(
        pool.auth()
            .login_complete("?code=ac_x&state=forged")
            .await
            .unwrap_err(),
        (AuthError::UnknownState)
    );

    // Sixteen minutes later the real redirect is too late, and the listener has gone.
    let location = authorize(login.url()).await;
    clock.advance(Duration::from_secs(16 * 60));
    let addr = login.listen_addr().unwrap();
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "listener still up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pool.auth().login_complete(&location).await.unwrap_err(),
        (AuthError::Expired)
    );
    assert_eq!(login.wait().await.unwrap_err(), AuthError::Expired);
    assert!(
        pool.auth()
            .login_status(login.state())
            .await
            .unwrap()
            .expired
    );
    assert_eq!(fake.count("/oauth/token"), 0, "no exchange was attempted");
    assert!(pool.accounts().is_empty());
    assert_eq!(
        pool.auth().login_status("nope").await,
        Err(AuthError::UnknownState)
    );
}

#[tokio::test]
async fn error_callbacks_fail_the_login_and_say_why() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;

    // Through the listener: the entitlement error gets a human sentence.
    let login = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap();
    fake.fail_next_authorize(
        "missing_codex_entitlement",
        "Codex is not enabled for your workspace",
    );
    let location = authorize(login.url()).await;
    assert!(location.contains("error=missing_codex_entitlement"));
    let (status, page) = get(&location).await;
    assert_eq!(status, 400);
    assert!(
        page.contains("no Codex access on its plan or workspace"),
        "{page}"
    );
    match login.wait().await {
        Err(AuthError::LoginFailed { message }) => {
            assert!(message.contains("no Codex access"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pool.auth()
            .login_status(login.state())
            .await
            .unwrap()
            .status,
        LoginStatus::Failed { .. }
    ));

    // Pasted: any other refusal names the error and its description.
    let login = pool.auth().login_start(no_listen()).await.unwrap();
    fake.fail_next_authorize("access_denied", "The user cancelled");
    let location = authorize(login.url()).await;
    assert_eq!(
        pool.auth().login_complete(&location).await.unwrap_err(),
        (AuthError::Denied {
            error: "access_denied".into(),
            description: Some("The user cancelled".into())
        })
    );
    let direct = pool
        .auth()
        .login_complete(&format!(
            "?error=missing_codex_entitlement&state={}",
            login.state()
        ))
        .await;
    assert!(
        matches!(direct, Err(AuthError::LoginFailed { .. })),
        "a failed login stays failed: {direct:?}"
    );

    // A pinned workspace the user is not in.
    let login = pool
        .auth()
        .login_start(no_listen().allowed_workspace_id("another-workspace"))
        .await
        .unwrap();
    let location = authorize(login.url()).await;
    assert!(matches!(
        pool.auth().login_complete(&location).await.unwrap_err(),
        AuthError::Denied { error, .. } if error == "access_denied"
    ));

    assert_eq!(fake.count("/oauth/token"), 0);
    assert!(pool.accounts().is_empty());
}

#[tokio::test]
async fn a_failed_exchange_stores_nothing_and_ends_the_login() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let login = pool.auth().login_start(no_listen()).await.unwrap();
    let location = authorize(login.url()).await;
    let forged = url::Url::parse_with_params(
        "http://127.0.0.1:1455/auth/callback",
        [("code", "ac_forged"), ("state", login.state())],
    )
    .unwrap();
    match pool.auth().login_complete(forged.as_str()).await {
        Err(AuthError::Exchange {
            status: Some(400),
            message,
        }) => assert!(message.starts_with("invalid_grant"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(pool.accounts().is_empty());
    // The session is spent: the genuine redirect cannot complete it any more.
    assert!(matches!(
        pool.auth().login_complete(&location).await.unwrap_err(),
        AuthError::LoginFailed { message } if message.contains("invalid_grant")
    ));
    assert_eq!(fake.count("/oauth/token"), 1);

    // An issuer that is down: the exchange fails with no status.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let (pool, _) = memory_pool(&fake, &[("ISSUER", &format!("http://127.0.0.1:{port}"))]).await;
    let login = pool.auth().login_start(no_listen()).await.unwrap();
    let r = pool
        .auth()
        .login_complete(&format!("?code=ac_1&state={}", login.state()))
        .await;
    assert!(
        matches!(r, Err(AuthError::Exchange { status: None, .. })),
        "{r:?}"
    );
    assert!(pool.accounts().is_empty());
}

#[tokio::test]
async fn a_pasted_redirect_completes_with_or_without_scheme_and_host() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let variants: [fn(&str) -> String; 4] = [
        |u| u.to_string(),
        |u| u.trim_start_matches("http://").to_string(),
        |u| format!("/auth/callback?{}", u.split_once('?').unwrap().1),
        |u| u.split_once('?').unwrap().1.to_string(),
    ];
    for (i, variant) in variants.iter().enumerate() {
        let login = pool.auth().login_start(no_listen()).await.unwrap();
        let location = authorize(login.url()).await;
        let pasted = format!("  {}\n", variant(&location));
        let done = pool
            .auth()
            .login_complete(&pasted)
            .await
            .unwrap_or_else(|e| panic!("variant {i} ({pasted:?}): {e}"));
        assert_eq!(done.created, i == 0);
        assert_eq!(
            fake.last_request("/oauth/token").unwrap().body_form()["redirect_uri"],
            login.redirect_uri(),
            "the exchange uses the session's redirect URI"
        );
    }
    assert_eq!(pool.accounts().len(), 1);
    assert!(matches!(
        pool.auth()
            .login_complete("http://127.0.0.1:1455/auth/callback")
            .await
            .unwrap_err(),
        AuthError::InvalidRedirect { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_started_in_one_pool_completes_in_another_once() {
    let fake = fake();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let a = file_pool(&fake, &path).await;
    let b = file_pool(&fake, &path).await;
    let login = a
        .auth()
        .login_start(no_listen().label("from A").tags(["x"]))
        .await
        .unwrap();
    let location = authorize(login.url()).await;

    // Pasted into two processes at once: one completes, the other is told so.
    let (auth_a, auth_b) = (a.auth(), b.auth());
    let (rb, ra) = tokio::join!(
        auth_b.login_complete(&location),
        auth_a.login_complete(&location)
    );
    let (done, other) = match (rb, ra) {
        (Ok(d), Err(e)) | (Err(e), Ok(d)) => (d, e),
        other => panic!("exactly one completion expected: {other:?}"),
    };
    assert!(
        matches!(other, AuthError::AlreadyCompleted { .. }),
        "{other:?}"
    );
    assert_eq!(fake.count("/oauth/token"), 1);
    assert_eq!(done.account.label, "from A", "the session's fields apply");
    assert_eq!(done.account.tags, vec!["x".to_string()]);

    // The starter's handle sees the completion.
    let waited = tokio::time::timeout(Duration::from_secs(5), login.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.account.id, done.account.id);
    assert!(waited.created);
    assert!(a.accounts().get(&done.account.id).is_ok());
    b.reload().await.unwrap();
    assert!(b.accounts().get(&done.account.id).is_ok());

    // Again for the account A holds now, with another label, completed by B: A's waiter
    // tells what B stored, not A's copy from before.
    let again = a
        .auth()
        .login_start(no_listen().label("second"))
        .await
        .unwrap();
    let location = authorize(again.url()).await;
    let redone = b.auth().login_complete(&location).await.unwrap();
    assert_eq!(redone.account.label, "second");
    let waited = tokio::time::timeout(Duration::from_secs(5), again.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waited.account.id, done.account.id);
    assert_eq!(waited.account.label, "second");
    assert!(!waited.created);
}

#[tokio::test]
async fn login_addr_must_be_loopback_and_free() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[("LOGIN_ADDR", "0.0.0.0:0")]).await;
    let e = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::NonLoopback { .. }), "{e:?}");
    assert!(e.to_string().contains("ALLOW_NON_LOOPBACK_LOGIN_ADDR"));

    let (pool, _) = memory_pool(
        &fake,
        &[
            ("LOGIN_ADDR", "0.0.0.0:0"),
            ("ALLOW_NON_LOOPBACK_LOGIN_ADDR", "yes"),
        ],
    )
    .await;
    let login = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap();
    assert!(login.listen_addr().unwrap().ip().is_unspecified());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (pool, _) = memory_pool(&fake, &[("LOGIN_ADDR", &addr)]).await;
    let e = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        AuthError::AddrInUse {
            addr: addr.clone(),
            setting: "LOGIN_ADDR"
        }
    );
    assert!(e.to_string().contains("LOGIN_ADDR"), "{e}");
    assert!(e.to_string().contains(&addr), "{e}");
    // The way out is named for every front-end: the CLI and the bindings.
    assert!(e.to_string().contains("codexpool account complete"), "{e}");
    assert!(e.to_string().contains("login_complete(url)"), "{e}");
}

/// A loopback `host:port` nothing listens on (a fixed `LOGIN_ADDR`, like the default 1455).
fn free_addr() -> String {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_returns_once_the_listener_has_freed_its_address() {
    let fake = fake();
    let addr = free_addr();
    let (pool, _) = memory_pool(&fake, &[("LOGIN_ADDR", &addr)]).await;
    // A program that gives up on a sign-in and starts another one right away (a retry, a
    // Python `wait` that timed out) finds the address free.
    for _ in 0..3 {
        let login = pool
            .auth()
            .login_start(LoginOptions::default())
            .await
            .unwrap();
        assert_eq!(login.listen_addr().unwrap().to_string(), addr);
        assert!(login.cancel().await.unwrap());
    }
    std::net::TcpListener::bind(&addr).unwrap();
}

#[tokio::test]
async fn a_sign_in_ended_elsewhere_does_not_hold_the_address_for_the_next_one() {
    let fake = fake();
    let addr = free_addr();
    let (pool, _) = memory_pool(&fake, &[("LOGIN_ADDR", &addr)]).await;
    let auth = pool.auth();
    // Ended without waiting for its listener (what the bindings do in the background when a
    // handle is freed): the next sign-in still gets the address, on a single-threaded runtime
    // where the listener cannot have stopped before it asks.
    for _ in 0..3 {
        let login = auth.login_start(LoginOptions::default()).await.unwrap();
        assert!(auth.login_cancel(&login.info().state).await.unwrap());
        let next = auth.login_start(LoginOptions::default()).await.unwrap();
        assert_eq!(next.listen_addr().unwrap().to_string(), addr);
        assert!(next.cancel().await.unwrap());
    }
    // A sign-in still pending keeps it.
    let _pending = auth.login_start(LoginOptions::default()).await.unwrap();
    let e = auth.login_start(LoginOptions::default()).await.unwrap_err();
    assert!(matches!(e, AuthError::AddrInUse { .. }), "{e:?}");
}

fn raw_request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_survives_garbage_and_slow_clients() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let login = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap();
    let addr = login.listen_addr().unwrap();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));

    // A client that connects and says nothing holds no one up.
    let _slow = std::net::TcpStream::connect(local).unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        [
            raw_request(local, b"\x00\x01\xfe garbage\r\n\r\n"),
            raw_request(local, b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"),
            raw_request(local, b"POST /auth/callback HTTP/1.1\r\n\r\n"),
            raw_request(local, b"GET /auth/callback?code=only HTTP/1.1\r\n\r\n"),
        ]
    })
    .await
    .unwrap();
    assert!(answers[0].starts_with("HTTP/1.1 400 "), "{}", answers[0]);
    assert!(answers[1].starts_with("HTTP/1.1 404 "), "{}", answers[1]);
    assert!(answers[2].starts_with("HTTP/1.1 405 "), "{}", answers[2]);
    assert!(answers[2].contains("\r\nAllow: GET\r\n"), "{}", answers[2]);
    assert!(answers[3].starts_with("HTTP/1.1 400 "), "{}", answers[3]);
    assert!(answers[3].contains("no state parameter"), "{}", answers[3]);
    assert!(answers.iter().all(|a| a.contains("text/html")));

    // The real callback still works, after a link checker's HEAD that spent nothing.
    let location = authorize(login.url()).await;
    let head = reqwest::Client::new().head(&location).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 405);
    let (status, _) = get(&location).await;
    assert_eq!(status, 200);
    assert!(login.wait().await.is_ok());
}

#[tokio::test]
async fn a_cancelled_login_cannot_complete_and_its_listener_stops() {
    let fake = fake();
    let (pool, _) = memory_pool(&fake, &[]).await;
    let login = pool
        .auth()
        .login_start(LoginOptions::default())
        .await
        .unwrap();
    let location = authorize(login.url()).await;
    assert!(login.cancel().await.unwrap());
    assert!(!login.cancel().await.unwrap(), "already ended");
    assert_eq!(login.wait().await.unwrap_err(), AuthError::Cancelled);
    assert_eq!(
        pool.auth().login_complete(&location).await.unwrap_err(),
        (AuthError::Cancelled)
    );
    assert_eq!(
        pool.auth()
            .login_status(login.state())
            .await
            .unwrap()
            .status,
        LoginStatus::Cancelled
    );
    assert_eq!(
        pool.auth().login_cancel("nope").await,
        Err(AuthError::UnknownState)
    );
    // The listener notices and goes away.
    let addr = login.listen_addr().unwrap();
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "listener still up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.accounts().is_empty());
    assert_eq!(fake.count("/oauth/token"), 0);
}
