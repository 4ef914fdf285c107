//! The refresh-ahead credential cache: [`RefreshingSource`].
//!
//! States of one credential:
//!
//! | state | requests | refresh |
//! |---|---|---|
//! | fresh | served the current token (one atomic load) | scheduled `buffer` before expiry |
//! | refresh-ahead | still served the current token, never wait | exactly one background refresh |
//! | expired / empty | wait for the single in-flight refresh, at most `refresh.timeout`, then 503 | started by the first caller or the scheduler |
//! | failing | served the current token while it is valid; after expiry get the last error at once | retried with exponential backoff and jitter (1 s to 5 min) |
//!
//! Every refresh runs in its own task, so a caller that goes away does not
//! cancel it, and all callers share its result (single-flight). A background
//! driver task wakes at the scheduled time even when no request arrives.
//!
//! [`invalidate`](CredentialSource::invalidate) takes the generation a request
//! used: if it is still current, requests stop using it and one forced refresh
//! runs (100 concurrent calls cause one refresh); if it was already replaced,
//! nothing happens. A failed refresh never deletes or overwrites anything: the
//! old value stays in memory and in the store.

mod driver;
mod error;
mod forced;
mod handover;
mod lineage;
mod pause;
mod persist;
mod refresh;
mod schedule;
mod settings;
mod status;
#[cfg(test)]
mod tests;
mod trigger;
mod writeback;

pub use settings::RefreshSettings;

pub use error::RefreshError;
pub use handover::Handover;
pub use schedule::{backoff, refresh_at};
pub use trigger::Trigger;
pub use writeback::STORE_CHECK;

use driver::DriverGuard;

use crate::provider::TokenProvider;
use crate::store::Store;
use crate::token::StoredCredential;
use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, Either, FutureExt, Shared, ready};
use proxy_core::Credential;
use proxy_core::credential::{CredentialError, CredentialSource, CredentialStatus, GetCredential};
use proxy_core::facts::{RefreshEvent, RefreshObserver};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The shortest token lifetime a refresh accepts: a token must still be
/// valid when it arrives; see [`RefreshError::ShortLived`]. (Short but
/// valid lifetimes are the endpoint's choice: they are refreshed at half
/// their life, one refresh at a time.)
pub const MIN_LIFETIME: Duration = Duration::from_millis(1);

/// The least time a refresh's lock wait, store read or token call may
/// take before the attempt is abandoned as hung (counted as a failed
/// attempt, backed off, reported): 5 minutes, or more for an `exec`
/// command with a long `timeout`.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What is served: the credential plus its schedule.
struct Entry {
    cred: Arc<Credential>,
    state: StoredCredential,
    expires: Option<Instant>,
    refresh_at: Option<Instant>,
}

