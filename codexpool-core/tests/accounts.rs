//! Account management through the public API: import (every format, bad input), export,
//! listing with filters and order, updates, enable/disable, removal, id prefixes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use codexpool_core::import::ImportOutcome;
use codexpool_core::{AccountFilter, AccountPatch, AccountStatus, Error};
use common::{add_accounts, auth_json, auth_json_expiring, jwt, pool_with};
use serde_json::json;

#[tokio::test]
async fn imports_a_codex_cli_auth_json() {
    let (pool, _) = pool_with(&[]).await;
    let r = pool
        .accounts()
        .import_bytes("auth.json", &auth_json("acct-9", "rt-1"))
        .await;
    assert_eq!(r.imported(), 1, "{r:?}");
    let res = &r.results[0];
    assert_eq!(res.source, "auth.json");
    assert!(
        res.warning.as_deref().unwrap().contains("Codex CLI"),
        "a shared refresh token is pointed out"
    );
    let a = pool
        .accounts()
        .get(res.account_id.as_deref().unwrap())
        .unwrap();
    assert_eq!(a.chatgpt_account_id.as_deref(), Some("acct-9"));
    assert_eq!(a.chatgpt_user_id.as_deref(), Some("user-acct-9"));
    assert_eq!(a.email.as_deref(), Some("acct-9@example.com"));
    assert_eq!(a.label, "acct-9@example.com");
    assert_eq!(a.plan_type.as_deref(), Some("plus"));
    assert_eq!(a.status, AccountStatus::Active);
    assert_eq!(a.tokens.refresh_token.expose(), "rt-1");
    assert_eq!(
        a.tokens.last_refresh.unwrap().to_rfc3339(),
        "2026-11-01T00:00:00Z"
    );
    assert!(
        a.tokens.expires_at.is_some(),
        "expiry read from the access token"
    );
}

#[tokio::test]
async fn reimport_updates_tokens_and_keeps_what_a_person_set() {
    let (pool, _) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    pool.accounts()
        .update(
            &id,
            AccountPatch::default()
                .label("Work")
                .group(Some("team".into()))
                .tags(vec!["x".into()])
                .note(Some("mine".into()))
                .sort(5),
        )
        .await
        .unwrap();
    let r = pool
        .accounts()
        .import_bytes("again", &auth_json("acct-0", "rt-new"))
        .await;
    assert_eq!(r.updated(), 1, "{r:?}");
    assert_eq!(r.results[0].account_id.as_deref(), Some(id.as_str()));
    let a = pool.accounts().get(&id).unwrap();
    assert_eq!(a.tokens.refresh_token.expose(), "rt-new");
    assert_eq!(
        (
            a.label.as_str(),
            a.group.as_deref(),
            a.tags.as_slice(),
            a.note.as_deref(),
            a.sort
        ),
        (
            "Work",
            Some("team"),
            &["x".to_string()][..],
            Some("mine"),
            5
        )
    );
    assert_eq!(pool.accounts().len(), 1);
}

#[tokio::test]
async fn reimport_never_puts_older_tokens_back() {
    let (pool, _) = pool_with(&[]).await;
    let old = auth_json_expiring("acct-5", "rt-old", 2_000_000_000);
    let newer = auth_json_expiring("acct-5", "rt-newer", 2_000_086_400);
    let id = pool.accounts().import_bytes("old", &old).await.results[0]
        .account_id
        .clone()
        .unwrap();
    assert_eq!(
        pool.accounts()
            .import_bytes("newer", &newer)
            .await
            .updated(),
        1
    );
    let r = pool.accounts().import_bytes("old", &old).await;
    assert_eq!(
        (r.updated(), r.unchanged(), r.skipped()),
        (0, 1, 0),
        "{r:?}"
    );
    assert!(
        matches!(&r.results[0].outcome, ImportOutcome::Unchanged(why) if why.contains("newer")),
        "{r:?}"
    );
    assert_eq!(r.results[0].account_id.as_deref(), Some(id.as_str()));
    let a = pool.accounts().get(&id).unwrap();
    assert_eq!(a.tokens.refresh_token.expose(), "rt-newer");
    assert_eq!(pool.accounts().len(), 1);
}

