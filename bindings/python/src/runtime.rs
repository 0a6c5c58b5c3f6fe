//! The one tokio runtime of the process, and [`run`]: drive a core future to completion from a
//! Python thread with the GIL released.
//!
//! Every blocking call of the module goes through [`run`], so many Python threads can wait on
//! the pool at once, and the pool's background tasks (writer, change watcher, a server's
//! connections and pollers) run on the runtime's worker threads between calls.
//!
//! The runtime is per process and every object that leads to a pool carries its [`Home`]
//! (`codexpool_core::process`): a child forked after a pool was opened gets an error naming
//! the fork from that pool rather than wait forever, and can open a pool of its own.

use std::future::Future;
use std::time::Duration;

pub(crate) use codexpool_core::process::Home;
use codexpool_core::process::ProcessRuntime;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors::CodexPoolError;

/// How often a waiting call takes the GIL back to look for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

static RUNTIME: ProcessRuntime = ProcessRuntime::new("codexpool");

/// This process's runtime ([`ProcessRuntime::get`]).
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    RUNTIME
        .get()
        .map_err(|e| CodexPoolError::new_err(format!("cannot start the tokio runtime: {e}")))
}

/// Objects of this module held weakly for the interpreter's exit hook (the pools to flush, the
/// servers to stop): those of this process still alive then (a forked child's entries are the
/// parent's objects).
pub(crate) struct AtExit<W>(std::sync::Mutex<Vec<(Home, W)>>);

impl<W> AtExit<W> {
    pub(crate) const fn new() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<(Home, W)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `weak`, an object of this process, leaving out the entries `alive` says are gone.
    pub(crate) fn add(&self, weak: W, alive: impl Fn(&W) -> bool) {
        let mut entries = self.entries();
        entries.retain(|(_, w)| alive(w));
        entries.push((Home::here(), weak));
    }

    /// Empties the list, giving the entries of this process.
    pub(crate) fn take_here(&self) -> Vec<W> {
        self.entries()
            .drain(..)
            .filter(|(home, _)| home.is_here())
            .map(|(_, w)| w)
            .collect()
    }
}

/// What the objects that lead to a pool do with their [`Home`].
pub(crate) trait HomeExt {
    /// `CodexPoolError` in any other process than home.
    fn ensure(self) -> PyResult<()>;
    /// [`run`] for an object of this home; the error of [`HomeExt::ensure`] elsewhere.
    fn run<F>(self, py: Python<'_>, fut: F) -> PyResult<F::Output>
    where
        F: Future + Send,
        F::Output: Send;
    /// `Name(fields())` at home; elsewhere `Name(<forked>)`, reading nothing of the pool (a lock
    /// a parent thread held at the fork stays held in the child).
    fn repr(self, name: &str, fields: impl FnOnce() -> String) -> String;
}

impl HomeExt for Home {
    fn ensure(self) -> PyResult<()> {
        self.check()
            .map_err(|e| CodexPoolError::new_err(e.to_string()))
    }

    fn run<F>(self, py: Python<'_>, fut: F) -> PyResult<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.ensure()?;
        run(py, fut)
    }

    fn repr(self, name: &str, fields: impl FnOnce() -> String) -> String {
        match self.is_here() {
            true => format!("{name}({})", fields()),
            false => format!("{name}(<opened in the process this one was forked from>)"),
        }
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
