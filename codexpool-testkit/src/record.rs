//! The request log: [`RecordedRequest`] and the middleware that buffers each request's body,
//! attributes it to an account and appends it to the log before the handler runs. In instant mode
//! the endpoints a load test hammers skip it: the model endpoints are only counted, the model
//! listings not even that (an unbounded log would grow by gigabytes under load).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::auth::{bearer, header_str};
use crate::state::Shared;

/// Largest request body the fake accepts.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// The sequence number of the recorded request a handler is serving.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seq(pub(crate) u64);

/// How a streamed answer ended, as seen by the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamStatus {
    /// Still being sent.
    Open,
    /// Every byte was handed to the connection.
    Finished,
    /// The script dropped the connection on purpose ([`crate::Reply::CutMidStream`]).
    Cut,
    /// The client went away (or the server shut down) before the end: the upstream was cancelled.
    Cancelled,
}

/// One request the fake received.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// Position in the log (increasing, never reused).
    pub seq: u64,
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, `""` when there is none.
    pub query: String,
    /// The headers (names are lowercase, as `http` stores them).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The account the request was for: its `ChatGPT-Account-ID` header, else the owner of its
    /// bearer token, else (token endpoint) the owner of the code or refresh token it presented.
    pub account_id: Option<String>,
    /// For streamed answers (SSE, or bodies with scripted delays): how the stream ended.
    pub stream: Option<StreamStatus>,
}

impl RecordedRequest {
    /// The body parsed as JSON.
    pub fn body_json(&self) -> serde_json::Result<Value> {
        serde_json::from_slice(&self.body)
    }

    /// The body parsed as `application/x-www-form-urlencoded` (later duplicates win).
    pub fn body_form(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// A header as a string (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query parsed into pairs (percent-decoded; later duplicates win).
    pub fn query_params(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// One query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .last()
    }
}

/// Whether instant mode leaves requests to a path out of the log: the model endpoints (served
/// by pre-rendered bytes) and the model listings.
fn unrecorded_in_instant_mode(path: &str) -> bool {
    matches!(
        path,
        "/backend-api/codex/responses"
            | "/v1/chat/completions"
            | "/v1/responses"
            | "/backend-api/codex/models"
            | "/v1/models"
    )
}

/// The recording middleware.
pub(crate) async fn record(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    if shared.config.instant && unrecorded_in_instant_mode(req.uri().path()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body unreadable or too large",
            )
                .into_response();
        }
    };
    let account_id = match header_str(&parts.headers, "chatgpt-account-id") {
        Some(id) => Some(id.to_owned()),
        None => bearer(&parts.headers).and_then(|t| shared.inner().account_of_access_token(t)),
    };
    let seq = shared.push_record(RecordedRequest {
        seq: 0,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
        account_id,
        stream: None,
    });
    parts.extensions.insert(Seq(seq));
    next.run(Request::from_parts(parts, Body::from(body))).await
}
