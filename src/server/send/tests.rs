//! [`SendTimer`] over an in-process pipe (`tokio::io::duplex`, whose
//! writes wait once its buffer is full and resume as soon as the reader
//! takes bytes), on a paused clock.

use super::SendTimer;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::time::Instant;

/// A pipe's writing end watched by a [`SendTimer`], as `Lingering`
/// watches a socket.
struct Watched {
    inner: DuplexStream,
    send: SendTimer,
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.send.watch(cx, polled, || None)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// A 64 KiB pipe whose writer gives up after `timeout` without progress,
/// and its reading end.
fn pipe(timeout: Duration) -> (Watched, DuplexStream) {
    let (ours, caller) = tokio::io::duplex(64 << 10);
    (
        Watched {
            inner: ours,
            send: SendTimer::new(timeout),
        },
        caller,
    )
}

/// A caller that takes nothing: the write fails (`TimedOut`, naming the
/// setting) once it made no progress for the timeout, not before; later
/// writes fail too.
#[tokio::test(start_paused = true)]
async fn a_caller_that_takes_nothing_is_cut_at_the_timeout() {
    let (mut ours, _caller) = pipe(Duration::from_secs(60));
    let start = Instant::now();
    let err = ours.write_all(&[b'x'; 1 << 20]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("proxy.send_timeout"), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    let again = ours.write(b"y").await.unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::TimedOut);
}

/// A slow caller whose reads make room for the next write within the
/// timeout is not cut, however long the whole response takes: the timer
/// runs between two writes, not over the response (nginx's
/// `send_timeout`). (A socket reports room only once about a third of its
/// send buffer drained; this pipe reports any room at once.)
#[tokio::test(start_paused = true)]
async fn a_slow_caller_that_keeps_reading_is_not_cut() {
    let (mut ours, mut caller) = pipe(Duration::from_secs(60));
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        let mut total = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(50)).await;
            match caller.read(&mut buf).await.unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    let start = Instant::now();
    // 16 times the pipe's buffer, 16 KiB every 50 s: ~1.5 hours.
    ours.write_all(&vec![b'x'; 1 << 20]).await.unwrap();
    ours.shutdown().await.unwrap();
    drop(ours);
    assert_eq!(reader.await.unwrap(), 1 << 20);
    assert!(start.elapsed() > Duration::from_secs(3000));
}

/// A stall after progress gets the whole timeout again: the timer is
/// re-armed from the stall, not from the first one.
#[tokio::test(start_paused = true)]
async fn each_stall_gets_the_whole_timeout() {
    let (mut ours, mut caller) = pipe(Duration::from_secs(60));
    // Fill the pipe, stall 59 s, then the caller takes everything once.
    let reader = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(59)).await;
        let mut buf = vec![0u8; 64 << 10];
        caller.read_exact(&mut buf).await.unwrap();
        caller
    });
    let start = Instant::now();
    ours.write_all(&vec![b'x'; 128 << 10]).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(59));
    let _caller = reader.await.unwrap();
    // Full again: this stall is cut 60 s after it began, at 119 s.
    let err = ours.write_all(&[b'y'; 1]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_secs(119));
}

/// `0s` turns it off: a write to a caller that takes nothing waits.
#[tokio::test(start_paused = true)]
async fn zero_never_cuts() {
    let (mut ours, _caller) = pipe(Duration::ZERO);
    let write = ours.write_all(&[b'x'; 1 << 20]);
    let waited = tokio::time::timeout(Duration::from_secs(24 * 3600), write).await;
    assert!(waited.is_err(), "still waiting after a day");
}
