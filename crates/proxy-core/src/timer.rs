//! A connection's timers, reused from one request to the next.
//!
//! Two deadlines run for every request: hyper's wait for the next request
//! head (`proxy.client_header_timeout`) and the route's upstream timeout
//! (`routes[].timeout`). A fresh `tokio::time::Sleep` for each means two
//! entries put into tokio's timer wheel and taken out again per request,
//! each under the timer driver's lock, plus hyper's allocation of the
//! header timer. A request almost never times out, and the next deadline
//! on a connection is almost always later than the last one, so a
//! [`Reuse`] keeps one `Sleep` per connection and purpose: handed out
//! again, it is moved to its new deadline, and tokio moves a timer still in
//! its wheel to a later deadline with one atomic update (the wheel sees the
//! later deadline when the old one comes and files the entry again). An
//! earlier deadline (another route's shorter timeout) re-files the entry,
//! as a fresh one would be.
//!
//! The kept `Sleep` still holds the waker of the task that polled it last:
//! when its old deadline comes, that task wakes once for nothing. Over
//! HTTP/1.1 that is the connection's own task; over h2 it may be a stream's
//! finished task, whose allocation the waker keeps until then or until the
//! next request polls the spare: one per connection at most. The spare is
//! dropped, and leaves the wheel, with the last handle on its [`Reuse`]:
//! the connection's, or a request's context that outlives it.
//!
//! Like `tokio::time::Timeout`, a caller that polls its own work first
//! polls the sleep with [`Reused::poll_after`]: when that work used up the
//! task's cooperative budget, the sleep is polled outside the budget, or a
//! send that always ends its poll on an empty budget would never time out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

type Spare = Option<Pin<Box<Sleep>>>;

/// One spare `Sleep`, handed out by [`Reuse::sleep_until`] and given back
/// when its [`Reused`] is dropped. A clone shares the spare.
#[derive(Clone, Debug, Default)]
pub struct Reuse {
    spare: Arc<Mutex<Spare>>,
}

impl Reuse {
    /// A sleep until `deadline`: the spare, moved to it, if there is one
    /// (another request on the connection may be using it: h2), else a new
    /// one.
    pub fn sleep_until(&self, deadline: Instant) -> Reused {
        let spare = self.spare.lock().map_or(None, |mut s| s.take());
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Reused {
            sleep: Some(sleep),
            home: Some(self.spare.clone()),
        }
    }
}

/// A sleep that goes back to its [`Reuse`] (if it came from one) when it
/// is dropped, still in the timer wheel.
#[derive(Debug)]
pub struct Reused {
    /// Always `Some` until dropped.
    sleep: Spare,
    home: Option<Arc<Mutex<Spare>>>,
}

impl Reused {
    /// A sleep of its own, not given back to anything (no [`Reuse`] at
    /// hand: a service used outside the listener).
    pub fn fresh(deadline: Instant) -> Self {
        Self {
            sleep: Some(Box::pin(tokio::time::sleep_until(deadline))),
            home: None,
        }
    }

    /// A sleep until `deadline`: from `reuse` if given, else [`Self::fresh`].
    pub fn until(reuse: Option<&Reuse>, deadline: Instant) -> Self {
        match reuse {
            Some(r) => r.sleep_until(deadline),
            None => Self::fresh(deadline),
        }
    }

    /// Polls the sleep after the caller's own work was polled in the
    /// same turn, `had_budget` telling whether the task had cooperative
    /// budget left before that (`tokio::task::coop::has_budget_remaining`).
    /// If that work used the budget up, the sleep is polled outside it,
    /// as `tokio::time::Timeout` does, so the deadline is still seen.
    pub fn poll_after(&mut self, had_budget: bool, cx: &mut Context<'_>) -> Poll<()> {
        if had_budget && !tokio::task::coop::has_budget_remaining() {
            Pin::new(&mut tokio::task::coop::unconstrained(&mut *self)).poll(cx)
        } else {
            Pin::new(self).poll(cx)
        }
    }

    fn reset(&mut self, deadline: Instant) {
        if let Some(s) = &mut self.sleep {
            s.as_mut().reset(deadline);
        }
    }
}

impl Future for Reused {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx),
            // Not reachable: taken only on drop.
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        let (Some(sleep), Some(home)) = (self.sleep.take(), self.home.take()) else {
            return;
        };
        if let Ok(mut spare) = home.lock() {
            // One spare is enough; another one in use is dropped.
            if spare.is_none() {
                *spare = Some(sleep);
            }
        }
    }
}

impl hyper::rt::Sleep for Reused {}

/// `start + duration`, or 30 years on (tokio's "far future") when that
/// does not fit: as `tokio::time::timeout`, a deadline past the end of
/// time is as good as none, not a panic.
pub fn deadline_after(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30))
}

/// hyper's timer for one HTTP/1.1 connection: its header read timeout
/// reuses one `Sleep` (hyper drops its header timer once each head is
/// read, and asks for a new one for the next).
#[derive(Clone, Debug, Default)]
pub struct HyperTimer(pub Reuse);

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(deadline_after(Instant::now(), duration)))
    }

    #[expect(
        clippy::disallowed_types,
        reason = "hyper's `Timer` trait takes std's `Instant`; converted to tokio's at once"
    )]
    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(deadline.into()))
    }

    #[expect(
        clippy::disallowed_types,
        reason = "hyper's `Timer` trait takes std's `Instant`; made from tokio's (paused-clock tests)"
    )]
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    #[expect(
        clippy::disallowed_types,
        reason = "hyper's `Timer` trait takes std's `Instant`; converted to tokio's at once"
    )]
    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Reused>() {
            Some(s) => Pin::into_inner(s).reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests;
