//! The Codex backend over real HTTP: the wire shape of every reply script, reply selection, token
//! accounting, request checks, timing scripts, cut and cancelled streams, models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use codexpool_testkit::{
    FakeAccount, FakeModel, FakeOpenAi, FakeTokenUsage, OutputItem, Reply, StreamStatus,
};
use common::{
    Frame, client, codex_body, codex_frames, codex_post, codex_post_frames, codex_request,
    parse_sse, text_of, types,
};
use serde_json::{Value, json};

fn fake_with(accounts: &[&str]) -> FakeOpenAi {
    let fake = FakeOpenAi::start().unwrap();
    for a in accounts {
        fake.add_account(FakeAccount::new(*a));
    }
    fake
}

fn last<'a>(frames: &'a [Frame], ty: &str) -> &'a Value {
    &frames
        .iter()
        .rev()
        .find(|f| f.ty() == ty)
        .unwrap_or_else(|| panic!("no {ty}"))
        .data
}

#[tokio::test]
async fn default_text_reply_has_the_real_event_order() {
    let fake = fake_with(&["acct-1"]);
    let body = codex_body("hi");
    let body_len = serde_json::to_vec(&body).unwrap().len() as u64;
    let resp = codex_post(&fake, "acct-1", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let frames = parse_sse(&resp.text().await.unwrap());
    assert!(frames.iter().all(|f| f.event.is_some()));
    assert_eq!(
        types(&frames),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let seqs: Vec<i64> = frames
        .iter()
        .map(|f| f.data["sequence_number"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (0..frames.len() as i64).collect::<Vec<_>>());
    assert_eq!(text_of(&frames), "Hello from acct-1.");
    let item_id = frames[2].data["item"]["id"].as_str().unwrap();
    assert!(item_id.starts_with("msg_"));
    assert_eq!(frames[4].data["item_id"], item_id);
    assert_eq!(
        last(&frames, "response.output_text.done")["text"],
        "Hello from acct-1."
    );

    let r = &last(&frames, "response.completed")["response"];
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["object"], "response");
    assert_eq!(r["model"], "gpt-5-codex");
    assert_eq!(r["status"], "completed");
    assert!(r["created_at"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(r["output"][0]["type"], "message");
    assert_eq!(r["output"][0]["content"][0]["text"], "Hello from acct-1.");
    let u = &r["usage"];
    assert_eq!(u["input_tokens"], body_len / 4);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["output_tokens"], 3);
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(u["total_tokens"], body_len / 4 + 3);

    let rec = fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(rec.account_id.as_deref(), Some("acct-1"));
    assert_eq!(rec.body_json().unwrap()["model"], "gpt-5-codex");
    assert_eq!(rec.header("originator"), Some("codex_cli_rs"));
    assert_eq!(rec.stream, Some(StreamStatus::Finished));
}

#[tokio::test]
async fn reasoning_then_text() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::reasoning_then_text("Thinking hard", "Done now"),
    );
    let mut body = codex_body("hi");
    body["include"] = json!(["reasoning.encrypted_content"]);
    body["reasoning"] = json!({"effort": "medium", "summary": "auto"});
    let frames = codex_post_frames(&fake, "acct-1", &body).await;
    assert_eq!(
        types(&frames),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let rs = &frames[8].data["item"];
    assert!(rs["id"].as_str().unwrap().starts_with("rs_"));
    assert_eq!(rs["summary"][0]["text"], "Thinking hard");
    assert!(rs["encrypted_content"].is_string());
    assert_eq!(frames[11].data["output_index"], 1);
    let r = &last(&frames, "response.completed")["response"];
    assert_eq!(r["output"][0]["encrypted_content"], rs["encrypted_content"]);
    assert_eq!(r["usage"]["output_tokens"], 4);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 2);
}

#[tokio::test]
async fn tool_call_and_round_trip() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::tool_call("call_1", "exec_command", r#"{"cmd":"ls -la"}"#),
    );
    let (_, _, frames) = codex_frames(&fake, "acct-1").await;
    assert_eq!(
        types(&frames),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let added = &frames[2].data["item"];
    assert!(added["id"].as_str().unwrap().starts_with("fc_"));
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["call_id"], "call_1");
    assert_eq!(added["name"], "exec_command");
    assert_eq!(frames[6].data["arguments"], r#"{"cmd":"ls -la"}"#);
    let out = &last(&frames, "response.completed")["response"]["output"][0];
    assert_eq!(out["type"], "function_call");
    assert_eq!(out["arguments"], r#"{"cmd":"ls -la"}"#);
    assert_eq!(out["call_id"], "call_1");

    // The client runs the tool and sends its output back: the default answer quotes it.
    let mut body = codex_body("hi");
    let input = body["input"].as_array_mut().unwrap();
    input.push(json!({"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{}"}));
    input.push(
        json!({"type": "function_call_output", "call_id": "call_1", "output": "file-a file-b"}),
    );
    let frames = codex_post_frames(&fake, "acct-1", &body).await;
    assert_eq!(text_of(&frames), "The tool returned: file-a file-b");
    assert_eq!(frames.last().unwrap().ty(), "response.completed");
}

#[tokio::test]
async fn items_with_parallel_tool_calls() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::items([
            OutputItem::reasoning("Plan"),
            OutputItem::tool_call("c1", "a", "{}"),
            OutputItem::tool_call("c2", "b", r#"{"x":1}"#),
        ]),
    );
    let (_, _, frames) = codex_frames(&fake, "acct-1").await;
    let out = &last(&frames, "response.completed")["response"]["output"];
    assert_eq!(out.as_array().unwrap().len(), 3);
    assert_eq!(out[1]["call_id"], "c1");
    assert_eq!(out[2]["call_id"], "c2");
    let indexes: Vec<i64> = frames
        .iter()
        .filter(|f| f.ty() == "response.output_item.added")
        .map(|f| f.data["output_index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
}

#[tokio::test]
async fn failures_inside_200_streams() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply("acct-1", Reply::failed("some_code", "Something broke"));
    fake.push_reply("acct-1", Reply::Overloaded);
    fake.push_reply(
        "acct-1",
        Reply::FailedAfterText {
            deltas: vec!["Par".into(), "tial".into()],
            code: "late".into(),
            message: "late failure".into(),
        },
    );
    fake.push_reply(
        "acct-1",
        Reply::Incomplete {
            deltas: vec!["Cut short".into()],
            reason: "max_output_tokens".into(),
        },
    );
    fake.push_reply("acct-1", Reply::UsageLimitText);

    let (status, _, f) = codex_frames(&fake, "acct-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        types(&f),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    let r = &f[2].data["response"];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "some_code");
    assert_eq!(r["error"]["message"], "Something broke");

    let (status, _, f) = codex_frames(&fake, "acct-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        f.last().unwrap().data["response"]["error"]["code"],
        "server_is_overloaded"
    );

    let (_, _, f) = codex_frames(&fake, "acct-1").await;
    assert_eq!(text_of(&f), "Partial");
    let l = f.last().unwrap();
    assert_eq!(l.ty(), "response.failed");
    assert_eq!(l.data["response"]["error"]["code"], "late");

    let (_, _, f) = codex_frames(&fake, "acct-1").await;
    let l = f.last().unwrap();
    assert_eq!(l.ty(), "response.incomplete");
    assert_eq!(
        l.data["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );

    let (status, _, f) = codex_frames(&fake, "acct-1").await;
    assert_eq!(status, 200);
    let first_delta = f
        .iter()
        .find(|f| f.ty() == "response.output_text.delta")
        .unwrap();
    assert!(
        first_delta.data["delta"]
            .as_str()
            .unwrap()
            .starts_with("You've hit your usage limit.")
    );
}

#[tokio::test]
async fn status_replies() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply("acct-1", Reply::RateLimit429);
    fake.push_reply(
        "acct-1",
        Reply::Status {
            status: 502,
            body: "bad gateway".into(),
            content_type: "text/plain".into(),
        },
    );
    fake.push_reply("acct-1", Reply::ChallengeHtml);
    fake.push_reply("acct-1", Reply::Unauthorized);
    fake.push_reply("acct-1", Reply::Deactivated);
    fake.push_reply(
        "acct-1",
        Reply::status_json(500, json!({"error": {"message": "x"}})),
    );

    let body = codex_body("hi");
    let send = || codex_post(&fake, "acct-1", &body);
    let r = send().await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.headers().contains_key("x-codex-primary-used-percent"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");

    let r = send().await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "bad gateway");

    let r = send().await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["cf-mitigated"], "challenge");
    // Cloudflare's page, not the backend's answer: no usage reading, no turn state.
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("x-codex-")),
        "{:?}",
        r.headers()
    );
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("<html"));

    let r = send().await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["code"].is_string());

    let r = send().await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "account_deactivated");

    let r = send().await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(fake.pending_replies("acct-1"), 0);
}

