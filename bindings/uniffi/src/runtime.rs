//! The module-wide tokio runtime. Every async export runs its core future here (spawned, then
//! awaited through the `JoinHandle`), whatever executor polls the export: asyncio in Python,
//! coroutines in Kotlin, Swift concurrency. So the pool's background tasks (batched writer,
//! change watcher) and a served gateway live on one long-lived multi-thread runtime instead of
//! on the caller's executor, and a foreign caller that goes away does not stop them half-way.
//!
//! A process forked after the runtime started has none of its threads, nor the database thread
//! or background tasks of a pool opened before the fork. So the runtime is per process (a
//! forked child that uses codexpool builds its own), and every object that leads to a pool
//! carries its [`Home`]: used in another process it raises `Internal`, naming the fork, rather
//! than wait forever, while a pool opened in the child works there.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::Runtime;

use crate::CodexPoolError;

/// The runtime, and the process that built it.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// This process's runtime, started on first use, and again in a child forked after that: the
/// parent's has no threads there, and is left alone (dropping it would wait for them).
pub(crate) fn runtime() -> Result<&'static Runtime, CodexPoolError> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((built_by, rt)) = *slot
        && built_by == pid
    {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("codexpool-ffi")
        .enable_all()
        .build()
        .map_err(|e| CodexPoolError::Internal(format!("cannot start the tokio runtime: {e}")))?;
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

/// The process a pool was opened in, kept by every object that leads to it: its database
/// thread and background tasks exist only there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Home(u32);

impl Home {
    /// This process.
    pub(crate) fn here() -> Self {
        Self(std::process::id())
    }

    /// Whether this is the process.
    pub(crate) fn is_here(self) -> bool {
        self.0 == std::process::id()
    }

    /// Runs `fut` on the runtime and waits for it without blocking the caller's executor; in
    /// any other process than this one (a child forked after the pool was opened), `Internal`.
    pub(crate) async fn run<T, F>(self, fut: F) -> Result<T, CodexPoolError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, CodexPoolError>> + Send + 'static,
    {
        if !self.is_here() {
            return Err(CodexPoolError::Internal(format!(
                "this pool was opened in process {} and cannot be used in process {}, forked \
                 from it: fork copies none of its threads. Open a pool in this process \
                 (Pool.open), or start child processes without fork (e.g. Python \
                 multiprocessing's 'spawn' or 'forkserver' method)",
                self.0,
                std::process::id()
            )));
        }
        runtime()?
            .spawn(fut)
            .await
            .map_err(|e| CodexPoolError::Internal(format!("the task failed: {e}")))?
    }
}
