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

    #[test]
    fn env_values_are_accepted_or_named(values in prop::collection::vec("\\PC{0,12}", SETTINGS.len()), legacy in any::<bool>()) {
        let prefix = if legacy { "GPTTOOLS_" } else { "CODEXPOOL_" };
        let env: HashMap<String, String> =
            SETTINGS.iter().zip(&values).map(|(s, v)| (format!("{prefix}{}", s.name), v.clone())).collect();
        match Config::from_lookup(|k| env.get(k).cloned(), None) {
            Ok(c) => {
                prop_assert!(c.usage_poll_interval.as_secs() >= 30);
                prop_assert!(c.front_proxy_max_body_bytes >= 1);
            }
            Err(e) => {
                prop_assert!(e.var.starts_with(prefix), "{}", e.var);
                prop_assert!(e.to_string().contains(&e.var));
            }
        }
    }
}
