//! The module-wide tokio runtime. Every async export runs its core future here (spawned, then
//! awaited through the `JoinHandle`), whatever executor polls the export: asyncio in Python,
//! coroutines in Kotlin, Swift concurrency. So the pool's background tasks (batched writer,
//! change watcher) and a served gateway live on one long-lived multi-thread runtime instead of
//! on the caller's executor, and a foreign caller that goes away does not stop them half-way.
//!
//! The runtime is per process and every object that leads to a pool carries its [`Home`]
//! (`codexpool_core::process`): a child forked after a pool was opened gets `Internal`, naming
//! the fork, from that pool rather than wait forever, and can open a pool of its own.

use std::future::Future;

pub(crate) use codexpool_core::process::Home;
use codexpool_core::process::ProcessRuntime;
use tokio::runtime::Runtime;

use crate::CodexPoolError;

static RUNTIME: ProcessRuntime = ProcessRuntime::new("codexpool-ffi");

/// This process's runtime ([`ProcessRuntime::get`]).
pub(crate) fn runtime() -> Result<&'static Runtime, CodexPoolError> {
    RUNTIME
        .get()
        .map_err(|e| CodexPoolError::Internal(format!("cannot start the tokio runtime: {e}")))
}

/// What the objects that lead to a pool do with their [`Home`].
pub(crate) trait HomeExt {
    /// `Internal` in any other process than home (a child forked after the pool was opened):
    /// the pool's memory there is a copy nothing updates, and a lock a parent thread held at
    /// the fork stays held.
    fn ensure(self) -> Result<(), CodexPoolError>;
    /// Runs `fut` on the runtime and waits for it without blocking the caller's executor; the
    /// error of [`HomeExt::ensure`] in any other process than home.
    async fn run<T, F>(self, fut: F) -> Result<T, CodexPoolError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, CodexPoolError>> + Send + 'static;
}

impl HomeExt for Home {
    fn ensure(self) -> Result<(), CodexPoolError> {
        self.check()
            .map_err(|e| CodexPoolError::Internal(e.to_string()))
    }

    async fn run<T, F>(self, fut: F) -> Result<T, CodexPoolError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, CodexPoolError>> + Send + 'static,
    {
        self.ensure()?;
        runtime()?
            .spawn(fut)
            .await
            .map_err(|e| CodexPoolError::Internal(format!("the task failed: {e}")))?
    }
}
