//! The one tokio runtime of the process, and [`run`]: drive a core future to completion from a
//! Python thread with the GIL released.
//!
//! Every blocking call of the module goes through [`run`], so many Python threads can wait on
//! the pool at once, and the pool's background tasks (writer, change watcher, a server's
//! connections and pollers) run on the runtime's worker threads between calls.
//!
//! A process forked after the runtime started has none of its threads: [`runtime`] refuses to
//! run there (an error naming the fork) rather than wait forever.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors::CodexPoolError;

/// How often a waiting call takes the GIL back to look for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The runtime, and the process that built it.
static RUNTIME: OnceLock<(u32, std::io::Result<Runtime>)> = OnceLock::new();

/// The process-wide runtime, built on first use. In a child forked after that, an error: fork
/// copies none of the runtime's threads (nor a pool's database thread), so any wait there
/// would never end.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let (built_by, rt) = RUNTIME.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("codexpool")
            .build();
        (std::process::id(), rt)
    });
    if *built_by != std::process::id() {
        return Err(CodexPoolError::new_err(format!(
            "codexpool cannot run in a process forked after it was used (in process {built_by}): \
             fork copies none of its threads. Open the pool in the child process, and use \
             codexpool in the parent only after forking, or start the children with \
             multiprocessing's 'spawn' or 'forkserver' method"
        )));
    }
    rt.as_ref()
        .map_err(|e| CodexPoolError::new_err(format!("cannot start the tokio runtime: {e}")))
}

/// Runs `fut` on the runtime with the GIL released, waking every 100 ms to let Python handle
/// signals (Ctrl-C drops the future and raises `KeyboardInterrupt`).
pub(crate) fn run<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        // A Python callback (e.g. a refresh progress callback) called back into the module.
        return Err(CodexPoolError::new_err(
            "a blocking codexpool call cannot be made from inside a codexpool callback",
        ));
    }
    let rt = runtime()?;
    let mut fut = std::pin::pin!(fut);
    loop {
        // The timer is made inside `block_on`, where the runtime's time driver is current.
        let step = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, fut.as_mut()).await })
        });
        match step {
            Ok(out) => return Ok(out),
            Err(_) => py.check_signals()?,
        }
    }
}
