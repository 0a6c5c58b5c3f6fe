//! codexpool-gateway: one OpenAI-compatible endpoint in front of a pool of ChatGPT (Codex)
//! accounts.
//!
//! [`Gateway`] is a tower `Service` (an axum `Router` inside) serving `POST /v1/responses`
//! (with `GET`/`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items` for the
//! responses it keeps), `POST
//! /v1/chat/completions`, `GET /v1/models`, `GET /health` and `GET /metrics`. Every model request
//! is authenticated with a platform key, adapted to the Codex backend's dialect, and sent through
//! the best account that still has quota; failures before the first byte of output fail over to
//! the next account, so the client never sees them.
//!
//! Mount it in your own axum app:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = codexpool_core::Pool::open(codexpool_core::Config::from_env()?).await?;
//! let gateway = codexpool_gateway::Gateway::new(pool)?;
//! let app = axum::Router::new().nest_service("/llm", gateway.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod adapt;
pub mod admin;
mod auth;
mod body;
mod error;
mod hosts;
mod limit;
mod metrics;
mod record;
mod relay;
mod routes;
mod rpc;
mod secrets;
mod server;
pub mod sse;
mod stack;
mod stored;
mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::{any, get, post};
use codexpool_core::Pool;

pub use auth::{KeyAuth, KeyAuthLayer, presented_key};
pub use error::ApiError;
pub use limit::{Shed, ShedLayer};
pub use metrics::{Attempt, Metrics, MetricsLayer, Protocol};
pub use routes::models::BUILTIN_MODELS;
pub use routes::{BODY_IDLE_TIMEOUT, KEEPALIVE_INTERVAL};
pub use rpc::{RpcError, codes as rpc_codes};
pub use server::{
    DEFAULT_SHUTDOWN_GRACE, RunningServer, Server, ServerError, SharedServer, WeakServer,
    max_in_flight, worker_threads,
};
pub use upstream::CODEX_VERSION;

/// The gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The upstream HTTP client could not be created.
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(String),
}

/// State shared by every handler of one gateway.
pub(crate) struct Shared {
    pub pool: Pool,
    pub upstream: upstream::Upstream,
    pub metrics: Arc<Metrics>,
    pub models: routes::models::ModelsCache,
    pub max_body: usize,
    pub preview_max: usize,
    /// How often a streaming client waiting on a slow upstream gets an SSE comment.
    pub keepalive: std::time::Duration,
    /// Longest pause between the frames of a request body.
    pub body_idle: std::time::Duration,
    /// The responses kept for `previous_response_id` and `item_reference` (`None`: keep none).
    pub responses: Option<Arc<stored::ResponseStore>>,
    /// A serving server's end, as the requests see it.
    pub stopping: Arc<Stopping>,
}

/// How a server's end reaches the requests it serves (see [`Server::shutdown_grace`]).
pub(crate) struct Stopping {
    /// Flips to `true` when the grace is over: the answers still coming end with an error of
    /// their own (the stream's last event, a 503), as an upstream cut would end them, and an
    /// attempt under way ends with a 503.
    pub signal: tokio::sync::watch::Sender<bool>,
    /// Set when the server then ends what is still open: the rows of requests dropped
    /// unfinished say `server_stopped`, not that the client left.
    pub ended: std::sync::atomic::AtomicBool,
}

/// The OpenAI-compatible gateway over a [`Pool`]. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    router: Router,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Builds a [`Gateway`] with non-default parts.
#[derive(Debug)]
pub struct GatewayBuilder {
    pool: Pool,
    keepalive: std::time::Duration,
    body_idle: std::time::Duration,
    metrics: Option<Arc<Metrics>>,
}

impl GatewayBuilder {
    /// How often a streaming client waiting on a slow upstream gets an SSE comment
    /// (default [`KEEPALIVE_INTERVAL`], 15 s; at least 10 ms: a zero would send them in a
    /// busy loop).
    pub fn keepalive_interval(mut self, d: std::time::Duration) -> Self {
        self.keepalive = d.max(std::time::Duration::from_millis(10));
        self
    }

