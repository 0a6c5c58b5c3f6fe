//! Arbitrary input at the core's entry points — import files and environment values — gives a
//! clear error or a clean result, never a panic or a half-written record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use codexpool_core::config::SETTINGS;
use codexpool_core::import::ImportOutcome;
use codexpool_core::{AccountFilter, Config};
use proptest::prelude::*;

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let jwt = common::jwt("acct-p", "user-p", "p@example.com", "plus", 2_000_000_000);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-z0-9 ,]{0,10}".prop_map(serde_json::Value::String),
        Just(serde_json::Value::String(jwt)),
        Just(serde_json::json!("active")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "tokens",
                    "access_token",
                    "refresh_token",
                    "id_token",
                    "account_id",
                    "accounts",
                    "version",
                    "label",
                    "group",
                    "tags",
                    "sort",
                    "status",
                    "note",
                    "OPENAI_API_KEY",
                    "last_refresh",
                    "accessToken",
                ]),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn imports_never_write_half_an_account(doc in arb_json(), raw in prop::collection::vec(any::<u8>(), 0..64), use_raw in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (pool, _) = common::pool_with(&[]).await;
            let bytes = if use_raw { raw.clone() } else { serde_json::to_vec(&doc).unwrap() };
            let report = pool.accounts().import_bytes("fuzz", &bytes).await;
            prop_assert!(!report.results.is_empty());
            let written = report.results.iter().filter(|r| !matches!(r.outcome, ImportOutcome::Skipped(_))).count();
            for r in &report.results {
                if let ImportOutcome::Skipped(reason) = &r.outcome {
                    prop_assert!(!reason.is_empty());
                }
            }
            let accounts = pool.accounts().list(&AccountFilter::default());
            prop_assert!(accounts.len() <= written);
            for a in accounts {
                prop_assert!(a.chatgpt_account_id.is_some());
                prop_assert!(!a.tokens.access_token.is_empty() && !a.tokens.refresh_token.is_empty());
                prop_assert!(!a.label.is_empty());
            }
            Ok(())
        })?;
    }

    /// Files and folders as people point `account import` at them: documents of any shape
    /// and bytes of any kind, some under a sub-folder's `auth.json`, some not `.json` at all.
    /// Each file read gets its own result naming it (a clear reason when skipped), an account is
    /// written whole or not at all, and a folder with nothing to import is an error naming it.
    #[test]
    fn imported_files_and_folders_never_write_half_an_account(
        files in prop::collection::vec((arb_json(), prop::collection::vec(any::<u8>(), 0..64), any::<bool>(), 0..3u8), 0..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (pool, _) = common::pool_with(&[]).await;
            let dir = tempfile::tempdir().unwrap();
            let mut expected = Vec::new();
            for (i, (doc, raw, use_raw, place)) in files.iter().enumerate() {
                let bytes = if *use_raw { raw.clone() } else { serde_json::to_vec(doc).unwrap() };
                let path = match place {
                    0 => dir.path().join(format!("{i}.json")),
                    1 => {
                        std::fs::create_dir(dir.path().join(format!("home{i}"))).unwrap();
                        dir.path().join(format!("home{i}")).join("auth.json")
                    }
                    // Not read: the import takes .json files and sub-folders' auth.json only.
                    _ => dir.path().join(format!("{i}.txt")),
                };
                std::fs::write(&path, &bytes).unwrap();
                if *place < 2 {
                    expected.push(path.display().to_string());
                }
            }
            let report = match pool.accounts().import_path(dir.path()).await {
                Ok(report) => report,
                Err(e) => {
                    prop_assert!(expected.is_empty(), "{e}");
                    prop_assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");
                    prop_assert!(pool.accounts().list(&AccountFilter::default()).is_empty());
                    return Ok(());
                }
            };
            for path in &expected {
                prop_assert!(
                    report.results.iter().any(|r| r.source.starts_with(path.as_str())),
                    "no result for {path}: {report:?}"
                );
            }
            let mut written = 0;
            for r in &report.results {
                prop_assert!(expected.iter().any(|p| r.source.starts_with(p.as_str())), "{r:?}");
                match &r.outcome {
                    ImportOutcome::Skipped(reason) | ImportOutcome::Failed(reason) => {
                        prop_assert!(!reason.is_empty());
                    }
                    _ => written += 1,
                }
            }
            let accounts = pool.accounts().list(&AccountFilter::default());
            prop_assert!(accounts.len() <= written);
            for a in accounts {
                prop_assert!(a.chatgpt_account_id.is_some());
                prop_assert!(!a.tokens.access_token.is_empty() && !a.tokens.refresh_token.is_empty());
            }
            Ok(())
        })?;
    }

    /// A few settings at a time, each with a value shaped like what people set (numbers of
    /// every size and sign, booleans, URLs, addresses, durations) or anything at all (control
    /// characters included): every invalid one is an error naming its own variable, a secret's
    /// value never shown; the rest hold values in their ranges.
    #[test]
    fn env_values_are_accepted_or_named(
        picked in prop::collection::vec((0..SETTINGS.len(), arb_setting_value()), 1..4),
        legacy in any::<bool>(),
    ) {
        let prefix = if legacy { "GPTTOOLS_" } else { "CODEXPOOL_" };
        let env: HashMap<String, String> = picked
            .iter()
            .map(|(i, v)| (format!("{prefix}{}", SETTINGS[*i].name), v.clone()))
            .collect();
        let loaded = Config::load(|k| env.get(k).cloned(), None);
        for e in &loaded.invalid {
            prop_assert!(env.contains_key(&e.var), "{} was not set", e.var);
            prop_assert!(e.to_string().contains(&e.var));
            let setting = SETTINGS.iter().find(|s| Some(s.name) == e.setting).unwrap();
            prop_assert!(e.var.ends_with(setting.name));
            let value = &env[&e.var];
            if setting.secret && value.trim().len() > 3 {
                prop_assert!(!e.to_string().contains(value.trim()), "{e}");
            }
        }
        let c = &loaded.config;
        prop_assert!(c.usage_poll_interval.as_secs() >= 30);
        prop_assert!(c.front_proxy_max_body_bytes >= 1);
        let _ = format!("{c:?}");
    }

    /// Whatever an env file holds: read or refused with an error naming the file, never a panic.
    #[test]
    fn env_files_are_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256), text in "\\PC{0,80}") {
        let dir = tempfile::tempdir().unwrap();
        for (i, content) in [bytes, text.into_bytes()].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.env"));
            std::fs::write(&path, &content).unwrap();
            match codexpool_core::config::EnvFile::read(&path) {
                Ok(f) => {
                    let _ = Config::load(|_| None, Some(&f));
                }
                Err(e) => prop_assert!(e.to_string().contains(&format!("{i}.env")), "{e}"),
            }
        }
    }
}

/// Values shaped like settings' values, and anything at all.
fn arb_setting_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}0")),
        (0u32..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "true",
            "false",
            "1",
            "0",
            "yes",
            "no",
            "on",
            "off",
            "",
            " ",
            "ordered",
            "round-robin",
            "headroom",
            "localhost:0",
            "127.0.0.1:8080",
            "0.0.0.0:1",
            "[::1]:9",
            "http://127.0.0.1:1/x",
            "https://user:pass@host/",
            "ftp://x",
            "~/codexpool.db",
            "30",
            "30s",
            "1h",
            "-1",
            "99999999999999999999",
        ])
        .prop_map(str::to_string),
        "\\PC{0,16}",
        "[\\x00-\\x1f\\x7f ]{0,4}[a-z0-9:/.]{0,8}",
    ]
}
