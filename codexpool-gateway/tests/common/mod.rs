//! The test harness: a FakeOpenAi upstream, a pool with its accounts imported, a platform key,
//! and the gateway as a tower service (no socket on our side).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use codexpool_core::keys::NewKey;
use codexpool_core::store::MemoryStore;
use codexpool_core::{Config, Pool};
use codexpool_gateway::Gateway;
use codexpool_testkit::{FakeAccount, FakeOpenAi};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub struct Harness {
    pub fake: FakeOpenAi,
    pub pool: Pool,
    pub gateway: Gateway,
    pub key: String,
    /// Local ids, in the order of the fake accounts acct-0, acct-1, …
    pub ids: Vec<String>,
}

/// The whole service over `pool` on a free loopback port, without the background tasks.
pub async fn serve(pool: &Pool) -> codexpool_gateway::RunningServer {
    codexpool_gateway::Server::new(pool.clone())
        .addr("127.0.0.1:0".parse().unwrap())
        .background_tasks(false)
        .start()
        .await
        .unwrap()
}

pub fn config_for(fake: &FakeOpenAi, settings: &[(&str, &str)]) -> Config {
    let mut c = Config::default()
        .with("UPSTREAM_BASE_URL", &fake.codex_base_url())
        .unwrap()
        .with("ISSUER", &fake.issuer())
        .unwrap()
        .with("USAGE_BASE_URL", &fake.usage_base_url())
        .unwrap()
        .with("REQUEST_GATE_WAIT_TIMEOUT_MS", "0")
        .unwrap();
    for (k, v) in settings {
        c.set(k, v).unwrap();
    }
    c
}

pub async fn harness(accounts: usize, settings: &[(&str, &str)]) -> Harness {
    harness_with(accounts, settings, |b| b).await
}

pub async fn harness_with(
    accounts: usize,
    settings: &[(&str, &str)],
    build: impl FnOnce(codexpool_gateway::GatewayBuilder) -> codexpool_gateway::GatewayBuilder,
) -> Harness {
    harness_on(FakeOpenAi::start().unwrap(), accounts, settings, build).await
}

/// [`harness_with`] in front of a fake started by the test.
pub async fn harness_on(
    fake: FakeOpenAi,
    accounts: usize,
    settings: &[(&str, &str)],
    build: impl FnOnce(codexpool_gateway::GatewayBuilder) -> codexpool_gateway::GatewayBuilder,
) -> Harness {
    let pool = Pool::builder(config_for(&fake, settings))
        .store(Arc::new(MemoryStore::new()))
        .watch_interval(Duration::ZERO)
        .open()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..accounts {
        let name = format!("acct-{i}");
        fake.add_account(FakeAccount::new(&name).email(format!("{name}@example.com")));
        let doc = serde_json::to_vec(&fake.auth_json(&name)).unwrap();
        let r = pool.accounts().import_bytes(&name, &doc).await;
        let id = r.results[0].account_id.clone().unwrap();
        pool.accounts()
            .update(&id, codexpool_core::AccountPatch::default().sort(i as i64))
            .await
            .unwrap();
        ids.push(id);
    }
    let key = pool
        .keys()
        .create(NewKey::named("test"))
        .await
        .unwrap()
        .secret
        .expose()
        .to_string();
    let gateway = build(Gateway::builder(pool.clone())).build().unwrap();
    Harness {
        fake,
        pool,
        gateway,
        key,
        ids,
    }
}

impl Harness {
    pub fn post(&self, path: &str, body: Value) -> Request<Body> {
        Request::post(path)
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    /// A `/v1/responses` request as the Codex CLI sends it: its `originator`, its window id and,
    /// when given, its session header.
    pub fn codex_post(&self, body: &Value, session: Option<&str>) -> Request<Body> {
        let mut req = Request::post("/v1/responses")
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .header("originator", "codex_exec")
            .header("x-codex-window-id", format!("{}:0", session.unwrap_or("w")));
        if let Some(s) = session {
            req = req.header("session-id", s);
        }
        req.body(Body::from(body.to_string())).unwrap()
    }

    pub async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.gateway.router().oneshot(req).await.unwrap()
    }

