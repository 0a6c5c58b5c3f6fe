//! The module-wide tokio runtime. Every async export runs its core future here (spawned, then
//! awaited through the `JoinHandle`), whatever executor polls the export: asyncio in Python,
//! coroutines in Kotlin, Swift concurrency. So the pool's background tasks (batched writer,
//! change watcher) and a served gateway live on one long-lived multi-thread runtime instead of
//! on the caller's executor, and a foreign caller that goes away does not stop them half-way.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

use crate::CodexPoolError;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The runtime, started on first use.
pub(crate) fn runtime() -> Result<&'static Runtime, CodexPoolError> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("codexpool-ffi")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| CodexPoolError::Internal(e.clone()))
}

/// Runs `fut` on the runtime and waits for it without blocking the caller's executor.
pub(crate) async fn run<T, F>(fut: F) -> Result<T, CodexPoolError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, CodexPoolError>> + Send + 'static,
{
    runtime()?
        .spawn(fut)
        .await
        .map_err(|e| CodexPoolError::Internal(format!("the task failed: {e}")))?
}
