//! `usage [--refresh]`.

use std::time::Duration;

use codexpool_testkit::{FakeUsage, FakeWindow};

use crate::support::{Env, Lines, finish, signal, texts};

fn window(used: f64, weekly: bool, secs: u64) -> FakeWindow {
    let w = if weekly {
        FakeWindow::weekly(used)
    } else {
        FakeWindow::five_hour(used)
    };
    w.resets_in(Duration::from_secs(secs))
}

#[test]
fn refresh_polls_and_shows_bars_resets_and_provenance() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1", "acct-2", "acct-3"]);
    // 30 s of slack in each reset time keeps the minutes shown stable.
    env.fake.set_usage(
        "acct-1",
        FakeUsage::new(48.0, 81.0)
            .primary(window(48.0, false, 2 * 3600 + 13 * 60 + 30))
            .secondary(window(81.0, true, 3 * 86_400 + 4 * 3600 + 30 * 60)),
    );
    env.fake.usage_status("acct-2", Some(500));
    env.ok(&["account", "disable", &ids[2]]);

    let before = env.ok(&["usage"]);
    env.settings()
        .bind(|| insta::assert_snapshot!("usage_before_refresh", before));

    let o = env.cmd().args(["usage", "--refresh"]).output().unwrap();
    let (stdout, stderr) = texts(&o);
    // acct-2's poll failed: the figures are shown, and the exit code says so (acct-3 is
    // disabled: not polled, not a failure).
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 of 2 usage polls failed"), "{stderr}");
    // No terminal: no progress bar on stderr.
    assert!(!stderr.contains("polling"), "{stderr}");
    env.settings()
        .bind(|| insta::assert_snapshot!("usage_refresh", stdout));

    // The readings were stored: a later `usage` (another process) shows them.
    let after = env.ok(&["usage"]);
    assert!(after.contains("█████░░░░░  48%"), "{after}");

    let o = env
        .cmd()
        .args(["usage", "--refresh", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let a = &rows[0];
    assert_eq!(a["id"], ids[0].as_str());
    assert_eq!(a["five_hour"]["used_percent"], 48.0);
    assert_eq!(a["five_hour"]["source"], "poll");
    assert_eq!(a["five_hour"]["stale"], false);
    assert_eq!(a["weekly"]["window_minutes"], 10080);
    assert_eq!(a["refresh"]["ok"], true);
    assert_eq!(rows[1]["refresh"]["ok"], false);
    assert_eq!(rows[1]["refresh"]["error_kind"], "status");
    assert_eq!(rows[2]["refresh"]["error_kind"], "skipped");
    assert_eq!(rows[2]["status"], "disabled");
    // Without --refresh, `refresh` is null.
    assert!(env.json(&["usage"])[0]["refresh"].is_null());
}

#[test]
fn an_empty_pool_says_what_to_do() {
    let env = Env::new();
    let o = env.cmd().args(["usage"]).output().unwrap();
    assert!(o.status.success());
    let (stdout, stderr) = texts(&o);
    assert_eq!(stdout, "");
    assert!(stderr.contains("codexpool account login"), "{stderr}");
    assert_eq!(env.json(&["usage", "--refresh"]), serde_json::json!([]));
}

/// A label (from an imported file, the RPC, a person) with terminal escapes and a newline is
/// written out, never sent to the terminal, in every place it is printed.
#[test]
fn control_characters_in_a_label_never_reach_the_terminal() {
    let env = Env::new();
    let id = env.add_accounts(&["acct-1"]).remove(0);
    let label = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\nfake-line";
    let mut outputs = vec![env.ok(&["account", "update", &id, "--label", label])];
    outputs.push(env.ok(&["usage"]));
    outputs.push(env.ok(&["account", "list"]));
    outputs.push(env.ok(&["key", "create", "--name", label]));
    outputs.push(env.ok(&["key", "list"]));
    for out in outputs {
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(!out.lines().any(|l| l.starts_with("fake-line")), "{out}");
        assert!(out.contains(r"evil\u{1b}]0;pwned"), "{out}");
    }
}

/// Ctrl-C while a poll waits for a token refresh stops the command, not the refresh: the issuer
/// may have rotated the refresh token already, and the process exits once the new one is saved.
#[test]
fn a_signal_during_a_token_refresh_waits_for_the_new_token() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    std::thread::sleep(Duration::from_millis(1100));
    env.fake.expire_access_token("acct-1");
    env.fake.refresh_delay(Duration::from_secs(2));
    let child = env.spawn(&["usage", "--refresh"], &[]);
    assert!(
        env.fake
            .wait_until(Duration::from_secs(20), |f| f.refreshes_held() == 1)
    );
    signal(&child, "INT");
    let (status, stderr) = finish(child, 30);
    assert_eq!(status.code(), Some(1), "{status:?}: {stderr}");
    assert!(stderr.contains("SIGINT: stopping once"), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    assert_eq!(env.fake.refresh_count("acct-1"), 1);
    // The rotated refresh token was saved: the sign-in refreshes again (the old one would be
    // refused as reused, and the account signed out).
    env.fake.refresh_delay(Duration::ZERO);
    env.fake.expire_access_token("acct-1");
    env.ok(&["usage", "--refresh"]);
    assert_eq!(env.fake.refresh_count("acct-1"), 2);
    let list = env.json(&["account", "list"]);
    assert_eq!(list[0]["status"], "active", "{list}");

    // A second signal does not wait: the process ends at once, saying what may be lost.
    env.fake.refresh_delay(Duration::from_secs(5));
    env.fake.expire_access_token("acct-1");
    let mut child = env.spawn(&["usage", "--refresh"], &[]);
    let mut stderr = Lines::new(child.stderr.take().unwrap());
    assert!(
        env.fake
            .wait_until(Duration::from_secs(20), |f| f.refreshes_held() == 2)
    );
    signal(&child, "INT");
    stderr.find(|l| l.contains("SIGINT: stopping once").then_some(()));
    signal(&child, "INT");
    let (status, _) = finish(child, 3);
    let stderr = stderr.rest();
    assert_eq!(status.code(), Some(1), "{status:?}: {stderr}");
    assert!(
        stderr.contains("before what was under way was saved"),
        "{stderr}"
    );
}

/// A running server that found an account exhausted reads a refresh's figures before it is asked
/// for its view: the account is usable again in the same command's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reaches_the_running_server_before_its_view_is_shown() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("laptop");
    let (url, child) = env.serve(&[("CODEXPOOL_DISABLE_POLLING", "1")]);
    env.fake.push_reply(
        "acct-1",
        codexpool_testkit::Reply::UsageLimit429 {
            resets_in_secs: 3600,
        },
    );
    assert_eq!(crate::support::chat_status(&url, &secret).await, 429);
    let before = env.json(&["usage"]);
    assert_eq!(before[0]["usable"], false, "{before}");
    env.fake.set_usage("acct-1", FakeUsage::new(12.0, 30.0));
    let after = env.json(&["usage", "--refresh"]);
    let a = &after[0];
    assert_eq!(a["runtime_source"], "server", "{after}");
    assert_eq!(a["refresh"]["ok"], true, "{after}");
    assert_eq!(
        (&a["usable"], &a["exhausted_until"]),
        (&serde_json::json!(true), &serde_json::Value::Null),
        "{after}"
    );
    crate::support::stop(child);
}
