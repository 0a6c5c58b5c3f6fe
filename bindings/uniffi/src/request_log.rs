//! `RequestLog`: one row per gateway request (who, through which accounts, how it went, how
//! long it took), read back over core's [`codexpool_core::RequestLog`].

use codexpool_core::request_log::{RequestLogEntry as CoreEntry, RequestLogQuery as CoreQuery};

use crate::runtime::{Home, HomeExt};
use crate::usage::TokenCounts;
use crate::{CodexPoolError, ms};

/// One client request. Times are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, uniffi::Record)]
pub struct RequestLogEntry {
    /// Row id.
    pub id: i64,
    /// The request id (also the `x-request-id` response header).
    pub request_id: String,
    /// When the request arrived (ms).
    pub at: i64,
    /// The platform key.
    pub key_id: Option<String>,
    /// Every account tried, in order.
    pub accounts_tried: Vec<String>,
    /// The account that served.
    pub account_id: Option<String>,
    /// The route, e.g. `/v1/chat/completions`.
    pub route: String,
    /// The model asked for.
    pub model: Option<String>,
    /// The HTTP status the client got.
    pub status: u16,
    /// Whether the response streamed.
    pub stream: bool,
    /// Time to the end of the response, in ms.
    pub latency_ms: u64,
    /// Time to the first byte, in ms.
    pub ttfb_ms: Option<u64>,
    /// Token counts, when the upstream reported them.
    pub tokens: Option<TokenCounts>,
    /// The class of failure (`usage_limit`, `upstream_cut`, `client_closed`, `server_stopped`, …).
    pub error_class: Option<String>,
    /// Whether the fallback upstream served it.
    pub fallback: bool,
    /// A redacted preview of the request body (when enabled).
    pub body_preview: Option<String>,
}

impl From<CoreEntry> for RequestLogEntry {
    fn from(e: CoreEntry) -> Self {
        Self {
            id: e.id,
            request_id: e.request_id,
            at: ms(e.at),
            key_id: e.key_id,
            accounts_tried: e.accounts_tried,
            account_id: e.account_id,
            route: e.route,
            model: e.model,
            status: e.status,
            stream: e.stream,
            latency_ms: e.latency_ms,
            ttfb_ms: e.ttfb_ms,
            tokens: e.tokens.map(Into::into),
            error_class: e.error_class,
            fallback: e.fallback,
            body_preview: e.body_preview,
        }
    }
}

/// Which rows to read.
#[derive(Debug, Clone, uniffi::Record)]
pub struct RequestLogQuery {
    /// At most this many rows, at least 1 (0 is `InvalidInput`): the newest, newest first, or
    /// with `oldest_first` the oldest, oldest first.
    #[uniffi(default = 100)]
    pub limit: u32,
    /// Only this key (a unique prefix of its id will do; an unknown one is `NotFound`).
    #[uniffi(default = None)]
    pub key_id: Option<String>,
    /// Only rows where this account was tried (a unique prefix of its id will do).
    #[uniffi(default = None)]
    pub account_id: Option<String>,
    /// Only rows with an id above this. To follow the log, pass the last id seen with
    /// `oldest_first` and repeat until fewer than `limit` rows come back (newest first, more
    /// than `limit` new rows would leave a gap).
    #[uniffi(default = None)]
    pub after_id: Option<i64>,
    /// The oldest matching rows, oldest first.
    #[uniffi(default = false)]
    pub oldest_first: bool,
}

/// What `list(None)` reads: as `RequestLogQuery()` in the generated languages.
impl Default for RequestLogQuery {
    fn default() -> Self {
        Self {
            limit: 100,
            key_id: None,
            account_id: None,
            after_id: None,
            oldest_first: false,
        }
    }
}

impl From<RequestLogQuery> for CoreQuery {
    fn from(q: RequestLogQuery) -> Self {
        let mut out = CoreQuery::latest(q.limit as usize);
        if let Some(k) = q.key_id {
            out = out.key(k);
        }
        if let Some(a) = q.account_id {
            out = out.account(a);
        }
        if let Some(id) = q.after_id {
            out = out.after(id);
        }
        if q.oldest_first {
            out = out.oldest_first();
        }
        out
    }
}

/// The request log of a pool. Get it with `Pool.request_log()`.
#[derive(uniffi::Object)]
pub struct RequestLog {
    pub(crate) inner: codexpool_core::Pool,
    pub(crate) home: Home,
}

#[uniffi::export]
impl RequestLog {
    /// Rows matching `query` (the newest 100 when `None`), newest first, after writing what is
    /// queued.
    #[uniffi::method(default(query = None))]
    pub async fn list(
        &self,
        query: Option<RequestLogQuery>,
    ) -> Result<Vec<RequestLogEntry>, CodexPoolError> {
        let log = self.inner.request_log();
        let q = CoreQuery::from(query.unwrap_or_default());
        self.home
            .run(async move { Ok(log.list(&q).await?.into_iter().map(Into::into).collect()) })
            .await
    }

    /// Deletes the rows of requests that arrived before `before` (ms since the epoch), oldest
    /// first; how many went. The newest row always stays. A server does this by itself for rows
    /// older than `REQUEST_LOG_DAYS`.
    pub async fn prune(&self, before: i64) -> Result<u64, CodexPoolError> {
        let log = self.inner.request_log();
        let before = crate::time::arg("before", before)?;
        self.home
            .run(async move { Ok(log.prune(before).await?) })
            .await
    }
}
