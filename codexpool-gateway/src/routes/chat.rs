//! `POST /v1/chat/completions`: Chat Completions in, Responses upstream, chat chunks (or one
//! `chat.completion`) back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use codexpool_core::PlatformKey;

use super::{Answer, Intake};
use crate::Shared;
use crate::adapt::chat_to_responses;
use crate::error::ApiError;
use crate::metrics::Protocol;

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let intake = match Intake::read(
        shared,
        key,
        headers,
        body,
        "/v1/chat/completions",
        Protocol::Chat,
    )
    .await
    {
        Ok(i) => i,
        Err(res) => return res,
    };
    let (up, options) = match chat_to_responses(&intake.bytes, &intake.overrides()) {
        Ok(x) => x,
        Err(e) => return intake.reject(ApiError::from_request(&e)),
    };
    let answer = if options.stream {
        Answer::ChatStream(options)
    } else {
        Answer::ChatJson(options)
    };
    intake.dispatch(up, answer, "/chat/completions", None).await
}
