//! The layer stack, assembled in one place. Outermost first; each layer says why it sits where it
//! sits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::metrics::{Metrics, MetricsLayer};

/// The request id header: set by [`RequestIdLayer`], read by the routes for the request log.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an `x-request-id` — the client's own (up to 256 visible ASCII
/// characters), else `req_` and 16 random hex digits — and the response the same. One layer,
/// the id written in place: tower-http's set + propagate pair also formats a string, stores an
/// extension nobody reads and adds a future, ~2 µs more per request at c=32 (3 % of the
/// gateway's CPU).
#[derive(Clone, Copy)]
struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService(inner)
    }
}

#[derive(Clone)]
struct RequestIdService<S>(S);

impl<S, B, R> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = WithRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(id) if usable_request_id(id) => id.clone(),
            // None, or one the request log could not hold as sent: ours instead.
            _ => {
                let id = random_request_id();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        WithRequestId {
            inner: self.0.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestIdService`]: the id goes on the response unless the
    /// handler set one.
    struct WithRequestId<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for WithRequestId<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().entry(X_REQUEST_ID).or_insert(id);
        }
        Poll::Ready(Ok(res))
    }
}

/// Longest client `x-request-id` kept.
const MAX_CLIENT_REQUEST_ID: usize = 256;

/// A client's id is kept when it is 1 to [`MAX_CLIENT_REQUEST_ID`] visible ASCII characters.
fn usable_request_id(id: &HeaderValue) -> bool {
    let b = id.as_bytes();
    (1..=MAX_CLIENT_REQUEST_ID).contains(&b.len()) && b.iter().all(u8::is_ascii_graphic)
}

/// `req_` and 16 random hex digits.
fn random_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_0000000000000000";
    let n = rand::random::<u64>();
    for (i, digit) in id[4..].iter_mut().enumerate() {
        *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Always visible ASCII; the fallback is never taken.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("req_0"))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "internal_error",
        "the gateway hit an internal error; it is logged",
    )
    .into_response()
}

/// A request's span: its id, method and path. Not the query, which can hold a secret (a
/// sign-in's `code` on `/auth/callback`), nor other headers (credentials).
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    // Fields are read only when the span is enabled.
    tracing::debug_span!(
        "request",
        id = req.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok()),
        method = %req.method(),
        path = req.uri().path(),
    )
}

/// A 5xx the gateway answers on purpose — 502 (the upstream failed), 503 (load shed, no account
/// can serve, the upstream overloaded), 504 (the upstream timed out) — is an ordinary outcome, in the request log with its
/// error class: a debug line. Anything else (a 500: a caught panic) is an error.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(status) if (502..=504).contains(&status.as_u16()) => {
            tracing::debug!(%status, ?latency, "request answered with an upstream or capacity error");
        }
        other => tracing::error!(classification = %other, ?latency, "response failed"),
    }
}

/// The CORS layer of the API routes for `origins` (`CORS_ALLOW_ORIGINS`); `None` when no
/// origin may call them (no CORS headers at all, a preflight is a 405). Credentials are never
/// allowed: a page sends a platform key as any client does, no cookie is read.
pub(crate) fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
    let allow = match origins {
        [] => return None,
        [any] if any == "*" => AllowOrigin::from(Any),
        list => AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::DELETE,
            ])
            // The headers the page asks for: `*` would not cover `Authorization`, which is
            // how a page sends its key.
            .allow_headers(AllowHeaders::mirror_request())
            // What a page may read of an answer besides the basic headers.
            .expose_headers([
                X_REQUEST_ID,
                header::RETRY_AFTER,
                HeaderName::from_static("x-codexpool-account"),
                HeaderName::from_static("x-codexpool-dropped-params"),
                HeaderName::from_static("x-codexpool-fallback"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Wraps the routes in the gateway's layers.
pub(crate) fn stack(routes: Router, metrics: Arc<Metrics>) -> Router {
    routes.layer(
        ServiceBuilder::new()
            // 1. Request id first: every later layer, log line and response carries it (a
            //    client's own `x-request-id` is kept).
            .layer(RequestIdLayer)
            // 2. Credentials are marked sensitive before anything can log headers.
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                HeaderName::from_static("x-api-key"),
            ]))
            // 3. One span per request, inside the id so the span can show it.
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_failure(log_failure),
            )
            // 4. Metrics outside the panic guard, so a panic still counts as a 500.
            .layer(MetricsLayer::new(metrics))
            // 5. A panicking handler becomes an OpenAI-shaped 500, not a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}
