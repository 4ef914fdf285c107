//! Cache behaviour under tokio's paused clock, with a scripted provider.
//! (Real token endpoints are exercised in `tests/` of this crate.)

use super::*;
use crate::provider::{ProviderError, TokenProvider};
use crate::store::{MemoryStore, StoreError};
use crate::token::Token;
use secrecy::SecretString;
use std::sync::atomic::AtomicUsize;

#[derive(Debug)]
struct Scripted {
    calls: AtomicUsize,
    lifetime: Option<Duration>,
    delay: Duration,
    failing: AtomicBool,
}

impl Scripted {
    fn new(lifetime: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            lifetime,
            delay: Duration::from_millis(100),
            failing: AtomicBool::new(false),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenProvider for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(ProviderError::OAuth {
                    status: 400,
                    error: "invalid_grant".into(),
                    description: None,
                });
            }
            Ok(Token {
                access_token: SecretString::from(format!("tok-{n}")),
                expires_in: self.lifetime,
                refresh_token: None,
            })
        })
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

fn source(p: &Arc<Scripted>) -> RefreshingSource {
    RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    )
}

async fn token(src: &RefreshingSource) -> String {
    src.get()
        .await
        .map(|c| c.expose().to_string())
        .unwrap_or_else(|e| format!("ERR {}", e.reason))
}

