//! `codexpool-bare-relay`: the benchmark's control. It forwards every request to one upstream
//! and streams the answer back, and does nothing else: no key check, no parsing, no
//! translation, no log. It serves the way the gateway serves (hyper's server and hyper-util's
//! pooled client, one thread per CPU with a single-threaded tokio runtime and its own upstream
//! pool, each connection on the thread with the fewest, `TCP_NODELAY` both ways, mimalloc), so
//! what it costs is the floor any proxy in front of the same upstream pays; `scripts/bench.sh`
//! measures it beside the gateway.
//!
//! Prints `{"url": "http://127.0.0.1:PORT"}` on stdout once it listens; runs until killed, or
//! until its stdin reaches EOF when stdin is a pipe (so a parent that dies takes it with it).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use clap::Parser;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Forwards every request to one upstream and streams the answers back, doing nothing else.
#[derive(Debug, Parser)]
#[command(name = "codexpool-bare-relay", version)]
struct Args {
    /// Plain-HTTP origin to forward to, e.g. `http://127.0.0.1:8000`.
    #[arg(long)]
    upstream: Uri,
    /// Send every request to this path (and query) instead of the client's own, e.g.
    /// `/backend-api/codex/responses` to get the Codex event stream the gateway gets.
    #[arg(long)]
    path: Option<PathAndQuery>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Threads serving connections (default: one per CPU, as the gateway).
    #[arg(long)]
    workers: Option<usize>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Relay {
    client: Client<HttpConnector, Incoming>,
    upstream: Uri,
    path: Option<PathAndQuery>,
}

impl Relay {
    async fn forward(&self, req: Request<Incoming>) -> Response<Either<Incoming, Full<Bytes>>> {
        match self.send(req).await {
            Ok(res) => res.map(Either::Left),
            Err(e) => {
                let mut res = Response::new(Either::Right(Full::new(Bytes::from(e + "\n"))));
                *res.status_mut() = http::StatusCode::BAD_GATEWAY;
                res
            }
        }
    }

    async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, String> {
        let (mut parts, body) = req.into_parts();
        let path = match &self.path {
            Some(p) => p.clone(),
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).map_err(|e| e.to_string())?;
        parts.headers.remove(header::HOST);
        self.client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("the upstream did not answer: {e}"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.upstream.scheme_str() != Some("http") || args.upstream.authority().is_none() {
        eprintln!("codexpool-bare-relay: --upstream must be an http:// origin");
        return ExitCode::FAILURE;
    }
    codexpool_testkit::on_stdin_eof(|| std::process::exit(0));
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codexpool-bare-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A thread serving connections: its runtime, its relay (with its own upstream pool), and how
/// many connections it has.
struct Worker {
    runtime: tokio::runtime::Handle,
    relay: Arc<Relay>,
    open: Arc<AtomicUsize>,
}

fn serve(args: Args) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(args.addr)?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let workers = (0..workers)
        .map(|_| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            let worker = Worker {
                runtime: runtime.handle().clone(),
                relay: Arc::new(Relay {
                    client: Client::builder(TokioExecutor::new()).build(http),
                    upstream: args.upstream.clone(),
                    path: args.path.clone(),
                }),
                open: Arc::default(),
            };
            std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
            Ok(worker)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "url": url }))?;
    out.flush()?;
    drop(out);
    for turn in (0..workers.len()).cycle() {
        let (stream, _) = listener.accept()?;
        let _ = stream.set_nodelay(true);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        // The least busy worker, ties taken in turn.
        let n = workers.len();
        let i = (0..n)
            .map(|k| (turn + k) % n)
            .min_by_key(|&i| workers[i].open.load(Ordering::Relaxed))
            .unwrap_or(0);
        let w = &workers[i];
        w.open.fetch_add(1, Ordering::Relaxed);
        let (relay, open) = (w.relay.clone(), w.open.clone());
        w.runtime.spawn(async move {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                let service = service_fn(move |req| {
                    let relay = relay.clone();
                    async move { Ok::<_, Infallible>(relay.forward(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}
