//! Selection speed: acquire + drop of a lease with 10,000 accounts under each strategy (target
//! under 2 µs for the default `ordered`), and platform-key verification.
//!
//! Run: `cargo bench -p codexpool-core --bench pool`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use codexpool_core::keys::NewKey;
use codexpool_core::store::MemoryStore;
use codexpool_core::{Config, Demand, Pool};
use criterion::{Criterion, criterion_group, criterion_main};

fn jwt(account: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = serde_json::json!({"sub": account, "https://api.openai.com/auth": {"chatgpt_account_id": account}});
    format!("e30.{}.sig", e.encode(payload.to_string()))
}

fn pool(rt: &tokio::runtime::Runtime, strategy: &str, n: usize) -> Pool {
    rt.block_on(async {
        let config = Config::default().with("ROUTE_STRATEGY", strategy).unwrap();
        let pool = Pool::builder(config)
            .store(Arc::new(MemoryStore::new()))
            .watch_interval(Duration::ZERO)
            .open()
            .await
            .unwrap();
        for i in 0..n {
            let doc = serde_json::json!({"tokens": {"access_token": jwt(&format!("acct-{i}")), "refresh_token": "r"}});
            pool.accounts().import_bytes("bench", &serde_json::to_vec(&doc).unwrap()).await;
        }
        assert_eq!(pool.accounts().len(), n);
        pool
    })
}

fn selection(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("acquire+drop, 10k accounts");
    for strategy in ["ordered", "round-robin", "headroom"] {
        let pool = pool(&rt, strategy, 10_000);
        let accounts = pool.accounts();
        g.bench_function(strategy, |b| {
            b.iter(|| rt.block_on(async { drop(accounts.acquire(&Demand::any()).await.unwrap()) }))
        });
    }
    g.finish();
}

fn keys(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = pool(&rt, "ordered", 0);
    let mut secrets = Vec::new();
    for i in 0..1000 {
        secrets.push(
            rt.block_on(pool.keys().create(NewKey::named(format!("k{i}"))))
                .unwrap()
                .secret,
        );
    }
    let keys = pool.keys();
    let s = secrets[500].expose().to_string();
    c.bench_function("key verify, 1k keys", |b| {
        b.iter(|| keys.verify(&s).unwrap())
    });
}

criterion_group!(benches, selection, keys);
criterion_main!(benches);
