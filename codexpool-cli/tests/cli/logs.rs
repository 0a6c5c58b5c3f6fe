//! `logs [--limit] [--key] [--account] [--follow]`.

use codexpool_core::request_log::{RequestLogEntry, RequestLogQuery};
use codexpool_core::usage::TokenCounts;
use codexpool_core::{Pool, Timestamp};

use crate::support::{Env, Lines, finish, key_id, signal};

fn row(n: i64, key: &str, accounts: &[&str], status: u16) -> RequestLogEntry {
    let mut e = RequestLogEntry::new(
        format!("req-{n}"),
        Timestamp::from_secs(1_790_000_000 + n),
        "/v1/chat/completions",
    );
    e.key_id = Some(key.to_string());
    e.accounts_tried = accounts.iter().map(|a| a.to_string()).collect();
    e.account_id = (status < 400).then(|| accounts.last().unwrap().to_string());
    e.model = Some("gpt-5-codex".into());
    e.status = status;
    e.stream = n % 2 == 0;
    e.latency_ms = 1200 + n as u64;
    e.ttfb_ms = Some(300);
    e.tokens = (status < 400).then_some(TokenCounts {
        input_tokens: 120,
        cached_tokens: 0,
        output_tokens: 45,
        reasoning_tokens: 0,
    });
    e.error_class = (status >= 400).then(|| "usage_limit".to_string());
    e
}

