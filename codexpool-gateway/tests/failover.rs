//! Failover before the first byte: every failure the backend can produce before output moves the
//! request to the next account, the client sees only the answer, and the pool learns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_core::keys::NewKey;
use codexpool_core::store::LeaseTake;
use codexpool_core::usage::ReadingSource;
use codexpool_core::{AccountStatus, Demand};
use codexpool_testkit::{FakeUsage, Reply};
use common::{
    ASKS, answer_text, chat, harness, harness_with, json_frames, question, streamed_content,
};
use serde_json::json;

async fn served_by_second(h: &common::Harness) -> serde_json::Value {
    let body = served_by_second_as(h, "/v1/chat/completions", false).await;
    serde_json::from_str(&body).unwrap()
}

/// One request asked the way of [`common::ASKS`]`(route, stream)`: answered whole by the second
/// account after the first failed, logged with both, nothing left in flight. Returns the body.
async fn served_by_second_as(h: &common::Harness, route: &str, stream: bool) -> String {
    let (status, _, body) = h.call(h.post(route, question(route, stream))).await;
    assert_eq!(status, StatusCode::OK, "{route} {stream}: {body}");
    assert_eq!(answer_text(route, stream, &body), "Hello from acct-1.");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, [h.ids[0].clone(), h.ids[1].clone()]);
    assert_eq!(row.account_id.as_deref(), Some(h.ids[1].as_str()));
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (200, None),
        "{row:?}"
    );
    assert_eq!(h.total_inflight(), 0);
    body
}

/// A second fake, whose plain OpenAI API is the fallback upstream of a gateway over `accounts`
/// accounts of the first; `keepalive` is how soon a slow stream sends its headers (default 15 s).
/// Returns (the fallback's fake, the gateway's harness).
async fn with_fallback(
    accounts: usize,
    keepalive: Option<Duration>,
) -> (common::Harness, common::Harness) {
    with_fallback_and(accounts, keepalive, &[]).await
}

/// [`with_fallback`] with more settings for the gateway.
async fn with_fallback_and(
    accounts: usize,
    keepalive: Option<Duration>,
    more: &[(&str, &str)],
) -> (common::Harness, common::Harness) {
    let h0 = harness(0, &[]).await;
    let fallback = h0.fake.openai_base_url();
    let mut settings = vec![
        ("UPSTREAM_FALLBACK_BASE_URL", fallback.as_str()),
        ("UPSTREAM_FALLBACK_API_KEY", "sk-fake"),
    ];
    settings.extend_from_slice(more);
    let h = harness_with(accounts, &settings, |b| match keepalive {
        Some(every) => b.keepalive_interval(every),
        None => b,
    })
    .await;
    (h0, h)
}

/// The Responses events of a stream that failed before its first event, checked to be a
/// response that failed at once: `response.created`, `response.failed`, `error`, numbered 0-2.
fn failed_at_once(text: &str) -> Vec<serde_json::Value> {
    let frames = json_frames(text);
    let types = common::event_types(&frames);
    assert_eq!(
        types,
        ["response.created", "response.failed", "error"],
        "{text}"
    );
    let numbers: Vec<_> = frames.iter().map(|f| &f["sequence_number"]).collect();
    assert_eq!(numbers, [0, 1, 2], "{text}");
    frames
}

/// The first account refuses with its usage limit; with `early`, after the keep-alive
/// interval of [`with_fallback`] (100 ms), so the stream's headers went out first.
fn refuse_with_usage_limit(h: &common::Harness, early: bool) {
    let refusal = Reply::UsageLimit429 {
        resets_in_secs: 600,
    };
    h.fake.push_reply(
        "acct-0",
        if early {
            refusal.slow_first_byte(Duration::from_millis(350))
        } else {
            refusal
        },
    );
}

#[tokio::test]
async fn usage_limit_429_exhausts_the_account_and_moves_on() {
    for (route, stream) in ASKS {
        let h = harness(2, &[]).await;
        h.fake.push_reply(
            "acct-0",
            Reply::UsageLimit429 {
                resets_in_secs: 3600,
            },
        );
        served_by_second_as(&h, route, stream).await;
        let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap().unwrap();
        assert!(until > h.pool.now().plus(Duration::from_secs(3500)));
        // The next request goes straight to the second account.
        let (status, _, body) = h.call(h.post(route, question(route, stream))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(answer_text(route, stream, &body), "Hello from acct-1.");
        assert_eq!(h.fake.requests_to("/backend-api/codex/responses").len(), 3);
        assert_eq!(h.log().await[0].accounts_tried, [h.ids[1].clone()]);
        assert_eq!(h.total_inflight(), 0);
    }
}

#[tokio::test]
async fn failures_inside_a_200_stream_fail_over() {
    for reply in [
        Reply::failed("server_error", "boom"),
        Reply::Overloaded,
        Reply::UsageLimitText,
        Reply::Garbage,
        Reply::CutMidStream { after_deltas: 0 },
    ] {
        for (route, stream) in ASKS {
            let h = harness(2, &[]).await;
            h.fake.push_reply("acct-0", reply.clone());
            served_by_second_as(&h, route, stream).await;
        }
    }
}

/// Every account overloaded: a 503 that says so and when to come back, as OpenAI answers it
/// (it was a 502, as if the upstream had broken).
#[tokio::test]
async fn an_overloaded_upstream_is_a_503() {
    for stream in [false, true] {
        let h = harness(1, &[]).await;
        h.fake.push_reply("acct-0", Reply::Overloaded);
        let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(stream))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(headers.contains_key("retry-after"), "{headers:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "server_is_overloaded", "{v}");
        assert_eq!(h.log().await[0].status, 503);
        assert_eq!(h.total_inflight(), 0);
    }
}

/// What an upstream sends before its first output is held back (to fail over if it fails), but
/// not without bound: past 4 MiB the attempt commits and the client gets it as it comes.
#[tokio::test]
async fn a_long_preamble_commits_the_attempt() {
    let h = harness(2, &[]).await;
    let pad = "x".repeat(64 * 1024);
    let mut raw = String::new();
    for n in 0..70 {
        raw += &format!(
            "data: {{\"type\":\"response.in_progress\",\"sequence_number\":{n},\"response\":{{\"id\":\"r\",\"pad\":\"{pad}\"}}}}\n\n"
        );
    }
    raw += "data: {\"type\":\"response.failed\",\"sequence_number\":70,\"response\":{\"id\":\"r\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n";
    h.fake.push_reply("acct-0", Reply::RawSse { body: raw });
    let body = json!({"model": "gpt-5-codex", "input": "hi", "stream": true});
    let (status, _, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !text.contains("Hello from acct-1."),
        "no failover after 4 MiB"
    );
    assert!(text.contains("response.failed"), "the failure as it came");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, [h.ids[0].clone()]);
    assert_eq!(h.total_inflight(), 0);
}

/// An answer that never ends is not gathered without bound for a non-streaming client: past
/// 64 MiB of events the request ends with a 502 saying so, and the account is not blamed.
#[tokio::test]
async fn an_endless_answer_is_not_gathered_without_bound() {
    let h = harness(2, &[]).await;
    let piece = "x".repeat(8 << 20);
    let mut raw = String::from(
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"output\":[]}}\n\n",
    );
    for _ in 0..9 {
        raw += &format!(
            "data: {{\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"{piece}\"}}\n\n"
        );
    }
    for (n, route) in ["/v1/chat/completions", "/v1/responses"]
        .into_iter()
        .enumerate()
    {
        h.fake
            .push_reply("acct-0", Reply::RawSse { body: raw.clone() });
        let (status, _, text) = h.call(h.post(route, question(route, false))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{route}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["error"]["code"], "upstream_answer_too_large",
            "{route}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("past 64 MiB"),
            "{route}: {v}"
        );
        let row = &h.log().await[n];
        assert_eq!(
            row.error_class.as_deref(),
            Some("upstream_answer_too_large")
        );
        assert_eq!(
            row.accounts_tried,
            [h.ids[0].clone()],
            "no other account tried"
        );
        assert_eq!(
            h.cooldown_until(0),
            None,
            "{route}: the account is not blamed"
        );
        assert_eq!(h.total_inflight(), 0);
    }
}

