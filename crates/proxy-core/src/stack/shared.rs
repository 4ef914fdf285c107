//! [`SharedService`]: a type-erased service whose clones share one stack.
//!
//! tower's `BoxCloneSyncService` erases a stack's type too, but each clone
//! is a new box holding a clone of the stack, and the proxy clones its
//! erased services per request (the router a route's stack, the 401 retry
//! the stack below it, and the listener the whole proxy when it is built
//! erased): a heap allocation and free per clone for nothing but type
//! erasure. A `SharedService` keeps one stack behind an `Arc`; a clone is a
//! reference count. A call clones the concrete stack (its own clones are
//! `Arc`s) on the stack frame, calls it and boxes its future, as
//! `BoxCloneSyncService` boxes its future. (The `latchkey` binary builds
//! the whole proxy with [`build_typed`](super::build_typed), not erased, so
//! its listener holds that outermost future without a box.)
//!
//! Readiness moves into the call: [`poll_ready`](Service::poll_ready) is
//! always ready, and [`call`](Service::call) calls the stack at once if it
//! is ready, else waits for it inside the returned future
//! ([`call_now_or_wait`]); a readiness error is the call's result. This is
//! what the proxy did with every erased stack already (its layers are ready
//! at once unless one limits them, and each request clones the stack it
//! calls), so a limiting layer inside still makes its callers wait, one
//! request at a time, and never drops one.

use super::call_now_or_wait;
use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// A cloneable, type-erased service sharing one stack; see the module docs.
pub struct SharedService<T, U, E> {
    inner: Arc<dyn Erased<T, U, E>>,
}

/// The erased stack: called by reference.
trait Erased<T, U, E>: Send + Sync {
    fn call(&self, req: T) -> BoxFuture<'static, Result<U, E>>;
}

impl<S, T> Erased<T, S::Response, S::Error> for S
where
    S: Service<T> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    T: Send + 'static,
{
    fn call(&self, req: T) -> BoxFuture<'static, Result<S::Response, S::Error>> {
        Box::pin(call_now_or_wait(self.clone(), req))
    }
}

impl<T, U, E> SharedService<T, U, E> {
    /// Erases `service`'s type.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<T, Response = U, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        U: Send + 'static,
        E: Send + 'static,
        T: Send + 'static,
    {
        Self {
            inner: Arc::new(service),
        }
    }

    /// Calls the stack without cloning this handle (`&self`): ready at
    /// once, or waiting for readiness inside the future.
    pub fn call_shared(&self, req: T) -> BoxFuture<'static, Result<U, E>> {
        self.inner.call(req)
    }
}

impl<T, U, E> Clone for SharedService<T, U, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, U, E> Service<T> for SharedService<T, U, E> {
    type Response = U;
    type Error = E;
    type Future = BoxFuture<'static, Result<U, E>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        // Checked in `call`; see the module docs.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: T) -> Self::Future {
        self.inner.call(req)
    }
}

impl<T, U, E> fmt::Debug for SharedService<T, U, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedService").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// Counts its calls; ready while `ready` has a permit, never if
    /// `fail_ready`.
    #[derive(Clone)]
    struct Probe {
        calls: Arc<AtomicUsize>,
        ready: Arc<tokio::sync::Semaphore>,
        fail_ready: bool,
    }

    impl Service<u32> for Probe {
        type Response = u32;
        type Error = &'static str;
        type Future = futures_util::future::Ready<Result<u32, &'static str>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
            if self.fail_ready {
                return Poll::Ready(Err("not ready, ever"));
            }
            if self.ready.available_permits() > 0 {
                return Poll::Ready(Ok(()));
            }
            // Woken when a permit is added.
            let ready = self.ready.clone();
            let waker = cx.waker().clone();
            tokio::spawn(async move {
                let _p = ready.acquire().await;
                waker.wake();
            });
            Poll::Pending
        }

        fn call(&mut self, req: u32) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            futures_util::future::ready(Ok(req * 2))
        }
    }

    fn probe(permits: usize, fail_ready: bool) -> (Probe, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        (
            Probe {
                calls: calls.clone(),
                ready: Arc::new(tokio::sync::Semaphore::new(permits)),
                fail_ready,
            },
            calls,
        )
    }

    #[tokio::test]
    async fn clones_share_the_stack_and_calls_reach_it() {
        let (p, calls) = probe(1, false);
        let shared = SharedService::new(p);
        let copies: Vec<_> = (0..3).map(|_| shared.clone()).collect();
        assert_eq!(Arc::strong_count(&shared.inner), 4, "clones are references");
        for (i, c) in copies.into_iter().enumerate() {
            let n = u32::try_from(i).unwrap();
            assert_eq!(c.oneshot(n).await, Ok(n * 2));
        }
        assert_eq!(shared.call_shared(21).await, Ok(42));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_stack_that_is_not_ready_is_waited_for_not_called() {
        let (p, calls) = probe(0, false);
        let permits = p.ready.clone();
        let shared = SharedService::new(p);
        let waiting = tokio::spawn(shared.call_shared(5));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "called while not ready");
        assert!(!waiting.is_finished());
        permits.add_permits(1);
        assert_eq!(waiting.await.unwrap(), Ok(10));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_readiness_error_is_the_calls_result() {
        let (p, calls) = probe(1, true);
        let mut shared = SharedService::new(p);
        assert_eq!(
            std::future::poll_fn(|cx| shared.poll_ready(cx)).await,
            Ok(())
        );
        assert_eq!(shared.call(1).await, Err("not ready, ever"));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