async fn record(pool: &Pool, rows: Vec<RequestLogEntry>) {
    for r in rows {
        pool.request_log().record(r);
    }
    pool.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_table_filters_and_json() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1", "acct-2"]);
    let pool = env.pool().await;
    let k1 = key_id(&pool, "laptop").await;
    let k2 = key_id(&pool, "ci").await;
    record(
        &pool,
        vec![
            row(1, &k1, &[&ids[0]], 200),
            row(2, &k2, &[&ids[0], &ids[1]], 200),
            row(3, &k1, &[&ids[0], &ids[1]], 429),
        ],
    )
    .await;

    let table = env.ok(&["logs"]);
    env.settings()
        .bind(|| insta::assert_snapshot!("logs", table));

    let v = env.json(&["logs"]);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["request_id"], "req-1", "oldest first");
    assert_eq!(rows[2]["status"], 429);
    assert_eq!(
        rows[1]["accounts_tried"],
        serde_json::json!([ids[0], ids[1]])
    );
    assert_eq!(rows[0]["tokens"]["output_tokens"], 45);

    let only = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        env.json(&all)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(only(&["--limit", "1"]), ["req-3"]);
    assert_eq!(only(&["--key", &k2[..5]]), ["req-2"]);
    assert_eq!(only(&["--account", &ids[1][..5]]), ["req-2", "req-3"]);
    assert_eq!(only(&["--account", &ids[0], "-n", "2"]), ["req-2", "req-3"]);

    // A deleted key's rows can still be found by its full id.
    env.ok(&["key", "delete", &k2]);
    assert_eq!(only(&["--key", &k2]), ["req-2"]);
    // … and the table says it is gone rather than showing its id as if it were a name.
    let out = env.ok(&["logs", "--key", &k2]);
    assert!(out.contains(&format!("{k2} (deleted)")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_new_rows_until_ctrl_c() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1"]);
    let pool = env.pool().await;
    let k = key_id(&pool, "laptop").await;
    record(&pool, vec![row(1, &k, &[&ids[0]], 200)]).await;

    let mut child = env.spawn(&["logs", "--follow"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    lines.find(|l| l.starts_with("TIME (UTC)").then_some(()));
    lines.find(|l| l.contains("laptop").then_some(()));
    // A key made by another process after `logs` started is named too.
    let k2 = key_id(&pool, "late-key").await;
    record(&pool, vec![row(2, &k2, &[&ids[0]], 429)]).await;
    let line = lines.find(|l| l.contains("429").then(|| l.to_string()));
    assert!(
        line.contains("late-key") && line.contains("usage_limit"),
        "{line}"
    );
    signal(&child, "INT");
    let (status, err) = finish(child, 10);
    assert!(status.success(), "{status:?}: {err}");

    // JSON Lines with --follow.
    let mut child = env.spawn(&["logs", "--follow", "--json", "-n", "1"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let first: serde_json::Value = lines.find(|l| serde_json::from_str(l).ok());
    assert_eq!(first["request_id"], "req-2");
    record(&pool, vec![row(3, &k, &[&ids[0]], 200)]).await;
    let next: serde_json::Value = lines.find(|l| serde_json::from_str(l).ok());
    assert_eq!(next["request_id"], "req-3");
    signal(&child, "TERM");
    let (status, err) = finish(child, 10);
    assert!(
        status.success(),
        "SIGTERM stops following as Ctrl-C does: {err}"
    );
    let all = pool
        .request_log()
        .list(&RequestLogQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
}

/// More rows than `--follow` reads at a time arriving between two looks are all printed, in
/// order (it used to read only the newest 1000 and skip the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_every_row_of_a_burst_in_order() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1"]);
    let pool = env.pool().await;
    let k = key_id(&pool, "laptop").await;
    record(&pool, vec![row(0, &k, &[&ids[0]], 200)]).await;

    let mut child = env.spawn(&["logs", "--follow", "--json", "-n", "1"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let first: serde_json::Value = lines.find(|l| serde_json::from_str(l).ok());
    assert_eq!(first["request_id"], "req-0");
    const BURST: i64 = 2500;
    record(
        &pool,
        (1..=BURST).map(|n| row(n, &k, &[&ids[0]], 200)).collect(),
    )
    .await;
    let mut seen = Vec::new();
    while seen.last() != Some(&format!("req-{BURST}")) {
        let v: serde_json::Value = lines.find(|l| serde_json::from_str(l).ok());
        seen.push(v["request_id"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = (1..=BURST).map(|n| format!("req-{n}")).collect();
    assert!(
        seen == want,
        "{} rows: {:?}…",
        seen.len(),
        &seen[..5.min(seen.len())]
    );
    signal(&child, "INT");
    let (status, err) = finish(child, 10);
    assert!(status.success(), "{status:?}: {err}");
}

/// `-n 0 --follow` prints only rows that arrive after it started; `-n 0` alone would print
/// nothing at all, so it is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_with_n_0_prints_only_new_rows() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1"]);
    let pool = env.pool().await;
    let k = key_id(&pool, "laptop").await;
    record(
        &pool,
        vec![row(1, &k, &[&ids[0]], 200), row(2, &k, &[&ids[0]], 200)],
    )
    .await;

    let mut child = env.spawn(&["logs", "-n", "0", "--follow"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    // The header is printed once the newest row is known: rows from here on are new.
    lines.find(|l| l.starts_with("TIME (UTC)").then_some(()));
    record(&pool, vec![row(3, &k, &[&ids[0]], 429)]).await;
    lines.find(|l| l.contains("429").then_some(()));
    signal(&child, "INT");
    let (status, err) = finish(child, 10);
    assert!(status.success(), "{status:?}: {err}");
    let seen = lines.rest();
    assert_eq!(
        seen.lines().filter(|l| l.contains("laptop")).count(),
        1,
        "only the new row: {seen}"
    );

    let o = env.cmd().args(["logs", "-n", "0"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(
            "error: invalid value '0' for '--limit <N>': 0 shows no request; it is for --follow"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_matches_nothing_says_so() {
    let env = Env::new();
    let pool = env.pool().await;
    let used = key_id(&pool, "used").await;
    let unused = key_id(&pool, "unused").await;
    record(&pool, vec![row(1, &used, &["acct"], 200)]).await;

    let o = env.cmd().args(["logs", "--key", &unused]).output().unwrap();
    assert!(o.status.success());
    let (out, err) = crate::support::texts(&o);
    assert_eq!(out, "");
    assert_eq!(
        err.trim_end(),
        format!("No request matches --key {unused}; `codexpool logs` shows them all.")
    );
    // Without a filter, an empty log still says how to fill it. A database that is not there
    // is said so, and not made by a command that only reads: a mistyped --db is no silent
    // empty pool, and leaves no file behind.
    let empty = Env::new();
    let missing = format!(
        "No database at {} yet: nothing is stored.",
        empty.db().display()
    );
    for _ in 0..2 {
        let o = empty.cmd().arg("logs").output().unwrap();
        assert!(o.status.success());
        let (_, err) = crate::support::texts(&o);
        assert_eq!(err.lines().next(), Some(missing.as_str()), "{err}");
        assert!(
            err.lines().nth(1).unwrap().starts_with("No requests yet."),
            "{err}"
        );
        assert!(!empty.db().exists());
    }
    // Nor by one that changes a record it does not find there, or imports what is not there
    // or holds no account.
    let no_account = empty.path().join("no-account.json");
    std::fs::write(&no_account, r#"{"hello": 1}"#).unwrap();
    let no_files = empty.path().join("no-files");
    std::fs::create_dir(&no_files).unwrap();
    let changes: [&[&str]; 10] = [
        &["key", "delete", "abc"],
        &["key", "disable", "abc"],
        &["key", "update", "abc", "--name", "x"],
        &["account", "remove", "abc"],
        &["account", "enable", "abc"],
        &["account", "update", "abc", "--note", "x"],
        &[
            "account",
            "complete",
            "http://localhost:1455/auth/callback?code=c&state=s",
        ],
        &["account", "import", "no-such-file.json"],
        &["account", "import", no_account.to_str().unwrap()],
        &["account", "import", no_files.to_str().unwrap()],
    ];
    for args in changes {
        let o = empty.cmd().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let (_, err) = crate::support::texts(&o);
        assert!(!err.contains("Created"), "{args:?}: {err}");
        assert!(!empty.db().exists(), "{args:?}: {err}");
    }
    // From stdin too (read before the database is looked at: it cannot be read twice).
    let o = empty
        .cmd()
        .args(["account", "import", "-"])
        .write_stdin(r#"{"hello": 1}"#)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!empty.db().exists(), "{:?}", crate::support::texts(&o));
    // The first command that stores something makes it, and says so once.
    let created = format!("Created a new database at {}.", empty.db().display());
    let o = empty
        .cmd()
        .args(["key", "create", "--name", "first"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(crate::support::texts(&o).1.contains(&created));
    assert!(empty.db().exists());
    let o = empty.cmd().arg("logs").output().unwrap();
    assert!(crate::support::texts(&o).1.starts_with("No requests yet."));
    // Not in JSON: stdout stays one document, stderr quiet.
    let other = Env::new();
    let o = other.cmd().args(["logs", "--json"]).output().unwrap();
    assert_eq!(crate::support::texts(&o), ("[]\n".into(), String::new()));
}

/// A model name is whatever a key holder sent: its control characters are written out in the
/// table and in `--follow`, so they can neither steer the terminal nor forge a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_requests_are_written_out() {
    let env = Env::new();
    let pool = env.pool().await;
    let k = key_id(&pool, "laptop").await;
    let mut r = row(1, &k, &["acct"], 200);
    r.model = Some("gpt\u{1b}]0;pwned\u{7}\r\nforged row".into());
    record(&pool, vec![r]).await;

    let table = env.ok(&["logs"]);
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{7}'),
        "{table:?}"
    );
    assert!(
        table.contains(r"gpt\u{1b}]0;pwned\u{7}\r\nforged row"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("forged")).count(),
        1,
        "{table}"
    );

    let mut child = env.spawn(&["logs", "--follow"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let line = lines.find(|l| l.contains("laptop").then(|| l.to_string()));
    signal(&child, "INT");
    finish(child, 10);
    assert!(
        line.contains(r"\u{1b}]0;pwned\u{7}\r\nforged row"),
        "{line:?}"
    );
}
