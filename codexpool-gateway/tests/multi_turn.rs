//! Conversations over several turns through `/v1/responses`: a client replays an earlier answer's
//! `output` items as they came (ids and all, as `input += response.output` does) plus item
//! references, and the backend, which stores nothing under `store: false`, must never be asked to
//! look any of them up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_testkit::{OutputItem, Reply};
use common::{Harness, harness};
use serde_json::{Value, json};

/// Turn 1: a question answered with reasoning, a message and a tool call; its `output`.
async fn first_turn(h: &Harness, reasoning: bool) -> Vec<Value> {
    h.fake.push_reply(
        "acct-0",
        Reply::items([
            OutputItem::reasoning("Look it up"),
            OutputItem::text("Checking the weather."),
            OutputItem::tool_call("call_1", "weather", r#"{"city":"Oslo"}"#),
        ]),
    );
    let mut body = json!({"model": "gpt-5-codex", "input": [
        {"type": "message", "role": "user", "content": "Weather in Oslo?"}]});
    if reasoning {
        body["reasoning"] = json!({"effort": "low"});
    }
    let (status, v) = h.json(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let output = v["output"].as_array().unwrap().clone();
    assert_eq!(output.len(), 3, "{v}");
    assert!(output.iter().all(|item| item["id"].is_string()), "{v}");
    output
}

/// Turn 2: the first turn's input, its output items as they came, a reference to the message,
/// the tool's result.
fn second_turn(output: &[Value]) -> Value {
    let mut input = vec![json!({"type": "message", "role": "user", "content": "Weather in Oslo?"})];
    input.extend(output.iter().cloned());
    input.push(json!({"type": "item_reference", "id": output[1]["id"]}));
    input.push(json!({"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}));
    json!({"model": "gpt-5-codex", "reasoning": {"effort": "low"}, "input": input})
}

/// The input items of the last request the backend received.
fn sent_input(h: &Harness) -> Vec<Value> {
    let sent = h.last_sent();
    sent["input"].as_array().unwrap().clone()
}

#[tokio::test]
async fn replayed_output_items_with_ids_and_references_are_accepted() {
    let h = harness(1, &[]).await;
    let output = first_turn(&h, true).await;
    assert!(output[0]["encrypted_content"].is_string());

    let (status, headers, text) = h.call(h.post("/v1/responses", second_turn(&output))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"], "The tool returned: Sunny",
        "{v}"
    );
    let dropped = headers["x-codexpool-dropped-params"].to_str().unwrap();
    assert!(dropped.contains("input[].id"), "{dropped}");
    assert!(dropped.contains("input[].item_reference"), "{dropped}");

    let input = sent_input(&h);
    let kinds: Vec<&str> = input.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "reasoning",
            "message",
            "function_call",
            "function_call_output"
        ]
    );
    assert!(input.iter().all(|i| i.get("id").is_none()), "{input:?}");
    // The encrypted reasoning goes back to the account that made it.
    assert_eq!(
        input[1]["encrypted_content"],
        output[0]["encrypted_content"]
    );
    assert_eq!(input[3]["call_id"], "call_1");
}

#[tokio::test]
async fn replayed_reasoning_without_its_encrypted_content_is_left_out() {
    let h = harness(1, &[]).await;
    // Without `reasoning` no encrypted content was asked for: the item is only an id.
    let output = first_turn(&h, false).await;
    assert!(output[0].get("encrypted_content").is_none());

    let (status, headers, text) = h.call(h.post("/v1/responses", second_turn(&output))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let dropped = headers["x-codexpool-dropped-params"].to_str().unwrap();
    assert!(dropped.contains("input[].reasoning"), "{dropped}");
    let input = sent_input(&h);
    assert!(input.iter().all(|i| i["type"] != "reasoning"), "{input:?}");
    assert!(input.iter().all(|i| i["type"] != "item_reference"));
    assert!(input.iter().all(|i| i.get("id").is_none()), "{input:?}");
}

#[tokio::test]
async fn a_streamed_second_turn_is_accepted_too() {
    let h = harness(1, &[]).await;
    let output = first_turn(&h, true).await;
    let mut body = second_turn(&output);
    body["stream"] = json!(true);
    let (status, _, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("response.completed"), "{text}");
}

#[tokio::test]
async fn the_codex_cli_replays_go_as_sent_and_the_backend_has_the_last_word() {
    let h = harness(1, &[]).await;
    let output = first_turn(&h, true).await;
    // The Codex CLI's own requests are not rewritten: a reference reaches the backend, which
    // cannot resolve it, and the client hears about it rather than getting an answer built on
    // a silently shortened history.
    let mut body = second_turn(&output);
    body["stream"] = json!(true);
    body["store"] = json!(false);
    body["instructions"] = json!("You are Codex.");
    let req = Request::post("/v1/responses")
        .header("authorization", format!("Bearer {}", h.key))
        .header("content-type", "application/json")
        .header("originator", "codex_exec")
        .header("session-id", "s-1")
        .header("x-codex-window-id", "s-1:0")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, text) = h.call(req).await;
    assert!(status.is_client_error(), "{status}: {text}");
    assert!(text.contains("not found"), "{text}");
    let sent = h.last_sent();
    assert!(
        sent["input"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["type"] == "item_reference"),
        "forwarded as sent"
    );
    assert_eq!(
        h.fake.count("/backend-api/codex/responses"),
        2,
        "not retried"
    );
}
