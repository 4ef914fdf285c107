//! `proxy.send_timeout`: a caller that stops taking the response is cut off.
//!
//! A caller that stops reading (a hung client, a paused process, a peer
//! whose network went away without a reset) leaves the proxy's writes to
//! its socket pending once the socket's send buffer is full. Without a
//! bound the connection would stay for as long as the caller stays
//! connected, and with it the response being streamed: its upstream
//! connection, its in-flight slot (`proxy.max_concurrent_requests`) and
//! the buffers of both sides. [`SendTimer`] closes such a connection when
//! a write to the caller has stayed pending for the timeout: nginx's
//! `send_timeout` (same default, 60 s), which likewise runs between two
//! successive writes, not over a whole response.
//!
//! Like nginx's, it sees progress only when the socket takes data again,
//! and the kernel reports that only once about a third of the send buffer
//! has drained (the buffer grows to a few MiB after a fast start): a caller
//! that keeps reading, but less than that per timeout, is cut too.
//!
//! It watches the connection's socket (see [`super::linger::Lingering`],
//! which holds it), plain or TLS. An h2 caller that stops reading usually
//! does not fill the socket: each stream may be sent only its flow-control
//! window, which the socket buffers take whole, and hyper then stops
//! polling the stream's body (so `routes[].response_idle_timeout` does not
//! see it either). For h2 the same timeout is applied to each response
//! body instead (see [`super::stall`]).
//!
//! The timer is armed only when a write finds the socket full, so a caller
//! that keeps up costs one branch per write.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Bounds how long a write to the caller may stay pending.
pub(super) struct SendTimer {
    /// Zero: no bound.
    timeout: Duration,
    /// Made at the first stall, then reset for each later one.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A write is pending and `sleep` runs for it.
    armed: bool,
    /// The timeout ran out: every later write fails too.
    fired: bool,
}

impl SendTimer {
    /// A timer bounding each stall at `timeout` (zero: never).
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
            armed: false,
            fired: false,
        }
    }

    /// Passes on what a write to the caller's socket returned: a pending
    /// write arms the timer (or polls it, if armed already), and fails once
    /// it ran out; a write that completed disarms it. `peer` names the
    /// caller in the log line.
    pub(super) fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        peer: impl FnOnce() -> Option<std::net::SocketAddr>,
    ) -> Poll<io::Result<T>> {
        if self.fired {
            return Poll::Ready(Err(self.error()));
        }
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending if self.timeout.is_zero() => Poll::Pending,
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    let deadline = Instant::now() + self.timeout;
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let ran_out = self
                    .sleep
                    .as_mut()
                    .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if !ran_out {
                    return Poll::Pending;
                }
                self.fired = true;
                let peer = peer().map_or_else(|| "unknown".to_string(), |a| a.to_string());
                tracing::warn!(
                    caller = %peer,
                    send_timeout = ?self.timeout,
                    "closing a connection whose caller took nothing of its response for proxy.send_timeout"
                );
                Poll::Ready(Err(self.error()))
            }
        }
    }

    fn error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the caller took nothing for {:?} (proxy.send_timeout)",
                self.timeout
            ),
        )
    }
}

#[cfg(test)]
mod tests;
