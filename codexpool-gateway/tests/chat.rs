//! `/v1/chat/completions` through the gateway service against the fake Codex backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use codexpool_core::usage::{LedgerGroup, LedgerQuery};
use codexpool_testkit::{FakeOpenAi, OutputItem, Reply};
use common::{chat, harness, json_frames, streamed_content};
use serde_json::{Value, json};

/// Every response carries an `x-request-id`, the client's own when it sent one, and the request
/// log row has the same; refusals carry one too.
#[tokio::test]
async fn request_ids_are_kept_or_made_and_logged() {
    let h = harness(1, &[]).await;
    let made = |headers: &axum::http::HeaderMap| {
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        let hex = id.strip_prefix("req_").unwrap_or_else(|| panic!("{id}"));
        assert!(
            hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
        id
    };
    let (_, first, _) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    let (_, second, _) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    let (first, second) = (made(&first), made(&second));
    assert_ne!(first, second);

    let mut req = h.post("/v1/chat/completions", chat(false));
    req.headers_mut()
        .insert("x-request-id", "client-abc".parse().unwrap());
    let (status, own, _) = h.call(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["x-request-id"], "client-abc");

    // One the log could not hold as sent (too long, spaces, not ASCII) is replaced.
    let mut replaced = Vec::new();
    for bad in [
        "x".repeat(257).into_bytes(),
        b"two words".to_vec(),
        b"caf\xc3\xa9".to_vec(),
    ] {
        let mut req = h.post("/v1/chat/completions", chat(false));
        req.headers_mut().insert(
            "x-request-id",
            axum::http::HeaderValue::from_bytes(&bad).unwrap(),
        );
        let (status, headers, _) = h.call(req).await;
        assert_eq!(status, StatusCode::OK);
        replaced.push(made(&headers));
    }
    let longest = "y".repeat(256);
    let mut req = h.post("/v1/chat/completions", chat(false));
    req.headers_mut()
        .insert("x-request-id", longest.parse().unwrap());
    let (_, kept, _) = h.call(req).await;
    assert_eq!(kept["x-request-id"], longest.as_str());

    let log: Vec<String> = h.log().await.into_iter().map(|r| r.request_id).collect();
    let mut expected = vec![longest.clone()];
    expected.extend(replaced.into_iter().rev());
    expected.extend(["client-abc".to_owned(), second, first]);
    assert_eq!(log, expected);

    let refused = axum::http::Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-cp-unknown")
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, headers, _) = h.call(refused).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    made(&headers);
}

