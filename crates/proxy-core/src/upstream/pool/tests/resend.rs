//! A request written to a reused connection that the upstream then closes
//! without answering: resent once, on a new connection, only if it is
//! idempotent and has no body (see `pool::resend`).

use super::*;
use http::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What a connection does with a request after its first.
#[derive(Clone, Copy)]
enum Later {
    /// Reads it whole, then closes with no answer: the upstream's idle
    /// timeout ending as the request arrives.
    Lose,
    /// Answers it.
    Answer,
}

/// A raw HTTP/1.1 upstream. The first connection answers its first
/// request (keep-alive) and loses the next; every later connection does
/// `fresh` with each request. Records each request head it read, with
/// the connection's number.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(fresh: Later) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (counter, seen) = (accepted.clone(), heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(serve(stream, n, fresh, seen));
            }
        });
        Self {
            addr,
            accepted,
            heads,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The request heads read, with the connection each came on.
    fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    fresh: Later,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
) {
    for request in 0.. {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => head.push(byte[0]),
            }
        }
        seen.lock()
            .unwrap()
            .push((conn, String::from_utf8_lossy(&head).into_owned()));
        let later = if conn == 0 { Later::Lose } else { fresh };
        if (request > 0 || conn > 0) && matches!(later, Later::Lose) {
            // Closed with the request read and unanswered.
            return;
        }
        let body = format!("conn {conn}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn request(addr: SocketAddr, method: Method, body: ProxyBody) -> Request<ProxyBody> {
    Request::builder()
        .method(method)
        .uri("/x?page=2")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, "Bearer injected")
        .body(body)
        .unwrap()
}

/// The status and body, and whether the response is marked [`Resent`].
async fn send_marked(
    pool: &Arc<OriginPool>,
    req: Request<ProxyBody>,
) -> Result<(StatusCode, Bytes, bool), SendError> {
    let resp = pool.clone().send(req).await?;
    let (status, resent) = (resp.status(), resp.extensions().get::<Resent>().is_some());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body, resent))
}

/// The status and body of a response not marked [`Resent`].
async fn send(
    pool: &Arc<OriginPool>,
    req: Request<ProxyBody>,
) -> Result<(StatusCode, Bytes), SendError> {
    let (status, body, resent) = send_marked(pool, req).await?;
    assert!(!resent, "marked Resent");
    Ok((status, body))
}

/// The first request puts connection 0 in the pool, which then stays
/// idle for `QUIET` (the paused clock moved on).
async fn warmed(fresh: Later) -> (Upstream, Arc<OriginPool>) {
    let (up, pool) = warmed_busy(fresh).await;
    tokio::time::pause();
    tokio::time::advance(super::super::resend::QUIET).await;
    tokio::time::resume();
    (up, pool)
}

/// As [`warmed`], with the connection idle only as long as this takes.
async fn warmed_busy(fresh: Later) -> (Upstream, Arc<OriginPool>) {
    let up = Upstream::start(fresh).await;
    let pool = pool_for(up.addr, PoolSettings::default());
    let first = send(&pool, get(up.addr)).await.unwrap();
    assert_eq!(first, (StatusCode::OK, Bytes::from_static(b"conn 0")));
    assert_eq!(pool.idle_count(), 1);
    (up, pool)
}

#[tokio::test]
async fn an_idempotent_request_without_a_body_goes_again_on_a_new_connection() {
    for method in [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let (up, pool) = warmed(Later::Answer).await;
        let req = request(up.addr, method.clone(), crate::body::empty());
        let got = send_marked(&pool, req).await;
        let (status, body, resent) = got.unwrap_or_else(|e| panic!("{method}: {e:?}"));
        assert_eq!(status, StatusCode::OK, "{method}");
        assert!(resent, "{method}: the response is marked Resent");
        if method != Method::HEAD {
            assert_eq!(body, Bytes::from_static(b"conn 1"), "{method}");
        }
        assert_eq!(up.accepted(), 2, "{method}: one new connection");
        // The same head went out on both connections, credential included.
        let heads = up.heads();
        assert_eq!(heads.len(), 3, "{method}: {heads:?}");
        assert_eq!((heads[1].0, heads[2].0), (0, 1), "{method}");
        assert_eq!(heads[1].1, heads[2].1, "{method}");
        assert!(
            heads[2]
                .1
                .starts_with(&format!("{method} /x?page=2 HTTP/1.1\r\n"))
        );
        assert!(
            heads[2].1.contains("authorization: Bearer injected\r\n"),
            "{method}"
        );
    }
}

#[tokio::test]
async fn a_post_or_a_request_with_a_body_is_never_sent_twice() {
    let bodies: [(Method, fn() -> ProxyBody); 3] = [
        (Method::POST, crate::body::empty),
        (Method::PATCH, crate::body::empty),
        (Method::PUT, || {
            boxed(Full::new(Bytes::from_static(b"data")))
        }),
    ];
    for (method, body) in bodies {
        let (up, pool) = warmed(Later::Answer).await;
        let err = send(&pool, request(up.addr, method.clone(), body()))
            .await
            .expect_err(method.as_str());
        assert!(matches!(err, SendError::Http(_)), "{method}: {err:?}");
        assert_eq!(up.accepted(), 1, "{method}: no second connection");
        assert_eq!(up.heads().len(), 2, "{method}: the upstream saw it once");
    }
}

#[tokio::test]
async fn a_new_connection_that_loses_the_request_too_is_the_answer() {
    let (up, pool) = warmed(Later::Lose).await;
    let err = send(&pool, get(up.addr)).await.unwrap_err();
    assert!(
        matches!(err, SendError::Http(ref e) if e.is_incomplete_message()),
        "{err:?}"
    );
    assert_eq!(up.accepted(), 2, "sent again once, not more");
    assert_eq!(up.heads().len(), 3);
}

/// A connection in steady use (idle for less than `QUIET`) is not closed
/// by an upstream's idle timer: its request head is not copied, and a
/// loss there fails as before.
#[tokio::test]
async fn a_request_on_a_busy_connection_is_not_kept_for_a_resend() {
    let (up, pool) = warmed_busy(Later::Answer).await;
    let err = send(&pool, get(up.addr)).await.unwrap_err();
    assert!(
        matches!(err, SendError::Http(ref e) if e.is_incomplete_message()),
        "{err:?}"
    );
    assert_eq!(up.accepted(), 1);
}
