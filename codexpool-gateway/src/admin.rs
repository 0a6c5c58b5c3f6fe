//! Finding and calling the servers that run on a database, from another process.
//!
//! Requests in flight and cooldowns live in the serving process's memory, so a CLI (or any tool)
//! opening the same database sees none of them. A [`Server`](crate::Server) on a database file
//! says where it listens in `servers/<pid>-<port>.json` beside the database (written at start,
//! removed at stop; one file per server, as several may share a database; the file names the
//! database, as other databases may share the folder);
//! [`AdminClient::find_all`] reads them and the RPC token (`RPC_TOKEN`, else the `rpc-token`
//! file), and [`AdminClient::call`] asks a server's admin RPC. A server that crashed leaves its
//! file behind: nobody answers there ([`AdminError::NotRunning`]); callers pass over it, and may
//! [`forget`](AdminClient::forget) it.
//!
//! The token goes only to the server that wrote the file: each file holds a secret of that
//! server's start (the folder is the owner's only, the file 0600), and before a call the client
//! asks `GET /rpc/proof?nonce=N` for `sha256(secret, N)` with a fresh nonce. Whatever took the
//! port of a crashed server (another user's program) cannot answer it and never sees the token
//! ([`AdminError::NotOurs`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use codexpool_core::{Config, Secret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How long a call may take; the admin methods answer from memory.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// `http://<addr>`; a server on all interfaces (`0.0.0.0`, `::`) is reached on loopback.
pub fn local_url(mut addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// What a server's file says.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFile {
    /// `http://<addr>`, reachable from this machine (loopback for a server on all interfaces).
    pub url: String,
    /// The serving process.
    pub pid: u32,
    /// The port it listens on (with the process, the file's name).
    pub port: u16,
    /// The file name of the database it serves (in the folder the file is in).
    #[serde(default)]
    pub db: String,
    /// The server's proof secret (random per start).
    secret: String,
}

impl std::fmt::Debug for ServerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFile")
            .field("url", &self.url)
            .field("pid", &self.pid)
            .field("port", &self.port)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// The answer to a proof request: `sha256("codexpool server proof", secret, nonce)`, hex.
