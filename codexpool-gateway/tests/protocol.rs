//! Wire facts of the Codex backend the gateway must honour (PROTOCOL.md §4): challenges that come
//! with a 200, the headers the Codex CLI needs back, the model catalogue request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use codexpool_core::AccountPatch;
use codexpool_core::keys::NewKey;
use codexpool_core::pool::CHALLENGE_COOLDOWN;
use codexpool_testkit::Reply;
use common::{chat, harness, harness_with};

/// A streamed `/v1/responses` turn as the Codex CLI 0.171 sends it in session `session-1`:
/// the key as `auth` (a header name and value) and its turn state, if any.
fn codex_turn(
    auth: (&str, String),
    turn_state: Option<&str>,
) -> axum::http::Request<axum::body::Body> {
    let mut req = axum::http::Request::post("/v1/responses")
        .header(auth.0, auth.1)
        .header("content-type", "application/json")
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0 (Debian 12.0.0; x86_64)")
        .header("x-codex-window-id", "session-1:0")
        .header("session_id", "session-1");
    if let Some(t) = turn_state {
        req = req.header("x-codex-turn-state", t);
    }
    let body = serde_json::json!({"model": "gpt-5-codex", "instructions": "x",
        "input": [], "stream": true, "store": false});
    req.body(axum::body::Body::from(body.to_string())).unwrap()
}

/// The `Authorization` header for a key's secret.
fn bearer(secret: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {secret}"))
}

#[tokio::test]
async fn a_challenge_page_with_status_200_is_a_challenge() {
    let h = harness(2, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::Status {
            status: 200,
            body: "<!DOCTYPE html><html><title>Just a moment...</title></html>".into(),
            content_type: "text/html; charset=UTF-8".into(),
        },
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, [h.ids[0].clone(), h.ids[1].clone()]);
    // A challenge cools the account for its own 6 s, not as a broken stream would (5 s, then
    // longer on repeats). The request took less than a second.
    let until = h.cooldown_until(0).unwrap();
    let left = until.since(h.pool.now());
    assert!(
        left > Duration::from_secs(5) && left <= CHALLENGE_COOLDOWN,
        "{left:?}"
    );
    assert_eq!(h.attempts("challenge").await, 1);
}

#[tokio::test]
async fn the_model_catalogue_is_asked_as_the_codex_cli_asks() {
    let h = harness(1, &[]).await;
    // The token has expired: one refresh, then the catalogue (not the built-in list).
    h.fake.expire_access_token("acct-0");
    h.fake
        .set_models(vec![codexpool_testkit::FakeModel::new("gpt-from-upstream")]);
    let req = axum::http::Request::get("/v1/models")
        .header("authorization", format!("Bearer {}", h.key))
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, v) = h.json(req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], "gpt-from-upstream", "{v}");
    assert_eq!(h.fake.refresh_count("acct-0"), 1);
    let asked = h.fake.requests_to("/backend-api/codex/models");
    let last = asked.last().unwrap();
    assert!(
        last.header("originator")
            .is_some_and(|o| o.starts_with("codex_"))
    );
    assert!(
        last.header("user-agent")
            .unwrap()
            .starts_with("codex_cli_rs/")
    );
    assert!(last.header("version").is_some());
    assert_eq!(last.header("chatgpt-account-id"), Some("acct-0"));
}

