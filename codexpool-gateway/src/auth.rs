//! `KeyAuthLayer`: the platform-key check in front of the model routes. The key comes from
//! `Authorization: Bearer …` or `x-api-key`; a verified key (its policy: bound model, allowed
//! models and groups, reasoning effort) goes into the request extensions as
//! `Arc<PlatformKey>`. Verification is O(1) from memory; a refusal is answered here with the
//! OpenAI error shape and never reaches a handler; it still gets its request-log row.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, header};
use axum::response::IntoResponse;
use codexpool_core::{PlatformKey, Pool};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::record::Record;

/// The presented key, if any: `Authorization: Bearer <key>` first, then `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> &str {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return v[7..].trim();
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
}

/// Requires a valid platform key.
#[derive(Clone)]
pub struct KeyAuthLayer {
    pool: Pool,
}

impl KeyAuthLayer {
    /// Verifies against the pool's keys (and logs refusals in its request log).
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for KeyAuthLayer {
    type Service = KeyAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KeyAuth {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// The service of [`KeyAuthLayer`].
#[derive(Clone)]
pub struct KeyAuth<S> {
    inner: S,
    pool: Pool,
}

impl<S, B> Service<Request<B>> for KeyAuth<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.pool.keys().verify(presented_key(req.headers())) {
            Ok(key) => {
                req.extensions_mut().insert::<Arc<PlatformKey>>(key);
                Either::Left(self.inner.call(req))
            }
            Err(e) => {
                let error = ApiError::from_key(&e);
                let id = crate::routes::request_id(req.headers());
                let key_id = e.key_id().map(str::to_owned);
                let mut record = Record::new(self.pool.clone(), id, req.uri().path(), key_id);
                record.finish(error.status.as_u16(), Some(&error.code), None);
                Either::Right(ready(Ok(error.into_response())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_then_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), "");
        h.insert("x-api-key", "sk-cp-b".parse().unwrap());
        assert_eq!(presented_key(&h), "sk-cp-b");
        h.insert(header::AUTHORIZATION, "bearer  sk-cp-a ".parse().unwrap());
        assert_eq!(presented_key(&h), "sk-cp-a");
        h.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(presented_key(&h), "sk-cp-b");
    }
}
