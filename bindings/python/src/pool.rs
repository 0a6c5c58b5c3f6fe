//! `codexpool.Pool`: accounts, keys, usage and the request log over one store, opened with
//! settings; a thin handle on core's `Pool` (an `Arc` inside, shared with servers).
//!
//! A pool lives until the last Python reference (and every server started on it) is gone; its
//! background writer and change watcher run on the module's runtime until then. `flush()` (or
//! leaving a `with` block) writes what is queued, and so does the interpreter's exit for the
//! pools still open ([`flush_open_pools`]). Warnings about the settings are issued as
//! `CodexPoolWarning`s when a pool opens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use codexpool_core::store::MemoryStore;
use codexpool_core::{Config, Pool as CorePool, WeakPool};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::accounts::AccountPool;
use crate::errors::{OrRaise, invalid, warn_all};
use crate::keys::KeyStore;
use crate::record::quote;
use crate::request_log::RequestLog;
use crate::runtime::{AtExit, Home, HomeExt};
use crate::usage::UsageTracker;

/// A pool of ChatGPT (Codex) sign-ins, platform keys and usage over one database.
#[pyclass(frozen, module = "codexpool")]
pub struct Pool {
    pub(crate) inner: CorePool,
    /// The process it was opened in.
    pub(crate) home: Home,
}

