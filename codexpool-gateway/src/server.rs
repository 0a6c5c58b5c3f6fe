//! `Server`: the whole service on one listener — the gateway, `GET /health`, `GET /metrics`,
//! `GET /auth/callback` (sign-in through the service port) and the admin `POST /rpc` — plus the
//! background tasks (usage poller, token refresher, pruner; the pool itself runs its
//! batched writer and cross-process change watcher), and a graceful stop: stop accepting, let
//! open streams finish (bounded), write what is queued. It refuses to start on a database that
//! does not take writes.
//!
//! Connections are served on threads of the server's own (`HTTP_WORKER_FACTOR` × CPUs), each a
//! single-threaded runtime that keeps a connection, and the upstream connections its requests
//! use, together; the background work runs on the runtime that started the server.
//!
//! A server on a database file writes `servers/<pid>-<port>.json` beside it (its URL) and the
//! admin token to `rpc-token`, so other processes on the database can ask it for what only it
//! knows (requests in flight, cooldowns): see [`crate::admin`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use codexpool_core::{Config, Pool, Secret};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Gateway;
use crate::admin::ServerFile;
use crate::limit::ShedLayer;
use crate::rpc::Rpc;

/// How long open streams may run on after a stop was asked for.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr}{}: {source}",
        if *from_setting { " (CODEXPOOL_SERVICE_ADDR)" } else { "" }
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The address is the configured `SERVICE_ADDR` (not one given to [`Server::addr`]).
        from_setting: bool,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The address is reachable from other machines and that was not allowed.
    #[error(
        "refusing to listen on {addr}: other machines could reach it; set \
         CODEXPOOL_ALLOW_NON_LOOPBACK_SERVICE_ADDR=1 to serve them (the admin API still answers \
         this machine only)"
    )]
    NonLoopback {
        /// The address.
        addr: SocketAddr,
    },
    /// The gateway could not be built.
    #[error(transparent)]
    Gateway(#[from] crate::GatewayError),
    /// The threads that serve connections could not be started.
    #[error("cannot start the HTTP worker threads (HTTP_WORKER_FACTOR, HTTP_WORKER_MIN): {0}")]
    Workers(#[source] std::io::Error),
    /// The RPC token file could not be written.
    #[error("cannot write the RPC token to {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: codexpool_core::Error,
    },
    /// The database does not take writes.
    #[error(
        "cannot serve from {path}: the database does not take writes ({source}); a server \
         stores usage, the request log and refreshed sign-ins there"
    )]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: codexpool_core::Error,
    },
    /// The stop's flush failed: what was queued could not be written, or records were dropped
    /// since the last flush (see `Pool::flush`).
    #[error("the stop's flush: {0}")]
    Flush(#[source] codexpool_core::Error),
    /// A stop did not finish: its task ended without an answer (its runtime shut down, or it
    /// panicked).
    #[error("the stop ended without an answer (its runtime shut down, or it failed)")]
    Interrupted,
}

/// The threads a [`Server`] serves connections on: `HTTP_WORKER_FACTOR` × CPUs, at least
/// `HTTP_WORKER_MIN`.
pub fn worker_threads(config: &Config) -> usize {
    let cpus = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1);
    (config.http_worker_factor as usize * cpus)
        .max(config.http_worker_min as usize)
        .max(1)
}

/// What load shedding lets through: health checks, metrics, the admin API and a sign-in, each
/// cheap and none to be lost to a flood of model requests.
const UNSHED: &[&str] = &[
    "/health",
    "/metrics",
    "/rpc",
    "/rpc/proof",
    "/auth/callback",
];

/// Requests in flight before load shedding: `HTTP_QUEUE_FACTOR` × workers, at least
/// `HTTP_QUEUE_MIN`.
pub fn max_in_flight(config: &Config) -> usize {
    (config.http_queue_factor as usize * worker_threads(config)).max(config.http_queue_min as usize)
}

