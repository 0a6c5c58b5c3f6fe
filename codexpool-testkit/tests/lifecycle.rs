//! The fake's life: start/stop from sync code and from tokio tests (paused time included), thread
//! and socket clean-up on drop, and bench (instant) mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use codexpool_testkit::{FakeAccount, FakeOpenAi, INSTANT_DELTAS, INSTANT_HOLD_PREFIX, Reply};
use common::{client, codex_body, parse_sse, text_of};
use serde_json::{Value, json};

/// A raw HTTP/1.1 GET from blocking code; the whole answer.
fn raw_get(addr: std::net::SocketAddr, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Threads of this process whose name is `name` (Linux only; elsewhere `None`).
fn threads_named(name: &str) -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == name)
            .count(),
    )
}

#[test]
fn works_from_sync_code_and_drop_joins_everything() {
    let fake = FakeOpenAi::builder().worker_threads(2).start().unwrap();
    let t = fake.add_account(FakeAccount::new("acct-1"));
    let addr = fake.addr();
    let answer = raw_get(
        addr,
        "/backend-api/wham/usage",
        &format!(
            "Authorization: Bearer {}\r\nChatGPT-Account-ID: acct-1\r\n\
             originator: codex_cli_rs\r\nUser-Agent: codex_cli_rs/0.171.0\r\n",
            t.access_token
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"rate_limit\""));

    let name = format!("fakeoai-{}", addr.port());
    if let Some(n) = threads_named(&name) {
        assert_eq!(n, 3, "the server thread and two workers");
    }
    // An open connection with a hanging answer must not keep the server alive.
    fake.push_reply("acct-1", Reply::HangForever);
    let mut hanging = TcpStream::connect(addr).unwrap();
    let body = codex_body("hi").to_string();
    write!(
        hanging,
        "POST /backend-api/codex/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nChatGPT-Account-ID: acct-1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        t.access_token,
        common::CODEX_HEADERS
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect::<String>(),
        body.len(),
        body
    )
    .unwrap();
    assert!(fake.wait_until(Duration::from_secs(5), |f| f.open_streams() == 1));

    drop(fake);
    if let Some(n) = threads_named(&name) {
        assert_eq!(n, 0, "no thread left behind");
    }
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    let mut rest = Vec::new();
    hanging
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = hanging.read_to_end(&mut rest);
    drop(hanging);
}

#[test]
fn shutdown_is_explicit_too() {
    let fake = FakeOpenAi::start().unwrap();
    let addr = fake.addr();
    fake.shutdown();
    assert!(TcpStream::connect(addr).is_err());
}

#[tokio::test(start_paused = true)]
async fn works_under_paused_time() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.push_reply(
        "acct-1",
        Reply::text("paced").paced(Duration::from_millis(5)),
    );
    let r = common::codex_post(&fake, "acct-1", &codex_body("hi")).await;
    assert_eq!(text_of(&parse_sse(&r.text().await.unwrap())), "paced");
    // The test's clock can jump; the fake's runtime keeps real time.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let (status, _, _) = common::codex_frames(&fake, "acct-1").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams() {
    let fake = std::sync::Arc::new(FakeOpenAi::start().unwrap());
    fake.add_account(FakeAccount::new("acct-1"));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let fake = fake.clone();
        tasks.push(tokio::spawn(async move {
            let (_, _, frames) = common::codex_frames(&fake, "acct-1").await;
            text_of(&frames)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "Hello from acct-1.");
    }
    assert_eq!(fake.count("/backend-api/codex/responses"), 32);
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.open_streams() == 0)
            .await
    );
}

#[tokio::test]
async fn instant_mode_answers_anyone_from_bytes() {
    let fake = FakeOpenAi::builder().instant(true).start().unwrap();
    let http = client();
    let r = http
        .post(format!("{}/responses", fake.codex_base_url()))
        .bearer_auth("whatever")
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-codex-primary-used-percent"));
    let frames = parse_sse(&r.text().await.unwrap());
    let deltas = frames
        .iter()
        .filter(|f| f.ty() == "response.output_text.delta")
        .count();
    assert_eq!(deltas, INSTANT_DELTAS);
    let text = text_of(&frames);
    assert!((1000..1100).contains(&text.len()), "{}", text.len());
    assert_eq!(frames.last().unwrap().ty(), "response.completed");

    let chat = |stream: bool, usage: bool| {
        http.post(format!("{}/chat/completions", fake.openai_base_url()))
            .bearer_auth("anything")
            .json(
                &json!({"model": "m", "stream": stream, "stream_options": {"include_usage": usage},
                "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
    };
    let v: Value = chat(false, false).await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let s = chat(true, false).await.unwrap().text().await.unwrap();
    assert!(s.ends_with("data: [DONE]\n\n"));
    assert!(!s.contains("\"usage\""));
    let s = chat(true, true).await.unwrap().text().await.unwrap();
    assert!(s.contains("\"prompt_tokens\""));

    assert_eq!(fake.count("/backend-api/codex/responses"), 1);
    assert_eq!(fake.count("/v1/chat/completions"), 3);
    // The model listings answer as usual and stay out of the log too.
    for listing in [
        format!("{}/models", fake.openai_base_url()),
        format!("{}/models?client_version=1.0.0", fake.codex_base_url()),
    ] {
        let r = http
            .get(listing)
            .bearer_auth("anything")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        fake.requests().is_empty(),
        "hot paths and listings record nothing"
    );
    fake.clear_requests();
    assert_eq!(fake.count("/v1/chat/completions"), 0);
}

#[tokio::test]
async fn instant_hold_models_keep_streams_open_then_finish() {
    let fake = FakeOpenAi::builder().instant(true).start().unwrap();
    let http = client();
    let started = std::time::Instant::now();
    let mut body = codex_body("hi");
    body["model"] = json!(format!("{INSTANT_HOLD_PREFIX}1"));
    let mut held = http
        .post(format!("{}/responses", fake.codex_base_url()))
        .bearer_auth("whatever")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    // The first half comes at once: enough events for a gateway to commit.
    let first = held.chunk().await.unwrap().unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.contains("response.output_text.delta"), "{first}");
    assert!(!first.contains("response.completed"), "{first}");
    assert_eq!(fake.open_streams(), 1);

    // A chat stream on hold counts too; dropping it mid-hold cancels it.
    let chat = http
        .post(format!("{}/chat/completions", fake.openai_base_url()))
        .bearer_auth("anything")
        .json(
            &json!({"model": format!("{INSTANT_HOLD_PREFIX}60"), "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    let mut chat = chat;
    let head = chat.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head).contains("chat.completion.chunk"));
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.open_streams() == 2)
            .await
    );
    drop(chat);
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.cancelled_streams() == 1)
            .await
    );

    // The held Codex stream ends after its hold with the whole answer.
    let mut rest = first;
    while let Some(c) = held.chunk().await.unwrap() {
        rest.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    let frames = parse_sse(&rest);
    assert_eq!(frames.last().unwrap().ty(), "response.completed");
    assert_eq!(text_of(&frames).len(), 1040);
    assert!(
        fake.wait_until_async(Duration::from_secs(5), |f| f.open_streams() == 0)
            .await
    );
    assert_eq!(
        fake.cancelled_streams(),
        1,
        "the finished one is no cancellation"
    );

    // Ordinary instant answers are not counted as open streams.
    let r = http
        .post(format!("{}/responses", fake.codex_base_url()))
        .bearer_auth("whatever")
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("response.completed"));
    assert_eq!(fake.open_streams(), 0);
}
