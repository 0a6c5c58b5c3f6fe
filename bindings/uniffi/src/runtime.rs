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
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::{Duration, Instant};

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
        Joined::new(runtime()?.spawn(fut))
            .await
            .map_err(|e| CodexPoolError::Internal(format!("the task failed: {e}")))?
    }
}

/// A task's `JoinHandle`, awaited so that the wake-up the task's end sends the caller has
/// returned before the await does.
///
/// The runtime's thread that ends the task wakes the caller's future, and through it the
/// foreign executor: in Python, a callback that takes the GIL. Were the await to end first (the
/// caller polls on seeing the wake-up's first effect, while that thread is still inside the
/// callback), a script could end and Python finalise meanwhile: the callback, taking the GIL
/// back, is then stopped with `pthread_exit`, whose unwinding tokio's `catch_unwind` turns into
/// an abort ("FATAL: exception not rethrown": 16 runs in 100 of a script that opens a pool and
/// ends, on a loaded machine). So the handle gets a waker that counts the wake-ups under way,
/// and the poll that finds the task done waits (briefly, without the GIL: a foreign call
/// releases it) until none is.
struct Joined<T> {
    handle: tokio::task::JoinHandle<T>,
    /// The caller's waker, wrapped; replaced when the caller's changes.
    relay: Option<Arc<Relay>>,
    /// Wake-ups under way, through any relay of this await.
    waking: Arc<AtomicUsize>,
}

impl<T> Joined<T> {
    fn new(handle: tokio::task::JoinHandle<T>) -> Self {
        Self {
            handle,
            relay: None,
            waking: Arc::default(),
        }
    }
}

struct Relay {
    waker: Waker,
    waking: Arc<AtomicUsize>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.waking.fetch_add(1, Ordering::SeqCst);
        let outer = IN_WAKE.replace(true);
        self.waker.wake_by_ref();
        IN_WAKE.set(outer);
        self.waking.fetch_sub(1, Ordering::SeqCst);
    }
}

thread_local! {
    /// This thread is inside a [`Relay`]'s wake-up: an executor that polls at once, in the
    /// wake-up's callback (Kotlin's `Dispatchers.Unconfined`), must not wait for it to return.
    static IN_WAKE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Longest wait for a wake-up under way: a foreign callback that takes this long is stuck, and
/// the caller may as well go on. (Long in tests, so that a wait where none is due shows.)
const WAKE_WAIT: Duration = if cfg!(test) {
    Duration::from_secs(60)
} else {
    Duration::from_secs(1)
};

impl<T> Future for Joined<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let relay = match &this.relay {
            Some(r) if r.waker.will_wake(cx.waker()) => r.clone(),
            _ => {
                let r = Arc::new(Relay {
                    waker: cx.waker().clone(),
                    waking: this.waking.clone(),
                });
                this.relay = Some(r.clone());
                r
            }
        };
        let waker = Waker::from(relay);
        let out = ready!(Pin::new(&mut this.handle).poll(&mut Context::from_waker(&waker)));
        let since = Instant::now();
        while !IN_WAKE.get()
            && this.waking.load(Ordering::SeqCst) > 0
            && since.elapsed() < WAKE_WAIT
        {
            std::thread::yield_now();
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use super::Joined;

    type Shared = Arc<Mutex<Option<std::pin::Pin<Box<Joined<u32>>>>>>;

    /// An executor that polls again at once, inside the wake-up (Kotlin's
    /// `Dispatchers.Unconfined` does): that poll finds the task done and returns without
    /// waiting for the wake-up it is part of to return.
    struct PollsInWake {
        fut: Shared,
        out: Mutex<Option<u32>>,
    }

    impl Wake for PollsInWake {
        fn wake(self: Arc<Self>) {
            let waker = Waker::from(self.clone());
            let mut slot = self.fut.lock().unwrap();
            if let Some(fut) = slot.as_mut()
                && let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(&waker))
            {
                *self.out.lock().unwrap() = Some(out.unwrap());
                *slot = None;
            }
        }
    }

    #[test]
    fn a_poll_inside_the_wake_up_does_not_wait_for_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = rt.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            7
        });
        let fut: Shared = Arc::new(Mutex::new(Some(Box::pin(Joined::new(handle)))));
        let exec = Arc::new(PollsInWake {
            fut: fut.clone(),
            out: Mutex::new(None),
        });
        let waker = Waker::from(exec.clone());
        let first = fut
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .as_mut()
            .poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending());
        let started = std::time::Instant::now();
        tx.send(()).unwrap();
        while exec.out.lock().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the poll inside the wake-up waited for it"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*exec.out.lock().unwrap(), Some(7));
    }
}