/// Raises the soft limit of open files to the hard one (as Go's runtime does at start) and warns
/// when the files would still run out before `max` requests are in flight: each holds a client
/// connection and an upstream one, and past the limit new connections, health checks and the
/// admin API included, wait in the kernel's queue unanswered instead of being shed with a 503.
/// The usual soft limit is 1024 (a systemd service's too), the hard one far more.
fn warn_if_files_run_out_first(max: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        // `None` is unlimited: nothing to raise, or no number to raise to.
        if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
            && soft < hard
        {
            limit.current = Some(hard);
            // Refused on some systems (macOS above OPEN_MAX): the old limit stays.
            let _ = setrlimit(Resource::Nofile, limit);
        }
        // Connections of both sides, plus the database, the listener and the like.
        let needed = (max as u64).saturating_mul(2).saturating_add(64);
        if let Some(files) = getrlimit(Resource::Nofile).current
            && files < needed
        {
            tracing::warn!(
                open_files = files,
                in_flight = max,
                "this process may open {files} files, fewer than {max} requests in flight \
                 (HTTP_QUEUE_*) need: past that, new connections wait unanswered; raise the \
                 limit (ulimit -n, systemd LimitNOFILE=) or lower HTTP_QUEUE_*"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max;
}

/// Builds and starts the service. See the module docs.
pub struct Server {
    pool: Pool,
    addr: SocketAddr,
    /// `addr` was given ([`Server::addr`]), not read from `SERVICE_ADDR`.
    addr_given: bool,
    rpc_token: Option<Secret>,
    background: bool,
    grace: Duration,
    unread: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server over `pool`, on `SERVICE_ADDR`, with the token from `RPC_TOKEN` (else the one
    /// kept in `<db dir>/rpc-token`; see [`Server::rpc_token`]).
    pub fn new(pool: Pool) -> Self {
        let addr = pool.config().service_addr;
        let rpc_token = pool.config().rpc_token.clone();
        let unread = pool
            .config()
            .upstream_stream_idle_timeout
            .clamp(Duration::from_secs(60), Duration::from_secs(900));
        Self {
            pool,
            addr,
            addr_given: false,
            rpc_token,
            background: true,
            grace: DEFAULT_SHUTDOWN_GRACE,
            unread,
        }
    }

    /// Listens here instead (port 0 picks a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self.addr_given = true;
        self
    }

    /// Uses this RPC token (default: `RPC_TOKEN`, else the one in `<db dir>/rpc-token`, made on
    /// the first start and kept, shared by every server on the database; random per start for
    /// a pool without a database file).
    pub fn rpc_token(mut self, token: Secret) -> Self {
        self.rpc_token = Some(token);
        self
    }

    /// Runs the usage poller, token refresher and pruner (default: on; the poller
    /// still honours `DISABLE_POLLING`, the pruner `REQUEST_LOG_DAYS`).
    pub fn background_tasks(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// How long open streams may run on after a stop (default 30 s). Answers still coming then
    /// end with an error of their own (`server_stopped`: a stream's last chunk or event, a 503
    /// for an answer not begun or assembled), given a second to go out; what is left (a client
    /// that does not read) is closed.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// How long what was sent to a client may stay unread before the client is given up, on
    /// Linux (`TCP_USER_TIMEOUT`; a client that stopped reading, such as a suspended process,
    /// would otherwise hold its account's slot and the upstream stream for as long as it stays
    /// so). Default: `UPSTREAM_STREAM_IDLE_TIMEOUT_SECS`, within 1–15 min (a short stall of a
    /// network must not end a connection; a dead peer must not be held longer than TCP
    /// keep-alive would find it).
    pub fn client_unread_timeout(mut self, d: Duration) -> Self {
        self.unread = d.max(Duration::from_millis(1));
        self
    }

    /// Binds, starts the background tasks, and serves until [`RunningServer::stop`].
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        let config = self.pool.config().clone();
        if !self.addr.ip().is_loopback() && !config.allow_non_loopback_service_addr {
            return Err(ServerError::NonLoopback { addr: self.addr });
        }
        self.pool
            .check_writable()
            .await
            .map_err(|source| ServerError::ReadOnly {
                path: config.db_path.clone(),
                source,
            })?;
        let bind_error = |source| ServerError::Bind {
            addr: self.addr,
            from_setting: !self.addr_given,
            source,
        };
        let listener = TcpListener::bind(self.addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        // Only a server whose store is the configured database file shares its token and
        // says where it listens: a pool in memory still has a `DB_PATH` (the default or the
        // environment's), and must not pass for the server of whatever database is there.
        let on_db_file = self.pool.store().database_file() == Some(config.db_path.as_path());
        let (token, token_file) = match self.rpc_token {
            Some(t) => (t, None),
            // Written beside the database, for the CLI and scripts; a pool without a database
            // file (in memory) leaves no file anywhere.
            // Kept across starts and shared by every server on the database: a second server
            // writing a new one would lock the first one's clients out.
            None if on_db_file => {
                let path = config.db_dir().join("rpc-token");
                let t = shared_token(&path).map_err(|source| ServerError::TokenFile {
                    path: path.clone(),
                    source,
                })?;
                (t, Some(path))
            }
            None => (Secret::new(crate::admin::random_hex()), None),
        };
        let gateway = Gateway::new(self.pool.clone())?;
        let workers = Workers::start(worker_threads(&config)).map_err(ServerError::Workers)?;
        let server_file = on_db_file.then(|| ServerFile::new(addr, &config));
        let rpc = Arc::new(Rpc {
            pool: self.pool.clone(),
            token: token.clone(),
            proof_secret: server_file.as_ref().map(|f| f.secret().to_owned()),
        });
        let max = max_in_flight(&config);
        warn_if_files_run_out_first(max);
        let shed = ShedLayer::new(max)
            .except(UNSHED)
            .metrics(gateway.metrics().clone());
        let apps = Apps::new(&gateway, rpc, &self.pool, shed);
        // Said once the routes are ready: a client that reads the file finds a server.
        if let Some(f) = &server_file
            && let Err(e) = f.write(&config)
        {
            // Only other processes' view of the runtime state depends on it.
            tracing::warn!(error = %e, "cannot say where this server listens");
        }
        let mut background = Vec::new();
        if self.background {
            background.push(codexpool_core::poll::spawn_poller(&self.pool));
            background.push(codexpool_core::auth::spawn_refresher(&self.pool));
            background.push(codexpool_core::spawn_pruner(&self.pool));
        }
        let (stop_tx, stop_rx) = watch::channel(None);
        let task = tokio::spawn(accept_loop(
            listener,
            apps,
            workers,
            stop_rx,
            Ending {
                grace: self.grace,
                stopping: gateway.shared.stopping.clone(),
            },
            ClientSockets {
                keepalive: config.gateway_keepalive_interval,
                unread: self.unread,
            },
        ));
        Ok(RunningServer {
            addr,
            token,
            token_file,
            pool: self.pool,
            gateway,
            server_file,
            stop_tx,
            task: Some(task),
            background,
        })
    }

    /// Starts, serves until `shutdown` resolves, then stops gracefully.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let running = self.start().await?;
        shutdown.await;
        running.stop().await
    }
}

/// The token an earlier start wrote, if the file holds one that is private to its owner.
pub(crate) fn read_token(path: &Path) -> Option<Secret> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).ok()?.permissions().mode() & 0o077 != 0 {
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (token.len() >= 32 && token.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| Secret::new(token.to_owned()))
}

/// The token of every server on the database: the one in `path`, or a new one written there
/// when there is none to trust. Servers starting at once agree on one: a new token is placed
/// only where no file is (the first wins, the others read its token), and whole and private
/// from the moment it has the name.
fn shared_token(path: &Path) -> codexpool_core::Result<Secret> {
    use codexpool_core::import::write_private_new;
    let io = |source| codexpool_core::Error::Io {
        path: path.to_owned(),
        source,
    };
    // Each turn ends with a file some server placed, or with one set aside; a few suffice
    // unless others keep replacing it.
    for _ in 0..8 {
        // Whether a file is there first, then what it holds: a file another server places
        // meanwhile is read, never taken for a missing one and set aside.
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let t = Secret::new(crate::admin::random_hex());
                if write_private_new(path, t.expose().as_bytes())? {
                    return Ok(t);
                }
                // Another server placed its token first: the next turn reads it.
            }
            Ok(m) if m.is_dir() => {
                return Err(io(std::io::Error::other(
                    "a folder has the token file's name; remove it",
                )));
            }
            Ok(_) => match read_token(path) {
                Some(t) => return Ok(t),
                // Readable by others (its token may be known), or not a token at all.
                None => set_aside_untrusted(path).map_err(io)?,
            },
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::other(
        "the token file kept changing while this server started",
    )))
}