#[tokio::test]
async fn reply_selection_order() {
    let fake = fake_with(&["acct-1", "acct-2"]);
    fake.set_global_default_reply(Reply::text("global"));
    fake.set_default_reply("acct-1", Reply::text("mine"));
    fake.push_reply_any(Reply::text("anyone"));
    fake.push_reply("acct-1", Reply::text("queued"));

    let t = |acct: &'static str| {
        let fake = &fake;
        async move { text_of(&codex_frames(fake, acct).await.2) }
    };
    assert_eq!(t("acct-1").await, "queued");
    assert_eq!(t("acct-2").await, "anyone");
    assert_eq!(t("acct-2").await, "global");
    assert_eq!(t("acct-1").await, "mine");
    assert_eq!(t("acct-1").await, "mine");
    fake.set_default_reply("acct-1", None);
    fake.set_global_default_reply(None);
    assert_eq!(t("acct-1").await, "Hello from acct-1.");
}

#[tokio::test]
async fn usage_numbers_cache_and_override() {
    let fake = fake_with(&["acct-1", "acct-2"]);
    let mut body = codex_body("some text to make the body longer");
    body["prompt_cache_key"] = json!("conv-1");
    let input = serde_json::to_vec(&body).unwrap().len() as u64 / 4;
    let usage = |frames: &[Frame]| last(frames, "response.completed")["response"]["usage"].clone();

    let f1 = codex_post_frames(&fake, "acct-1", &body).await;
    assert_eq!(usage(&f1)["input_tokens_details"]["cached_tokens"], 0);
    let f2 = codex_post_frames(&fake, "acct-1", &body).await;
    assert_eq!(usage(&f2)["input_tokens"], input);
    assert_eq!(usage(&f2)["input_tokens_details"]["cached_tokens"], input);
    // The cache belongs to the account.
    let f3 = codex_post_frames(&fake, "acct-2", &body).await;
    assert_eq!(usage(&f3)["input_tokens_details"]["cached_tokens"], 0);

    let fixed = FakeTokenUsage {
        input_tokens: 1000,
        cached_tokens: 900,
        output_tokens: 50,
        reasoning_tokens: 10,
    };
    fake.push_reply("acct-1", Reply::text("x").with_usage(fixed));
    let f4 = codex_post_frames(&fake, "acct-1", &body).await;
    let u = usage(&f4);
    assert_eq!(u["input_tokens"], 1000);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 900);
    assert_eq!(u["output_tokens"], 50);
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 10);
    assert_eq!(u["total_tokens"], 1050);
}

