//! Conversations over several turns through `/v1/responses`. A client replays an earlier answer's
//! `output` items as they came (ids and all, as `input += response.output` does), refers to them
//! with `item_reference`s (the Vercel AI SDK) or names the earlier response with
//! `previous_response_id` (openai-python, LangChain). The backend stores nothing under
//! `store: false` and must never be asked to look anything up: the gateway keeps the answers
//! itself and sends the backend the full items.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_testkit::{OutputItem, Reply};
use common::{Harness, harness, harness_with, json_frames};
use serde_json::{Value, json};

/// Turn 1: a question answered with reasoning, a message and a tool call; its `output`.
async fn first_turn(h: &Harness, reasoning: bool) -> Vec<Value> {
    first_turn_with(h, reasoning, json!({})).await
}

/// [`first_turn`] with `extra` fields in the body.
async fn first_turn_with(h: &Harness, reasoning: bool, extra: Value) -> Vec<Value> {
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
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
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
    assert_eq!(dropped, "input[].id");

    let input = sent_input(&h);
    let kinds: Vec<&str> = input.iter().map(|i| i["type"].as_str().unwrap()).collect();
    // The reference is replaced by the message it names (which this client also sent in full).
    assert_eq!(
        kinds,
        [
            "message",
            "reasoning",
            "message",
            "function_call",
            "message",
            "function_call_output"
        ]
    );
    assert_eq!(input[4], input[2]);
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
    // Without `reasoning`, and with `store: false`, no encrypted content was asked for and
    // nothing was kept: the item is only an id.
    let output = first_turn_with(&h, false, json!({"store": false})).await;
    assert!(output[0].get("encrypted_content").is_none());

    let mut turn2 = second_turn(&output);
    let input = turn2["input"].as_array_mut().unwrap();
    input.retain(|i| i["type"] != "item_reference");
    let (status, headers, text) = h.call(h.post("/v1/responses", turn2)).await;
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
    let req = h.codex_post(&body, Some("s-1"));
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

// --- The responses the gateway keeps (`store` left at its default) ---

fn user(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

/// A body of `key` to `/v1/responses`.
fn post_as(key: &str, body: &Value) -> Request<Body> {
    Request::post("/v1/responses")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// One turn, streamed or not; the final response object.
async fn turn(h: &Harness, body: Value) -> Value {
    let stream = body["stream"] == json!(true);
    let (status, _, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    if !stream {
        return serde_json::from_str(&text).unwrap();
    }
    let last = json_frames(&text).pop().unwrap();
    assert_eq!(last["type"], "response.completed", "{text}");
    last["response"].clone()
}

/// The texts of the input items the backend last received (user and assistant messages).
fn sent_texts(h: &Harness) -> Vec<String> {
    sent_input(h)
        .iter()
        .filter(|i| i["type"] == "message")
        .map(|i| i["content"][0]["text"].as_str().unwrap().to_string())
        .collect()
}

/// An OpenAI error: (status, type, code, param, message).
async fn error_of(h: &Harness, req: Request<Body>) -> (StatusCode, Value) {
    let (status, v) = h.json(req).await;
    (status, v["error"].clone())
}

#[tokio::test]
async fn ai_sdk_item_references_bring_back_the_earlier_turn() {
    // The Vercel AI SDK's default provider (`store` left at true) sends the earlier assistant
    // turn as references to its reasoning and message items.
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::reasoning_then_text("Thinking about Oslo", "It is sunny in Oslo."),
    );
    let body = json!({"model": "gpt-5-codex", "input": [user("Weather in Oslo?")]});
    let (status, headers, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(headers.get("x-codexpool-dropped-params").is_none());
    // The answer is kept, so its reasoning must be replayable: the encrypted content is asked
    // for although the client set no `reasoning`.
    assert_eq!(
        h.last_sent()["include"],
        json!(["reasoning.encrypted_content"])
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let (rs, msg) = (&v["output"][0], &v["output"][1]);
    assert_eq!(
        (rs["type"].as_str(), msg["type"].as_str()),
        (Some("reasoning"), Some("message"))
    );

    let body = json!({"model": "gpt-5-codex", "input": [
        user("Weather in Oslo?"),
        {"type": "item_reference", "id": rs["id"]},
        {"type": "item_reference", "id": msg["id"]},
        user("And tomorrow?"),
    ]});
    let (status, headers, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(headers.get("x-codexpool-dropped-params").is_none());
    let input = sent_input(&h);
    let kinds: Vec<&str> = input.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message", "reasoning", "message", "message"]);
    assert_eq!(input[1]["encrypted_content"], rs["encrypted_content"]);
    assert!(input[1]["encrypted_content"].is_string());
    assert_eq!(input[2]["content"], msg["content"]);
    assert_eq!(input[2]["role"], "assistant");
    assert!(input.iter().all(|i| i.get("id").is_none()), "{input:?}");
    assert_eq!(
        sent_texts(&h),
        ["Weather in Oslo?", "It is sunny in Oslo.", "And tomorrow?"]
    );
}

#[tokio::test]
async fn previous_response_id_chains_every_turn_streamed_or_not() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::reasoning_then_text("Hmm", "A1"));
    // Items only in `output_item.done` events: the relay puts them back, and they are kept.
    h.fake
        .push_reply("acct-0", Reply::text("A2").empty_final_output());
    h.fake.push_reply("acct-0", Reply::text("A3"));
    let r1 = turn(
        &h,
        json!({"model": "gpt-5-codex", "instructions": "Be brief.",
               "input": [{"role": "system", "content": "Answer in English."}, user("Q1")]}),
    )
    .await;
    let first = h.last_sent();
    let r2 = turn(
        &h,
        json!({"model": "gpt-5-codex", "stream": true, "input": "Q2",
               "previous_response_id": r1["id"]}),
    )
    .await;
    assert_eq!(r2["output"][0]["content"][0]["text"], "A2");
    let second = h.last_sent();
    assert!(second.get("previous_response_id").is_none());
    let r3 = turn(
        &h,
        json!({"model": "gpt-5-codex", "input": [user("Q3")], "previous_response_id": r2["id"]}),
    )
    .await;
    assert_eq!(r3["output"][0]["content"][0]["text"], "A3");
    assert_eq!(sent_texts(&h), ["Q1", "A1", "Q2", "A2", "Q3"]);
    let input = sent_input(&h);
    assert_eq!(input[1]["type"], "reasoning");
    assert!(input[1]["encrypted_content"].is_string());
    // The system message is lifted again (instructions themselves do not carry over, as with
    // OpenAI), and the conversation keeps its session.
    let third = h.last_sent();
    assert_eq!(first["instructions"], "Be brief.\n\nAnswer in English.");
    assert_eq!(third["instructions"], "Answer in English.");
    let requests = h.fake.requests_to("/backend-api/codex/responses");
    assert_eq!(
        requests[1].header("session_id"),
        requests[2].header("session_id")
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 3);
}

#[tokio::test]
async fn a_slow_upstream_streamed_answer_is_kept_too() {
    // Headers go out before the upstream answers (keep-alives): the answer is still kept.
    let h = harness_with(1, &[], |b| {
        b.keepalive_interval(std::time::Duration::from_millis(20))
    })
    .await;
    h.fake.push_reply(
        "acct-0",
        Reply::text("Late").slow_first_byte(std::time::Duration::from_millis(150)),
    );
    let r1 = turn(
        &h,
        json!({"model": "gpt-5-codex", "stream": true, "input": "Q1"}),
    )
    .await;
    turn(
        &h,
        json!({"model": "gpt-5-codex", "input": "Q2", "previous_response_id": r1["id"]}),
    )
    .await;
    assert_eq!(sent_texts(&h), ["Q1", "Late", "Q2"]);
}

#[tokio::test]
async fn unknown_ids_are_refused_in_openais_words() {
    let h = harness(1, &[]).await;
    let body = json!({"model": "gpt-5-codex", "input": "Hi", "previous_response_id": "resp_nope"});
    let (status, e) = error_of(&h, h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        e,
        json!({"message": "Previous response with id 'resp_nope' not found.",
               "type": "invalid_request_error", "code": "previous_response_not_found",
               "param": "previous_response_id"})
    );
    let body = json!({"model": "gpt-5-codex", "input": [
        user("Hi"), {"type": "item_reference", "id": "msg_nope"}]});
    let (status, e) = error_of(&h, h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "input[1]");
    assert_eq!(e["code"], "item_not_found");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("Item with id 'msg_nope' not found."),
        "{message}"
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);
    let row = &h.log().await[0];
    assert_eq!(row.status, 400);
}

#[tokio::test]
async fn a_key_never_sees_another_keys_responses() {
    let h = harness(1, &[]).await;
    let r1 = turn(&h, json!({"model": "gpt-5-codex", "input": "Secret plans"})).await;
    let other = h
        .pool
        .keys()
        .create(codexpool_core::keys::NewKey::named("other"))
        .await
        .unwrap()
        .secret
        .expose()
        .to_string();
    let body = json!({"model": "gpt-5-codex", "input": "What did I say?",
                      "previous_response_id": r1["id"]});
    let (status, e) = error_of(&h, post_as(&other, &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "previous_response_id");
    let body = json!({"model": "gpt-5-codex", "input": [
        {"type": "item_reference", "id": r1["output"][0]["id"]}, user("Go on")]});
    let (status, e) = error_of(&h, post_as(&other, &body)).await;
    assert_eq!(
        (status, e["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("input[0]"))
    );
    let get = |key: &str, tail: &str| {
        Request::get(format!(
            "/v1/responses/{}{tail}",
            r1["id"].as_str().unwrap()
        ))
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
    };
    for tail in ["", "/input_items"] {
        assert_eq!(h.call(get(&other, tail)).await.0, StatusCode::NOT_FOUND);
        assert_eq!(h.call(get(&h.key, tail)).await.0, StatusCode::OK);
    }
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 1);
}

#[tokio::test]
async fn store_false_answers_are_not_kept() {
    let h = harness(1, &[]).await;
    let r1 = turn(
        &h,
        json!({"model": "gpt-5-codex", "input": "Hi", "store": false}),
    )
    .await;
    // Nothing is asked for that the client did not ask for.
    assert!(h.last_sent().get("include").is_none());
    let body = json!({"model": "gpt-5-codex", "input": "Again", "previous_response_id": r1["id"]});
    let (status, e) = error_of(&h, h.post("/v1/responses", body)).await;
    assert_eq!(
        (status, e["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("previous_response_id"))
    );
    let body = json!({"model": "gpt-5-codex", "store": false, "input": [
        user("Hi"), {"type": "item_reference", "id": r1["output"][0]["id"]}]});
    let (status, e) = error_of(&h, h.post("/v1/responses", body)).await;
    assert_eq!(
        (status, e["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("input[1]"))
    );

    // Nor are the Codex CLI's (it goes as sent, and always says `store: false`).
    let body = json!({"model": "gpt-5-codex", "instructions": "x", "stream": true,
                      "store": false, "input": [user("Hi")]});
    let req = h.codex_post(&body, Some("s-1"));
    let (status, _, text) = h.call(req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let id = json_frames(&text).pop().unwrap()["response"]["id"].clone();
    let body = json!({"model": "gpt-5-codex", "input": "Again", "previous_response_id": id});
    assert_eq!(
        h.call(h.post("/v1/responses", body)).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_least_recently_used_answers_go_past_the_size_limit() {
    let h = harness(1, &[("RESPONSES_STORE_MB", "1")]).await;
    let big = "x".repeat(400 * 1024);
    for _ in 0..3 {
        h.fake.push_reply("acct-0", Reply::text(&big));
    }
    let r1 = turn(&h, json!({"model": "gpt-5-codex", "input": "One"})).await;
    let r2 = turn(
        &h,
        json!({"model": "gpt-5-codex", "input": "Two", "stream": true}),
    )
    .await;
    // 1 MiB holds two of these answers, not three: the first goes.
    let r3 = turn(&h, json!({"model": "gpt-5-codex", "input": "Three"})).await;
    let follow = |r: &Value| json!({"model": "gpt-5-codex", "input": "More", "previous_response_id": r["id"]});
    let (status, e) = error_of(&h, h.post("/v1/responses", follow(&r1))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, _, _) = h.call(h.post("/v1/responses", follow(&r3))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sent_texts(&h).len(), 3, "Three, its answer, More");
    let (status, _, _) = h.call(h.post("/v1/responses", follow(&r2))).await;
    assert_eq!(status, StatusCode::OK);
}

/// With the store off a reference is refused, not dropped: the answer would be to another
/// question.
#[tokio::test]
async fn with_the_store_off_references_are_refused() {
    let h = harness(1, &[("RESPONSES_STORE_MB", "0")]).await;
    let r1 = turn(&h, json!({"model": "gpt-5-codex", "input": "One"})).await;
    assert!(h.last_sent().get("include").is_none());
    for (body, param) in [
        (
            json!({"model": "gpt-5-codex", "previous_response_id": r1["id"], "input": "Two"}),
            "previous_response_id",
        ),
        (
            json!({"model": "gpt-5-codex", "input": [
                {"type": "item_reference", "id": r1["output"][0]["id"]}, user("Two")]}),
            "input",
        ),
    ] {
        let (status, e) = error_of(&h, h.post("/v1/responses", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(e["param"], param, "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains("RESPONSES_STORE_MB=0"), "{e}");
        assert!(message.starts_with(&format!("{param}: ")), "{e}");
        assert!(
            !message.contains(&format!("{param}: {param}")),
            "said once: {e}"
        );
    }
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 1);
    // Reasoning alone can be left out, as when the store no longer holds it.
    let body = json!({"model": "gpt-5-codex", "input": [
        user("Hi"), {"type": "item_reference", "id": "rs_1"}]});
    let (status, headers, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["x-codexpool-dropped-params"], "input[].reasoning");
}

/// A reference to reasoning no longer kept (a restart, the TTL) is left out and named: the
/// Vercel AI SDK refers to its reasoning on every turn, and the conversation goes on. What
/// OpenAI keeps only (a conversation, a stored prompt) is refused.
#[tokio::test]
async fn lost_reasoning_is_left_out_and_openai_only_state_refused() {
    let h = harness(1, &[]).await;
    let body = json!({"model": "gpt-5-codex", "input": [
        user("Hi"), {"type": "item_reference", "id": "rs_gone"}, user("Again")]});
    let (status, headers, text) = h.call(h.post("/v1/responses", body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["x-codexpool-dropped-params"], "input[].reasoning");
    assert_eq!(sent_texts(&h), ["Hi", "Again"]);
    for field in ["conversation", "prompt"] {
        let mut body = json!({"model": "gpt-5-codex", "input": "Hi"});
        body[field] = json!({"id": "conv_1"});
        let (status, e) = error_of(&h, h.post("/v1/responses", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(e["param"], field, "{e}");
    }
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 1);
}

#[tokio::test]
async fn a_kept_response_can_be_read_and_deleted() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::reasoning_then_text("Hmm", "Kept"));
    let r1 = turn(&h, json!({"model": "gpt-5-codex", "input": "Hi"})).await;
    let path = format!("/v1/responses/{}", r1["id"].as_str().unwrap());
    let req = |method: &str| {
        Request::builder()
            .method(method)
            .uri(&path)
            .header("authorization", format!("Bearer {}", h.key))
            .body(Body::empty())
            .unwrap()
    };
    let (status, got) = h.json(req("GET")).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, r1, "the object as the client got it");
    // Not as a stream (OpenAI's, for background responses): only the finished answer is kept,
    // and an SDK that asked for events would read none from a JSON answer.
    let streamed = Request::get(format!("{path}?stream=true"))
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::empty())
        .unwrap();
    let (status, e) = error_of(&h, streamed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "stream", "{e}");
    let whole = Request::get(format!("{path}?stream=false"))
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.json(whole).await, (StatusCode::OK, r1.clone()));
    // Nothing runs in the background to cancel: refused as OpenAI refuses, and still kept.
    let cancel = |id: &str| h.post(&format!("/v1/responses/{id}/cancel"), json!({}));
    let (status, e) = error_of(&h, cancel(r1["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["message"].as_str().unwrap().contains("background"), "{e}");
    assert_eq!(
        error_of(&h, cancel("resp_nope")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.json(req("GET")).await.0, StatusCode::OK);
    let (status, v) = h.json(req("DELETE")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v,
        json!({"id": r1["id"], "object": "response", "deleted": true})
    );
    let (status, e) = error_of(&h, req("GET")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        e["message"],
        format!(
            "Response with id '{}' not found.",
            r1["id"].as_str().unwrap()
        )
    );
    assert_eq!(h.call(req("DELETE")).await.0, StatusCode::NOT_FOUND);
    let body = json!({"model": "gpt-5-codex", "input": "More", "previous_response_id": r1["id"]});
    assert_eq!(
        h.call(h.post("/v1/responses", body)).await.0,
        StatusCode::BAD_REQUEST
    );
    // Without a key: 401, as every model route.
    let anonymous = Request::get(&path).body(Body::empty()).unwrap();
    assert_eq!(h.call(anonymous).await.0, StatusCode::UNAUTHORIZED);
}

/// `GET /v1/responses/{id}/input_items{query}` with the harness's key.
fn input_items(h: &Harness, id: &str, query: &str) -> Request<Body> {
    Request::get(format!("/v1/responses/{id}/input_items{query}"))
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::empty())
        .unwrap()
}

/// The ids of a list's items.
fn ids_of(list: &Value) -> Vec<&str> {
    let data = list["data"].as_array().unwrap();
    data.iter().map(|i| i["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_kept_responses_input_is_listed_a_page_at_a_time() {
    let h = harness(1, &[]).await;
    h.fake.push_reply("acct-0", Reply::text("A1"));
    let r1 = turn(&h, json!({"model": "gpt-5", "input": [user("Q1")]})).await;
    h.fake.push_reply("acct-0", Reply::text("A2"));
    let body = json!({"model": "gpt-5", "previous_response_id": r1["id"],
        "input": [user("Q2a"), {"role": "user", "content": "Q2b"}]});
    let r2 = turn(&h, body).await;
    let r2_id = r2["id"].as_str().unwrap();
    let list = |query: &str| input_items(&h, r2_id, query);
    // Turn 2 was answered for turn 1's input and answer, then its own input. The items the
    // client sent carry ids made from the response's; the answer's item keeps its own.
    let (status, all) = h.json(list("?order=asc")).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let data = all["data"].as_array().unwrap();
    let ids = ids_of(&all);
    let answer_id = r1["output"][0]["id"].as_str().unwrap();
    let made = |n: usize| format!("{r2_id}_in{n}");
    assert_eq!(
        ids,
        [made(0).as_str(), answer_id, &made(2), &made(3)],
        "{all}"
    );
    assert_eq!(data[0]["content"][0]["text"], "Q1");
    assert_eq!(data[1]["content"][0]["text"], "A1");
    // A message sent the short way is listed as OpenAI lists it.
    assert_eq!(
        data[3],
        json!({"id": made(3), "type": "message", "role": "user",
               "content": [{"type": "input_text", "text": "Q2b"}]})
    );
    assert_eq!(
        (&all["first_id"], &all["last_id"], &all["has_more"]),
        (&json!(made(0)), &json!(made(3)), &json!(false))
    );

    // Newest first by default; `after` walks on from the last id of a page.
    let (_, page) = h.json(list("?limit=3")).await;
    assert_eq!(ids_of(&page), [made(3).as_str(), &made(2), answer_id]);
    assert_eq!(page["has_more"], true);
    let (_, rest) = h.json(list(&format!("?limit=3&after={answer_id}"))).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&rest["first_id"], &rest["has_more"]),
        (&json!(made(0)), &json!(false))
    );
    // `before`: the items just before it.
    let (_, before) = h
        .json(list(&format!("?order=asc&limit=1&before={}", made(3))))
        .await;
    assert_eq!(before["data"][0]["id"], made(2), "{before}");
    assert_eq!(before["has_more"], true);

    // An item listed twice (the chain brings it, a reference names it again) is listed under
    // its id once: a cursor names one place.
    h.fake.push_reply("acct-0", Reply::text("A3"));
    let body = json!({"model": "gpt-5", "previous_response_id": r2_id,
        "input": [{"type": "item_reference", "id": answer_id}, user("Q3")]});
    let r3 = turn(&h, body).await;
    let r3_id = r3["id"].as_str().unwrap();
    let (_, listed) = h.json(input_items(&h, r3_id, "?order=asc&limit=100")).await;
    let ids = ids_of(&listed);
    // Turn 1's question and answer, turn 2's questions and answer, the reference, turn 3's.
    assert_eq!(ids.len(), 7, "{listed}");
    assert_eq!(
        ids.iter().filter(|i| **i == answer_id).count(),
        1,
        "{listed}"
    );
    assert_eq!(ids[5], format!("{r3_id}_in5"));
    assert_eq!(listed["data"][5]["content"][0]["text"], "A1", "{listed}");
    let after = format!("?order=asc&after={}", ids[5]);
    let (_, rest) = h.json(input_items(&h, r3_id, &after)).await;
    assert_eq!(rest["data"][0]["content"][0]["text"], "Q3", "{rest}");

    // Bad parameters are a 400 naming the parameter; another response's id a 404.
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?order=sideways", "order"),
        ("?after=msg_nowhere", "after"),
        ("?before=msg_nowhere", "before"),
    ] {
        let (status, e) = error_of(&h, list(query)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {e}");
        assert_eq!(e["param"], param, "{query}: {e}");
    }
    let (status, e) = error_of(&h, list("?limit=1&limit=2")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, e) = error_of(&h, input_items(&h, "resp_nowhere", "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["code"], "response_not_found", "{e}");
}

#[tokio::test]
async fn a_chain_that_moves_account_leaves_the_old_accounts_reasoning_behind() {
    let h = harness(2, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::reasoning_then_text("acct-0 thinks", "A1"));
    let r1 = turn(&h, json!({"model": "gpt-5", "input": "Q1"})).await;
    // acct-0 runs out: turn 2 moves to acct-1, without acct-0's reasoning.
    h.fake.push_reply(
        "acct-0",
        Reply::UsageLimit429 {
            resets_in_secs: 3600,
        },
    );
    h.fake
        .push_reply("acct-1", Reply::reasoning_then_text("acct-1 thinks", "A2"));
    let r2 = turn(
        &h,
        json!({"model": "gpt-5", "input": "Q2", "previous_response_id": r1["id"]}),
    )
    .await;
    let sent = h.last_sent();
    assert_eq!(
        h.fake
            .last_request("/backend-api/codex/responses")
            .unwrap()
            .header("chatgpt-account-id"),
        Some("acct-1")
    );
    assert!(
        sent["input"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["type"] != "reasoning")
    );
    // Turn 3 on acct-1 carries acct-1's reasoning only, and goes through at once (no refusal
    // of acct-0's encrypted content, no resend).
    let before = h.fake.count("/backend-api/codex/responses");
    turn(
        &h,
        json!({"model": "gpt-5", "input": "Q3", "previous_response_id": r2["id"]}),
    )
    .await;
    assert_eq!(h.fake.count("/backend-api/codex/responses"), before + 1);
    let input = sent_input(&h);
    let reasoning: Vec<&Value> = input.iter().filter(|i| i["type"] == "reasoning").collect();
    assert_eq!(reasoning.len(), 1, "{input:?}");
    assert_eq!(sent_texts(&h), ["Q1", "A1", "Q2", "A2", "Q3"]);
}

#[tokio::test]
async fn a_chain_stays_in_its_session_and_on_its_account_without_the_first_turns_instructions() {
    // Round robin sends every new conversation to the next account: only the session keeps a
    // conversation where it started.
    let h = harness(3, &[("ROUTE_STRATEGY", "round-robin")]).await;
    let mut previous = turn(
        &h,
        json!({"model": "gpt-5", "instructions": "Be brief.", "input": "Q1"}),
    )
    .await;
    // openai-python and LangChain send the instructions with the first turn only.
    for q in ["Q2", "Q3", "Q4"] {
        previous = turn(
            &h,
            json!({"model": "gpt-5", "input": q, "previous_response_id": previous["id"]}),
        )
        .await;
    }
    let requests = h.fake.requests_to("/backend-api/codex/responses");
    assert_eq!(requests.len(), 4, "one request per turn");
    for r in &requests[1..] {
        assert_eq!(r.header("session_id"), requests[0].header("session_id"));
        assert_eq!(
            r.header("chatgpt-account-id"),
            requests[0].header("chatgpt-account-id")
        );
    }
    let answer = sent_texts(&h)[1].clone();
    assert!(answer.starts_with("Hello from acct-"), "{answer}");
    assert_eq!(
        sent_texts(&h),
        ["Q1", &answer, "Q2", &answer, "Q3", &answer, "Q4"]
    );
}

/// With every account out, the fallback upstream (a plain OpenAI API, which holds nothing the
/// gateway kept and cannot read the accounts' encrypted reasoning) gets the conversation
/// expanded: the kept turn in place of `previous_response_id`, the item an `item_reference`
/// names, items without their ids, and no reasoning.
#[tokio::test]
async fn the_fallback_upstream_gets_kept_turns_expanded() {
    let fallback = harness(0, &[]).await;
    let url = fallback.fake.openai_base_url();
    let settings = [
        ("UPSTREAM_FALLBACK_BASE_URL", url.as_str()),
        ("UPSTREAM_FALLBACK_API_KEY", "sk-fake"),
    ];
    let h = harness_with(1, &settings, |b| b).await;
    h.fake
        .push_reply("acct-0", Reply::reasoning_then_text("Hmm", "A1"));
    let r1 = turn(
        &h,
        json!({"model": "gpt-5-codex", "reasoning": {"effort": "low"}, "input": [user("Q1")]}),
    )
    .await;
    assert_eq!(r1["output"][0]["type"], "reasoning", "{r1}");
    let message_id = r1["output"][1]["id"].clone();
    let out = || {
        h.fake.push_reply(
            "acct-0",
            Reply::UsageLimit429 {
                resets_in_secs: 3600,
            },
        );
    };
    let fallback_got = || -> Value {
        let req = fallback.fake.requests_to("/v1/responses").pop().unwrap();
        serde_json::from_slice(&req.body).unwrap()
    };

    out();
    let r2 = turn(
        &h,
        json!({"model": "gpt-5-codex", "previous_response_id": r1["id"], "input": "Q2"}),
    )
    .await;
    assert!(r2["id"].is_string());
    let sent = fallback_got();
    assert!(sent.get("previous_response_id").is_none(), "{sent}");
    assert_eq!(sent["model"], "gpt-5-codex");
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input.len(), 3, "Q1, A1 (no reasoning), Q2: {sent}");
    assert_eq!(input[0], user("Q1"));
    assert_eq!(input[1]["content"][0]["text"], "A1");
    assert!(input[1].get("id").is_none(), "{sent}");
    assert_eq!(input[2], user("Q2"));

    // Replayed output (ids, reasoning) and a reference to the kept message.
    out();
    let mut replayed = vec![user("Q1")];
    replayed.extend(r1["output"].as_array().unwrap().iter().cloned());
    replayed.push(json!({"type": "item_reference", "id": message_id}));
    replayed.push(user("Q3"));
    turn(&h, json!({"model": "gpt-5-codex", "input": replayed})).await;
    let sent = fallback_got();
    let input = sent["input"].as_array().unwrap();
    let kinds: Vec<_> = input
        .iter()
        .map(|i| i["content"][0]["text"].clone())
        .collect();
    assert_eq!(kinds, ["Q1", "A1", "A1", "Q3"], "{sent}");
    assert!(input.iter().all(|i| i.get("id").is_none()), "{sent}");

    // Nothing to expand: the body goes as sent, byte for byte.
    out();
    let plain = json!({"model": "gpt-5-codex", "input": [user("Q4")], "store": false});
    turn(&h, plain.clone()).await;
    let req = fallback.fake.requests_to("/v1/responses").pop().unwrap();
    assert_eq!(req.body, plain.to_string());
    for row in h.log().await.iter().filter(|r| r.fallback) {
        assert_eq!(row.status, 200);
    }
    assert_eq!(h.log().await.iter().filter(|r| r.fallback).count(), 3);
}

/// A fallback answer is kept as the accounts' are: the client reads it back and continues from
/// it (`previous_response_id`), through an account once one is back or through the fallback
/// again, streamed or not; the fallback's encrypted reasoning goes to no account.
#[tokio::test]
async fn a_fallback_answer_is_kept_and_the_conversation_goes_on() {
    let fallback = harness(0, &[]).await;
    let url = fallback.fake.openai_base_url();
    let settings = [
        ("UPSTREAM_FALLBACK_BASE_URL", url.as_str()),
        ("UPSTREAM_FALLBACK_API_KEY", "sk-fake"),
    ];
    let h = harness_with(1, &settings, |b| b).await;
    let accounts = h.pool.accounts();
    let id = accounts.list(&Default::default())[0].id.clone();

    // Turn 1 through the fallback (not streamed), with its encrypted reasoning.
    accounts.disable(&id).await.unwrap();
    fallback
        .fake
        .push_openai_reply(Reply::reasoning_then_text("Fallback thinks", "FB1"));
    let body = json!({"model": "gpt-5-codex", "input": [user("Q1")],
        "include": ["reasoning.encrypted_content"]});
    let r1 = turn(&h, body).await;
    assert_eq!(r1["output"][0]["type"], "reasoning", "{r1}");
    assert!(r1["output"][0]["encrypted_content"].is_string(), "{r1}");
    let get = Request::get(format!("/v1/responses/{}", r1["id"].as_str().unwrap()))
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::empty())
        .unwrap();
    let (status, got) = h.json(get).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["output"], r1["output"]);

    // Turn 2: the account is back and gets turn 1 expanded, without the fallback's reasoning
    // (the account could not read it), in one request.
    accounts.enable(&id).await.unwrap();
    h.fake.push_reply("acct-0", Reply::text("A2"));
    let r2 = turn(
        &h,
        json!({"model": "gpt-5-codex", "previous_response_id": r1["id"], "input": "Q2"}),
    )
    .await;
    assert_eq!(r2["output"][0]["content"][0]["text"], "A2", "{r2}");
    assert_eq!(sent_texts(&h), ["Q1", "FB1", "Q2"]);
    assert!(sent_input(&h).iter().all(|i| i["type"] != "reasoning"));
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 1);

    // Turn 3 through the fallback again, streamed: it gets the whole conversation and its
    // answer is kept from the stream's final event.
    accounts.disable(&id).await.unwrap();
    fallback.fake.push_openai_reply(Reply::text("FB3"));
    let r3 = turn(
        &h,
        json!({"model": "gpt-5-codex", "previous_response_id": r2["id"], "input": "Q3",
            "stream": true}),
    )
    .await;
    let sent = fallback.fake.requests_to("/v1/responses").pop().unwrap();
    let sent: Value = serde_json::from_slice(&sent.body).unwrap();
    let texts: Vec<_> = sent["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["content"][0]["text"].clone())
        .collect();
    assert_eq!(texts, ["Q1", "FB1", "Q2", "A2", "Q3"], "{sent}");

    // Turn 4 on the account: all of it.
    accounts.enable(&id).await.unwrap();
    h.fake.push_reply("acct-0", Reply::text("A4"));
    turn(
        &h,
        json!({"model": "gpt-5-codex", "previous_response_id": r3["id"], "input": "Q4"}),
    )
    .await;
    assert_eq!(sent_texts(&h), ["Q1", "FB1", "Q2", "A2", "Q3", "FB3", "Q4"]);
    let log = h.log().await;
    assert_eq!(log.iter().filter(|r| r.fallback).count(), 2);
    assert!(log.iter().all(|r| r.status == 200), "{log:?}");
}

/// The JSON-mode directive the gateway adds for the backend is that request's own: the next
/// turn, which does not ask for JSON, does not get it again, and the kept input does not list it.
#[tokio::test]
async fn the_json_directive_stays_with_its_own_turn() {
    let h = harness(1, &[]).await;
    let r1 = turn(
        &h,
        json!({"model": "gpt-5-codex", "text": {"format": {"type": "json_object"}},
            "input": [{"role": "system", "content": "Answer in JSON."}, user("Q1")]}),
    )
    .await;
    let says_json = |v: &Value| v.to_string().contains("Respond in JSON.");
    assert!(says_json(&h.last_sent()["input"]), "{}", h.last_sent());
    turn(
        &h,
        json!({"model": "gpt-5-codex", "previous_response_id": r1["id"], "input": [user("Q2")]}),
    )
    .await;
    let sent = h.last_sent();
    assert!(!says_json(&sent["input"]), "{sent}");
    assert!(
        sent.to_string().contains("Q1"),
        "the earlier turn came back: {sent}"
    );
    let (status, list) = h
        .json(input_items(&h, r1["id"].as_str().unwrap(), ""))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!says_json(&list), "{list}");
}
