//! The request log: one row per client request (who, through which accounts, how it went, how
//! long it took), written through the batched writer and read back for `logs` and the RPC.
//! Never holds secrets or bodies (an optional, redacted preview only). A serving process deletes
//! rows older than `REQUEST_LOG_DAYS`, and folds the token ledger's days as old ([`spawn_pruner`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Pool;
use crate::error::Result;
use crate::poll::BackgroundTask;
use crate::time::Timestamp;
use crate::usage::TokenCounts;

/// Rows deleted (or ledger entries folded) per transaction when pruning: short enough that other
/// writers of the database (the request log's own batches, a CLI) do not wait long for it.
const PRUNE_CHUNK: usize = 5_000;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs `step` (one transaction of at most the rows it is given) until it does less than a
/// whole chunk, yielding between chunks; the rows it did in all.
pub(crate) async fn in_chunks<F, Fut>(mut step: F) -> Result<u64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<u64, crate::store::StoreError>>,
{
    let mut total = 0;
    loop {
        let n = step(PRUNE_CHUNK).await?;
        total += n;
        if n < PRUNE_CHUNK as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RequestLogEntry {
    /// Row id, assigned by the store (0 before it is written).
    pub id: i64,
    /// The request id (also the `x-request-id` response header).
    pub request_id: String,
    /// When the request arrived.
    pub at: Timestamp,
    /// The platform key.
    pub key_id: Option<String>,
    /// Every account tried, in order.
    pub accounts_tried: Vec<String>,
    /// The account that served (the last one tried, when it succeeded).
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
    /// Time to the first byte sent to the client, in ms.
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

impl RequestLogEntry {
    /// A new entry for a request that arrived at `at` on `route`.
    pub fn new(request_id: impl Into<String>, at: Timestamp, route: impl Into<String>) -> Self {
        Self {
            id: 0,
            request_id: request_id.into(),
            at,
            key_id: None,
            accounts_tried: Vec::new(),
            account_id: None,
            route: route.into(),
            model: None,
            status: 0,
            stream: false,
            latency_ms: 0,
            ttfb_ms: None,
            tokens: None,
            error_class: None,
            fallback: false,
            body_preview: None,
        }
    }
}

/// The rows a [`RequestLogQuery`] reads unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// Which rows to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RequestLogQuery {
    /// At most this many rows (the newest ones, or with `oldest_first` the oldest): at least 1,
    /// [`RequestLog::list`] refuses 0. Default [`DEFAULT_LIMIT`].
    pub limit: usize,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only rows where this account was tried.
    pub account_id: Option<String>,
    /// Only rows with an id above this. To follow the log, ask with `oldest_first` and the
    /// last id seen until fewer than `limit` rows come back: newest first, more than `limit`
    /// new rows would leave a gap.
    pub after_id: Option<i64>,
    /// The oldest matching rows, oldest first (default: the newest, newest first).
    #[serde(default)]
    pub oldest_first: bool,
}

impl Default for RequestLogQuery {
    /// The newest [`DEFAULT_LIMIT`] rows.
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            key_id: None,
            account_id: None,
            after_id: None,
            oldest_first: false,
        }
    }
}

impl RequestLogQuery {
    /// The newest `limit` rows.
    pub fn latest(limit: usize) -> Self {
        Self {
            limit,
            ..Default::default()
        }
    }
    /// Only this key.
    pub fn key(mut self, id: impl Into<String>) -> Self {
        self.key_id = Some(id.into());
        self
    }
    /// Only this account.
    pub fn account(mut self, id: impl Into<String>) -> Self {
        self.account_id = Some(id.into());
        self
    }
    /// Only rows after this id.
    pub fn after(mut self, id: i64) -> Self {
        self.after_id = Some(id);
        self
    }
    /// The oldest rows, oldest first: with [`after`](Self::after), the next page of a log
    /// being followed.
    pub fn oldest_first(mut self) -> Self {
        self.oldest_first = true;
        self
    }
    /// Whether a row passes the filters (shared by the stores).
    pub fn matches(&self, e: &RequestLogEntry) -> bool {
        self.key_id
            .as_ref()
            .is_none_or(|k| e.key_id.as_ref() == Some(k))
            && self
                .account_id
                .as_ref()
                .is_none_or(|a| e.accounts_tried.contains(a))
            && self.after_id.is_none_or(|after| e.id > after)
    }
}