/// Moves an untrusted token file out of the way. Another server may have replaced it with
/// its own since this one read it: a token file that is to be trusted is put back. (Without a
/// lock, a third server placing its own in that moment would still win over the second's.)
fn set_aside_untrusted(path: &Path) -> std::io::Result<()> {
    let aside = path.with_file_name(format!(
        ".rpc-token.untrusted-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        // Another server moved it first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let put_back = match read_token(&aside) {
        Some(_) => codexpool_core::import::link_new(&aside, path).map(|_| ()),
        None => Ok(()),
    };
    let _ = std::fs::remove_file(&aside);
    put_back
}

/// Whether a connection from `peer` to `local` comes from this machine: from loopback, or from
/// the address it reached (a server on a LAN address is reached from here with that address as
/// the source). Only those get the admin API.
fn from_this_machine(peer: SocketAddr, local: Option<SocketAddr>) -> bool {
    let peer = peer.ip().to_canonical();
    peer.is_loopback() || local.is_some_and(|l| l.ip().to_canonical() == peer)
}

/// The service for connections from this machine, and the one for others.
struct Apps {
    local: Router,
    remote: Router,
}

impl Apps {
    fn new(gateway: &Gateway, rpc: Arc<Rpc>, pool: &Pool, shed: ShedLayer) -> Self {
        // The admin routes get the gateway's layers (request id, trace span, metrics, panic
        // guard) and, with the gateway's routes, the load shedding (which lets them through).
        let service = |admin: Router| {
            crate::stack::stack(admin, gateway.metrics().clone())
                .merge(gateway.router())
                .layer(shed.clone())
        };
        let local = service(
            Router::new()
                .route("/rpc", post(crate::rpc::handle))
                .route("/rpc/proof", get(crate::rpc::proof))
                .with_state(rpc)
                .merge(
                    Router::new()
                        .route("/auth/callback", get(callback))
                        .with_state(pool.clone()),
                ),
        );
        // Connections from other machines (only with ALLOW_NON_LOOPBACK_SERVICE_ADDR) get the
        // same service but for the admin API and the sign-in callback: a browser's sign-in
        // comes back to `localhost`, i.e. to this machine, and each call is a database lookup.
        let remote = service(
            Router::new()
                .route("/rpc", any(admin_is_local))
                .route("/rpc/proof", any(admin_is_local))
                .route("/auth/callback", any(callback_is_local)),
        );
        Self { local, remote }
    }
}

/// `/rpc` from another machine.
pub(crate) async fn admin_is_local() -> Response {
    crate::rpc::http_error(
        StatusCode::FORBIDDEN,
        "the admin API answers this machine only",
    )
}

/// `/auth/callback` from another machine.
async fn callback_is_local() -> Response {
    crate::rpc::http_error(
        StatusCode::FORBIDDEN,
        "a sign-in completes only in a browser on the machine that serves it",
    )
}

/// The threads that serve client connections. Each runs a single-threaded runtime, and a
/// connection stays on one of them with everything its requests do — their upstream connections
/// too, which come from that thread's own pool (see `upstream::Direct`): no task moves between
/// threads, and no thread wakes another to hand on a request or a chunk. A bare relay built this
/// way served 19 % more requests at concurrency 32 than on tokio's multi-threaded runtime (its
/// work stealing moved the two halves of an exchange apart), the gateway 20 % (chat) and 23 %
/// (`/v1/responses`) more with 14 % less CPU per request. Connections go to the worker serving
/// the fewest. Background work (the batched writer, pollers, the accept loop) stays on the
/// runtime that started the server.
struct Workers {
    workers: Vec<Worker>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Where the search for the least busy worker starts next.
    turn: usize,
    /// Dropped to stop the threads (what still runs on them is dropped).
    stop: Option<watch::Sender<()>>,
}

struct Worker {
    runtime: tokio::runtime::Handle,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
}

/// Counts a connection on its worker while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let (stop, stopped) = watch::channel(());
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.push(Worker {
                runtime: runtime.handle().clone(),
                open: Arc::default(),
            });
            let mut stopped = stopped.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("codexpool-http-{i}"))
                    .spawn(move || {
                        // Ends when the sender is dropped.
                        runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                    })?,
            );
        }
        Ok(Self {
            workers,
            threads,
            turn: 0,
            stop: Some(stop),
        })
    }

    /// The worker with the fewest open connections (ties taken in turn, so one-request
    /// connections still use them all), counting the new one on it.
    fn take(&mut self) -> (&tokio::runtime::Handle, Open) {
        let n = self.workers.len();
        self.turn = (self.turn + 1) % n;
        let i = (0..n)
            .map(|k| (self.turn + k) % n)
            .min_by_key(|&i| self.workers[i].open.load(Ordering::Relaxed))
            .unwrap_or(0);
        let w = &self.workers[i];
        w.open.fetch_add(1, Ordering::Relaxed);
        (&w.runtime, Open(w.open.clone()))
    }

    /// Stops the threads and waits for them to end.
    async fn stop(mut self) {
        self.stop = None;
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// How a stopping server ends its connections.
struct Ending {
    /// How long open streams may go on.
    grace: Duration,
    /// Told when the grace is over (see `Shared::stopping`).
    stopping: Arc<crate::Stopping>,
}

/// How long answers ended at the grace's end get to send their last words (an error event, a
/// 503) before their connections are closed.
const FAREWELL: Duration = Duration::from_secs(1);

/// What each client connection's socket gets.
struct ClientSockets {
    /// TCP keep-alive (zero: none): finds the dead peers under a long silent stream.
    keepalive: Duration,
    /// How long bytes sent may stay unread (`TCP_USER_TIMEOUT`, which counts a peer that
    /// advertises no room too; see [`Server::client_unread_timeout`]): a client that stopped
    /// reading (a suspended process) is given up, and its account's slot comes back.
    unread: Duration,
}

impl ClientSockets {
    fn apply(&self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        let socket = socket2::SockRef::from(stream);
        if !self.keepalive.is_zero() {
            let ka = socket2::TcpKeepalive::new().with_time(self.keepalive);
            let _ = socket.set_tcp_keepalive(&ka);
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        let _ = socket.set_tcp_user_timeout(Some(self.unread));
    }
}

async fn accept_loop(
    listener: TcpListener,
    apps: Apps,
    mut workers: Workers,
    mut stop: watch::Receiver<Option<Duration>>,
    ending: Ending,
    sockets: ClientSockets,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new());
    let graceful = GracefulShutdown::new();
    // Owned, so connections still open after the grace can be ended before the final flush.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    sockets.apply(&stream);
                    // Moved to its worker's reactor.
                    let Ok(stream) = stream.into_std() else { continue };
                    let app = if from_this_machine(peer, stream.local_addr().ok()) {
                        &apps.local
                    } else {
                        &apps.remote
                    };
                    let service = TowerToHyperService::new(app.clone());
                    let (builder, watcher) = (builder.clone(), graceful.watcher());
                    let (runtime, open) = workers.take();
                    connections.spawn_on(async move {
                        let _open = open;
                        let Ok(stream) = TcpStream::from_std(stream) else { return };
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }, runtime);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // A stop may ask for less time than the configured grace (an exiting interpreter's).
    let grace = stop.borrow().map_or(ending.grace, |g| g.min(ending.grace));
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            open = connections.len(),
            "open streams outlived the shutdown grace; ending them"
        );
        // Answers under way end with an error of their own (a stream's last event says the
        // gateway stopped, an answer not begun or assembled is a 503), as an upstream cut would
        // end them; what is still left then (a client that does not read) is closed. Dropping
        // a connection drops its requests: leases go back, log rows are queued.
        ending.stopping.signal.send_replace(true);
        let _ = tokio::time::timeout(FAREWELL, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        ending.stopping.ended.store(true, Ordering::Relaxed);
        connections.shutdown().await;
    }
    workers.stop().await;
}

