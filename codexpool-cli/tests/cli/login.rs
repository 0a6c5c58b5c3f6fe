//! `account login` (browser callback, device code, Ctrl-C) and `account complete`.

use codexpool_testkit::FakeAccount;
use serde_json::Value;

use crate::support::{Env, Lines, Spawned, finish, signal, texts};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Starts `account login --no-browser` on a free callback port; returns the child, its
/// output, the authorize URL and the callback address it printed.
fn start_login(env: &Env, extra: &[&str]) -> (Spawned, Lines, String, String) {
    let mut args = vec!["account", "login", "--no-browser"];
    args.extend_from_slice(extra);
    let mut child = env.spawn(&args, &[("CODEXPOOL_LOGIN_ADDR", "127.0.0.1:0")]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let url = authorize_url(&mut lines);
    let callback = lines.find(|l| {
        l.split_once("callback on http://")
            .map(|(_, rest)| rest.split(['/', ' ']).next().unwrap().to_string())
    });
    (child, lines, url, callback)
}

/// The authorize URL `account login` printed.
fn authorize_url(lines: &mut Lines) -> String {
    lines.find(|l| {
        let l = l.trim();
        (l.starts_with("http") && l.contains("/oauth/authorize?")).then(|| l.to_string())
    })
}

/// What the browser would do: GET the authorize URL, and return where the issuer redirects.
async fn authorize(url: &str) -> String {
    let res = no_redirects().get(url).send().await.unwrap();
    assert_eq!(res.status(), 302, "{}", res.text().await.unwrap());
    res.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_through_the_callback_listener() {
    let env = Env::new();
    env.fake.add_account(
        FakeAccount::new("acct-new")
            .email("new@example.com")
            .plan("pro"),
    );
    let (child, lines, url, callback) = start_login(
        &env,
        &[
            "--label", "Fresh", "--group", "team", "--tag", "a", "--note", "n",
        ],
    );
    assert!(url.starts_with(&env.fake.issuer()), "{url}");
    assert!(callback.starts_with("127.0.0.1:"), "{callback}");
    let location = authorize(&url).await;
    // The redirect names the listener's port; reach it on the address the CLI printed.
    let (_, path) = location.split_once("/auth/callback").unwrap();
    let page = reqwest::get(format!("http://{callback}/auth/callback{path}"))
        .await
        .unwrap();
    // The whole page, though the CLI exits as soon as the listener has stopped.
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Signed in") && html.ends_with("</html>"),
        "{html}"
    );
    let (status, err) = finish(child, 20);
    assert!(status.success(), "{err}");
    let out = lines.rest();
    assert!(
        out.contains("Signed in Fresh (new@example.com, pro) as account"),
        "{out}"
    );
    let a = &env.json(&["account", "list"])[0];
    assert_eq!(
        (a["label"].as_str(), a["group"].as_str()),
        (Some("Fresh"), Some("team"))
    );
    assert_eq!(
        (a["tags"].clone(), a["note"].as_str()),
        (serde_json::json!(["a"]), Some("n"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_with_a_pasted_url_from_another_terminal() {
    let env = Env::new();
    env.fake
        .add_account(FakeAccount::new("acct-p").email("paste@example.com"));
    let (child, lines, url, _) = start_login(&env, &[]);
    let location = authorize(&url).await;

    // Another process finishes the sign-in: the waiting one sees it and ends too.
    let o = env
        .cmd()
        .args(["account", "complete", &location])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("Signed in paste@example.com (plus) as account "),
        "{stdout}"
    );
    let (status, err) = finish(child, 20);
    assert!(status.success(), "{err}");
    assert!(lines.rest().contains("Signed in paste@example.com"));

    // Pasting it again, or something else, is a clear error.
    let o = env
        .cmd()
        .args(["account", "complete", &location])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        texts(&o)
            .1
            .starts_with("error: this sign-in was already completed"),
        "{}",
        texts(&o).1
    );
    let o = env
        .cmd()
        .args([
            "account",
            "complete",
            "http://localhost:1455/auth/callback?foo=1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        texts(&o).1.starts_with("error: not a sign-in redirect URL"),
        "{}",
        texts(&o).1
    );
}

/// With the callback port taken, the error says how to sign in anyway, and `--no-listen`
/// does: no listener, the sign-in finished by `account complete` from another terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_without_the_listener_when_its_port_is_taken() {
    let env = Env::new();
    env.fake
        .add_account(FakeAccount::new("acct-nl").email("nolisten@example.com"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let o = env
        .cmd()
        .env("CODEXPOOL_LOGIN_ADDR", &port)
        .args(["account", "login", "--no-browser"])
        .output()
        .unwrap();
    let (_, stderr) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("account login --no-listen"), "{stderr}");

    let mut child = env.spawn(
        &["account", "login", "--no-browser", "--no-listen"],
        &[("CODEXPOOL_LOGIN_ADDR", &port)],
    );
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let url = authorize_url(&mut lines);
    lines.find(|l| {
        l.contains("Waiting for `codexpool account complete`")
            .then_some(())
    });
    let location = authorize(&url).await;
    let o = env
        .cmd()
        .args(["account", "complete", &location])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", texts(&o).1);
    let (status, err) = finish(child, 20);
    assert!(status.success(), "{err}");
    assert!(lines.rest().contains("Signed in nolisten@example.com"));
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_sign_in() {
    let env = Env::new();
    env.fake.add_account(FakeAccount::new("acct-c"));
    let (child, _lines, url, _) = start_login(&env, &[]);
    signal(&child, "INT");
    let (status, err) = finish(child, 10);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("error: sign-in cancelled"), "{err}");
    // The session is over: its redirect no longer signs anyone in.
    let location = authorize(&url).await;
    let o = env
        .cmd()
        .args(["account", "complete", &location])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(texts(&o).1.contains("cancelled"), "{}", texts(&o).1);
    assert_eq!(env.json(&["account", "list"]), serde_json::json!([]));
}

#[test]
fn device_code_sign_in() {
    let env = Env::new();
    env.fake
        .add_account(FakeAccount::new("acct-d").email("device@example.com"));
    env.fake.auto_approve_device(1, "acct-d");
    let o = env
        .cmd()
        .args([
            "account",
            "login",
            "--device",
            "--no-browser",
            "--tag",
            "headless",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("open {}", env.fake.device_verification_url())),
        "{stdout}"
    );
    let code = env.fake.latest_user_code().unwrap();
    assert!(stdout.contains(&code), "{stdout}");
    assert!(
        stdout.contains("Signed in device@example.com (plus) as account"),
        "{stdout}"
    );
    assert_eq!(
        env.json(&["account", "list"])[0]["tags"],
        serde_json::json!(["headless"])
    );

    // --json: the started sign-in, then the result, one JSON document per line.
    env.fake.add_account(FakeAccount::new("acct-e"));
    env.fake.auto_approve_device(1, "acct-e");
    let out = env.ok(&["account", "login", "--device", "--json"]);
    let docs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{out}");
    assert!(docs[0]["user_code"].is_string() && docs[0]["verification_url"].is_string());
    assert_eq!(docs[1]["created"], true);
    assert_eq!(docs[1]["account"]["chatgpt_account_id"], "acct-e");
}

/// A callback listener on another port than the one the browser is sent back to is said at
/// once (the sign-in would otherwise wait for a callback that never comes); with port 0 the
/// redirect follows the listener and nothing is said.
#[test]
fn a_listener_the_redirect_does_not_reach_is_warned_of() {
    let env = Env::new();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let addr = format!("127.0.0.1:{port}");
    for (login_addr, warned) in [(addr.as_str(), true), ("127.0.0.1:0", false)] {
        let mut child = env.spawn(
            &["account", "login", "--no-browser"],
            &[
                ("CODEXPOOL_LOGIN_ADDR", login_addr),
                (
                    "CODEXPOOL_REDIRECT_URI",
                    "http://localhost:1455/auth/callback",
                ),
            ],
        );
        let mut lines = Lines::new(child.stdout.take().unwrap());
        lines.find(|l| l.contains("Waiting for the sign-in callback").then_some(()));
        signal(&child, "INT");
        let (_, stderr) = finish(child, 20);
        let expected = format!(
            "the browser is sent back to port 1455 (CODEXPOOL_REDIRECT_URI), the callback \
             listens on port {port}"
        );
        assert_eq!(stderr.contains(&expected), warned, "{login_addr}: {stderr}");
        assert_eq!(stderr.contains("sent back to port"), warned, "{stderr}");
    }
}
