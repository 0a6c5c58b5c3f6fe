//! `account import|export|list|update|enable|disable|remove`.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;

use codexpool_testkit::{FakeAccount, FakeRefreshFailure, FakeUsage};
use serde_json::{Value, json};

use crate::support::{Env, texts};

#[test]
fn import_a_folder_then_list_and_organise() {
    let env = Env::new();
    let dir = env.path().join("homes");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["acct-a", "acct-b"] {
        env.fake
            .add_account(FakeAccount::new(n).email(format!("{n}@example.com")));
        std::fs::write(
            dir.join(format!("{n}.json")),
            serde_json::to_vec(&env.fake.auth_json(n)).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("zz-broken.json"), "{not json").unwrap();
    let o = env
        .cmd()
        .args(["account", "import", "homes"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    // The Codex CLI shares the refresh token of an auth.json: say so, once per file.
    assert!(stderr.contains("single-use refresh token"), "{stderr}");
    env.settings()
        .bind(|| insta::assert_snapshot!("account_import_folder", stdout));

    let ids: Vec<String> = env
        .json(&["account", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);

    let out = env.ok(&[
        "account",
        "update",
        &ids[1][..6],
        "--label",
        "Work",
        "--group",
        "team",
        "--tag",
        "ci",
        "--tag",
        "fast",
        "--note",
        "the fast one",
        "--sort",
        "-1",
    ]);
    assert!(
        out.starts_with(&format!("Updated account {} Work", ids[1])),
        "{out}"
    );
    env.ok(&["account", "disable", &ids[0]]);
    env.fake.set_usage("acct-b", FakeUsage::new(12.0, 91.0));
    env.ok(&["usage", "--refresh"]);
    let list = env.ok(&["account", "list"]);
    env.settings()
        .bind(|| insta::assert_snapshot!("account_list", list));

    // Filters.
    let only = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["account", "list"];
        all.extend_from_slice(args);
        env.json(&all)
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["label"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(only(&["--group", "team"]), ["Work"]);
    assert_eq!(only(&["--tag", "fast"]), ["Work"]);
    assert_eq!(only(&["--status", "disabled"]), ["acct-a@example.com"]);
    assert_eq!(only(&["--status", "needs-login"]), Vec::<String>::new());
    // The words the tables show are taken too.
    assert_eq!(only(&["--status", "needs-sign-in"]), Vec::<String>::new());
    assert_eq!(only(&["--status", "deactivated"]), Vec::<String>::new());

    // The JSON shape: the account, its usage and runtime; never a token.
    let v = env.json(&["account", "list", "--group", "team"]);
    let a = &v[0];
    assert_eq!(a["id"], ids[1].as_str());
    assert_eq!(a["tags"], serde_json::json!(["ci", "fast"]));
    assert_eq!(
        (a["sort"].as_i64(), a["status"].as_str()),
        (Some(-1), Some("active"))
    );
    assert!(a["usage"].as_object().unwrap().contains_key("five_hour"));
    assert_eq!(a["runtime"]["usable"], true);
    let text = v.to_string();
    let tokens = env.fake.current_tokens("acct-b");
    assert!(!text.contains(&tokens.refresh_token) && !text.contains(&tokens.access_token));

    // Clearing.
    let cleared = env.json(&[
        "account",
        "update",
        &ids[1],
        "--group",
        "",
        "--note",
        "",
        "--clear-tags",
    ]);
    assert_eq!(
        (cleared["group"].clone(), cleared["note"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(cleared["tags"], serde_json::json!([]));

    let enabled = env.json(&["account", "enable", &ids[0][..5]]);
    assert_eq!(enabled["status"], "active");

    // remove asks nothing and says what it removed.
    let out = env.ok(&["account", "remove", &ids[0]]);
    assert_eq!(
        out.trim(),
        format!("Removed account {} acct-a@example.com (plus)", ids[0])
    );
    let removed = env.json(&["account", "rm", &ids[1]]);
    assert_eq!(removed["label"], "Work");
    assert_eq!(env.json(&["account", "list"]), serde_json::json!([]));
    let o = env.cmd().args(["account", "list"]).output().unwrap();
    assert!(texts(&o).1.contains("No accounts yet"));
}

#[test]
fn import_from_stdin_and_reimport_is_unchanged() {
    let env = Env::new();
    env.fake.add_account(FakeAccount::new("acct-s"));
    let doc = serde_json::to_vec(&env.fake.auth_json("acct-s")).unwrap();
    let v = env
        .cmd()
        .args(["account", "import", "-", "--json"])
        .write_stdin(doc.clone())
        .output()
        .unwrap();
    assert!(v.status.success());
    let v: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(
        (
            v["imported"].as_u64(),
            v["updated"].as_u64(),
            v["skipped"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );
    let r = &v["results"][0];
    assert_eq!(
        (r["source"].as_str(), r["status"].as_str()),
        (Some("stdin"), Some("imported"))
    );
    assert!(r["warning"].as_str().unwrap().contains("Codex CLI"));
    // The same file again: nothing to write, not duplicated, and no error.
    let o = env
        .cmd()
        .args(["account", "import", "-", "--json"])
        .write_stdin(doc.clone())
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["updated"].as_u64(), v["unchanged"].as_u64()),
        (Some(0), Some(1)),
        "{v}"
    );
    assert_eq!(v["results"][0]["status"], "unchanged");
    assert_eq!(
        v["results"][0]["reason"],
        "already up to date (the stored tokens are this file's)"
    );
    let o = env
        .cmd()
        .args(["account", "import", "-"])
        .write_stdin(doc)
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("unchanged") && stdout.contains("already up to date"),
        "{stdout}"
    );
    assert!(!stdout.contains("tokens replaced"), "{stdout}");
    assert!(stdout.trim_end().ends_with("\n1 unchanged"), "{stdout}");
    assert_eq!(env.json(&["account", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn export_to_stdout_and_to_a_private_file_round_trips() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-x", "acct-y"]);
    env.ok(&["account", "update", &ids[0], "--group", "g1", "--tag", "t"]);

    let doc = env.json(&["account", "export"]);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["accounts"].as_array().unwrap().len(), 2);
    let tokens = env.fake.current_tokens("acct-x");
    assert!(
        doc.to_string().contains(&tokens.refresh_token),
        "export carries the tokens"
    );
    // Without --json too (the export is JSON either way), filtered.
    let only_g1: Value =
        serde_json::from_str(&env.ok(&["account", "export", "--group", "g1"])).unwrap();
    assert_eq!(only_g1["accounts"].as_array().unwrap().len(), 1);
    // `-o -` is stdout (as `import -` is stdin), not a file named `-`.
    let dash: Value = serde_json::from_str(&env.ok(&["account", "export", "-o", "-"])).unwrap();
    assert_eq!(dash["accounts"].as_array().unwrap().len(), 2);
    assert!(!env.path().join("-").exists());
    // A filter nothing matches: an empty document, and a note that says so.
    let (code, out, err) = env.run(&["account", "export", "--group", "nosuch"]);
    assert_eq!(code, 0, "{err}");
    let none: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(none["accounts"], serde_json::json!([]));
    assert!(err.contains("No account matches these filters"), "{err}");

    // Over a file others may read, the export is still the owner's only from its first byte.
    let file = env.path().join("backup.json");
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = env.ok(&["account", "export", "-o", file.to_str().unwrap()]);
    assert!(out.contains("Exported 2 accounts to"), "{out}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v = env.json(&["account", "export", "-o", file.to_str().unwrap()]);
    assert_eq!(v["accounts"], 2);
    // An export of nothing does not replace it (a mistyped --db or filter would empty a
    // backup); into a new file it is written, as to stdout.
    let backup = std::fs::read(&file).unwrap();
    let export_none_to = |path: &std::path::Path| {
        env.run(&[
            "account",
            "export",
            "--group",
            "nosuch",
            "-o",
            path.to_str().unwrap(),
        ])
    };
    let (code, _, err) = export_none_to(&file);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not replaced by an empty export"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), backup);
    let fresh = env.path().join("fresh.json");
    let (code, _, err) = export_none_to(&fresh);
    assert_eq!(code, 0, "{err}");
    let none: Value = serde_json::from_slice(&std::fs::read(&fresh).unwrap()).unwrap();
    assert_eq!(none["accounts"], serde_json::json!([]));
    // Through a link: into the file it leads to (owner-only too), the link left a link.
    let link = env.path().join("backup-link.json");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.ok(&["account", "export", "-o", link.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let through: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(through["accounts"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Through a link to no file yet: the file is made, owner-only.
    let target = env.path().join("new-target.json");
    let dangling = env.path().join("dangling-link.json");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    env.ok(&["account", "export", "-o", dangling.to_str().unwrap()]);
    let made: Value = serde_json::from_slice(&std::fs::read(&target).unwrap()).unwrap();
    assert_eq!(made["accounts"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Not through another user's link in a folder that is not theirs (a shared folder): it
    // could lead the tokens anywhere. (Making a link another user's takes root.)
    let planted = env.path().join("planted-link.json");
    let lure = env.path().join("lure.json");
    std::os::unix::fs::symlink(&lure, &planted).unwrap();
    if std::os::unix::fs::lchown(&planted, Some(54321), None).is_ok() {
        let (code, _, err) = env.run(&["account", "export", "-o", planted.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("a link another user made"), "{err}");
        assert!(!lure.exists());
    }
    // Into a pipe (`-o >(gpg -e …)`, `-o /dev/stdout`): what reads it gets the export.
    let fifo = env.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    env.ok(&["account", "export", "-o", fifo.to_str().unwrap()]);
    let piped: Value = serde_json::from_slice(&reader.join().unwrap()).unwrap();
    assert_eq!(piped["accounts"].as_array().unwrap().len(), 2);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // Into a fresh database: both come back with what a person set.
    let other = env.path().join("other.db");
    let o = env
        .cmd()
        .args([
            "--db",
            other.to_str().unwrap(),
            "account",
            "import",
            file.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", texts(&o).1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["imported"], 2);
    let o = env
        .cmd()
        .args([
            "--db",
            other.to_str().unwrap(),
            "account",
            "list",
            "--json",
            "--group",
            "g1",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["tags"], serde_json::json!(["t"]));
}

#[test]
fn importing_a_file_again_after_a_refresh_is_not_an_error() {
    let env = Env::new();
    let file = env.path().join("auth.json");
    env.fake
        .add_account(codexpool_testkit::FakeAccount::new("acct-r"));
    std::fs::write(&file, env.fake.auth_json("acct-r").to_string()).unwrap();
    env.ok(&["account", "import", file.to_str().unwrap()]);
    // The server-side token expires; a usage poll refreshes it (new tokens in the database).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.fake.expire_access_token("acct-r");
    env.ok(&["usage", "--refresh"]);
    assert_eq!(env.fake.refresh_count("acct-r"), 1);

    // An "import on boot" script runs again with the old file: nothing to do, exit 0.
    let out = env.ok(&["account", "import", file.to_str().unwrap()]);
    assert!(out.contains("unchanged"), "{out}");
    assert!(out.trim_end().ends_with("\n1 unchanged"), "{out}");
    let v = env.json(&["account", "import", file.to_str().unwrap()]);
    assert_eq!(v["unchanged"], 1);
    assert_eq!(v["results"][0]["status"], "unchanged");
    assert!(v["results"][0]["account_id"].is_string());
    // And the stored sign-in still works.
    env.fake.expire_access_token("acct-r");
    env.ok(&["usage", "--refresh"]);
    assert_eq!(env.fake.refresh_count("acct-r"), 2);
}

#[test]
fn take_over_leaves_codexpool_the_only_live_refresh_token() {
    let env = Env::new();
    env.fake
        .add_account(codexpool_testkit::FakeAccount::new("acct-t"));
    let file = env.path().join("auth.json");
    std::fs::write(&file, env.fake.auth_json("acct-t").to_string()).unwrap();
    let cli_copy = env.fake.current_tokens("acct-t").refresh_token;

    // Without --take-over: shared, and the warning says how to take over.
    let o = env
        .cmd()
        .args(["account", "import", file.to_str().unwrap()])
        .output()
        .unwrap();
    let (_, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("--take-over"), "{stderr}");
    assert_eq!(env.fake.refresh_count("acct-t"), 0);

    let o = env
        .cmd()
        .args([
            "account",
            "import",
            "--take-over",
            file.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["results"][0]["codex_cli"], true);
    // Imported before, the file's tokens were the stored ones; the take-over replaced them.
    assert_eq!(
        (&v["results"][0]["status"], &v["results"][0]["taken_over"]),
        (&Value::from("updated"), &Value::from(true)),
        "{v}"
    );
    assert!(
        v["results"][0]["warning"]
            .as_str()
            .unwrap()
            .contains("codex login"),
        "{v}"
    );
    // One refresh rotated the token: the Codex CLI's copy is spent, codexpool's is live.
    assert_eq!(env.fake.refresh_count("acct-t"), 1);
    assert_ne!(env.fake.current_tokens("acct-t").refresh_token, cli_copy);
    env.fake.expire_access_token("acct-t");
    env.ok(&["usage", "--refresh"]);
    assert_eq!(env.fake.refresh_count("acct-t"), 2);
}

/// A take-over whose refreshes fail still shows the whole report: every account was imported,
/// the others were taken over (their warnings say so), also the ones after a failure; each
/// failed result says why; then the command exits 1 naming every failed one, with what to do:
/// a sign-in the issuer declared dead needs a new one, a refresh that failed for a while may be
/// tried again.
#[test]
fn a_failed_take_over_still_prints_the_report() {
    let env = Env::new();
    let dir = env.path().join("homes");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["acct-a", "acct-b", "acct-c", "acct-d"] {
        env.fake.add_account(FakeAccount::new(n));
        std::fs::write(
            dir.join(format!("{n}.json")),
            env.fake.auth_json(n).to_string(),
        )
        .unwrap();
    }
    env.fake.revoke_sessions("acct-b");
    env.fake
        .fail_next_refresh("acct-c", FakeRefreshFailure::ServerError(503));
    let o = env
        .cmd()
        .args(["--json", "account", "import", "--take-over"])
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["imported"], 4, "{v}");
    let taken: Vec<&Value> = (0..4).map(|i| &v["results"][i]["taken_over"]).collect();
    assert_eq!(taken, [true, false, false, true], "{v}");
    let failed: Vec<bool> = (0..4)
        .map(|i| v["results"][i]["take_over_error"].is_string())
        .collect();
    assert_eq!(failed, [false, true, true, false], "{v}");
    assert!(
        v["results"][0]["warning"]
            .as_str()
            .unwrap()
            .starts_with("took over"),
        "{v}"
    );
    let failed = &v["take_over_error"];
    assert!(
        failed["source"].as_str().unwrap().ends_with("acct-b.json"),
        "{v}"
    );
    assert_eq!(failed["account_id"], v["results"][1]["account_id"], "{v}");
    assert!(
        stderr.contains("could not take over 2 sign-ins"),
        "{stderr}"
    );
    assert!(stderr.contains("acct-b.json: "), "{stderr}");
    assert!(stderr.contains("acct-c.json: "), "{stderr}");
    assert!(stderr.contains("2 sign-ins were taken over"), "{stderr}");
    let warning = |i: usize| v["results"][i]["warning"].as_str().unwrap().to_string();
    assert!(warning(1).contains("no longer valid"), "{v}");
    assert!(warning(2).contains("still shares its sign-in"), "{v}");
    let dead: Vec<&Value> = (0..4).map(|i| &v["results"][i]["sign_in_dead"]).collect();
    assert_eq!(
        dead,
        [&Value::Null, &json!(true), &Value::Null, &Value::Null]
    );
    assert!(
        stderr.contains("those whose sign-in is no longer valid need a new one"),
        "{stderr}"
    );
    assert!(stderr.contains("again later"), "{stderr}");
    assert_eq!(env.fake.refresh_count("acct-a"), 1);
    assert_eq!(
        env.fake.refresh_count("acct-d"),
        1,
        "tried after the failures"
    );
    assert_eq!(env.json(&["account", "list"]).as_array().unwrap().len(), 4);

    // Again: acct-c's refresh works now, acct-b's sign-in stays dead and is named alone, with
    // nothing to try again.
    let o = env
        .cmd()
        .args(["account", "import", "--take-over"])
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(error.contains("could not take over "), "{stderr}");
    assert!(error.contains("acct-b.json: "), "{stderr}");
    assert!(!error.contains("acct-c.json"), "{stderr}");
    assert!(stderr.contains("took over ") && stderr.contains("acct-c.json"));
    assert!(stderr.contains("1 sign-in was taken over"), "{stderr}");
    assert!(
        stderr.contains("sign-ins are no longer valid: sign in again"),
        "{stderr}"
    );
    assert!(!stderr.contains("again later"), "{stderr}");
    assert_eq!(env.fake.refresh_count("acct-c"), 2);
}

/// The database refusing the accounts (a full disk) is not "skipped" and not a success: each
/// such result says `failed` with the database's reason, and the command exits 1.
#[test]
fn an_import_the_database_refuses_fails() {
    let env = Env::new();
    env.make_db();
    let db = rusqlite::Connection::open(env.db()).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full BEFORE INSERT ON accounts BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    env.fake.add_account(FakeAccount::new("acct-f"));
    let doc = serde_json::to_vec(&env.fake.auth_json("acct-f")).unwrap();
    let out = env
        .cmd()
        .args(["account", "import", "-", "--json"])
        .write_stdin(doc.clone())
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (v["failed"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    assert_eq!(v["results"][0]["status"], "failed");
    assert!(
        v["results"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{v}"
    );
    assert!(
        stderr.contains("the database refused 1 of the accounts"),
        "{stderr}"
    );

    // Quiet, the error still says so; once the database is fixed the same import works.
    let out = env
        .cmd()
        .args(["-q", "account", "import", "-"])
        .write_stdin(doc.clone())
        .output()
        .unwrap();
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("disk is full"), "{stderr}");
    db.execute_batch("DROP TRIGGER full;").unwrap();
    let v = env
        .cmd()
        .args(["account", "import", "-", "--json"])
        .write_stdin(doc)
        .output()
        .unwrap();
    assert!(v.status.success());
    let v: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["imported"], 1, "{v}");
}

/// Enabling an account whose sign-in died turns it on (a person may know better than the last
/// failure) and says that it is only tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_a_dead_sign_in_says_it_is_only_tried_again() {
    use codexpool_core::{AccountPatch, AccountStatus};
    let env = Env::new();
    let ids = env.add_accounts(&["acct-d"]);
    let pool = env.pool().await;
    let dead = AccountPatch::default().status(
        AccountStatus::NeedsLogin,
        Some("the refresh token was already used".into()),
    );
    pool.accounts().update(&ids[0], dead).await.unwrap();
    drop(pool);
    let (code, out, err) = env.run(&["account", "enable", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Enabled account"), "{out}");
    assert!(
        err.contains(
            "it was needs_login (the refresh token was already used): requests try it again"
        ),
        "{err}"
    );
    // An account that was not dead: nothing to warn of.
    let (code, _, err) = env.run(&["account", "enable", &ids[0]]);
    assert_eq!((code, err.as_str()), (0, ""));
}
