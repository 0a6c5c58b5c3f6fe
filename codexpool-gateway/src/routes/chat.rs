//! `POST /v1/chat/completions`: Chat Completions in, Responses upstream, chat chunks (or one
//! `chat.completion`) back.

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
use crate::adapt::{Overrides, chat_to_responses};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::upstream::{Call, session_id};

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (mut record, arrived) = start_record(&shared, &headers, "/v1/chat/completions", &key.id);
    let bytes = match read_body(&headers, body, shared.max_body).await {
        Ok(b) => b,
        Err(e) => return reject(record, e, Protocol::Chat),
    };
    record.entry.body_preview = preview(&bytes, shared.preview_max);
    let overrides = Overrides {
        model: key.model.as_deref(),
        reasoning_effort: key.reasoning_effort.as_deref(),
    };
    let (up, options) = match chat_to_responses(&bytes, &overrides) {
        Ok(x) => x,
        Err(e) => return reject(record, ApiError::from_request(&e), Protocol::Chat),
    };
    record.entry.model = Some(up.model.clone());
    record.entry.stream = options.stream;
    if let Err(e) = key.resolve_model(Some(&up.model)) {
        return reject(record, ApiError::from_key(&e), Protocol::Chat);
    }
    let extra = dropped_header(up.dropped_params_header());
    let session_id = session_id(&headers, &key, up.prompt_cache_key.as_deref(), &up.body);
    let answer = if options.stream {
        Answer::ChatStream(options)
    } else {
        Answer::ChatJson(options)
    };
    let call = Call {
        key,
        body: up.body,
        model: up.model,
        path: "/responses",
        sse: true,
        forward_headers: None,
        session_id,
        record,
        arrived,
    };
    dispatch(
        shared,
        call,
        answer,
        extra,
        Protocol::Chat,
        FallbackRequest {
            body: bytes,
            path: "/chat/completions",
        },
    )
    .await
}
