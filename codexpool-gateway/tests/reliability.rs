//! Fault injection at the gateway: many clients at once against capped accounts, every account's
//! token expiring together, and arbitrary bytes at every HTTP entry point. Each test checks what
//! the client saw, what the log holds, and that per-account inflight returns to zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_testkit::Reply;
use common::{ASKS, answer_text, harness, question};

use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_over_three_capped_accounts() {
    for route in ["/v1/chat/completions", "/v1/responses"] {
        two_hundred_streams(route).await;
    }
}

/// 200 streaming clients of `route` at once over 3 accounts capped at 4 each: no account above
/// its cap, every client answered whole or refused with a 503 saying when to come back, one log
/// row each, nothing left in flight. A request waits up to 200 ms for a free account: 12 streams
/// of about 50 ms at a time cannot serve all 200 within it, so some are refused.
async fn two_hundred_streams(route: &'static str) {
    let h = Arc::new(
        harness(
            3,
            &[
                ("ACCOUNT_MAX_INFLIGHT", "4"),
                ("REQUEST_GATE_WAIT_TIMEOUT_MS", "200"),
            ],
        )
        .await,
    );
    for name in ["acct-0", "acct-1", "acct-2"] {
        h.fake.set_default_reply(
            name,
            Reply::text("one two three four").paced(Duration::from_millis(5)),
        );
    }
    // Watch every account's inflight while the storm runs.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut max: HashMap<String, u32> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                for id in &h.ids {
                    let n = h.pool.accounts().runtime(id).unwrap().inflight;
                    let m = max.entry(id.clone()).or_default();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let res = h.send(h.post(route, question(route, true))).await;
            let status = res.status();
            let retry_after = res.headers().get("retry-after").cloned();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                retry_after,
                String::from_utf8_lossy(&body).to_string(),
            )
        }));
    }
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("nothing hangs");
    stop.store(true, Ordering::Relaxed);
    let max = watcher.await.unwrap();
    let (mut ok, mut shed) = (0, 0);
    for o in outcomes {
        let (status, retry_after, body) = o.unwrap();
        match status {
            StatusCode::OK => {
                // The whole answer: a cut or failed stream is no answer.
                assert_eq!(answer_text(route, true, &body), "one two three four");
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                // Said so, with when to come back.
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "accounts_busy", "{body}");
                assert_eq!(retry_after.unwrap(), "1", "{body}");
                shed += 1;
            }
            other => panic!("{route}: unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok + shed, 200);
    assert!(ok >= 12, "{route}: served {ok}");
    assert!(shed > 0, "{route}: the cap never refused anyone");
    assert_eq!(max.len(), 3);
    for (id, m) in &max {
        assert!(
            (1..=4).contains(m),
            "{route}: account {id} reached {m} in flight"
        );
    }
    // And as the upstream saw it: never more than the cap open on one account.
    for name in ["acct-0", "acct-1", "acct-2"] {
        let peak = h.fake.peak_open_streams(name);
        assert!(
            (1..=4).contains(&peak),
            "{route}: {name} had {peak} answers open at once"
        );
    }
    assert_eq!(h.total_inflight(), 0);
    let log = h
        .pool
        .request_log()
        .list(&codexpool_core::request_log::RequestLogQuery::latest(1000))
        .await
        .unwrap();
    assert_eq!(log.len(), 200, "one row per request");
    let served: Vec<_> = log.iter().filter(|r| r.status == 200).collect();
    assert_eq!(served.len(), ok);
    assert!(served.iter().all(|r| r.error_class.is_none()), "{served:?}");
    let refused = log.iter().filter(|r| r.status == 503);
    assert_eq!(
        refused
            .filter(|r| r.error_class.as_deref() == Some("accounts_busy"))
            .count(),
        shed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_expired_means_one_refresh_per_account() {
    let h = Arc::new(harness(3, &[("ROUTE_STRATEGY", "round-robin")]).await);
    for name in ["acct-0", "acct-1", "acct-2"] {
        h.fake.expire_access_token(name);
    }
    let mut tasks = Vec::new();
    for i in 0..32 {
        let h = h.clone();
        // Every protocol, in distinct conversations, so round-robin spreads them (one
        // conversation sticks to one account).
        let (route, stream) = ASKS[i % ASKS.len()];
        let mut body = question(route, stream);
        let content = format!("question {i}");
        match route {
            "/v1/responses" => body["input"] = content.into(),
            _ => body["messages"][0]["content"] = content.into(),
        }
        tasks.push(tokio::spawn(async move {
            let (status, _, text) = h.call(h.post(route, body)).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let answer = answer_text(route, stream, &text);
            assert!(answer.starts_with("Hello from acct-"), "{answer}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for name in ["acct-0", "acct-1", "acct-2"] {
        assert_eq!(h.fake.refresh_count(name), 1, "{name}");
    }
    // Each account said 401 at least once before its refresh.
    assert!(h.fake.count("/backend-api/codex/responses") >= 32 + 3);
    // Each request served on the account it was given, after the refresh, without failing over.
    let rows = h.log().await;
    assert_eq!(rows.len(), 32);
    for row in &rows {
        assert_eq!(row.status, 200, "{row:?}");
        assert!(row.error_class.is_none(), "{row:?}");
        assert_eq!(row.accounts_tried.len(), 1, "{row:?}");
    }
    assert_eq!(h.total_inflight(), 0);
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-z ]{0,8}".prop_map(serde_json::Value::String),
        prop::sample::select(vec![
            "user",
            "system",
            "tool",
            "assistant",
            "gpt-5-codex",
            "function",
            "text"
        ])
        .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "model",
                    "messages",
                    "input",
                    "role",
                    "content",
                    "tools",
                    "stream",
                    "tool_calls",
                    "type",
                    "x"
                ]),
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bodies and headers at the model routes: a clear answer, never a panic or a 500,
    /// and never a half-written record.
    #[test]
    fn arbitrary_input_never_breaks_the_gateway(
        json in arb_json(),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        use_bytes in any::<bool>(),
        route in prop::sample::select(vec!["/v1/chat/completions", "/v1/responses", "/v1/responses/compact"]),
        headers in prop::collection::vec((
            prop::sample::select(vec![
                "authorization", "content-type", "originator", "session-id", "x-session-id",
                "x-codex-window-id", "x-codex-turn-state", "openai-beta", "chatgpt-account-id",
                "x-request-id", "content-encoding", "accept", "user-agent", "x-client-request-id",
            ]),
            // Any byte a header value may hold (visible ASCII, tab, and obs-text).
            prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..60),
        ), 0..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness(1, &[]).await;
            let body = if use_bytes { bytes.clone() } else { json.to_string().into_bytes() };
            let mut req = Request::post(route)
                .header("authorization", format!("Bearer {}", h.key))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            for (name, value) in &headers {
                let value = axum::http::HeaderValue::from_bytes(value).unwrap();
                req.headers_mut().insert(*name, value);
            }
            let res = h.gateway.router().oneshot(req).await.unwrap();
            let status = res.status();
            let text = res.into_body().collect().await.unwrap().to_bytes();
            prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{}", String::from_utf8_lossy(&text));
            if status.is_client_error() {
                let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
                prop_assert!(v["error"]["message"].is_string());
            }
            let log = h.log().await;
            prop_assert_eq!(log.len(), 1);
            prop_assert_eq!(log[0].status, status.as_u16());
            prop_assert_eq!(h.total_inflight(), 0);
            Ok(())
        })?;
    }
}

/// `bytes` as one path segment or query value, every byte not unreserved percent-encoded.
fn percent_encoded(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary ids and query parameters at the routes that take them from the URL: a clear
    /// answer, never a panic or a 500, and what the gateway keeps is left as it was.
    #[test]
    fn arbitrary_ids_and_queries_never_break_the_gateway(
        id in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "resp_[a-z0-9]{0,12}".prop_map(String::into_bytes),
        ],
        query in prop::collection::vec((
            prop::sample::select(vec!["limit", "order", "after", "before", "include[]", "stream", "x"]),
            prop::collection::vec(any::<u8>(), 0..24),
        ), 0..4),
        route in prop::sample::select(vec![
            ("GET", "/v1/responses/{id}"),
            ("DELETE", "/v1/responses/{id}"),
            ("GET", "/v1/responses/{id}/input_items"),
            ("GET", "/v1/models/{id}"),
        ]),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness(1, &[]).await;
            // A kept response that must survive whatever comes.
            let (status, kept) = h
                .json(h.post("/v1/responses", serde_json::json!({"model": "gpt-5-codex", "input": "Hi"})))
                .await;
            prop_assert_eq!(status, StatusCode::OK);
            let kept_id = kept["id"].as_str().unwrap().to_string();
            let (method, path) = route;
            let mut uri = path.replace("{id}", &percent_encoded(&id));
            let pairs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encoded(v)))
                .collect();
            if !pairs.is_empty() {
                uri = format!("{uri}?{}", pairs.join("&"));
            }
            let req = Request::builder()
                .method(method)
                .uri(&uri)
                .header("authorization", format!("Bearer {}", h.key))
                .body(Body::empty())
                .unwrap();
            let res = h.gateway.router().oneshot(req).await.unwrap();
            let status = res.status();
            let text = res.into_body().collect().await.unwrap().to_bytes();
            prop_assert!(status.as_u16() < 500, "{} {}: {} {}", method, uri, status, String::from_utf8_lossy(&text));
            if status.is_client_error() {
                let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                    TestCaseError::fail(format!("{method} {uri}: {status} {e}: {}", String::from_utf8_lossy(&text)))
                })?;
                prop_assert!(v["error"]["message"].is_string(), "{}", v);
            }
            // Deleting another id leaves the kept one where it was.
            if !(method == "DELETE" && id == kept_id.as_bytes()) {
                let get = Request::get(format!("/v1/responses/{kept_id}"))
                    .header("authorization", format!("Bearer {}", h.key))
                    .body(Body::empty())
                    .unwrap();
                prop_assert_eq!(h.send(get).await.status(), StatusCode::OK);
            }
            prop_assert_eq!(h.total_inflight(), 0);
            Ok(())
        })?;
    }
}
