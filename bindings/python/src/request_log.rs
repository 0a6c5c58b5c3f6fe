//! `pool.request_log`: one row per gateway request (who, through which accounts, how it went),
//! over core's `RequestLog`.

use codexpool_core::request_log::{RequestLogEntry as CoreEntry, RequestLogQuery};
use pyo3::prelude::*;

use crate::errors::{OrRaise, invalid};
use crate::record::record;
use crate::runtime::{Home, HomeExt};
use crate::time::Time;
use crate::usage::TokenCounts;

record! {
    /// One client request.
    RequestLogEntry as "RequestLogEntry" {
        id: i64,
        request_id: String,
        at: Time,
        key_id: Option<String>,
        accounts_tried: Vec<String>,
        account_id: Option<String>,
        route: String,
        model: Option<String>,
        status: u16,
        stream: bool,
        latency_ms: u64,
        ttfb_ms: Option<u64>,
        tokens: Option<TokenCounts>,
        error_class: Option<String>,
        fallback: bool,
        body_preview: Option<String>,
    }
}

impl From<CoreEntry> for RequestLogEntry {
    fn from(e: CoreEntry) -> Self {
        Self {
            id: e.id,
            request_id: e.request_id,
            at: Time(e.at),
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

/// The request log of a pool (`pool.request_log`).
#[pyclass(frozen, module = "codexpool")]
pub struct RequestLog {
    inner: codexpool_core::RequestLog,
    home: Home,
}

impl RequestLog {
    pub(crate) fn new(pool: &codexpool_core::Pool, home: Home) -> Self {
        Self {
            inner: pool.request_log(),
            home,
        }
    }
}

#[pymethods]
impl RequestLog {
    /// The newest `limit` rows (newest first), optionally only one key's, only those where an
    /// account was tried, or only rows after an id. With `oldest_first`, the oldest `limit`
    /// rows, oldest first: to follow the log, pass the last id seen as `after_id` with
    /// `oldest_first=True` and repeat until fewer than `limit` rows come back (newest first,
    /// more than `limit` new rows would leave a gap). A `limit` below 1 raises `InvalidInput`.
    #[pyo3(signature = (limit=100, *, key_id=None, account_id=None, after_id=None, oldest_first=false))]
    fn list(
        &self,
        py: Python<'_>,
        limit: i64,
        key_id: Option<String>,
        account_id: Option<String>,
        after_id: Option<i64>,
        oldest_first: bool,
    ) -> PyResult<Vec<RequestLogEntry>> {
        // A negative count is no `usize`; 0 is refused by core, with the same words.
        let limit =
            usize::try_from(limit).map_err(|_| invalid(py, "limit", "must be at least 1"))?;
        let mut q = RequestLogQuery::latest(limit);
        q.key_id = key_id;
        q.account_id = account_id;
        q.after_id = after_id;
        q.oldest_first = oldest_first;
        let inner = self.inner.clone();
        let rows = self
            .home
            .run(py, async move { inner.list(&q).await })?
            .or_raise(py)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Deletes the rows of requests that arrived before `before` (a `datetime`, an RFC 3339
    /// string or epoch seconds), oldest first; how many went. The newest row always stays. A
    /// server does this by itself for rows older than `REQUEST_LOG_DAYS`.
    fn prune(&self, py: Python<'_>, before: &Bound<'_, PyAny>) -> PyResult<u64> {
        let before = crate::time::from_arg(before, "before")?;
        let inner = self.inner.clone();
        self.home
            .run(py, async move { inner.prune(before).await })?
            .or_raise(py)
    }

    fn __repr__(&self) -> String {
        "RequestLog()".into()
    }
}
