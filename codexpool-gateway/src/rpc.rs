//! `POST /rpc`: the admin API, JSON-RPC 2.0. Always behind a token (`Authorization: Bearer …`,
//! compared in constant time) and refused to browsers on other origins (a page on any site could
//! otherwise post to 127.0.0.1). Methods mirror the library: `account/*`, `account/login/*`,
//! `account/usage/*`, `apikey/*`, `requestlog/list`, `stats/summary`. Invalid params answer
//! `-32602` with a message naming the field.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use codexpool_core::auth::{AuthError, LoginOptions};
use codexpool_core::keys::{KeyPatch, NewKey};
use codexpool_core::request_log::{DEFAULT_LIMIT, RequestLogQuery};
use codexpool_core::usage::{LedgerGroup, LedgerQuery};
use codexpool_core::{
    AccountFilter, AccountPatch, AccountStatus, Error, Pool, RefreshScope, Secret, Timestamp,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

/// Largest RPC request body.
const MAX_RPC_BODY: usize = 8 * 1024 * 1024;

/// JSON-RPC error codes.
pub mod codes {
    /// Not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Params missing, of the wrong type, or refused.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Something failed inside.
    pub const INTERNAL: i64 = -32603;
    /// No record with that id.
    pub const NOT_FOUND: i64 = -32001;
    /// Already exists, or an id prefix matches several records.
    pub const CONFLICT: i64 = -32002;
    /// No account can serve / sign-in failed.
    pub const UNAVAILABLE: i64 = -32003;
}

/// A JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::NotFound { .. } => codes::NOT_FOUND,
            Error::Ambiguous { .. } | Error::Conflict(_) => codes::CONFLICT,
            Error::InvalidInput { .. } | Error::Config(_) | Error::Io { .. } => {
                codes::INVALID_PARAMS
            }
            // As the bindings map them: an unknown sign-in is not found, a bad argument a bad
            // parameter.
            Error::Auth(AuthError::UnknownAccount { .. } | AuthError::UnknownState) => {
                codes::NOT_FOUND
            }
            Error::Auth(AuthError::Invalid { .. } | AuthError::InvalidRedirect { .. }) => {
                codes::INVALID_PARAMS
            }
            Error::Auth(AuthError::Store { .. }) => codes::INTERNAL,
            Error::Pool(_) | Error::Auth(_) | Error::Key(_) => codes::UNAVAILABLE,
            _ => codes::INTERNAL,
        };
        Self::new(code, e.to_string())
    }
}

/// The RPC endpoint's state.
pub(crate) struct Rpc {
    pub pool: Pool,
    pub token: Secret,
    /// The secret of this server's file (`servers/*.json`), for [`proof`].
    pub proof_secret: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ProofQuery {
    nonce: String,
}

/// `GET /rpc/proof?nonce=N`: proves to a client that found this server through its file that
/// it is the server that wrote it, without either side sending a secret (see
/// [`crate::admin`]).
pub(crate) async fn proof(
    State(rpc): State<Arc<Rpc>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ProofQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if proxied(&headers) {
        return crate::server::admin_is_local().await;
    }
    let nonce = query.map(|q| q.0.nonce).unwrap_or_default();
    match &rpc.proof_secret {
        Some(secret) if (1..=128).contains(&nonce.len()) => {
            crate::admin::proof(secret, &nonce).into_response()
        }
        Some(_) => http_error(StatusCode::BAD_REQUEST, "nonce: 1 to 128 characters"),
        None => http_error(StatusCode::NOT_FOUND, "this server has no server file"),
    }
}

/// Whether a request came through a proxy: a reverse proxy on this machine (nginx, Caddy, a
/// tunnel) connects from loopback, yet its requests come from elsewhere. It says so in one of
/// these headers; the admin API and the sign-in callback answer none of them.
pub(crate) fn proxied(headers: &HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip", "via"]
        .iter()
        .any(|name| headers.contains_key(*name))
}

pub(crate) fn http_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message}}).to_string(),
    )
        .into_response()
}

