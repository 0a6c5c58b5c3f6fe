//! `codexpool-fake`: runs a [`codexpool_testkit::FakeOpenAi`] from the command line for CI jobs,
//! CLI tests and benchmarks. Prints one JSON line with its URLs and account ids on stdout, then
//! serves until SIGINT/SIGTERM, or until its stdin reaches EOF when stdin is a pipe (so a parent
//! that dies takes the fake with it).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use codexpool_testkit::{FakeAccount, FakeOpenAi};
use serde_json::json;

/// A local fake of auth.openai.com, chatgpt.com usage, the Codex backend and the OpenAI API.
#[derive(Debug, Parser)]
#[command(name = "codexpool-fake", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Number of fake accounts (acct-1 … acct-N).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// Plan of the fake accounts.
    #[arg(long, default_value = "plus")]
    plan: String,
    /// Bench mode: pre-rendered answers on the hot endpoints, any bearer token accepted.
    #[arg(long)]
    instant: bool,
    /// Worker threads of the server runtime.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Write each account's Codex CLI auth.json to DIR/ACCOUNT_ID/auth.json (a CODEX_HOME).
    #[arg(long, value_name = "DIR")]
    auth_dir: Option<PathBuf>,
    /// API key of the plain OpenAI mode (/v1).
    #[arg(long, default_value = codexpool_testkit::DEFAULT_OPENAI_API_KEY)]
    openai_api_key: String,
    /// OAuth client id the auth endpoints require.
    #[arg(long, default_value = codexpool_testkit::DEFAULT_CLIENT_ID)]
    client_id: String,
    /// Keep running when stdin reaches EOF (by default a piped stdin's EOF stops the fake).
    #[arg(long)]
    ignore_stdin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codexpool-fake: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> std::io::Result<()> {
    // Signal handlers go in before the ready line: a parent may signal as soon as it reads it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = {
        let _context = runtime.enter();
        Stop::install(!args.ignore_stdin)?
    };
    let fake = FakeOpenAi::builder()
        .addr(args.addr)
        .instant(args.instant)
        .worker_threads(args.workers)
        .openai_api_key(args.openai_api_key)
        .client_id(args.client_id)
        .start()?;
    let mut ids = Vec::with_capacity(args.accounts);
    for i in 1..=args.accounts {
        let id = format!("acct-{i}");
        fake.add_account(FakeAccount::new(&id).plan(&args.plan));
        ids.push(id);
    }
    if let Some(dir) = &args.auth_dir {
        for id in &ids {
            let home = dir.join(id);
            std::fs::create_dir_all(&home)?;
            let text =
                serde_json::to_string_pretty(&fake.auth_json(id)).map_err(std::io::Error::other)?;
            std::fs::write(home.join("auth.json"), text)?;
        }
    }
    let line = json!({
        "url": fake.url(),
        "issuer": fake.issuer(),
        "usage_base_url": fake.usage_base_url(),
        "codex_base_url": fake.codex_base_url(),
        "openai_base_url": fake.openai_base_url(),
        "openai_api_key": fake.openai_api_key(),
        "client_id": fake.client_id(),
        "auth_dir": args.auth_dir,
        "accounts": ids,
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    runtime.block_on(stop.wait());
    fake.shutdown();
    Ok(())
}

/// What ends the fake: SIGINT, SIGTERM, or EOF on a piped stdin.
struct Stop {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    eof: tokio::sync::mpsc::Receiver<()>,
    /// Held so that `eof` fires only when the stdin watcher sends (never when stdin is not
    /// watched).
    _eof_tx: tokio::sync::mpsc::Sender<()>,
}

impl Stop {
    /// Registers the handlers (inside a runtime context).
    fn install(watch_stdin: bool) -> std::io::Result<Stop> {
        let (eof_tx, eof) = tokio::sync::mpsc::channel::<()>(1);
        if watch_stdin {
            let tx = eof_tx.clone();
            codexpool_testkit::on_stdin_eof(move || {
                let _ = tx.blocking_send(());
            });
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Stop {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                eof,
                _eof_tx: eof_tx,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Stop {
                eof,
                _eof_tx: eof_tx,
            })
        }
    }

    /// Resolves at the first of the stop conditions.
    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.eof.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.eof.recv() => {}
        }
    }
}