#[tokio::test]
async fn strict_body_checks() {
    let fake = fake_with(&["acct-1"]);
    let cases = [
        ("stream", json!(false), "Stream must be set to true"),
        ("store", json!(true), "Store must be set to false"),
        ("input", json!("a string"), "Input must be a list"),
        (
            "instructions",
            json!(["x"]),
            "Instructions must be a string",
        ),
        ("instructions", json!(" "), "Instructions must not be empty"),
    ];
    for (key, value, detail) in cases {
        let mut body = codex_body("hi");
        body[key] = value;
        let r = codex_post(&fake, "acct-1", &body).await;
        assert_eq!(r.status(), 400, "{key}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["detail"], detail);
    }
    let mut body = codex_body("hi");
    body.as_object_mut().unwrap().remove("model");
    assert_eq!(codex_post(&fake, "acct-1", &body).await.status(), 400);
    // Chat Completions shapes where Responses ones belong are refused, as the backend does.
    let chat_shapes = [
        json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        json!({"text": {"format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}}}}),
        json!({"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "a"}]}]}),
        json!({"input": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}),
        json!({"input": [{"type": "function_call_output", "call_id": "c1", "output": "o"}]}),
        json!({"input": [{"type": "function_call", "call_id": "c1", "arguments": "{}"}]}),
    ];
    for shape in chat_shapes {
        let mut body = codex_body("hi");
        for (k, v) in shape.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = codex_post(&fake, "acct-1", &body).await;
        assert_eq!(r.status(), 400, "{shape}");
    }
    // The Responses shapes of the same go through.
    let mut body = codex_body("hi");
    body["tools"] = json!([{"type": "function", "name": "f", "parameters": {}}]);
    body["tool_choice"] = json!({"type": "function", "name": "f"});
    body["input"] = json!([
        {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "o"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
    ]);
    let r = codex_post(&fake, "acct-1", &body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // The Codex CLI sends no top-level instructions: fine from it (its `x-codex-*` headers),
    // refused from anyone else.
    let mut body = codex_body("hi");
    body.as_object_mut().unwrap().remove("instructions");
    let r = codex_post(&fake, "acct-1", &body).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"], "Instructions are required");
    let token = fake.current_tokens("acct-1").access_token;
    let cli = codex_request(&fake, "acct-1", &token).header("x-codex-window-id", "w:0");
    assert_eq!(cli.json(&body).send().await.unwrap().status(), 200);

    let lax = FakeOpenAi::builder()
        .strict_requests(false)
        .start()
        .unwrap();
    lax.add_account(FakeAccount::new("acct-1"));
    let mut body = codex_body("hi");
    body["stream"] = json!(false);
    assert_eq!(codex_post(&lax, "acct-1", &body).await.status(), 200);
}

#[tokio::test]
async fn the_codex_cli_fixture_is_accepted() {
    let fake = fake_with(&["acct-1"]);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/codex-cli-0.171-request.json"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        // The fixture lives outside the repository; nothing to check without it.
        return;
    };
    let fixture: Value = serde_json::from_str(&text).unwrap();
    // With the CLI's own `x-codex-*` headers (the rest are the fake's Codex headers).
    let token = fake.current_tokens("acct-1").access_token;
    let mut req = codex_request(&fake, "acct-1", &token);
    for (name, value) in fixture["headers"].as_object().unwrap() {
        if name.starts_with("x-codex-") {
            req = req.header(name, value.as_str().unwrap());
        }
    }
    let r = req.json(&fixture["body"]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let frames = parse_sse(&r.text().await.unwrap());
    assert_eq!(
        last(&frames, "response.completed")["response"]["model"],
        "fake-model"
    );
}

#[tokio::test]
async fn slow_first_byte_delays_the_head() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::text("late").slow_first_byte(Duration::from_millis(300)),
    );
    let start = Instant::now();
    let r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(text_of(&parse_sse(&r.text().await.unwrap())), "late");
}

#[tokio::test]
async fn slow_after_headers_sends_the_head_then_waits() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::text("late").slow_after_headers(Duration::from_millis(1000)),
    );
    let start = Instant::now();
    let mut r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert!(
        start.elapsed() < Duration::from_millis(800),
        "head arrived at once"
    );
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b": keep-alive\n\n");
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(start.elapsed() >= Duration::from_millis(1000));
    assert_eq!(
        text_of(&parse_sse(&String::from_utf8(rest).unwrap())),
        "late"
    );
}

#[tokio::test]
async fn paced_replies_take_their_time() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::text("a b c").paced(Duration::from_millis(20)),
    );
    let start = Instant::now();
    let (_, _, frames) = codex_frames(&fake, "acct-1").await;
    // 11 events, 10 pauses.
    assert_eq!(frames.len(), 11);
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn cut_mid_stream_drops_the_connection() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply("acct-1", Reply::CutMidStream { after_deltas: 2 });
    let mut r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    let err = loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => panic!("the body ended cleanly"),
            Err(e) => break e,
        }
    };
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );
    let frames = parse_sse(&String::from_utf8(got).unwrap());
    assert_eq!(text_of(&frames), "Part 0. Part 1. ");
    assert!(frames.iter().all(|f| f.ty() != "response.completed"));
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.open_streams() == 0)
            .await
    );
    let rec = fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(rec.stream, Some(StreamStatus::Cut));
    assert_eq!(fake.cancelled_streams(), 0);
}

