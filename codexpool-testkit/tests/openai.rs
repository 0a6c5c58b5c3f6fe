//! The plain OpenAI-compatible mode over real HTTP: key check, chat completions (streamed and
//! not, usage, tool calls, failures), responses, models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use codexpool_testkit::{FakeOpenAi, Reply};
use common::{client, parse_sse, text_of, types};
use serde_json::{Value, json};

async fn post(fake: &FakeOpenAi, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", fake.openai_base_url()))
        .bearer_auth(fake.openai_api_key())
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of a chat stream, `[DONE]` included as a string.
fn chat_chunks(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .map(|d| {
            if d == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(d).unwrap()
            }
        })
        .collect()
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    })
}

#[tokio::test]
async fn api_key_is_required() {
    let fake = FakeOpenAi::builder()
        .openai_api_key("sk-test-123")
        .start()
        .unwrap();
    let url = format!("{}/chat/completions", fake.openai_base_url());
    let none = client()
        .post(&url)
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let v: Value = none.json().await.unwrap();
    assert!(v["error"]["message"].is_string());
    let wrong = client()
        .post(&url)
        .bearer_auth("sk-other")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(
        post(&fake, "/chat/completions", &chat_body(false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn chat_non_stream() {
    let fake = FakeOpenAi::start().unwrap();
    let v: Value = post(&fake, "/chat/completions", &chat_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "gpt-4o-mini");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello from FakeOpenAi.");
    assert_eq!(c["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 3);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 3
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert!(u["completion_tokens_details"]["reasoning_tokens"].is_u64());
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let fake = FakeOpenAi::start().unwrap();
    fake.push_openai_reply(Reply::reasoning_then_text("Hmm", "Hi there"));
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&fake, "/chat/completions", &body).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let chunks = chat_chunks(&r.text().await.unwrap());
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Hmm");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hi there");
    let finish = &chunks[chunks.len() - 3];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(
        usage["usage"]["completion_tokens_details"]["reasoning_tokens"],
        1
    );

    // Without include_usage there is no usage chunk.
    let chunks = chat_chunks(
        &post(&fake, "/chat/completions", &chat_body(true))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn chat_tool_calls() {
    let fake = FakeOpenAi::start().unwrap();
    fake.push_openai_reply(Reply::tool_call(
        "call_9",
        "get_weather",
        r#"{"city":"Paris"}"#,
    ));
    fake.push_openai_reply(Reply::tool_call(
        "call_9",
        "get_weather",
        r#"{"city":"Paris"}"#,
    ));
    let mut body = chat_body(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let chunks = chat_chunks(
        &post(&fake, "/chat/completions", &body)
            .await
            .text()
            .await
            .unwrap(),
    );
    let first_call = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .unwrap();
    let tc = &first_call["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(tc["index"], 0);
    assert_eq!(tc["id"], "call_9");
    assert_eq!(tc["type"], "function");
    assert_eq!(tc["function"]["name"], "get_weather");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );

    body["stream"] = json!(false);
    let v: Value = post(&fake, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], Value::Null);
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    // The tool result comes back: the default answer quotes it.
    let mut follow = chat_body(false);
    follow["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "tool", "tool_call_id": "call_9", "content": "sunny"}));
    let v: Value = post(&fake, "/chat/completions", &follow)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The tool returned: sunny"
    );
}

#[tokio::test]
async fn chat_failures() {
    let fake = FakeOpenAi::start().unwrap();
    fake.push_openai_reply(Reply::FailedAfterText {
        deltas: vec!["x".into()],
        code: "server_error".into(),
        message: "boom".into(),
    });
    let chunks = chat_chunks(
        &post(&fake, "/chat/completions", &chat_body(true))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(chunks.last().unwrap()["error"]["message"], "boom");
    fake.push_openai_reply(Reply::RateLimit429);
    let r = post(&fake, "/chat/completions", &chat_body(false)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    fake.push_openai_reply(Reply::Overloaded);
    assert_eq!(
        post(&fake, "/chat/completions", &chat_body(false))
            .await
            .status(),
        500
    );
    fake.push_openai_reply(Reply::Incomplete {
        deltas: vec!["a".into()],
        reason: "max_output_tokens".into(),
    });
    let v: Value = post(&fake, "/chat/completions", &chat_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let bad = post(&fake, "/chat/completions", &json!({"model": "m"})).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn responses_stream_and_not() {
    let fake = FakeOpenAi::start().unwrap();
    let body = json!({"model": "gpt-4.1", "input": "Say hi", "stream": true});
    let r = post(&fake, "/responses", &body).await;
    assert_eq!(r.status(), 200);
    let frames = parse_sse(&r.text().await.unwrap());
    assert_eq!(types(&frames).first().unwrap(), "response.created");
    assert_eq!(types(&frames).last().unwrap(), "response.completed");
    assert_eq!(text_of(&frames), "Hello from FakeOpenAi.");

    fake.push_openai_reply(Reply::text("Plain answer"));
    let v: Value = post(
        &fake,
        "/responses",
        &json!({"model": "gpt-4.1", "input": "x"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-4.1");
    assert_eq!(v["output"][0]["content"][0]["text"], "Plain answer");
    assert!(v["usage"]["total_tokens"].is_u64());
}

#[tokio::test]
async fn models_list() {
    let fake = FakeOpenAi::start().unwrap();
    let v: Value = client()
        .get(format!("{}/models", fake.openai_base_url()))
        .bearer_auth(fake.openai_api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-5-codex")
    );
}
