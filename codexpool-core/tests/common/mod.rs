//! Helpers shared by the integration tests: tokens shaped like OpenAI's, and pools.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use codexpool_core::store::MemoryStore;
use codexpool_core::{Config, ManualClock, Pool, Timestamp};
use serde_json::json;

/// A JWT (unsigned) with OpenAI's claims.
pub fn jwt(account_id: &str, user_id: &str, email: &str, plan: &str, exp: i64) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = json!({
        "sub": format!("auth0|{user_id}"), "email": email, "exp": exp,
        "https://api.openai.com/auth": {
            "chatgpt_account_id": account_id, "chatgpt_plan_type": plan, "chatgpt_user_id": user_id,
            "organizations": [{"id": "org-1", "is_default": true}]
        }
    });
    format!(
        "{}.{}.c2ln",
        e.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        e.encode(payload.to_string())
    )
}

/// A Codex CLI auth.json for an account.
pub fn auth_json(account_id: &str, refresh: &str) -> Vec<u8> {
    let id = jwt(
        account_id,
        &format!("user-{account_id}"),
        &format!("{account_id}@example.com"),
        "plus",
        2_000_000_000,
    );
    serde_json::to_vec(&json!({
        "OPENAI_API_KEY": null,
        "tokens": {"id_token": id, "access_token": id, "refresh_token": refresh, "account_id": account_id},
        "last_refresh": "2026-11-01T00:00:00Z"
    }))
    .unwrap()
}

/// A Codex CLI auth.json whose access token expires at `exp`.
pub fn auth_json_expiring(account_id: &str, refresh: &str, exp: i64) -> Vec<u8> {
    let id = jwt(
        account_id,
        &format!("user-{account_id}"),
        "a@example.com",
        "plus",
        exp,
    );
    serde_json::to_vec(&json!({
        "tokens": {"id_token": id, "access_token": id, "refresh_token": refresh, "account_id": account_id},
    }))
    .unwrap()
}

pub const START: Timestamp = Timestamp::from_secs(1_800_000_000);

/// A memory pool on a manual clock, with settings applied.
pub async fn pool_with(settings: &[(&str, &str)]) -> (Pool, ManualClock) {
    let mut config = Config::default();
    for (k, v) in settings {
        config.set(k, v).unwrap();
    }
    let clock = ManualClock::new(START);
    let pool = Pool::builder(config)
        .store(Arc::new(MemoryStore::new()))
        .clock(Arc::new(clock.clone()))
        .watch_interval(Duration::ZERO)
        .open()
        .await
        .unwrap();
    (pool, clock)
}

/// Imports `n` accounts named acct-0.. and returns their local ids in import order.
pub async fn add_accounts(pool: &Pool, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = pool
            .accounts()
            .import_bytes(
                &format!("acct-{i}"),
                &auth_json(&format!("acct-{i}"), &format!("rt-{i}")),
            )
            .await;
        ids.push(
            r.results[0]
                .account_id
                .clone()
                .unwrap_or_else(|| panic!("{:?}", r.results)),
        );
    }
    ids
}