pub(crate) fn proof(secret: &str, nonce: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in ["codexpool server proof", secret, nonce] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// 256 random bits as 64 hex digits (tokens, secrets, nonces).
pub(crate) fn random_hex() -> String {
    (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect()
}

/// The name servers' files give `config`'s database by.
fn db_name(config: &Config) -> String {
    config
        .db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl ServerFile {
    /// The file for a server of this process listening on `addr`, serving `config`'s database.
    pub(crate) fn new(addr: SocketAddr, config: &Config) -> Self {
        Self {
            url: local_url(addr),
            pid: std::process::id(),
            port: addr.port(),
            db: db_name(config),
            secret: random_hex(),
        }
    }

    /// The secret `GET /rpc/proof` answers with.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The folder beside the database of `config` where servers say where they listen.
    pub fn dir(config: &Config) -> PathBuf {
        config.db_dir().join("servers")
    }

    fn path(&self, config: &Config) -> PathBuf {
        Self::dir(config).join(format!("{}-{}.json", self.pid, self.port))
    }

    /// Every server file on this database that parses, oldest first (those a crash left behind
    /// too); the files of servers on other databases in the same folder are passed over.
    pub fn list(config: &Config) -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(Self::dir(config)) else {
            return Vec::new();
        };
        let db = db_name(config);
        let mut files: Vec<(std::time::SystemTime, Self)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                if e.path().extension()? != "json" {
                    return None;
                }
                let modified = e.metadata().ok()?.modified().ok()?;
                let file: Self = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                // A file without a database's name is an older version's: still found.
                (file.db == db || file.db.is_empty()).then_some((modified, file))
            })
            .collect();
        files.sort_by_key(|(t, _)| *t);
        files.into_iter().map(|(_, f)| f).collect()
    }

    /// Writes it (via a temporary file and a rename: readers never see half a file).
    pub(crate) fn write(&self, config: &Config) -> codexpool_core::Result<()> {
        let dir = Self::dir(config);
        // The owner's only: the files hold the servers' proof secrets.
        codexpool_core::import::create_private_dir(&dir).map_err(|source| {
            codexpool_core::Error::Io {
                path: dir.clone(),
                source,
            }
        })?;
        let text = json!({
            "url": self.url,
            "pid": self.pid,
            "port": self.port,
            "db": self.db,
            "secret": self.secret,
        })
        .to_string();
        codexpool_core::import::write_private(&self.path(config), text.as_bytes())
    }

    /// Removes it.
    pub fn remove(&self, config: &Config) {
        let _ = std::fs::remove_file(self.path(config));
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
    /// Something answers at the address the server file names, but not the server that wrote
    /// it (its port was taken after a crash): the token was not sent.
    #[error(
        "something else answers at {url} (not the server that wrote its file): the token was not sent"
    )]
    NotOurs {
        /// The address.
        url: String,
    },
    /// A server runs on this database, but this process has no RPC token for it (the server
    /// took its token from `RPC_TOKEN`, which is not set here the same way, and wrote no file).
    #[error(
        "a server runs on this database at {url}, but its RPC token is not available here (set \
         CODEXPOOL_RPC_TOKEN as the server has it)"
    )]
    NoToken {
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
    /// `None` when this process has none: the server is still found and proved (its address is
    /// known), but not asked.
    token: Option<Secret>,
    http: reqwest::Client,
    /// The file it was found through.
    file: Option<ServerFile>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// The servers on `config`'s database, as their files name them (oldest first), with the
    /// RPC token from `RPC_TOKEN` or the `rpc-token` file; none when no server runs. Without a
    /// token they are still found and can be [verified](Self::verify) (their address is known),
    /// but a [call](Self::call) is [`AdminError::NoToken`].
    pub fn find_all(config: &Config) -> Vec<Self> {
        let files = ServerFile::list(config);
        if files.is_empty() {
            return Vec::new();
        }
        let token = config
            .rpc_token
            .clone()
            .or_else(|| crate::server::read_token(&config.db_dir().join("rpc-token")));
        files
            .into_iter()
            .map(|f| {
                let mut c = Self::with_token(f.url.clone(), token.clone());
                c.file = Some(f);
                c
            })
            .collect()
    }

    /// Removes the file this client was found through: for a server that no longer answers.
    pub fn forget(&self, config: &Config) {
        if let Some(f) = &self.file {
            f.remove(config);
        }
    }

    /// A client for the server at `url` (`http://host:port`) with this token.
    pub fn new(url: impl Into<String>, token: Secret) -> Self {
        Self::with_token(url, Some(token))
    }

    fn with_token(url: impl Into<String>, token: Option<Secret>) -> Self {
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
            file: None,
        }
    }

    /// The server's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The serving process, for a client found through a server file.
    pub fn pid(&self) -> Option<u32> {
        self.file.as_ref().map(|f| f.pid)
    }

    /// Whether the server at the file's address is the one that wrote it (nothing to check
    /// for a client made with [`AdminClient::new`]). [`AdminClient::call`] checks first.
    pub async fn verify(&self) -> Result<(), AdminError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let nonce = random_hex();
        let res = self
            .http
            .get(format!("{}/rpc/proof?nonce={nonce}", self.url))
            .send()
            .await
            .map_err(|e| self.transport(e, "proof"))?;
        let answer = res.text().await.unwrap_or_default();
        if answer.trim() == proof(&file.secret, &nonce) {
            Ok(())
        } else {
            Err(AdminError::NotOurs {
                url: self.url.clone(),
            })
        }
    }

    fn transport(&self, e: reqwest::Error, method: &str) -> AdminError {
        if e.is_connect() {
            AdminError::NotRunning {
                url: self.url.clone(),
            }
        } else {
            AdminError::Failed {
                url: self.url.clone(),
                method: method.to_owned(),
                message: crate::upstream::describe(&e),
            }
        }
    }

    /// Calls `method` with `params`; the `result`. A client found through a server file checks
    /// first that the server there is the one that wrote it.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, AdminError> {
        self.verify().await?;
        let Some(token) = &self.token else {
            return Err(AdminError::NoToken {
                url: self.url.clone(),
            });
        };
        let failed = |message: String| AdminError::Failed {
            url: self.url.clone(),
            method: method.to_owned(),
            message,
        };
        let res = self
            .http
            .post(format!("{}/rpc", self.url))
            .bearer_auth(token.expose())
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .map_err(|e| self.transport(e, method))?;
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
