//! The real Codex CLI (npm `@openai/codex`) as a client of a running gateway: `codex exec`
//! completes a turn with a tool call through two accounts, the first of which is exhausted.
//! `scripts/test.sh` installs the CLI and sets `CODEXPOOL_CODEX_BIN`; without it this test says
//! so and passes (a developer machine without npm).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use codexpool_core::keys::NewKey;
use codexpool_core::request_log::RequestLogQuery;
use codexpool_core::{Config, Pool};
use codexpool_testkit::{FakeAccount, FakeOpenAi, OutputItem, Reply};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_completes_a_tool_turn_through_the_second_account() {
    let Some(bin) = std::env::var_os("CODEXPOOL_CODEX_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        eprintln!("CODEXPOOL_CODEX_BIN is not set: skipping the Codex CLI test");
        return;
    };
    let fake = FakeOpenAi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = common::config_for(&fake, &[]);
    config
        .set("DB_PATH", dir.path().join("pool.db").to_str().unwrap())
        .unwrap();
    let pool = Pool::open(config).await.unwrap();
    for name in ["acct-0", "acct-1"] {
        fake.add_account(FakeAccount::new(name));
        pool.accounts()
            .import_bytes(name, fake.auth_json(name).to_string().as_bytes())
            .await;
    }
    let first = pool.accounts().list(&Default::default())[0].id.clone();
    pool.accounts()
        .update(&first, codexpool_core::AccountPatch::default().sort(-1))
        .await
        .unwrap();
    let first_chatgpt = pool
        .accounts()
        .get(&first)
        .unwrap()
        .chatgpt_account_id
        .unwrap();
    let second_chatgpt = if first_chatgpt == "acct-0" {
        "acct-1"
    } else {
        "acct-0"
    };
    fake.push_reply(
        &first_chatgpt,
        Reply::UsageLimit429 {
            resets_in_secs: 3600,
        },
    );
    fake.push_reply(
        second_chatgpt,
        Reply::items([
            OutputItem::reasoning("Plan"),
            OutputItem::tool_call("call_1", "exec_command", r#"{"cmd":"echo hi-from-tool"}"#),
        ]),
    );
    let key = pool.keys().create(NewKey::named("codex")).await.unwrap();
    let srv = common::serve(&pool).await;

    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "model = \"gpt-5-codex\"\nmodel_provider = \"codexpool\"\n[model_providers.codexpool]\nname = \"codexpool\"\n\
             base_url = \"{}\"\nwire_api = \"responses\"\nenv_key = \"CODEXPOOL_KEY\"\nrequest_max_retries = 0\nstream_max_retries = 0\n",
            srv.base_url()
        ),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(&bin)
        .args([
            "exec",
            "--skip-git-repo-check",
            "--ephemeral",
            "--json",
            "--dangerously-bypass-approvals-and-sandbox",
            "Run echo",
        ])
        .env("CODEX_HOME", home.path())
        .env("CODEXPOOL_KEY", key.secret.expose())
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "codex failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ran = events.iter().any(|e| {
        e["type"] == "item.completed"
            && e["item"]["type"] == "command_execution"
            && e["item"]["aggregated_output"]
                .as_str()
                .is_some_and(|o| o.contains("hi-from-tool"))
    });
    assert!(ran, "the CLI ran the tool call: {events:?}");
    let answered = events.iter().any(|e| {
        e["type"] == "item.completed"
            && e["item"]["type"] == "agent_message"
            && e["item"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("hi-from-tool"))
    });
    assert!(
        answered,
        "the turn finished with the tool's output: {events:?}"
    );

    // The first request failed over; the tool result went back on the same (second) account.
    let rows = pool
        .request_log()
        .list(&RequestLogQuery::latest(10))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (second, first_req) = (&rows[0], &rows[1]);
    assert_eq!(first_req.accounts_tried.len(), 2);
    assert_eq!(first_req.accounts_tried[0], first);
    assert_eq!(
        second.accounts_tried,
        [first_req.account_id.clone().unwrap()]
    );
    assert!(pool.usage().exhausted_until(&first).unwrap().is_some());
    let sent = fake.last_request("/backend-api/codex/responses").unwrap();
    assert!(
        sent.header("originator").unwrap().starts_with("codex_"),
        "the CLI's own headers went upstream"
    );
    srv.stop().await.unwrap();
}