#[tokio::test]
async fn garbage_is_not_sse() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply("acct-1", Reply::Garbage);
    let r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let bytes = r.bytes().await.unwrap();
    assert!(std::str::from_utf8(&bytes).is_err());
    let lossy = String::from_utf8_lossy(&bytes);
    let parsed_any = lossy
        .split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .any(|d| serde_json::from_str::<Value>(d).is_ok());
    assert!(!parsed_any);
}

#[tokio::test]
async fn raw_sse_is_sent_verbatim() {
    let fake = fake_with(&["acct-1"]);
    let body = "event: response.new_thing\ndata: {\"type\":\"response.new_thing\"}\n\n";
    fake.push_reply("acct-1", Reply::RawSse { body: body.into() });
    let r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert_eq!(r.text().await.unwrap(), body);
}

#[tokio::test]
async fn hang_forever_is_cancelled_when_the_client_leaves() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply("acct-1", Reply::HangForever);
    let r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(fake.open_streams(), 1);
    let rec = fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(rec.stream, Some(StreamStatus::Open));
    drop(r);
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.cancelled_streams() == 1)
            .await,
        "the fake noticed the client going away"
    );
    assert_eq!(fake.open_streams(), 0);
    let rec = fake.last_request("/backend-api/codex/responses").unwrap();
    assert_eq!(rec.stream, Some(StreamStatus::Cancelled));
}

