//! The pool with `https` origins: connects shared while h2 may be
//! negotiated, and the shared h2 connection.

use super::*;

/// A TCP listener that counts connections and, per `hold`, keeps them
/// open without a word (a TLS handshake then never ends) or closes them
/// at once (it then fails).
async fn mute_listener(hold: bool) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            if hold {
                held.push(stream);
            }
        }
    });
    (addr, accepted, task)
}

fn https_pool(addr: SocketAddr) -> Arc<OriginPool> {
    let connector = crate::upstream::build_connector(None, Duration::from_secs(5)).unwrap();
    Arc::new(OriginPool::new(
        connector,
        Scheme::HTTPS,
        Authority::try_from(addr.to_string()).unwrap(),
        PoolSettings::default(),
        Duration::from_secs(5),
    ))
}

/// Requests that find no connection to an origin that may speak h2 wait
/// for one connect; when it fails they all fail with its kind of error,
/// without trying again each.
#[tokio::test]
async fn concurrent_connects_to_an_https_origin_make_one_attempt() {
    let (addr, accepted, task) = mute_listener(false).await;
    let pool = https_pool(addr);
    let sends = (0..5).map(|_| pool.clone().send(get(addr)));
    let results = futures_util::future::join_all(sends).await;
    let kinds: Vec<_> = results
        .iter()
        .map(|r| match r {
            Err(e @ SendError::Connect(_)) => crate::error::find_cause::<std::io::Error>(e)
                .expect("an io error in the chain")
                .kind(),
            other => panic!("expected a connect error, got {other:?}"),
        })
        .collect();
    assert!(kinds.iter().all(|k| *k == kinds[0]), "{kinds:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection attempt for five requests"
    );
    assert!(pool.lock().connecting.is_none());
    task.abort();
}

/// A connect whose TLS handshake never ends fails as timed out after the
/// connect timeout (not the route's), and so do the requests waiting for
/// it. Paused clock: the timeout fires when nothing else can happen.
#[tokio::test(start_paused = true)]
async fn a_stalled_tls_handshake_times_out_for_all_its_waiters() {
    let (addr, accepted, task) = mute_listener(true).await;
    let pool = https_pool(addr);
    let sends = (0..3).map(|_| pool.clone().send(get(addr)));
    for result in futures_util::future::join_all(sends).await {
        let err = result.expect_err("nothing answers the handshake");
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
        let io = crate::error::find_cause::<std::io::Error>(&err).expect("an io error");
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut, "{err:?}");
    }
    assert!(accepted.load(Ordering::SeqCst) <= 1, "one attempt at most");
    task.abort();
}

/// When the request that connects for the others goes away, one of the
/// waiting requests connects instead (none is left waiting for nothing).
#[tokio::test]
async fn a_waiting_request_takes_over_from_a_cancelled_connect() {
    let (addr, accepted, task) = mute_listener(true).await;
    let pool = https_pool(addr);
    let until_accepted = |n: usize| {
        let accepted = accepted.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while accepted.load(Ordering::SeqCst) < n {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{n} connections: not within 10 s"));
        }
    };
    let leader = tokio::spawn(pool.clone().send(get(addr)));
    until_accepted(1).await;
    let waiter = tokio::spawn(pool.clone().send(get(addr)));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the second request waits"
    );
    leader.abort();
    until_accepted(2).await;
    waiter.abort();
    task.abort();
}

#[test]
fn h2_requests_get_scheme_and_authority() {
    let mut req = Request::builder()
        .uri("/a/b?c=d")
        .header(http::header::HOST, "api.example.com:8443")
        .body(())
        .unwrap();
    absolute_form(
        &mut req,
        &Scheme::HTTPS,
        &Authority::from_static("api.example.com:8443"),
    );
    assert_eq!(req.uri(), "https://api.example.com:8443/a/b?c=d");
    // `:authority` only on h2.
    assert!(req.headers().get(http::header::HOST).is_none());
    // Handed back unsent and sent on HTTP/1.1 instead: `Host` is back.
    origin_form(&mut req);
    assert_eq!(req.uri(), "/a/b?c=d");
    assert_eq!(req.headers()[http::header::HOST], "api.example.com:8443");
}

/// An h2 client connection to an in-process h2 server over an in-memory
/// pipe: a real `SendRequest`, as an `https` origin that negotiated h2
/// would give the pool.
async fn h2_sender() -> http2::SendRequest<ProxyBody> {
    let (client, server) = tokio::io::duplex(64 << 10);
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
            TokioIo::new(server),
            service_fn(|req| async move { Ok::<_, Infallible>(ok(req)) }),
        ),
    );
    let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx.ready().await.unwrap();
    tx
}

