//! The batched background writer: high-rate records (usage readings, credits, ledger entries,
//! request-log rows) are queued without blocking and written in one transaction per batch, a
//! few times a second. Readings are coalesced: only the newest per account and window is
//! written.
//!
//! While a batch gathers, the task sleeps on a timer rather than on the queue: senders push
//! without waking it (one wake-up per batch, not per record), and a flush wakes it early.
//!
//! A batch the store refuses [`ATTEMPTS`] times is not dropped whole: its kinds of record are
//! written each on their own, and a kind that still fails is halved, and a half that fails is
//! halved again, down to single records; only what fails in the end is dropped. One record the
//! store refuses (or one kind of them) then cannot take the others with it. Each write is still
//! one transaction, all or nothing, so nothing is written twice. When both halves fail, an empty
//! transaction tells bad records in each half from a store that is down; a store that is down,
//! or that takes none of the kinds, gets no more tries: what is left is dropped. At most
//! [`PIECE_WRITES`] writes go to the pieces of one batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::request_log::RequestLogEntry;
use crate::store::{RecordBatch, Store, StoreError};
use crate::time::Clock;
use crate::usage::{Credits, LedgerEntry, WindowKind, WindowReading};

/// How long a batch may gather before it is written.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Largest batch.
const BATCH_MAX: usize = 2000;
/// Attempts per batch before it is written in pieces (see the module docs).
const ATTEMPTS: u32 = 4;
/// Writes of halves per refused batch: enough to single out a few bad records in a full batch
/// (each costs about 2·log2([`BATCH_MAX`]) writes), not to write a refused kind one by one.
const PIECE_WRITES: usize = 128;

enum Op {
    Window(String, WindowReading),
    Credits(String, Credits),
    Ledger(LedgerEntry),
    RequestLog(RequestLogEntry),
    Flush(oneshot::Sender<Lost>),
}

/// The sending half; the task ends when every `Writer` is dropped, after writing what is left.
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Op>,
    /// Cuts the gathering of a batch short (a flush is waiting).
    hurry: Arc<Notify>,
}

impl Writer {
    pub fn spawn(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let hurry = Arc::new(Notify::new());
        tokio::spawn(run(store, clock, rx, hurry.clone()));
        Self { tx, hurry }
    }

    /// A writer with no task, whose sender wakes nothing when dropped (see `Drop for Shared`).
    pub fn detached() -> Self {
        Self {
            tx: mpsc::unbounded_channel().0,
            hurry: Arc::default(),
        }
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

    /// Resolves once everything queued before the call is written or given up, with what
    /// this writer has dropped so far.
    pub async fn flush(&self) -> Lost {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        self.hurry.notify_one();
        // Err: the task is gone (the runtime shuts down); nothing more can be written.
        rx.await.unwrap_or_default()
    }
}

#[derive(Default)]
struct Batch {
    windows: HashMap<(String, WindowKind), WindowReading>,
    credits: HashMap<String, Credits>,
    ledger: Vec<LedgerEntry>,
    log: Vec<RequestLogEntry>,
    flushes: Vec<oneshot::Sender<Lost>>,
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
    fn finish(self, clock: &dyn Clock) -> (Arc<RecordBatch>, Vec<oneshot::Sender<Lost>>) {
        let records = RecordBatch {
            windows: self
                .windows
                .into_iter()
                .map(|((account, _), r)| (account, r))
                .collect(),
            credits: self.credits.into_iter().collect(),
            ledger: self.ledger,
            request_log: self.log,
            now: Some(clock.now()),
        };
        (Arc::new(records), self.flushes)
    }
}

async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    hurry: Arc<Notify>,
) {
    let mut ops = Vec::new();
    let mut lost = Lost::default();
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
        let (records, flushes) = batch.finish(clock.as_ref());
        // Only flushes (a reload's, say): nothing to write, no transaction to open.
        let empty = records.windows.is_empty()
            && records.credits.is_empty()
            && records.ledger.is_empty()
            && records.request_log.is_empty();
        if !empty {
            write_with_retries(store.as_ref(), records, &mut lost).await;
        }
        for f in flushes {
            let _ = f.send(lost.clone());
        }
    }
}

/// The records a writer has dropped, and the last cause.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lost {
    pub records: u64,
    cause: Option<String>,
}

