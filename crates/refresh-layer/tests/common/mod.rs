#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test binaries, each uses a subset"
)]
#![allow(
    clippy::allow_attributes,
    reason = "expect would fail in the binaries that use every item"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]
//! Shared helpers for the refresh layer against a real OAuth2 token endpoint
//! (`schedule.rs`, `rotation.rs`, `secret_leaks.rs`).
//!
//! Every test there drives [`RefreshingSource`] with the real
//! [`OAuth2Provider`] over loopback HTTP to `tests/support/token_endpoint.rs`,
//! which counts calls, rotates refresh tokens strictly (a refresh token works
//! once; reuse answers `invalid_grant`) and can fail, hang or revoke on
//! demand. The unit tests in `src/cache/tests.rs` cover the cache with a
//! scripted provider; these cover what only a real endpoint shows: the
//! single-flight and schedule seen from the endpoint's side, rotation through
//! a real store, sharing a file store between holders, and secrets staying
//! out of logs, errors and status.
//!
//! Timing tests run on tokio's paused clock (`start_paused`). The endpoint
//! runs on the same current-thread runtime, so loopback I/O completes while
//! the clock stands still; the tests move it with `advance` and then
//! [`settle`] so that spawned refreshes finish. File store work runs on the
//! blocking pool, which tokio counts as activity (it does not auto-advance the
//! clock meanwhile); [`until`] waits for it in real time.
//!
//! Note: the stored state carries wall-clock times (`SystemTime`), which the
//! paused clock does not move. Where a test relies on that (adopting a state
//! written by another holder counts as "still valid"), it says so.

// This file is `tests/common/mod.rs`, so the path climbs one level more than
// from a test file in `tests/`.
#[path = "../../../../tests/support/token_endpoint.rs"]
pub mod token_endpoint;

pub mod saves;

use futures_util::FutureExt as _;
use proxy_core::CredentialSource as _;
use proxy_core::config::OAuth2Config;
use refresh_layer::provider::oauth2::OAuth2Provider;
use refresh_layer::store::{MemoryStore, Store};
use refresh_layer::token::{StoredCredential, to_ms};
use refresh_layer::{RefreshSettings, RefreshingSource};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use token_endpoint::{EndpointOptions, TokenEndpoint};

pub const S: fn(u64) -> Duration = Duration::from_secs;
pub const ID: &str = "crm";
pub const CLIENT_ID: &str = "latchkey";
pub const CLIENT_SECRET: &str = "client-secret-canary";

/// Endpoint options matching the client config [`cfg`] builds.
pub fn opts(expires_in: u64, rotate: bool) -> EndpointOptions {
    EndpointOptions {
        expires_in,
        rotate,
        initial_refresh_token: "rt-0".to_owned(),
        client_id: Some(CLIENT_ID.to_owned()),
        client_secret: Some(CLIENT_SECRET.to_owned()),
    }
}

pub async fn endpoint(expires_in: u64, rotate: bool) -> TokenEndpoint {
    token_endpoint::start(opts(expires_in, rotate)).await
}

/// A `refresh_token` grant seeded with `seed`.
pub fn cfg(ep: &TokenEndpoint, seed: &str) -> OAuth2Config {
    serde_json::from_value(json!({
        "grant": "refresh_token",
        "token_url": ep.url,
        "client_id": CLIENT_ID,
        "client_secret": {"value": CLIENT_SECRET},
        "refresh_token": {"value": seed},
    }))
    .unwrap()
}

pub fn source_with(
    cfg: &OAuth2Config,
    store: Arc<dyn Store>,
    settings: RefreshSettings,
) -> RefreshingSource {
    let provider = OAuth2Provider::new(cfg, S(1)).unwrap();
    RefreshingSource::new(ID, Arc::new(provider), store, settings)
}

pub fn source(
    ep: &TokenEndpoint,
    store: Arc<dyn Store>,
    settings: RefreshSettings,
) -> RefreshingSource {
    source_with(&cfg(ep, "rt-0"), store, settings)
}

pub fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

/// Lets spawned tasks (refreshes, the endpoint's connections) run without
/// moving the clock.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Yields until `cond` holds: for work that ends on the blocking pool (file
/// store) or needs several I/O round trips. Bounded in real time, since the
/// paused clock does not move while we spin.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = SystemTime::now() + S(20);
    let mut spins = 0u32;
    while !cond() {
        assert!(SystemTime::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        spins += 1;
        if spins.is_multiple_of(200) {
            // Give the blocking pool a moment of real time.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Settles, then waits for a refresh that is still running (e.g. on the
/// blocking pool) to finish.
pub async fn quiesce(src: &RefreshingSource) {
    settle().await;
    until("the refresh to finish", || !src.status().refreshing).await;
}

/// `get()`, awaited (bounded); the token or the error reason.
pub async fn token(src: &RefreshingSource) -> Result<String, String> {
    match tokio::time::timeout(S(60), src.get()).await {
        Ok(Ok(c)) => Ok(c.expose().to_owned()),
        Ok(Err(e)) => Err(e.reason),
        Err(_) => panic!("get() did not finish within 60 s"),
    }
}

/// `get()` that must be answered without waiting at all.
pub fn ready_token(src: &RefreshingSource, at: &str) -> String {
    match src.get().now_or_never() {
        Some(Ok(c)) => c.expose().to_owned(),
        Some(Err(e)) => panic!("{at}: get() failed: {}", e.reason),
        None => panic!("{at}: get() had to wait"),
    }
}

pub async fn invalidate(src: &RefreshingSource, generation: u64) -> Result<(), String> {
    tokio::time::timeout(S(60), src.invalidate(generation))
        .await
        .expect("invalidate() did not finish within 60 s")
        .map_err(|e| e.reason)
}

pub async fn load(store: &dyn Store) -> StoredCredential {
    store.load(ID).await.unwrap().expect("a stored state")
}

pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// Collects everything a tracing subscriber writes.
#[derive(Clone, Default)]
pub struct LogSink(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Keeps a [`capture_logs`] capture running; dropping it ends it.
pub struct LogCapture {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

/// Captures this thread's logs, every level (the tests run on a
/// current-thread runtime, so every task logs on this thread).
///
/// tracing caches per-callsite interest globally. With exactly one
/// dispatcher registered, a callsite first hit on another test's thread
/// (which has no subscriber) is cached as "never" and this capture would
/// miss its events; a second live dispatcher makes tracing consult every
/// registered dispatcher instead.
pub fn capture_logs() -> (LogSink, LogCapture) {
    let logs = LogSink::default();
    let sink = logs.clone();
    let second = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish(),
    );
    let default = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish(),
    );
    tracing::callsite::rebuild_interest_cache();
    (
        logs,
        LogCapture {
            _default: default,
            _second: second,
        },
    )
}
