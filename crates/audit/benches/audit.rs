//! Per-request cost of the audit trail: deriving and serialising one
//! record, and the whole layer (facts slot, meta capture, record, metrics)
//! around a service that answers at once.
//!
//! Run: `cargo bench -p audit --bench audit`.
#![expect(
    clippy::unwrap_used,
    missing_docs,
    reason = "benchmark harness: setup failures abort; criterion macros generate undocumented fns"
)]

use audit::record::{RequestMeta, RequestRecord};
use audit::{AuditLayer, AuditSink, RefreshRecord, TracingSink};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use proxy_core::context::{ConnInfo, RequestContext, RequestId};
use proxy_core::facts::{CredentialFact, CredentialOutcome, RequestFacts};
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower::{Layer, ServiceExt, service_fn};

/// Serialises every record (like a real sink) and throws it away.
#[derive(Debug)]
struct DiscardSink;

impl AuditSink for DiscardSink {
    fn request(&self, r: &RequestRecord<'_>) {
        r.with_json(|l| black_box(l.len()));
    }
    fn refresh(&self, r: &RefreshRecord<'_>) {
        r.with_json(|l| black_box(l.len()));
    }
}

fn request() -> Request<()> {
    let mut req = Request::get("/payments/v1/charges/ch_123?expand=customer")
        .header("host", "latchkey.payments.svc:8080")
        .body(())
        .unwrap();
    req.extensions_mut().insert(RequestContext::new(
        ConnInfo {
            remote_addr: "10.1.2.3:45678".parse().unwrap(),
            local_addr: "10.1.2.4:8080".parse().unwrap(),
            tls: false,
        },
        RequestId::generate(),
    ));
    req
}

fn facts() -> RequestFacts {
    let now = SystemTime::now();
    RequestFacts {
        client: Some(Arc::from("billing")),
        route: Some(Arc::from("payments")),
        route_credential: Some(Arc::from("payments-key")),
        credential: Some(CredentialFact {
            id: Arc::from("payments-key"),
            generation: Some(3),
            outcome: CredentialOutcome::Injected,
            obtained_at: Some(now - Duration::from_secs(12)),
            expires_at: Some(now + Duration::from_secs(3500)),
        }),
        upstream_status: Some(200),
        upstream_time: Some(Duration::from_micros(10_100)),
        upstream_attempts: 1,
        ..RequestFacts::default()
    }
}

fn bench_record(c: &mut Criterion) {
    let meta = RequestMeta::from_request(&request());
    let facts = facts();
    c.bench_function("record_derive_and_serialise", |b| {
        b.iter(|| {
            let r = RequestRecord::from_parts(
                black_box(&meta),
                black_box(&facts),
                StatusCode::OK,
                None,
                Duration::from_micros(12_345),
                false,
                SystemTime::now(),
            );
            r.with_json(|l| black_box(l.len()))
        })
    });
}

fn bench_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // One set of ids for every request, as the router and the credential
    // registry hand out the same `Arc`s (the metrics cache is keyed on
    // them; fresh ids per request would measure its misses).
    let template: &'static RequestFacts = Box::leak(Box::new(facts()));
    let inner = service_fn(move |req: Request<()>| {
        let facts = template.clone();
        async move {
            proxy_core::facts::record(&req, |f| *f = facts);
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    let mut g = c.benchmark_group("layer");
    g.bench_function("no_audit_layer", |b| {
        b.to_async(&rt).iter(|| inner.oneshot(request()))
    });
    let discard = AuditLayer::new(Arc::new(DiscardSink), false).layer(inner);
    g.bench_function("record_only", |b| {
        b.to_async(&rt).iter(|| discard.clone().oneshot(request()))
    });
    // No subscriber listens: the tracing sink skips serialising.
    let tracing = AuditLayer::new(Arc::new(TracingSink), false).layer(inner);
    g.bench_function("tracing_sink_unsubscribed", |b| {
        b.to_async(&rt).iter(|| tracing.clone().oneshot(request()))
    });
    audit::metrics::install();
    let both = AuditLayer::new(Arc::new(DiscardSink), true).layer(inner);
    g.bench_function("record_and_metrics", |b| {
        b.to_async(&rt).iter(|| both.clone().oneshot(request()))
    });
    g.finish();
}

criterion_group!(benches, bench_record, bench_layer);
criterion_main!(benches);
