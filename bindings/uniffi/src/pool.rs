//! `Pool`: opens a database with settings and hands out the accounts, keys, usage and request
//! log handles, over core's [`codexpool_core::Pool`].

use std::collections::HashMap;
use std::sync::Arc;

use codexpool_core::Config;

use crate::CodexPoolError;
use crate::account::AccountPool;
use crate::keys::KeyStore;
use crate::request_log::RequestLog;
use crate::runtime::{Home, HomeExt};
use crate::usage::UsageTracker;

/// One setting's effective value.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Setting {
    /// The name without prefix, e.g. `SERVICE_ADDR`.
    pub name: String,
    /// The effective value (secrets shown as `*****`).
    pub value: String,
    /// Where it came from: `default`, `env CODEXPOOL_…`, an env file, or `flag` (given to
    /// `open`).
    pub source: String,
    /// The documented default.
    pub default_value: String,
    /// What it does.
    pub help: String,
}

/// A pool of accounts, keys and usage over one SQLite database. Several processes may open the
/// same database; each sees the others' changes within about a second.
#[derive(uniffi::Object)]
pub struct Pool {
    pub(crate) inner: codexpool_core::Pool,
    pub(crate) home: Home,
}

#[uniffi::export]
impl Pool {
    /// Opens (creating if needed) the database at `db_path` (default: the `DB_PATH` setting; a
    /// leading `~` is the home directory, the rest is taken as given, quotes included; an empty
    /// path raises `InvalidInput`).
    ///
    /// Settings are read as `codexpool` reads them — the process environment
    /// (`CODEXPOOL_<NAME>`), then an env file in the current directory or beside the executable
    /// (for Python, the interpreter's), then the defaults — and
    /// `settings` (names with or without the `CODEXPOOL_` prefix, any case) override them. An
    /// unknown or invalid setting raises `InvalidInput` naming it.
    #[uniffi::constructor(default(db_path = None, settings))]
    pub async fn open(
        db_path: Option<String>,
        settings: HashMap<String, String>,
    ) -> Result<Arc<Self>, CodexPoolError> {
        let home = Home::here();
        home.run(async move {
            // Here, on the runtime: reading the env file is blocking I/O.
            let mut config = Config::from_env()?;
            // Sorted, so that the first bad setting reported is the same on every run.
            let mut settings: Vec<_> = settings.into_iter().collect();
            settings.sort();
            for (name, value) in &settings {
                config.set(name, value)?;
            }
            if let Some(path) = db_path {
                config.set_db_path(path)?;
            }
            let inner = codexpool_core::Pool::open(config).await?;
            Ok(Arc::new(Self { inner, home }))
        })
        .await
    }

    /// The accounts.
    pub fn accounts(&self) -> Arc<AccountPool> {
        Arc::new(AccountPool {
            inner: self.inner.clone(),
            home: self.home,
        })
    }

    /// The platform keys.
    pub fn keys(&self) -> Arc<KeyStore> {
        Arc::new(KeyStore {
            inner: self.inner.clone(),
            home: self.home,
        })
    }

    /// Usage windows and the token ledger.
    pub fn usage(&self) -> Arc<UsageTracker> {
        Arc::new(UsageTracker {
            inner: self.inner.clone(),
            home: self.home,
        })
    }

    /// The request log.
    pub fn request_log(&self) -> Arc<RequestLog> {
        Arc::new(RequestLog {
            inner: self.inner.clone(),
            home: self.home,
        })
    }

    /// The database file.
    pub fn db_path(&self) -> String {
        self.inner.config().db_path.display().to_string()
    }

    /// Every setting with its effective value and where it came from.
    pub fn settings(&self) -> Vec<Setting> {
        self.inner
            .config()
            .describe()
            .into_iter()
            .map(|s| Setting {
                name: s.name.into(),
                value: s.value,
                source: s.source,
                default_value: s.default.into(),
                help: s.help.into(),
            })
            .collect()
    }

    /// Warnings about the settings (e.g. a poll interval raised to its minimum).
    pub fn warnings(&self) -> Vec<String> {
        self.inner.config().warnings.clone()
    }

    /// Re-reads accounts, keys and usage from the database now (the pool also does this by
    /// itself when another process writes).
    pub async fn reload(&self) -> Result<(), CodexPoolError> {
        let pool = self.inner.clone();
        self.home.run(async move { Ok(pool.reload().await?) }).await
    }

    /// Writes everything queued (usage readings, ledger, request log, last-used times).
    pub async fn flush(&self) -> Result<(), CodexPoolError> {
        let pool = self.inner.clone();
        self.home.run(async move { Ok(pool.flush().await?) }).await
    }
}
