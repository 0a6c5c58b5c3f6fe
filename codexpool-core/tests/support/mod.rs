//! Helpers of the sign-in, refresh and polling tests: pools pointed at a `FakeOpenAi`, accounts
//! imported from it, and a plain HTTP client that does not follow redirects (the browser).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use codexpool_core::store::MemoryStore;
use codexpool_core::{Config, ManualClock, Pool, Timestamp};
use codexpool_testkit::{FakeAccount, FakeOpenAi};

/// A fake with `acct-1`.
pub fn fake() -> Arc<FakeOpenAi> {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    Arc::new(fake)
}

/// Settings pointing at the fake: issuer, usage, a callback listener on a free loopback port,
/// no background polling; then `extra`.
pub fn config(fake: &FakeOpenAi, extra: &[(&str, &str)]) -> Config {
    let mut c = Config::default()
        .with("ISSUER", &fake.issuer())
        .unwrap()
        .with("USAGE_BASE_URL", &fake.usage_base_url())
        .unwrap()
        .with("LOGIN_ADDR", "127.0.0.1:0")
        .unwrap()
        .with("REDIRECT_URI", "http://127.0.0.1:1455/auth/callback")
        .unwrap()
        .with("DISABLE_POLLING", "1")
        .unwrap();
    for (k, v) in extra {
        c.set(k, v).unwrap();
    }
    c
}

/// An in-memory pool on a manual clock that starts at the real time (the fake's tokens carry
/// real expiry times).
pub async fn memory_pool(fake: &FakeOpenAi, extra: &[(&str, &str)]) -> (Pool, ManualClock) {
    let clock = ManualClock::new(Timestamp::now());
    let pool = Pool::builder(config(fake, extra))
        .store(Arc::new(MemoryStore::new()))
        .clock(Arc::new(clock.clone()))
        .watch_interval(Duration::ZERO)
        .open()
        .await
        .unwrap();
    (pool, clock)
}

/// A pool on a SQLite file (system clock, no change watcher: tests reload explicitly or rely on
/// the sign-in code reading the store).
pub async fn file_pool(fake: &FakeOpenAi, path: &Path) -> Pool {
    let c = config(fake, &[("DB_PATH", path.to_str().unwrap())]);
    Pool::builder(c)
        .watch_interval(Duration::ZERO)
        .open()
        .await
        .unwrap()
}

/// Imports the fake account's current sign-in (its Codex CLI auth.json); the local id.
pub async fn import(pool: &Pool, fake: &FakeOpenAi, account: &str) -> String {
    let doc = serde_json::to_vec(&fake.auth_json(account)).unwrap();
    let r = pool.accounts().import_bytes(account, &doc).await;
    r.results[0]
        .account_id
        .clone()
        .unwrap_or_else(|| panic!("{:?}", r.results))
}

/// A client that does not follow redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What the fake's authorize step redirects to (the callback URL with code and state).
pub async fn authorize(url: &str) -> String {
    let resp = browser().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "authorize answered {}", resp.status());
    resp.headers()["location"].to_str().unwrap().to_string()
}

/// GET a URL: (status, body).
pub async fn get(url: &str) -> (u16, String) {
    let resp = browser().get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Waits (at most `secs`) until a refresh after the `before`-th is held on the wire by the fake's
/// `refresh_delay` — inside its handler, not only recorded — and returns how many are held.
pub async fn refresh_held(fake: &FakeOpenAi, before: usize, secs: u64) -> usize {
    assert!(
        fake.wait_until_async(Duration::from_secs(secs), |f| f.refreshes_held() > before)
            .await,
        "no refresh reached the issuer"
    );
    fake.refreshes_held()
}
