//! `codexpool`: run the gateway and manage the pool (accounts, keys, usage, request log,
//! settings) from the command line.
//!
//! This binary is thin: clap types in [`args`], one function per command in [`commands`], all
//! printing in [`output`]. The work happens in `codexpool-core` and `codexpool-gateway`.
//!
//! Exit codes: 0 success (also when stdout was closed early, as by `| head`), 1 error (one line
//! plus a hint on stderr), 2 usage error.

mod args;
mod commands;
mod output;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use codexpool_core::Config;
use codexpool_core::config::Loaded;

use crate::args::{Cli, Command, ServeArgs};
use crate::output::{Output, Paint};

/// mimalloc: faster than glibc's malloc for the server, most of all where a buffer is freed on
/// another thread (see Cargo.toml). Only the binary chooses: the libraries leave the allocator to
/// their users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error with a hint for the person, raised by the commands themselves.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong (one line).
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Failure {
    /// An error with a hint.
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse().and_then(|c| c.check().map(|()| c)) {
        Ok(cli) => cli,
        Err(mut e) => {
            shorten_echoed_value(&mut e);
            // --help and --version exit 0, usage errors 2; clap prints either.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let out = Output::new(cli.json, cli.quiet);
    init_tracing(&cli, &out);
    match run(cli, out.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            report(&out, &e);
            ExitCode::FAILURE
        }
    }
}

/// A refused value is echoed in clap's error; a long one (a 10,000-character note) is cut to
/// its start, so the error stays one readable line.
fn shorten_echoed_value(e: &mut clap::Error) {
    use clap::error::{ContextKind, ContextValue};
    const SHOWN: usize = 40;
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue) else {
        return;
    };
    let chars = value.chars().count();
    if chars <= SHOWN + 20 {
        return;
    }
    let start: String = value.chars().take(SHOWN).collect();
    let short = format!("{start}… ({chars} characters)");
    e.insert(ContextKind::InvalidValue, ContextValue::String(short));
}