/// `POST /rpc`.
pub(crate) async fn handle(
    State(rpc): State<Arc<Rpc>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if proxied(&headers) {
        return crate::server::admin_is_local().await;
    }
    let presented = crate::auth::presented_key(&headers);
    let ok: bool = presented
        .as_bytes()
        .ct_eq(rpc.token.expose().as_bytes())
        .into();
    if !ok || presented.is_empty() {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong RPC token (Authorization: Bearer <token>)",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !codexpool_core::config::is_loopback_url(origin)
    {
        return http_error(
            StatusCode::FORBIDDEN,
            "requests from other origins are refused",
        );
    }
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let answer = match serde_json::from_slice::<Value>(&bytes) {
        Err(e) => Some(error_reply(
            Value::Null,
            RpcError::new(codes::PARSE_ERROR, format!("not JSON: {e}")),
        )),
        Ok(Value::Array(batch)) if batch.is_empty() => Some(error_reply(
            Value::Null,
            RpcError::new(codes::INVALID_REQUEST, "empty batch"),
        )),
        Ok(Value::Array(batch)) => {
            let mut out = Vec::new();
            for req in batch {
                if let Some(r) = one(&rpc.pool, req).await {
                    out.push(r);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        Ok(req) => one(&rpc.pool, req).await,
    };
    match answer {
        Some(v) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// The whole request body. Only a body past [`MAX_RPC_BODY`] is too large (413); one that
/// cannot be read whole (its client broke off, a malformed chunk) is a bad request (400).
async fn read_body(body: Body) -> Result<bytes::Bytes, Response> {
    let limited = http_body_util::Limited::new(body, MAX_RPC_BODY);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(http_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "RPC body too large: at most {} MiB",
                MAX_RPC_BODY / (1024 * 1024)
            ),
        )),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read an RPC request body");
            Err(http_error(
                StatusCode::BAD_REQUEST,
                "the RPC body could not be read whole (cut short or malformed)",
            ))
        }
    }
}

fn error_reply(id: Value, e: RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
}

/// One request; `None` for a notification.
async fn one(pool: &Pool, req: Value) -> Option<Value> {
    let Value::Object(mut obj) = req else {
        return Some(error_reply(
            Value::Null,
            RpcError::new(codes::INVALID_REQUEST, "a request must be a JSON object"),
        ));
    };
    let id = obj.remove("id");
    let notification = id.is_none();
    let id = id.unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_reply(
            id,
            RpcError::new(codes::INVALID_REQUEST, "jsonrpc must be \"2.0\""),
        ));
    }
    let Some(method) = obj
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Some(error_reply(
            id,
            RpcError::new(codes::INVALID_REQUEST, "method must be a string"),
        ));
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    let result = call(pool, &method, params).await;
    if notification {
        return None;
    }
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => error_reply(id, e),
    })
}

