//! `codexpool.serve(pool)`: the whole service (gateway, `/rpc`, `/auth/callback`, usage poller,
//! token refresher) on a socket, running on the module's runtime threads until `stop()`; over
//! the gateway's `Server` / `RunningServer`.

use std::path::PathBuf;

use codexpool_core::Secret;
use codexpool_core::config::MIN_RPC_TOKEN_CHARS;
use codexpool_gateway::{Server as CoreServer, SharedServer, WeakServer};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::args::{listen_addr, seconds};
use crate::errors::ServerError;
use crate::pool::Pool;
use crate::record::{py_bool, quote};
use crate::runtime::{AtExit, Home, HomeExt};

/// A running server. `stop()` (or leaving a `with` block) stops accepting, lets open streams
/// finish within the shutdown grace, writes what is queued and frees the port; stopping twice
/// does nothing.
#[pyclass(frozen, module = "codexpool")]
pub struct Server {
    /// Stopped as a task of its own: a caller interrupted while waiting (Ctrl-C in a `with`
    /// block's exit) does not cut the stop short, and a later or concurrent `stop()` waits for
    /// the same one (a failed stop raises in every caller that waited for it, then no more).
    server: SharedServer,
    home: Home,
    url: String,
    base_url: String,
    host: String,
    port: u16,
    rpc_token: Secret,
    rpc_token_file: Option<PathBuf>,
}

/// How often `Server.wait` looks whether a stop was asked for.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

fn server_error(e: codexpool_gateway::ServerError) -> PyErr {
    ServerError::new_err(e.to_string())
}

/// Starts the service over `pool` on `addr` (`IP:port`, or `host:port` as for the CLI's
/// `serve --addr`: `localhost` is 127.0.0.1; port 0 picks a free one) and returns once it
/// accepts connections. The admin RPC token is `rpc_token`, else `RPC_TOKEN`, else a random
/// one written to `<db dir>/rpc-token`. `background_tasks` runs the usage poller (which
/// still honours `DISABLE_POLLING`) and the token refresher.
#[pyfunction]
#[pyo3(signature = (pool, addr="127.0.0.1:0", *, rpc_token=None, background_tasks=true, shutdown_grace=30.0))]
pub(crate) fn serve(
    py: Python<'_>,
    pool: &Pool,
    addr: &str,
    rpc_token: Option<String>,
    background_tasks: bool,
    shutdown_grace: f64,
) -> PyResult<Server> {
    let mut server = CoreServer::new(pool.inner.clone())
        .addr(listen_addr(py, "addr", addr)?)
        .background_tasks(background_tasks)
        .shutdown_grace(seconds(py, "shutdown_grace", shutdown_grace)?);
    if let Some(t) = rpc_token {
        server = server.rpc_token(rpc_token_arg(py, &t)?);
    }
    let running = pool.home.run(py, server.start())?.map_err(server_error)?;
    let local = running.local_addr();
    let (url, base_url) = (running.url(), running.base_url());
    let rpc_token = running.rpc_token().clone();
    let rpc_token_file = running.rpc_token_file().map(PathBuf::from);
    let server = SharedServer::new(running);
    SERVING.add(server.downgrade(), |weak| {
        weak.upgrade().is_some_and(|s| s.is_running())
    });
    Ok(Server {
        url,
        base_url,
        host: local.ip().to_string(),
        port: local.port(),
        rpc_token,
        rpc_token_file,
        server,
        home: pool.home,
    })
}

/// The servers started in this process that may still run, for [`stop_running_servers`].
static SERVING: AtExit<WeakServer> = AtExit::new();