#[tokio::test]
async fn reimport_keeps_a_newer_access_token_under_the_same_refresh_token() {
    let (pool, _) = pool_with(&[]).await;
    let old = auth_json_expiring("acct-7", "rt-kept", 2_000_000_000);
    let newer = auth_json_expiring("acct-7", "rt-kept", 2_000_086_400);
    let id = pool.accounts().import_bytes("newer", &newer).await.results[0]
        .account_id
        .clone()
        .unwrap();
    let stored = pool.accounts().get(&id).unwrap().tokens;
    let r = pool.accounts().import_bytes("old", &old).await;
    assert_eq!(
        (r.updated(), r.unchanged(), r.skipped()),
        (0, 1, 0),
        "{r:?}"
    );
    assert!(
        matches!(&r.results[0].outcome, ImportOutcome::Unchanged(why) if why.contains("newer")),
        "{r:?}"
    );
    let after = pool.accounts().get(&id).unwrap().tokens;
    assert_eq!(after.access_token.expose(), stored.access_token.expose());
    assert_eq!(after.expires_at, stored.expires_at);

    // A newer access token under the same refresh token is taken.
    let newest = auth_json_expiring("acct-7", "rt-kept", 2_000_172_800);
    assert_eq!(
        pool.accounts()
            .import_bytes("newest", &newest)
            .await
            .updated(),
        1
    );
}

/// A Codex CLI signed in with an API key writes an auth.json without tokens: said as such (it
/// was "access_token is missing").
#[tokio::test]
async fn a_codex_cli_api_key_sign_in_is_named() {
    let (pool, _) = pool_with(&[]).await;
    let doc = br#"{"OPENAI_API_KEY": "sk-proj-abc", "tokens": null, "last_refresh": null}"#;
    let r = pool.accounts().import_bytes("auth.json", doc).await;
    assert_eq!((r.imported(), r.skipped() + r.failed()), (0, 1), "{r:?}");
    let reason = format!("{:?}", r.results[0].outcome);
    assert!(
        reason.contains("API key, not a ChatGPT account"),
        "{reason}"
    );
    assert!(!reason.contains("sk-proj-abc"), "{reason}");
    assert!(pool.accounts().list(&Default::default()).is_empty());
}

#[tokio::test]
async fn reimport_of_the_same_tokens_is_unchanged() {
    let (pool, _) = pool_with(&[]).await;
    // A Codex CLI auth.json (`OPENAI_API_KEY` beside the tokens).
    let mut doc: serde_json::Value =
        serde_json::from_slice(&auth_json_expiring("acct-6", "rt-same", 2_000_000_000)).unwrap();
    doc["OPENAI_API_KEY"] = serde_json::Value::Null;
    let file = serde_json::to_vec(&doc).unwrap();
    let first = pool.accounts().import_bytes("auth.json", &file).await;
    assert_eq!(first.imported(), 1, "{first:?}");
    let before = pool.accounts().list(&Default::default())[0].clone();
    let r = pool.accounts().import_bytes("auth.json", &file).await;
    assert_eq!(
        (r.imported(), r.updated(), r.unchanged(), r.skipped()),
        (0, 0, 1, 0),
        "{r:?}"
    );
    assert_eq!(
        r.results[0].outcome,
        ImportOutcome::Unchanged("already up to date (the stored tokens are this file's)".into())
    );
    assert_eq!(r.results[0].account_id.as_deref(), Some(before.id.as_str()));
    // Still shared with the Codex CLI that wrote the file: the warning stays.
    assert!(
        r.results[0].codex_cli && r.results[0].warning.is_some(),
        "{r:?}"
    );
    let after = pool.accounts().get(&before.id).unwrap();
    assert_eq!(after.updated_at, before.updated_at, "nothing was written");
}

/// A file with only the access and refresh tokens (another tool's) leaves the stored id token:
/// the same two tokens are "unchanged", new ones are written beside it.
#[tokio::test]
async fn reimport_without_an_id_token_keeps_the_stored_one() {
    let (pool, _) = pool_with(&[]).await;
    let full: serde_json::Value =
        serde_json::from_slice(&auth_json_expiring("acct-7", "rt-7", 2_000_000_000)).unwrap();
    pool.accounts()
        .import_bytes("auth.json", &serde_json::to_vec(&full).unwrap())
        .await;
    let before = pool.accounts().list(&Default::default())[0].clone();
    let mut partial = full.clone();
    partial["tokens"]
        .as_object_mut()
        .unwrap()
        .remove("id_token");
    let r = pool
        .accounts()
        .import_bytes("partial.json", &serde_json::to_vec(&partial).unwrap())
        .await;
    assert_eq!((r.unchanged(), r.updated()), (1, 0), "{r:?}");

    partial["tokens"]["refresh_token"] = json!("rt-7-new");
    partial["tokens"]["access_token"] = json!(jwt(
        "acct-7",
        "user-acct-7",
        "a@example.com",
        "plus",
        2_000_000_100
    ));
    let r = pool
        .accounts()
        .import_bytes("partial.json", &serde_json::to_vec(&partial).unwrap())
        .await;
    assert_eq!(r.updated(), 1, "{r:?}");
    let after = pool.accounts().get(&before.id).unwrap();
    assert_eq!(after.tokens.refresh_token.expose(), "rt-7-new");
    assert_eq!(
        after.tokens.id_token.expose(),
        full["tokens"]["id_token"].as_str().unwrap(),
        "the id token stays"
    );
}