/// An upstream (a proxy) that closes idle connections without saying so: a request sent on a
/// pooled connection it has closed goes again on a new one, on the same account, which is not
/// blamed (it was cooled down, and with every account so, clients got 503s).
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_the_accounts_fault() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let item = r#"{"id":"msg_1","type":"message","role":"assistant","status":"completed","content":[{"type":"output_text","text":"Hi there.","annotations":[]}]}"#;
    let events = format!(
        "data: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[]}}}}\n\n\
         data: {{\"type\":\"response.output_item.done\",\"sequence_number\":1,\"output_index\":0,\"item\":{item}}}\n\n\
         data: {{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[{item}],\"usage\":{{\"input_tokens\":5,\"output_tokens\":3,\"total_tokens\":8}}}}}}\n\n"
    );
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
        events.len()
    );
    // Answers the first request of each connection; reads the second and closes.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let server = {
        let (closed, served) = (closed.clone(), served.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = upstream.accept().await {
                let (closed, served, answer) = (closed.clone(), served.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for n in 0.. {
                        // One request: its head, then its body (content-length).
                        let (head_end, length) = loop {
                            let text = String::from_utf8_lossy(&buf).to_string();
                            if let Some(end) = text.find("\r\n\r\n") {
                                let length = text[..end]
                                    .lines()
                                    .find_map(|l| {
                                        let (k, v) = l.split_once(':')?;
                                        k.eq_ignore_ascii_case("content-length")
                                            .then(|| v.trim().parse::<usize>().ok())?
                                    })
                                    .unwrap_or(0);
                                break (end + 4, length);
                            }
                            let mut chunk = [0u8; 8192];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        while buf.len() < head_end + length {
                            let mut chunk = [0u8; 8192];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        buf.drain(..head_end + length);
                        if n == 1 {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        served.fetch_add(1, Ordering::SeqCst);
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    let base = format!("http://{addr}/backend-api/codex");
    let h = harness(2, &[("UPSTREAM_BASE_URL", &base)]).await;
    for n in 0..2 {
        let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
        assert_eq!(status, StatusCode::OK, "request {n}: {v}");
        assert_eq!(v["choices"][0]["message"]["content"], "Hi there.");
        // Time for the connection to go back to the pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "the second request went on the pooled connection"
    );
    assert_eq!(served.load(Ordering::SeqCst), 2);
    for row in h.log().await {
        assert_eq!(row.accounts_tried, [h.ids[0].clone()]);
        assert_eq!(row.status, 200);
    }
    assert_eq!(h.cooldown_until(0), None, "the account is not blamed");
    server.abort();
}

/// A 200 that is no event stream (a JSON error from a proxy) is read as the refusal it is, and
/// compressed bytes no one asked for are named: neither is "a stream that ended inside an
/// event".
#[tokio::test]
async fn a_200_that_is_no_event_stream_says_what_it_is() {
    let h = harness(1, &[]).await;
    // What the body says decides: here the request's fault, the client's 400.
    h.fake.push_reply(
        "acct-0",
        Reply::Status {
            status: 200,
            body: r#"{"error":{"code":"context_length_exceeded","message":"Your input is too long."}}"#.into(),
            content_type: "application/json".into(),
        },
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error"]["message"], "upstream: Your input is too long.",
        "{v}"
    );
    h.fake.push_reply(
        "acct-0",
        Reply::text("Hello").with_header("content-encoding", "gzip"),
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "upstream_bad_encoding", "{v}");
    assert_eq!(
        v["error"]["message"],
        "upstream answered with content-encoding gzip, which was not asked for",
        "said once: {v}"
    );
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn http_failures_fail_over_with_the_right_cooldown() {
    for (reply, cooling) in [
        (Reply::RateLimit429, true),
        (Reply::ChallengeHtml, true),
        (
            Reply::Status {
                status: 500,
                body: "oops".into(),
                content_type: "text/plain".into(),
            },
            true,
        ),
        (
            Reply::Status {
                status: 503,
                body: "{}".into(),
                content_type: "application/json".into(),
            },
            true,
        ),
        // The Cloudflare header alone, on an ordinary-looking answer, is a challenge too (a
        // 400 without it is the request's fault: no other account would be tried).
        (
            Reply::status_json(400, serde_json::json!({"detail": "denied"}))
                .with_header("cf-mitigated", "challenge"),
            true,
        ),
        (
            Reply::text("hi").with_header("cf-mitigated", "challenge"),
            true,
        ),
    ] {
        let h = harness(2, &[]).await;
        h.fake.push_reply("acct-0", reply.clone());
        served_by_second(&h).await;
        assert_eq!(h.cooldown_until(0).is_some(), cooling, "{reply:?}");
    }
}

/// A rate limit's `Retry-After` is believed in either of its forms: seconds, or an HTTP date.
#[tokio::test]
async fn a_rate_limits_retry_after_may_be_an_http_date() {
    let in_ten_minutes = std::time::SystemTime::now() + Duration::from_secs(600);
    for retry_after in ["600".to_string(), httpdate::fmt_http_date(in_ten_minutes)] {
        let h = harness(2, &[]).await;
        h.fake.push_reply(
            "acct-0",
            Reply::status_json(
                429,
                json!({"error": {"type": "rate_limit_exceeded", "message": "slow down"}}),
            )
            .with_header("retry-after", retry_after.as_str()),
        );
        served_by_second(&h).await;
        let until = h.cooldown_until(0).unwrap();
        let wait = until.as_secs() - h.pool.now().as_secs();
        assert!((590..=600).contains(&wait), "{retry_after}: {wait}");
    }
}

#[tokio::test]
async fn a_deactivated_account_is_banned() {
    for (reply, code) in [
        (Reply::Deactivated, "account_deactivated"),
        (Reply::WorkspaceDeactivated, "workspace_deactivated"),
    ] {
        let h = harness(2, &[]).await;
        h.fake.push_reply("acct-0", reply);
        served_by_second(&h).await;
        let a = h.pool.accounts().get(&h.ids[0]).unwrap();
        assert_eq!(a.status, AccountStatus::Banned, "{code}");
        assert!(a.status_reason.unwrap().contains(code), "{code}");
    }
}

#[tokio::test]
async fn a_refused_request_is_not_retried() {
    let h = harness(2, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::status_json(400, serde_json::json!({"error": {"message": "bad tool schema", "type": "invalid_request_error", "code": "invalid_value", "param": "tools[0].parameters"}})),
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad tool schema")
    );
    assert_eq!(
        v["error"]["param"], "tools[0].parameters",
        "the upstream's, passed on"
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 1);
    assert!(
        h.pool.accounts().runtime(&h.ids[0]).unwrap().usable,
        "the account did nothing wrong"
    );
}

#[tokio::test]
async fn a_request_refused_inside_a_200_stream_is_not_retried() {
    let h = harness(2, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::failed("context_length_exceeded", "the input is too long"),
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("too long"),
        "{v}"
    );
    assert_eq!(
        h.fake.count("/backend-api/codex/responses"),
        1,
        "another account would refuse it too"
    );
    assert!(h.pool.accounts().runtime(&h.ids[0]).unwrap().usable);
    assert_eq!(h.log().await[0].accounts_tried, [h.ids[0].clone()]);
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn every_account_exhausted_is_a_429_with_retry_after() {
    let h = harness(2, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 900,
        },
    );
    h.fake.push_reply(
        "acct-1",
        Reply::UsageLimit429 {
            resets_in_secs: 300,
        },
    );
    // In every protocol, streamed or not, and whether the accounts were just found exhausted or
    // known to be.
    for (route, stream) in ASKS {
        let (status, headers, body) = h.call(h.post(route, question(route, stream))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            (295..=300).contains(&retry),
            "Retry-After is the earliest reset: {retry}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "usage_limit_reached", "{v}");
    }
    assert_eq!(
        h.fake.count("/backend-api/codex/responses"),
        2,
        "exhausted accounts are not asked again"
    );
    let rows = h.log().await;
    assert_eq!(rows.len(), ASKS.len());
    for row in &rows {
        assert_eq!(row.status, 429, "{row:?}");
        assert_eq!(
            row.error_class.as_deref(),
            Some("usage_limit_reached"),
            "{row:?}"
        );
    }
    // Newest first: the first request tried both, the others none.
    let tried: Vec<usize> = rows.iter().map(|r| r.accounts_tried.len()).collect();
    assert_eq!(tried, [0, 0, 0, 2], "{rows:?}");
    assert_eq!(h.total_inflight(), 0);
}

/// The last account failing for reasons of its own (its sign-in dead, deactivated) while the
/// others cool down leaves no account to serve: a 503 naming why, with when to come back, not a
/// 502 (the upstream did not break).
#[tokio::test]
async fn accounts_that_cannot_serve_any_more_are_a_503() {
    for (dead, code) in [
        (None, "token_refresh_failed"),
        (Some(Reply::Deactivated), "account_deactivated"),
    ] {
        // Alone, nothing cools down: still a time to come back (a new sign-in may be there by
        // then).
        let h = harness(1, &[]).await;
        match &dead {
            Some(reply) => h.fake.push_reply("acct-0", reply.clone()),
            None => h.fake.revoke_sessions("acct-0"),
        }
        let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers["retry-after"], "1", "{headers:?}");

        let h = harness(2, &[]).await;
        h.fake.push_reply("acct-0", Reply::Overloaded);
        match dead {
            Some(reply) => h.fake.push_reply("acct-1", reply),
            None => h.fake.revoke_sessions("acct-1"),
        }
        let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            headers.contains_key("retry-after"),
            "acct-0 cools down: {headers:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        let row = &h.log().await[0];
        assert_eq!((row.status, row.error_class.as_deref()), (503, Some(code)));
        assert_eq!(row.accounts_tried, h.ids);
        assert_eq!(h.total_inflight(), 0);
    }
}

#[tokio::test]
async fn an_empty_pool_is_a_503() {
    let h = harness(0, &[]).await;
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1", "{headers:?}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "no_account_available");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("codexpool account login")
    );
}

#[tokio::test]
async fn headers_feed_the_usage_tracker() {
    let h = harness(1, &[]).await;
    h.fake.set_usage("acct-0", FakeUsage::new(37.0, 12.0));
    let (status, _) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK);
    let u = h.pool.usage().get(&h.ids[0]).unwrap();
    let five = u.five_hour.unwrap();
    assert_eq!(
        (five.used_percent, five.source),
        (37.0, ReadingSource::Headers)
    );
    assert_eq!(u.weekly.unwrap().used_percent, 12.0);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_request_succeeds() {
    let h = harness(1, &[]).await;
    h.fake.expire_access_token("acct-0");
    let before = h
        .pool
        .accounts()
        .get(&h.ids[0])
        .unwrap()
        .tokens
        .access_token;
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-0.");
    let row = &h.log().await[0];
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (200, None),
        "{row:?}"
    );
    assert_eq!(
        row.accounts_tried,
        [h.ids[0].clone()],
        "refreshed, not failed over"
    );
    assert_eq!(h.total_inflight(), 0);
    assert_eq!(h.fake.refresh_count("acct-0"), 1);
    assert_ne!(
        h.pool
            .accounts()
            .get(&h.ids[0])
            .unwrap()
            .tokens
            .access_token,
        before
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 2);
}

#[tokio::test]
async fn a_401_while_another_process_refreshes_fails_over_without_waiting() {
    let h = harness(2, &[]).await;
    // Another (live) process holds acct-0's refresh lease and takes its time.
    let took = h
        .pool
        .store()
        .acquire_refresh_lease(
            &h.ids[0],
            "another process",
            h.pool.now(),
            Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(took, LeaseTake::Taken { .. }), "{took:?}");
    h.fake.expire_access_token("acct-0");

    let started = std::time::Instant::now();
    let sent = h.post("/v1/chat/completions", chat(false));
    let (status, v) = tokio::time::timeout(Duration::from_secs(20), h.json(sent))
        .await
        .expect("the request waited for the other process's refresh");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-1.");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, [h.ids[0].clone(), h.ids[1].clone()]);
    assert_eq!(h.fake.refresh_count("acct-0"), 0, "the lease was respected");
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn the_stream_idle_timeout_gives_504_and_moves_on() {
    let h = harness(2, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1")]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::text("late").slow_after_headers(Duration::from_secs(3)),
    );
    served_by_second(&h).await;
    // Streamed or not: nothing went out before the silence (the keep-alive interval is longer),
    // so the client gets the 504 itself.
    for (route, stream) in ASKS {
        let h = harness(1, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1")]).await;
        h.fake.push_reply("acct-0", Reply::HangForever);
        let (status, v) = h.json(h.post(route, question(route, stream))).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{route} {stream}: {v}");
        assert_eq!(v["error"]["code"], "upstream_timeout", "{v}");
        let row = &h.log().await[0];
        assert_eq!(row.error_class.as_deref(), Some("upstream_timeout"));
        assert_eq!(row.status, 504);
        assert_eq!(h.total_inflight(), 0);
        assert_eq!(
            (
                h.attempts("timeout").await,
                h.attempts("server_error").await
            ),
            (1, 0),
            "one attempt, counted once"
        );
    }
}

/// A silent upstream moves the request on once; a second silence ends it with 504, whatever
/// accounts are left (else a client would wait an idle timeout per account).
#[tokio::test]
async fn a_second_silent_upstream_ends_the_request() {
    let h = harness(3, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1")]).await;
    h.fake.push_reply("acct-0", Reply::HangForever);
    h.fake.push_reply("acct-1", Reply::HangForever);
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "upstream_timeout", "{v}");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, h.ids[..2]);
    assert_eq!(row.error_class.as_deref(), Some("upstream_timeout"));
    assert_eq!(row.status, 504);
    assert_eq!(h.attempts("timeout").await, 2);
    assert_eq!(h.total_inflight(), 0);
    assert_eq!(h.fake.requests_to("/backend-api/codex/responses").len(), 2);
}

/// Failures that each take a while (a proxy's 524 after 100 s) end the request once they have
/// taken two idle timeouts together, as two silences do, whatever accounts are left; an
/// account's own limit among them is no verdict on the upstream, and the next account serves.
#[tokio::test]
async fn slow_failures_end_the_request_after_two_idle_timeouts() {
    let slow = |then: Reply| Reply::SlowFirstByte {
        delay: Duration::from_secs(2),
        then: Box::new(then),
    };
    let h = harness(5, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "3")]).await;
    for id in 0..5 {
        h.fake
            .push_reply(&format!("acct-{id}"), slow(Reply::Overloaded));
    }
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert!(status.is_server_error(), "{status} {v}");
    let row = &h.log().await[0];
    // 2 s, 4 s (under the 6 s), 6 s: three accounts (two on a machine slow enough to take
    // 3 s per attempt), not five.
    let tried = row.accounts_tried.len();
    assert!((2..=3).contains(&tried), "{row:?}");
    assert_eq!(row.error_class.as_deref(), v["error"]["code"].as_str());
    assert_eq!(h.total_inflight(), 0);

    let h = harness(4, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "3")]).await;
    h.fake.push_reply("acct-0", slow(Reply::Overloaded));
    h.fake.push_reply("acct-1", slow(Reply::Overloaded));
    h.fake.push_reply(
        "acct-2",
        slow(Reply::UsageLimit429 {
            resets_in_secs: 3600,
        }),
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-3.");
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn connection_refused_moves_to_the_next_account_and_ends_in_an_error() {
    // A port nothing listens on: bound, then let go.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!("http://{free}/backend-api/codex");
    let h = harness(2, &[("UPSTREAM_BASE_URL", &base)]).await;
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried.len(), 2);
    assert_eq!(row.error_class.as_deref(), Some("upstream_unreachable"));
    assert_eq!(row.status, 502);
    assert_eq!(
        (
            h.attempts("connect_error").await,
            h.attempts("server_error").await
        ),
        (2, 0)
    );
    assert!(h.cooldown_until(0).is_some());
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn the_fallback_upstream_serves_when_no_account_can() {
    let (h0, h) = with_fallback(0, None).await;
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-codexpool-fallback"], "1");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(h0.fake.count("/v1/chat/completions"), 1);
    let row = &h.log().await[0];
    assert!(row.fallback);
}

/// What the fallback says it used is logged and counted, as an account's answer is: it is the
/// traffic a paid API key carries.
#[tokio::test]
async fn the_fallbacks_token_usage_is_logged_and_counted() {
    use codexpool_core::usage::{LedgerGroup, LedgerQuery};
    let (_h0, h) = with_fallback(0, None).await;
    let mut sum = 0;
    for (route, stream) in ASKS {
        let mut body = question(route, stream);
        if route == "/v1/chat/completions" && stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let (status, _, text) = h.call(h.post(route, body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        // The usage as the client got it, in either protocol's names.
        let said = if stream {
            json_frames(&text)
                .into_iter()
                .find_map(|f| match &f["usage"] {
                    serde_json::Value::Null => f["response"]["usage"].as_object().cloned(),
                    u => u.as_object().cloned(),
                })
                .unwrap_or_else(|| panic!("no usage: {text}"))
        } else {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["usage"].as_object().cloned().unwrap()
        };
        let total = said["total_tokens"].as_u64().unwrap();
        assert!(total > 0, "{said:?}");
        let row = &h.log().await[0];
        assert!(row.fallback, "{row:?}");
        let tokens = row
            .tokens
            .unwrap_or_else(|| panic!("{route} {stream}: {row:?}"));
        assert_eq!(tokens.input_tokens + tokens.output_tokens, total, "{row:?}");
        sum += total;
    }
    let ledger = h
        .pool
        .usage()
        .ledger(&LedgerQuery::by(LedgerGroup::Key))
        .await
        .unwrap();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].total_tokens, sum, "{ledger:?}");
    assert_eq!(ledger[0].requests, ASKS.len() as u64, "{ledger:?}");
}

#[tokio::test]
async fn the_fallback_gets_the_model_and_effort_the_key_binds() {
    let (h0, h) = with_fallback(0, None).await;
    let bound = h
        .pool
        .keys()
        .create(
            NewKey::named("bound")
                .model("gpt-5-codex-mini")
                .reasoning_effort("low"),
        )
        .await
        .unwrap();
    let send = |path: &str, body: serde_json::Value| {
        Request::post(path)
            .header("authorization", format!("Bearer {}", bound.secret.expose()))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let chat_body = json!({"model": "o3-pro", "reasoning_effort": "high", "stream": false,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = h.call(send("/v1/chat/completions", chat_body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let responses_body = json!({"model": "o3-pro", "input": "hi",
        "reasoning": {"effort": "high", "summary": "auto"}});
    let (status, _, body) = h.call(send("/v1/responses", responses_body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let sent = |path: &str| -> serde_json::Value {
        let req = h0.fake.requests_to(path).pop().expect(path);
        serde_json::from_slice(&req.body).unwrap()
    };
    let chat_sent = sent("/v1/chat/completions");
    assert_eq!(chat_sent["model"], "gpt-5-codex-mini");
    assert_eq!(chat_sent["reasoning_effort"], "low");
    assert_eq!(
        chat_sent["messages"][0]["content"], "hi",
        "the rest as sent"
    );
    let responses_sent = sent("/v1/responses");
    assert_eq!(responses_sent["model"], "gpt-5-codex-mini");
    assert_eq!(
        responses_sent["reasoning"],
        json!({"effort": "low", "summary": "auto"})
    );
    for row in h.log().await {
        assert!(row.fallback);
        assert_eq!(row.model.as_deref(), Some("gpt-5-codex-mini"));
    }
    // A key that binds nothing: the client's body goes as sent, byte for byte.
    let plain = json!({"model": "o3-pro", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, _) = h.call(h.post("/v1/chat/completions", plain.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let req = h0.fake.requests_to("/v1/chat/completions").pop().unwrap();
    assert_eq!(req.body, plain.to_string());
}

#[tokio::test]
async fn a_silent_fallback_upstream_times_out() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let h = harness(
        0,
        &[
            ("UPSTREAM_FALLBACK_BASE_URL", &format!("http://{addr}/v1")),
            ("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let (status, v) = tokio::time::timeout(
        Duration::from_secs(10),
        h.json(h.post("/v1/chat/completions", chat(false))),
    )
    .await
    .expect("the gateway gave up on the fallback");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "upstream_timeout");
    let row = &h.log().await[0];
    assert!(row.fallback);
    assert_eq!(row.status, 504);
    held.abort();
}

#[tokio::test]
async fn a_failure_after_early_headers_ends_a_responses_stream_with_an_error_event() {
    let h = harness_with(1, &[], |b| b.keepalive_interval(Duration::from_millis(100))).await;
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 600,
        }
        .slow_first_byte(Duration::from_millis(350)),
    );
    let body = serde_json::json!({"model": "gpt-5", "input": "hi", "stream": true});
    let (status, _, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "headers went out before the failure"
    );
    assert!(text.starts_with(": keep-alive\n\n"), "{text}");
    // A response that failed at once, as clients that build the response from the stream
    // (openai-python's `responses.stream`) need it: created first, then failed, then the error,
    // numbered from 0.
    let frames = failed_at_once(&text);
    let (created, failed, error) = (&frames[0]["response"], &frames[1]["response"], &frames[2]);
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["id"], failed["id"]);
    assert!(
        created["id"].as_str().unwrap().starts_with("resp_"),
        "{created}"
    );
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "usage_limit_reached", "{failed}");
    assert_eq!(error["code"], "usage_limit_reached", "{text}");
    assert!(text.contains("event: response.created\n"), "{text}");
    assert!(text.contains("event: error\n"), "{text}");
    assert_eq!(
        h.log().await[0].error_class.as_deref(),
        Some("usage_limit_reached")
    );
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn the_fallback_also_serves_after_early_headers() {
    let (h0, h) = with_fallback(1, Some(Duration::from_millis(100))).await;
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 600,
        }
        .slow_first_byte(Duration::from_millis(350)),
    );
    let (status, _, text) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.starts_with(": keep-alive\n\n"), "{text}");
    let frames = json_frames(&text);
    assert!(
        frames
            .iter()
            .any(|f| f["object"] == "chat.completion.chunk"),
        "the fallback's chunks: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("[DONE]").count(), 1, "{text}");
    assert_eq!(h0.fake.count("/v1/chat/completions"), 1);
    let row = &h.log().await[0];
    assert!(row.fallback);
    assert_eq!(row.status, 200);
}

/// A fallback that answers a streamed request with a 200 that is no event stream after early
/// headers: the client's stream ends with an error event, the JSON is not put inside it (before
/// early headers it goes as it came: see
/// `a_fallback_json_answer_passes_and_an_unreachable_one_is_logged`).
#[tokio::test]
async fn a_fallback_200_that_is_no_event_stream_after_early_headers_is_an_error_event() {
    let (h0, h) = with_fallback(1, Some(Duration::from_millis(100))).await;
    refuse_with_usage_limit(&h, true);
    h0.fake.push_openai_reply(Reply::Status {
        status: 200,
        body: r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#.into(),
        content_type: "application/json".into(),
    });
    let (status, _, text) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&text);
    let last = frames.last().unwrap();
    assert_eq!(last["error"]["code"], "fallback_failed", "{text}");
    assert!(text.contains("no event stream"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("chatcmpl-1"), "{text}");
    let row = &h.log().await[0];
    assert!(row.fallback, "{row:?}");
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (502, Some("fallback_failed"))
    );
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn a_fallback_stream_cut_ends_with_an_error_with_or_without_early_headers() {
    for early in [true, false] {
        for (path, body) in [
            ("/v1/chat/completions", chat(true)),
            (
                "/v1/responses",
                json!({"model": "gpt-5", "input": "hi", "stream": true}),
            ),
        ] {
            // Early headers: the account's refusal comes after the keep-alive interval.
            let (h0, h) = with_fallback(1, early.then_some(Duration::from_millis(100))).await;
            refuse_with_usage_limit(&h, early);
            h0.fake
                .push_openai_reply(Reply::CutMidStream { after_deltas: 2 });
            let (status, _, text) = h.call(h.post(path, body)).await;
            assert_eq!(status, StatusCode::OK, "the fallback answered 200");
            let frames = json_frames(&text);
            let last = frames.last().unwrap();
            if path == "/v1/chat/completions" {
                assert_eq!(last["error"]["code"], "upstream_cut", "{text}");
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            } else {
                assert_eq!(last["type"], "error", "{text}");
                assert_eq!(last["code"], "upstream_cut", "{text}");
                assert!(!text.contains("[DONE]"), "{text}");
                // Numbered past what the fallback sent (its events and comments, counted).
                let before = frames[frames.len() - 2]["sequence_number"]
                    .as_u64()
                    .unwrap();
                let number = last["sequence_number"].as_u64().unwrap();
                assert!(number > before, "{text}");
            }
            let row = h.log().await.pop().unwrap();
            assert!(row.fallback);
            assert_eq!(h.total_inflight(), 0);
        }
    }
}

/// A fallback stream that ends before any event reaches a Responses client as a response that
/// failed at once (created, failed, error), with or without early headers: never as nothing.
#[tokio::test]
async fn an_empty_fallback_stream_is_a_failed_response() {
    for early in [true, false] {
        let (h0, h) = with_fallback(0, early.then_some(Duration::from_millis(100))).await;
        h0.fake.push_openai_reply(Reply::RawSse {
            body: String::new(),
        });
        let body = json!({"model": "gpt-5", "input": "hi", "stream": true});
        let (status, _, text) = h.call(h.post("/v1/responses", body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let frames = failed_at_once(&text);
        assert_eq!(frames[2]["code"], "upstream_cut", "{text}");
        assert_eq!(h.total_inflight(), 0);
    }
    // A whole stream from a fallback that numbers nothing passes as it came.
    let (h0, h) = with_fallback(0, None).await;
    let whole = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n\
                 event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[]}}\n\n";
    h0.fake.push_openai_reply(Reply::RawSse {
        body: whole.to_string(),
    });
    let body = json!({"model": "gpt-5", "input": "hi", "stream": true});
    let (status, _, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, whole);
}

/// A fallback stream that ends early, part-way through an event, or goes silent reaches the
/// client as whole events and one error at the end in its protocol (one `[DONE]` for chat),
/// with or without early headers, and its row says so; a whole chat stream without `[DONE]`
/// gets one.
#[tokio::test]
async fn a_fallback_stream_that_fails_ends_with_whole_events_and_one_error() {
    let created = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\"}}\n\n";
    let chunk = |finish: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hi\"}},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let responses = json!({"model": "gpt-5", "input": "hi", "stream": true});
    // (path, body, the fallback's reply, the error code the client gets, or None)
    let cases = [
        (
            "/v1/responses",
            responses.clone(),
            Reply::RawSse {
                body: format!("{created}data: {{\"type\":\"response.output_te"),
            },
            Some("upstream_cut"),
        ),
        (
            "/v1/responses",
            responses.clone(),
            Reply::RawSse {
                body: ": ping\n\n".into(),
            },
            Some("upstream_cut"),
        ),
        (
            "/v1/chat/completions",
            chat(true),
            Reply::RawSse {
                body: chunk("null"),
            },
            Some("upstream_cut"),
        ),
        (
            "/v1/chat/completions",
            chat(true),
            Reply::HangForever,
            Some("upstream_timeout"),
        ),
        (
            "/v1/chat/completions",
            chat(true),
            Reply::RawSse {
                body: chunk("\"stop\""),
            },
            None,
        ),
    ];
    for early in [true, false] {
        for (path, body, reply, code) in cases.clone() {
            let what = format!("{path} {reply:?} early={early}");
            let idle = [("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1")];
            let (h0, h) =
                with_fallback_and(1, early.then_some(Duration::from_millis(100)), &idle).await;
            refuse_with_usage_limit(&h, early);
            h0.fake.push_openai_reply(reply);
            let (status, _, text) = h.call(h.post(path, body)).await;
            assert_eq!(status, StatusCode::OK, "{what}");
            // Every frame is whole JSON (a cut event is not passed on).
            let frames = json_frames(&text);
            let last = frames.last().unwrap();
            let row = h.log().await.pop().unwrap();
            assert!(row.fallback, "{what}");
            // A failure of the fallback's answer, else why no account served.
            let class = code.unwrap_or("usage_limit_reached");
            assert_eq!(row.error_class.as_deref(), Some(class), "{what}: {text}");
            if path == "/v1/chat/completions" {
                assert_eq!(text.matches("data: [DONE]").count(), 1, "{what}: {text}");
                assert!(text.ends_with("data: [DONE]\n\n"), "{what}: {text}");
                match code {
                    Some(code) => assert_eq!(last["error"]["code"], code, "{what}: {text}"),
                    None => assert_eq!(last["choices"][0]["finish_reason"], "stop", "{text}"),
                }
            } else {
                if text.contains("ping") {
                    // Nothing but a comment went by: a response that failed at once.
                    failed_at_once(&text);
                } else {
                    let types = common::event_types(&frames);
                    let numbers: Vec<_> = frames.iter().map(|f| &f["sequence_number"]).collect();
                    assert_eq!(types, ["response.created", "error"], "{what}: {text}");
                    assert_eq!(numbers, [0, 1], "{text}");
                }
                assert_eq!(last["code"], code.unwrap(), "{text}");
            }
            assert_eq!(h.total_inflight(), 0);
        }
    }
}

/// A fallback that answers a stream request with JSON is passed on as it came; one that cannot
/// be reached is what the row names.
#[tokio::test]
async fn a_fallback_json_answer_passes_and_an_unreachable_one_is_logged() {
    let (h0, h) = with_fallback(0, None).await;
    let json = r#"{"id":"c","object":"chat.completion","choices":[]}"#;
    h0.fake.push_openai_reply(Reply::Status {
        status: 200,
        body: json.into(),
        content_type: "application/json".into(),
    });
    let (status, headers, text) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(text, json);

    // Its refusals say when to come back: its own wait, else 1 s.
    let refusal = |status: u16| Reply::Status {
        status,
        body: r#"{"error":{"message":"busy","type":"server_error","code":null}}"#.into(),
        content_type: "application/json".into(),
    };
    h0.fake.push_openai_reply(Reply::RateLimit429);
    h0.fake.push_openai_reply(refusal(503));
    h0.fake.push_openai_reply(refusal(500));
    for (code, wait) in [(429, Some("1")), (503, Some("1")), (500, None)] {
        let (status, headers, _) = h.call(h.post("/v1/chat/completions", chat(false))).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(
            headers.get("retry-after").map(|v| v.to_str().unwrap()),
            wait,
            "{code}"
        );
    }
    h0.fake.push_openai_reply(Reply::WithHeader {
        name: "retry-after".into(),
        value: "17".into(),
        then: Box::new(refusal(503)),
    });
    let (_, headers, _) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(headers["retry-after"], "17", "its own wait");

    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", gone.local_addr().unwrap());
    drop(gone);
    let h = harness(0, &[("UPSTREAM_FALLBACK_BASE_URL", url.as_str())]).await;
    let (status, _, _) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let row = &h.log().await[0];
    assert!(row.fallback);
    assert_eq!(row.error_class.as_deref(), Some("fallback_unreachable"));
}

/// What a client that went away leaves behind: its account free at once, the upstream request
/// cancelled within 1 s, a row that says the client closed.
async fn left_nothing_behind(h: &common::Harness, route: &str) {
    assert_eq!(
        h.pool.accounts().runtime(&h.ids[0]).unwrap().inflight,
        0,
        "{route}: released at once"
    );
    assert!(
        h.fake
            .wait_until_async(Duration::from_secs(1), |f| f.cancelled_streams() == 1)
            .await,
        "{route}: upstream cancelled within 1 s"
    );
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("client_closed"), "{row:?}");
}

#[tokio::test]
async fn a_disconnecting_client_cancels_upstream_and_frees_the_account() {
    use http_body_util::BodyExt;
    for route in ["/v1/chat/completions", "/v1/responses"] {
        let h = harness(1, &[]).await;
        h.fake
            .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
        let res = h.send(h.post(route, question(route, true))).await;
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some());
        assert_eq!(h.pool.accounts().runtime(&h.ids[0]).unwrap().inflight, 1);
        drop(body);
        left_nothing_behind(&h, route).await;
    }
}

/// A client that gives up on a non-streamed answer (the request's future dropped while the
/// gateway still reads the upstream) frees the account and cancels the upstream as well.
#[tokio::test]
async fn a_client_giving_up_on_a_whole_answer_cancels_upstream() {
    for route in ["/v1/chat/completions", "/v1/responses"] {
        let h = harness(1, &[]).await;
        h.fake
            .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
        let asked = h.send(h.post(route, question(route, false)));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), asked)
                .await
                .is_err(),
            "{route}: a stalled answer is not whole"
        );
        left_nothing_behind(&h, route).await;
    }
}

#[tokio::test]
async fn a_conversation_stays_on_its_account() {
    let h = harness(3, &[("ROUTE_STRATEGY", "round-robin")]).await;
    let mut seen = Vec::new();
    for turn in 0..3 {
        let mut messages = vec![serde_json::json!({"role": "user", "content": "Plan a trip"})];
        for _ in 0..turn {
            messages.push(serde_json::json!({"role": "assistant", "content": "ok"}));
            messages.push(serde_json::json!({"role": "user", "content": "more"}));
        }
        let (status, _, headers_body) = {
            let (s, h2, b) = h
                .call(h.post(
                    "/v1/chat/completions",
                    serde_json::json!({"model": "m", "messages": messages}),
                ))
                .await;
            (s, b, h2)
        };
        assert_eq!(status, StatusCode::OK);
        seen.push(
            headers_body["x-codexpool-account"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(seen.iter().all(|a| *a == seen[0]), "{seen:?}");
    let sessions: Vec<_> = h
        .fake
        .requests_to("/backend-api/codex/responses")
        .iter()
        .map(|r| r.header("session_id").unwrap().to_string())
        .collect();
    assert!(
        sessions.iter().all(|s| *s == sessions[0]),
        "a stable session id: {sessions:?}"
    );
    // Another conversation may go elsewhere.
    let _ = h.pool.accounts().acquire(&Demand::any()).await.unwrap();
}

#[tokio::test]
async fn a_slow_upstream_gets_keepalives_for_streaming_clients() {
    let h = harness_with(1, &[], |b| b.keepalive_interval(Duration::from_millis(100))).await;
    h.fake.push_reply(
        "acct-0",
        Reply::text("Finally").slow_first_byte(Duration::from_millis(350)),
    );
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(": keep-alive\n\n"), "{body}");
    let text = streamed_content(&json_frames(&body));
    assert_eq!(text, "Finally");
    assert!(body.ends_with("data: [DONE]\n\n"));
}

/// Headers sent early come with a first comment at once: a client reading the body does not
/// wait a whole interval more (it got its first byte at twice the interval).
#[tokio::test]
async fn early_headers_come_with_a_first_keepalive() {
    use http_body_util::BodyExt;
    let h = harness_with(1, &[], |b| b.keepalive_interval(Duration::from_millis(300))).await;
    h.fake.push_reply(
        "acct-0",
        Reply::text("Finally").slow_first_byte(Duration::from_secs(2)),
    );
    let res = h.send(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let headers_at = std::time::Instant::now();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b": keep-alive\n\n");
    let waited = headers_at.elapsed();
    assert!(waited < Duration::from_millis(150), "{waited:?}");
}

#[tokio::test]
async fn the_codex_cli_gets_its_own_usage_limit_answer() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 900,
        },
    );
    // A Codex CLI request (its originator, session and `x-codex-*` headers, as the CLI sends
    // them): the body goes as sent.
    let codex = |body: serde_json::Value| {
        axum::http::Request::post("/v1/responses")
            .header("authorization", format!("Bearer {}", h.key))
            .header("content-type", "application/json")
            .header("originator", "codex_cli_rs")
            .header("session-id", "s-1")
            .header("x-codex-window-id", "s-1:0")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    let body = serde_json::json!({"model": "gpt-5-codex", "instructions": "x", "input": [],
        "stream": true, "store": false});
    let (status, v) = h.json(codex(body.clone())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // What the Codex CLI looks for to say "usage limit reached, try again at …".
    assert_eq!(v["error"]["type"], "usage_limit_reached", "{v}");
    let resets_in = v["error"]["resets_in_seconds"].as_u64().unwrap();
    assert!((890..=900).contains(&resets_in), "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = v["error"]["resets_at"].as_u64().unwrap();
    assert!(at.abs_diff(now + resets_in) <= 2, "{v}");
    // Other clients keep OpenAI's type.
    let (_, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"].get("resets_at").is_none());
}

/// acct-0's 5-hour window resets in 30 minutes; it answers a `response.failed`
/// `usage_limit_reached` (which names no reset) and the request is served by acct-1. Returns the
/// window's reset (Unix seconds).
async fn in_stream_limit_with_a_known_reset(h: &common::Harness) -> i64 {
    let five = codexpool_testkit::FakeWindow::five_hour(70.0).resets_in(Duration::from_secs(1800));
    let reset_at = five.reset_at;
    h.fake
        .set_usage("acct-0", FakeUsage::new(0.0, 10.0).primary(five));
    h.fake.push_reply(
        "acct-0",
        Reply::failed("usage_limit_reached", "The usage limit has been reached"),
    );
    served_by_second(h).await;
    reset_at
}

#[tokio::test]
async fn an_in_stream_usage_limit_exhausts_the_account() {
    let h = harness(2, &[]).await;
    let reset_at = in_stream_limit_with_a_known_reset(&h).await;
    let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap().unwrap();
    assert!(
        until.as_secs() >= reset_at - 2,
        "{} vs {reset_at}",
        until.as_secs()
    );
    // The next request goes straight to the second account.
    let (status, _) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.fake.requests_to("/backend-api/codex/responses").len(), 3);

    // The usage-limit text names its wait (4 hours 59 minutes); the headers of the same answer
    // say the same.
    let h = harness(2, &[]).await;
    h.fake.push_reply("acct-0", Reply::UsageLimitText);
    served_by_second(&h).await;
    let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap().unwrap();
    let expected = h.pool.now().plus(Duration::from_secs(4 * 3600 + 59 * 60));
    assert!(
        (until.as_secs() - expected.as_secs()).abs() <= 5,
        "{} vs {}",
        until.as_secs(),
        expected.as_secs()
    );
}

/// The backend refuses before 100 % on some plans (PROTOCOL.md §3): the refusal's own usage
/// headers then say the window has room, and only the refusal says it has not. It alone benches
/// the account, until the wait it names.
#[tokio::test]
async fn a_refusal_below_full_benches_the_account_by_itself() {
    let refusals: [(fn() -> Reply, u64); 3] = [
        (
            || Reply::UsageLimit429 {
                resets_in_secs: 3600,
            },
            3600,
        ),
        (|| Reply::UsageLimitText, 4 * 3600 + 59 * 60),
        (
            || Reply::failed("usage_limit_reached", "The usage limit has been reached"),
            // No wait named: the 5-hour window's.
            5 * 3600,
        ),
    ];
    for (refusal, wait) in refusals {
        let h = harness(2, &[]).await;
        h.fake.set_limit_before_full(true);
        h.fake.push_reply("acct-0", refusal());
        served_by_second(&h).await;
        let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap();
        let expected = h.pool.now().plus(Duration::from_secs(wait));
        let until = until.unwrap_or_else(|| panic!("not benched after a {wait} s refusal"));
        assert!(
            (until.as_secs() - expected.as_secs()).abs() <= 60,
            "{wait}: {} vs {}",
            until.as_secs(),
            expected.as_secs()
        );
        // The next request goes straight to the second account.
        let (status, _) = h.json(h.post("/v1/chat/completions", chat(false))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h.fake.requests_to("/backend-api/codex/responses").len(), 3);
    }
}

/// The answer's `x-codex-*` headers say the 5-hour window is used up until its reset in 30
/// minutes; the `response.failed` names no reset: the account is back then, not 5 hours from
/// now (a limit without a reset keeps the exhaustion the headers named; one near full but not
/// at 100 % is taken as that window's too, see `a_usage_limit_without_a_reset_takes_the_fullest_windows`
/// in codexpool-core).
#[tokio::test]
async fn an_in_stream_usage_limit_keeps_the_reset_the_headers_name() {
    let h = harness(2, &[]).await;
    let reset_at = in_stream_limit_with_a_known_reset(&h).await;
    let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap().unwrap();
    assert!(
        (until.as_secs() - reset_at).abs() <= 2,
        "exhausted until the window's reset: {} vs {reset_at}",
        until.as_secs()
    );
}

/// A non-streaming answer reaches the client only whole: an upstream that fails part-way (cut
/// off, or a retryable failure event after some text) goes to the next account, and the client
/// never sees the failed attempt.
#[tokio::test]
async fn an_assembled_answer_that_fails_part_way_moves_to_the_next_account() {
    for (first, class) in [
        (Reply::CutMidStream { after_deltas: 2 }, "upstream_cut"),
        (
            Reply::FailedAfterText {
                deltas: vec!["Half".into()],
                code: "server_error".into(),
                message: "boom".into(),
            },
            "server_error",
        ),
    ] {
        let h = harness(2, &[]).await;
        h.fake.push_reply("acct-0", first);
        let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
        assert_eq!(status, StatusCode::OK, "{class}: {v}");
        assert_eq!(
            v["choices"][0]["message"]["content"], "Hello from acct-1.",
            "{class}"
        );
        let row = &h.log().await[0];
        assert_eq!(row.accounts_tried, h.ids, "{class}");
        assert_eq!(row.account_id.as_deref(), Some(h.ids[1].as_str()));
        assert!(row.error_class.is_none(), "{class}: {row:?}");
        assert_eq!(h.total_inflight(), 0);
        assert!(
            h.cooldown_until(0).is_some(),
            "{class}: the account that failed rests"
        );
    }
}

/// Each of `accounts` answers its next request with some text, then a `response.failed`.
fn fail_after_text(h: &common::Harness, accounts: &[&str], code: &str, message: &str) {
    for acct in accounts {
        h.fake.push_reply(
            acct,
            Reply::FailedAfterText {
                deltas: vec!["Half".into()],
                code: code.into(),
                message: message.into(),
            },
        );
    }
}

/// An assembled answer goes to another account once after failing part-way, not to every
/// account: each try was generated (and billed) up to its failure, and a request the backend
/// keeps failing would otherwise cost every account and cool them all down, refusing the
/// requests of other clients meanwhile.
#[tokio::test]
async fn an_assembled_answer_is_tried_again_once_after_failing_part_way() {
    let h = harness(3, &[]).await;
    fail_after_text(&h, &["acct-0", "acct-1"], "server_error", "boom");
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "server_error", "{v}");
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 2);
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, h.ids[..2], "{row:?}");
    assert_eq!(row.error_class.as_deref(), Some("server_error"));
    assert_eq!(h.total_inflight(), 0);
    let third = h.pool.accounts().runtime(&h.ids[2]).unwrap();
    assert!(third.usable && third.cooldown_until.is_none(), "{third:?}");
    // Another client's request is served meanwhile.
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-2.");
}

/// Past its part-way failures an assembled answer goes to the fallback upstream, as when no
/// account is left; an account's own usage limit met part-way is no failure of the request and
/// does not count.
#[tokio::test]
async fn part_way_failures_end_at_the_fallback_and_usage_limits_do_not_count() {
    let (h0, h) = with_fallback(3, None).await;
    for acct in ["acct-0", "acct-1"] {
        h.fake
            .push_reply(acct, Reply::CutMidStream { after_deltas: 2 });
    }
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-codexpool-fallback"], "1");
    assert_eq!(h0.fake.count("/v1/chat/completions"), 1);
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 2);
    assert_eq!(h.total_inflight(), 0);

    let h = harness(3, &[]).await;
    let limit = "You've hit your usage limit. Try again in 2 hours.";
    fail_after_text(&h, &["acct-0", "acct-1"], "usage_limit_reached", limit);
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-2.");
    assert_eq!(h.log().await[0].accounts_tried, h.ids);
}

/// A usage limit part-way through an assembled answer on the last account: a 429 with the
/// `Retry-After` the limit names (its "try again in", counted from when it came).
#[tokio::test]
async fn an_assembled_answer_cut_by_a_usage_limit_says_when_to_come_back() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::FailedAfterText {
            deltas: vec!["Half".into()],
            code: "usage_limit_reached".into(),
            message: "You've hit your usage limit. Try again in 2 hours 5 minutes.".into(),
        },
    );
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "usage_limit_reached", "{v}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((7490..=7500).contains(&retry_after), "{retry_after}");
    let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap().unwrap();
    let expected = h.pool.now().plus(Duration::from_secs(7500));
    assert!(until.since(expected).as_secs() <= 10 && expected.since(until).as_secs() <= 10);
    assert_eq!(h.total_inflight(), 0);
}