    /// Sends and reads the whole answer.
    pub async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let res = self.send(req).await;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    pub async fn json(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, _, body) = self.call(req).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
        )
    }

    /// The request log, newest first, after the writer flushed.
    pub async fn log(&self) -> Vec<codexpool_core::request_log::RequestLogEntry> {
        self.pool
            .request_log()
            .list(&codexpool_core::request_log::RequestLogQuery::latest(100))
            .await
            .unwrap()
    }

    /// The `codexpool_upstream_attempts_total` counter of one outcome, from `/metrics`.
    pub async fn attempts(&self, outcome: &str) -> u64 {
        let (_, _, text) = self
            .call(Request::get("/metrics").body(Body::empty()).unwrap())
            .await;
        let series = format!("codexpool_upstream_attempts_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// The JSON body of the last request the backend received.
    pub fn last_sent(&self) -> Value {
        self.fake
            .last_request("/backend-api/codex/responses")
            .unwrap()
            .body_json()
            .unwrap()
    }

    pub fn total_inflight(&self) -> u32 {
        self.pool.accounts().total_inflight()
    }

    /// Waits (10 s at most) until no request holds an account: what goes on after the client
    /// has its answer (the rest of a stream cut at a stop sequence) has ended, its row written.
    pub async fn settled(&self) {
        for _ in 0..1000 {
            if self.total_inflight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a request still holds an account after 10 s");
    }

    /// Until when account `i` rests, if it does.
    pub fn cooldown_until(&self, i: usize) -> Option<codexpool_core::Timestamp> {
        self.pool
            .accounts()
            .runtime(&self.ids[i])
            .unwrap()
            .cooldown_until
    }
}

/// `data:` payloads of an SSE body (comments and `event:` lines skipped).
pub fn data_frames(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| {
            let data: Vec<&str> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The JSON frames of an SSE body (`[DONE]` excluded).
pub fn json_frames(body: &str) -> Vec<Value> {
    data_frames(body)
        .into_iter()
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap())
        .collect()
}

/// The answer text of a chat stream's chunks, joined.
pub fn streamed_content(frames: &[Value]) -> String {
    frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The `type` of each Responses event frame, in order.
pub fn event_types(frames: &[Value]) -> Vec<&str> {
    frames.iter().filter_map(|f| f["type"].as_str()).collect()
}

pub fn chat(stream: bool) -> Value {
    serde_json::json!({"model": "gpt-5-codex", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
}

/// The four ways a client asks for an answer: (route, streamed).
pub const ASKS: [(&str, bool); 4] = [
    ("/v1/chat/completions", false),
    ("/v1/chat/completions", true),
    ("/v1/responses", false),
    ("/v1/responses", true),
];

/// A short question in the protocol of `route` (one of [`ASKS`]).
pub fn question(route: &str, stream: bool) -> Value {
    if route == "/v1/responses" {
        serde_json::json!({"model": "gpt-5-codex", "stream": stream, "input": "Hi"})
    } else {
        chat(stream)
    }
}

/// The text of a whole answer in any of the four forms of [`ASKS`]; panics on an error frame,
/// so a stream that ended in an error is no answer.
pub fn answer_text(route: &str, stream: bool, body: &str) -> String {
    let pieces: Vec<Value> = if stream {
        json_frames(body)
    } else {
        vec![serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))]
    };
    let mut text = String::new();
    for v in &pieces {
        assert!(
            v["error"].is_null() && v["type"] != "error" && v["type"] != "response.failed",
            "an error, not an answer: {body}"
        );
        match (route, stream) {
            ("/v1/responses", true) => {
                if v["type"] == "response.output_text.delta" {
                    text.push_str(v["delta"].as_str().unwrap());
                }
            }
            ("/v1/responses", false) => {
                for item in v["output"].as_array().unwrap() {
                    for part in item["content"].as_array().into_iter().flatten() {
                        text.push_str(part["text"].as_str().unwrap_or_default());
                    }
                }
            }
            (_, true) => text.push_str(
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default(),
            ),
            (_, false) => text.push_str(v["choices"][0]["message"]["content"].as_str().unwrap()),
        }
    }
    if stream && route != "/v1/responses" {
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    text
}
