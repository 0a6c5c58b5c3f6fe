//! `key create|list|update|enable|disable|delete`.

use serde_json::Value;

use crate::support::{Env, texts};

#[test]
fn create_shows_the_secret_once_with_a_ready_snippet() {
    let env = Env::new();
    let o = env
        .cmd()
        .args([
            "key",
            "create",
            "--name",
            "laptop",
            "--model",
            "gpt-5-codex",
            "--effort",
            "high",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let (stdout, stderr) = texts(&o);
    assert_eq!(
        stdout.matches("sk-cp-").count(),
        1,
        "the secret appears once: {stdout}"
    );
    assert!(stderr.contains("stored hashed"), "{stderr}");
    env.settings()
        .bind(|| insta::assert_snapshot!("key_create", stdout));

    // The service address follows SERVICE_ADDR.
    let o = env
        .cmd()
        .env("CODEXPOOL_SERVICE_ADDR", "0.0.0.0:9999")
        .args(["key", "create", "--name", "lan"])
        .output()
        .unwrap();
    assert!(
        texts(&o)
            .0
            .contains("export OPENAI_BASE_URL=http://127.0.0.1:9999/v1")
    );

    // Listing never shows a secret.
    let list = env.ok(&["key", "list"]);
    assert!(!regex_like_secret(&list), "{list}");
    env.settings()
        .bind(|| insta::assert_snapshot!("key_list", list));
}

fn regex_like_secret(text: &str) -> bool {
    text.split_whitespace()
        .any(|w| w.starts_with("sk-cp-") && w.len() >= 6 + 48)
}

#[test]
fn json_shapes_and_the_lifecycle() {
    let env = Env::new();
    let v = env.json(&[
        "key",
        "create",
        "--name",
        "ci",
        "--allow-model",
        "gpt-5",
        "--allow-model",
        "gpt-5-codex",
        "--allow-group",
        "team",
        // A group name as accounts take it, spaces and all (trimmed).
        "--allow-group",
        " team a ",
        "--expires",
        "30d",
    ]);
    let secret = v["secret"].as_str().unwrap();
    assert!(secret.starts_with("sk-cp-") && secret.len() == 54);
    assert_eq!(v["base_url"], "http://127.0.0.1:48760/v1");
    let key = &v["key"];
    let id = key["id"].as_str().unwrap().to_string();
    assert_eq!(key["name"], "ci");
    assert_eq!(
        key["allowed_models"],
        serde_json::json!(["gpt-5", "gpt-5-codex"])
    );
    assert_eq!(key["allowed_groups"], serde_json::json!(["team", "team a"]));
    assert_eq!(key["enabled"], true);
    assert!(key["expires_at"].is_string());
    assert!(
        key["hint"]
            .as_str()
            .unwrap()
            .ends_with(&secret[secret.len() - 4..])
    );
    assert!(!key.as_object().unwrap().contains_key("secret_hash"));

    // A bound model outside the allowed ones: said in the flags' words.
    let args = [
        "key",
        "create",
        "--name",
        "x",
        "--model",
        "o3",
        "--allow-model",
        "gpt-5",
    ];
    let (code, _, stderr) = env.run(&args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("hint: a key's --model must be one of its --allow-model"),
        "{stderr}"
    );

    let list = env.json(&["key", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(secret),
        "list never shows the secret"
    );

    // update: prefix ids, replace and clear.
    let u = env.json(&[
        "key",
        "update",
        &id[..4],
        "--name",
        "ci-2",
        "--model",
        "gpt-5",
        "--clear-allowed-models",
        "--effort",
        "low",
        "--expires",
        "never",
    ]);
    assert_eq!(u["name"], "ci-2");
    assert_eq!(u["model"], "gpt-5");
    assert_eq!(u["allowed_models"], serde_json::json!([]));
    assert_eq!(u["reasoning_effort"], "low");
    assert_eq!(u["expires_at"], Value::Null);
    let u = env.json(&[
        "key",
        "update",
        &id,
        "--model",
        "",
        "--clear-effort",
        "--clear-allowed-groups",
    ]);
    assert_eq!(
        (u["model"].clone(), u["reasoning_effort"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(u["allowed_groups"], serde_json::json!([]));

    assert_eq!(env.json(&["key", "disable", &id])["enabled"], false);
    let list = env.ok(&["key", "list"]);
    assert!(list.contains("disabled"), "{list}");
    assert_eq!(env.json(&["key", "enable", &id])["enabled"], true);
    let out = env.ok(&["key", "delete", &id]);
    assert!(
        out.starts_with(&format!("Deleted key {id} (ci-2, sk-cp-…")),
        "{out}"
    );
    assert_eq!(env.json(&["key", "list"]), serde_json::json!([]));
    let o = env.cmd().args(["key", "list"]).output().unwrap();
    assert!(texts(&o).1.contains("No keys yet"));
}

#[test]
fn expiry_in_the_past_or_too_far_ahead_is_a_usage_error() {
    let env = Env::new();
    let o = env
        .cmd()
        .args(["key", "create", "--name", "old", "--expires", "2001-01-01"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let (_, stderr) = texts(&o);
    assert!(
        stderr.starts_with(
            "error: invalid value '2001-01-01' for '--expires <WHEN>': the time must be in the \
             future"
        ),
        "{stderr}"
    );
    let o = env
        .cmd()
        .args(["key", "create", "--name", "far", "--expires", "9999-12-31"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let (_, stderr) = texts(&o);
    assert!(
        stderr.contains("'--expires <WHEN>'") && stderr.contains("at most 100 years"),
        "{stderr}"
    );
    assert!(!env.db().exists(), "a usage error runs nothing");
    let id = env.json(&["key", "create", "--name", "k"])["key"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = env
        .cmd()
        .args(["key", "update", &id, "--expires", "2001-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let (_, stderr) = texts(&o);
    assert!(
        stderr.contains("'--expires <WHEN>'") && stderr.contains("must be in the future"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_says_whether_a_key_is_active_disabled_or_expired() {
    use std::sync::Arc;

    use codexpool_core::keys::NewKey;
    use codexpool_core::{Config, ManualClock, Pool, Timestamp};

    let env = Env::new();
    // A key that expired an hour ago: made by a pool whose clock stands two hours back.
    let past = Timestamp::now().minus(std::time::Duration::from_secs(7200));
    let config = Config::default()
        .with("DB_PATH", env.db().to_str().unwrap())
        .unwrap();
    let pool = Pool::builder(config)
        .clock(Arc::new(ManualClock::new(past)))
        .open()
        .await
        .unwrap();
    let mut old = NewKey::named("old");
    old.expires_at = Some(past.plus(std::time::Duration::from_secs(3600)));
    pool.keys().create(old).await.unwrap();
    pool.flush().await.unwrap();
    drop(pool);
    env.json(&["key", "create", "--name", "live"]);
    let off = env.json(&["key", "create", "--name", "off"])["key"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let disabled = env.json(&["key", "disable", &off]);
    assert_eq!(disabled["status"], "disabled");

    let list = env.json(&["key", "list"]);
    let status = |name: &str| {
        let k = list
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap();
        (k["enabled"].clone(), k["status"].clone())
    };
    assert_eq!(status("old"), (Value::Bool(true), "expired".into()));
    assert_eq!(status("live"), (Value::Bool(true), "active".into()));
    assert_eq!(status("off"), (Value::Bool(false), "disabled".into()));
    let table = env.ok(&["key", "list"]);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap()
            .to_string()
    };
    assert!(line("old").contains(" expired "), "{table}");
    assert!(line("live").contains(" active "), "{table}");
    assert!(line("off").contains(" disabled "), "{table}");

    // Enabling an expired key does not make it usable: said so, with the way out.
    let o = env.cmd().args(["key", "enable", "old"]).output().unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.starts_with("Enabled key "), "{stdout}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("expired at")
            && stderr.contains("still refused")
            && stderr.contains("--expires"),
        "{stderr}"
    );
    // The confirmation says what the key is now, an expiry taken away too.
    let out = env.ok(&["key", "update", "old", "--expires", "never"]);
    assert!(out.trim_end().ends_with(": no expiry"), "{out}");
    let out = env.ok(&["key", "update", "old", "--expires", "7d"]);
    assert!(out.contains(": expires "), "{out}");
    env.ok_silently(&["key", "update", "old", "--expires", "never"]);
    env.ok_silently(&["key", "enable", "live"]);
}

/// A secret nobody could read is a key nobody can use: with its output closed (`| true`),
/// `key create` fails and takes the key back, in every output mode.
#[test]
fn a_secret_that_cannot_be_written_leaves_no_key() {
    let env = Env::new();
    for mode in [None, Some("--json"), Some("-q")] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(crate::support::BIN);
        cmd.env_clear()
            .envs(env.vars())
            .current_dir(env.path())
            .arg("--db")
            .arg(env.db())
            .args(mode)
            .args(["key", "create", "--name", "lost"])
            .stdout(writer)
            .stderr(std::process::Stdio::piped());
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{mode:?}: {stderr}");
        assert!(
            stderr.contains("could not be written") && stderr.contains("deleted again"),
            "{mode:?}: {stderr}"
        );
        assert!(!stderr.contains("sk-cp-"), "{stderr}");
    }
    assert_eq!(env.json(&["key", "list"]), serde_json::json!([]));
}

/// A key whose groups no account is in gets 503 for every request: said when it is made or
/// changed, and not once an account is in one of them.
#[test]
fn a_key_for_groups_without_accounts_is_warned_of() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1"]);
    let o = env
        .cmd()
        .args(["key", "create", "--name", "k", "--allow-group", "team"])
        .output()
        .unwrap();
    let (_, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("no active account is in group team"),
        "{stderr}"
    );
    // An account of the group that cannot serve does not count.
    env.ok(&["account", "update", &ids[0], "--group", "team"]);
    env.ok(&["account", "disable", &ids[0]]);
    let (_, _, stderr) = env.run(&["key", "update", "k", "--name", "k2"]);
    assert!(
        stderr.contains("no active account is in group team"),
        "{stderr}"
    );
    // Nor is a disabled key warned of: it is refused anyway.
    env.ok_silently(&["key", "disable", "k2"]);
    env.ok(&["key", "enable", "k2"]);
    env.ok(&["account", "enable", &ids[0]]);
    env.ok_silently(&[
        "key",
        "update",
        "k2",
        "--allow-group",
        "team",
        "--allow-group",
        "other",
    ]);
}

/// A name given twice is said to be shared when it happens, not first when a later command
/// finds it ambiguous.
#[test]
fn a_name_another_key_has_is_warned_of() {
    let env = Env::new();
    env.ok_silently(&["-q", "key", "create", "--name", "laptop"]);
    let first = env.json(&["key", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = env
        .cmd()
        .args(["key", "create", "--name", "laptop"])
        .output()
        .unwrap();
    let (_, err) = texts(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("another key is named laptop too ({first})")),
        "{err}"
    );
    // Renamed onto a taken name too; a name of its own says nothing.
    let (_, _, err) = env.run(&["key", "create", "--name", "desk"]);
    assert!(!err.contains("named"), "{err}");
    let (code, _, err) = env.run(&["key", "update", "desk", "--name", "laptop"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 other keys are named laptop too"), "{err}");
}