/// An assembled answer that fails part-way on the last account goes to the fallback upstream,
/// as one that failed before its first event does.
#[tokio::test]
async fn an_assembled_answer_failing_on_the_last_account_goes_to_the_fallback() {
    let (h0, h) = with_fallback(1, None).await;
    h.fake
        .push_reply("acct-0", Reply::CutMidStream { after_deltas: 2 });
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-codexpool-fallback"], "1");
    assert_eq!(h0.fake.count("/v1/chat/completions"), 1);
    let row = &h.log().await[0];
    assert!(row.fallback);
    assert_eq!(row.accounts_tried, h.ids);
    assert_eq!(h.total_inflight(), 0);
}

/// A `/v1/responses` request for a whole (not streamed) answer.
fn whole_response(h: &common::Harness) -> Request<Body> {
    h.post(
        "/v1/responses",
        json!({"model": "gpt-5-codex", "input": "Hi", "stream": false}),
    )
}

/// With no account left, the client hears what went wrong on the last one (not "no account").
#[tokio::test]
async fn an_assembled_answer_failing_on_every_account_says_why() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::CutMidStream { after_deltas: 2 });
    let (status, v) = h.json(whole_response(&h)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "upstream_cut", "{v}");
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("upstream_cut"));
    assert_eq!(row.status, 502);
    assert_eq!(h.total_inflight(), 0);
}