/// The size limit holds for what has no size beforehand (a pipe), and the read does not hold
/// the runtime.
#[cfg(unix)]
#[tokio::test]
async fn an_oversize_file_from_a_pipe_is_skipped() {
    let (pool, _) = pool_with(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("auth.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            // Valid JSON, padded past the limit; the reader stops early, so writes may fail.
            let mut doc = auth_json("acct-8", "rt-8");
            doc.truncate(doc.len() - 1);
            let _ = f.write_all(&doc);
            let _ = f.write_all(br#","pad":""#);
            let _ = f.write_all(&vec![b'x'; 9 << 20]);
            let _ = f.write_all(br#""}"#);
        })
    };
    let r = pool.accounts().import_path(&fifo).await.unwrap();
    writer.join().unwrap();
    match &r.results[0].outcome {
        ImportOutcome::Skipped(reason) => assert!(reason.contains("larger than 8 MiB"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(pool.accounts().is_empty());
}

#[tokio::test]
async fn reimport_revives_a_dead_sign_in_but_not_a_disabled_account() {
    let (pool, _) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 2).await;
    let mut p = AccountPatch::default();
    p.status = Some(AccountStatus::NeedsLogin);
    pool.accounts().update(&ids[0], p).await.unwrap();
    pool.accounts().disable(&ids[1]).await.unwrap();
    pool.accounts()
        .import_bytes("a", &auth_json("acct-0", "x"))
        .await;
    pool.accounts()
        .import_bytes("b", &auth_json("acct-1", "y"))
        .await;
    assert_eq!(
        pool.accounts().get(&ids[0]).unwrap().status,
        AccountStatus::Active
    );
    assert_eq!(
        pool.accounts().get(&ids[1]).unwrap().status,
        AccountStatus::Disabled
    );
}

#[tokio::test]
async fn imports_the_export_format_in_either_case() {
    let (pool, _) = pool_with(&[]).await;
    let t1 = jwt("acct-a", "u-a", "a@x.io", "pro", 2_000_000_000);
    let t2 = jwt("acct-b", "u-b", "b@x.io", "team", 2_000_000_000);
    let doc = json!({"version": 1, "accounts": [
        {"label": "A", "group": "g1", "tags": ["t1"], "note": "n", "sort": 2, "status": "disabled",
         "tokens": {"id_token": t1, "access_token": t1, "refresh_token": "r1"}},
        {"label": "B", "groupName": null, "tags": "t2, t3", "sort": 1,
         "tokens": {"idToken": t2, "accessToken": t2, "refreshToken": "r2"}},
        {"label": "broken", "tokens": {"access_token": t2}},
        "not an object"
    ]});
    let r = pool
        .accounts()
        .import_bytes("export.json", &serde_json::to_vec(&doc).unwrap())
        .await;
    assert_eq!((r.imported(), r.skipped()), (2, 2), "{r:?}");
    assert_eq!(r.results[0].source, "export.json#1");
    assert!(
        matches!(&r.results[2].outcome, ImportOutcome::Skipped(reason) if reason.contains("refresh_token")),
        "{r:?}"
    );
    let list = pool.accounts().list(&AccountFilter::default());
    assert_eq!(
        list.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(),
        ["B", "A"],
        "ordered by sort"
    );
    assert_eq!(list[1].status, AccountStatus::Disabled);
    assert_eq!(list[1].group.as_deref(), Some("g1"));
    assert_eq!(list[0].tags, ["t2", "t3"]);
    assert_eq!(list[0].plan_type.as_deref(), Some("team"));

    // Dead and banned accounts come in as they went out: back in rotation they would only fail.
    let (pool, _) = pool_with(&[]).await;
    let t3 = jwt("acct-c", "u-c", "c@x.io", "plus", 2_000_000_000);
    let doc = json!({"version": 1, "accounts": [
        {"label": "dead", "status": "needs_login",
         "tokens": {"id_token": t1, "access_token": t1, "refresh_token": "r1"}},
        {"label": "banned", "status": "banned",
         "tokens": {"id_token": t2, "access_token": t2, "refresh_token": "r2"}},
        {"label": "fine", "status": "active",
         "tokens": {"id_token": t3, "access_token": t3, "refresh_token": "r3"}},
    ]});
    let r = pool
        .accounts()
        .import_bytes("export.json", &serde_json::to_vec(&doc).unwrap())
        .await;
    assert_eq!(r.imported(), 3, "{r:?}");
    let status = |label: &str| {
        let a = pool.accounts().get(label).unwrap();
        (a.status, a.status_reason.is_some())
    };
    assert_eq!(status("dead"), (AccountStatus::NeedsLogin, true));
    assert_eq!(status("banned"), (AccountStatus::Banned, true));
    assert_eq!(status("fine"), (AccountStatus::Active, false));
}

#[tokio::test]
async fn malformed_inputs_are_skipped_with_reasons_and_write_nothing() {
    let (pool, _) = pool_with(&[]).await;
    let good = jwt("acct-a", "u", "a@x.io", "plus", 2_000_000_000);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", b"".to_vec(), "not valid JSON"),
        ("html", b"<html></html>".to_vec(), "not valid JSON"),
        ("number", b"42".to_vec(), "expected a JSON object"),
        (
            "no accounts",
            br#"{"version":1,"accounts":[]}"#.to_vec(),
            "no accounts",
        ),
        (
            "future",
            br#"{"version":2,"accounts":[{}]}"#.to_vec(),
            "unsupported export version",
        ),
        (
            "accounts not list",
            br#"{"accounts":{}}"#.to_vec(),
            "not a list",
        ),
        (
            "no tokens",
            br#"{"label":"x"}"#.to_vec(),
            "access_token is missing",
        ),
        (
            "bad id token",
            serde_json::to_vec(
                &json!({"tokens":{"id_token":"abc","access_token":good,"refresh_token":"r"}}),
            )
            .unwrap(),
            "id_token",
        ),
        (
            "no account id",
            serde_json::to_vec(&json!({"tokens":{"access_token":"opaque","refresh_token":"r"}}))
                .unwrap(),
            "no ChatGPT account id",
        ),
        (
            "wrong type",
            serde_json::to_vec(
                &json!({"label": 5, "tokens":{"access_token":good,"refresh_token":"r"}}),
            )
            .unwrap(),
            "label is not a string",
        ),
        (
            "bad status",
            serde_json::to_vec(
                &json!({"status": "gone", "tokens":{"access_token":good,"refresh_token":"r"}}),
            )
            .unwrap(),
            "status",
        ),
        (
            "bad sort",
            serde_json::to_vec(
                &json!({"sort": "first", "tokens":{"access_token":good,"refresh_token":"r"}}),
            )
            .unwrap(),
            "sort",
        ),
        (
            "bad tags",
            serde_json::to_vec(
                &json!({"tags": [1], "tokens":{"access_token":good,"refresh_token":"r"}}),
            )
            .unwrap(),
            "tags",
        ),
    ];
    for (name, bytes, expect) in cases {
        let r = pool.accounts().import_bytes(name, &bytes).await;
        assert_eq!(r.results.len(), 1, "{name}");
        match &r.results[0].outcome {
            ImportOutcome::Skipped(reason) => assert!(reason.contains(expect), "{name}: {reason}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(pool.accounts().is_empty(), "nothing was written");
}

#[tokio::test]
async fn imports_a_folder_file_by_file() {
    let (pool, _) = pool_with(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.json"), auth_json("acct-a", "r1")).unwrap();
    std::fs::write(dir.path().join("b.json"), b"{ broken").unwrap();
    std::fs::write(dir.path().join("c.JSON"), auth_json("acct-c", "r3")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    std::fs::create_dir(dir.path().join("home-d")).unwrap();
    std::fs::write(
        dir.path().join("home-d/auth.json"),
        auth_json("acct-d", "r4"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("empty-home")).unwrap();
    let r = pool.accounts().import_path(dir.path()).await.unwrap();
    assert_eq!(r.results.len(), 4, "{r:?}");
    assert_eq!(
        (r.imported(), r.skipped()),
        (3, 1),
        "CODEX_HOME folders count too"
    );
    assert!(r.results[1].source.ends_with("b.json"));
    // A CODEX_HOME itself: its auth.json only (its other files are the Codex CLI's own).
    let home = dir.path().join("home-d");
    std::fs::write(
        home.join("version.json"),
        br#"{"latest_version": "0.63.0"}"#,
    )
    .unwrap();
    std::fs::write(home.join("config.toml"), b"model = 'gpt-5-codex'").unwrap();
    let r = pool.accounts().import_path(&home).await.unwrap();
    assert_eq!(r.results.len(), 1, "{r:?}");
    assert!(r.results[0].source.ends_with("home-d/auth.json"), "{r:?}");
    assert_eq!(r.skipped(), 0, "{r:?}");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        pool.accounts().import_path(empty.path()).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        pool.accounts()
            .import_path(dir.path().join("missing.json"))
            .await,
        Err(Error::Io { .. })
    ));
}

#[tokio::test]
async fn export_round_trips_into_another_pool_with_mode_0600() {
    let (pool, _) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 3).await;
    pool.accounts()
        .update(
            &ids[1],
            AccountPatch::default()
                .group(Some("g".into()))
                .tags(vec!["t".into()]),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.json");
    assert_eq!(
        pool.accounts()
            .export_to_file(&path, &AccountFilter::default())
            .await
            .unwrap(),
        3
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["accounts"][0]["tokens"]["refresh_token"], "rt-0");
    let (other, _) = pool_with(&[]).await;
    let r = other.accounts().import_path(&path).await.unwrap();
    assert_eq!(r.imported(), 3, "{r:?}");
    let moved = other.accounts().list(&AccountFilter::default().group("g"));
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].tags, ["t"]);
    assert!(
        r.results.iter().all(|x| x.warning.is_none()),
        "an export is not a Codex CLI file"
    );
}

#[tokio::test]
async fn list_filters_order_and_prefixes() {
    let (pool, _) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 4).await;
    let acc = pool.accounts();
    acc.update(
        &ids[0],
        AccountPatch::default().group(Some("blue".into())).sort(9),
    )
    .await
    .unwrap();
    acc.update(
        &ids[1],
        AccountPatch::default()
            .group(Some("blue".into()))
            .tags(vec!["vip".into()]),
    )
    .await
    .unwrap();
    acc.update(
        &ids[2],
        AccountPatch::default().note(Some("Shared with Bob".into())),
    )
    .await
    .unwrap();
    acc.disable(&ids[3]).await.unwrap();
    let labels = |f: &AccountFilter| acc.list(f).into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        labels(&AccountFilter::default().group("blue")),
        [ids[1].clone(), ids[0].clone()]
    );
    assert_eq!(
        labels(&AccountFilter::default().tag("vip")),
        [ids[1].clone()]
    );
    assert_eq!(
        labels(&AccountFilter::default().status(AccountStatus::Disabled)),
        [ids[3].clone()]
    );
    assert_eq!(
        labels(&AccountFilter::default().text("bob")),
        [ids[2].clone()]
    );
    assert_eq!(
        labels(&AccountFilter::default()).last(),
        Some(&ids[0]),
        "sort 9 comes last"
    );
    // Prefixes.
    let a = acc.get(&ids[2][..8]).unwrap();
    assert_eq!(a.id, ids[2]);
    assert!(matches!(acc.get("zzzz"), Err(Error::NotFound { .. })));
    assert!(matches!(acc.get(""), Err(Error::InvalidInput { .. })));
    // Bulk sort.
    acc.set_sort_orders(&[(ids[3].clone(), -5), (ids[2][..6].to_string(), -4)])
        .await
        .unwrap();
    assert_eq!(
        &labels(&AccountFilter::default())[..2],
        [ids[3].clone(), ids[2].clone()]
    );
    assert!(
        acc.set_sort_orders(&[(ids[0].clone(), 1), ("nope".into(), 2)])
            .await
            .is_err()
    );
    assert_eq!(acc.get(&ids[0]).unwrap().sort, 9, "all or nothing");
    // One account twice (its id and a prefix of it): which should win? Neither.
    let twice = acc
        .set_sort_orders(&[(ids[0].clone(), 1), (ids[0][..6].to_string(), 2)])
        .await;
    match twice {
        Err(Error::InvalidInput { message, .. }) => {
            assert!(message.contains("more than once"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(acc.get(&ids[0]).unwrap().sort, 9);
}

#[tokio::test]
async fn bad_updates_are_refused_and_change_nothing() {
    let (pool, _) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let before = pool.accounts().get(&id).unwrap();
    assert!(matches!(
        pool.accounts()
            .update(&id, AccountPatch::default().label("  "))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        pool.accounts()
            .update(&id, AccountPatch::default().tags(vec!["a,b".into()]))
            .await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        pool.accounts()
            .update("nope", AccountPatch::default().label("x"))
            .await,
        Err(Error::NotFound { .. })
    ));
    // Names as long as a key's may be (200 characters), a note of 10,000.
    let long = "é".repeat(201);
    for patch in [
        AccountPatch::default().label(long.clone()),
        AccountPatch::default().group(Some(long.clone())),
        AccountPatch::default().tags(vec![long.clone()]),
        AccountPatch::default().note(Some("n".repeat(10_001))),
    ] {
        match pool.accounts().update(&id, patch).await {
            Err(Error::InvalidInput { message, .. }) => {
                assert!(message.contains("at most"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    // An export whose label is too long is skipped with the reason.
    let t = jwt("acct-long", "u-l", "l@x.io", "plus", 2_000_000_000);
    let doc = json!({"version": 1, "accounts": [{"label": long,
        "tokens": {"id_token": t, "access_token": t, "refresh_token": "r"}}]});
    let r = pool
        .accounts()
        .import_bytes("export.json", &serde_json::to_vec(&doc).unwrap())
        .await;
    assert!(
        matches!(&r.results[0].outcome, ImportOutcome::Skipped(reason) if reason.contains("at most 200")),
        "{r:?}"
    );
    let after = pool.accounts().get(&id).unwrap();
    assert_eq!(
        (before.label, before.tags, before.updated_at),
        (after.label, after.tags, after.updated_at)
    );
    // At the limits: taken.
    let fits = AccountPatch::default()
        .label("é".repeat(200))
        .note(Some("n".repeat(10_000)));
    pool.accounts().update(&id, fits).await.unwrap();
}

#[tokio::test]
async fn enable_disable_remove() {
    let (pool, _) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let a = pool.accounts().disable(&id).await.unwrap();
    assert_eq!(a.status, AccountStatus::Disabled);
    assert_eq!(a.status_reason.as_deref(), Some("disabled by a person"));
    let a = pool.accounts().enable(&id).await.unwrap();
    assert_eq!((a.status, a.status_reason), (AccountStatus::Active, None));
    pool.accounts().remove(&id).await.unwrap();
    assert!(pool.accounts().is_empty());
    assert!(matches!(
        pool.accounts().remove(&id).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn tokens_never_appear_in_debug_or_json() {
    let (pool, _) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let a = pool.accounts().get(&id).unwrap();
    let debug = format!("{a:?}");
    let json = serde_json::to_string(&a).unwrap();
    for secret in [
        a.tokens.refresh_token.expose(),
        a.tokens.access_token.expose(),
    ] {
        assert!(!debug.contains(secret), "Debug leaks a token");
        assert!(!json.contains(secret), "JSON leaks a token");
    }
    // The export carries them (that is its job), but not in its Debug output.
    let export = pool.accounts().export(&AccountFilter::default());
    let debug = format!("{export:?}");
    assert!(!debug.contains(a.tokens.refresh_token.expose()), "{debug}");
    assert!(!debug.contains(a.tokens.access_token.expose()), "{debug}");
    assert_eq!(
        export.accounts[0].tokens.refresh_token,
        a.tokens.refresh_token.expose()
    );
}

/// A write killed between its temporary file and the rename (SIGKILL, power cut) leaves that
/// file, with every exported token in it: the next write of the same file removes it once its
/// process is gone and it has sat for a minute, and leaves live writers' files alone.
#[cfg(unix)]
#[tokio::test]
async fn a_killed_exports_temporary_file_is_removed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.json");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let temp = |pid: u32, age_secs: u64| {
        let p = dir
            .path()
            .join(format!(".backup.json.tmp-{pid}-{age_secs:016x}"));
        let f = std::fs::File::create(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs))
            .unwrap();
        p
    };
    let stale = temp(dead, 120);
    let fresh = temp(dead, 0);
    let live = temp(std::process::id(), 120);
    let other = dir
        .path()
        .join(format!(".other.json.tmp-{dead}-00000000000000ab"));
    std::fs::copy(&stale, &other).unwrap();
    codexpool_core::import::write_private(&path, b"{}").unwrap();
    assert!(!stale.exists(), "the dead process's old file stays");
    assert!(fresh.exists() && live.exists() && other.exists());
    assert_eq!(std::fs::read(&path).unwrap(), b"{}");
}