/// Typed params: `null`/absent reads as `{}`; the message names the offending field (serde's
/// own names it only when it is missing or unknown, not when its value is wrong).
fn params<T: DeserializeOwned>(v: Value) -> Result<T, RpcError> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let message = match path.as_str() {
            "." => format!("invalid params: {}", e.inner()),
            _ => format!("invalid params: `{path}`: {}", e.inner()),
        };
        RpcError::new(codes::INVALID_PARAMS, message)
    })
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(codes::INTERNAL, e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Id {
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListAccounts {
    group: Option<String>,
    tag: Option<String>,
    status: Option<AccountStatus>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateAccount {
    id: String,
    label: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    group: Option<Option<String>>,
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    note: Option<Option<String>>,
    sort: Option<i64>,
    enabled: Option<bool>,
}

/// Tells "absent" (`None`) from "null" (`Some(None)`).
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Import {
    /// A file or folder on the server's machine.
    path: Option<String>,
    /// A document's text.
    content: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Export {
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    model: Option<String>,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    allowed_groups: Vec<String>,
    reasoning_effort: Option<String>,
    expires_at: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    id: String,
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    model: Option<Option<String>>,
    allowed_models: Option<Vec<String>>,
    allowed_groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    reasoning_effort: Option<Option<String>>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<Timestamp>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListLog {
    limit: Option<usize>,
    key_id: Option<String>,
    account_id: Option<String>,
    after_id: Option<i64>,
    /// The oldest rows after `after_id` first: following the log leaves no gap.
    #[serde(default)]
    oldest_first: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Summary {
    group_by: Option<LedgerGroup>,
    since: Option<Timestamp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptionalId {
    id: Option<String>,
}

/// An account with its usage and runtime state, as listings show it.
fn account_view(pool: &Pool, id: &str) -> Result<Value, RpcError> {
    let a = pool.accounts().get(id)?;
    let usage = pool.usage().get(&a.id)?;
    let runtime = pool.accounts().runtime(&a.id)?;
    let mut v = to_value(&a)?;
    v["usage"] = to_value(&usage)?;
    v["runtime"] = to_value(&runtime)?;
    Ok(v)
}

async fn call(pool: &Pool, method: &str, p: Value) -> Result<Value, RpcError> {
    let accounts = pool.accounts();
    let keys = pool.keys();
    match method {
        "account/list" => {
            let q: ListAccounts = params(p)?;
            let mut f = AccountFilter::default();
            f.group = q.group;
            f.tag = q.tag;
            f.status = q.status;
            f.text = q.text;
            let mut list = Vec::new();
            for a in accounts.list(&f) {
                match account_view(pool, &a.id) {
                    Ok(v) => list.push(v),
                    // Removed since the listing (a delete or a reload meanwhile): no longer
                    // there to show, as `/metrics` and `stats/summary` leave it out.
                    Err(e) if e.code == codes::NOT_FOUND => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Value::Array(list))
        }
        "account/get" => account_view(pool, &params::<Id>(p)?.id),
        "account/update" => {
            let q: UpdateAccount = params(p)?;
            let mut patch = AccountPatch::default();
            patch.label = q.label;
            patch.group = q.group;
            patch.tags = q.tags;
            patch.note = q.note;
            patch.sort = q.sort;
            // One write: a failure leaves the account as it was, not half changed.
            if let Some(on) = q.enabled {
                patch = patch.enabled(on);
            }
            let a = accounts.update(&q.id, patch).await?;
            account_view(pool, &a.id)
        }
        "account/delete" => to_value(accounts.remove(&params::<Id>(p)?.id).await?),
        "account/import" => {
            let q: Import = params(p)?;
            let report = match (q.path, q.content) {
                (Some(path), None) => accounts.import_path(&path).await?,
                (None, Some(content)) => accounts.import_bytes("rpc", content.as_bytes()).await,
                _ => {
                    return Err(RpcError::new(
                        codes::INVALID_PARAMS,
                        "invalid params: give exactly one of `path` or `content`",
                    ));
                }
            };
            to_value(report)
        }
        "account/export" => {
            let q: Export = params(p)?;
            match q.path {
                Some(path) => Ok(
                    json!({"written": accounts.export_to_file(&path, &AccountFilter::default()).await?, "path": path}),
                ),
                None => to_value(accounts.export(&AccountFilter::default())),
            }
        }
        "account/usage/list" => to_value(pool.usage().list()),
        "account/usage/refresh" => {
            let q: OptionalId = params(p)?;
            refresh_usage(pool, q.id.as_deref()).await
        }
        m if m.starts_with("account/login/") => login_rpc(pool, m, p).await,
        "apikey/create" => {
            let q: CreateKey = params(p)?;
            let mut new = NewKey::named(q.name);
            new.model = q.model;
            new.allowed_models = q.allowed_models;
            new.allowed_groups = q.allowed_groups;
            new.reasoning_effort = q.reasoning_effort;
            new.expires_at = q.expires_at;
            let created = keys.create(new).await?;
            let mut v = to_value(&created.key)?;
            v["secret"] = Value::String(created.secret.expose().to_string());
            Ok(v)
        }
        "apikey/list" => to_value(keys.list()),
        "apikey/update" => {
            let q: UpdateKey = params(p)?;
            let mut patch = KeyPatch::default();
            patch.name = q.name;
            patch.model = q.model;
            patch.allowed_models = q.allowed_models;
            patch.allowed_groups = q.allowed_groups;
            patch.reasoning_effort = q.reasoning_effort;
            patch.enabled = q.enabled;
            patch.expires_at = q.expires_at;
            to_value(keys.update(&q.id, patch).await?)
        }
        "apikey/enable" => to_value(keys.enable(&params::<Id>(p)?.id).await?),
        "apikey/disable" => to_value(keys.disable(&params::<Id>(p)?.id).await?),
        "apikey/delete" => to_value(keys.delete(&params::<Id>(p)?.id).await?),
        "requestlog/list" => {
            let q: ListLog = params(p)?;
            let mut query = RequestLogQuery::latest(q.limit.unwrap_or(DEFAULT_LIMIT).min(10_000));
            query.key_id = q.key_id;
            query.account_id = q.account_id;
            query.after_id = q.after_id;
            query.oldest_first = q.oldest_first;
            to_value(pool.request_log().list(&query).await?)
        }
        // Another process changed the database: read it now, not at the next look.
        "pool/catch_up" => Ok(json!({"reloaded": pool.catch_up().await?})),
        "stats/summary" => {
            let q: Summary = params(p)?;
            let mut query = LedgerQuery::by(q.group_by.unwrap_or(LedgerGroup::Account));
            query.since = q.since;
            let rows = pool.usage().ledger(&query).await?;
            let all = accounts.list(&AccountFilter::default());
            let usable = all
                .iter()
                .filter(|a| accounts.runtime(&a.id).is_ok_and(|r| r.usable))
                .count();
            Ok(json!({
                "accounts": all.len(),
                "usable_accounts": usable,
                "keys": keys.len(),
                "inflight": accounts.total_inflight(),
                "ledger": to_value(rows)?,
            }))
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("no method {other:?}"),
        )),
    }
}

/// `account/usage/refresh`: polls one account (or all) now and returns each result.
async fn refresh_usage(pool: &Pool, id: Option<&str>) -> Result<Value, RpcError> {
    let scope = match id {
        Some(id) => RefreshScope::Account(id.to_string()),
        None => RefreshScope::All,
    };
    let results = pool.usage().refresh(scope, |_| {}).await?;
    to_value(results)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LoginStartParams {
    label: Option<String>,
    group: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    note: Option<String>,
    workspace_id: Option<String>,
    /// Device-code sign-in instead of a browser redirect.
    #[serde(default)]
    device: bool,
    /// Start the callback listener on `LOGIN_ADDR` (default true).
    listen: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateParams {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteParams {
    redirect_url: String,
}

/// `account/login/start|status|complete|cancel`.
async fn login_rpc(pool: &Pool, method: &str, p: Value) -> Result<Value, RpcError> {
    let auth = pool.auth();
    let from_auth = |e: AuthError| RpcError::from(codexpool_core::Error::from(e));
    match method {
        "account/login/start" => {
            let p: LoginStartParams = params(p)?;
            let mut opts = LoginOptions::default();
            opts.label = p.label;
            opts.group = p.group;
            opts.tags = p.tags;
            opts.note = p.note;
            opts.allowed_workspace_id = p.workspace_id;
            opts.listen = p.listen.unwrap_or(true);
            if p.device {
                let login = auth.device_start(opts).await.map_err(from_auth)?;
                let v = to_value(&login)?;
                // The device flow finishes in the background; `account/login/status` follows it.
                tokio::spawn(async move {
                    if let Err(e) = login.wait().await {
                        tracing::info!(error = %e, "device sign-in ended without an account");
                    }
                });
                Ok(v)
            } else {
                let handle = auth.login_start(opts).await.map_err(from_auth)?;
                to_value(handle.info())
            }
        }
        "account/login/status" => to_value(
            auth.login_status(&params::<StateParams>(p)?.state)
                .await
                .map_err(from_auth)?,
        ),
        "account/login/complete" => {
            let done = auth
                .login_complete(&params::<CompleteParams>(p)?.redirect_url)
                .await
                .map_err(from_auth)?;
            Ok(json!({"account": to_value(&done.account)?, "created": done.created}))
        }
        "account/login/cancel" => {
            let cancelled = auth
                .login_cancel(&params::<StateParams>(p)?.state)
                .await
                .map_err(from_auth)?;
            Ok(json!({"cancelled": cancelled}))
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("no method {other:?}"),
        )),
    }
}