/// A started server. Dropping it without [`RunningServer::stop`] stops accepting at once.
pub struct RunningServer {
    addr: SocketAddr,
    token: Secret,
    token_file: Option<PathBuf>,
    pool: Pool,
    gateway: Gateway,
    /// Where this server said it listens (a database on disk only), removed when it stops.
    server_file: Option<ServerFile>,
    /// `Some(longest grace)` stops the server.
    stop_tx: watch::Sender<Option<Duration>>,
    task: Option<JoinHandle<()>>,
    background: Vec<codexpool_core::BackgroundTask>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`; a server on all interfaces (`0.0.0.0`, `::`) is reached on loopback.
    pub fn url(&self) -> String {
        crate::admin::local_url(self.addr)
    }

    /// The `base_url` to give an OpenAI client: [`RunningServer::url`] + `/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// The admin RPC token.
    pub fn rpc_token(&self) -> &Secret {
        &self.token
    }

    /// Where the generated token was written (none when it came from `RPC_TOKEN`).
    pub fn rpc_token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }

    /// The gateway (for its metrics).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Stops accepting, lets open streams finish (within the grace), writes what is queued.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.stop_within(Duration::MAX).await
    }

    /// [`stop`](Self::stop) that gives open streams at most `grace`, if that is less than the
    /// server's own shutdown grace (an exiting process that cannot wait long).
    pub async fn stop_within(mut self, grace: Duration) -> Result<(), ServerError> {
        let _ = self.stop_tx.send(Some(grace));
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // No poll or scheduled refresh starts a token refresh the flush would not wait for
        // (one under way goes on; the flush waits for it).
        for task in self.background.drain(..) {
            task.stop();
        }
        self.pool.flush().await.map_err(ServerError::Flush)
    }
}

