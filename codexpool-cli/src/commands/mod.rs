//! One module per command; this one dispatches and holds what every command shares (the
//! settings, the output, opening the pool).
//!
//! Commands open the same SQLite file as a running `codexpool serve`, through `Pool::open`,
//! which is safe across processes: the server notices their changes within a second.

mod account;
mod config;
mod demo;
mod key;
mod logs;
mod runtime;
pub mod serve;
mod tokens;
mod usage;

use std::time::Duration;

use codexpool_core::config::ConfigError;
use codexpool_core::{Config, Pool};

use crate::Failure;
use crate::args::{AccountCommand, Command, KeyCommand};
use crate::output::Output;

/// What every command gets.
pub struct Ctx {
    /// Effective settings (environment, env file, flags).
    pub config: Config,
    /// Invalid settings (their defaults are in `config`): only `config` runs with any, to list
    /// them.
    pub invalid: Vec<ConfigError>,
    /// Where output goes.
    pub out: Output,
}

impl Ctx {
    /// Opens the pool for a one-shot command. No change watcher: the command reads what it
    /// needs right away, and `serve` is the process that must follow others' changes.
    /// A database that is not there yet is created, and the note says so (a mistyped `--db`
    /// would otherwise show an empty pool without a word).
    pub async fn open_pool(&self) -> anyhow::Result<Pool> {
        let path = &self.config.db_path;
        let new = !path.exists();
        let pool = Pool::builder(self.config.clone())
            .watch_interval(Duration::ZERO)
            .open()
            .await?;
        if new {
            self.out
                .note(format!("Created a new database at {}.", path.display()));
        }
        Ok(pool)
    }
}

/// Runs a command.
pub async fn run(command: Command, ctx: Ctx) -> anyhow::Result<()> {
    match command {
        Command::Serve(a) => serve::serve(&ctx, a).await,
        Command::Demo => demo::demo(&ctx).await,
        Command::Config => config::config(&ctx),
        // `account login` and `logs --follow` end on a signal themselves.
        command @ (Command::Account(AccountCommand::Login(_)) | Command::Logs(_)) => {
            let pool = ctx.open_pool().await?;
            let result = run_on_pool(command, &ctx, &pool).await;
            // Usage readings and last-used times are written in batches: write them before the
            // process ends.
            let flushed = pool.flush().await;
            result?;
            Ok(flushed?)
        }
        command => {
            let pool = ctx.open_pool().await?;
            stoppable(command, &ctx, &pool).await
        }
    }
}

/// Runs a command until it ends or a signal stops it, then writes what is queued. A token
/// refresh the command started goes on either way and is waited for: the issuer may have
/// rotated the refresh token already, and only the one it answered with signs in again (a
/// process killed at once would lose the sign-in). A second signal quits without waiting.
async fn stoppable(command: Command, ctx: &Ctx, pool: &Pool) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let result = tokio::select! {
        r = run_on_pool(command, ctx, pool) => r,
        signal = signals.recv() => {
            ctx.out.note(format!(
                "{signal}: stopping once what is under way is saved (again to quit now)."
            ));
            Err(anyhow::anyhow!("stopped by {signal}"))
        }
    };
    let flushed = tokio::select! {
        f = pool.flush() => f,
        signal = signals.recv() => {
            return Err(Failure::new(
                format!("stopped by {signal} before what was under way was saved"),
                "if an account asks to sign in again, run `codexpool account login`",
            )
            .into());
        }
    };
    result?;
    Ok(flushed?)
}

async fn run_on_pool(command: Command, ctx: &Ctx, pool: &Pool) -> anyhow::Result<()> {
    match command {
        Command::Account(a) => match a {
            AccountCommand::Login(a) => account::login(ctx, pool, a).await,
            AccountCommand::Complete { redirect_url } => {
                account::complete(ctx, pool, &redirect_url.0).await
            }
            AccountCommand::Import { source, take_over } => {
                account::import(ctx, pool, &source, take_over).await
            }
            AccountCommand::Export { output, filter } => {
                account::export(ctx, pool, output.as_deref(), &filter).await
            }
            AccountCommand::List(f) => account::list(ctx, pool, &f).await,
            AccountCommand::Update(a) => account::update(ctx, pool, a).await,
            AccountCommand::Enable(a) => account::enable(ctx, pool, &a.id).await,
            AccountCommand::Disable(a) => account::disable(ctx, pool, &a.id).await,
            AccountCommand::Remove(a) => account::remove(ctx, pool, &a.id).await,
        },
        Command::Key(k) => match k {
            KeyCommand::Create(a) => key::create(ctx, pool, a).await,
            KeyCommand::List => key::list(ctx, pool),
            KeyCommand::Update(a) => key::update(ctx, pool, a).await,
            KeyCommand::Enable(a) => key::enable(ctx, pool, &a.id).await,
            KeyCommand::Disable(a) => key::disable(ctx, pool, &a.id).await,
            KeyCommand::Delete(a) => key::delete(ctx, pool, &a.id).await,
        },
        Command::Usage(a) => usage::usage(ctx, pool, a).await,
        Command::Logs(a) => logs::logs(ctx, pool, a).await,
        Command::Tokens(a) => tokens::tokens(ctx, pool, a).await,
        Command::Serve(_) | Command::Demo | Command::Config => Ok(()),
    }
}

/// Ctrl-C and (on Unix) SIGTERM, listened for from creation on: make one before printing
/// anything that invites a signal, so that none arrives before the handlers are in place.
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