impl Lost {
    fn add(&mut self, piece: &RecordBatch, e: &StoreError) {
        tracing::error!(
            error = %e,
            windows = piece.windows.len(),
            credits = piece.credits.len(),
            ledger = piece.ledger.len(),
            request_log = piece.request_log.len(),
            "background write failed; records dropped"
        );
        self.records += len(piece) as u64;
        self.cause = Some(e.to_string());
    }

    /// An error when more than `reported` records have been dropped.
    pub fn since(&self, reported: u64) -> Result<(), StoreError> {
        let n = self.records.saturating_sub(reported);
        match &self.cause {
            Some(cause) if n > 0 => Err(StoreError::Backend {
                message: format!(
                    "{n} record{} (usage readings, request log, token ledger) could not be \
                     written and {} dropped; the last cause: {cause}",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "was" } else { "were" },
                ),
                source: None,
            }),
            _ => Ok(()),
        }
    }
}

/// Writes a batch, trying [`ATTEMPTS`] times before writing it in pieces.
async fn write_with_retries(store: &dyn Store, records: Arc<RecordBatch>, lost: &mut Lost) {
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
                tracing::warn!(error = %e, "background write failed; writing its records in pieces");
                break;
            }
        }
    }
    write_in_pieces(store, &records, lost).await;
}

/// After the whole batch failed: each kind of record on its own, then halves of what fails
/// (see the module docs); drops, with an error in the log, only what fails in the end.
async fn write_in_pieces(store: &dyn Store, records: &RecordBatch, lost: &mut Lost) {
    let kinds = by_kind(records);
    let several = kinds.len() > 1;
    let mut failed = Vec::new();
    let mut wrote_any = false;
    for kind in kinds {
        match store.write_records(kind.clone()).await {
            Ok(()) => wrote_any = true,
            Err(e) => failed.push((kind, e)),
        }
    }
    if several && !wrote_any {
        // Not one kind went in: the store is down, smaller pieces would fail as well.
        for (piece, e) in failed {
            lost.add(&piece, &e);
        }
        return;
    }
    // A failed piece is halved and its failed halves again, within the budget of writes.
    let mut stack = failed;
    let mut writes = 0;
    let mut down = false;
    while let Some((piece, e)) = stack.pop() {
        let halves = if down || writes >= PIECE_WRITES {
            None
        } else {
            halves(&piece)
        };
        let Some((a, b)) = halves else {
            lost.add(&piece, &e);
            continue;
        };
        writes += 2;
        let ea = store.write_records(a.clone()).await.err();
        let eb = store.write_records(b.clone()).await.err();
        match (ea, eb) {
            (None, None) => {}
            (Some(e), None) => stack.push((a, e)),
            (None, Some(e)) => stack.push((b, e)),
            (Some(ea), Some(eb)) => {
                // Bad records in each half, or a store that is down: only the first takes an
                // empty transaction.
                down = store
                    .write_records(Arc::new(RecordBatch::default()))
                    .await
                    .is_err();
                stack.push((a, ea));
                stack.push((b, eb));
            }
        }
    }
}

/// The batch's records, one batch per kind that has any.
fn by_kind(r: &RecordBatch) -> Vec<Arc<RecordBatch>> {
    let parts = [
        RecordBatch {
            windows: r.windows.clone(),
            now: r.now,
            ..RecordBatch::default()
        },
        RecordBatch {
            credits: r.credits.clone(),
            ..RecordBatch::default()
        },
        RecordBatch {
            ledger: r.ledger.clone(),
            ..RecordBatch::default()
        },
        RecordBatch {
            request_log: r.request_log.clone(),
            ..RecordBatch::default()
        },
    ];
    parts
        .into_iter()
        .filter(|p| len(p) > 0)
        .map(Arc::new)
        .collect()
}

fn len(r: &RecordBatch) -> usize {
    r.windows.len() + r.credits.len() + r.ledger.len() + r.request_log.len()
}

