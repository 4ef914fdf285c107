//! Pausing a source while a reload decides (see
//! [`RefreshingSource::pause`]).
//!
//! A refresh asked for while paused (an expired token, a 401's forced
//! refresh, an operator's) is deferred: one task per pause waits for the
//! resume, and every caller joins it, as they would join a running
//! refresh, so the forced-refresh spacing and backoff see one refresh, not
//! one per caller. [`RefreshingSource::quiesce`] does not wait for it: it
//! waits for the reload.

use super::{Ctrl, Inflight, Inner, RefreshError, RefreshingSource, Trigger};
use futures_util::future::FutureExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::time::Instant;

/// The refresh deferred by a pause, in the source's control state.
#[derive(Default)]
pub(super) struct Deferred {
    waiting: Option<Inflight>,
    /// An operator's refresh joined it: it refreshes even if a valid
    /// token is held by the resume, and skips backoff.
    manual: bool,
}

impl RefreshingSource {
    /// Starts no refresh until [`resume`](Self::resume): a reload pauses
    /// the rotating sources of the running config (only a rotating
    /// refresh token can fork), and those it may rebuild, before it waits
    /// for their
    /// running refreshes ([`quiesce`](Self::quiesce)) and takes their
    /// hand-overs, and resumes them once the new config is in service (the
    /// sources it replaced are retired by then) or refused. Without it, a
    /// refresh started meanwhile (a 401 for one credential while the
    /// reload waits for another's refresh) could rotate the refresh token
    /// after the hand-over was taken, and a successor on another store
    /// would send the spent one.
    ///
    /// Meanwhile the token held is served; a request that needs a refresh
    /// (nothing valid held, or its token refused by the upstream) waits
    /// for the resume, within `refresh.timeout` as always, and then the
    /// one deferred refresh runs (a retired source then refuses it, and
    /// the token it holds is served while valid, as after any failed
    /// refresh).
    pub fn pause(&self) {
        let _ctrl = self.inner.lock();
        self.inner.paused.store(true, Ordering::SeqCst);
    }

    /// Whether its grant rotates refresh tokens (a reload pauses those,
    /// and the sources it may rebuild).
    pub fn rotates(&self) -> bool {
        self.inner.provider.rotates()
    }

    /// Whether it is paused now.
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }

    /// Ends a [`pause`](Self::pause).
    pub fn resume(&self) {
        self.inner.paused.store(false, Ordering::SeqCst);
        self.inner.wake.notify_waiters();
    }
}

/// The deferred refresh, if one is still waiting (a finished one is
/// cleared).
pub(super) fn deferred(ctrl: &mut Ctrl) -> Option<Inflight> {
    match &ctrl.deferred.waiting {
        Some(f) if f.peek().is_none() => Some(f.clone()),
        Some(_) => {
            ctrl.deferred = Deferred::default();
            None
        }
        None => None,
    }
}

/// An operator's refresh while paused: whatever the deferred refresh was
/// asked for, it now refreshes (see [`Deferred::manual`]).
pub(super) fn manual(inner: &Inner, ctrl: &mut Ctrl) {
    if inner.paused.load(Ordering::SeqCst) {
        ctrl.deferred.manual = true;
    }
}

/// Defers a refresh asked for while paused: joins the one already
/// deferred, or starts the task that waits for the resume.
pub(super) fn defer(
    inner: &Arc<Inner>,
    ctrl: &mut Ctrl,
    trigger: Trigger,
    invalidated: Option<u64>,
) -> Inflight {
    if let Some(f) = deferred(ctrl) {
        return f;
    }
    ctrl.deferred.manual |= trigger == Trigger::Manual;
    // Its own task: it runs at the resume even if every caller has gone
    // (the scheduler waits for it to end).
    let task = tokio::spawn(when_resumed(inner.clone(), trigger, invalidated));
    let f = async move { task.await.unwrap_or(Err(RefreshError::Aborted)) }
        .boxed()
        .shared();
    ctrl.deferred.waiting = Some(f.clone());
    f
}

/// Waits for the resume; then serves a token valid by then (unless the
/// caller's was refused: `valid` skips an invalidated generation, or an
/// operator asked), joins the refresh running, or starts one within the
/// backoff, as an undeferred caller would have.
async fn when_resumed(
    me: Arc<Inner>,
    trigger: Trigger,
    invalidated: Option<u64>,
) -> Result<Arc<proxy_core::Credential>, RefreshError> {
    loop {
        let resumed = me.wake.notified();
        tokio::pin!(resumed);
        resumed.as_mut().enable();
        if !me.paused.load(Ordering::SeqCst) {
            break;
        }
        resumed.await;
    }
    let fut = {
        let mut ctrl = me.lock();
        let manual = std::mem::take(&mut ctrl.deferred).manual;
        // The scheduler waited for this one to end.
        me.wake.notify_waiters();
        let trigger = if manual { Trigger::Manual } else { trigger };
        let now = Instant::now();
        if !manual && let Some(c) = me.valid(now) {
            return Ok(c);
        }
        match me.inflight(&mut ctrl) {
            Some(f) => f,
            None => {
                // A refresh that failed since (an operator's, resumed
                // first) set a backoff, which only an operator's refresh
                // skips.
                if !manual && let Some(err) = me.backing_off(&ctrl, now) {
                    // As `invalidate` refused: the token held is served
                    // again.
                    if invalidated.is_some() {
                        me.invalid_gen.store(0, Ordering::Release);
                    }
                    return Err(err);
                }
                me.start(&mut ctrl, trigger, invalidated)
            }
        }
    };
    fut.await
}
