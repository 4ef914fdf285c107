//! The background driver task of a [`RefreshingSource`](super::RefreshingSource):
//! it wakes when the next refresh is due (ahead of expiry, at expiry, or when
//! backoff ends) even if no request arrives, and sleeps otherwise.
//!
//! The task holds the shared state, not the source; it is aborted when the
//! last clone of the source drops its [`DriverGuard`].

use super::{Ctrl, Inner, Trigger};
use std::sync::Arc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Aborts the driver task when the last clone of the source is dropped.
pub(super) struct DriverGuard(AbortHandle);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the driver for `inner`. Must be called inside a tokio runtime.
pub(super) fn spawn(inner: Arc<Inner>) -> DriverGuard {
    DriverGuard(tokio::spawn(drive(inner)).abort_handle())
}

impl Inner {
    /// When the driver should next act: `None` means only when woken.
    fn next_due(&self, ctrl: &mut Ctrl) -> Option<(Instant, Trigger)> {
        if self.running(ctrl).is_some() {
            return None;
        }
        let now = Instant::now();
        let (due, trigger) = match self.current.load().as_ref() {
            None => (now, Trigger::Expired),
            Some(e) if !e.valid_at(now) => (now, Trigger::Expired),
            Some(e) => (e.refresh_at?, Trigger::Proactive),
        };
        Some((ctrl.next_attempt.map_or(due, |n| n.max(due)), trigger))
    }
}

/// The scheduler: sleeps until the next refresh is due, or until a refresh
/// finishes and the schedule changes.
async fn drive(inner: Arc<Inner>) {
    loop {
        let notified = inner.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Retired by a reload: its successor refreshes (see `retire`).
        if inner.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Paused by a reload: nothing starts until it has decided (its
        // `resume` or `retire` wakes this).
        if inner.paused.load(std::sync::atomic::Ordering::SeqCst) {
            notified.await;
            continue;
        }
        let due = {
            let mut ctrl = inner.lock();
            inner.next_due(&mut ctrl)
        };
        match due {
            Some((at, trigger)) if at <= Instant::now() => {
                inner.kick(trigger);
                notified.await;
            }
            Some((at, _)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}