/// A [`RunningServer`] that several callers may stop (what the bindings hold). The first
/// [`SharedServer::stop`] runs the stop as a task of its own, so a caller that stops waiting (a
/// Ctrl-C, a cancelled task) does not cut it short; a concurrent or later one waits for the same
/// stop and gets its error; once a caller got that, stopping again does nothing.
pub struct SharedServer {
    state: Arc<std::sync::Mutex<Stop>>,
}

enum Stop {
    Running(RunningServer),
    Stopping(watch::Receiver<Option<Result<(), Arc<ServerError>>>>),
    Done,
}

impl SharedServer {
    /// Takes a started server.
    pub fn new(running: RunningServer) -> Self {
        Self {
            state: Arc::new(std::sync::Mutex::new(Stop::Running(running))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stop> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether no stop was asked for yet.
    pub fn is_running(&self) -> bool {
        matches!(*self.lock(), Stop::Running(_))
    }

    /// Starts the stop on `runtime` unless one was started; the returned future waits for it
    /// (and may be dropped without harm).
    pub fn stop(
        &self,
        runtime: &tokio::runtime::Handle,
    ) -> impl Future<Output = Result<(), Arc<ServerError>>> + Send + 'static {
        self.stop_within(runtime, Duration::MAX)
    }

    /// [`stop`](Self::stop) with at most `grace` for open streams (see
    /// [`RunningServer::stop_within`]); a stop already under way goes on as it was asked.
    pub fn stop_within(
        &self,
        runtime: &tokio::runtime::Handle,
        grace: Duration,
    ) -> impl Future<Output = Result<(), Arc<ServerError>>> + Send + 'static {
        let stopped = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, Stop::Done) {
                Stop::Done => None,
                Stop::Stopping(rx) => {
                    *state = Stop::Stopping(rx.clone());
                    Some(rx)
                }
                Stop::Running(running) => {
                    let (tx, rx) = watch::channel(None);
                    runtime.spawn(async move {
                        let stopped = running.stop_within(grace).await;
                        tx.send_replace(Some(stopped.map_err(Arc::new)));
                    });
                    *state = Stop::Stopping(rx.clone());
                    Some(rx)
                }
            }
        };
        let state = self.state.clone();
        async move {
            let Some(mut stopped) = stopped else {
                return Ok(());
            };
            let result = match stopped.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or(Ok(())),
                Err(_) => Err(Arc::new(ServerError::Interrupted)),
            };
            *state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Stop::Done;
            result
        }
    }

    /// A handle that does not keep the server (see [`WeakServer`]).
    pub fn downgrade(&self) -> WeakServer {
        WeakServer(Arc::downgrade(&self.state))
    }

    /// Leaves the server alone, never stopped nor dropped: in a process forked from the one
    /// that serves, it is the parent's (stopping or dropping it here would remove the parent's
    /// server file, and the CLI could no longer find it). Takes no lock: one a parent thread
    /// held at the fork stays held in the child.
    pub fn forget(&self) {
        std::mem::forget(Arc::clone(&self.state));
    }
}

