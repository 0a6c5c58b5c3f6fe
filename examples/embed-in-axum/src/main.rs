//! Example: mount the codexpool gateway under `/llm` of an existing axum app, behind the app's
//! own tower layer.
//!
//! The app has its own routes (`/` and `/api/stats`) and a [`CountLayer`] in front of
//! everything, which counts requests and stamps `x-app-request` on every response — the
//! gateway's included. The gateway is one `nest_service` line:
//!
//! ```ignore
//! let app = Router::new()
//!     .route("/", get(hello))
//!     .nest_service("/llm", Gateway::new(pool)?.router())
//!     .layer(CountLayer::default());
//! ```
//!
//! Clients then use `http://<app>/llm/v1` as their OpenAI `base_url` with a platform key.
//!
//! It runs against `FakeOpenAi` (codexpool-testkit) on 127.0.0.1:0, so it needs no network and
//! no account. By default it sends one chat request through `/llm/v1/chat/completions`, prints
//! the answer and exits; with `--serve` it stays up until Ctrl-C.
//!
//! Run it with `cargo run -p embed-in-axum` (or `… -- --serve`).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, Response};
use axum::routing::get;
use codexpool_core::{Config, Pool, keys::NewKey};
use codexpool_gateway::Gateway;
use codexpool_testkit::{FakeAccount, FakeOpenAi};
use serde_json::{Value, json};
use tower::{Layer, Service};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let serve_forever = std::env::args().skip(1).any(|a| a == "--serve");

    // The fake upstream and a pool over a temporary database with one account and one key.
    let fake = FakeOpenAi::start()?;
    fake.add_account(FakeAccount::new("acct-1"));
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.set("DB_PATH", &dir.path().join("pool.db").to_string_lossy())?;
    config.set("ISSUER", &fake.issuer())?;
    config.set("USAGE_BASE_URL", &fake.usage_base_url())?;
    config.set("UPSTREAM_BASE_URL", &fake.codex_base_url())?;
    let pool = Pool::open(config).await?;
    let auth_json = serde_json::to_vec(&fake.auth_json("acct-1"))?;
    pool.accounts().import_bytes("auth.json", &auth_json).await;
    let key = pool.keys().create(NewKey::named("embedded-app")).await?;

    // The app: its own routes, the gateway under /llm, and its own layer in front of both.
    let count = CountLayer::default();
    let gateway = Gateway::new(pool.clone())?;
    let app = Router::new()
        .route("/", get(|| async { "hello from the host app\n" }))
        .route("/api/stats", get(stats))
        .with_state(count.clone())
        .nest_service("/llm", gateway.router())
        .layer(count.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    println!("app listening on {base}");
    println!("  GET  {base}/             the app's own route");
    println!("  GET  {base}/api/stats    the app's own route");
    println!("  POST {base}/llm/v1/chat/completions   the gateway (base_url {base}/llm/v1)");

    if serve_forever {
        println!("\nplatform key: {}", key.secret.expose());
        println!(
            "try: curl -s {base}/llm/v1/chat/completions -H 'authorization: Bearer {}' \\",
            key.secret.expose()
        );
        println!(
            "       -H 'content-type: application/json' -d '{{\"model\":\"gpt-5-codex\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
        );
        println!("Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    } else {
        demo(&base, key.secret.expose()).await?;
    }

    let _ = stop_tx.send(());
    server.await??;
    pool.flush().await?;
    Ok(())
}

/// One request to the app's own route and one chat request through the nested gateway.
async fn demo(base: &str, secret: &str) -> Result<(), Box<dyn Error>> {
    // The app is on loopback: an HTTP(S)_PROXY from the environment must not carry these.
    let http = reqwest::Client::builder().no_proxy().build()?;

    let hello = http.get(format!("{base}/")).send().await?.text().await?;
    print!("\nGET /  -> {hello}");

    let resp = http
        .post(format!("{base}/llm/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({
            "model": "gpt-5-codex",
            "messages": [{"role": "user", "content": "Say hello."}],
        }))
        .send()
        .await?;
    let status = resp.status();
    let stamped = resp.headers().get(APP_HEADER).cloned();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        return Err(format!("the gateway answered {status}: {body}").into());
    }
    let answer = body["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| format!("no answer in {body}"))?;
    println!("POST /llm/v1/chat/completions -> {status}: {answer:?}");
    println!(
        "  the app's layer saw it too ({APP_HEADER}: {})",
        stamped
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("missing")
    );
    if stamped.is_none() {
        return Err("the app's layer did not run in front of the gateway".into());
    }

    let stats: Value = http
        .get(format!("{base}/api/stats"))
        .send()
        .await?
        .json()
        .await?;
    println!("GET /api/stats -> {stats}");
    Ok(())
}

/// `GET /api/stats`: what the app's layer counted.
async fn stats(State(count): State<CountLayer>) -> axum::Json<Value> {
    axum::Json(json!({ "requests": count.total.load(Ordering::Relaxed) }))
}

/// The response header [`CountLayer`] adds: this response's number.
const APP_HEADER: &str = "x-app-request";

/// The host app's own middleware: counts requests and numbers each response. Stands for any
/// tower layer an app already has (auth, tracing, rate limits) in front of the gateway.
#[derive(Clone, Default)]
struct CountLayer {
    total: Arc<AtomicU64>,
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            total: self.total.clone(),
        }
    }
}

/// The service [`CountLayer`] wraps around the app.
#[derive(Clone)]
struct Count<S> {
    inner: S,
    total: Arc<AtomicU64>,
}

impl<S, B> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let n = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(APP_HEADER, HeaderValue::from(n));
            Ok(resp)
        })
    }
}
