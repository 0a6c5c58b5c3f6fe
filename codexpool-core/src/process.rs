//! One tokio runtime per process, for embedders that drive the pool from threads of their own
//! (the Python and uniffi bindings), and [`Home`]: the process a pool was opened in.
//!
//! `fork()` copies none of a runtime's threads, nor a pool's database thread or background
//! tasks. A child forked after a pool was opened builds a runtime of its own
//! ([`ProcessRuntime::get`]) and can open pools there; the parent's pools, used in the child,
//! would wait forever, so their objects keep their [`Home`] and refuse instead.

use std::sync::{Mutex, PoisonError};

use tokio::runtime::Runtime;

/// A multi-thread runtime built on first use in each process.
pub struct ProcessRuntime {
    thread_name: &'static str,
    slot: Mutex<Option<(u32, &'static Runtime)>>,
}

impl ProcessRuntime {
    /// A runtime whose threads are called `thread_name`, not built yet.
    pub const fn new(thread_name: &'static str) -> Self {
        Self {
            thread_name,
            slot: Mutex::new(None),
        }
    }

    /// This process's runtime, built on first use, and again in a child forked after that: the
    /// parent's has no threads there and is left alone (dropping it would wait for them).
    pub fn get(&self) -> std::io::Result<&'static Runtime> {
        let pid = std::process::id();
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built_by, rt)) = *slot
            && built_by == pid
        {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(self.thread_name)
            .build()?;
        let rt: &'static Runtime = Box::leak(Box::new(rt));
        *slot = Some((pid, rt));
        Ok(rt)
    }
}

/// The process a pool was opened in: its database thread and background tasks exist only there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Home(u32);

impl Home {
    /// This process.
    pub fn here() -> Self {
        Self(std::process::id())
    }

    /// Whether this is the process.
    pub fn is_here(self) -> bool {
        self.0 == std::process::id()
    }

    /// [`Forked`] in any other process (a child forked after the pool was opened).
    pub fn check(self) -> Result<(), Forked> {
        match self.is_here() {
            true => Ok(()),
            false => Err(Forked {
                home: self.0,
                here: std::process::id(),
            }),
        }
    }
}

/// A pool used in a process forked from the one it was opened in.
#[derive(Debug, thiserror::Error)]
#[error(
    "this pool was opened in process {home} and cannot be used in process {here}, forked from \
     it: fork copies none of its threads. Open a pool in this process (Pool.open) on another \
     database file (not on one process {home} had open), or start child processes without fork \
     (Python multiprocessing's 'spawn' or 'forkserver' method)"
)]
pub struct Forked {
    home: u32,
    here: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_this_process_and_a_runtime_is_built_once() {
        assert!(Home::here().is_here());
        assert!(Home::here().check().is_ok());
        let other = Home(std::process::id().wrapping_add(1));
        let e = other.check().unwrap_err().to_string();
        assert!(
            e.contains("forked from it") && e.contains("Pool.open"),
            "{e}"
        );

        static RT: ProcessRuntime = ProcessRuntime::new("codexpool-test");
        let (a, b) = (RT.get().unwrap(), RT.get().unwrap());
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.block_on(async { 1 + 1 }), 2);
    }
}
