//! `/v1/responses` through the gateway: ordinary clients (body rules) and the Codex CLI (as sent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_testkit::Reply;
use common::{harness, json_frames};
use serde_json::json;

/// A streamed Responses request saying "Hi".
fn ask_streamed(h: &common::Harness) -> Request<Body> {
    h.post(
        "/v1/responses",
        json!({"model": "gpt-5-codex", "input": "Hi", "stream": true}),
    )
}

#[tokio::test]
async fn streaming_passes_events_through() {
    let h = harness(1, &[]).await;
    let (status, headers, body) = h.call(ask_streamed(&h)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let types: Vec<String> = json_frames(&body)
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("response.created"));
    assert_eq!(types.last().map(String::as_str), Some("response.completed"));
    assert!(types.iter().any(|t| t == "response.output_text.delta"));
    assert!(
        body.contains("event: response.completed\n"),
        "event lines are kept"
    );
    let sent = h.last_sent();
    assert_eq!(
        sent["input"][0]["content"][0]["type"], "input_text",
        "a string input becomes a message"
    );
    assert!(h.log().await[0].tokens.is_some());
}

/// A Responses stream cut part-way on an account: the events that came, then an `error` event
/// naming the cut (no `response.completed`); the log says so; the lease is back.
#[tokio::test]
async fn a_stream_cut_part_way_ends_with_an_error_event() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::CutMidStream { after_deltas: 2 });
    let (status, _, body) = h.call(ask_streamed(&h)).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&body);
    let types = common::event_types(&frames);
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "response.output_text.delta")
            .count(),
        2,
        "{body}"
    );
    assert!(!types.contains(&"response.completed"), "{body}");
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "error", "{body}");
    assert_eq!(last["code"], "upstream_cut", "{body}");
    // Numbered after the events relayed, as clients such as the Vercel AI SDK require.
    let before = frames[frames.len() - 2]["sequence_number"]
        .as_u64()
        .unwrap();
    assert_eq!(last["sequence_number"], before + 1, "{body}");
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("upstream_cut"));
    assert_eq!(row.status, 200);
    assert_eq!(h.total_inflight(), 0);
}

/// What the gateway cannot read as an event is not passed on as if it were one (OpenAI's SDKs
/// fail on it mid-stream): a frame without a type is left out, and a final event that does not
/// read ends the stream with an `error` event instead.
#[tokio::test]
async fn unreadable_upstream_frames_are_not_relayed() {
    let h = harness(1, &[]).await;
    let raw = "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"output\":[]}}\n\n\
               data: {not json\n\n\
               data: {\"sequence_number\":1,\"delta\":\"no type\"}\n\n\
               data: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"output_index\":0,\"delta\":\"Hi\"}\n\n\
               data: {\"type\":\"response.completed\",\"sequence_number\":3}\n\n";
    h.fake.push_reply(
        "acct-0",
        Reply::RawSse {
            body: raw.to_string(),
        },
    );
    let (status, _, body) = h.call(ask_streamed(&h)).await;
    assert_eq!(status, StatusCode::OK);
    // Every frame that goes out reads as an event with a type.
    let frames = json_frames(&body);
    assert_eq!(
        common::event_types(&frames),
        ["response.created", "response.output_text.delta", "error"],
        "{body}"
    );
    let last = frames.last().unwrap();
    assert_eq!(last["code"], "malformed_event", "{body}");
    assert_eq!(last["sequence_number"], 4, "{body}");
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("malformed_event"));
    assert_eq!(h.total_inflight(), 0);
}