/// The settings from the environment (and env file), then `settings`, then `db_path`: a path
/// given as the argument wins over a `DB_PATH` keyword (as in codexpool_ffi).
fn config(
    py: Python<'_>,
    db_path: Option<PathBuf>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<Config> {
    let mut c = Config::from_env().or_raise(py)?;
    for (k, v) in settings.into_iter().flat_map(|d| d.iter()) {
        let name: String = k.extract()?;
        if v.is_none() {
            continue;
        }
        let value: String = if v.is_instance_of::<PyBool>() {
            if v.extract::<bool>()? {
                "true"
            } else {
                "false"
            }
            .to_string()
        } else if v.is_instance_of::<PyFloat>() {
            match whole_number(v.extract()?) {
                Some(n) => n.to_string(),
                None => v.str()?.to_string(),
            }
        } else if v.is_instance_of::<PyString>() || v.is_instance_of::<PyInt>() {
            v.str()?.to_string()
        } else if let Ok(p) = v.extract::<PathBuf>() {
            p.to_string_lossy().into_owned()
        } else {
            return Err(invalid(
                py,
                &name,
                format!(
                    "expected a str, int, float, bool or path, not {}",
                    v.get_type().name()?
                ),
            ));
        };
        c.set(&name, &value).or_raise(py)?;
    }
    if let Some(p) = db_path {
        c.set_db_path(p).or_raise(py)?;
    }
    Ok(c)
}

/// A float that is a whole number, as an integer: `600.0` is `600` to Python, and every number
/// setting is a whole number. Others are given to the setting as Python writes them, for it to
/// refuse as not a whole number.
fn whole_number(f: f64) -> Option<i64> {
    // Within ±2^53 every whole float is exactly an i64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(f as i64)
}

/// The pools opened in this process that may still be open, for [`flush_open_pools`].
static OPENED: AtExit<WeakPool> = AtExit::new();

/// Longest an exiting interpreter waits for one pool's flush.
const EXIT_FLUSH: Duration = Duration::from_secs(10);

/// Registered with `atexit` when the module loads: stops the servers still running (see
/// [`crate::server::stop_running_servers`]), then writes what the pools still open have queued
/// (last-used times, usage readings, request-log rows), so a script that ends without `stop()`,
/// `flush()` or a `with` block loses none of it. Every pool is flushed, each waited for at most
/// 10 s (a Ctrl-C stops the waiting); what failed is issued as a warning.
#[pyfunction]
pub(crate) fn flush_open_pools(py: Python<'_>) {
    let mut problems = crate::server::stop_running_servers(py);
    let open: Vec<CorePool> = OPENED
        .take_here()
        .iter()
        .filter_map(WeakPool::upgrade)
        .collect();
    for pool in open {
        let path = match pool.store().database_file() {
            Some(file) => file.display().to_string(),
            None => "in memory".to_owned(),
        };
        let flushed = Home::here().run(py, async move {
            tokio::time::timeout(EXIT_FLUSH, pool.flush()).await
        });
        let problem = match flushed {
            Ok(Ok(Ok(()))) => continue,
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("still writing after {} s", EXIT_FLUSH.as_secs()),
            Err(e) => e.to_string(),
        };
        problems.push(format!(
            "a pool ({path}) was not flushed at exit: {problem}"
        ));
    }
    // An error of the warning itself (warnings turned into errors) has nowhere to go now.
    let _ = warn_all(py, problems.iter().map(String::as_str));
}

/// The opened pool, after issuing its settings' warnings.
fn opened(py: Python<'_>, inner: CorePool) -> PyResult<Pool> {
    warn_all(py, inner.config().warnings.iter().map(String::as_str))?;
    OPENED.add(inner.downgrade(), |weak| weak.upgrade().is_some());
    Ok(Pool {
        inner,
        home: Home::here(),
    })
}

#[pymethods]
impl Pool {
    /// Opens (creating on first use) the SQLite pool at `db_path` (default: `DB_PATH`, else the
    /// platform data dir; a leading `~` is the home directory, the rest is taken as given, quotes
    /// included; an empty path raises `InvalidInput`). Settings come from the environment and
    /// env file, overridden by `settings` given as keywords named like the variables
    /// (`route_strategy="headroom"`, `usage_base_url=…`, a number as an int or a whole float);
    /// a bad value raises `InvalidInput` naming the variable, and a `db_path` argument wins
    /// over a `DB_PATH` keyword. Warnings about the settings (e.g. a poll interval raised to
    /// its minimum) are issued as `CodexPoolWarning`s.
    #[staticmethod]
    #[pyo3(signature = (db_path=None, **settings))]
    fn open(
        py: Python<'_>,
        db_path: Option<PathBuf>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Pool> {
        let c = config(py, db_path, settings)?;
        let inner = Home::here().run(py, CorePool::open(c))?.or_raise(py)?;
        opened(py, inner)
    }

    /// An empty pool kept in memory only (settings as for `open`; a server of it writes no
    /// file: its RPC token is random, and the database at `DB_PATH`, if any, is not its:
    /// `db_path` is `None`).
    #[staticmethod]
    #[pyo3(signature = (**settings))]
    fn in_memory(py: Python<'_>, settings: Option<&Bound<'_, PyDict>>) -> PyResult<Pool> {
        let c = config(py, None, settings)?;
        let open = CorePool::builder(c)
            .store(Arc::new(MemoryStore::new()))
            .open();
        let inner = Home::here().run(py, open)?.or_raise(py)?;
        opened(py, inner)
    }

    /// The accounts.
    #[getter]
    fn accounts(&self) -> AccountPool {
        AccountPool::new(&self.inner, self.home)
    }

    /// The platform keys.
    #[getter]
    fn keys(&self) -> KeyStore {
        KeyStore::new(&self.inner, self.home)
    }

    /// Usage windows and the token ledger.
    #[getter]
    fn usage(&self) -> UsageTracker {
        UsageTracker::new(&self.inner, self.home)
    }

    /// The request log.
    #[getter]
    fn request_log(&self) -> RequestLog {
        RequestLog::new(&self.inner, self.home)
    }

    /// The database file, or `None` for a pool in memory (which uses no `DB_PATH`).
    #[getter]
    fn db_path(&self) -> Option<PathBuf> {
        self.inner.store().database_file().map(Path::to_path_buf)
    }

    /// Every setting's effective value (secrets shown as `*****`), by variable name.
    fn settings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for s in self.inner.config().describe() {
            d.set_item(s.name, s.value)?;
        }
        Ok(d)
    }

    /// Re-reads accounts, keys and usage from the database (the pool also notices other
    /// processes' changes by itself within about a second).
    fn reload(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.clone();
        self.home
            .run(py, async move { inner.reload().await })?
            .or_raise(py)
    }

    /// Writes everything queued (usage readings, ledger, request log, last-used times); raises
    /// `StoreError` saying how many when records queued since the last flush could not be
    /// written and were dropped (the database refused them through every retry).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.clone();
        self.home
            .run(py, async move { inner.flush().await })?
            .or_raise(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.flush(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        self.home.repr("Pool", || {
            format!(
                "db_path={}, accounts={}",
                self.inner
                    .store()
                    .database_file()
                    .map_or_else(|| "None".into(), |p| quote(&p.to_string_lossy())),
                self.inner.accounts().len()
            )
        })
    }
}