#[tokio::test]
async fn stall_mid_stream_then_client_disconnect_is_a_cancellation() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply("acct-1", Reply::StallMidStream { after_deltas: 2 });
    let mut r = codex_post(&fake, "acct-1", &codex_body("hi")).await;
    let mut got = String::new();
    while !got.contains("Part 1. ") {
        let c = r.chunk().await.unwrap().unwrap();
        got.push_str(std::str::from_utf8(&c).unwrap());
    }
    drop(r);
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.cancelled_streams() == 1)
            .await
    );
    assert_eq!(fake.open_streams(), 0);
}

#[tokio::test]
async fn leaving_during_a_slow_first_byte_is_a_cancellation() {
    let fake = fake_with(&["acct-1"]);
    fake.push_reply(
        "acct-1",
        Reply::text("never").slow_first_byte(Duration::from_secs(30)),
    );
    let token = fake.current_tokens("acct-1").access_token;
    let request = common::codex_request(&fake, "acct-1", &token)
        .json(&codex_body("hi"))
        .send();
    let timed_out = tokio::time::timeout(Duration::from_millis(200), request).await;
    assert!(timed_out.is_err());
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.cancelled_streams() == 1)
            .await
    );
}

#[tokio::test]
async fn models_and_compact() {
    let fake = fake_with(&["acct-1"]);
    let token = fake.current_tokens("acct-1").access_token;
    let get_models = || {
        client()
            .get(format!(
                "{}/models?client_version=0.171.0",
                fake.codex_base_url()
            ))
            .bearer_auth(&token)
            .header("ChatGPT-Account-ID", "acct-1")
            .send()
    };
    let v: Value = get_models().await.unwrap().json().await.unwrap();
    let slugs: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert!(slugs.contains(&"gpt-5-codex"));
    assert!(v["models"][0]["display_name"].is_string());
    assert!(v["models"][0]["context_window"].is_u64());
    let rec = fake.last_request("/backend-api/codex/models").unwrap();
    assert_eq!(
        rec.query_param("client_version").as_deref(),
        Some("0.171.0")
    );

    fake.set_models(vec![FakeModel::new("only-one").context_window(1000)]);
    let v: Value = get_models().await.unwrap().json().await.unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 1);
    assert_eq!(v["models"][0]["context_window"], 1000);

    let unauth = client()
        .get(format!("{}/models", fake.codex_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let unversioned = client()
        .get(format!("{}/models", fake.codex_base_url()))
        .bearer_auth(&token)
        .header("ChatGPT-Account-ID", "acct-1")
        .send()
        .await
        .unwrap();
    assert_eq!(unversioned.status(), 400);
    let v: Value = unversioned.json().await.unwrap();
    assert_eq!(
        v["detail"],
        "Missing required query parameter: client_version"
    );

    let compact: Value = client()
        .post(format!("{}/responses/compact", fake.codex_base_url()))
        .bearer_auth(&token)
        .header("ChatGPT-Account-ID", "acct-1")
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(compact["output"].is_array());
}

#[tokio::test]
async fn unknown_routes_are_404_and_recorded() {
    let fake = fake_with(&[]);
    let r = client()
        .get(format!("{}/nope", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(fake.count("/nope"), 1);
    fake.clear_requests();
    assert_eq!(fake.count("/nope"), 0);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn references_to_stored_items_are_not_found() {
    let fake = fake_with(&["acct-1"]);
    let not_found = |id: &str| {
        json!({"error": {
            "message": format!("Item with id '{id}' not found. Items are not persisted when `store` is set to false. Try again with `store` set to true, or remove this item from your input."),
            "type": "invalid_request_error",
            "param": "input",
            "code": null,
        }})
    };
    let with_item = |item: Value| {
        let mut body = codex_body("next");
        body["input"].as_array_mut().unwrap().insert(0, item);
        body
    };
    let refused = [
        json!({"type": "item_reference", "id": "msg_abc"}),
        json!({"type": "reasoning", "id": "rs_abc", "summary": []}),
        json!({"type": "reasoning", "id": "rs_abc", "summary": [], "encrypted_content": null}),
    ];
    for item in refused {
        let id = item["id"].as_str().unwrap().to_owned();
        let r = codex_post(&fake, "acct-1", &with_item(item)).await;
        assert_eq!(r.status(), 404, "{id}");
        assert_eq!(r.json::<Value>().await.unwrap(), not_found(&id));
    }
    assert_eq!(fake.pending_replies("acct-1"), 0);

    // What an earlier answer of this account carried can be replayed: its reasoning with the
    // encrypted content, a message or a function call with their ids (the Codex CLI sends them).
    let mut body = codex_body("hi");
    body["include"] = json!(["reasoning.encrypted_content"]);
    body["reasoning"] = json!({"effort": "low"});
    fake.push_reply(
        "acct-1",
        Reply::items([
            OutputItem::reasoning("Plan"),
            OutputItem::text("Calling"),
            OutputItem::tool_call("call_1", "f", "{}"),
        ]),
    );
    let frames = codex_post_frames(&fake, "acct-1", &body).await;
    let output = last(&frames, "response.completed")["response"]["output"].clone();
    assert!(output[0]["id"].as_str().unwrap().starts_with("rs_"));
    assert!(output[0]["encrypted_content"].is_string());
    let input = body["input"].as_array_mut().unwrap();
    input.extend(output.as_array().unwrap().iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": "call_1", "output": "ok"}));
    let r = codex_post(&fake, "acct-1", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        text_of(&parse_sse(&r.text().await.unwrap())),
        "The tool returned: ok"
    );

    // Not a strictness option: the lax fake stores nothing either.
    let lax = FakeOpenAi::builder()
        .strict_requests(false)
        .start()
        .unwrap();
    lax.add_account(FakeAccount::new("acct-1"));
    let item = json!({"type": "item_reference", "id": "fc_1"});
    assert_eq!(
        codex_post(&lax, "acct-1", &with_item(item)).await.status(),
        404
    );
}

#[tokio::test]
async fn strict_checks_want_store_false_and_only_known_fields() {
    let fake = fake_with(&["acct-1"]);
    let detail = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 400);
        r.json::<Value>().await.unwrap()["detail"].clone()
    };
    // A missing `store` is `true` to the backend.
    let mut body = codex_body("hi");
    body.as_object_mut().unwrap().remove("store");
    let r = codex_post(&fake, "acct-1", &body).await;
    assert_eq!(detail(r).await, "Store must be set to false");
    for field in [
        "temperature",
        "max_output_tokens",
        "previous_response_id",
        "metadata",
    ] {
        let mut body = codex_body("hi");
        body[field] = json!(1);
        let r = codex_post(&fake, "acct-1", &body).await;
        assert_eq!(
            detail(r).await,
            format!("Unsupported parameter: {field}"),
            "{field}"
        );
    }
    // Every field of PROTOCOL.md §4's list is accepted.
    let mut body = codex_body("hi");
    for (field, value) in [
        ("tools", json!([])),
        ("tool_choice", json!("auto")),
        ("parallel_tool_calls", json!(false)),
        ("reasoning", json!({"effort": "low"})),
        ("include", json!(["reasoning.encrypted_content"])),
        ("prompt_cache_key", json!("k")),
        ("text", json!({"verbosity": "low"})),
        ("service_tier", json!("auto")),
        ("client_metadata", json!({"a": "b"})),
    ] {
        body[field] = value;
    }
    assert_eq!(codex_post(&fake, "acct-1", &body).await.status(), 200);
    assert_eq!(fake.count("/backend-api/codex/responses"), 6);
}

#[tokio::test]
async fn strict_checks_want_the_protocol_headers() {
    let fake = fake_with(&["acct-1"]);
    let token = fake.current_tokens("acct-1").access_token;
    let url = format!("{}/responses", fake.codex_base_url());
    // Every required header but `skip`, plus `extra`.
    let send = |skip: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let mut req = client().post(&url).bearer_auth(&token);
        if skip != "chatgpt-account-id" {
            req = req.header("ChatGPT-Account-ID", "acct-1");
        }
        for (name, value) in common::CODEX_HEADERS {
            if name != skip {
                req = req.header(name, value);
            }
        }
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        req.json(&codex_body("hi")).send()
    };
    // (Without our `accept`, reqwest sends `*/*`.)
    for (skip, why) in [
        (
            "accept",
            r#"Accept must include text/event-stream (got "*/*")"#,
        ),
        ("originator", "Missing required header: originator"),
        (
            "chatgpt-account-id",
            "Missing required header: chatgpt-account-id",
        ),
        ("session_id", "Missing required header: session_id"),
        ("user-agent", "Missing required header: user-agent"),
        ("version", "Missing required header: version"),
        (
            "openai-beta",
            r#"OpenAI-Beta must include responses=experimental (got "")"#,
        ),
    ] {
        let r = send(skip, &[]).await.unwrap();
        assert_eq!(r.status(), 400, "{skip}");
        assert_eq!(r.json::<Value>().await.unwrap()["detail"], why, "{skip}");
    }
    let r = send("accept", &[("accept", "application/json")])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The Codex CLI spells it `session-id` and, as a custom provider's client, sends no
    // `version`: its own requests (`x-codex-*` headers) are accepted without.
    let cli = [("session-id", "s-1"), ("x-codex-window-id", "s-1:0")];
    let r = client()
        .post(&url)
        .bearer_auth(&token)
        .header("ChatGPT-Account-ID", "acct-1")
        .header("accept", "text/event-stream")
        .header("originator", "codex_exec")
        .header(cli[0].0, cli[0].1)
        .header(cli[1].0, cli[1].1)
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = send("session_id", &[("session-id", "s-1")]).await.unwrap();
    assert_eq!(r.status(), 200);
    // A bad token with every header is still a 401.
    let r = common::codex_request(&fake, "acct-1", "not-a-token")
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let lax = FakeOpenAi::builder()
        .strict_requests(false)
        .start()
        .unwrap();
    lax.add_account(FakeAccount::new("acct-1"));
    let r = client()
        .post(format!("{}/responses", lax.codex_base_url()))
        .bearer_auth(lax.current_tokens("acct-1").access_token)
        .header("ChatGPT-Account-ID", "acct-1")
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