#[tokio::test]
async fn non_streaming_text() {
    let h = harness(1, &[]).await;
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-codexpool-account"], h.ids[0].as_str());
    assert!(headers.contains_key("x-request-id"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-0.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // What the backend got: the body rules applied, the Codex headers set, no platform key.
    let sent = h.fake.last_request("/backend-api/codex/responses").unwrap();
    let b = sent.body_json().unwrap();
    assert_eq!(
        (b["stream"].as_bool(), b["store"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(!b["instructions"].as_str().unwrap().is_empty());
    assert_eq!(sent.header("chatgpt-account-id"), Some("acct-0"));
    assert_eq!(sent.header("originator"), Some("codex_cli_rs"));
    assert_eq!(sent.header("openai-beta"), Some("responses=experimental"));
    assert!(
        sent.header("user-agent")
            .unwrap()
            .starts_with("codex_cli_rs/")
    );
    assert!(sent.header("session_id").is_some());
    assert!(
        !sent.header("authorization").unwrap().contains(&h.key),
        "the platform key never goes upstream"
    );
    // Logged, with tokens in the ledger.
    let log = h.log().await;
    assert_eq!(log.len(), 1);
    let row = &log[0];
    assert_eq!(
        (row.status, row.route.as_str(), row.stream),
        (200, "/v1/chat/completions", false)
    );
    assert_eq!(row.account_id.as_deref(), Some(h.ids[0].as_str()));
    assert_eq!(row.model.as_deref(), Some("gpt-5-codex"));
    assert!(row.tokens.unwrap().output_tokens > 0);
    assert!(row.error_class.is_none());
    let ledger = h
        .pool
        .usage()
        .ledger(&LedgerQuery::by(LedgerGroup::Account))
        .await
        .unwrap();
    assert_eq!(ledger[0].group, h.ids[0]);
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn streaming_text_with_usage() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::reasoning_then_text("Thinking hard", "Hello there friend"),
    );
    let mut req = chat(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let frames = json_frames(&body);
    assert_eq!(frames[0]["choices"][0]["delta"]["role"], "assistant");
    let text = streamed_content(&frames);
    assert_eq!(text, "Hello there friend");
    let reasoning: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Thinking hard");
    let finish: Vec<_> = frames
        .iter()
        .filter_map(|f| f["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    let (usage, chunks) = frames.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        frames
            .iter()
            .all(|f| f["object"] == "chat.completion.chunk")
    );
    // The others say `usage: null`, as OpenAI's do when the client asks for usage.
    assert!(
        chunks.iter().all(|f| f.get("usage") == Some(&Value::Null)),
        "{body}"
    );
    let row = &h.log().await[0];
    assert!(row.stream && row.ttfb_ms.is_some() && row.tokens.is_some());
}

#[tokio::test]
async fn tool_calls_both_ways() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::tool_call("call_1", "get_weather", r#"{"city":"Paris"}"#),
    );
    h.fake.push_reply(
        "acct-0",
        Reply::tool_call("call_2", "get_weather", r#"{"city":"Rome"}"#),
    );
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let mut req = chat(true);
    req["tools"] = tools.clone();
    let (_, _, body) = h.call(h.post("/v1/chat/completions", req)).await;
    let frames = json_frames(&body);
    // An answer that opens with a call: `content` null, as OpenAI streams it (and as the
    // assembled message below has it).
    assert_eq!(
        frames[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null})
    );
    let first = frames
        .iter()
        .find(|f| f["choices"][0]["delta"]["tool_calls"].is_array())
        .unwrap();
    let call = &first["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(
        (call["id"].as_str(), call["function"]["name"].as_str()),
        (Some("call_1"), Some("get_weather"))
    );
    let args: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert!(
        frames
            .iter()
            .any(|f| f["choices"][0]["finish_reason"] == "tool_calls")
    );
    // Non-streaming: the message carries the tool calls.
    let mut req = chat(false);
    req["tools"] = tools;
    let (status, v) = h.json(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK);
    let msg = &v["choices"][0]["message"];
    assert_eq!(
        msg["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Rome"}"#
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // The tool's answer goes back as function_call_output.
    let follow = json!({"model": "gpt-5-codex", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}
    ]});
    let (status, v) = h.json(h.post("/v1/chat/completions", follow)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The tool returned: sunny"
    );
    let sent = h.last_sent();
    let items = sent["input"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "function_call_output" && i["call_id"] == "call_2")
    );
}

/// `tool_choice: allowed_tools` (OpenAI's for GPT-5: some tools offered, fewer allowed) goes
/// upstream in the Responses API's form, and the call comes back as any other.
#[tokio::test]
async fn allowed_tools_limit_the_calls_upstream() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::tool_call("call_1", "g", "{}"));
    let mut req = chat(false);
    req["tools"] = json!([
        {"type": "function", "function": {"name": "f"}},
        {"type": "function", "function": {"name": "g"}},
    ]);
    req["tool_choice"] = json!({"type": "allowed_tools", "allowed_tools": {"mode": "required",
        "tools": [{"type": "function", "function": {"name": "g"}}]}});
    let (status, v) = h.json(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "g"
    );
    assert_eq!(
        h.last_sent()["tool_choice"],
        json!({"type": "allowed_tools", "mode": "required",
               "tools": [{"type": "function", "name": "g"}]})
    );
}

/// A client of the 2023 API (LangChain's `create_openai_functions_agent`, older AutoGen):
/// `functions` / `function_call` in, `message.function_call` and `finish_reason:
/// "function_call"` out, and its history of `function_call` / `function` messages back in.
#[tokio::test]
async fn legacy_functions_both_ways() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::tool_call("call_1", "get_weather", r#"{"city":"Paris"}"#),
    );
    let functions = json!([{"name": "get_weather", "parameters": {"type": "object"}}]);
    let mut req = chat(false);
    req["functions"] = functions.clone();
    req["function_call"] = json!({"name": "get_weather"});
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !headers.contains_key("x-codexpool-dropped-params"),
        "translated, not dropped: {headers:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "refusal": null,
               "function_call": {"name": "get_weather", "arguments": r#"{"city":"Paris"}"#}})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "function_call");
    let sent = h.last_sent();
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "name": "get_weather",
                "parameters": {"type": "object"}, "strict": false}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "name": "get_weather"})
    );

    // The function's result goes back as a `function` message, paired with the call by name.
    let follow = json!({"model": "gpt-5-codex", "functions": functions, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null,
         "function_call": {"name": "get_weather", "arguments": r#"{"city":"Paris"}"#}},
        {"role": "function", "name": "get_weather", "content": "sunny"}
    ]});
    let (status, v) = h.json(h.post("/v1/chat/completions", follow)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "The tool returned: sunny", "refusal": null})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent = h.last_sent();
    assert_eq!(
        sent["input"].as_array().unwrap()[1..],
        [
            json!({"type": "function_call", "call_id": "call_fn_1", "name": "get_weather",
                   "arguments": r#"{"city":"Paris"}"#}),
            json!({"type": "function_call_output", "call_id": "call_fn_1", "output": "sunny"}),
        ]
    );
}

#[tokio::test]
async fn legacy_functions_streamed() {
    let h = harness(1, &[]).await;
    // The legacy API returns one function call: the model's second one is not passed on.
    h.fake.push_reply(
        "acct-0",
        Reply::items([
            OutputItem::text("Let me check."),
            OutputItem::tool_call("call_1", "get_weather", r#"{"city":"Paris"}"#),
            OutputItem::tool_call("call_2", "get_time", r#"{"tz":"CET"}"#),
        ]),
    );
    let mut req = chat(true);
    req["functions"] = json!([{"name": "get_weather"}, {"name": "get_time"}]);
    req["stream_options"] = json!({"include_usage": true});
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!headers.contains_key("x-codexpool-dropped-params"));
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(
        !body.contains("tool_calls") && !body.contains("get_time"),
        "{body}"
    );
    let frames = json_frames(&body);
    let calls: Vec<&serde_json::Value> = frames
        .iter()
        .map(|f| &f["choices"][0]["delta"]["function_call"])
        .filter(|c| c.is_object())
        .collect();
    assert_eq!(
        calls[0],
        &json!({"name": "get_weather", "arguments": ""}),
        "{body}"
    );
    assert!(calls[1..].iter().all(|c| c.get("name").is_none()));
    let args: String = calls
        .iter()
        .filter_map(|c| c["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    let text = streamed_content(&frames);
    assert_eq!(text, "Let me check.");
    let finish: Vec<_> = frames
        .iter()
        .filter_map(|f| f["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["function_call"]);
    let usage = frames.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // Only one call at a time was asked for.
    assert_eq!(h.last_sent()["parallel_tool_calls"], false);
}

#[tokio::test]
async fn bad_legacy_functions_are_refused() {
    let h = harness(1, &[]).await;
    let functions = json!([{"name": "f"}]);
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let cases = [
        (json!({"functions": functions, "tools": tools}), "functions"),
        (
            json!({"function_call": "auto", "tool_choice": "auto"}),
            "function_call",
        ),
        (json!({"functions": "x"}), "functions"),
        (
            json!({"functions": [{"description": "d"}]}),
            "functions[0].name",
        ),
        (json!({"function_call": 5}), "function_call"),
        (json!({"function_call": "auto"}), "function_call"),
        (json!({"functions": []}), "functions"),
    ];
    for (fields, param) in cases {
        let mut req = chat(false);
        for (key, value) in fields.as_object().unwrap() {
            req[key] = value.clone();
        }
        let (status, v) = h.json(h.post("/v1/chat/completions", req)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{fields}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{param}: ")),
            "{v}"
        );
    }
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);
}

#[tokio::test]
async fn dropped_params_are_reported() {
    let h = harness(1, &[]).await;
    let mut req = chat(false);
    req["temperature"] = json!(0.2);
    req["max_tokens"] = json!(10);
    let (status, headers, _) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-codexpool-dropped-params"],
        "max_tokens, temperature"
    );
}

#[tokio::test]
async fn a_failure_after_output_becomes_an_error_chunk() {
    let h = harness(2, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::FailedAfterText {
            deltas: vec!["Half".into()],
            code: "server_error".into(),
            message: "boom".into(),
        },
    );
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&body);
    assert!(
        frames
            .iter()
            .any(|f| f["choices"][0]["delta"]["content"] == "Half")
    );
    let errors: Vec<_> = frames.iter().filter(|f| f["error"].is_object()).collect();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["error"]["code"], "server_error", "{body}");
    assert_eq!(errors[0]["error"]["message"], "upstream: boom", "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        h.fake.count("/backend-api/codex/responses"),
        1,
        "never retried after output"
    );
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("server_error"));
    assert_eq!(row.status, 200, "the answer had begun");
    assert_eq!(row.accounts_tried, [h.ids[0].clone()]);
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn a_cut_mid_stream_is_reported_in_the_stream_and_the_log() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::CutMidStream { after_deltas: 2 });
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&body);
    let text = streamed_content(&frames);
    assert_eq!(text, "Part 0. Part 1. ", "what came before the cut: {body}");
    let errors: Vec<_> = frames.iter().filter(|f| f["error"].is_object()).collect();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["error"]["code"], "upstream_cut", "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("upstream_cut"));
    assert_eq!(row.status, 200, "the answer had begun");
    assert_eq!(h.total_inflight(), 0);
}

