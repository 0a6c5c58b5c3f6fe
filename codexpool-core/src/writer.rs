//! The batched background writer: high-rate records (usage readings, credits, ledger entries,
//! request-log rows) are queued without blocking and written in one transaction per batch, a
//! few times a second. Readings are coalesced: only the newest per account and window is
//! written.
//!
//! While a batch gathers, the task sleeps on a timer rather than on the queue: senders push
//! without waking it (one wake-up per batch, not per record), and a flush wakes it early.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::request_log::RequestLogEntry;
use crate::store::{RecordBatch, Store};
use crate::usage::{Credits, LedgerEntry, WindowKind, WindowReading};

/// How long a batch may gather before it is written.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Largest batch.
const BATCH_MAX: usize = 2000;
/// Attempts per batch before it is dropped (with an error in the log).
const ATTEMPTS: u32 = 4;

enum Op {
    Window(String, WindowReading),
    Credits(String, Credits),
    Ledger(LedgerEntry),
    RequestLog(RequestLogEntry),
    Flush(oneshot::Sender<()>),
}

/// The sending half; the task ends when every `Writer` is dropped, after writing what is left.
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    /// Cuts the gathering of a batch short (a flush is waiting).
    hurry: Arc<Notify>,
}

impl Writer {
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let hurry = Arc::new(Notify::new());
        tokio::spawn(run(store, rx, hurry.clone()));
        Self { tx, hurry }
    }

    fn send(&self, op: Op) {
        // Fails only after the task has stopped, i.e. when the runtime is shutting down.
        let _ = self.tx.send(op);
    }

    pub fn window(&self, account: String, r: WindowReading) {
        self.send(Op::Window(account, r));
    }

    pub fn credits(&self, account: String, c: Credits) {
        self.send(Op::Credits(account, c));
    }

    pub fn ledger(&self, e: LedgerEntry) {
        self.send(Op::Ledger(e));
    }

    pub fn request_log(&self, e: RequestLogEntry) {
        self.send(Op::RequestLog(e));
    }

    /// Resolves once everything queued before the call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        self.hurry.notify_one();
        let _ = rx.await;
    }
}

#[derive(Default)]
struct Batch {
    windows: HashMap<(String, WindowKind), WindowReading>,
    credits: HashMap<String, Credits>,
    ledger: Vec<LedgerEntry>,
    log: Vec<RequestLogEntry>,
    flushes: Vec<oneshot::Sender<()>>,
    len: usize,
}

impl Batch {
    fn add(&mut self, op: Op) {
        self.len += 1;
        match op {
            Op::Window(a, r) => {
                let k = (a, r.kind);
                if self
                    .windows
                    .get(&k)
                    .is_none_or(|old| old.observed_at <= r.observed_at)
                {
                    self.windows.insert(k, r);
                }
            }
            Op::Credits(a, c) => {
                self.credits.insert(a, c);
            }
            Op::Ledger(e) => self.ledger.push(e),
            Op::RequestLog(e) => self.log.push(e),
            Op::Flush(tx) => self.flushes.push(tx),
        }
    }

    /// The records to write (coalesced readings last-wins), and the flushes to answer after.
    fn finish(self) -> (Arc<RecordBatch>, Vec<oneshot::Sender<()>>) {
        let records = RecordBatch {
            windows: self
                .windows
                .into_iter()
                .map(|((account, _), r)| (account, r))
                .collect(),
            credits: self.credits.into_iter().collect(),
            ledger: self.ledger,
            request_log: self.log,
        };
        (Arc::new(records), self.flushes)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Op>, hurry: Arc<Notify>) {
    let mut ops = Vec::new();
    while rx.recv_many(&mut ops, BATCH_MAX).await > 0 {
        // Gather, unless a flush waits or a full batch is already there (under sustained load
        // batches then go back to back, as fast as the store takes them). Records queued
        // meanwhile wait in the channel without waking this task.
        if ops.len() < BATCH_MAX && !ops.iter().any(|op| matches!(op, Op::Flush(_))) {
            let _ = tokio::time::timeout(BATCH_WINDOW, hurry.notified()).await;
        }
        let mut batch = Batch::default();
        for op in ops.drain(..) {
            batch.add(op);
        }
        // Whatever is queued by now goes into the same transaction.
        while batch.len < BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => batch.add(op),
                Err(_) => break,
            }
        }
        let (records, flushes) = batch.finish();
        // Only flushes (a reload's, say): nothing to write, no transaction to open.
        let empty = records.windows.is_empty()
            && records.credits.is_empty()
            && records.ledger.is_empty()
            && records.request_log.is_empty();
        if !empty {
            write_with_retries(store.as_ref(), records).await;
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// Writes a batch, trying [`ATTEMPTS`] times before dropping it with an error in the log.
async fn write_with_retries(store: &dyn Store, records: Arc<RecordBatch>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store.write_records(records.clone()).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "background write failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt * attempt))).await;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    ledger = records.ledger.len(),
                    request_log = records.request_log.len(),
                    "background write failed; records dropped"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_log::RequestLogQuery;
    use crate::store::MemoryStore;
    use crate::time::Timestamp;

    async fn rows(store: &MemoryStore) -> Vec<String> {
        let mut ids: Vec<String> = store
            .list_request_log(&RequestLogQuery::latest(100_000))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.request_id)
            .collect();
        ids.sort();
        ids
    }

    fn entry(id: &str) -> RequestLogEntry {
        RequestLogEntry::new(id, Timestamp::from_secs(1_700_000_000), "/v1/responses")
    }

    #[tokio::test(start_paused = true)]
    async fn records_gather_for_one_window_and_a_flush_cuts_it_short() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::spawn(store.clone());
        writer.request_log(entry("a"));
        writer.request_log(entry("b"));
        tokio::time::sleep(BATCH_WINDOW / 2).await;
        writer.request_log(entry("c"));
        assert!(
            rows(&store).await.is_empty(),
            "nothing before the window ends"
        );
        tokio::time::sleep(BATCH_WINDOW).await;
        assert_eq!(
            rows(&store).await,
            ["a", "b", "c"],
            "one batch at the window's end"
        );

        // A flush does not wait for the window (the clock is paused: no time passes).
        writer.request_log(entry("d"));
        tokio::task::yield_now().await;
        let before = tokio::time::Instant::now();
        writer.flush().await;
        assert_eq!(before, tokio::time::Instant::now());
        assert_eq!(rows(&store).await, ["a", "b", "c", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_written_in_full_batches_without_waiting_between_them() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::spawn(store.clone());
        let n = 2 * BATCH_MAX + 1;
        for i in 0..n {
            writer.request_log(entry(&format!("r{i:05}")));
        }
        // Two full batches at once, then the last record after one window: not three windows.
        tokio::time::sleep(BATCH_WINDOW + Duration::from_millis(1)).await;
        assert_eq!(rows(&store).await.len(), n);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_writer_writes_what_is_queued() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::spawn(store.clone());
        writer.request_log(entry("a"));
        drop(writer);
        tokio::time::sleep(BATCH_WINDOW * 2).await;
        assert_eq!(rows(&store).await, ["a"]);
    }
}
