//! Conformance with a real client: the Codex CLI (npm `@openai/codex`) driven against the fake's
//! `/v1/responses`, as a custom provider. Runs when `CODEXPOOL_CODEX_BIN` names the `codex`
//! binary (e.g. `node_modules/.bin/codex`); otherwise it says so and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use codexpool_testkit::{FakeOpenAi, OutputItem, Reply};
use serde_json::Value;

fn codex_bin() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("CODEXPOOL_CODEX_BIN")?);
    path.exists().then_some(path)
}

/// Runs `codex exec --json` against the fake; its JSONL events.
fn run_codex(bin: &PathBuf, fake: &FakeOpenAi, prompt: &str) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let config = format!(
        r#"model = "gpt-5-codex"
model_provider = "fake"
[model_providers.fake]
name = "fake"
base_url = "{}"
wire_api = "responses"
env_key = "FAKE_KEY"
request_max_retries = 0
stream_max_retries = 0
"#,
        fake.openai_base_url()
    );
    std::fs::write(home.path().join("config.toml"), config).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["exec", "--skip-git-repo-check", "--ephemeral", "--json"])
        .arg("--dangerously-bypass-approvals-and-sandbox")
        .arg(prompt)
        .env("CODEX_HOME", home.path())
        .env("FAKE_KEY", fake.openai_api_key())
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "codex failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn agent_messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
        .map(|e| e["item"]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_codex_cli_completes_a_text_turn_and_a_tool_round_trip() {
    let Some(bin) = codex_bin() else {
        eprintln!("CODEXPOOL_CODEX_BIN is not set: skipping the Codex CLI conformance test");
        return;
    };
    let fake = FakeOpenAi::start().unwrap();
    let events = run_codex(&bin, &fake, "Say hello");
    assert_eq!(agent_messages(&events), ["Hello from FakeOpenAi."]);
    assert!(events.iter().any(|e| e["type"] == "turn.completed"));

    fake.push_openai_reply(Reply::items([
        OutputItem::reasoning("Plan"),
        OutputItem::tool_call("call_1", "exec_command", r#"{"cmd":"echo hi-from-tool"}"#),
    ]));
    let events = run_codex(&bin, &fake, "Run echo");
    let ran = events.iter().any(|e| {
        e["type"] == "item.completed"
            && e["item"]["type"] == "command_execution"
            && e["item"]["aggregated_output"]
                .as_str()
                .is_some_and(|o| o.contains("hi-from-tool"))
    });
    assert!(ran, "the CLI ran the scripted tool call: {events:?}");
    let messages = agent_messages(&events);
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("The tool returned:") && m.contains("hi-from-tool")),
        "{messages:?}"
    );
    let last = fake
        .last_request("/v1/responses")
        .unwrap()
        .body_json()
        .unwrap();
    let input = last["input"].as_array().unwrap();
    assert_eq!(input.last().unwrap()["type"], "function_call_output");
    let turn = events
        .iter()
        .rev()
        .find(|e| e["type"] == "turn.completed")
        .unwrap();
    assert!(turn["usage"]["cached_input_tokens"].as_u64().unwrap() > 0);
}
