//! Criterion benchmarks of the per-request work inside the proxy: route
//! matching (1, 100 and 10,000 routes) and credential injection (header with
//! a cached rendered value, query, basic).
//!
//! Run: `cargo bench --bench request_path`.
#![expect(
    clippy::panic,
    missing_docs,
    reason = "benchmark harness: a setup failure should abort the run; criterion macros generate undocumented fns"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use proxy_core::config::{BasicConfig, InjectConfig, Username};
use proxy_core::credential::Credential;
use proxy_core::inject::{Inject, InjectLayer, InjectSpec, Injection};
use proxy_core::router::Router;
use secrecy::SecretString;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower::Layer;

fn router_with(n: usize) -> Router<usize> {
    let mut r = Router::new();
    for i in 0..n {
        // Half host routes, half prefix routes, like a large shared gateway.
        if i % 2 == 0 {
            r.insert(Some(&format!("api{i}.example.com")), None, i)
                .unwrap_or(());
        } else {
            r.insert(None, Some(&format!("/svc{i}/")), i).unwrap_or(());
        }
    }
    r.insert(None, Some("/payments/"), usize::MAX).unwrap_or(());
    r
}

fn bench_router(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [1usize, 100, 10_000] {
        let r = router_with(n);
        g.bench_with_input(BenchmarkId::new("prefix", n), &r, |b, r| {
            b.iter(|| {
                r.route(
                    black_box(Some("proxy.local:8080")),
                    black_box("/payments/charges/ch_123"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("host", n), &r, |b, r| {
            b.iter(|| r.route(black_box(Some("api0.example.com")), black_box("/v1/search")))
        });
    }
    g.finish();
}

fn injector(cfg: Option<InjectConfig>) -> Inject<()> {
    let spec = InjectSpec::parse(cfg.as_ref()).unwrap_or_else(|e| panic!("{}", e.message));
    InjectLayer::new(Injection::from_spec(
        spec,
        cfg.as_ref(),
        Duration::from_secs(1),
    ))
    .layer(())
}

fn bench_inject(c: &mut Criterion) {
    let cred = Arc::new(Credential::new(
        SecretString::from("sk_live_0123456789abcdef0123456789abcdef".to_string()),
        1,
        SystemTime::now(),
        None,
    ));
    let mut g = c.benchmark_group("inject");
    let cases = [
        ("header_bearer", None),
        (
            "query",
            Some(InjectConfig {
                query: Some("api_key".into()),
                ..Default::default()
            }),
        ),
        (
            "basic",
            Some(InjectConfig {
                basic: Some(BasicConfig {
                    username: Username::Plain("svc".into()),
                }),
                ..Default::default()
            }),
        ),
    ];
    for (name, cfg) in cases {
        let inj = injector(cfg);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut req = http::Request::get("/v1/search?q=x")
                    .body(())
                    .unwrap_or_default();
                inj.apply(&mut req, &cred).unwrap_or(());
                black_box(req)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_router, bench_inject);
criterion_main!(benches);
