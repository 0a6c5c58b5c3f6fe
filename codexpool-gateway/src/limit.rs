//! `ShedLayer`: a global cap on requests in flight (`HTTP_QUEUE_FACTOR` × workers, at least
//! `HTTP_QUEUE_MIN`), counted until each response body ends. Past the cap a request is refused at
//! once with 503 and `Retry-After: 1` — shedding load early beats queueing it until every
//! client times out. Paths named with [`ShedLayer::except`] (health checks, the admin API) are
//! neither counted nor refused: a busy gateway still says it is alive and still takes orders.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::body::Guarded;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Refuses requests beyond a number in flight.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    max: usize,
    except: &'static [&'static str],
    metrics: Option<Arc<Metrics>>,
}

impl ShedLayer {
    /// At most `max` requests in flight.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            except: &[],
            metrics: None,
        }
    }

    /// Refusals are counted in `metrics` (`codexpool_shed_requests_total`): outside the
    /// gateway's own layers, they would show nowhere else.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Requests to these paths (exactly) are let through, uncounted.
    pub fn except(mut self, paths: &'static [&'static str]) -> Self {
        self.except = paths;
        self
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.permits.clone(),
            max: self.max,
            except: self.except,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ShedLayer`].
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
    except: &'static [&'static str],
    metrics: Option<Arc<Metrics>>,
}

impl<S, B, R> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    R::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.except.contains(&req.uri().path()) {
            let fut = self.inner.call(req);
            return async move { Ok(fut.await?.map(Body::new)) }.boxed();
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            if let Some(m) = &self.metrics {
                m.shed();
            }
            let err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "overloaded",
                format!("the gateway is at its limit of {} requests in flight (HTTP_QUEUE_*); retry shortly", self.max),
            )
            .retry_after(1);
            return std::future::ready(Ok(err.into_response())).boxed();
        };
        let fut = self.inner.call(req);
        async move {
            let res = fut.await?;
            Ok(res.map(|body| Guarded::wrap(body, permit)))
        }
        .boxed()
    }
}
