//! The layer stack, assembled in one place. Outermost first; each layer says why it sits where it
//! sits.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Request, header};
use axum::response::IntoResponse;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::metrics::{Metrics, MetricsLayer};

/// Random request ids (16 hex characters).
#[derive(Clone, Copy, Default)]
struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = format!("req_{:016x}", rand::random::<u64>());
        id.parse().ok().map(RequestId::new)
    }
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

/// A 5xx the gateway answers on purpose — 502 (the upstream failed), 503 (load shed, no account
/// can serve), 504 (the upstream timed out) — is an ordinary outcome, in the request log with its
/// error class: a debug line. Anything else (a 500: a caught panic) is an error.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    match class {
        ServerErrorsFailureClass::StatusCode(status) if (502..=504).contains(&status.as_u16()) => {
            tracing::debug!(%status, ?latency, "request answered with an upstream or capacity error");
        }
        other => tracing::error!(classification = %other, ?latency, "response failed"),
    }
}

/// Wraps the routes in the gateway's layers.
pub(crate) fn stack(routes: Router, metrics: Arc<Metrics>) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    routes.layer(
        ServiceBuilder::new()
            // 1. Request id first: every later layer, log line and response carries it (a
            //    client's own `x-request-id` is kept).
            .layer(SetRequestIdLayer::new(x_request_id.clone(), RandomId))
            .layer(PropagateRequestIdLayer::new(x_request_id))
            // 2. Credentials are marked sensitive before anything can log headers.
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
                HeaderName::from_static("x-api-key"),
            ]))
            // 3. One span per request, inside the id so the span can show it.
            .layer(TraceLayer::new_for_http().on_failure(log_failure))
            // 4. Metrics outside the panic guard, so a panic still counts as a 500.
            .layer(MetricsLayer::new(metrics))
            // 5. A panicking handler becomes an OpenAI-shaped 500, not a dropped connection.
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}
