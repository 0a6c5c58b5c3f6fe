//! `-q`: errors and the data a command exists to output (listings, JSON, a new key's secret)
//! still print; confirmations, progress, narration, notes and warnings do not.

use crate::support::{Env, Lines, finish, texts};

/// Runs a command that must succeed; returns (stdout, stderr).
fn quiet(env: &Env, args: &[&str]) -> (String, String) {
    let o = env.cmd().arg("-q").args(args).output().unwrap();
    let (out, err) = texts(&o);
    assert!(o.status.success(), "-q {args:?}: {out}{err}");
    (out, err)
}

#[test]
fn quiet_keeps_data_and_drops_confirmations() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1"]);

    // The secret alone, ready for `$(codexpool -q key create …)`.
    let (out, err) = quiet(&env, &["key", "create", "--name", "ci"]);
    let secret = out.trim_end();
    assert!(
        secret.starts_with("sk-cp-") && secret.len() == 54 && out.lines().count() == 1,
        "{out}"
    );
    assert_eq!(err, "");
    let id = env.json(&["key", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Confirmations are dropped.
    for args in [
        &["key", "disable", id.as_str()][..],
        &["key", "update", &id, "--name", "ci-2"],
        &["account", "disable", &ids[0]],
        &["account", "enable", &ids[0]],
        &["account", "update", &ids[0], "--label", "main"],
        &["account", "export", "-o", "accounts.json"],
    ] {
        assert_eq!(
            quiet(&env, args),
            (String::new(), String::new()),
            "{args:?}"
        );
    }

    // Data still prints: listings, the settings, JSON documents.
    let (list, _) = quiet(&env, &["key", "list"]);
    assert!(list.contains("ci-2") && list.contains("disabled"), "{list}");
    let (accounts, _) = quiet(&env, &["account", "list"]);
    assert!(accounts.contains("main"), "{accounts}");
    let (usage, _) = quiet(&env, &["usage"]);
    assert!(usage.contains("5-hour"), "{usage}");
    let (config, _) = quiet(&env, &["config"]);
    assert!(config.contains("ROUTE_STRATEGY"), "{config}");
    let (json, _) = quiet(&env, &["key", "enable", &id, "--json"]);
    assert!(json.contains("\"enabled\": true"), "{json}");

    // Errors still print.
    let o = env
        .cmd()
        .args(["-q", "key", "delete", "zzzz"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(texts(&o).1.starts_with("error: "), "{}", texts(&o).1);
}

#[test]
fn quiet_demo_prints_nothing_but_still_runs() {
    let env = Env::new();
    let (out, err) = quiet(&env, &["demo"]);
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
}

#[test]
fn the_help_says_what_quiet_keeps() {
    let env = Env::new();
    let help = texts(&env.cmd().arg("--help").output().unwrap()).0;
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        help.contains(
            "Print only errors and what a command exists to output (listings, --json documents, \
             a new key's secret alone, the URL or code of a sign-in, the base URL of `serve`): \
             no confirmations, progress, notes or warnings"
        ),
        "{help}"
    );
}

/// A sign-in under `-q` prints what the person must act on and nothing else: the URL alone
/// (browser), or the verification URL and the code, one per line (device).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_sign_ins_print_only_the_url_or_the_code() {
    use codexpool_testkit::FakeAccount;
    let env = Env::new();
    env.fake.add_account(FakeAccount::new("acct-q"));
    let mut child = env.spawn(
        &["-q", "account", "login", "--no-browser"],
        &[("CODEXPOOL_LOGIN_ADDR", "127.0.0.1:0")],
    );
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let url = lines.find(|l| Some(l.to_string()));
    assert!(
        url.starts_with(&env.fake.issuer()) && url.contains("/oauth/authorize?"),
        "{url}"
    );
    // Finish it from another process, as a person pasting the redirect would.
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    let location = res.headers()["location"].to_str().unwrap().to_string();
    quiet(&env, &["account", "complete", &location]);
    let (status, err) = finish(child, 20);
    assert!(status.success(), "{err}");
    assert_eq!(err, "");
    assert_eq!(lines.rest(), url, "the URL alone");

    env.fake.add_account(FakeAccount::new("acct-d"));
    env.fake.auto_approve_device(1, "acct-d");
    let (out, err) = quiet(&env, &["account", "login", "--device", "--no-browser"]);
    let code = env.fake.latest_user_code().unwrap();
    assert_eq!(
        out,
        format!("{}\n{code}\n", env.fake.device_verification_url())
    );
    assert_eq!(err, "");
}

/// `serve` under `-q` prints the one thing a script cannot find otherwise: the base URL (of a
/// port the system picked), alone; it answers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_serve_prints_its_base_url_alone() {
    let env = Env::new();
    let mut child = env.spawn(&["-q", "serve", "--addr", "127.0.0.1:0"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let base = lines.find(|l| Some(l.to_string()));
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{base}"
    );
    let health = reqwest::get(base.replace("/v1", "/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let err = crate::support::stop(child);
    assert_eq!(err, "");
    assert_eq!(lines.rest(), base, "nothing else");
}
