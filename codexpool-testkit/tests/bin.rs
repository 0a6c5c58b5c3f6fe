//! The `codexpool-fake` binary: its JSON line, the auth.json files, and stopping on stdin EOF.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Starts one of the testkit's binaries and reads the JSON line it prints once it listens.
fn start(bin: &str, args: &[&str], stdin: Stdio) -> (Child, Value) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, serde_json::from_str(&line).unwrap())
}

/// Waits up to 10 s for `child` to exit.
fn exit_status(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prints_urls_writes_auth_files_and_stops_on_stdin_eof() {
    let dir = tempfile::tempdir().unwrap();
    let auth_dir = dir.path().to_str().unwrap();
    let (mut child, info) = start(
        env!("CARGO_BIN_EXE_codexpool-fake"),
        &["--accounts", "2", "--auth-dir", auth_dir],
        Stdio::piped(),
    );
    let url = info["url"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"));
    assert_eq!(info["codex_base_url"], format!("{url}/backend-api/codex"));
    assert_eq!(info["openai_base_url"], format!("{url}/v1"));
    assert_eq!(info["issuer"], url);
    assert_eq!(info["accounts"], serde_json::json!(["acct-1", "acct-2"]));

    let auth: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("acct-2").join("auth.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(auth["tokens"]["account_id"], "acct-2");

    // The token in the file works against the running fake.
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /backend-api/wham/usage HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nChatGPT-Account-ID: acct-2\r\noriginator: codex_cli_rs\r\nUser-Agent: codex_cli_rs/0.171.0\r\n\r\n",
        auth["tokens"]["access_token"].as_str().unwrap()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    drop(child.stdin.take());
    assert!(exit_status(&mut child, "the fake did not stop on stdin EOF").success());
}

#[cfg(unix)]
#[test]
fn ignores_a_null_stdin_and_stops_on_sigterm() {
    let (mut child, info) = start(
        env!("CARGO_BIN_EXE_codexpool-fake"),
        &["--instant", "--accounts", "0"],
        Stdio::null(),
    );
    assert_eq!(info["accounts"], serde_json::json!([]));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "EOF of /dev/null is no reason to stop"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = exit_status(&mut child, "the fake ignored SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_taken_address_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_codexpool-fake"))
        .args(["--addr", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("codexpool-fake: cannot listen on {addr}: ")),
        "{err}"
    );
    assert_eq!(out.stdout, b"");
}

/// Starts `codexpool-bare-relay` with `args`; its stdin is a pipe, so dropping the child's
/// stdin stops it.
fn start_relay(args: &[&str]) -> (Child, String) {
    let (child, info) = start(
        env!("CARGO_BIN_EXE_codexpool-bare-relay"),
        args,
        Stdio::piped(),
    );
    (child, info["url"].as_str().unwrap().to_owned())
}

/// One HTTP/1.1 exchange on a fresh connection: the status line and the body.
fn post(url: &str, path: &str, key: &str, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn the_bare_relay_forwards_to_the_fake_and_stops_on_stdin_eof() {
    let fake = codexpool_testkit::FakeOpenAi::builder()
        .instant(true)
        .start()
        .unwrap();
    let chat = r#"{"model":"gpt-5-codex","messages":[{"role":"user","content":"hi"}]}"#;

    // The client's own path: the fake's plain OpenAI API answers; its refusals go back as is.
    let (mut plain, url) = start_relay(&["--upstream", &fake.url()]);
    let (status, body) = post(&url, "/v1/chat/completions", fake.openai_api_key(), chat);
    assert!(status.ends_with("200 OK"), "{status}");
    assert!(body.contains("chat.completion"), "{body}");
    let (status, _) = post(&url, "/v1/no-such-endpoint", fake.openai_api_key(), chat);
    assert!(status.contains(" 404 "), "{status}");

    // `--path`: every request goes to the Codex endpoint and gets its event stream.
    let (mut codex, url) = start_relay(&[
        "--upstream",
        &fake.url(),
        "--path",
        "/backend-api/codex/responses",
    ]);
    let (status, body) = post(&url, "/v1/chat/completions", "any", chat);
    assert!(status.ends_with("200 OK"), "{status}");
    assert!(body.contains("event: response.completed"), "{body}");

    // No upstream: a 502 that says why.
    fake.shutdown();
    let (status, body) = post(&url, "/v1/chat/completions", "any", chat);
    assert!(status.contains(" 502 "), "{status}");
    assert!(!body.trim().is_empty());

    for child in [&mut plain, &mut codex] {
        drop(child.stdin.take());
        exit_status(child, "the relay did not stop on stdin EOF");
    }
}

#[test]
fn the_bare_relay_refuses_an_upstream_that_is_not_an_http_origin() {
    for bad in ["https://127.0.0.1:1", "127.0.0.1:1", "/just/a/path"] {
        let out = Command::new(env!("CARGO_BIN_EXE_codexpool-bare-relay"))
            .args(["--upstream", bad])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--upstream"), "{bad}: {err}");
    }
}
