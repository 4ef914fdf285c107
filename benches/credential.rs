//! Hot-path cost of getting the current credential from a
//! [`RefreshingSource`], alone and with 8 tasks contending on it.
//!
//! Target (refresh-layer issue): under 100 ns per call with no lock on the
//! path (one `ArcSwap` load and an `Instant` comparison).
//!
//! Run: `cargo bench --bench credential`.
#![expect(
    clippy::panic,
    missing_docs,
    reason = "benchmark harness: setup failures abort; criterion macros generate undocumented fns"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use proxy_core::CredentialSource;
use refresh_layer::provider::{ProviderError, TokenProvider};
use refresh_layer::store::MemoryStore;
use refresh_layer::token::{StoredCredential, Token};
use refresh_layer::{RefreshSettings, RefreshingSource};
use secrecy::SecretString;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
struct OneHourTokens;

impl TokenProvider for OneHourTokens {
    fn kind(&self) -> &'static str {
        "bench"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        async {
            Ok(Token {
                access_token: SecretString::from("bench-access-token".to_string()),
                expires_in: Some(Duration::from_secs(3600)),
                refresh_token: None,
            })
        }
        .boxed()
    }
}

fn source(rt: &tokio::runtime::Runtime) -> RefreshingSource {
    rt.block_on(async {
        let src = RefreshingSource::new(
            "bench",
            Arc::new(OneHourTokens),
            Arc::new(MemoryStore::new()),
            RefreshSettings::default(),
        );
        src.get().await.unwrap_or_else(|e| panic!("{}", e.reason));
        src
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let src = source(&rt);

    c.bench_function("credential_get/1_task", |b| {
        b.iter(|| black_box(src.get().now_or_never()))
    });

    // 8 tasks call get() concurrently on every core. Reported: CPU time per
    // call = wall time x cores in use / calls, i.e. what each call costs
    // while the others contend for the same ArcSwap.
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8) as u32;
    c.bench_function("credential_get/8_tasks", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(8);
            let start = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let src = src.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                black_box(src.get().now_or_never());
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
            start.elapsed() * cores
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
