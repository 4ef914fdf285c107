//! Heap allocations per proxied request, counted with a counting global
//! allocator.
//!
//! The client, the upstream and the proxy all run in this process, so the
//! count is taken twice with the same client and upstream: once straight to
//! the upstream, once through latchkey (static credential, audit and metrics
//! on, the default). The difference is what latchkey allocates per request.
//!
//! Run: `cargo bench --bench allocations` (a quick smoke run under
//! `cargo test`).
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark binary: a setup failure should abort the run"
)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
// dhat's allocator counts every heap block (the unsafe allocator code lives
// in that crate; this workspace forbids `unsafe`).
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn blocks() -> (u64, u64) {
    let s = dhat::HeapStats::get();
    (s.total_blocks, s.total_bytes)
}

async fn upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn run(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    auth: &str,
    n: u64,
) -> (u64, u64) {
    // Warm the pools and caches first.
    for _ in 0..50 {
        one(client, url, auth).await;
    }
    let (a, b) = blocks();
    for _ in 0..n {
        one(client, url, auth).await;
    }
    let (a2, b2) = blocks();
    (a2 - a, b2 - b)
}

async fn one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
    auth: &str,
) {
    let req = http::Request::get(url)
        .header("authorization", auth)
        .body(Empty::new())
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = if bench { 5_000 } else { 100 };
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let up = upstream().await;
        let yaml = format!(
            "proxy: {{ listen: 127.0.0.1:0 }}\naudit: {{ enabled: true }}\nclients:\n  - {{ id: bench, token: {{ value: client-token }}, routes: [bench] }}\ncredentials:\n  - {{ id: key, static: {{ value: bench-token }} }}\nroutes:\n  - {{ id: bench, match: {{ path_prefix: /bench/ }}, strip_prefix: true, upstream: \"http://{up}\", credential: key }}\n"
        );
        let config = latchkey::Config::from_yaml(&yaml, "bench.yaml").unwrap_or_else(|e| panic!("{e}"));
        let running = latchkey::start(config, "bench.yaml").await.unwrap_or_else(|e| panic!("{e}"));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let (direct, direct_bytes) = run(&client, &format!("http://{up}/x"), "Bearer bench-token", n).await;
        let (proxied, proxied_bytes) =
            run(&client, &format!("http://{}/bench/x", running.proxy_addr), "Bearer client-token", n).await;
        let per = |x: u64| x as f64 / n as f64;
        println!("requests: {n} (sequential, keep-alive, static credential, audit + metrics on)");
        println!("direct to upstream: {:.1} allocations, {:.0} bytes per request", per(direct), per(direct_bytes));
        println!("through latchkey:   {:.1} allocations, {:.0} bytes per request", per(proxied), per(proxied_bytes));
        println!(
            "latchkey's share:   {:.1} allocations, {:.0} bytes per request",
            per(proxied.saturating_sub(direct)),
            per(proxied_bytes.saturating_sub(direct_bytes))
        );
        running.shutdown().await;
    });
}