/// An assembled answer that failed part-way on one account and was then refused by the next
/// (the last one): the client and the log hear the last account's refusal, not the first
/// account's cut.
#[tokio::test]
async fn an_assembled_answer_refused_after_a_part_way_failure_says_the_last_accounts_why() {
    let h = harness(2, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::CutMidStream { after_deltas: 2 });
    h.fake.push_reply(
        "acct-1",
        Reply::UsageLimit429 {
            resets_in_secs: 3600,
        },
    );
    let (status, headers, body) = h.call(whole_response(&h)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "usage_limit_reached", "{v}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 2);
    let row = &h.log().await[0];
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (429, Some("usage_limit_reached"))
    );
    assert_eq!(row.accounts_tried, h.ids);
    assert_eq!(h.total_inflight(), 0);
}

/// Assembled answers that fail part-way count against the two idle timeouts failed attempts may
/// take together, as failures before the first event do: a proxy that cuts every stream after a
/// while does not get the request sent (and billed) on every account in turn.
#[tokio::test]
async fn assembled_answers_failing_part_way_end_after_two_idle_timeouts() {
    let h = harness(4, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1")]).await;
    for i in 0..4 {
        h.fake.push_reply(
            &format!("acct-{i}"),
            // Each attempt takes well over the 2 s budget before it is cut.
            Reply::Paced {
                interval: Duration::from_millis(400),
                then: Box::new(Reply::CutMidStream { after_deltas: 4 }),
            },
        );
    }
    let (status, v) = h.json(whole_response(&h)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "upstream_cut", "{v}");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried.len(), 1, "{row:?}");
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 1);
    assert_eq!(row.error_class.as_deref(), Some("upstream_cut"));
    assert_eq!(h.total_inflight(), 0);
}