/// An upstream that falls silent part-way through a stream for longer than the idle timeout:
/// the client gets what came, an error chunk and `[DONE]`; the log says `upstream_timeout`.
#[tokio::test]
async fn a_stream_that_falls_silent_ends_with_an_error_chunk() {
    let h = harness(1, &[("UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "1")]).await;
    h.fake
        .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&body);
    let text = streamed_content(&frames);
    assert!(!text.is_empty(), "the deltas before the silence: {body}");
    let error = frames.iter().find(|f| f["error"].is_object());
    assert_eq!(
        error.map(|f| f["error"]["code"].clone()),
        Some(json!("upstream_timeout")),
        "{body}"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    let row = &h.log().await[0];
    assert_eq!(row.error_class.as_deref(), Some("upstream_timeout"));
    assert_eq!(row.status, 200, "the answer had begun");
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn a_streamed_refusal_is_delta_refusal() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::refusal("I can't help with that."));
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let frames = json_frames(&body);
    let deltas: Vec<&serde_json::Value> =
        frames.iter().map(|f| &f["choices"][0]["delta"]).collect();
    let refusal: String = deltas
        .iter()
        .filter_map(|d| d["refusal"].as_str())
        .collect();
    assert_eq!(refusal, "I can't help with that.", "{body}");
    assert!(
        deltas
            .iter()
            .all(|d| d["content"].is_null() || d["content"] == ""),
        "a refusal is never content: {body}"
    );
    let last = frames.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_refusal_is_message_refusal_with_null_content() {
    let h = harness(1, &[]).await;
    h.fake
        .push_reply("acct-0", Reply::refusal("I can't help with that."));
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(
        choice["message"],
        json!({"role": "assistant", "content": null, "refusal": "I can't help with that."})
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_refusal_commits_the_attempt() {
    // Refusal deltas, then the stream stops: the client already has output, so no other account
    // is tried and the break is reported in the stream.
    let h = harness(2, &[]).await;
    let raw = concat!(
        r#"data: {"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#,
        "\n\n",
        r#"data: {"type":"response.output_item.added","output_index":0,"item":{"id":"msg_1","type":"message","role":"assistant","content":[]}}"#,
        "\n\n",
        r#"data: {"type":"response.content_part.added","item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"refusal","refusal":""}}"#,
        "\n\n",
        r#"data: {"type":"response.refusal.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"I can't"}"#,
        "\n\n",
    );
    h.fake
        .push_reply("acct-0", Reply::RawSse { body: raw.into() });
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    let frames = json_frames(&body);
    assert!(
        frames
            .iter()
            .any(|f| f["choices"][0]["delta"]["refusal"] == "I can't"),
        "{body}"
    );
    assert!(frames.iter().any(|f| f["error"].is_object()), "{body}");
    assert_eq!(
        h.fake.count("/backend-api/codex/responses"),
        1,
        "committed at the refusal: never retried"
    );
}

/// A ReAct-style answer in four deltas (the fake counts one output token per delta), with the
/// stop sequence split across two of them.
fn react_reply() -> Reply {
    Reply::deltas([
        "Thought: look it up",
        "\nObs",
        "ervation: 42",
        "\nThought: done",
    ])
}

#[tokio::test]
async fn stop_cuts_a_non_streamed_answer() {
    let h = harness(1, &[]).await;
    h.fake.push_reply("acct-0", react_reply());
    let mut req = chat(false);
    req["stop"] = json!(["\nObservation:", "never there"]);
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !headers.contains_key("x-codexpool-dropped-params"),
        "stop is emulated, not dropped"
    );
    assert!(h.last_sent().get("stop").is_none());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Thought: look it up");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The generation ran to its end upstream: the usage is all of it.
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let row = &h.log().await[0];
    assert_eq!(row.tokens.unwrap().output_tokens, 4);
    assert!(row.error_class.is_none());
    assert_eq!(h.total_inflight(), 0);
}

/// A streamed answer cut at a stop sequence ends for the client at once: the finish chunk and
/// `[DONE]` come with the stop, not when the upstream's generation (which runs on) ends. The
/// rest is read off the client's path for the row's usage, the account held meanwhile.
#[tokio::test]
async fn a_streamed_answer_ends_at_its_stop_sequence_at_once() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::deltas([
            "Thought: look it up",
            "\nObservation:",
            " 42",
            "\nThought: done",
            " and",
            " more",
            " to",
            " come",
        ])
        .paced(Duration::from_millis(400)),
    );
    let mut req = chat(true);
    req["stop"] = json!("\nObservation:");
    let (status, _, body) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // The upstream still generates (six more deltas, 400 ms apart), on the account it holds.
    assert_eq!(
        h.total_inflight(),
        1,
        "the answer ended only when the upstream's did"
    );
    let frames = json_frames(&body);
    let text = streamed_content(&frames);
    assert_eq!(text, "Thought: look it up", "{body}");
    assert_eq!(
        frames.last().unwrap()["choices"][0]["finish_reason"],
        "stop",
        "{body}"
    );
    h.settled().await;
    let row = &h.log().await[0];
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (200, None),
        "{row:?}"
    );
    assert!(row.tokens.is_some_and(|t| t.output_tokens > 0), "{row:?}");
}

#[tokio::test]
async fn stop_cuts_a_streamed_answer() {
    let h = harness(1, &[]).await;
    h.fake.push_reply("acct-0", react_reply());
    let mut req = chat(true);
    req["stop"] = json!("\nObservation:");
    req["stream_options"] = json!({"include_usage": true});
    let (status, headers, body) = h.call(h.post("/v1/chat/completions", req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!headers.contains_key("x-codexpool-dropped-params"));
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let frames = json_frames(&body);
    let text = streamed_content(&frames);
    assert_eq!(text, "Thought: look it up", "{body}");
    let finish: Vec<_> = frames
        .iter()
        .filter_map(|f| f["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    let usage = frames.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    let row = &h.log().await[0];
    assert!(row.stream && row.error_class.is_none());
    assert_eq!(row.tokens.unwrap().output_tokens, 4);
    assert_eq!(h.total_inflight(), 0);
}

/// An answer cut at a stop sequence is whole even when the upstream breaks off after the cut:
/// answered once, not sent again to another account (which would bill it twice).
#[tokio::test]
async fn an_upstream_cut_after_the_stop_sequence_keeps_the_answer() {
    let h = harness(2, &[]).await;
    for stream in [false, true] {
        // Either account may be first (the other's reply waits for the next round).
        for acct in ["acct-0", "acct-1"] {
            h.fake
                .push_reply(acct, Reply::CutMidStream { after_deltas: 3 });
        }
        let before = h.fake.requests_to("/backend-api/codex/responses").len();
        let mut req = chat(stream);
        req["stop"] = json!("Part 2");
        let (status, _, body) = h.call(h.post("/v1/chat/completions", req)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (text, finish) = if stream {
            let frames = json_frames(&body);
            let text = streamed_content(&frames);
            let finish = frames
                .iter()
                .rev()
                .find_map(|f| f["choices"][0]["finish_reason"].as_str());
            (text, finish.map(str::to_owned))
        } else {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let text = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned();
            (
                text,
                v["choices"][0]["finish_reason"].as_str().map(str::to_owned),
            )
        };
        assert_eq!(text, "Part 0. Part 1. ", "{body}");
        assert_eq!(finish.as_deref(), Some("stop"), "{body}");
        assert!(!body.contains("error"), "{body}");
        h.settled().await;
        let sent = h.fake.requests_to("/backend-api/codex/responses").len() - before;
        assert_eq!(sent, 1, "answered by the first account alone");
        // The row says the answer went out whole, and what the upstream did after it.
        let row = &h.log().await[0];
        assert_eq!(row.status, 200, "{row:?}");
        assert_eq!(row.error_class.as_deref(), Some("upstream_cut"), "{row:?}");
    }
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn a_bad_stop_is_refused() {
    let h = harness(1, &[]).await;
    for stop in [
        json!(5),
        json!({"x": 1}),
        json!(["ok", 1]),
        json!(["1", "2", "3", "4", "5"]),
    ] {
        let mut req = chat(false);
        req["stop"] = stop.clone();
        let (status, v) = h.json(h.post("/v1/chat/completions", req)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{stop}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "stop");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("stop: "),
            "{v}"
        );
    }
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);
}

/// A streamed answer that arrives from upstream in one piece (the instant fake writes each
/// answer at once) still has its time to first byte in the log: the row used to be written
/// before the first bytes were noted.
#[tokio::test]
async fn a_stream_answered_in_one_piece_logs_its_time_to_first_byte() {
    let fake = FakeOpenAi::builder().instant(true).start().unwrap();
    let h = common::harness_on(fake, 1, &[], |b| b).await;
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = h
        .call(h.post(
            "/v1/responses",
            json!({"model": "gpt-5", "input": "hi", "stream": true}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = h.log().await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.stream && row.ttfb_ms.is_some(), "{row:?}");
    }
}

/// The backend's keep-alive comments reach chat clients too (SSE clients skip comments): a long
/// silence of the answer (reasoning a chat client is not shown) must not time the client out.
#[tokio::test]
async fn keep_alive_comments_reach_a_chat_stream() {
    let h = harness(1, &[]).await;
    let raw = concat!(
        r#"data: {"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#,
        "\n\n",
        r#"data: {"type":"response.output_item.added","output_index":0,"item":{"id":"msg_1","type":"message","role":"assistant","content":[]}}"#,
        "\n\n",
        r#"data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}"#,
        "\n\n",
        ": keep-alive\n\n",
        r#"data: {"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":" there"}"#,
        "\n\n",
        r#"data: {"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}"#,
        "\n\n",
    );
    h.fake
        .push_reply("acct-0", Reply::RawSse { body: raw.into() });
    let (status, _, body) = h.call(h.post("/v1/chat/completions", chat(true))).await;
    assert_eq!(status, StatusCode::OK);
    let hi = body.find(r#""content":"Hi""#).expect(&body);
    let alive = body.find(": keep-alive\n\n").expect(&body);
    let there = body.find(r#""content":" there""#).expect(&body);
    assert!(hi < alive && alive < there, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
}
