//! `proxy.delayed_close_timeout`: a connection the proxy closes first is
//! half-closed and drained for a moment, not closed at once.
//!
//! When the proxy answers before it has read the whole request (a 413 for
//! a body over `max_request_body`, a 431, a refusal while a large upload is
//! still coming), the caller is still sending when hyper closes the
//! connection. Closing a socket with unread bytes in its receive queue, or
//! receiving bytes after the close, makes the kernel answer with a TCP RST,
//! and a RST can reach the caller before it has read the response: it sees
//! "connection reset" or "broken pipe", not the 413 that explains it. This
//! is the case nginx's `lingering_close` and Envoy's
//! `delayed_close_timeout` exist for.
//!
//! [`Lingering`] wraps each accepted TCP stream and notes whether the
//! caller closed its side (a read returned end of file). If it did not
//! when the stream is dropped, the socket moves to a small task that
//! shuts down its write side (a FIN after the response) and reads and
//! discards what still arrives until the caller closes too, for at most
//! the timeout (Envoy's default, 1 s); only then is the socket closed. A
//! caller that got a complete response stops sending and closes, so the
//! wait is usually one round trip. Connections the caller closes first
//! (every keep-alive connection a client ends) cost nothing more than a
//! check per read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::send::SendTimer;

/// An accepted stream that lingers when it is dropped before its caller
/// closed its side (see the module docs).
pub(super) struct Lingering {
    /// Always `Some` until the drop hands it to the linger task.
    stream: Option<TcpStream>,
    /// How long the drop lingers; zero: not at all.
    timeout: Duration,
    /// A read returned end of file (or failed): the caller closed its side.
    caller_closed: bool,
    /// `proxy.send_timeout` (see [`super::send`]).
    send: SendTimer,
}

impl Lingering {
    /// Wraps `stream`, lingering for at most `timeout` (zero: never), and
    /// failing a write that stays pending for `send_timeout` (zero: never).
    pub(super) fn new(stream: TcpStream, timeout: Duration, send_timeout: Duration) -> Self {
        Self {
            stream: Some(stream),
            timeout,
            caller_closed: timeout.is_zero(),
            send: SendTimer::new(send_timeout),
        }
    }

    /// The stream, to peek at.
    pub(super) fn get_ref(&self) -> io::Result<&TcpStream> {
        self.stream.as_ref().ok_or_else(gone)
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream.as_mut().map(Pin::new).ok_or_else(gone)
    }
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if self.caller_closed {
            return;
        }
        // Outside a runtime (never, in the proxy) the socket just closes.
        let (Some(stream), Ok(rt)) = (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(linger(stream, self.timeout));
    }
}

/// Half-closes `stream`, then discards what the caller still sends until
/// it closes its side, an error, or `timeout`; the socket closes after.
async fn linger(mut stream: TcpStream, timeout: Duration) {
    let drain = async {
        // Already shut down if hyper closed the connection; then a no-op.
        let _ = stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = ready!(self.stream()?.poll_read(cx, buf));
        if r.is_err() || (buf.filled().len() == before && buf.remaining() > 0) {
            self.caller_closed = true;
        }
        Poll::Ready(r)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let stream = this.stream.as_mut().ok_or_else(gone)?;
        let polled = Pin::new(&mut *stream).poll_write(cx, buf);
        this.send.watch(cx, polled, || stream.peer_addr().ok())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let stream = this.stream.as_mut().ok_or_else(gone)?;
        let polled = Pin::new(&mut *stream).poll_write_vectored(cx, bufs);
        this.send.watch(cx, polled, || stream.peer_addr().ok())
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Lingering;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: (caller end, the proxy's end wrapped).
    async fn pair(timeout: Duration) -> (TcpStream, Lingering) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let caller = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (caller, Lingering::new(accepted, timeout, Duration::ZERO))
    }

    /// Dropped while the caller still sends: the caller's writes go on
    /// being taken, it sees the end of the stream (a FIN, not a reset),
    /// and once it closes too the socket is gone.
    #[tokio::test]
    async fn a_connection_dropped_while_the_caller_sends_is_drained() {
        let (mut caller, mut ours) = pair(Duration::from_secs(5)).await;
        ours.write_all(b"HTTP/1.1 413 Payload Too Large\r\n\r\n")
            .await
            .unwrap();
        caller.write_all(&[b'x'; 1000]).await.unwrap();
        drop(ours);
        let chunk = vec![b'y'; 64 << 10];
        for _ in 0..32 {
            caller.write_all(&chunk).await.unwrap();
        }
        let mut got = Vec::new();
        caller.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 413 Payload Too Large\r\n\r\n");
    }

    /// A caller that neither sends nor closes is not waited for beyond the
    /// timeout: the socket closes then. Paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_silent_caller_is_not_waited_for_beyond_the_timeout() {
        let (mut caller, ours) = pair(Duration::from_secs(1)).await;
        drop(ours);
        let start = tokio::time::Instant::now();
        // The FIN comes at once; the close (a reset, as the caller sends
        // after it) only at the timeout.
        let mut buf = [0u8; 16];
        assert_eq!(caller.read(&mut buf).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..20 {
            let taken = caller.write_all(&[b's'; 1024]).await;
            assert!(taken.is_ok(), "closed before the timeout: {taken:?}");
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(start.elapsed() >= Duration::from_secs(1));
        let mut failed = false;
        for _ in 0..50 {
            if caller.write_all(&[b'z'; 1024]).await.is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed, "the socket is still open after the timeout");
    }

    /// A caller that closed its side first (every client ending a
    /// keep-alive connection) is not lingered for: nothing is spawned.
    #[tokio::test]
    async fn a_caller_that_closed_first_is_not_lingered_for() {
        let (mut caller, mut ours) = pair(Duration::from_secs(5)).await;
        caller.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ours.read(&mut buf).await.unwrap(), 0);
        assert!(ours.caller_closed);
        let (mut caller2, ours2) = pair(Duration::ZERO).await;
        assert!(ours2.caller_closed, "a zero timeout never lingers");
        drop(ours2);
        assert_eq!(caller2.read(&mut buf).await.unwrap(), 0);
        drop(ours);
        drop(caller);
    }
}