/// A conversation moves only with a whole answer: an assembled answer begun on another account
/// (its own was busy) whose client gave up leaves the conversation where it was.
#[tokio::test]
async fn an_assembled_answer_given_up_leaves_the_conversation_where_it_was() {
    let h = harness(
        2,
        &[
            ("ROUTE_STRATEGY", "ordered"),
            ("ACCOUNT_MAX_INFLIGHT", "1"),
            ("REQUEST_GATE_WAIT_TIMEOUT_MS", "0"),
        ],
    )
    .await;
    let turn = |stream: bool| {
        let mut req = h.post(
            "/v1/responses",
            json!({"model": "gpt-5-codex", "input": "Hi", "stream": stream}),
        );
        req.headers_mut()
            .insert("session_id", "conv-1".parse().unwrap());
        req
    };
    let served = |headers: &axum::http::HeaderMap| {
        headers["x-codexpool-account"].to_str().unwrap().to_string()
    };
    let (status, headers, _) = h.call(turn(false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served(&headers), h.ids[0], "the first turn pins acct-0");
    // acct-0 is busy; the next turn begins on acct-1, and its client gives up.
    let busy = h.pool.accounts().acquire(&Demand::any()).await.unwrap();
    assert_eq!(busy.account_id(), h.ids[0]);
    h.fake
        .push_reply("acct-1", Reply::StallMidStream { after_deltas: 2 });
    let asked = h.send(turn(false));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), asked)
            .await
            .is_err()
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 2);
    drop(busy);
    let (status, headers, _) = h.call(turn(false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        served(&headers),
        h.ids[0],
        "the conversation stayed on acct-0"
    );
    assert_eq!(h.total_inflight(), 0);
}

