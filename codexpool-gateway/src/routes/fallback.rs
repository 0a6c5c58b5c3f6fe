//! The fallback upstream (`UPSTREAM_FALLBACK_BASE_URL`): where a request goes when no account can
//! serve it. It gets the client's own body (a Responses body without what only the gateway and
//! its accounts can read) and its answer goes back as is; a Responses answer is kept as the
//! accounts' are ([`crate::stored`]), so the conversation can go on through either.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use super::{FallbackRequest, bound, reject};
use crate::Shared;
use crate::adapt::responses::{Recall, event_response, for_fallback, response_id};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::record::Record;
use crate::sse::{DEFAULT_MAX_EVENT_BYTES, SseItem, SseParser};
use crate::stored::Pending;
use crate::upstream;

/// Sends the request to the fallback upstream and relays its answer as is (status, type, body);
/// `keep` is the answer to keep (a Responses client that did not say `store: false`), kept
/// once the answer is complete.
pub(super) async fn call(
    shared: &Shared,
    mut record: Record,
    req: FallbackRequest,
    stream: bool,
    keep: Option<Box<Pending>>,
) -> Response {
    let Some(fb) = &shared.upstream.fallback else {
        return reject(
            record,
            ApiError::bad_gateway("no_fallback", "no fallback upstream"),
            Protocol::None,
        );
    };
    record.entry.fallback = true;
    shared.metrics.fallback();
    let chat = req.path == "/chat/completions";
    let mut body = req.body;
    if req.path == "/responses" {
        let mut recall = shared.responses.as_ref().map(|r| r.recall(&req.key.id));
        let recall = recall.as_mut().map(|r| r as &mut dyn Recall);
        if let Some(expanded) = for_fallback(&body, recall) {
            body = expanded;
        }
    }
    let body = crate::adapt::bind_client_body(&body, bound(&req.key), chat);
    let mut rb = fb
        .client
        .post(format!("{}{}", fb.base, req.path))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = &fb.key {
        rb = rb.bearer_auth(k.expose());
    }
    if stream {
        rb = rb.header(header::ACCEPT, "text/event-stream");
    }
    let idle = shared.upstream.idle_timeout;
    let resp = match tokio::time::timeout(idle, rb.body(body).send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let err = ApiError::bad_gateway(
                "fallback_unreachable",
                format!("fallback upstream: {}", upstream::without_url(&e)),
            );
            return reject(record, err, Protocol::None);
        }
        Err(_) => return reject(record, ApiError::timeout(idle), Protocol::None),
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    record.entry.status = status.as_u16();
    record.first_byte();
    let guard = Guard {
        record: Some(record),
        status: status.as_u16(),
    };
    let keeper = keep
        .filter(|_| status == StatusCode::OK && req.path == "/responses")
        .map(|pending| Keeper::new(pending, content_type.as_ref()));
    let body = futures_util::stream::unfold(
        (resp.bytes_stream(), guard, keeper),
        move |(mut s, mut guard, mut keeper)| async move {
            use futures_util::StreamExt;
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(Ok(chunk))) => {
                    keeper = keeper.and_then(|k| k.see(&chunk));
                    Some((Ok::<Bytes, std::io::Error>(chunk), (s, guard, keeper)))
                }
                Ok(Some(Err(e))) => {
                    guard.end(Some("upstream_cut"));
                    Some((
                        Err(std::io::Error::other(upstream::without_url(&e))),
                        (s, guard, None),
                    ))
                }
                Ok(None) => {
                    guard.end(None);
                    if let Some(k) = keeper {
                        k.end();
                    }
                    None
                }
                Err(_) => {
                    guard.end(Some("upstream_timeout"));
                    Some((
                        Err(std::io::Error::other("the fallback upstream went silent")),
                        (s, guard, None),
                    ))
                }
            }
        },
    );
    let mut res = Response::new(Body::from_stream(body));
    *res.status_mut() = status;
    if let Some(ct) = content_type {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    res.headers_mut()
        .insert("x-codexpool-fallback", HeaderValue::from_static("1"));
    res
}

/// Finishes the fallback's record once: when its body ends, breaks off or goes silent.
struct Guard {
    record: Option<Record>,
    status: u16,
}

impl Guard {
    fn end(&mut self, class: Option<&str>) {
        if let Some(mut r) = self.record.take() {
            r.finish(self.status, class, None);
        }
    }
}

