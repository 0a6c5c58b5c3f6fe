//! The batched background writer: high-rate records (usage readings, credits, ledger entries,
//! request-log rows) are queued without blocking and written in one transaction per batch, a
//! few times a second. Readings are coalesced: only the newest per account and window is
//! written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::request_log::RequestLogEntry;
use crate::store::{Store, StoreError};
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
}

impl Writer {
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self { tx }
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

    async fn write(&self, store: &dyn Store) -> Result<(), StoreError> {
        if !self.windows.is_empty() {
            let w: Vec<(String, WindowReading)> = self
                .windows
                .iter()
                .map(|((a, _), r)| (a.clone(), r.clone()))
                .collect();
            store.save_windows(&w).await?;
        }
        if !self.credits.is_empty() {
            let c: Vec<(String, Credits)> = self
                .credits
                .iter()
                .map(|(a, c)| (a.clone(), c.clone()))
                .collect();
            store.save_credits(&c).await?;
        }
        if !self.ledger.is_empty() {
            store.append_ledger(&self.ledger).await?;
        }
        if !self.log.is_empty() {
            store.append_request_log(&self.log).await?;
        }
        Ok(())
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        let urgent = matches!(first, Op::Flush(_));
        batch.add(first);
        if !urgent {
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len < BATCH_MAX && batch.flushes.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(op)) => batch.add(op),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // Whatever else is already queued goes into the same transaction.
        while batch.len < BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => batch.add(op),
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match batch.write(store.as_ref()).await {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "background write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt * attempt)))
                        .await;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        ledger = batch.ledger.len(),
                        request_log = batch.log.len(),
                        "background write failed; records dropped"
                    );
                    break;
                }
            }
        }
        for f in batch.flushes {
            let _ = f.send(());
        }
    }
}