impl Entry {
    fn valid_at(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

type Inflight = Shared<BoxFuture<'static, Result<Arc<Credential>, RefreshError>>>;

#[derive(Default)]
struct Ctrl {
    inflight: Option<Inflight>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_error: Option<(String, SystemTime)>,
    /// The token endpoint's `error` code in the last failed attempt.
    last_oauth_error: Option<String>,
    last_refresh: Option<(SystemTime, bool, Trigger)>,
    /// Spaces out forced refreshes whose tokens are rejected too.
    forced: forced::Spacing,
    /// Refreshes asked for while paused (see `pause.rs`).
    deferred: pause::Deferred,
    /// The token endpoint answered `invalid_grant` since the last refresh
    /// that worked: the refresh token held may be dead (`writeback.rs`).
    refused: bool,
}

struct Inner {
    id: Arc<str>,
    observer: Option<Arc<dyn RefreshObserver>>,
    provider: Arc<dyn TokenProvider>,
    store: Arc<dyn Store>,
    settings: RefreshSettings,
    current: ArcSwapOption<Entry>,
    /// Generation invalidated and being replaced (0: none). Requests wait
    /// for the refresh instead of sending a token the upstream refused.
    invalid_gen: AtomicU64,
    refreshing: AtomicBool,
    /// See [`CredentialSource::retire`].
    retired: AtomicBool,
    /// Set by a reload for as long as it is deciding (see
    /// [`RefreshingSource::pause`]).
    paused: AtomicBool,
    /// Held by a background save across its check, read and write, and
    /// by a refresh taking the retries over: a save already in flight
    /// ends before the refresh that takes over writes anything newer.
    save_gate: tokio::sync::Mutex<()>,
    ctrl: Mutex<Ctrl>,
    wake: Notify,
    /// A rotated state whose save failed and is being retried, with the
    /// store lock kept meanwhile (see `persist.rs`).
    unsaved: Mutex<Option<persist::Unsaved>>,
    /// See `lineage.rs`.
    lineage: lineage::Lineage,
    /// A handed-over state still to be reconciled with the store (see
    /// `handover.rs`).
    handed: Mutex<Option<handover::Pending>>,
}

/// A credential that refreshes itself; see the module docs.
#[derive(Clone)]
pub struct RefreshingSource {
    inner: Arc<Inner>,
    /// Set once the source is active (see [`activate`](Self::activate)).
    driver: Arc<std::sync::OnceLock<DriverGuard>>,
}

impl fmt::Debug for RefreshingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshingSource")
            .field("id", &self.inner.id)
            .field("provider", &self.inner.provider.kind())
            .field("store", &self.inner.store.kind())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl RefreshingSource {
    /// Creates the source and starts its scheduler, which loads the stored
    /// state (or fetches the first token) at once. Must be called inside a
    /// tokio runtime.
    pub fn new(
        id: impl Into<Arc<str>>,
        provider: Arc<dyn TokenProvider>,
        store: Arc<dyn Store>,
        settings: RefreshSettings,
    ) -> Self {
        Self::with_observer(id, provider, store, settings, None)
    }

    /// Like [`new`](Self::new), reporting every refresh attempt to
    /// `observer` (audit records, metrics).
    pub fn with_observer(
        id: impl Into<Arc<str>>,
        provider: Arc<dyn TokenProvider>,
        store: Arc<dyn Store>,
        settings: RefreshSettings,
        observer: Option<Arc<dyn RefreshObserver>>,
    ) -> Self {
        let source = Self::inactive(id, provider, store, settings, observer, None);
        source.activate();
        source
    }

    /// Creates the source, starting from `from` (see [`Handover`]) if
    /// given, but does nothing in the background (no refresh, no load, no
    /// save) until [`activate`](Self::activate). A config is built whole
    /// before it is known to be accepted: a source of a config that is
    /// then refused must not have asked a token endpoint for a token,
    /// written to a store or set a gauge. Requests only reach a source
    /// once its config is in service, which activates it.
    pub fn inactive(
        id: impl Into<Arc<str>>,
        provider: Arc<dyn TokenProvider>,
        store: Arc<dyn Store>,
        settings: RefreshSettings,
        observer: Option<Arc<dyn RefreshObserver>>,
        from: Option<Handover>,
    ) -> Self {
        let inner = Arc::new(Inner {
            observer,
            id: id.into(),
            provider,
            store,
            settings,
            current: ArcSwapOption::empty(),
            invalid_gen: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            save_gate: tokio::sync::Mutex::new(()),
            ctrl: Mutex::new(Ctrl::default()),
            wake: Notify::new(),
            unsaved: Mutex::new(None),
            lineage: lineage::Lineage::default(),
            handed: Mutex::new(None),
        });
        if let Some(from) = from {
            inner.start_from(from);
        }
        Self {
            inner,
            driver: Arc::default(),
        }
    }

    /// Starts the source's background work: the scheduler (which loads
    /// the stored state, or fetches the first token, at once) and the
    /// reconciliation of a handed-over rotated state with the store (see
    /// `handover.rs`). Once; later calls do nothing.
    pub fn activate(&self) {
        self.driver.get_or_init(|| {
            handover::spawn_settle(&self.inner);
            writeback::spawn(&self.inner);
            driver::spawn(self.inner.clone())
        });
    }

    /// Forces a refresh now (operator action): joins a running refresh or
    /// starts one, ignoring backoff, and waits for it.
    pub async fn refresh_now(&self) -> Result<CredentialStatus, RefreshError> {
        let fut = {
            let mut ctrl = self.inner.lock();
            pause::manual(&self.inner, &mut ctrl);
            match self.inner.running(&mut ctrl) {
                Some(f) => f,
                None => self.inner.start(&mut ctrl, Trigger::Manual, None),
            }
        };
        self.inner.wait(fut).await?;
        Ok(self.status())
    }

    /// The current status.
    pub fn status(&self) -> CredentialStatus {
        self.inner.status()
    }

    /// The credential's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

impl CredentialSource for RefreshingSource {
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn refreshes(&self) -> bool {
        true
    }

    /// Also stops refreshing: its successor (built from its hand-over, or
    /// from the same store) refreshes the credential now, and two sources
    /// refreshing one rotating refresh token from two stores would spend
    /// it twice (`invalid_grant`). A refresh already running finishes; its
    /// save retries go on. Requests of the old config still in flight are
    /// served the token it holds while valid.
    fn retire(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
        self.inner.wake.notify_waiters();
    }

    fn activate(&self) {
        RefreshingSource::activate(self);
    }

    fn kind(&self) -> &'static str {
        self.inner.provider.kind()
    }

    fn get(&self) -> GetCredential {
        let now = Instant::now();
        if let Some(e) = self.inner.current.load().as_ref()
            && e.valid_at(now)
            && e.cred.generation != self.inner.invalid_gen.load(Ordering::Acquire)
        {
            if e.refresh_at.is_some_and(|r| now >= r)
                && !self.inner.refreshing.load(Ordering::Acquire)
            {
                self.inner.kick(Trigger::Proactive);
            }
            return Either::Left(ready(Ok(e.cred.clone())));
        }
        let inner = self.inner.clone();
        Either::Right(
            async move { inner.wait_for_valid().await.map_err(CredentialError::from) }.boxed(),
        )
    }

    /// Marks and starts at once (not when the future is first polled), so
    /// requests that begin after this call already wait for the new value.
    fn status(&self) -> CredentialStatus {
        self.inner.status()
    }

    fn generation(&self) -> Option<u64> {
        self.inner
            .current
            .load()
            .as_ref()
            .map(|e| e.cred.generation)
    }

    fn refresh_now(&self) -> BoxFuture<'static, Result<CredentialStatus, CredentialError>> {
        let me = self.clone();
        async move {
            RefreshingSource::refresh_now(&me)
                .await
                .map_err(CredentialError::from)
        }
        .boxed()
    }

    fn invalidate(&self, generation: u64) -> BoxFuture<'static, Result<(), CredentialError>> {
        let inner = &self.inner;
        let (fut, refused) = {
            let mut ctrl = inner.lock();
            let refused = match inner.current.load_full() {
                Some(e) if e.cred.generation == generation => e.cred.clone(),
                // Already replaced (or never served): nothing to do.
                _ => return ready(Ok(())).boxed(),
            };
            inner.invalid_gen.store(generation, Ordering::Release);
            let fut = match inner.running(&mut ctrl) {
                Some(f) => f,
                None => {
                    let now = Instant::now();
                    let admitted = match inner.backing_off(&ctrl, now) {
                        Some(err) => Err(err),
                        None => ctrl
                            .forced
                            .admit(&inner.id, generation, now, &inner.settings),
                    };
                    match admitted {
                        Err(err) => {
                            inner.invalid_gen.store(0, Ordering::Release);
                            return ready(Err(CredentialError::from(err))).boxed();
                        }
                        Ok(()) => inner.start(&mut ctrl, Trigger::Forced, Some(generation)),
                    }
                }
            };
            (fut, refused)
        };
        let inner = inner.clone();
        async move {
            let got = inner.wait(fut).await.map_err(CredentialError::from)?;
            // A refresh already running when the upstream refused the token
            // (one ahead of expiry) ran as no forced refresh does: it may
            // have got the very token refused, as a new generation. The
            // caller (the 401 retry) must not send it again.
            if got.expose() == refused.expose() {
                return Err(CredentialError::from(RefreshError::Unchanged));
            }
            Ok(())
        }
        .boxed()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Ctrl> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.ctrl.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid(&self, now: Instant) -> Option<Arc<Credential>> {
        let e = self.current.load_full()?;
        (e.valid_at(now) && e.cred.generation != self.invalid_gen.load(Ordering::Acquire))
            .then(|| e.cred.clone())
    }

    /// The running refresh, if any (a finished one is cleared), or the
    /// one deferred by a pause (see `pause.rs`), for callers to join.
    fn running(&self, ctrl: &mut Ctrl) -> Option<Inflight> {
        self.inflight(ctrl).or_else(|| pause::deferred(ctrl))
    }

    /// The refresh running now, if any (a finished one is cleared).
    fn inflight(&self, ctrl: &mut Ctrl) -> Option<Inflight> {
        match &ctrl.inflight {
            Some(f) if f.peek().is_none() => Some(f.clone()),
            Some(_) => {
                ctrl.inflight = None;
                None
            }
            None => None,
        }
    }

    fn backing_off(&self, ctrl: &Ctrl, now: Instant) -> Option<RefreshError> {
        let next = ctrl.next_attempt?;
        (now < next).then(|| RefreshError::BackingOff {
            attempts: ctrl.failures,
            retry_in: next - now,
            last: ctrl
                .last_error
                .as_ref()
                .map(|e| e.0.clone())
                .unwrap_or_default(),
            oauth_error: ctrl.last_oauth_error.clone(),
        })
    }

    /// Starts a background refresh unless one runs or backoff forbids it.
    fn kick(self: &Arc<Self>, trigger: Trigger) {
        let mut ctrl = self.lock();
        if self.running(&mut ctrl).is_none() && self.backing_off(&ctrl, Instant::now()).is_none() {
            // Background: nobody waits on this one.
            drop(self.start(&mut ctrl, trigger, None));
        }
    }

    fn start(
        self: &Arc<Self>,
        ctrl: &mut Ctrl,
        trigger: Trigger,
        invalidated: Option<u64>,
    ) -> Inflight {
        if self.retired.load(Ordering::SeqCst) {
            // A forced refresh that will not come: the token held (still
            // valid) is served again, as after any failed refresh.
            self.invalid_gen.store(0, Ordering::Release);
            return futures_util::future::ready(Err(RefreshError::Retired))
                .boxed()
                .shared();
        }
        if self.paused.load(Ordering::SeqCst) {
            return pause::defer(self, ctrl, trigger, invalidated);
        }
        let me = self.clone();
        self.refreshing.store(true, Ordering::Release);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            // A panic below (a provider's or store's bug) still ends the
            // attempt: counted, backed off, reported, `refreshing` cleared.
            // (A part that never answers is bounded inside: see
            // `refresh::attempt`.)
            let result = AssertUnwindSafe(refresh::run(&me, trigger, invalidated))
                .catch_unwind()
                .await
                .unwrap_or(Err(RefreshError::Panicked));
            let adopted = matches!(result, Ok((_, true)));
            let result = result.map(|(c, _)| c);
            me.finish(trigger, &result, adopted, started.elapsed());
            result
        });
        let fut = async move { task.await.unwrap_or(Err(RefreshError::Aborted)) }
            .boxed()
            .shared();
        ctrl.inflight = Some(fut.clone());
        fut
    }

    fn finish(
        &self,
        trigger: Trigger,
        result: &Result<Arc<Credential>, RefreshError>,
        adopted: bool,
        took: Duration,
    ) {
        let now = SystemTime::now();
        let mut ctrl = self.lock();
        ctrl.inflight = None;
        self.refreshing.store(false, Ordering::Release);
        match result {
            Ok(c) => {
                ctrl.failures = 0;
                ctrl.refused = false;
                ctrl.next_attempt = None;
                ctrl.forced.refreshed(trigger, c.generation, Instant::now());
                ctrl.last_refresh = Some((now, true, trigger));
                tracing::info!(
                    credential = %self.id, trigger = trigger.as_str(), generation = c.generation,
                    took_ms = took.as_millis() as u64, "credential refreshed"
                );
            }
            Err(e) => {
                ctrl.failures = ctrl.failures.saturating_add(1);
                let delay = backoff(
                    ctrl.failures,
                    self.settings.backoff_min,
                    self.settings.backoff_max,
                    fastrand::f64(),
                )
                // An endpoint that said when to come back (`Retry-After`)
                // is not asked sooner.
                .max(e.retry_after().unwrap_or_default());
                // A backoff cap past the clock's range waits the longest
                // lifetime instead (never a panic).
                ctrl.next_attempt = Some(Instant::now() + delay.min(crate::token::MAX_LIFETIME));
                ctrl.last_error = Some((e.to_string(), now));
                ctrl.last_oauth_error = e.oauth_error().map(str::to_owned);
                ctrl.refused |= e.oauth_error() == Some("invalid_grant");
                ctrl.last_refresh = Some((now, false, trigger));
                // Serve the old value again: the upstream decides whether it
                // still works; dropping it would turn a refresh outage into
                // an outage of every request.
                self.invalid_gen.store(0, Ordering::Release);
                tracing::warn!(
                    credential = %self.id, trigger = trigger.as_str(), error = %e,
                    attempts = ctrl.failures, retry_in_s = delay.as_secs_f64(), "credential refresh failed"
                );
            }
        }
        drop(ctrl);
        self.wake.notify_one();
        if let Some(obs) = &self.observer {
            let (generation, expires_at) = match result {
                Ok(c) => (c.generation, c.expires_at),
                Err(_) => self
                    .current
                    .load()
                    .as_ref()
                    .map_or((0, None), |e| (e.cred.generation, e.cred.expires_at)),
            };
            obs.on_refresh(&RefreshEvent {
                credential: self.id.clone(),
                trigger: trigger.as_str(),
                ok: result.is_ok(),
                adopted,
                duration: took,
                error: result.as_ref().err().map(ToString::to_string),
                oauth_error: result
                    .as_ref()
                    .err()
                    .and_then(|e| e.oauth_error().map(str::to_owned)),
                generation,
                expires_at,
                retired: self.retired.load(Ordering::Relaxed),
            });
        }
    }

    async fn wait(&self, fut: Inflight) -> Result<Arc<Credential>, RefreshError> {
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RefreshError::Timeout(self.settings.timeout)),
        }
    }

    async fn wait_for_valid(self: &Arc<Self>) -> Result<Arc<Credential>, RefreshError> {
        let fut = {
            let mut ctrl = self.lock();
            let now = Instant::now();
            if let Some(c) = self.valid(now) {
                return Ok(c);
            }
            match self.running(&mut ctrl) {
                Some(f) => f,
                None => {
                    if let Some(err) = self.backing_off(&ctrl, now) {
                        return Err(err);
                    }
                    self.start(&mut ctrl, Trigger::Expired, None)
                }
            }
        };
        match self.wait(fut).await {
            Ok(c) => Ok(c),
            // A forced refresh (after a 401) failed while this request waited:
            // the old token is served again, as everywhere else a refresh
            // fails; the upstream decides whether it still works.
            Err(e) => self.valid(Instant::now()).ok_or(e),
        }
    }
}