/// Keeps a Responses answer of the fallback as it goes by: the `response` of its
/// `response.completed` event, or the whole body when it is not a stream. Only an answer that
/// arrives whole is kept (a stream cut before its final event, or an answer larger than an SSE
/// event may be, is not).
enum Keeper {
    Stream(Box<SseParser>, Box<Pending>),
    Json(Vec<u8>, Box<Pending>),
}

impl Keeper {
    fn new(mut pending: Box<Pending>, content_type: Option<&HeaderValue>) -> Self {
        pending.served_by_fallback();
        let sse = content_type
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        match sse {
            true => Self::Stream(Box::default(), pending),
            false => Self::Json(Vec::new(), pending),
        }
    }

    /// Looks at the next chunk of the answer; `None` once there is nothing left to do (kept, or
    /// not to be kept).
    fn see(self, chunk: &Bytes) -> Option<Self> {
        match self {
            Self::Json(mut body, pending) => (body.len() + chunk.len() <= DEFAULT_MAX_EVENT_BYTES)
                .then(|| {
                    body.extend_from_slice(chunk);
                    Self::Json(body, pending)
                }),
            Self::Stream(mut parser, pending) => {
                parser.push(chunk.clone());
                loop {
                    match parser.next_item() {
                        Ok(Some(SseItem::Event(event))) => {
                            if event.event_type().as_deref() != Some("response.completed") {
                                continue;
                            }
                            if let Some(response) = event_response(event.data())
                                && let Some(id) = response_id(response.as_bytes())
                            {
                                pending.finish(&id, response.as_bytes());
                            }
                            return None;
                        }
                        Ok(Some(SseItem::Comment(_))) => {}
                        Ok(None) => return Some(Self::Stream(parser, pending)),
                        Err(_) => return None,
                    }
                }
            }
        }
    }

    /// The answer ended: a JSON one is kept now.
    fn end(self) {
        if let Self::Json(body, pending) = self
            && let Some(id) = response_id(&body)
        {
            pending.finish(&id, &body);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use codexpool_core::{ManualClock, Timestamp};

    use super::*;
    use crate::stored::{RESPONSES_TTL, ResponseStore};

    fn store() -> Arc<ResponseStore> {
        let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
        Arc::new(ResponseStore::new(1 << 20, RESPONSES_TTL, Arc::new(clock)))
    }

    /// Feeds `chunks` to a keeper for an answer of `content_type`, then ends it.
    fn feed(store: &Arc<ResponseStore>, content_type: &'static str, chunks: &[&str]) {
        let pending = Pending::new(store.clone(), "k", Vec::new());
        let mut keeper = Some(Keeper::new(
            pending,
            Some(&HeaderValue::from_static(content_type)),
        ));
        for chunk in chunks {
            keeper = keeper.and_then(|k| k.see(&Bytes::copy_from_slice(chunk.as_bytes())));
        }
        if let Some(k) = keeper {
            k.end();
        }
    }

    const ANSWER: &str = r#"{"id":"resp_1","object":"response","output":[]}"#;

    #[test]
    fn keeps_a_whole_answer_and_nothing_else() {
        let s = store();
        // JSON in pieces.
        feed(&s, "application/json", &[&ANSWER[..10], &ANSWER[10..]]);
        assert_eq!(s.get("k", "resp_1").as_deref(), Some(ANSWER.as_bytes()));
        // The final event split across chunks, after other events and a comment.
        let s = store();
        let stream = format!(
            ": hi\n\nevent: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"resp_1\"}}}}\n\nevent: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{ANSWER}}}\n\n"
        );
        let (a, b) = stream.split_at(stream.len() - 20);
        feed(&s, "text/event-stream; charset=utf-8", &[a, b]);
        assert_eq!(s.get("k", "resp_1").as_deref(), Some(ANSWER.as_bytes()));

        // Not kept: garbage, JSON without an id, a stream cut before its final event, a final
        // event without a response.
        let s = store();
        feed(&s, "application/json", &["{\"id\":\"resp_2\",\"out"]);
        feed(
            &s,
            "application/json",
            &[r#"{"object":"response"}"#, "\u{0}"],
        );
        feed(&s, "application/json", &["[\"resp_3\"]"]);
        feed(
            &s,
            "text/event-stream",
            &[
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_4\"}}\n\n",
            ],
        );
        feed(
            &s,
            "text/event-stream",
            &["data: {\"type\":\"response.completed\",\"response\":7}\n\n"],
        );
        for id in ["resp_2", "resp_3", "resp_4"] {
            assert_eq!(s.get("k", id), None, "{id}");
        }
    }
}
