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

use std::sync::Arc;
use std::time::Duration;

use codexpool_core::config::ConfigError;
use codexpool_core::store::MemoryStore;
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
    ///
    /// A database that is not there yet is created for a command that stores something; one
    /// that only reads shows the empty pool it would find without making a file (a mistyped
    /// `--db` leaves nothing behind). Either way the note says so: a mistyped `--db` would
    /// otherwise show an empty pool without a word.
    pub async fn open_pool(&self, reads_only: bool) -> anyhow::Result<Pool> {
        let path = &self.config.db_path;
        // Only a database that is surely not there is new: one in a folder this user may not
        // enter is an error (reading on would show it empty), not a pool with nothing stored.
        // A command that stores something says why it cannot as it opens the database.
        let meta = std::fs::metadata(path);
        let new = match &meta {
            _ if not_there(&meta) => true,
            Ok(_) => false,
            Err(_) if !reads_only => true,
            Err(e) => {
                return Err(Failure::new(
                    format!("cannot look for the database at {}: {e}", path.display()),
                    "pass --db PATH or set CODEXPOOL_DB_PATH to a database you can read",
                )
                .into());
            }
        };
        let mut pool = Pool::builder(self.config.clone()).watch_interval(Duration::ZERO);
        if new && reads_only {
            pool = pool.store(Arc::new(MemoryStore::new()));
        }
        let pool = pool.open().await?;
        if new {
            let empty_file = meta.is_ok();
            self.out.note(if reads_only && empty_file {
                format!(
                    "{} is an empty file: nothing is stored yet.",
                    path.display()
                )
            } else if reads_only {
                format!("No database at {} yet: nothing is stored.", path.display())
            } else {
                format!("Created a new database at {}.", path.display())
            });
        }
        Ok(pool)
    }

    /// Whether an import of `source` into a database that is not there yet would store
    /// nothing (no account file in it, or none with an account): tried in memory first, so
    /// that such an import makes no database. A source that cannot be read is its error.
    async fn import_stores_nothing(&self, source: &account::ImportSource) -> anyhow::Result<bool> {
        if !not_there(&std::fs::metadata(&self.config.db_path)) {
            return Ok(false);
        }
        let probe = Pool::builder(self.config.clone())
            .store(Arc::new(MemoryStore::new()))
            .watch_interval(Duration::ZERO)
            .open()
            .await?;
        let report = source.import_into(&probe).await?;
        Ok(report.imported() + report.updated() == 0)
    }
}

/// Whether a database file's metadata says it is surely not there yet: no file, or an empty
/// one (SQLite would make one of it).
fn not_there(meta: &std::io::Result<std::fs::Metadata>) -> bool {
    match meta {
        Ok(m) => m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Runs a command.
pub async fn run(command: Command, ctx: Ctx) -> anyhow::Result<()> {
    match command {
        Command::Serve(a) => serve::serve(&ctx, a).await,
        Command::Demo => demo::demo(&ctx).await,
        Command::Config => config::config(&ctx),
        command => {
            let changes = changes_the_pool(&command);
            // `logs --follow` waits for what a server will write there. A command that changes
            // a stored record finds none in a database that is not there, as a read would,
            // without making one; so does an import that would store nothing.
            let import = match &command {
                Command::Account(AccountCommand::Import { source, .. }) => {
                    Some(account::ImportSource::read(&ctx, source).await?)
                }
                _ => None,
            };
            let stores_nothing = match &import {
                Some(source) => ctx.import_stores_nothing(source).await?,
                None => false,
            };
            let reads_only = (!changes || changes_a_stored_record(&command) || stores_nothing)
                && !matches!(&command, Command::Logs(l) if l.follow);
            let pool = ctx.open_pool(reads_only).await?;
            // `account login` and `logs --follow` end on a signal themselves.
            let own_signals = matches!(
                command,
                Command::Account(AccountCommand::Login(_)) | Command::Logs(_)
            );
            let mut stop = (!own_signals).then(|| Stop::watch(&ctx.out)).transpose()?;
            let result = match &mut stop {
                None => run_on_pool(command, &ctx, &pool, import).await,
                Some(stop) => tokio::select! {
                    r = run_on_pool(command, &ctx, &pool, import) => r,
                    signal = stop.first() => Err(anyhow::anyhow!("stopped by {signal}")),
                },
            };
            // Usage readings and last-used times are written in batches, and a token refresh
            // the command started must be saved: all of it before the process ends.
            let flushed = pool.flush().await;
            // Also after a failure: what the command wrote before it (the other sign-ins of
            // an import) holds as well.
            if changes {
                runtime::tell_servers(&ctx).await;
            }
            result?;
            Ok(flushed?)
        }
    }
}

/// Whether a command changes an account, key or sign-in that must already be stored.
fn changes_a_stored_record(command: &Command) -> bool {
    match command {
        Command::Key(k) => !matches!(k, KeyCommand::Create(_) | KeyCommand::List),
        Command::Account(a) => matches!(
            a,
            AccountCommand::Complete { .. }
                | AccountCommand::Update(_)
                | AccountCommand::Enable(_)
                | AccountCommand::Disable(_)
                | AccountCommand::Remove(_)
        ),
        _ => false,
    }
}

/// Whether a command writes accounts or keys: the servers on the database are told at once
/// (they would see it within half a second; a script that uses a key it just made would not
/// wait).
fn changes_the_pool(command: &Command) -> bool {
    match command {
        Command::Key(k) => !matches!(k, KeyCommand::List),
        Command::Account(a) => {
            !matches!(a, AccountCommand::List(_) | AccountCommand::Export { .. })
        }
        _ => false,
    }
}

/// Ctrl-C and SIGTERM during a one-shot command, heard on a task of their own (so also while
/// the command holds its thread, writing to a full pipe): the first stops the command but not a
/// token refresh it started, which [`Pool::flush`] waits for (the issuer may have rotated the
/// refresh token already, and only the one it answered with signs in again: a process killed at
/// once would lose the sign-in); a second one ends the process at once.
struct Stop {
    first: tokio::sync::oneshot::Receiver<&'static str>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Stop {
    fn watch(out: &Output) -> std::io::Result<Self> {
        let mut signals = Signals::new()?;
        let out = out.clone();
        let (tx, first) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(async move {
            let signal = signals.recv().await;
            out.note(format!(
                "{signal}: stopping once what is under way is saved (again to quit now)."
            ));
            let _ = tx.send(signal);
            let signal = signals.recv().await;
            let stopped = Failure::new(
                format!("stopped by {signal} before what was under way was saved"),
                "if an account asks to sign in again, run `codexpool account login`",
            );
            crate::report(&out, &stopped.into());
            std::process::exit(1);
        });
        Ok(Self { first, watcher })
    }

    /// The first signal's name.
    async fn first(&mut self) -> &'static str {
        match (&mut self.first).await {
            Ok(signal) => signal,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Runs a command on its pool; an import's source is read already (`import`).
async fn run_on_pool(
    command: Command,
    ctx: &Ctx,
    pool: &Pool,
    import: Option<account::ImportSource>,
) -> anyhow::Result<()> {
    match command {
        Command::Account(a) => match a {
            AccountCommand::Login(a) => account::login(ctx, pool, a).await,
            AccountCommand::Complete { redirect_url } => {
                account::complete(ctx, pool, &redirect_url.0).await
            }
            AccountCommand::Import { source, take_over } => {
                let source = match import {
                    Some(read) => read,
                    None => account::ImportSource::read(ctx, &source).await?,
                };
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
