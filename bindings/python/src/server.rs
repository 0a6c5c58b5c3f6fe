//! `codexpool.serve(pool)`: the whole service (gateway, `/rpc`, `/auth/callback`, usage poller,
//! token refresher) on a socket, running on the module's runtime threads until `stop()`; over
//! the gateway's `Server` / `RunningServer`.

use std::path::PathBuf;
use std::sync::Mutex;

use codexpool_core::Secret;
use codexpool_gateway::{RunningServer, Server as CoreServer};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::args::{listen_addr, seconds};
use crate::errors::ServerError;
use crate::pool::Pool;
use crate::record::{py_bool, quote};
use crate::runtime::{Home, HomeExt};

/// A running server. `stop()` (or leaving a `with` block) stops accepting, lets open streams
/// finish within the shutdown grace, writes what is queued and frees the port; stopping twice
/// does nothing.
#[pyclass(frozen, module = "codexpool")]
pub struct Server {
    running: Mutex<Option<RunningServer>>,
    home: Home,
    url: String,
    base_url: String,
    host: String,
    port: u16,
    rpc_token: Secret,
    rpc_token_file: Option<PathBuf>,
}

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
        server = server.rpc_token(Secret::new(t));
    }
    let running = pool.home.run(py, server.start())?.map_err(server_error)?;
    let local = running.local_addr();
    Ok(Server {
        url: running.url(),
        base_url: running.base_url(),
        host: local.ip().to_string(),
        port: local.port(),
        rpc_token: running.rpc_token().clone(),
        rpc_token_file: running.rpc_token_file().map(PathBuf::from),
        running: Mutex::new(Some(running)),
        home: pool.home,
    })
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
        self.running.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    /// Stops the server (see the class docs). Safe to call more than once.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let running = match self.running.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match running {
            Some(r) => self.home.run(py, r.stop())?.map_err(server_error),
            None => Ok(()),
        }
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
