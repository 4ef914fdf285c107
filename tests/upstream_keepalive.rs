//! h2 keep-alive on upstream connections (`proxy.upstream_h2_keepalive`):
//! a shared h2 connection that the network silently stops carrying is
//! closed by its unanswered PING, so the requests on it fail and the next
//! ones connect afresh, instead of every request to the origin stalling
//! until TCP gives up. Without keep-alive the same test fails: the stuck
//! request is still waiting at the 10-minute bound (checked by hand).

mod support;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use proxy_core::upstream::{OriginPool, PoolSettings, SendError, build_connector};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to `target` that can turn into a black hole: once `cut` is
/// set, the connections it carries swallow whatever arrives from either
/// side and send nothing on (as a NAT or load balancer that forgot the
/// connection would). Connections made after that are relayed normally.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    #[expect(clippy::unwrap_used, reason = "test setup fails the test by panicking")]
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        // The generation of connections to cut: those accepted before the
        // last `cut_existing`.
        let (cut, cut_rx) = watch::channel(0u64);
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut generation = 0u64;
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                generation = generation.max(*cut_rx.borrow());
                let outbound = TcpStream::connect(target).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, cut_rx.clone(), generation));
                tokio::spawn(pipe(ro, wi, cut_rx.clone(), generation));
            }
        });
        Relay {
            addr,
            accepted,
            cut,
            task,
        }
    }

    /// Turns the connections open now into black holes.
    fn cut_existing(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

/// Copies `from` to `to` until the connection ends or its generation is
/// cut; after that, reads and drops everything.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: watch::Receiver<u64>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *cut.borrow() > generation {
            continue;
        }
        let Some(bytes) = buf.get(..n) else { return };
        if to.write_all(bytes).await.is_err() {
            return;
        }
    }
}

#[expect(clippy::unwrap_used, reason = "test setup fails the test by panicking")]
fn get(authority: &str) -> Request<proxy_core::ProxyBody> {
    Request::builder()
        .uri("/keepalive")
        .header(http::header::HOST, authority)
        .body(proxy_core::boxed(Empty::<Bytes>::new()))
        .unwrap()
}

#[tokio::test]
async fn a_silently_dropped_h2_connection_is_closed_by_its_unanswered_ping() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let upstream = tls_echo_upstream(&ca, true).await;
    let relay = Relay::start(upstream.addr).await;
    let authority = format!("localhost:{}", relay.addr.port());
    let pool = Arc::new(OriginPool::new(
        build_connector(Some(&ca_path), Duration::from_secs(5)).unwrap(),
        Scheme::HTTPS,
        Authority::try_from(authority.as_str()).unwrap(),
        PoolSettings {
            h2_keepalive: Some(Duration::from_secs(5)),
            ..PoolSettings::default()
        },
        Duration::from_secs(5),
    ));

    let resp = with_timeout(pool.clone().send(get(&authority)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    resp.into_body().collect().await.unwrap();
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 1);

    // The network drops the connection without a word. From here the
    // clock is paused: it moves only when nothing else can happen, so the
    // keep-alive fires as soon as the request is stuck, at no real cost.
    relay.cut_existing();
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let stuck = tokio::time::timeout(Duration::from_secs(600), pool.clone().send(get(&authority)))
        .await
        .expect("the keep-alive ends the request, not the 10-minute bound");
    let err = stuck.expect_err("nothing comes back over the dead connection");
    match &err {
        SendError::Http(e) => assert!(e.is_timeout(), "the PING timed out: {err:?}"),
        other => panic!("expected the connection's failure, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(20)..=Duration::from_secs(30)).contains(&waited),
        "closed after the PING interval (5 s) and the PING timeout (20 s), not {waited:?}"
    );
    tokio::time::resume();

    // The next request connects afresh and goes through.
    let resp = with_timeout(pool.clone().send(get(&authority)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 2, "a new connection");
}
