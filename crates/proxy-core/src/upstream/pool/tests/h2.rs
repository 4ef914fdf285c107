//! The shared h2 connection's flow control and header limits, against an
//! in-process h2 server over an in-memory pipe, handshaken with the pool's
//! own h2 settings.

use super::*;

/// Serves h2 with `handler` and shares the connection in `pool`, as an
/// `https` origin that negotiated h2 would.
async fn share_h2<F, Fut>(pool: &Arc<OriginPool>, handler: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(1 << 20)
            .serve_connection(
                TokioIo::new(server),
                service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                }),
            ),
    );
    let (mut tx, conn) = pool.h2.handshake(TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    tx.ready().await.unwrap();
    let mut state = pool.lock();
    state.h2_made += 1;
    let id = state.h2_made;
    state.h2.push(H2Conn::new(tx, id, 0));
}

fn request(path: &str) -> Request<ProxyBody> {
    Request::builder()
        .uri(path)
        .body(boxed(Empty::<Bytes>::new()))
        .unwrap()
}

/// Callers that read a large answer slowly (or not at all) hold their
/// stream's window, never the whole connection: another caller's answer
/// still arrives. With hyper's default windows (2 MiB a stream, 5 MiB the
/// connection) three of them froze every other body on the connection.
/// Paused clock: the pipe is in memory, so a stall shows as the timeout
/// firing once nothing else can run.
#[tokio::test(start_paused = true)]
async fn slow_readers_hold_their_stream_not_the_connection() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let pool = pool_for(addr, PoolSettings::default());
    share_h2(&pool, |req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/big" {
            Response::new(Full::new(Bytes::from(vec![b'b'; 4 << 20])).boxed())
        } else {
            ok_response()
        }
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        // Headers taken, bodies never read.
        held.push(pool.clone().send(request("/big")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = pool.clone().send(request("/small")).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("a small answer stalled behind eight unread large ones");
    assert_eq!(&body[..], b"hello");
    drop(held);
}

/// Response headers that pass over HTTP/1.1 pass over h2 too (hyper's h2
/// default refuses more than 16 KiB).
#[tokio::test]
async fn large_response_headers_pass_over_h2() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let pool = pool_for(addr, PoolSettings::default());
    share_h2(&pool, |_req| async {
        let mut resp = ok_response();
        let big = http::HeaderValue::from_str(&"a".repeat(100 << 10)).unwrap();
        resp.headers_mut().insert("x-big", big);
        resp
    })
    .await;
    let resp = pool.clone().send(request("/x")).await.unwrap();
    assert_eq!(resp.headers()["x-big"].len(), 100 << 10);
}

/// A caller's body that breaks while it is sent to an h2 upstream is the
/// caller's fault (400), as over HTTP/1.1: hyper's h2 client only resets
/// the stream, and the send's error says nothing of why.
#[tokio::test]
async fn a_caller_body_that_breaks_over_h2_is_a_bad_request() {
    use crate::error::{ErrorCode, classify};
    use tower::ServiceExt as _;
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let pool = pool_for(addr, PoolSettings::default());
    share_h2(&pool, |req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        ok_response()
    })
    .await;
    let forward = crate::forward::Forward::new(
        pool,
        crate::forward::ForwardTarget {
            upstream: crate::config::UpstreamUrl::parse(&format!("http://{addr}")).unwrap(),
            strip_prefix: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            tunnel_idle_timeout: Duration::ZERO,
            response_idle_timeout: Duration::ZERO,
            max_request_body: None,
            credential_header: None,
        },
    )
    .unwrap();
    let frames = futures_util::stream::iter(vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"partial"))),
        Err(crate::error::CallerBodyError::new("the caller went away")),
    ]);
    let req = Request::post("/upload")
        .body(boxed(StreamBody::new(frames)))
        .unwrap();
    let err = forward.oneshot(req).await.expect_err("the body broke");
    assert_eq!(
        classify(&*err),
        ErrorCode::BadRequest,
        "{}",
        crate::error::display_chain(&*err)
    );
}
