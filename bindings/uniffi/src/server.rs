//! `serve` and `Server`: the whole gateway service (OpenAI-compatible `/v1`, `/health`,
//! `/metrics`, `/auth/callback`, the admin `/rpc`, background usage polling and token refresh)
//! on a local address, over codexpool-gateway's [`codexpool_gateway::Server`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use codexpool_gateway::RunningServer;
use tokio::sync::watch;

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
            state: Mutex::new(State::Running(running)),
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
    state: Mutex<State>,
    home: Home,
}

enum State {
    Running(RunningServer),
    /// A `stop` runs; says how it ended once it did.
    Stopping(watch::Receiver<Option<Result<(), CodexPoolError>>>),
    Done,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
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
        matches!(*lock(&self.state), State::Running(_))
    }

    /// Stops accepting, lets open streams finish (within 30 s), writes what is queued. A call
    /// while a stop runs (from another task or thread) waits for that stop and gets its error;
    /// once it ended, calling again does nothing. A caller that stops waiting (a cancelled
    /// task) does not cut the stop short.
    pub async fn stop(&self) -> Result<(), CodexPoolError> {
        // Before anything is taken: in a forked child the server stays the parent's.
        self.home.ensure()?;
        let runtime = crate::runtime::runtime()?;
        let mut stopped = {
            let mut state = lock(&self.state);
            let rx = match std::mem::replace(&mut *state, State::Done) {
                State::Done => return Ok(()),
                State::Stopping(rx) => rx,
                State::Running(running) => {
                    let (tx, rx) = watch::channel(None);
                    runtime.spawn(async move {
                        tx.send_replace(Some(running.stop().await.map_err(Into::into)));
                    });
                    rx
                }
            };
            *state = State::Stopping(rx.clone());
            rx
        };
        let result = self
            .home
            .run(async move {
                match stopped.wait_for(Option::is_some).await {
                    Ok(done) => Ok(done.clone().unwrap_or(Ok(()))),
                    Err(_) => Err(CodexPoolError::Internal(
                        "the stop task ended without an answer".into(),
                    )),
                }
            })
            .await?;
        *lock(&self.state) = State::Done;
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // In a process forked from the one serving, the server is the parent's: dropping it
        // here would remove the parent's server file (the CLI could no longer find it).
        if !self.home.is_here() {
            let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let State::Running(parents) = std::mem::replace(state, State::Done) {
                std::mem::forget(parents);
            }
        }
    }
}
