//! Helpers shared by the integration tests: an HTTP client, an SSE parser, request bodies.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use codexpool_testkit::FakeOpenAi;
use serde_json::{Value, json};

/// A client that does not follow redirects (the authorize step is asserted on its 302).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One SSE frame: the `event:` line (if any) and the parsed `data:`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub event: Option<String>,
    pub data: Value,
}

impl Frame {
    pub fn ty(&self) -> &str {
        self.data["type"].as_str().unwrap_or_default()
    }
}

/// Parses an SSE body; panics on a frame whose data is not JSON (except `[DONE]`, skipped).
pub fn parse_sse(text: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        let mut event = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_owned());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        let data: Value =
            serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad frame {data}: {e}"));
        if let Some(e) = &event {
            assert_eq!(
                data["type"].as_str(),
                Some(e.as_str()),
                "event line matches type"
            );
        }
        frames.push(Frame { event, data });
    }
    frames
}

pub fn types(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(|f| f.ty().to_owned()).collect()
}

/// A minimal body the strict Codex backend accepts.
pub fn codex_body(text: &str) -> Value {
    json!({
        "model": "gpt-5-codex",
        "stream": true,
        "store": false,
        "instructions": "You are a test.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
    })
}

/// The request headers of PROTOCOL.md §4 that the strict backend requires, without
/// `Authorization` and `ChatGPT-Account-ID`.
pub const CODEX_HEADERS: [(&str, &str); 6] = [
    ("accept", "text/event-stream"),
    ("originator", "codex_cli_rs"),
    ("user-agent", "codex_cli_rs/0.0.0 (Linux 6.1; x86_64)"),
    ("version", "0.0.0"),
    ("openai-beta", "responses=experimental"),
    ("session_id", "00000000-0000-4000-8000-000000000000"),
];

/// A POST to the Codex backend as `account` with `token` and every required header.
pub fn codex_request(fake: &FakeOpenAi, account: &str, token: &str) -> reqwest::RequestBuilder {
    let mut req = client()
        .post(format!("{}/responses", fake.codex_base_url()))
        .bearer_auth(token)
        .header("ChatGPT-Account-ID", account);
    for (name, value) in CODEX_HEADERS {
        req = req.header(name, value);
    }
    req
}

/// POSTs a body to the Codex backend as `account` with its current access token.
pub async fn codex_post(fake: &FakeOpenAi, account: &str, body: &Value) -> reqwest::Response {
    let token = fake.current_tokens(account).access_token;
    codex_request(fake, account, &token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POSTs a body as `account` and parses the SSE answer.
pub async fn codex_post_frames(fake: &FakeOpenAi, account: &str, body: &Value) -> Vec<Frame> {
    parse_sse(&codex_post(fake, account, body).await.text().await.unwrap())
}

/// Sends a default body and returns the status, headers and parsed frames.
pub async fn codex_frames(
    fake: &FakeOpenAi,
    account: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Vec<Frame>) {
    let resp = codex_post(fake, account, &codex_body("hi")).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, parse_sse(&text))
}

/// The concatenated text deltas of a Responses stream.
pub fn text_of(frames: &[Frame]) -> String {
    frames
        .iter()
        .filter(|f| f.ty() == "response.output_text.delta")
        .map(|f| f.data["delta"].as_str().unwrap().to_owned())
        .collect()
}

/// A PKCE verifier and its challenge.
pub fn pkce() -> (String, String) {
    let verifier =
        "a-verifier-that-is-long-enough-0123456789-abcdefghijklmnopqrstuvwxyz".to_owned();
    let challenge = codexpool_testkit::pkce_challenge(&verifier);
    (verifier, challenge)
}