/// An upstream numbering its events up to the largest number there is: the error after them
/// keeps that number (no overflow).
#[tokio::test]
async fn a_cut_after_the_largest_sequence_number_is_numbered_without_overflow() {
    let h = harness(1, &[]).await;
    let max = u64::MAX;
    h.fake.push_reply(
        "acct-0",
        Reply::RawSse {
            body: format!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":{},\"response\":{{\"id\":\"r\"}}}}\n\n\
                 event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{max},\"item_id\":\"m\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}}\n\n",
                max - 1
            ),
        },
    );
    let (status, _, body) = h.call(ask_streamed(&h)).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&body);
    assert_eq!(
        common::event_types(&frames),
        ["response.created", "response.output_text.delta", "error"]
    );
    assert_eq!(frames[2]["sequence_number"], max, "{body}");
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn non_streaming_gets_the_final_object() {
    let h = harness(1, &[]).await;
    h.fake.push_reply("acct-0", Reply::text("All done"));
    let (status, v) = h
        .json(h.post(
            "/v1/responses",
            json!({"model": "gpt-5-codex", "input": "Hi"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    let text = &v["output"][0]["content"][0]["text"];
    assert_eq!(text, "All done");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn codex_cli_requests_go_as_sent() {
    let h = harness(1, &[]).await;
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../src/adapt/testdata/codex-cli-0.171-request.json"
    ))
    .unwrap();
    let mut req = Request::post("/v1/responses");
    for (k, v) in fixture["headers"].as_object().unwrap() {
        if k == "authorization" || k == "accept-encoding" {
            continue;
        }
        req = req.header(k.as_str(), v.as_str().unwrap());
    }
    let body = fixture["body"].to_string();
    let req = req
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, _, text) = h.call(req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let sent = h.fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(
        sent.body.as_ref(),
        body.as_bytes(),
        "the body is forwarded byte for byte"
    );
    assert_eq!(sent.header("originator"), Some("codex_exec"));
    assert_eq!(
        sent.header("session-id"),
        fixture["headers"]["session-id"].as_str()
    );
    assert_eq!(
        sent.header("x-codex-window-id"),
        fixture["headers"]["x-codex-window-id"].as_str()
    );
    assert_eq!(sent.header("chatgpt-account-id"), Some("acct-0"));
    assert!(
        sent.header("authorization")
            .unwrap()
            .starts_with("Bearer ey"),
        "the account's token"
    );
    assert!(sent.header("accept-encoding").is_none());
}

#[tokio::test]
async fn a_bound_key_forces_model_and_effort() {
    let h = harness(1, &[]).await;
    let k = h
        .pool
        .keys()
        .create(
            codexpool_core::keys::NewKey::named("bound")
                .model("gpt-5.1-codex")
                .reasoning_effort("high"),
        )
        .await
        .unwrap();
    let req = Request::post("/v1/responses")
        .header("x-api-key", k.secret.expose())
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": "other", "input": "Hi", "stream": false}).to_string(),
        ))
        .unwrap();
    let (status, _, body) = h.call(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = h.last_sent();
    assert_eq!(sent["model"], "gpt-5.1-codex");
    assert_eq!(sent["reasoning"]["effort"], "high");
}

#[tokio::test]
async fn compaction_is_forwarded_on_the_conversations_account() {
    let h = harness(2, &[]).await;
    let body = json!({"model": "gpt-5-codex", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]}, {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "b"}]}]});
    let (status, headers, text) = h.call(h.post("/v1/responses/compact", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Summary of 2 earlier items by acct-0."
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses/compact"), 1);
    // Its answer is JSON, and asked for as such.
    let sent = h
        .fake
        .last_request("/backend-api/codex/responses/compact")
        .unwrap();
    assert_eq!(sent.header("accept"), Some("application/json"));
    let row = &h.log().await[0];
    assert_eq!(
        (row.route.as_str(), row.status),
        ("/v1/responses/compact", 200)
    );
    assert_eq!(h.total_inflight(), 0);
    // A failing account is skipped here too: the compaction is served by the next one.
    h.fake
        .push_compact_reply("acct-0", Reply::UsageLimit429 { resets_in_secs: 60 });
    let (status, v) = h
        .json(h.post(
            "/v1/responses/compact",
            json!({"model": "gpt-5-codex", "input": []}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Summary of 0 earlier items by acct-1."
    );
    let sent = h.fake.requests_to("/backend-api/codex/responses/compact");
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[1].header("chatgpt-account-id"), Some("acct-0"));
    assert_eq!(h.total_inflight(), 0);
}

/// A compaction the upstream breaks off part-way is a 502 saying so (it was a 200 with half a
/// document): the answer is read whole before it goes out.
#[tokio::test]
async fn a_compaction_cut_part_way_is_an_error_not_half_a_document() {
    let h = harness(1, &[]).await;
    h.fake
        .push_compact_reply("acct-0", Reply::CutMidStream { after_deltas: 2 });
    let (status, v) = h
        .json(h.post(
            "/v1/responses/compact",
            json!({"model": "gpt-5-codex", "input": []}),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"]["code"], "upstream_cut", "{v}");
    let row = &h.log().await[0];
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (502, Some("upstream_cut"))
    );
    assert_eq!(h.total_inflight(), 0);
    assert!(
        h.cooldown_until(0).is_some(),
        "a broken answer counts against the account"
    );
}

/// The Codex CLI's compaction of a session goes to the account of the session's turns, whose
/// encrypted reasoning it carries, even when the next request would go elsewhere (round robin):
/// another account would refuse that reasoning.
#[tokio::test]
async fn a_codex_sessions_compaction_stays_on_its_account() {
    let h = harness(2, &[("ROUTE_STRATEGY", "round-robin")]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::reasoning_then_text("Thinking it over", "First answer"),
    );
    let user = json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Plan a trip"}]});
    let turn = json!({"model": "gpt-5-codex", "instructions": "You are Codex.", "input": [user],
        "stream": true, "store": false, "include": ["reasoning.encrypted_content"]});
    let (status, _, text) = h.call(h.codex_post(&turn, Some("s-1"))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let last = json_frames(&text).pop().unwrap();
    let mut input = vec![user];
    input.extend(
        last["response"]["output"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    assert!(input.iter().any(|i| i["type"] == "reasoning"), "{input:?}");

    let mut compact = h.codex_post(
        &json!({"model": "gpt-5-codex", "input": input}),
        Some("s-1"),
    );
    *compact.uri_mut() = "/v1/responses/compact".parse().unwrap();
    let (status, _, text) = h.call(compact).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Summary of 3 earlier items by acct-0."
    );
    let sent = h.fake.requests_to("/backend-api/codex/responses/compact");
    assert_eq!(sent.len(), 1, "no refused try first");
}

/// Turn 1 of a reasoning conversation on acct-0; returns the next turn's input (the history
/// with acct-0's encrypted reasoning, plus `next` from the user).
async fn first_turn(h: &common::Harness, opening: &str, next: &str) -> serde_json::Value {
    h.fake.push_reply(
        "acct-0",
        Reply::reasoning_then_text("Thinking it over", "First answer"),
    );
    let user = |text: &str| json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]});
    let body = json!({"model": "gpt-5", "input": [user(opening)], "reasoning": {"effort": "low"}, "stream": false});
    let (status, v) = h.json(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let output = v["output"].as_array().unwrap();
    assert!(
        output
            .iter()
            .any(|i| i["type"] == "reasoning" && i["encrypted_content"].is_string()),
        "{v}"
    );
    let mut input = vec![user(opening)];
    input.extend(output.iter().cloned());
    input.push(user(next));
    json!({"model": "gpt-5", "input": input, "reasoning": {"effort": "low"}, "stream": false})
}

fn reasoning_items(req: &codexpool_testkit::RecordedRequest) -> usize {
    req.body_json().unwrap()["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "reasoning")
        .count()
}

#[tokio::test]
async fn a_conversation_that_moves_leaves_its_old_accounts_reasoning_behind() {
    let h = harness(2, &[]).await;
    let turn2 = first_turn(&h, "Plan a trip", "And the budget?").await;
    // Its account runs out: the conversation moves to acct-1, which cannot read acct-0's
    // encrypted reasoning (the fake, like the backend, answers 400 to it).
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 3600,
        },
    );
    let (status, v) = h.json(h.post("/v1/responses", turn2.clone())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let sent = h.fake.requests_to("/backend-api/codex/responses");
    assert_eq!(sent.len(), 3, "turn 1, the 429, then acct-1 at once");
    assert_eq!(sent[1].header("chatgpt-account-id"), Some("acct-0"));
    assert_eq!(reasoning_items(&sent[1]), 1, "its own account gets it all");
    assert_eq!(sent[2].header("chatgpt-account-id"), Some("acct-1"));
    assert_eq!(reasoning_items(&sent[2]), 0);
    let input = sent[2].body_json().unwrap()["input"].clone();
    assert_eq!(
        input.as_array().unwrap().len(),
        3,
        "the messages stay: {input}"
    );
}

#[tokio::test]
async fn foreign_reasoning_without_a_pin_is_dropped_after_the_backends_400() {
    let h = harness(2, &[]).await;
    // Turn 2 opens differently, so no pin leads it to acct-0 (as after a restart).
    let mut turn2 = first_turn(&h, "Plan a trip", "And the budget?").await;
    turn2["input"][0]["content"][0]["text"] = json!("Another opening");
    h.pool.accounts().disable(&h.ids[0]).await.unwrap();
    let (status, v) = h.json(h.post("/v1/responses", turn2)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let sent = h.fake.requests_to("/backend-api/codex/responses");
    assert_eq!(sent.len(), 3, "turn 1, the refused try, the resend");
    assert_eq!(
        (reasoning_items(&sent[1]), reasoning_items(&sent[2])),
        (1, 0)
    );
    assert!(
        sent[1..]
            .iter()
            .all(|r| r.header("chatgpt-account-id") == Some("acct-1"))
    );
    assert!(
        h.pool.accounts().runtime(&h.ids[1]).unwrap().usable,
        "acct-1 did nothing wrong"
    );
    assert_eq!(h.total_inflight(), 0);
}

/// PROTOCOL.md §4: every backend request carries a `session_id` ("the client's, else derived
/// stably from the platform key + conversation"). A client speaking the backend's dialect
/// (here only an `originator: codex_…` header) that sends no session header gets none
/// upstream: `Upstream::send` inserts the derived `call.session_id` only for ordinary clients,
/// and the strict fake refuses the request (400 "Missing required header: session_id").
#[tokio::test]
async fn a_codex_dialect_request_without_a_session_header_gets_the_derived_one() {
    let h = harness(1, &[]).await;
    let body = json!({"model": "gpt-5-codex", "instructions": "x", "stream": true, "store": false,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]});
    let (status, _, text) = h.call(h.codex_post(&body, None)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let sent = h.fake.last_request("/backend-api/codex/responses").unwrap();
    assert!(sent.header("session_id").is_some());
}