/// Lets spawned tasks run without moving the clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn first_request_waits_for_the_single_initial_fetch() {
    let p = Scripted::new(Some(S(3600)));
    let src = source(&p);
    let gets: Vec<_> = (0..100).map(|_| src.get()).collect();
    for g in gets {
        assert_eq!(g.await.unwrap().expose(), "tok-1");
    }
    assert_eq!(p.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn steady_state_never_waits_and_refreshes_once_ahead_of_expiry() {
    let p = Scripted::new(Some(S(600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    let obtained = Instant::now();
    // One request per second across the refresh window and past expiry.
    let mut refreshed_at = None;
    for _ in 0..700 {
        tokio::time::advance(S(1)).await;
        // Let timers that just fired (a running refresh) finish first.
        settle().await;
        let before = Instant::now();
        let got = src.get();
        // The hot path answers synchronously: no waiting in virtual time.
        assert!(
            matches!(got, Either::Left(_)),
            "request waited at {:?}",
            before - obtained
        );
        let tok = got.await.unwrap().expose().to_string();
        if tok == "tok-2" && refreshed_at.is_none() {
            refreshed_at = Some(before - obtained);
        }
        settle().await;
    }
    let at = refreshed_at.expect("never refreshed");
    // Refresh starts 60..66 s before expiry (buffer 60 s plus up to 6 s of
    // jitter), and its 100 ms fetch lands within the next second.
    assert!(at >= S(534) && at <= S(541), "refreshed at {at:?}");
    assert_eq!(p.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn refresh_happens_without_traffic() {
    let p = Scripted::new(Some(S(120)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    // Token lives 120 s < 2 x buffer: refresh at half life (60 s, minus jitter).
    tokio::time::sleep(S(61)).await;
    settle().await;
    assert_eq!(p.calls(), 2);
    assert_eq!(src.status().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn invalidate_old_generation_is_a_no_op_and_current_refreshes_once() {
    let p = Scripted::new(Some(S(3600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    let invalidations: Vec<_> = (0..100).map(|_| src.invalidate(1)).collect();
    // While the forced refresh runs, requests wait for it instead of using
    // the rejected token.
    let during = src.get();
    for i in invalidations {
        i.await.unwrap();
    }
    assert_eq!(during.await.unwrap().expose(), "tok-2");
    assert_eq!(p.calls(), 2);
    src.invalidate(1).await.unwrap();
    assert_eq!(p.calls(), 2, "a replaced generation must not refresh again");
    assert_eq!(token(&src).await, "tok-2");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_and_keep_the_old_token_until_expiry() {
    let p = Scripted::new(Some(S(600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    p.failing.store(true, Ordering::SeqCst);
    // Past the refresh point but before expiry: still served.
    tokio::time::sleep(S(560)).await;
    settle().await;
    assert_eq!(token(&src).await, "tok-1");
    let st = src.status();
    assert_eq!(st.state, "failing");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("invalid_grant")
    );
    // After expiry: an immediate, explained error; no new token call.
    tokio::time::sleep(S(60)).await;
    let calls = p.calls();
    let err = token(&src).await;
    assert!(err.starts_with("ERR refresh failing"), "{err}");
    assert!(p.calls() <= calls + 1);
    // Answered from backoff, the error still carries the token endpoint's
    // code: `invalid_grant` says someone must log in again.
    let backing_off = src.get().await.unwrap_err();
    assert!(backing_off.backing_off, "{}", backing_off.reason);
    assert_eq!(backing_off.oauth_error.as_deref(), Some("invalid_grant"));
    // Over a simulated hour the calls stay bounded by the backoff schedule
    // (1 s doubling to 5 min: at most ~25).
    let start = p.calls();
    tokio::time::sleep(S(3600)).await;
    let in_hour = p.calls() - start;
    assert!((10..=30).contains(&in_hour), "{in_hour} calls in an hour");
    // Recovery resumes normal refreshing.
    p.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(S(301)).await;
    settle().await;
    assert_eq!(src.status().state, "fresh");
    assert!(token(&src).await.starts_with("tok-"));
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_by_the_refresh_timeout() {
    let p = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        lifetime: Some(S(3600)),
        delay: S(60),
        failing: AtomicBool::new(false),
    });
    let src = source(&p);
    let err = token(&src).await;
    assert_eq!(err, "ERR refresh did not finish within 10s");
    // The refresh itself was not cancelled and completes.
    tokio::time::sleep(S(51)).await;
    settle().await;
    assert_eq!(token(&src).await, "tok-1");
    assert_eq!(p.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn tokens_without_expiry_refresh_on_max_age_or_never() {
    let p = Scripted::new(None);
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(86_400)).await;
    assert_eq!(p.calls(), 1);
    let p = Scripted::new(None);
    let settings = RefreshSettings {
        max_age: Some(S(600)),
        ..RefreshSettings::default()
    };
    let src = RefreshingSource::new("m", p.clone(), Arc::new(MemoryStore::new()), settings);
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(601)).await;
    settle().await;
    assert_eq!(p.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn manual_refresh_bypasses_backoff_and_reports_status() {
    let p = Scripted::new(Some(S(600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    let st = src.refresh_now().await.unwrap();
    assert_eq!(st.generation, 2);
    assert_eq!(st.last_refresh_trigger, Some("manual"));
    assert_eq!(st.state, "fresh");
    let json = serde_json::to_string(&st).unwrap();
    assert!(!json.contains("tok-2"), "{json}");
    assert!(!format!("{src:?} {st:?}").contains("tok-"));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_source_stops_its_scheduler() {
    let p = Scripted::new(Some(S(120)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    drop(src);
    tokio::time::sleep(S(3600)).await;
    assert_eq!(p.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_a_failed_forced_refresh_gets_the_old_token() {
    let p = Scripted::new(Some(S(3600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    p.failing.store(true, Ordering::SeqCst);
    let invalidation = src.invalidate(1);
    // Arrives while the forced refresh runs: waits for it...
    let waiting = src.get();
    assert!(matches!(waiting, Either::Right(_)));
    assert!(invalidation.await.is_err());
    // ...and, the refresh having failed, gets the old (still valid) token
    // rather than an error.
    assert_eq!(waiting.await.unwrap().expose(), "tok-1");
}

/// A lifetime past what the clocks can add (`expires_in` of 2^64-1
/// seconds) is taken as the longest lifetime: served, stored and
/// scheduled without a panic in the refresh task.
#[tokio::test(start_paused = true)]
async fn a_lifetime_past_the_clocks_range_is_served_not_a_panic() {
    let p = Scripted::new(Some(Duration::MAX));
    let store = Arc::new(MemoryStore::new());
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    let st = src.status();
    assert_eq!((st.state, st.consecutive_failures), ("fresh", 0), "{st:?}");
    let stored = store
        .load("crm")
        .await
        .unwrap()
        .expect("the token is stored");
    let left = stored
        .expires_at()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > S(99 * 365 * 24 * 3600), "{left:?}");
    tokio::time::advance(S(3600)).await;
    settle().await;
    assert_eq!(token(&src).await, "tok-1");
    assert_eq!(p.calls(), 1);
}

/// A token that has already expired when it arrives (an endpoint's
/// `expires_in: 0`, a stale file or exec expiry) is a failed attempt:
/// retries back off instead of fetching again at once in a loop.
#[tokio::test(start_paused = true)]
async fn a_token_expired_on_arrival_is_a_failure_that_backs_off() {
    let p = Scripted::new(Some(Duration::ZERO));
    let src = source(&p);
    let err = token(&src).await;
    assert!(
        err.contains("has already expired (expires in 0 ms)"),
        "{err}"
    );
    // Ten seconds of a scheduler that retries whenever it may: backoff
    // from 1 s allows a handful of attempts, not one per 100 ms fetch.
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let calls = p.calls();
    assert!((2..=6).contains(&calls), "{calls} token calls in 10 s");
    let st = src.status();
    assert_eq!(st.state, "failing", "{st:?}");
    assert!(st.consecutive_failures >= 2, "{st:?}");
}

/// A short-lived token from a proactive refresh does not replace the
/// valid one being served.
#[tokio::test(start_paused = true)]
async fn a_token_expired_on_arrival_does_not_replace_a_valid_one() {
    let (p, src) = expired_on_arrival_after_a_valid_one(Arc::new(MemoryStore::new())).await;
    // The proactive refresh ran (from ~540 s) and was retried with backoff.
    let calls = p.calls.load(Ordering::SeqCst);
    assert!((2..=6).contains(&calls), "{calls} token calls");
    assert_eq!(
        token(&src).await,
        "tok-1",
        "the valid token is still served"
    );
    assert_eq!(src.status().state, "failing");
}

/// A source over `store` whose first token lives 600 s and every later
/// one arrives expired, taken past its proactive refresh (60 s before
/// expiry) and not yet to the first token's expiry.
async fn expired_on_arrival_after_a_valid_one(
    store: Arc<dyn Store>,
) -> (Arc<Lifetimes>, RefreshingSource) {
    let p = Arc::new(Lifetimes {
        calls: AtomicUsize::new(0),
        lifetimes: vec![S(600), Duration::ZERO],
    });
    let src = RefreshingSource::new("crm", p.clone(), store, RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::advance(S(560)).await;
    settle().await;
    tokio::time::advance(S(1)).await;
    settle().await;
    (p, src)
}

/// Serves `tok-N` living `lifetimes[N-1]` (the last one after that).
#[derive(Debug)]
struct Lifetimes {
    calls: AtomicUsize,
    lifetimes: Vec<Duration>,
}

impl TokenProvider for Lifetimes {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let lifetime = self.lifetimes.get(n - 1).or(self.lifetimes.last()).copied();
        Box::pin(ready(Ok(Token {
            access_token: SecretString::from(format!("tok-{n}")),
            expires_in: lifetime,
            refresh_token: None,
        })))
    }
}

/// Panics in every fetch (a provider's bug).
#[derive(Debug, Default)]
struct Panicking {
    calls: AtomicUsize,
}

impl TokenProvider for Panicking {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            panic!("provider bug");
        })
    }
}

/// A refresh that panics is a failed attempt like any other: counted,
/// reported, backed off, and the next request inside the backoff gets the
/// error at once without another token call.
#[tokio::test(start_paused = true)]
async fn a_panicking_refresh_is_a_failed_attempt_that_backs_off() {
    let p = Arc::new(Panicking::default());
    let src = RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    );
    let err = token(&src).await;
    assert!(err.contains("panic"), "{err}");
    settle().await;
    let st = src.status();
    assert_eq!(st.consecutive_failures, 1, "{st:?}");
    assert!(!st.refreshing, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("panic")),
        "{st:?}"
    );
    let calls = p.calls.load(Ordering::SeqCst);
    let err = token(&src).await;
    assert!(err.starts_with("ERR refresh failing"), "{err}");
    assert_eq!(
        p.calls.load(Ordering::SeqCst),
        calls,
        "no token call inside the backoff"
    );
}

/// Saves nothing after the first save (a shared store that went down).
#[derive(Debug, Default)]
struct SavesOnce {
    inner: MemoryStore,
    saved: AtomicUsize,
}

impl Store for SavesOnce {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.inner.load(id)
    }
    fn lock<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<crate::store::StoreLock, StoreError>> {
        self.inner.lock(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if self.saved.fetch_add(1, Ordering::SeqCst) == 0 {
            self.inner.save(id, state)
        } else {
            Box::pin(ready(Err(StoreError::Unavailable("down".into()))))
        }
    }
}

/// An expired-on-arrival token that could not be saved is kept for its
/// state only: the valid token held is still the one served.
#[tokio::test(start_paused = true)]
async fn an_unsaved_expired_token_does_not_replace_a_valid_one() {
    let (p, src) = expired_on_arrival_after_a_valid_one(Arc::new(SavesOnce::default())).await;
    assert!(
        p.calls.load(Ordering::SeqCst) >= 2,
        "the proactive refresh ran"
    );
    assert_eq!(
        token(&src).await,
        "tok-1",
        "the valid token is still served"
    );
}

mod abandon;
mod adoption;
mod doubles;
mod forced;
mod handover;
mod hung;
mod pause;
mod persist;
mod retry_after;
mod rotation_kept;
mod unusable;
mod writeback;