/// How long an exiting interpreter lets a server's open streams go on (then they end with
/// `server_stopped`), and how long it waits for the whole stop.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
const EXIT_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// At the interpreter's exit (before the pools are flushed): stops the servers a script left
/// running, open streams given [`EXIT_GRACE`], so that the requests under way get their
/// request-log rows and the servers' files are removed. Returns what failed.
pub(crate) fn stop_running_servers(py: Python<'_>) -> Vec<String> {
    let running: Vec<SharedServer> = SERVING
        .take_here()
        .iter()
        .filter_map(WeakServer::upgrade)
        .filter(SharedServer::is_running)
        .collect();
    let Ok(runtime) = crate::runtime::runtime() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for server in running {
        let stopped = server.stop_within(runtime.handle(), EXIT_GRACE);
        let waited = async move { tokio::time::timeout(EXIT_STOP, stopped).await };
        let problem = match Home::here().run(py, waited) {
            Ok(Ok(Ok(()))) => continue,
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("still stopping after {} s", EXIT_STOP.as_secs()),
            Err(e) => e.to_string(),
        };
        problems.push(format!("a server was not stopped at exit: {problem}"));
    }
    problems
}

/// `rpc_token=` as the `RPC_TOKEN` setting takes it: trimmed (clients' tokens are), not empty
/// (no client could present it), and a warning when short.
fn rpc_token_arg(py: Python<'_>, token: &str) -> PyResult<Secret> {
    let token = token.trim();
    if token.is_empty() {
        return Err(crate::errors::invalid(
            py,
            "rpc_token",
            "must not be empty (leave it out for a generated one)",
        ));
    }
    let len = token.chars().count();
    if len < MIN_RPC_TOKEN_CHARS {
        let warning = format!(
            "rpc_token is short ({len} characters): it opens every account's tokens to whoever \
             guesses it; use {MIN_RPC_TOKEN_CHARS} or more random characters, or leave it out \
             for a generated one"
        );
        crate::errors::warn_all(py, [warning.as_str()])?;
    }
    Ok(Secret::new(token))
}

impl Drop for Server {
    fn drop(&mut self) {
        // In a process forked from the one serving, the server is the parent's: dropping it
        // here would remove the parent's server file (the CLI could no longer find it).
        if !self.home.is_here() {
            self.server.forget();
        }
    }
}

#[pymethods]
impl Server {
    /// `http://host:port`.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }
    /// `http://host:port/v1`: the `base_url` for an OpenAI client.
    #[getter]
    fn base_url(&self) -> &str {
        &self.base_url
    }
    /// The bound host.
    #[getter]
    fn host(&self) -> &str {
        &self.host
    }
    /// The bound port.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }
    /// The admin `/rpc` bearer token.
    #[getter]
    fn rpc_token(&self) -> &str {
        self.rpc_token.expose()
    }
    /// Where the generated RPC token was written (`None` when it was given).
    #[getter]
    fn rpc_token_file(&self) -> Option<PathBuf> {
        self.rpc_token_file.clone()
    }
    /// Whether it still serves.
    #[getter]
    fn running(&self) -> bool {
        self.server.is_running()
    }

    /// Stops the server (see the class docs). Safe to call more than once, and from several
    /// threads: each waits for the one stop (whose error, if it failed, those waiting get).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        // Before anything is taken: in a forked child this is an error, and the server stays
        // the parent's.
        self.home.ensure()?;
        let stopped = self.server.stop(crate::runtime::runtime()?.handle());
        self.home
            .run(py, stopped)?
            .map_err(|e| ServerError::new_err(e.to_string()))
    }

    /// Blocks, the GIL released, until a stop is asked for (`stop()` from another thread, which
    /// then waits for the stop to end) or `timeout` seconds have passed; whether one was asked
    /// for. Ctrl-C raises `KeyboardInterrupt` (leaving a `with serve(…)` block then stops the
    /// server): `srv.wait()` keeps a script serving until then.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let limit = timeout
            .map(|secs| seconds(py, "timeout", secs))
            .transpose()?;
        let server = &self.server;
        let stopped = async move {
            while server.is_running() {
                tokio::time::sleep(STOP_CHECK).await;
            }
        };
        self.home.run(py, async move {
            match limit {
                None => {
                    stopped.await;
                    true
                }
                Some(limit) => tokio::time::timeout(limit, stopped).await.is_ok(),
            }
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Server(url={}, running={})",
            quote(&self.url),
            py_bool(self.running())
        )
    }
}
