//! The stop signal as every connection task waits for it: polled only when
//! it was woken.
//!
//! A connection task waits for its connection and for the stop
//! ([`crate::app::stopped`], a `watch` channel) in one `select!`, which
//! polls both whenever the task wakes: two to three times per proxied
//! request (the request arrives, the upstream answers, the write
//! completes). Polling a `watch` change that has not happened is not free:
//! it re-registers the task's waker with the channel's `Notify` under its
//! lock (callgrind: ~650 instructions per request, 1.5% of the proxy's
//! whole request path, for the two stop futures a connection task holds).
//!
//! [`OnWake`] gives the wrapped future a waker of its own that notes that
//! it fired and then wakes the task. The wrapped future is polled on the
//! first poll and afterwards only after that waker fired; every other poll
//! is an atomic swap and keeping the task's waker current (an
//! [`AtomicWaker`], which compares before it clones).

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// How long an h2 caller has, after the GOAWAY of a stop, to show any sign
/// of life (the PING's answer, a WINDOW_UPDATE as it reads a response,
/// anything) before its connection is dropped: a caller that is gone (or
/// a NAT that dropped the flow) would otherwise hold the drain to
/// `proxy.drain_timeout`. A live caller answers within a round trip.
pub(crate) const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves once `rx` holds `true` (or its sender is gone), polling the
/// channel only when it changed; see the module docs.
pub(super) fn stopped(rx: tokio::sync::watch::Receiver<bool>) -> OnWake<impl Future<Output = ()>> {
    OnWake::new(crate::app::stopped(rx))
}

/// A future polled only when its own waker fired; see the module docs.
pub(super) struct OnWake<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once.
    waker: Waker,
}

/// What the wrapped future's waker does: note that it fired, wake the task.
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> OnWake<F> {
    /// Wraps `inner`. Boxed: `OnWake` is `Unpin`, so `select!` can poll it
    /// by reference, and the box is made once per connection, not per
    /// request.
    pub(super) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            // The first poll polls `inner`: it registers its waker then.
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the check: a wake between the two finds the
        // task's current waker.
        self.signal.task.register(cx.waker());
        if !self.signal.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set (and its waker woken).
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_only_after_its_waker_fired() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut f = OnWake::new(Counted {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        });
        let task_woken = Arc::new(Flag::default());
        let task_waker = Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task_waker);

        // First poll: the inner future registers.
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Polls for other reasons (the connection woke the task) skip it.
        for _ in 0..5 {
            assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert!(!task_woken.0.load(Ordering::SeqCst));

        // The inner future's waker wakes the task, and the next poll polls it.
        ready.store(true, Ordering::SeqCst);
        let w = inner_waker.lock().unwrap().take().unwrap();
        w.wake();
        assert!(task_woken.0.load(Ordering::SeqCst));
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stopped_resolves_when_the_channel_turns_true() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = stopped(rx);
        let waiter = tokio::spawn(stop);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("stop seen")
            .unwrap();
    }
}
