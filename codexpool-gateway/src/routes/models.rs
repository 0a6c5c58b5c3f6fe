//! `GET /v1/models`: the models the presented key may use, from the upstream catalogue when it
//! can be reached (cached for ten minutes), else from a built-in list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use codexpool_core::{Demand, PlatformKey};
use serde::Deserialize;

use super::PathId;
use crate::Shared;
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::upstream::CODEX_VERSION;

/// Models offered when the upstream catalogue cannot be read.
pub const BUILTIN_MODELS: &[&str] = &[
    "gpt-5-codex",
    "gpt-5",
    "gpt-5.1-codex",
    "gpt-5.1-codex-mini",
    "gpt-5.1",
];
const FRESH: Duration = Duration::from_secs(600);
/// A failed fetch is retried after this long.
const RETRY: Duration = Duration::from_secs(60);

/// A fetched list: when, for how long it holds, the ids.
type Cached = (Instant, Duration, Arc<Vec<String>>);

/// The cached catalogue.
#[derive(Default)]
pub(crate) struct ModelsCache {
    entry: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct Catalogue {
    models: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    slug: String,
}

impl ModelsCache {
    async fn get(&self, shared: &Shared) -> Arc<Vec<String>> {
        let mut entry = self.entry.lock().await;
        if let Some((at, ttl, list)) = entry.as_ref()
            && at.elapsed() < *ttl
        {
            return list.clone();
        }
        let builtin = || BUILTIN_MODELS.iter().map(|s| s.to_string()).collect();
        let (list, ttl) = match fetch(shared).await {
            Fetched::List(l) if !l.is_empty() => (l, FRESH),
            // Every account busy (or none usable) for a moment: the next call asks again.
            Fetched::NoAccount => return Arc::new(builtin()),
            _ => (builtin(), RETRY),
        };
        let list = Arc::new(list);
        *entry = Some((Instant::now(), ttl, list.clone()));
        list
    }
}

/// What asking for the catalogue gave.
enum Fetched {
    List(Vec<String>),
    /// No account could ask.
    NoAccount,
    /// The upstream did not answer with one.
    Failed,
}

/// The upstream catalogue, asked as the Codex CLI asks (its headers, one token refresh on a
/// 401), on an account free now: the cache is locked meanwhile, and other calls must not queue
/// behind a wait for one.
async fn fetch(shared: &Shared) -> Fetched {
    let Ok(lease) = shared.pool.accounts().acquire_now(&Demand::any()) else {
        return Fetched::NoAccount;
    };
    ask(shared, &lease)
        .await
        .map_or(Fetched::Failed, Fetched::List)
}

/// The catalogue asked on `lease`'s account; `None` when it cannot be read.
async fn ask(shared: &Shared, lease: &codexpool_core::Lease) -> Option<Vec<String>> {
    let url = shared
        .upstream
        .url(&format!("/models?client_version={CODEX_VERSION}"));
    let mut token = lease.access_token();
    for refreshed in [false, true] {
        let mut headers = HeaderMap::new();
        shared.upstream.client_headers(&mut headers);
        shared.upstream.account_headers(&mut headers, lease, &token);
        let resp = shared
            .upstream
            .client()
            .get(&url)
            .headers(headers)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if resp.status() == StatusCode::UNAUTHORIZED && !refreshed {
            token = shared
                .pool
                .auth()
                .refresh_after_unauthorized(lease.account_id(), &token)
                .await
                .ok()?;
            continue;
        }
        if !resp.status().is_success() {
            return None;
        }
        let cat: Catalogue = resp.json().await.ok()?;
        return Some(cat.models.into_iter().map(|m| m.slug).collect());
    }
    None
}

/// The ids the presented key may use.
async fn offered(shared: &Shared, key: &PlatformKey) -> Vec<String> {
    if let Some(bound) = &key.model {
        vec![bound.clone()]
    } else if !key.allowed_models.is_empty() {
        key.allowed_models.clone()
    } else {
        shared.models.get(shared).await.to_vec()
    }
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "openai"})
}

fn answer(body: serde_json::Value) -> Response {
    let mut res = axum::Json(body).into_response();
    res.extensions_mut().insert(Protocol::None);
    res.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    res
}

/// `GET /v1/models`.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
) -> Response {
    let data: Vec<serde_json::Value> = offered(&shared, &key)
        .await
        .iter()
        .map(|id| model_object(id))
        .collect();
    answer(serde_json::json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): the model when the key may use it.
pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Arc<PlatformKey>>,
    PathId(id): PathId,
) -> Response {
    if offered(&shared, &key).await.contains(&id) {
        return answer(model_object(&id));
    }
    let mut res = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("The model `{id}` does not exist or this key may not use it"),
    )
    .into_response();
    res.extensions_mut().insert(Protocol::None);
    res
}
