//! The server's HTTP threads: `HTTP_WORKER_*` of them, connections spread over all of them, and
//! none left once the server has stopped. One test in its own process, so the process's threads
//! are this server's.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

mod common;

use codexpool_core::Pool;
use codexpool_testkit::{FakeAccount, FakeOpenAi};

/// This process's HTTP threads: (thread id, nanoseconds it has run).
fn http_threads() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !name.starts_with("codexpool-http") {
            continue;
        }
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let ran = schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.push((dir.file_name().unwrap().to_string_lossy().into_owned(), ran));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_http_threads_which_end_with_the_server() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-0"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pool.db");
    let config = common::config_for(
        &fake,
        &[
            ("DB_PATH", db.to_str().unwrap()),
            ("HTTP_WORKER_FACTOR", "0"),
            ("HTTP_WORKER_MIN", "3"),
        ],
    );
    let pool = Pool::open(config).await.unwrap();
    pool.accounts()
        .import_bytes("a", fake.auth_json("acct-0").to_string().as_bytes())
        .await;
    let key = pool
        .keys()
        .create(codexpool_core::keys::NewKey::named("k"))
        .await
        .unwrap();
    assert!(http_threads().is_empty());
    let srv = common::serve(&pool).await;
    // Each thread names itself once it runs.
    let mut before = http_threads();
    for _ in 0..100 {
        if before.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        before = http_threads();
    }
    assert_eq!(before.len(), 3, "{before:?}");

    // 30 clients at once, each on a connection of its own: ten per thread.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let requests = (0..30).map(|_| {
        client
            .post(format!("{}/chat/completions", srv.base_url()))
            .bearer_auth(key.secret.expose())
            .json(&common::chat(true))
            .send()
    });
    for res in futures_util::future::join_all(requests).await {
        let res = res.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert!(res.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    }
    let after = http_threads();
    assert_eq!(after.len(), 3);
    for ((id, ran_before), (_, ran_after)) in before.iter().zip(&after) {
        assert!(
            ran_after > ran_before,
            "thread {id} served nothing: {after:?}"
        );
    }

    srv.stop().await.unwrap();
    assert_eq!(http_threads(), vec![], "HTTP threads outlived the server");
    assert_eq!(
        pool.request_log()
            .list(&codexpool_core::request_log::RequestLogQuery::latest(100))
            .await
            .unwrap()
            .len(),
        30
    );
}
