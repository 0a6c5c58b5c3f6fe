//! `codexpool demo`: the whole product on one screen, without a ChatGPT account. It starts the
//! testkit's fake OpenAI in-process and a real gateway on 127.0.0.1:0 over a temporary
//! database (never the user's), adds two demo sign-ins and a key, sends a streaming and a
//! non-streaming chat request through the gateway as any OpenAI client would (the first
//! account runs out of quota on the second, so the failover shows), then prints the usage and
//! the request log and stops everything.
//!
//! With `--json`: `{"base_url", "answers": {"streaming", "non_streaming"}, "failover": bool,
//! "usage": [as `usage --json`], "requests": [as `logs --json`]}`.

use std::time::Duration;

use anyhow::Context as _;
use codexpool_core::keys::NewKey;
use codexpool_core::request_log::RequestLogQuery;
use codexpool_core::{AccountPatch, Config, Pool, RefreshScope};
use codexpool_gateway::Server;
use codexpool_testkit::{FakeAccount, FakeOpenAi, FakeUsage, FakeWindow, Reply};
use serde_json::{Value, json};

use super::runtime::Runtimes;
use super::{Ctx, logs, tokens, usage};
use crate::output::{Output, Paint};

const MODEL: &str = "gpt-5-codex";
const FIRST_PROMPT: &str = "Say hello to someone trying codexpool for the first time.";
const FIRST_ANSWER: &str = "Hello, and welcome! This answer was streamed word by word from a \
                            pooled ChatGPT account, through codexpool, to a plain OpenAI client.";
const SECOND_PROMPT: &str = "And once more, without streaming?";
const SECOND_ANSWER: &str = "Here you are: one complete answer, from whichever account still \
                             had quota left.";

/// The two demo sign-ins: fake account id, email, plan, 5-hour and weekly use.
const PEOPLE: [(&str, &str, &str, f64, f64); 2] = [
    ("demo-ada", "ada@example.com", "plus", 62.0, 35.0),
    ("demo-grace", "grace@example.com", "pro", 8.0, 21.0),
];

/// `demo`.
pub async fn demo(ctx: &Ctx) -> anyhow::Result<()> {
    let out = &ctx.out;
    let dir = tempfile::Builder::new()
        .prefix("codexpool-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo database")?;
    let fake = tokio::task::spawn_blocking(FakeOpenAi::start)
        .await?
        .context("cannot start the fake OpenAI")?;
    let result = run(out, &fake, dir.path()).await;
    // The fake joins its threads when dropped: not on a runtime worker.
    let _ = tokio::task::spawn_blocking(move || drop(fake)).await;
    result
}

