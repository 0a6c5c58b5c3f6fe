//! `ApiError`: every error a client can get from the gateway, and the one place where an error
//! becomes an HTTP response — the OpenAI shape `{"error":{"message","type","code","param"}}` with
//! the right status, and `Retry-After` on 429 and 503. Internals are logged, not sent.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use codexpool_core::keys::KeyError;
use codexpool_core::{PoolError, Timestamp};
use serde::Serialize;

use crate::adapt::{FailureKind, RequestError, UpstreamFailure};

/// The codes the gateway acts on as well as reports: a silent upstream answers 504 and counts
/// as a timeout, an unreachable one counts as a connection failure.
pub(crate) const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
pub(crate) const UPSTREAM_UNREACHABLE: &str = "upstream_unreachable";

/// A gateway error, rendered as an OpenAI error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI `error.type`.
    pub kind: &'static str,
    /// OpenAI `error.code`.
    pub code: String,
    /// The sentence a person reads.
    pub message: String,
    /// The offending parameter, when there is one.
    pub param: Option<String>,
    /// Seconds to put in `Retry-After`.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
    /// For `usage_limit_reached` (the Codex CLI reads them to say when to come back).
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_in_seconds: Option<u64>,
}

/// `Retry-After` for a time: whole seconds rounded up, at least 1 (a client that comes back on
/// the rounded-down second finds the account still resting and spends a retry).
pub(crate) fn retry_after_secs(at: Timestamp, now: Timestamp) -> u64 {
    u64::try_from(at.since(now).as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl ApiError {
    /// An error with a status, type, code and message.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code: code.into(),
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// 404 for an unknown route.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {path}"),
        )
    }

    /// 405 for a known route with another method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// 413 for a body over `FRONT_PROXY_MAX_BODY_BYTES`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!(
                "request body is larger than {limit} bytes (CODEXPOOL_FRONT_PROXY_MAX_BODY_BYTES)"
            ),
        )
    }

    /// 415 for a body that is not JSON.
    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!("expected Content-Type: application/json, got {got:?}"),
        )
    }

    /// 415 for a compressed body.
    pub fn unsupported_encoding(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!("request bodies are read uncompressed, got Content-Encoding {got:?}"),
        )
    }

    /// 502: the upstream broke (garbage, a cut before any output).
    pub fn bad_gateway(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "server_error", code, message)
    }

    /// 504: the upstream went silent for longer than the idle timeout.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            UPSTREAM_TIMEOUT,
            format!(
                "the upstream sent nothing for {} s (CODEXPOOL_UPSTREAM_STREAM_IDLE_TIMEOUT_SECS)",
                after.as_secs()
            ),
        )
    }

    /// 503 `server_stopped`: the server's shutdown grace ended the request.
    pub(crate) fn server_stopped() -> Self {
        let cut = crate::sse::Cut::<std::convert::Infallible>::Stopped;
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            cut.code(),
            cut.to_string(),
        )
    }

    /// An upstream answer cut before its end, for a client that has seen none of it: a 504
    /// after a silence, a 503 when the server stopped it, else a 502.
    pub(crate) fn from_cut<E: std::fmt::Display>(cut: &crate::sse::Cut<E>) -> Self {
        match cut {
            crate::sse::Cut::Silent(idle) => Self::timeout(*idle),
            crate::sse::Cut::Stopped => Self::server_stopped(),
            cut => Self::bad_gateway(cut.code(), cut.to_string()),
        }
    }

    /// In the Codex backend's own words, for the Codex CLI: it recognises a spent quota by
    /// `error.type == "usage_limit_reached"` (with `resets_at`, `resets_in_seconds`) and then
    /// tells its user when to come back instead of retrying.
    pub fn for_codex(mut self) -> Self {
        if self.code == "usage_limit_reached" {
            self.kind = "usage_limit_reached";
        }
        self
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let resets_in = self
            .retry_after
            .filter(|_| self.kind == "usage_limit_reached");
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                code: &self.code,
                param: self.param.as_deref(),
                resets_at: resets_in.map(|s| Timestamp::now().as_secs().unsigned_abs() + s),
                resets_in_seconds: resets_in,
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The error as one SSE `data:` frame, for a stream that already started.
    pub fn sse_frame(&self) -> bytes::Bytes {
        let mut out = bytes::BytesMut::new();
        crate::sse::write_data(&mut out, &self.body());
        out.freeze()
    }

    /// From a refused platform key.
    pub fn from_key(e: &KeyError) -> Self {
        let (status, code) = match e {
            KeyError::Missing => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            KeyError::Unknown => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            KeyError::Disabled { .. } => (StatusCode::FORBIDDEN, "api_key_disabled"),
            KeyError::Expired { .. } => (StatusCode::FORBIDDEN, "api_key_expired"),
            KeyError::ModelNotAllowed { .. } => (StatusCode::FORBIDDEN, "model_not_allowed"),
            _ => (StatusCode::FORBIDDEN, "forbidden"),
        };
        let mut err = Self::new(status, "invalid_request_error", code, e.to_string());
        if matches!(e, KeyError::ModelNotAllowed { .. }) {
            err.param = Some("model".into());
        }
        err
    }

    /// From a pool that could not lease an account; `now` turns reset times into `Retry-After`.
    pub fn from_pool(e: &PoolError, now: Timestamp) -> Self {
        let (status, kind, code) = match e {
            PoolError::Exhausted { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "usage_limit_reached",
            ),
            PoolError::CoolingDown { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "accounts_cooling_down",
            ),
            PoolError::Busy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "accounts_busy",
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "no_account_available",
            ),
        };
        // Without a time of its own, the rendering says 1 s (see `into_response`).
        let err = Self::new(status, kind, code, e.to_string());
        match e.retry_at() {
            Some(at) => err.retry_after(retry_after_secs(at, now)),
            None => err,
        }
    }

    /// From a client body the adapters refused.
    pub fn from_request(e: &RequestError) -> Self {
        let mut err = Self::bad_request("invalid_request", e.to_string());
        err.param = e.param().map(str::to_string);
        err
    }

    /// From the last upstream failure, when no other account can help.
    pub fn from_upstream(f: &UpstreamFailure) -> Self {
        let status = match f.kind {
            // The upstream's own 4xx; a request refused in a 200 (a proxy's JSON) is a 400.
            FailureKind::BadRequest => f
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(StatusCode::is_client_error)
                .unwrap_or(StatusCode::BAD_REQUEST),
            FailureKind::UsageLimit { .. } | FailureKind::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            // The account could not serve (its sign-in died, it is deactivated or not allowed
            // to): no account was available, the upstream did not break.
            FailureKind::Unauthorized | FailureKind::Deactivated | FailureKind::Forbidden => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // As OpenAI answers it: a moment's wait mends it (clients retry a 503).
            FailureKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            _ if f.code.as_deref() == Some(UPSTREAM_TIMEOUT) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        // Said once: the gateway's own words about the upstream already name it.
        let message = if f.message.starts_with("upstream") {
            f.message.clone()
        } else {
            format!("upstream: {}", f.message)
        };
        let mut error = Self::new(status, f.error_type(), f.error_code(), message);
        error.param.clone_from(&f.param);
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body()).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // 429 and 503 always say when to come back. Without a known time, in a second: what
        // waiting can mend (an account freed, a sign-in renewed or added with the CLI, which a
        // running server sees within a second) is as likely then as later.
        let busy = matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        if let Some(secs) = self.retry_after.or(busy.then_some(1)) {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        let now = Timestamp::from_millis(1_000_000);
        let at = |ms: i64| Timestamp::from_millis(1_000_000 + ms);
        assert_eq!(retry_after_secs(at(44_000), now), 44);
        assert_eq!(retry_after_secs(at(44_001), now), 45);
        assert_eq!(retry_after_secs(at(200), now), 1);
        assert_eq!(retry_after_secs(at(-5_000), now), 1, "past: at least 1");
    }

    #[test]
    fn renders_the_openai_shape_with_retry_after() {
        let now = Timestamp::from_secs(1000);
        let e = ApiError::from_pool(
            &PoolError::Exhausted {
                resets_at: Timestamp::from_secs(1090),
            },
            now,
        );
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(90));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "usage_limit_reached");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("usage limit")
        );
        let res = e.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "90");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn every_pool_refusal_says_when_to_come_back() {
        let now = Timestamp::from_secs(1000);
        let back = Timestamp::from_secs(1012);
        let cases = [
            (PoolError::NoAccounts, "1"),
            (PoolError::NoneInGroups { groups: vec![] }, "1"),
            (
                PoolError::NoneActive {
                    disabled: 1,
                    needs_login: 1,
                    banned: 0,
                },
                "1",
            ),
            (PoolError::Exhausted { resets_at: back }, "12"),
            (PoolError::CoolingDown { until: back }, "12"),
            (
                PoolError::Busy {
                    cap: 1,
                    waited: std::time::Duration::ZERO,
                },
                "1",
            ),
            (
                PoolError::AllTried {
                    tried: 2,
                    back_at: None,
                },
                "1",
            ),
            (
                PoolError::AllTried {
                    tried: 2,
                    back_at: Some(back),
                },
                "12",
            ),
        ];
        for (e, secs) in cases {
            let res = ApiError::from_pool(&e, now).into_response();
            assert_eq!(res.headers()[header::RETRY_AFTER], secs, "{e}");
        }
        // Other statuses promise nothing.
        let res = ApiError::bad_request("x", "y").into_response();
        assert!(!res.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn key_errors_are_distinct() {
        let codes: Vec<(StatusCode, String)> = [
            KeyError::Missing,
            KeyError::Unknown,
            KeyError::Disabled { key_id: "k".into() },
            KeyError::Expired {
                key_id: "k".into(),
                at: Timestamp::from_secs(1),
            },
        ]
        .iter()
        .map(|e| {
            let a = ApiError::from_key(e);
            (a.status, a.code)
        })
        .collect();
        assert_eq!(
            codes
                .iter()
                .map(|c| c.1.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len(),
            4
        );
        assert_eq!(codes[0].0, StatusCode::UNAUTHORIZED);
        assert_eq!(codes[2].0, StatusCode::FORBIDDEN);
    }
}