/// A batch of one kind of record ([`by_kind`]) split in two, unless it holds only one record.
fn halves(r: &RecordBatch) -> Option<(Arc<RecordBatch>, Arc<RecordBatch>)> {
    fn split<T: Clone>(v: &[T]) -> (Vec<T>, Vec<T>) {
        let (a, b) = v.split_at(v.len() / 2);
        (a.to_vec(), b.to_vec())
    }
    if len(r) < 2 {
        return None;
    }
    let (mut a, mut b) = (RecordBatch::default(), RecordBatch::default());
    (a.now, b.now) = (r.now, r.now);
    (a.windows, b.windows) = split(&r.windows);
    (a.credits, b.credits) = split(&r.credits);
    (a.ledger, b.ledger) = split(&r.ledger);
    (a.request_log, b.request_log) = split(&r.request_log);
    Some((Arc::new(a), Arc::new(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_log::RequestLogQuery;
    use crate::store::MemoryStore;
    use crate::time::Timestamp;

    async fn log_ids(store: &dyn Store) -> Vec<String> {
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
        let writer = Writer::spawn(store.clone(), Arc::new(crate::time::SystemClock));
        writer.request_log(entry("a"));
        writer.request_log(entry("b"));
        tokio::time::sleep(BATCH_WINDOW / 2).await;
        writer.request_log(entry("c"));
        assert!(
            log_ids(store.as_ref()).await.is_empty(),
            "nothing before the window ends"
        );
        tokio::time::sleep(BATCH_WINDOW).await;
        assert_eq!(
            log_ids(store.as_ref()).await,
            ["a", "b", "c"],
            "one batch at the window's end"
        );

        // A flush does not wait for the window (the clock is paused: no time passes).
        writer.request_log(entry("d"));
        tokio::task::yield_now().await;
        let before = tokio::time::Instant::now();
        writer.flush().await;
        assert_eq!(before, tokio::time::Instant::now());
        assert_eq!(log_ids(store.as_ref()).await, ["a", "b", "c", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_written_in_full_batches_without_waiting_between_them() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::spawn(store.clone(), Arc::new(crate::time::SystemClock));
        let n = 2 * BATCH_MAX + 1;
        for i in 0..n {
            writer.request_log(entry(&format!("r{i:05}")));
        }
        // Two full batches at once, then the last record after one window: not three windows.
        tokio::time::sleep(BATCH_WINDOW + Duration::from_millis(1)).await;
        assert_eq!(log_ids(store.as_ref()).await.len(), n);
    }

    /// The real store, refusing records with SQLite triggers (a constraint a row breaks, a
    /// table it cannot grow).
    #[tokio::test]
    async fn a_record_the_store_refuses_does_not_take_the_others_with_it() {
        use crate::usage::{LedgerGroup, LedgerQuery, TokenCounts};

        async fn ledger_requests(store: &dyn Store) -> u64 {
            let q = LedgerQuery::by(LedgerGroup::Model);
            let rows = store.ledger_summary(&q).await.unwrap();
            rows.iter().map(|r| r.requests).sum()
        }
        let ledger = || LedgerEntry {
            at: Timestamp::from_secs(1_700_000_000),
            key_id: None,
            account_id: None,
            model: "m".into(),
            tokens: TokenCounts::default(),
            status: 200,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.db");
        let store = Arc::new(crate::store::SqliteStore::open(&path).await.unwrap());
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER bad BEFORE INSERT ON request_log WHEN NEW.request_id LIKE 'bad%'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let writer = Writer::spawn(store.clone(), Arc::new(crate::time::SystemClock));
        writer.ledger(ledger());
        // A bad record in each half of the kind: both halves fail, and are halved again.
        for id in ["a", "bad1", "b", "c", "bad2", "d", "e"] {
            writer.request_log(entry(id));
        }
        writer.flush().await;
        assert_eq!(log_ids(store.as_ref()).await, ["a", "b", "c", "d", "e"]);
        assert_eq!(ledger_requests(store.as_ref()).await, 1);

        // A kind the store refuses altogether does not take the other kinds with it.
        other
            .execute_batch(
                "DROP TRIGGER bad;
                 CREATE TRIGGER full BEFORE INSERT ON request_log
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        writer.ledger(ledger());
        writer.request_log(entry("f"));
        writer.request_log(entry("g"));
        writer.flush().await;
        assert_eq!(ledger_requests(store.as_ref()).await, 2);
        assert_eq!(log_ids(store.as_ref()).await, ["a", "b", "c", "d", "e"]);

        // The normal path is one transaction again.
        other.execute_batch("DROP TRIGGER full;").unwrap();
        writer.request_log(entry("h"));
        writer.flush().await;
        assert_eq!(
            log_ids(store.as_ref()).await,
            ["a", "b", "c", "d", "e", "h"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_writer_writes_what_is_queued() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::spawn(store.clone(), Arc::new(crate::time::SystemClock));
        writer.request_log(entry("a"));
        drop(writer);
        tokio::time::sleep(BATCH_WINDOW * 2).await;
        assert_eq!(log_ids(store.as_ref()).await, ["a"]);
    }
}