async fn run(out: &Output, fake: &FakeOpenAi, dir: &std::path::Path) -> anyhow::Result<()> {
    let say = |text: String| -> anyhow::Result<()> {
        if !out.json {
            out.line(text)?;
        }
        Ok(())
    };
    say(format!(
        "{} runs a fake OpenAI on this machine and a real gateway over a throw-away database;\n\
         nothing here touches your accounts or settings.\n",
        out.paint("codexpool demo", Paint::Bold)
    ))?;

    // 1. The fake world: two ChatGPT sign-ins with some usage, and the answers they will give.
    for (id, email, plan, five, week) in PEOPLE {
        fake.add_account(FakeAccount::new(id).email(email).plan(plan));
        fake.set_usage(
            id,
            FakeUsage::new(five, week)
                .primary(FakeWindow::five_hour(five).resets_in(Duration::from_secs(8_000)))
                .secondary(FakeWindow::weekly(week).resets_in(Duration::from_secs(280_000))),
        );
    }
    fake.push_reply(
        PEOPLE[0].0,
        Reply::text(FIRST_ANSWER).paced(Duration::from_millis(25)),
    );
    fake.push_reply(
        PEOPLE[0].0,
        Reply::UsageLimit429 {
            resets_in_secs: 8_000,
        },
    );
    fake.push_reply(PEOPLE[1].0, Reply::text(SECOND_ANSWER));

    // 2. A pool over a temporary database, set up as a person would with the CLI.
    let mut config = Config::default();
    for (name, value) in [
        (
            "DB_PATH",
            dir.join("demo.db").to_string_lossy().into_owned(),
        ),
        ("ISSUER", fake.issuer()),
        ("USAGE_BASE_URL", fake.usage_base_url()),
        ("UPSTREAM_BASE_URL", fake.codex_base_url()),
        ("DISABLE_POLLING", "1".into()),
        ("ROUTE_STRATEGY", "ordered".into()),
    ] {
        config.set(name, &value)?;
    }
    let pool = Pool::open(config).await?;
    say(format!(
        "{} Imported two ChatGPT sign-ins (Codex CLI auth.json files from the fake):",
        step(out, 1)
    ))?;
    for (sort, (id, ..)) in PEOPLE.iter().enumerate() {
        let doc = serde_json::to_vec(&fake.auth_json(id))?;
        let report = pool
            .accounts()
            .import_bytes(&format!("{id}/auth.json"), &doc)
            .await;
        let account_id = report
            .results
            .first()
            .and_then(|r| r.account_id.clone())
            .context("the demo account was not imported")?;
        let a = pool
            .accounts()
            .update(&account_id, AccountPatch::default().sort(sort as i64))
            .await?;
        say(format!(
            "     {:<18} {:<5} sort {}",
            a.label,
            a.plan_type.as_deref().unwrap_or(""),
            a.sort
        ))?;
    }
    pool.usage().refresh(RefreshScope::All, |_| {}).await?;
    let key = pool.keys().create(NewKey::named("demo")).await?;
    say(format!(
        "{} Created an API key for clients: {}",
        step(out, 2),
        key.key.hint
    ))?;

    // 3. The gateway, on a free port.
    let running = Server::new(pool.clone())
        .addr(([127, 0, 0, 1], 0).into())
        .background_tasks(false)
        .start()
        .await?;
    let base_url = running.base_url();
    say(format!(
        "{} Started the gateway: base_url {}\n",
        step(out, 3),
        out.paint(&base_url, Paint::Cyan)
    ))?;

    // The gateway is on loopback: a proxy from the environment must not carry this client.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()?;
    let secret = key.secret.expose().to_string();
    let exchange = async {
        say(format!(
            "{} POST /v1/chat/completions  (stream: true)",
            out.paint("→", Paint::Cyan)
        ))?;
        say(format!(
            "  {} {FIRST_PROMPT}",
            out.paint("you:", Paint::Dim)
        ))?;
        let streamed = stream_chat(out, &client, &base_url, &secret, FIRST_PROMPT).await?;
        say(format!(
            "\n{} POST /v1/chat/completions  (stream: false)",
            out.paint("→", Paint::Cyan)
        ))?;
        say(format!(
            "  {} {SECOND_PROMPT}",
            out.paint("you:", Paint::Dim)
        ))?;
        let answer = chat(&client, &base_url, &secret, SECOND_PROMPT).await?;
        say(format!(
            "  {} {answer}",
            out.paint("assistant:", Paint::Green)
        ))?;
        anyhow::Ok((streamed, answer))
    }
    .await;
    // Written rows and readings are flushed by the stop, whatever happened above.
    let stopped = running.stop().await;
    let (streamed, answer) = exchange?;
    stopped?;

    let mut rows = pool
        .request_log()
        .list(&RequestLogQuery::latest(10))
        .await?;
    rows.reverse();
    let failover = rows.iter().any(|r| r.accounts_tried.len() > 1);
    if out.json {
        let requests = serde_json::to_value(&rows)?;
        out.json(&json!({
            "base_url": base_url,
            "answers": {"streaming": streamed, "non_streaming": answer},
            "failover": failover,
            "usage": serde_json::to_value(usage::views(&pool, &Runtimes::local(), None))?,
            "requests": requests,
        }))?;
        return Ok(());
    }
    if out.quiet {
        // Everything below narrates the run; `-q demo` is a silent check that it works.
        return Ok(());
    }
    if let Some(r) = rows.iter().find(|r| r.accounts_tried.len() > 1) {
        let label = |id: &String| {
            pool.accounts()
                .get(id)
                .map(|a| a.label)
                .unwrap_or_else(|_| id.clone())
        };
        let tried: Vec<String> = r.accounts_tried.iter().map(label).collect();
        out.line(format!(
            "  {} {} had hit its usage limit, so the gateway moved the request to {} before the \
             client saw a byte.",
            out.paint("↪", Paint::Yellow),
            tried.first().map_or("", String::as_str),
            tried.last().map_or("", String::as_str),
        ))?;
    }

    out.line(format!(
        "\n{}",
        out.paint("Usage (codexpool usage):", Paint::Bold)
    ))?;
    usage::print(out, &pool, &Runtimes::local(), None)?;
    out.line(format!(
        "\n{}",
        out.paint("Request log (codexpool logs):", Paint::Bold)
    ))?;
    logs::print_recent(out, &pool, 10).await?;
    out.line(format!(
        "\n{}",
        out.paint("Tokens per key (codexpool tokens):", Paint::Bold)
    ))?;
    tokens::print_per_key(out, &pool).await?;
    let serve_at = codexpool_gateway::admin::local_url(Config::default().service_addr);
    out.line(format!(
        "\n{}\n\
         \n  codexpool account login             sign in a ChatGPT account (or: account import ~/.codex/auth.json)\
         \n  codexpool key create --name laptop  an API key for your clients\
         \n  codexpool serve                     run the gateway at {serve_at}/v1",
        out.paint("That is the whole loop. To do it for real:", Paint::Bold),
    ))?;
    drop(pool);
    Ok(())
}

fn step(out: &Output, n: u8) -> String {
    out.paint(format!("{n}."), Paint::Bold)
}

fn body(prompt: &str, stream: bool) -> Value {
    json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

async fn send(
    client: &reqwest::Client,
    base_url: &str,
    secret: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    let resp = client
        .post(format!("{base_url}/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .context("the gateway did not answer")?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!("the gateway answered {status}: {text}");
    }
    Ok(resp)
}

/// A streaming chat request, printing the answer as it arrives.
async fn stream_chat(
    out: &Output,
    client: &reqwest::Client,
    base_url: &str,
    secret: &str,
    prompt: &str,
) -> anyhow::Result<String> {
    let mut resp = send(client, base_url, secret, &body(prompt, true)).await?;
    if !out.json {
        out.raw(&format!("  {} ", out.paint("assistant:", Paint::Green)))?;
    }
    let mut text = String::new();
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).context("the gateway sent bad JSON")?;
            if let Some(err) = v.get("error") {
                anyhow::bail!("the stream failed: {err}");
            }
            if let Some(delta) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(delta);
                if !out.json {
                    out.raw(delta)?;
                }
            }
        }
    }
    if !out.json {
        out.raw("\n")?;
    }
    Ok(text)
}

/// A non-streaming chat request; returns the answer.
async fn chat(
    client: &reqwest::Client,
    base_url: &str,
    secret: &str,
    prompt: &str,
) -> anyhow::Result<String> {
    let v: Value = send(client, base_url, secret, &body(prompt, false))
        .await?
        .json()
        .await
        .context("the gateway sent bad JSON")?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .context("the answer has no message")
}