/// A [`SharedServer`] that is not kept alive by this handle (a registry of the servers still
/// running, to stop at a process's exit).
pub struct WeakServer(std::sync::Weak<std::sync::Mutex<Stop>>);

impl WeakServer {
    /// The server, unless every [`SharedServer`] of it is gone.
    pub fn upgrade(&self) -> Option<SharedServer> {
        self.0.upgrade().map(|state| SharedServer { state })
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(Some(Duration::MAX));
        if let Some(f) = &self.server_file {
            f.remove(self.pool.config());
        }
    }
}

/// `GET /auth/callback`: completes a browser sign-in started anywhere on this database, with the
/// same page the CLI's own listener shows. Not `HEAD` (which axum routes here too): a link
/// checker's or a prefetcher's HEAD would spend the code.
async fn callback(
    State(pool): State<Pool>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    if method == Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]).into_response();
    }
    if crate::rpc::proxied(&headers) {
        return callback_is_local().await;
    }
    let result = pool.auth().login_complete(&uri.to_string()).await;
    let page = codexpool_core::auth::render_callback_page(&result);
    let status = StatusCode::from_u16(page.status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(page.html),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use codexpool_core::store::MemoryStore;
    use codexpool_core::{Config, Pool, Secret};
    use tower::ServiceExt;

    use super::{Apps, from_this_machine};
    use crate::limit::ShedLayer;
    use crate::rpc::Rpc;

    async fn apps() -> Apps {
        let pool = Pool::builder(Config::default())
            .store(Arc::new(MemoryStore::new()))
            .open()
            .await
            .unwrap();
        let gateway = crate::Gateway::new(pool.clone()).unwrap();
        let rpc = Arc::new(Rpc {
            pool: pool.clone(),
            token: Secret::new("t0ken".to_string()),
            proof_secret: None,
        });
        Apps::new(&gateway, rpc, &pool, ShedLayer::new(8))
    }

    async fn status_and_body(app: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        assert!(res.headers().contains_key("x-request-id"), "{status}");
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    /// The admin API and the sign-in callback answer this machine only, and have the gateway's
    /// layers (a request id on every answer, counted in the metrics).
    #[tokio::test]
    async fn the_admin_routes_answer_this_machine_only_with_the_gateways_layers() {
        let Apps { local, remote } = apps().await;
        let rpc = || Request::post("/rpc").body(Body::from("{}")).unwrap();
        let callback = "/auth/callback?code=c&state=unknown";
        let (status, body) = status_and_body(&remote, rpc()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("this machine only"), "{body}");
        let (status, _) = status_and_body(&remote, get("/rpc/proof?nonce=n")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = status_and_body(&remote, get(callback)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("on the machine that serves it"), "{body}");
        // The rest is the same service.
        let (status, _) = status_and_body(&remote, get("/health")).await;
        assert_eq!(status, StatusCode::OK);

        let (status, _) = status_and_body(&local, rpc()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = status_and_body(&local, get(callback)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // A callback a proxy passes on comes from elsewhere.
        let proxied = Request::get(callback)
            .header("x-forwarded-for", "203.0.113.9")
            .body(Body::empty())
            .unwrap();
        let (status, _) = status_and_body(&local, proxied).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (_, metrics) = status_and_body(&local, get("/metrics")).await;
        // Both services count in the gateway's metrics: the remote's three 403s and the local's
        // 401, 400 and 403.
        assert!(
            metrics.contains(
                r#"codexpool_requests_total{route="other",status="4xx",protocol="none"} 6"#
            ),
            "{metrics}"
        );
    }

    /// The admin API answers this machine only: what counts as this machine.
    #[test]
    fn only_loopback_and_the_servers_own_address_are_this_machine() {
        let at = |s: &str| s.parse().unwrap();
        let lan = Some(at("192.168.1.5:8080"));
        for peer in [
            "127.0.0.1:5000",
            "127.9.9.9:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(from_this_machine(at(peer), None), "{peer}");
            assert!(from_this_machine(at(peer), lan), "{peer}");
        }
        // Reached on its LAN address from the machine itself: the source is that address.
        assert!(from_this_machine(at("192.168.1.5:5000"), lan));
        assert!(from_this_machine(at("[::ffff:192.168.1.5]:5000"), lan));
        for peer in ["192.168.1.9:5000", "10.0.0.1:5000", "[2001:db8::1]:5000"] {
            assert!(!from_this_machine(at(peer), lan), "{peer}");
            assert!(!from_this_machine(at(peer), None), "{peer}");
        }
        // A server listening on every address: its unspecified address is no one's.
        assert!(!from_this_machine(
            at("192.168.1.9:5000"),
            Some(at("0.0.0.0:8080"))
        ));
    }
}