/// A request that finds its h2 connection going away unshares that
/// connection only: not a newer one that another request has made (and
/// shared) in the meantime, which would cost every request after it a
/// needless connect.
#[tokio::test]
async fn a_stale_h2_connection_is_unshared_but_never_a_newer_one() {
    let pool = https_pool("127.0.0.1:9".parse().unwrap());
    let (old, new) = (h2_sender().await, h2_sender().await);
    pool.lock().h2.push(H2Conn::new(old, 1, 0));
    let Some(Conn::H2(_, old_id, _)) = pool.checkout() else {
        panic!("the shared h2 connection is checked out");
    };
    assert_eq!(old_id, 1);
    // Another request has since connected afresh and shared its connection.
    pool.lock().h2.push(H2Conn::new(new, 2, 0));
    pool.unshare_h2(old_id);
    let Some(Conn::H2(_, id, _)) = pool.checkout() else {
        panic!("the newer h2 connection is still shared");
    };
    assert_eq!(id, 2);
    pool.unshare_h2(id);
    assert!(pool.lock().h2.is_empty(), "the current one is unshared");
    assert!(pool.checkout().is_none());
}

/// A shared h2 connection carrying `h2_max_streams` streams takes no
/// more: a request then connects afresh instead of waiting behind them
/// (hyper would queue it until a stream ends, for ever behind long-lived
/// streams); a stream that ends makes room again.
#[tokio::test]
async fn a_full_h2_connection_takes_no_more_streams() {
    let connector = crate::upstream::build_connector(None, Duration::from_secs(5)).unwrap();
    let pool = Arc::new(OriginPool::new(
        connector,
        Scheme::HTTPS,
        Authority::from_static("127.0.0.1:9"),
        PoolSettings {
            h2_max_streams: 2,
            ..PoolSettings::default()
        },
        Duration::from_secs(5),
    ));
    let tx = h2_sender().await;
    pool.lock().h2.push(H2Conn::new(tx, 1, 0));
    let (a, b) = (pool.checkout(), pool.checkout());
    assert!(matches!(a, Some(Conn::H2(_, 1, _))));
    assert!(matches!(b, Some(Conn::H2(_, 1, _))));
    assert!(pool.checkout().is_none(), "full: no third stream");
    drop(a);
    assert!(matches!(pool.checkout(), Some(Conn::H2(_, 1, _))));
    assert_eq!(
        pool.lock().h2[0].in_flight(),
        1,
        "the checkout dropped at once"
    );
    drop(b);
    // Through `send`: two responses whose bodies are still open hold both
    // streams; a third request does not queue on the connection, it
    // connects (here the connect is refused, which shows it tried).
    let first = pool.clone().send(get("127.0.0.1:9".parse().unwrap())).await;
    let second = pool.clone().send(get("127.0.0.1:9".parse().unwrap())).await;
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(pool.lock().h2[0].in_flight(), 2);
    let third = pool.clone().send(get("127.0.0.1:9".parse().unwrap())).await;
    assert!(matches!(third, Err(SendError::Connect(_))), "{third:?}");
    // A body read to its end gives its stream back.
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");
    assert_eq!(pool.lock().h2[0].in_flight(), 1);
    let fourth = pool.clone().send(get("127.0.0.1:9".parse().unwrap())).await;
    assert_eq!(fourth.unwrap().status(), StatusCode::OK);
    drop(second);
    assert_eq!(pool.lock().h2[0].in_flight(), 0);
}

/// An h2 connection's idle time counts from when its last stream ended,
/// not from when that stream began: one that carried a download longer
/// than the idle timeout is not closed the moment the download ends.
#[tokio::test(start_paused = true)]
async fn an_h2_connection_is_idle_from_its_last_streams_end() {
    let pool = https_pool("127.0.0.1:9".parse().unwrap());
    let tx = h2_sender().await;
    pool.lock().h2.push(H2Conn::new(tx, 1, 0));
    let stream = pool.checkout();
    assert!(matches!(stream, Some(Conn::H2(_, 1, _))));
    // A long stream: many reaper ticks, more than an idle timeout.
    for _ in 0..3 * TICKS_PER_TIMEOUT {
        assert!(pool.reap_once());
    }
    assert_eq!(pool.lock().h2.len(), 1, "in use: kept");
    drop(stream);
    for _ in 0..TICKS_PER_TIMEOUT {
        pool.reap_once();
    }
    assert_eq!(
        pool.lock().h2.len(),
        1,
        "idle for less than the timeout: kept"
    );
    pool.reap_once();
    assert!(pool.lock().h2.is_empty(), "idle for the timeout: closed");
}
