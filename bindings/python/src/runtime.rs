//! The one tokio runtime of the process, and [`run`]: drive a core future to completion from a
//! Python thread with the GIL released.
//!
//! Every blocking call of the module goes through [`run`], so many Python threads can wait on
//! the pool at once, and the pool's background tasks (writer, change watcher, a server's
//! connections and pollers) run on the runtime's worker threads between calls.
//!
//! A process forked after the runtime started has none of its threads, nor the database thread
//! or background tasks of a pool opened before the fork. So the runtime is per process (a
//! forked child that uses codexpool builds its own), and every object that leads to a pool
//! carries its [`Home`]: used in another process it raises an error naming the fork rather
//! than wait forever, while a pool opened in the child works there.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors::CodexPoolError;

/// How often a waiting call takes the GIL back to look for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The runtime, and the process that built it.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// This process's runtime, built on first use, and again in a child forked after that: the
/// parent's has no threads there, and is left alone (dropping it would wait for them).
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((built_by, rt)) = *slot
        && built_by == pid
    {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("codexpool")
        .build()
        .map_err(|e| CodexPoolError::new_err(format!("cannot start the tokio runtime: {e}")))?;
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

    /// An error in any other process (a child forked after the pool was opened).
    pub(crate) fn check(self) -> PyResult<()> {
        if self.is_here() {
            return Ok(());
        }
        Err(CodexPoolError::new_err(format!(
            "this pool was opened in process {} and cannot be used in process {}, forked from \
             it: fork copies none of its threads. Open a pool in this process (Pool.open), or \
             start child processes with multiprocessing's 'spawn' or 'forkserver' method",
            self.0,
            std::process::id()
        )))
    }

    /// [`run`] for an object of this home; the error of [`Home::check`] elsewhere.
    pub(crate) fn run<F>(self, py: Python<'_>, fut: F) -> PyResult<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.check()?;
        run(py, fut)
    }
}

/// Runs `fut` on the runtime with the GIL released, waking every 100 ms to let Python handle
/// signals (Ctrl-C drops the future and raises `KeyboardInterrupt`).
fn run<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
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
