//! The module-wide tokio runtime. Every async export runs its core future here (spawned, then
//! awaited through the `JoinHandle`), whatever executor polls the export: asyncio in Python,
//! coroutines in Kotlin, Swift concurrency. So the pool's background tasks (batched writer,
//! change watcher) and a served gateway live on one long-lived multi-thread runtime instead of
//! on the caller's executor, and a foreign caller that goes away does not stop them half-way.
//!
//! A process forked after the runtime started has none of its threads: [`runtime`] refuses to
//! run there (`Internal`, naming the fork) rather than leave every call waiting forever.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

use crate::CodexPoolError;

/// The runtime, and the process that built it.
static RUNTIME: OnceLock<(u32, Result<Runtime, String>)> = OnceLock::new();

/// The runtime, started on first use. In a child forked after that, an error: fork copies none
/// of the runtime's threads (nor a pool's database thread), so a spawned task would never run
/// and its caller would wait forever.
pub(crate) fn runtime() -> Result<&'static Runtime, CodexPoolError> {
    let (built_by, rt) = RUNTIME.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("codexpool-ffi")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the tokio runtime: {e}"));
        (std::process::id(), rt)
    });
    if *built_by != std::process::id() {
        return Err(CodexPoolError::Internal(format!(
            "codexpool cannot run in a process forked after it was used (in process {built_by}): \
             fork copies none of its threads. Open the pool in the child process, and use \
             codexpool in the parent only after forking, or start the children without fork \
             (e.g. Python multiprocessing's 'spawn' or 'forkserver' method)"
        )));
    }
    rt.as_ref().map_err(|e| CodexPoolError::Internal(e.clone()))
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