/// Handle to the request log of a [`Pool`].
#[derive(Clone)]
pub struct RequestLog {
    pub(crate) pool: Pool,
}

impl RequestLog {
    /// Queues a row; written by the background writer within a fraction of a second. Never
    /// blocks.
    pub fn record(&self, entry: RequestLogEntry) {
        self.pool.shared.writer.request_log(entry);
    }

    /// Reads rows, newest first (oldest first with [`RequestLogQuery::oldest_first`]), after
    /// writing what is queued. The key and account filters take a unique prefix of an id too
    /// (see [`resolve`](Self::resolve)). A `limit` of 0 is
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) naming `limit`: a caller asking for
    /// no rows has a mistake to hear about.
    pub async fn list(&self, q: &RequestLogQuery) -> Result<Vec<RequestLogEntry>> {
        if q.limit == 0 {
            return Err(crate::Error::invalid("limit", "must be at least 1"));
        }
        let q = self.resolve(q)?;
        self.pool.write_queued().await?;
        Ok(self.pool.shared.store.list_request_log(&q).await?)
    }

    /// The query with its key and account filters as full ids: of a key or account the pool
    /// knows (a unique prefix of its id will do), else as typed when a full id (of one deleted
    /// since: its rows remain). Resolve once to follow the log across such a deletion.
    pub fn resolve(&self, q: &RequestLogQuery) -> Result<RequestLogQuery> {
        let mut q = q.clone();
        if let Some(k) = &q.key_id {
            q.key_id = Some(full_id(self.pool.keys().get(k).map(|k| k.id), k)?);
        }
        if let Some(a) = &q.account_id {
            q.account_id = Some(full_id(self.pool.accounts().get(a).map(|a| a.id), a)?);
        }
        Ok(q)
    }

    /// Deletes the rows of requests that arrived before `before` (by their arrival time, the
    /// earliest first, whatever order they were written in), a few thousand per transaction;
    /// how many went. The newest row always stays (row ids never repeat).
    pub async fn prune(&self, before: Timestamp) -> Result<u64> {
        let store = &self.pool.shared.store;
        in_chunks(|n| store.prune_request_log(before, n)).await
    }
}

/// The id a filter names: one the pool knows (or a unique prefix of one), else a full id as
/// typed (of a key or account deleted since: its rows remain).
fn full_id(found: Result<String>, typed: &str) -> Result<String> {
    match found {
        Err(crate::Error::NotFound { .. })
            if typed.len() == 12 && typed.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Ok(typed.to_ascii_lowercase())
        }
        other => other,
    }
}

/// Starts the pruner: at once and then hourly, deletes the request-log rows older than the
/// pool's `REQUEST_LOG_DAYS` ([`RequestLog::prune`]) and folds the token ledger's entries from the
/// days before them into day sums ([`crate::UsageTracker::fold_ledger`]); inert when that is 0
/// (every row kept). Stops when the returned task is dropped or the pool is gone.
pub fn spawn_pruner(pool: &Pool) -> BackgroundTask {
    const NAME: &str = "pruner";
    let days = pool.config().request_log_days;
    if days == 0 {
        return BackgroundTask::inert(NAME);
    }
    let keep = Duration::from_secs(u64::from(days) * 86_400);
    let weak = std::sync::Arc::downgrade(&pool.shared);
    BackgroundTask::spawn(NAME, async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            let pool = Pool { shared };
            let before = pool.now().minus(keep);
            match pool.request_log().prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, days, "deleted old request-log rows"),
                Err(e) => tracing::warn!(error = %e, "could not delete old request-log rows"),
            }
            match pool.usage().fold_ledger(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, days, "folded old token-ledger days"),
                Err(e) => tracing::warn!(error = %e, "could not fold old token-ledger days"),
            }
        }
    })
}
