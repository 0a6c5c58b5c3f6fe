//! `Repoll`: runs a connection future again at once when it woke itself while being polled,
//! instead of letting the runtime treat the wake as a yield.
//!
//! hyper's server wakes its own connection task whenever the handler reads the request body:
//! the body channel wakes the sender (the connection's dispatcher, which registered itself
//! while sending) when the handler takes the chunk — and the handler runs inside that same
//! task. tokio's multi-threaded scheduler sees a task notified while it was running, puts it at
//! the back of the run queue and wakes a parked worker to steal it: one futex wake-up, a thread
//! switch and a move to another core per request. Measured with `codexpool-bare-relay` at
//! concurrency 1: a relay that reads the request body before forwarding it served 7.5k req/s
//! instead of 9.5k, with both workers busy instead of one.
//!
//! `Repoll` gives the future its own waker. A wake that arrives while the future is being polled
//! (from its own code or from another thread) only marks it, and the future is polled again
//! right away, at most [`MAX_REPOLLS`] times in a row, so a future that keeps waking itself
//! (hyper yields after 16 loop turns; tokio's budget runs out) still yields to the scheduler. A
//! wake that arrives between polls goes to the task's real waker as usual.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// How many times in a row a self-woken future is polled again before it yields.
pub(crate) const MAX_REPOLLS: usize = 2;

/// The future is being polled.
const POLLING: u8 = 1;
/// Woken since the current poll started.
const WOKEN: u8 = 2;

pub(crate) struct Repoll<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once.
    waker: Waker,
}

struct Signal {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // While a poll runs, the mark is enough: the poller looks at it when the poll returns.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

impl<F: Future> Repoll<F> {
    pub(crate) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..=MAX_REPOLLS {
            // Marked as polling before the task's waker is stored: a wake in between is seen
            // as one during the poll, never lost.
            this.signal.state.store(POLLING, Ordering::Release);
            this.signal.task.register(cx.waker());
            let out = this.inner.as_mut().poll(&mut inner_cx);
            // Clears POLLING and reads the mark in one step: a wake after this goes to the task.
            let woken = this.signal.state.swap(0, Ordering::AcqRel) & WOKEN != 0;
            if out.is_ready() || !woken {
                return out;
            }
        }
        // Still waking itself: let the scheduler run the others first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the real wakes it gets.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future>(f: &mut Repoll<F>, counter: &Arc<Counter>) -> Poll<F::Output> {
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        Pin::new(f).poll(&mut cx)
    }

    /// Wakes itself during its first `n` polls, then is ready; counts its polls.
    fn self_waking(n: usize, polls: Arc<AtomicUsize>) -> impl Future<Output = usize> {
        std::future::poll_fn(move |cx| {
            let k = polls.fetch_add(1, Ordering::SeqCst);
            if k < n {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(k)
            }
        })
    }

    #[test]
    fn a_self_wake_during_the_poll_is_polled_again_without_waking_the_task() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let polls = Arc::new(AtomicUsize::new(0));
        let mut f = Repoll::new(self_waking(MAX_REPOLLS, polls.clone()));
        assert_eq!(poll_once(&mut f, &counter), Poll::Ready(MAX_REPOLLS));
        assert_eq!(polls.load(Ordering::SeqCst), MAX_REPOLLS + 1);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let polls = Arc::new(AtomicUsize::new(0));
        let mut f = Repoll::new(self_waking(usize::MAX, polls.clone()));
        assert_eq!(poll_once(&mut f, &counter), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), MAX_REPOLLS + 1);
        // It yielded: the task was woken to be polled again later.
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(&mut f, &counter), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), 2 * (MAX_REPOLLS + 1));
    }

    #[test]
    fn a_wake_between_polls_reaches_the_task_from_another_thread() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<u32>();
        let mut f = Repoll::new(async move { (&mut rx).await.unwrap() });
        assert_eq!(poll_once(&mut f, &counter), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        std::thread::spawn(move || tx.send(7).unwrap())
            .join()
            .unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(&mut f, &counter), Poll::Ready(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_from_other_tasks_are_never_lost() {
        // Many hand-offs between a wrapped task and a plain one: a lost wake hangs the test.
        let (to_wrapped, mut wrapped_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (to_plain, mut plain_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let wrapped = tokio::spawn(Repoll::new(async move {
            let mut sum = 0u64;
            while let Some(n) = wrapped_rx.recv().await {
                sum += u64::from(n);
                if to_plain.send(n + 1).await.is_err() {
                    break;
                }
            }
            sum
        }));
        let plain = tokio::spawn(async move {
            for i in 0..20_000u32 {
                to_wrapped.send(i).await.unwrap();
                assert_eq!(plain_rx.recv().await, Some(i + 1));
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(30), plain)
            .await
            .expect("a wake was lost")
            .unwrap();
        let sum = wrapped.await.unwrap();
        assert_eq!(sum, (0..20_000u64).sum::<u64>());
    }
}
