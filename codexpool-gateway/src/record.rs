//! `Record`: the request-log row of one client request, filled in as the request goes and
//! written exactly once — when the response ends, or when the client goes away (then with
//! `client_closed`, or `server_stopped` when the server ended it). Also writes the token-ledger
//! entry when the upstream reported usage.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use codexpool_core::Pool;
use codexpool_core::request_log::RequestLogEntry;
use codexpool_core::usage::{LedgerEntry, TokenCounts};

use crate::adapt::TokenUsage;

pub(crate) struct Record {
    pool: Pool,
    pub entry: RequestLogEntry,
    started: Instant,
    written: bool,
    /// How the gateway's server ends (see `Shared::stopping`).
    stopped: Option<Arc<crate::Stopping>>,
}

/// Converts the adapters' usage to the ledger's.
pub(crate) fn counts(u: TokenUsage) -> TokenCounts {
    TokenCounts {
        input_tokens: u.input_tokens,
        cached_tokens: u.cached_tokens,
        output_tokens: u.output_tokens,
        reasoning_tokens: u.reasoning_tokens,
    }
}

/// The longest route a row keeps, in characters: a refused request's path is the client's to
/// choose (a key check comes before any route is known).
const MAX_ROUTE: usize = 200;

/// `route`, or its first [`MAX_ROUTE`] characters and `…`.
fn kept_route(route: &str) -> std::borrow::Cow<'_, str> {
    if route.len() <= MAX_ROUTE {
        return route.into();
    }
    match route.char_indices().nth(MAX_ROUTE) {
        None => route.into(),
        Some((end, _)) => format!("{}…", &route[..end]).into(),
    }
}

impl Record {
    pub fn new(pool: Pool, request_id: String, route: &str, key_id: Option<String>) -> Self {
        let mut entry = RequestLogEntry::new(request_id, pool.now(), kept_route(route));
        entry.key_id = key_id;
        Self {
            pool,
            entry,
            started: Instant::now(),
            written: false,
            stopped: None,
        }
    }

    /// Dropped unfinished while this flag is set, the row says `server_stopped`.
    pub(crate) fn ended_by(mut self, stopped: &Arc<crate::Stopping>) -> Self {
        self.stopped = Some(stopped.clone());
        self
    }

    /// Milliseconds since the request arrived.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes the first byte sent to the client (once).
    pub fn first_byte(&mut self) {
        if self.entry.ttfb_ms.is_none() {
            self.entry.ttfb_ms = Some(self.elapsed_ms());
        }
    }

    /// Moves the unwritten row out, to whatever ends the request later; this one is left as
    /// written (its drop writes nothing).
    pub(crate) fn hand_over(&mut self) -> Record {
        let at = self.entry.at;
        let rest = Record {
            pool: self.pool.clone(),
            entry: std::mem::replace(
                &mut self.entry,
                RequestLogEntry::new(String::new(), at, String::new()),
            ),
            started: self.started,
            written: self.written,
            stopped: self.stopped.clone(),
        };
        self.written = true;
        rest
    }

    /// Writes the row (and the ledger entry) now.
    pub fn finish(&mut self, status: u16, error_class: Option<&str>, usage: Option<TokenUsage>) {
        if self.written {
            return;
        }
        self.written = true;
        let e = &mut self.entry;
        e.status = status;
        e.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The first failure noted (e.g. by the attempt loop) is the most specific one.
        if e.error_class.is_none() {
            e.error_class = error_class.map(str::to_string);
        }
        if let Some(u) = usage {
            e.tokens = Some(counts(u));
            self.pool.usage().record_tokens(LedgerEntry {
                at: self.pool.now(),
                key_id: e.key_id.clone(),
                account_id: e.account_id.clone(),
                model: e.model.clone().unwrap_or_default(),
                tokens: counts(u),
                status,
            });
        }
        // Written once: the entry moves to the writer instead of being copied.
        let entry = std::mem::replace(e, RequestLogEntry::new(String::new(), e.at, String::new()));
        self.pool.request_log().record(entry);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.written {
            if std::thread::panicking() {
                // The gateway failed, not the client: CatchPanicLayer answers 500.
                self.finish(500, Some("internal_error"), None);
                return;
            }
            // The response was dropped before it ended: the client went away, or the server
            // stopping ended it.
            let by_server = self
                .stopped
                .as_ref()
                .is_some_and(|s| s.ended.load(Ordering::Relaxed));
            let (unanswered, class) = if by_server {
                (503, "server_stopped")
            } else {
                (499, "client_closed")
            };
            let status = match self.entry.status {
                0 => unanswered,
                s => s,
            };
            self.finish(status, Some(class), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use codexpool_core::request_log::RequestLogQuery;
    use codexpool_core::store::MemoryStore;
    use codexpool_core::{Config, Pool};

    use super::Record;

    #[test]
    fn a_long_route_is_cut_at_a_character() {
        assert_eq!(super::kept_route("/v1/models"), "/v1/models");
        let long = "é".repeat(300);
        let kept = super::kept_route(&long);
        assert_eq!(kept, format!("{}…", "é".repeat(200)));
    }

    /// A request whose handler panicked is the gateway's 500 in the log, not a client that left.
    #[tokio::test]
    async fn a_panic_is_logged_as_the_gateways_error() {
        let pool = Pool::builder(Config::default())
            .store(Arc::new(MemoryStore::new()))
            .open()
            .await
            .unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _record = Record::new(pool.clone(), "req_1".into(), "/v1/chat/completions", None);
            panic!("a bug");
        }));
        assert!(panicked.is_err());
        drop(Record::new(
            pool.clone(),
            "req_2".into(),
            "/v1/chat/completions",
            None,
        ));
        pool.flush().await.unwrap();
        let rows = pool
            .request_log()
            .list(&RequestLogQuery::default())
            .await
            .unwrap();
        let seen: Vec<_> = rows
            .iter()
            .map(|r| (r.request_id.as_str(), r.status, r.error_class.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("req_2", 499, Some("client_closed")),
                ("req_1", 500, Some("internal_error"))
            ]
        );
    }
}
