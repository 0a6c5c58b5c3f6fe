//! `POST /v1/responses`: Responses in, Responses upstream. Bodies from ordinary clients follow
//! the body rules (PROTOCOL.md §4); the Codex CLI's are forwarded as sent, with its headers.
//! `stream: false` clients get the final `response` object.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use codexpool_core::PlatformKey;

use super::{
    Answer, FallbackRequest, dispatch, dropped_header, preview, read_body, reject, start_record,
};
use crate::Shared;
use crate::adapt::{Overrides, apply_body_rules, codex_passthrough, is_codex_client};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::upstream::{Call, forwardable, session_id};

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let codex = is_codex_client(
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or(""))),
    );
    let protocol = if codex {
        Protocol::Codex
    } else {
        Protocol::Responses
    };
    let (mut record, arrived) = start_record(&shared, &headers, "/v1/responses", &key.id);
    let bytes = match read_body(&headers, body, shared.max_body).await {
        Ok(b) => b,
        Err(e) => return reject(record, e, protocol),
    };
    record.entry.body_preview = preview(&bytes, shared.preview_max);
    let overrides = Overrides {
        model: key.model.as_deref(),
        reasoning_effort: key.reasoning_effort.as_deref(),
    };
    let adapted = if codex {
        codex_passthrough(bytes.clone(), &overrides)
    } else {
        apply_body_rules(&bytes, &overrides)
    };
    let up = match adapted {
        Ok(x) => x,
        Err(e) => return reject(record, ApiError::from_request(&e), protocol),
    };
    record.entry.model = Some(up.model.clone());
    record.entry.stream = up.stream;
    if let Err(e) = key.resolve_model(Some(&up.model)) {
        return reject(record, ApiError::from_key(&e), protocol);
    }
    let extra = dropped_header(up.dropped_params_header());
    let session_id = session_id(&headers, &key, up.prompt_cache_key.as_deref(), &up.body);
    let answer = if up.stream {
        Answer::ResponsesStream
    } else {
        Answer::ResponsesJson
    };
    let call = Call {
        key,
        body: up.body,
        model: up.model,
        path: "/responses",
        sse: true,
        forward_headers: codex.then(|| forwardable(&headers)),
        session_id,
        record,
        arrived,
    };
    dispatch(
        shared,
        call,
        answer,
        extra,
        protocol,
        FallbackRequest {
            body: bytes,
            path: "/responses",
        },
    )
    .await
}

/// `POST /v1/responses/compact`: the Codex CLI's history compaction, forwarded as sent to
/// `{base}/responses/compact` on the conversation's account; the JSON answer comes back as is.
pub(crate) async fn compact(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let codex = is_codex_client(
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or(""))),
    );
    let protocol = if codex {
        Protocol::Codex
    } else {
        Protocol::Responses
    };
    let (mut record, arrived) = start_record(&shared, &headers, "/v1/responses/compact", &key.id);
    let bytes = match read_body(&headers, body, shared.max_body).await {
        Ok(b) => b,
        Err(e) => return reject(record, e, protocol),
    };
    let overrides = Overrides {
        model: key.model.as_deref(),
        reasoning_effort: key.reasoning_effort.as_deref(),
    };
    let up = match codex_passthrough(bytes, &overrides) {
        Ok(x) => x,
        Err(e) => return reject(record, ApiError::from_request(&e), protocol),
    };
    record.entry.model = Some(up.model.clone());
    if let Err(e) = key.resolve_model(Some(&up.model)) {
        return reject(record, ApiError::from_key(&e), protocol);
    }
    let session_id = session_id(&headers, &key, up.prompt_cache_key.as_deref(), &up.body);
    let call = Call {
        key,
        body: up.body,
        model: up.model,
        path: "/responses/compact",
        sse: false,
        forward_headers: codex.then(|| forwardable(&headers)),
        session_id,
        record,
        arrived,
    };
    super::dispatch_json(shared, call, protocol).await
}
