//! Finding and calling the server that runs on a database, from another process.
//!
//! Requests in flight and cooldowns live in the serving process's memory, so a CLI (or any tool)
//! opening the same database sees none of them. A [`Server`](crate::Server) on a database file
//! says where it listens in `server.json` beside the database (written at start, removed at
//! stop); [`AdminClient::find`] reads it and the RPC token (`RPC_TOKEN`, else the `rpc-token`
//! file), and [`AdminClient::call`] asks the server's admin RPC. A server that crashed leaves
//! its file behind: nobody answers there ([`AdminError::NotRunning`]), and callers fall back to
//! their own view.

use std::path::PathBuf;
use std::time::Duration;

use codexpool_core::{Config, Secret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How long a call may take; the admin methods answer from memory.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What `server.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFile {
    /// `http://<addr>`, reachable from this machine (loopback for a server on all interfaces).
    pub url: String,
    /// The serving process.
    pub pid: u32,
}

impl ServerFile {
    /// `server.json` beside the database of `config`.
    pub fn path(config: &Config) -> PathBuf {
        config.db_dir().join("server.json")
    }

    /// The file a server on this database wrote, if there is one and it parses.
    pub fn read(config: &Config) -> Option<Self> {
        let bytes = std::fs::read(Self::path(config)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes it (via a temporary file and a rename: readers never see half a file).
    pub(crate) fn write(&self, config: &Config) -> codexpool_core::Result<()> {
        let text = json!({"url": self.url, "pid": self.pid}).to_string();
        codexpool_core::import::write_private(&Self::path(config), text.as_bytes())
    }

    /// Removes it if it is still this one (a later server on the database may have replaced it).
    pub(crate) fn remove(&self, config: &Config) {
        if Self::read(config).as_ref() == Some(self) {
            let _ = std::fs::remove_file(Self::path(config));
        }
    }
}

/// A call to the admin RPC failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Nobody answers at the address the server file names (the server stopped or crashed).
    #[error("no server answers at {url}")]
    NotRunning {
        /// The address.
        url: String,
    },
    /// The server answered, but not with a result.
    #[error("the server at {url} answered {method}: {message}")]
    Failed {
        /// The address.
        url: String,
        /// The method called.
        method: String,
        /// What went wrong (status, RPC error or transport error).
        message: String,
    },
}

/// A client for the admin RPC of the server running on a database. Cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    url: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// The server running on `config`'s database, as its `server.json` names it, with the RPC
    /// token from `RPC_TOKEN` or the `rpc-token` file; `None` when either is missing (no server
    /// has run here, or it stopped cleanly).
    pub fn find(config: &Config) -> Option<Self> {
        let file = ServerFile::read(config)?;
        let token = match &config.rpc_token {
            Some(t) => t.clone(),
            None => crate::server::read_token(&config.db_dir().join("rpc-token"))?,
        };
        Some(Self::new(file.url, token))
    }

    /// A client for the server at `url` (`http://host:port`) with this token.
    pub fn new(url: impl Into<String>, token: Secret) -> Self {
        let http = reqwest::Client::builder()
            // The server is on this machine: a proxy from the environment must not catch it.
            .no_proxy()
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()
            // Only TLS set-up can fail, and this client speaks plain HTTP.
            .unwrap_or_default();
        Self {
            url: url.into(),
            token,
            http,
        }
    }

    /// The server's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `method` with `params`; the `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, AdminError> {
        let failed = |message: String| AdminError::Failed {
            url: self.url.clone(),
            method: method.to_owned(),
            message,
        };
        let res = self
            .http
            .post(format!("{}/rpc", self.url))
            .bearer_auth(self.token.expose())
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    AdminError::NotRunning {
                        url: self.url.clone(),
                    }
                } else {
                    failed(crate::upstream::describe(&e))
                }
            })?;
        let status = res.status();
        let body: Value = res
            .json()
            .await
            .map_err(|e| failed(format!("HTTP {status}, not a JSON-RPC answer ({e})")))?;
        if let Some(e) = body.get("error") {
            let message = e["message"].as_str().unwrap_or("no message");
            return Err(failed(format!("HTTP {status}: {message}")));
        }
        match body.get("result") {
            Some(r) if status.is_success() => Ok(r.clone()),
            _ => Err(failed(format!("HTTP {status} without a result"))),
        }
    }
}
