//! `codexpool-bare-relay`: the benchmark's control. It forwards every request to one upstream
//! and streams the answer back, and does nothing else: no key check, no parsing, no
//! translation, no log. It uses what the gateway uses for the two HTTP exchanges (hyper's
//! server and hyper-util's pooled client on a multi-threaded tokio runtime, `TCP_NODELAY` both
//! ways, mimalloc), so what it costs is the floor any proxy in front of the same upstream pays;
//! `scripts/bench.sh` measures it beside the gateway.
//!
//! Prints `{"url": "http://127.0.0.1:PORT"}` on stdout once it listens; runs until killed, or
//! until its stdin reaches EOF when stdin is a pipe (so a parent that dies takes it with it).

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// Worker threads (default: one per CPU, as the gateway).
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        runtime.worker_threads(n.max(1));
    }
    codexpool_testkit::on_stdin_eof(|| std::process::exit(0));
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("codexpool-bare-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codexpool-bare-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let relay = Arc::new(Relay {
        client: Client::builder(TokioExecutor::new()).build(http),
        upstream: args.upstream,
        path: args.path,
    });
    let url = format!("http://{}", listener.local_addr()?);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "url": url }))?;
    out.flush()?;
    drop(out);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let relay = relay.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let relay = relay.clone();
                async move { Ok::<_, Infallible>(relay.forward(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