/// The point of no return is the first reasoning, text or tool-call delta, whatever comes
/// before it (an item announced, a part opened): a failure before it (`response.failed` or the
/// backend's `error` event) moves the request to the next account; after it, the request is
/// never sent again and the client gets the failure.
#[tokio::test]
async fn a_failure_fails_over_only_before_the_first_delta() {
    let created =
        r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#;
    let reasoning_item = r#"{"type":"response.output_item.added","output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[]}}"#;
    let call_item = r#"{"type":"response.output_item.added","output_index":0,"item":{"id":"fc_1","type":"function_call","call_id":"call_1","name":"f","arguments":""}}"#;
    let reasoning_delta = r#"{"type":"response.reasoning_summary_text.delta","item_id":"rs_1","output_index":0,"summary_index":0,"delta":"Thinking"}"#;
    let args_delta = r#"{"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":0,"delta":"{\"a\""}"#;
    let failed = r#"{"type":"response.failed","response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"boom"}}}"#;
    let error = r#"{"type":"error","code":"server_error","message":"boom"}"#;
    for (events, retried) in [
        (vec![created, reasoning_item, failed], true),
        (vec![created, call_item, error], true),
        (
            vec![created, reasoning_item, reasoning_delta, failed],
            false,
        ),
        (vec![created, call_item, args_delta, error], false),
    ] {
        let h = harness(2, &[]).await;
        let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        h.fake.push_reply("acct-0", Reply::RawSse { body });
        let req = h.post(
            "/v1/responses",
            json!({"model": "gpt-5", "input": "hi", "stream": true}),
        );
        let (status, _, text) = h.call(req).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let sent = h.fake.count("/backend-api/codex/responses");
        let row = h.log().await.pop().unwrap();
        if retried {
            assert_eq!(sent, 2, "{events:?}");
            assert_eq!(row.account_id.as_deref(), Some(h.ids[1].as_str()));
            assert!(text.contains("Hello from acct-1."), "{text}");
        } else {
            assert_eq!(sent, 1, "never sent again after a delta: {events:?}");
            let last = json_frames(&text).pop().unwrap();
            assert!(
                ["response.failed", "error"].contains(&last["type"].as_str().unwrap()),
                "{text}"
            );
            assert_eq!(row.error_class.as_deref(), Some("server_error"), "{row:?}");
        }
        assert_eq!(h.total_inflight(), 0);
    }
}