    /// Longest pause between the parts of a request body before the request is answered 408
    /// (default [`BODY_IDLE_TIMEOUT`], 30 s, as long as a request's headers may take): a client
    /// that sent part of a body and then nothing would otherwise hold its place among the
    /// requests in flight for as long as its connection lives.
    pub fn body_idle_timeout(mut self, d: std::time::Duration) -> Self {
        // Zero would refuse every body not there at once.
        self.body_idle = d.max(std::time::Duration::from_millis(10));
        self
    }

    /// Records into these metrics (default: a new set).
    pub fn metrics(mut self, m: Arc<Metrics>) -> Self {
        self.metrics = Some(m);
        self
    }

    /// Builds the gateway, configured by the pool's settings (upstream URLs, timeouts, body
    /// limit).
    pub fn build(self) -> Result<Gateway, GatewayError> {
        let config = self.pool.config();
        let (signal, stop) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            upstream: upstream::Upstream::new(config, stop).map_err(GatewayError::Client)?,
            metrics: self.metrics.unwrap_or_default(),
            models: routes::models::ModelsCache::default(),
            max_body: config.front_proxy_max_body_bytes,
            preview_max: config.trace_body_preview_max_bytes,
            keepalive: self.keepalive,
            body_idle: self.body_idle,
            responses: stored::ResponseStore::for_pool(&self.pool),
            stopping: Arc::new(Stopping {
                signal,
                ended: Default::default(),
            }),
            pool: self.pool,
        });
        let router = Gateway::routes(shared.clone());
        Ok(Gateway { shared, router })
    }
}

impl Gateway {
    /// A gateway over `pool` with default options.
    pub fn new(pool: Pool) -> Result<Self, GatewayError> {
        Self::builder(pool).build()
    }

    /// A builder over `pool`.
    pub fn builder(pool: Pool) -> GatewayBuilder {
        GatewayBuilder {
            pool,
            keepalive: KEEPALIVE_INTERVAL,
            body_idle: BODY_IDLE_TIMEOUT,
            metrics: None,
        }
    }

    fn routes(shared: Arc<Shared>) -> Router {
        let model_routes = Router::new()
            .route("/v1/responses", post(routes::responses::handle))
            .route("/v1/responses/compact", post(routes::responses::compact))
            .route(
                "/v1/responses/{id}",
                get(routes::responses::retrieve).delete(routes::responses::delete),
            )
            .route(
                "/v1/responses/{id}/input_items",
                get(routes::responses::input_items),
            )
            .route("/v1/responses/{id}/cancel", post(routes::responses::cancel))
            .route("/v1/chat/completions", post(routes::chat::handle))
            .route("/v1/models", get(routes::models::handle))
            .route("/v1/models/{id}", get(routes::models::retrieve))
            .route_layer(KeyAuthLayer::new(shared.pool.clone()));
        // Outside the key check: a browser's preflight carries no key. The 405 goes inside it,
        // so that a preflight reaches it (a method router's own fallback is not layered later),
        // and so does the 404 of an unknown API path (a page can read why its call failed).
        let model_routes = match stack::cors(&shared.pool.config().cors_allow_origins) {
            Some(cors) => model_routes
                .route("/v1/{*rest}", any(routes::not_found))
                .method_not_allowed_fallback(routes::method_not_allowed)
                .layer(cors),
            None => model_routes,
        };
        let hosts = Arc::new(hosts::OpenHosts::new(&shared.pool.config().allowed_hosts));
        let open_routes = Router::new()
            .route("/health", get(routes::health))
            .route("/metrics", get(routes::metrics))
            .route_layer(axum::middleware::from_fn_with_state(hosts, hosts::guard));
        let routes = model_routes
            .merge(open_routes)
            .fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .with_state(shared.clone());
        stack::stack(routes, shared.metrics.clone())
    }

    /// The gateway as an axum `Router` (with its layers), to serve or to nest in an app.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The pool it serves from.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }
}

impl<B> tower::Service<Request<B>> for Gateway
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <Router as tower::Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as tower::Service<Request<B>>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.router.call(req)
    }
}