fn run(cli: Cli, out: Output) -> anyhow::Result<()> {
    let Loaded {
        mut config,
        mut invalid,
        ..
    } = match cli.command {
        // `config` lists the settings even past an env file it cannot parse (and exits 1).
        Command::Config => Config::load_env_listing(),
        _ => Config::load_env()?,
    };
    if let Some(db) = &cli.db {
        if matches!(cli.command, Command::Demo) {
            out.warn(format!(
                "--db {} is not used: the demo runs on a database of its own, removed when it \
                 ends",
                db.display()
            ));
        }
        config.set("DB_PATH", &db.to_string_lossy())?;
        invalid.retain(|e| e.setting != Some("DB_PATH"));
    }
    if let Command::Serve(ServeArgs { addr: Some(_) }) = &cli.command {
        invalid.retain(|e| e.setting != Some("SERVICE_ADDR"));
    }
    // `config` and a starting `serve` show the settings' warnings with their own output; the
    // demo runs on settings of its own.
    let warned_elsewhere = match cli.command {
        Command::Config | Command::Demo => true,
        Command::Serve(_) => invalid.is_empty(),
        _ => false,
    };
    if !warned_elsewhere {
        for w in &config.warnings {
            out.warn(w);
        }
    }
    // `config` lists invalid settings among the others, the demo does not read them; every
    // other command stops here.
    if !matches!(cli.command, Command::Config | Command::Demo)
        && let Some(e) = invalid.first()
    {
        return Err(e.clone().into());
    }
    // A server serves HTTP on threads of its own (`HTTP_WORKER_FACTOR`, `HTTP_WORKER_MIN`); this
    // runtime runs the commands and a server's background work (accepting, the batched writer,
    // polling), which one thread keeps up with.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("codexpool")
        .enable_all()
        .build()?;
    let ctx = commands::Ctx {
        config,
        invalid,
        out,
    };
    let result = runtime.block_on(commands::run(cli.command, ctx));
    // Blocking work still running (a read of stdin) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Logs go to stderr: warnings by default (info from the service for `serve`), `-v` debug,
/// `-vv` trace, `-q` errors only; `RUST_LOG` overrides.
fn init_tracing(cli: &Cli, out: &Output) {
    use tracing_subscriber::EnvFilter;
    let ours = "codexpool=LEVEL,codexpool_core=LEVEL,codexpool_gateway=LEVEL";
    let filter = if cli.quiet {
        "error".to_string()
    } else {
        match cli.verbose {
            0 if matches!(cli.command, Command::Serve(_)) => {
                format!("warn,{}", ours.replace("LEVEL", "info"))
            }
            0 => "warn".into(),
            1 => format!("info,{}", ours.replace("LEVEL", "debug")),
            _ => format!("debug,{}", ours.replace("LEVEL", "trace")),
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(out.stderr_color())
        .with_target(cli.verbose > 0)
        .try_init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `error: <one line>` and, when there is one, `hint: <what to do>`.
fn report(out: &Output, e: &anyhow::Error) {
    let message = one_line(e);
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{} {message}", out.paint_err("error:", Paint::Red));
    if let Some(h) = hint(e) {
        let _ = writeln!(err, "{} {h}", out.paint_err("hint:", Paint::Cyan));
    }
}

/// The error and its causes on one line. Causes whose text the message already holds are
/// left out (several error types print their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        // SQLite's errors say again, after their code, what the message above them said.
        let said = part
            .split_once(": ")
            .filter(|(code, _)| code.starts_with("Error code "))
            .map_or(part.as_str(), |(_, rest)| rest);
        if text.contains(said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    // Errors quote what others wrote (paths, labels, another program's table names): no
    // control character reaches the terminal.
    output::visible(&text.replace(['\n', '\r'], " ")).into_owned()
}

/// What to do about an error, when we know.
fn hint(e: &anyhow::Error) -> Option<String> {
    use codexpool_core::Error as E;
    use codexpool_core::store::StoreError;
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.hint.clone();
        }
        if let Some(c) = cause.downcast_ref::<codexpool_core::config::ConfigError>() {
            return Some(if c.var == codexpool_core::config::ENV_FILE {
                config_fix(c)
            } else {
                format!(
                    "{}; `codexpool config` lists every setting with its default",
                    config_fix(c)
                )
            });
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return store_hint(s);
        }
        if let Some(s) = cause.downcast_ref::<codexpool_gateway::ServerError>() {
            return match s {
                codexpool_gateway::ServerError::Bind { source, .. } => {
                    Some(commands::serve::bind_hint(source))
                }
                // Its source says why.
                codexpool_gateway::ServerError::ReadOnly { .. } => continue,
                _ => None,
            };
        }
        if let Some(e) = cause.downcast_ref::<E>() {
            return match e {
                E::NotFound {
                    what: "account", ..
                } => Some("`codexpool account list` shows the accounts and their ids".into()),
                E::NotFound { what: "key", .. } => {
                    Some("`codexpool key list` shows the keys and their ids".into())
                }
                E::Ambiguous { by: "id", .. } => Some("type more characters of the id".into()),
                E::Ambiguous { what, .. } => Some(format!(
                    "use one of the ids instead; `codexpool {what} list` shows them"
                )),
                E::Store(s) => store_hint(s),
                // Refused for the pair: said in the flags' words.
                E::InvalidInput { field, .. } if field == "allowed_models" => Some(
                    "a key's --model must be one of its --allow-model models (or allow any: \
                     --clear-allowed-models on `key update`)"
                        .into(),
                ),
                E::Io { .. } => Some("check the path and its permissions".into()),
                _ => None,
            };
        }
    }
    None
}

/// What to do about an invalid setting: where to fix it.
pub fn config_fix(c: &codexpool_core::config::ConfigError) -> String {
    if c.var == codexpool_core::config::ENV_FILE {
        return "fix the syntax of that env file (NAME=value lines) or remove it".into();
    }
    match &c.file {
        Some(path) => format!("fix or remove {} in {}", c.var, path.display()),
        None => format!("fix or unset {}", c.var),
    }
}

/// Whether the file is there but this user may not open it for reading and writing.
fn refused_access(path: &std::path::Path) -> bool {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path);
    matches!(opened, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

fn store_hint(s: &codexpool_core::store::StoreError) -> Option<String> {
    use codexpool_core::store::StoreError;
    match s {
        StoreError::Open { message, .. } if message.contains("is not a database") => Some(
            "that file is no codexpool database: pass --db PATH or set CODEXPOOL_DB_PATH to the \
             database (or to a new file)"
                .into(),
        ),
        StoreError::Open { message, .. } if message.contains("is a folder") => Some(
            "pass --db PATH or set CODEXPOOL_DB_PATH to the database file (or to a new file)"
                .into(),
        ),
        StoreError::Foreign { .. } => Some(
            "pass --db PATH or set CODEXPOOL_DB_PATH to the codexpool database (or to a new file)"
                .into(),
        ),
        _ if s.to_string().contains("malformed") => Some(
            "the database file is damaged: restore it from a copy, or point --db at another \
             file and import the accounts again (`account import` of an export or auth.json)"
                .into(),
        ),
        StoreError::Open { path, .. } if refused_access(std::path::Path::new(path)) => Some(
            "this user may not read and write that file: run as its owner, or pass --db PATH \
             or set CODEXPOOL_DB_PATH to a database of this user's"
                .into(),
        ),
        StoreError::Open { .. } => Some(
            "pass --db PATH or set CODEXPOOL_DB_PATH to a file in a directory you can write".into(),
        ),
        StoreError::NewerSchema { .. } => None,
        _ if s.to_string().contains("database is locked") => Some(
            "another process held the database's write lock for longer than the wait (an open \
             sqlite3 shell or a backup tool in a transaction): end it and run again"
                .into(),
        ),
        _ if s.to_string().contains("readonly database") => Some(
            "run as the user who owns the database and its folder, or give this user write \
             access to both (SQLite writes files beside the database too)"
                .into(),
        ),
        _ => Some("run again with -v for details".into()),
    }
}
