//! `serve` and `Server`: the whole gateway service (OpenAI-compatible `/v1`, `/health`,
//! `/metrics`, `/auth/callback`, the admin `/rpc`, background usage polling and token refresh)
//! on a local address, over codexpool-gateway's [`codexpool_gateway::Server`].

use std::sync::Arc;

use codexpool_gateway::SharedServer;

use crate::CodexPoolError;
use crate::pool::Pool;
use crate::runtime::{Home, HomeExt};

/// Starts serving `pool` on `addr` (`IP:port`, or `host:port` as the CLI's `serve --addr`:
/// `localhost` is 127.0.0.1; port 0 picks a free port) in the background and returns once it
/// accepts connections. The admin token is `RPC_TOKEN` when set, else the one kept in
/// `<db dir>/rpc-token` (made at random by the first server on that database).
#[uniffi::export(default(addr = "127.0.0.1:0"))]
pub async fn serve(pool: Arc<Pool>, addr: String) -> Result<Arc<Server>, CodexPoolError> {
    let (home, pool) = (pool.home, pool.inner.clone());
    home.run(async move {
        // A host name is looked up (blocking): not on the caller's event loop, nor on a worker
        // the pool's writer and pollers share.
        let parsed = {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || codexpool_core::config::parse_listen_addr(&addr))
                .await
                .map_err(|e| CodexPoolError::Internal(format!("the address lookup failed: {e}")))?
        };
        let addr = parsed
            .map_err(|e| CodexPoolError::InvalidInput(format!("invalid address {addr:?}: {e}")))?;
        let running = codexpool_gateway::Server::new(pool)
            .addr(addr)
            .start()
            .await?;
        Ok(Arc::new(Server {
            url: running.url(),
            base_url: running.base_url(),
            rpc_token: running.rpc_token().expose().to_string(),
            server: SharedServer::new(running),
            home,
        }))
    })
    .await
}

/// A running gateway. Dropping it stops accepting at once; `stop` also lets open streams finish
/// and writes what is queued.
#[derive(uniffi::Object)]
pub struct Server {
    url: String,
    base_url: String,
    rpc_token: String,
    server: SharedServer,
    home: Home,
}

#[uniffi::export]
impl Server {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `http://<addr>/v1`: the `base_url` to give an OpenAI client.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The admin RPC token (`Authorization: Bearer …` on `POST /rpc`).
    pub fn rpc_token(&self) -> String {
        self.rpc_token.clone()
    }

    /// Whether it still serves (false once `stop` was called).
    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// Stops accepting, lets open streams finish (within 30 s), writes what is queued. A call
    /// while a stop runs (from another task or thread) waits for that stop and gets its error;
    /// once it ended, calling again does nothing. A caller that stops waiting (a cancelled
    /// task) does not cut the stop short.
    pub async fn stop(&self) -> Result<(), CodexPoolError> {
        // Before anything is taken: in a forked child the server stays the parent's.
        self.home.ensure()?;
        let stopped = self.server.stop(crate::runtime::runtime()?.handle());
        self.home
            .run(async move { stopped.await.map_err(|e| crate::error::server_error(&e)) })
            .await
    }
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