/// With every account busy the built-in list answers at once (no wait for an account: calls
/// queued behind each other's waits), for that moment only: the next call, once an account is
/// free, asks the upstream (it was kept for a minute).
#[tokio::test]
async fn a_busy_pool_does_not_keep_the_built_in_model_list() {
    let h = harness(
        1,
        &[
            ("ACCOUNT_MAX_INFLIGHT", "1"),
            ("REQUEST_GATE_WAIT_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    h.fake
        .set_models(vec![codexpool_testkit::FakeModel::new("gpt-from-upstream")]);
    let models = || {
        axum::http::Request::get("/v1/models")
            .header("authorization", format!("Bearer {}", h.key))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let held = h
        .pool
        .accounts()
        .acquire(&codexpool_core::Demand::any())
        .await
        .unwrap();
    let (status, v) = tokio::time::timeout(Duration::from_secs(10), h.json(models()))
        .await
        .expect("answered without waiting for an account");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], "gpt-5-codex", "built in: {v}");
    drop(held);
    let (_, v) = h.json(models()).await;
    assert_eq!(v["data"][0]["id"], "gpt-from-upstream", "{v}");
}

#[tokio::test]
async fn a_usage_limit_notice_in_the_text_is_read_to_the_wait_it_names() {
    let h = harness(2, &[]).await;
    // "You've hit your usage limit. " … "or try again in 4 hours 59 minutes." in three deltas.
    h.fake.push_reply("acct-0", Reply::UsageLimitText);
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-1.");
    let until = h.pool.usage().exhausted_until(&h.ids[0]).unwrap().unwrap();
    let named = h.pool.now().plus(Duration::from_secs(4 * 3600 + 59 * 60));
    let off = until.since(named).max(named.since(until));
    assert!(
        off < Duration::from_secs(30),
        "exhausted until {until:?}, named {named:?}"
    );
}

/// An answer that only begins like the notice (a user asked about usage limits) is served whole
/// by its account, which is not taken for exhausted: one too long for a notice, and one that
/// is still being written after the notice's time (a model at its own pace).
#[tokio::test]
async fn an_answer_that_begins_like_the_notice_is_served() {
    let h = harness(2, &[]).await;
    let mut long = vec!["When you hit your usage limit, ".to_string()];
    long.extend((0..60).map(|i| format!("the plan's window resets later (part {i}). ")));
    assert!(long.concat().len() > 2048);
    let slow = vec![
        "When you hit your usage limit, ".to_string(),
        "wait for the reset ".to_string(),
        "or use another plan.".to_string(),
    ];
    // Every event of the slow one 0.9 s apart: the rest of its text is not there within 2 s.
    let cases = [
        (long.clone(), None, false),
        (long, None, true),
        (slow, Some(Duration::from_millis(900)), true),
    ];
    for (deltas, pace, stream) in cases {
        let text = Reply::Text {
            deltas: deltas.clone(),
        };
        let reply = match pace {
            Some(interval) => Reply::Paced {
                interval,
                then: Box::new(text),
            },
            None => text,
        };
        h.fake.push_reply("acct-0", reply);
        let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(stream))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let got = if stream {
            common::streamed_content(&common::json_frames(&body))
        } else {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(got, deltas.concat(), "stream={stream} pace={pace:?}");
        let row = &h.log().await[0];
        assert_eq!(row.account_id.as_deref(), Some(h.ids[0].as_str()));
        assert_eq!(row.error_class, None);
    }
    assert_eq!(h.pool.usage().exhausted_until(&h.ids[0]).unwrap(), None);
}

/// A slow first event does not send the Codex CLI's headers early: it gets its turn state from
/// the account that answers, and a failure as the HTTP error it reads.
#[tokio::test]
async fn the_codex_cli_waits_for_a_slow_upstream_without_early_headers() {
    let h = harness_with(2, &[], |b| b.keepalive_interval(Duration::from_millis(100))).await;
    let codex = || codex_turn(bearer(&h.key), None);
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 600,
        }
        .slow_first_byte(Duration::from_millis(350)),
    );
    let (status, headers, text) = h.call(codex()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["x-codex-turn-state"], "turn-acct-1");
    assert!(!text.contains(": keep-alive"), "{text}");
    // Every account out: the CLI's own 429, not an error event in a 200 stream.
    h.fake.push_reply(
        "acct-1",
        Reply::UsageLimit429 {
            resets_in_secs: 600,
        }
        .slow_first_byte(Duration::from_millis(350)),
    );
    let (status, headers, text) = h.call(codex()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((595..=600).contains(&retry), "the earliest reset: {retry}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "usage_limit_reached", "{v}");
    let row = &h.log().await[0];
    assert_eq!(row.status, 429, "{row:?}");
    assert_eq!(row.error_class.as_deref(), Some("usage_limit_reached"));
    assert_eq!(
        row.accounts_tried.len(),
        1,
        "acct-0 was known to be out: {row:?}"
    );
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn the_codex_cli_gets_its_turn_state_and_it_stays_with_its_account() {
    let h = harness(2, &[]).await;
    let codex = |turn_state: Option<&str>| codex_turn(bearer(&h.key), turn_state);
    let (status, headers, _) = h.call(codex(None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-codex-turn-state"], "turn-acct-0");
    // Its usage headers are one account's, not the pool's: they stay here.
    assert!(headers.get("x-codex-primary-used-percent").is_none());
    // The turn goes on; its account runs out, so the request moves: the turn state (acct-0's)
    // goes to acct-0 but not to acct-1.
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 600,
        },
    );
    let (status, headers, _) = h.call(codex(Some("turn-acct-0"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-codex-turn-state"], "turn-acct-1");
    let sent = h.fake.requests_to("/backend-api/codex/responses");
    assert_eq!(sent[1].header("x-codex-turn-state"), Some("turn-acct-0"));
    assert_eq!(sent[2].header("chatgpt-account-id"), Some("acct-1"));
    assert_eq!(sent[2].header("x-codex-turn-state"), None);
    // Other clients get no backend headers.
    let (_, headers, _) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert!(headers.get("x-codex-turn-state").is_none());
}

/// Two keys whose clients happen to send the same session id (`session-1` here; `default` is
/// common) have two conversations: one key's turn never counts as the other's conversation
/// moving account, which would strip its turn state (and its reasoning) on every turn.
#[tokio::test]
async fn the_same_session_id_from_two_keys_is_two_conversations() {
    let h = harness(2, &[]).await;
    let mut secrets = Vec::new();
    for (i, id) in h.ids.iter().enumerate() {
        let group = format!("g{i}");
        h.pool
            .accounts()
            .update(id, AccountPatch::default().group(Some(group.clone())))
            .await
            .unwrap();
        let key = h
            .pool
            .keys()
            .create(NewKey::named(&group).allow_group(&group))
            .await;
        secrets.push(key.unwrap().secret.expose().to_string());
    }
    let codex = |secret: &str, turn_state: Option<&str>| codex_turn(bearer(secret), turn_state);
    // Key 1's first turn (on acct-1, its only account), then key 0's (on acct-0).
    let (status, headers, text) = h.call(codex(&secrets[1], None)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["x-codex-turn-state"], "turn-acct-1");
    let (_, headers, _) = h.call(codex(&secrets[0], None)).await;
    assert_eq!(headers["x-codex-turn-state"], "turn-acct-0");
    // Key 1's turn goes on where it was: its turn state reaches its account.
    let (status, _, _) = h.call(codex(&secrets[1], Some("turn-acct-1"))).await;
    assert_eq!(status, StatusCode::OK);
    let sent = h.fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(sent.header("chatgpt-account-id"), Some("acct-1"));
    assert_eq!(
        sent.header("session_id"),
        Some("session-1"),
        "sent as the client sent it"
    );
    assert_eq!(sent.header("x-codex-turn-state"), Some("turn-acct-1"));
}

/// The Codex CLI's headers go upstream as sent, except its credentials: a key given as
/// `x-api-key` (the strict fake refuses a request that carries one) or as `Authorization`.
#[tokio::test]
async fn the_codex_clis_own_credentials_and_proxy_headers_stay_here() {
    let h = harness(1, &[]).await;
    let mut req = codex_turn(("x-api-key", h.key.clone()), None);
    // What proxies in front of the gateway add: the user's address, a CDN's access token,
    // a hop-by-hop header named in `Connection`.
    let added = [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("via", "1.1 edge"),
        ("cf-access-jwt-assertion", "eyJ.secret.jwt"),
        ("cf-connecting-ip", "203.0.113.9"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("x-hop", "1"),
        ("connection", "x-hop"),
        ("x-codex-beta-features", "remote_compaction_v2"),
    ];
    for (name, value) in added {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    let (status, _, text) = h.call(req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let sent = h.fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(sent.header("x-api-key"), None);
    assert!(!sent.header("authorization").unwrap().contains(&h.key));
    for (name, _) in &added[..7] {
        assert_eq!(sent.header(name), None, "{name} went upstream");
    }
    assert_eq!(
        sent.header("x-codex-beta-features"),
        Some("remote_compaction_v2")
    );
    assert_eq!(sent.header("session_id"), Some("session-1"));
}

/// The backend may send its frames without `event:` lines (PROTOCOL.md §4: the type is the
/// JSON's `type`): chat answers, Responses streams and their assembly, and the failover on a
/// failure inside a 200 stream read the same.
#[tokio::test]
async fn frames_without_event_lines_read_the_same() {
    let h = harness(2, &[]).await;
    h.fake.set_event_lines(false);

    // Whichever account is tried first fails inside its 200 stream; the other one answers.
    h.fake
        .push_reply_any(Reply::failed("usage_limit_reached", "limit"));
    let (status, body) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let served = h.log().await[0].account_id.clone().unwrap();
    let fake_id = if served == h.ids[0] {
        "acct-0"
    } else {
        "acct-1"
    };
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("Hello from {fake_id}.")
    );
    assert_eq!(h.fake.requests().len(), 2, "tried twice");

    h.fake
        .push_reply_any(Reply::tool_call("call_1", "lookup", r#"{"q":"x"}"#));
    let (_, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    let frames = common::json_frames(&body);
    let call = frames
        .iter()
        .find_map(|f| f["choices"][0]["delta"]["tool_calls"][0].as_object())
        .unwrap();
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(
        frames
            .iter()
            .filter_map(|f| f["choices"][0]["finish_reason"].as_str())
            .collect::<Vec<_>>(),
        ["tool_calls"]
    );

    let streamed = serde_json::json!({"model": "gpt-5-codex", "input": "hi", "stream": true});
    let (status, _, body) = h.call(h.post("/v1/responses", streamed)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("event:"), "passed on as sent: {body}");
    let types: Vec<_> = common::json_frames(&body)
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("response.created"));
    assert_eq!(types.last().map(String::as_str), Some("response.completed"));

    let whole = serde_json::json!({"model": "gpt-5-codex", "input": "hi", "stream": false});
    let (status, body) = h.json(h.post("/v1/responses", whole)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(h.total_inflight(), 0);
}

/// What the backend refuses in a body that OpenAI takes is rewritten, not passed on: JSON mode
/// asked for only in the system prompt (chat and Responses), a system message in the middle of
/// a Responses input.
#[tokio::test]
async fn bodies_openai_takes_are_not_refused_upstream() {
    let h = harness(1, &[]).await;
    let chat_json = serde_json::json!({"model": "gpt-5-codex",
        "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "Extract people. Answer in JSON."},
                     {"role": "user", "content": "Alice met Bob."}]});
    let responses_json = serde_json::json!({"model": "gpt-5-codex",
        "text": {"format": {"type": "json_object"}},
        "input": [{"role": "system", "content": "Answer in JSON."},
                  {"role": "user", "content": "Alice met Bob."}]});
    let mid_system = serde_json::json!({"model": "gpt-5-codex",
        "input": [{"role": "user", "content": "Q"},
                  {"role": "system", "content": "From now on, be brief."},
                  {"role": "user", "content": "Q2"}]});
    for (path, body) in [
        ("/v1/chat/completions", chat_json),
        ("/v1/responses", responses_json),
        ("/v1/responses", mid_system),
    ] {
        let (status, answer) = h.json(h.post(path, body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{path} {body}: {answer}");
    }
    let sent = h.last_sent();
    assert_eq!(sent["input"][1]["role"], "developer");
    assert_eq!(h.total_inflight(), 0);
}
