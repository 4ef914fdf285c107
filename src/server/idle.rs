//! `proxy.client_idle_timeout`: h2 connections that go quiet are closed.
//!
//! hyper bounds an HTTP/1.1 connection's wait for its next request (the
//! header read timeout, `proxy.client_header_timeout`), but not an h2
//! connection's: one that carries no more requests, or a caller that
//! agreed on h2 over TLS and never sent its preface, would stay open (a
//! file descriptor and hyper's connection state) until the peer or a
//! shutdown closed it. nginx closes such a connection after
//! `keepalive_timeout` (75 s), Envoy after its `idle_timeout` (1 h).
//!
//! Here a connection served as h2 (or on hyper-util's auto builder, which
//! serves TLS h2) counts the bytes its caller sends: [`Heard`] notes, on
//! each read that returned data, that the caller was heard from. When it
//! was not heard from for the idle timeout, the connection is shut down
//! gracefully, as on a stop: a GOAWAY, the requests in flight finish, new
//! ones go to a new connection, which every h2 client opens on its own. A
//! request waiting a long time for its answer (a long poll) therefore is
//! not cut; only its connection takes no new requests. A caller's h2 PING
//! counts as being heard from.
//!
//! The check runs every third of the timeout, so a quiet connection is
//! closed between the timeout and 4/3 of it. A graceful h2 close waits for
//! the caller to answer a PING, with no limit; a caller that does not
//! answer within [`grace`] (a hung client, a peer that is gone, a
//! slowloris that sent its SETTINGS and stopped) is dropped then. Per read it costs one relaxed
//! store; the timer is polled only when it fires ([`super::stop::OnWake`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A caller's stream that notes when the caller sent something.
pub(super) struct Heard<S> {
    inner: S,
    caller: Arc<Caller>,
    /// The caller's first bytes, up to four (`PRI `), and how many came:
    /// a TLS caller chooses its records, so the preface may come a byte at
    /// a time.
    first: [u8; 4],
    seen: usize,
}

/// What [`Heard`] learnt of its caller.
#[derive(Debug, Default)]
pub(super) struct Caller {
    /// Turns true on every read that returned data.
    pub(super) heard: AtomicBool,
    /// The caller's first bytes were the h2 preface.
    pub(super) h2: AtomicBool,
}

impl<S> Heard<S> {
    /// Wraps `inner`; the returned [`Caller`] says what was read.
    pub(super) fn new(inner: S) -> (Self, Arc<Caller>) {
        let caller = Arc::new(Caller::default());
        (
            Self {
                inner,
                caller: caller.clone(),
                first: [0; 4],
                seen: 0,
            },
            caller,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            if self.seen < self.first.len() {
                let this = &mut *self;
                let new = buf.filled().get(before..).unwrap_or_default();
                for (slot, b) in this.first.iter_mut().skip(this.seen).zip(new) {
                    *slot = *b;
                    this.seen += 1;
                }
                // `PRI * HTTP/2.0`: no HTTP/1.1 request starts so.
                let h2 = this
                    .first
                    .get(..this.seen)
                    .is_some_and(|f| b"PRI ".starts_with(f));
                this.caller
                    .h2
                    .store(h2 && this.seen == this.first.len(), Ordering::Relaxed);
            }
            self.caller.heard.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a caller whose connection was closed for quiet has to show a
/// sign of life (it is sent a GOAWAY and, on h2, a PING) before the
/// connection is dropped: a third of the idle timeout, at most 30 s.
pub(super) fn grace(timeout: Duration) -> Duration {
    (timeout / 3).min(Duration::from_secs(30))
}

/// Resolves once the caller was not heard from for `timeout` (between it
/// and 4/3 of it; see the module docs); never when `timeout` is zero (off).
pub(super) async fn quiet_for(caller: Arc<Caller>, timeout: Duration) {
    let heard = &caller.heard;
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let step = timeout / 3;
    let mut quiet_steps = 0;
    loop {
        tokio::time::sleep(step).await;
        if heard.swap(false, Ordering::Relaxed) {
            quiet_steps = 0;
        } else {
            quiet_steps += 1;
            if quiet_steps >= 3 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Resolves after three quiet checks in a row, a third of the timeout
    /// apart; being heard from in between starts the count again.
    #[tokio::test(start_paused = true)]
    async fn quiet_means_no_byte_for_the_whole_timeout() {
        let caller = Arc::new(Caller::default());
        let start = Instant::now();
        quiet_for(caller.clone(), Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));

        // Heard from every 25 s for 200 s: never quiet for 30 s.
        let start = Instant::now();
        let talker = tokio::spawn({
            let caller = caller.clone();
            async move {
                for _ in 0..8 {
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    caller.heard.store(true, Ordering::Relaxed);
                }
            }
        });
        quiet_for(caller.clone(), Duration::from_secs(30)).await;
        talker.await.unwrap();
        let took = start.elapsed();
        // The last byte at 200 s; quiet from there for 30 to 40 s.
        assert!(
            (Duration::from_secs(230)..=Duration::from_secs(240)).contains(&took),
            "{took:?}"
        );
    }

    /// The preface marks an h2 caller however it is cut into reads (a TLS
    /// caller chooses its records: `P`, then the rest).
    #[tokio::test]
    async fn the_preface_marks_an_h2_caller_a_byte_at_a_time() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for (pieces, h2) in [
            (&[&b"P"[..], b"RI * HTTP/2.0\r\n"][..], true),
            (&[&b"PR"[..], b"I", b" * HTTP/2.0\r\n"][..], true),
            (&[&b"P"[..], b"OST / HTTP/1.1\r\n"][..], false),
            (&[&b"PRI"[..]][..], false),
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            let (mut heard, caller) = Heard::new(server);
            for piece in pieces {
                client.write_all(piece).await.unwrap();
                let mut buf = [0; 64];
                let n = heard.read(&mut buf).await.unwrap();
                assert_eq!(n, piece.len());
            }
            assert_eq!(caller.h2.load(Ordering::Relaxed), h2, "{pieces:?}");
        }
    }

    /// The first bytes tell an h2 caller (the preface) from HTTP/1.1.
    #[tokio::test]
    async fn the_preface_marks_an_h2_caller() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for (first, h2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
            (&b"GET / HTTP/1.1\r\n"[..], false),
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            let (mut heard, caller) = Heard::new(server);
            client.write_all(first).await.unwrap();
            let mut buf = [0; 64];
            let n = heard.read(&mut buf).await.unwrap();
            assert_eq!(n, first.len());
            assert_eq!(caller.h2.load(Ordering::Relaxed), h2);
            assert!(caller.heard.load(Ordering::Relaxed));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_off() {
        let never = tokio::time::timeout(
            Duration::from_secs(86_400 * 365),
            quiet_for(Arc::new(Caller::default()), Duration::ZERO),
        )
        .await;
        assert!(never.is_err());
    }
}
