//! A rotated state whose save failed is saved again, in the background,
//! until it is saved.
//!
//! Once the token endpoint has rotated the refresh token, the one other
//! holders can read from the store is spent, and the live one exists only
//! in this process. So the save is retried with capped backoff (0.5 s
//! doubling to [`SAVE_RETRY_MAX`]) for as long as it takes, not a fixed
//! number of times: another replica that reads the spent token after the
//! store comes back would get `invalid_grant` (and an IdP that revokes the
//! token family on replay would kill the credential). Meanwhile the store
//! lock is kept, so other holders wait instead of refreshing with the spent
//! token. Retrying is safe: the save is compare-and-set on the generation.
//!
//! It stops when
//! - the save works;
//! - the store holds a newer generation (read before each save, as a file
//!   or memory store saves without compare-and-set, or
//!   [`StoreError::Conflict`] from one that has it): that one is adopted
//!   if it can be served;
//! - a newer refresh of this credential starts: it takes the lock over
//!   (a rotating credential must still refresh before its token expires,
//!   and waiting on its own lock would never end), saves the unsaved state
//!   once (so a refresh whose token call keeps failing cannot keep it out
//!   of the store) and starts from it; if that refresh produces nothing
//!   newer, the retries resume ([`resume`]);
//! - the source is dropped (a reload replaced it, and handed the unsaved
//!   state to the source that replaces it, or removed it).
//!
//! While it is unsaved, the credential's `last_error` says so.

use super::refresh::{publish, remaining, sendable};
use super::{Inner, backoff};
use crate::store::{StoreError, StoreLock};
use crate::token::StoredCredential;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// The first delay between two saves.
pub(super) const SAVE_RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest delay between two saves: how long after the store comes
/// back the rotated refresh token is in it at the latest. Short, because
/// until then another replica may read the spent one from the store and
/// send it; a save to a store that is down fails fast and costs one
/// command.
pub(super) const SAVE_RETRY_MAX: Duration = Duration::from_secs(2);

/// The rotated state being saved again, and the store lock held meanwhile.
pub(super) struct Unsaved {
    generation: u64,
    lock: Option<StoreLock>,
}

impl Inner {
    fn unsaved(&self) -> std::sync::MutexGuard<'_, Option<Unsaved>> {
        self.unsaved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the unsaved state's record over (a new refresh starts): its
    /// retries stop. Returns the generation and the lock it held.
    pub(super) fn take_unsaved(&self) -> Option<(u64, Option<StoreLock>)> {
        self.unsaved().take().map(|u| (u.generation, u.lock))
    }

    /// The generation whose save is being retried, if any.
    pub(super) fn unsaved_generation(&self) -> Option<u64> {
        self.unsaved().as_ref().map(|u| u.generation)
    }

    fn still_unsaved(&self, generation: u64) -> bool {
        self.unsaved()
            .as_ref()
            .is_some_and(|u| u.generation == generation)
    }

    /// Ends the retries of `generation` (releasing the lock), unless a
    /// newer refresh took them over.
    fn done(&self, generation: u64) {
        let mut slot = self.unsaved();
        if slot.as_ref().is_some_and(|u| u.generation == generation) {
            *slot = None;
        }
    }

    pub(super) fn note_unsaved(&self, generation: u64, e: &StoreError) {
        let mut ctrl = self.lock();
        ctrl.last_error = Some((
            format!(
                "credential {}: the rotated refresh token (generation {generation}) is held only in this process: saving it failed ({e}); retrying at least every {}s until saved",
                self.id,
                SAVE_RETRY_MAX.as_secs()
            ),
            SystemTime::now(),
        ));
    }
}

/// Saves `state` again and again until done (see the module docs), holding
/// `lock` meanwhile. `error` is why the first save failed.
pub(super) fn spawn(
    inner: Arc<Inner>,
    state: StoredCredential,
    lock: Option<StoreLock>,
    error: &StoreError,
) {
    inner.note_unsaved(state.generation, error);
    *inner.unsaved() = Some(Unsaved {
        generation: state.generation,
        lock,
    });
    tokio::spawn(save_until_saved(Arc::downgrade(&inner), state));
}

/// After a refresh that took the retries of `generation` over: if that
/// refresh left the unsaved state in place (it failed, or wrote nothing
/// newer), the retries resume, with the lock it still holds.
pub(super) fn resume(inner: &Arc<Inner>, generation: u64, lock: Option<StoreLock>) {
    let Some(entry) = inner.current.load_full() else {
        return;
    };
    if entry.state.generation != generation || inner.unsaved().is_some() {
        return;
    }
    let error = StoreError::Unavailable("not saved yet".into());
    spawn(inner.clone(), entry.state.clone(), lock, &error);
}

/// Holds the source only weakly: once the source is dropped (a reload
/// replaced it, handing the unsaved state to its successor, or removed
/// it), the retries end, and with the source its store lock is released.
async fn save_until_saved(inner: Weak<Inner>, state: StoredCredential) {
    let generation = state.generation;
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(backoff(
            attempt,
            SAVE_RETRY_MIN,
            SAVE_RETRY_MAX,
            fastrand::f64(),
        ))
        .await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Until this save ends, no refresh takes the retries over (and
        // then writes a newer generation this one could land on).
        let _gate = inner.save_gate.lock().await;
        if !inner.still_unsaved(generation) {
            return;
        }
        // Not over a newer generation: a file or memory store saves
        // without compare-and-set, and a spent refresh token written over
        // the live one would cost the credential.
        if let Ok(Some(stored)) = inner.load_own().await
            && stored.generation > generation
        {
            tracing::info!(credential = %inner.id, generation, stored = stored.generation, "a newer credential is stored; not saving the older rotated one");
            inner.done(generation);
            adopt_stored(&inner).await;
            return;
        }
        match inner.save_own(&state).await {
            Ok(()) => {
                tracing::info!(credential = %inner.id, generation, attempt = attempt + 1, "the rotated credential is persisted");
                inner.done(generation);
                return;
            }
            Err(StoreError::Conflict { stored }) => {
                tracing::warn!(credential = %inner.id, generation, stored, "a newer credential is stored; not saving the rotated one");
                inner.done(generation);
                adopt_stored(&inner).await;
                return;
            }
            Err(e) => {
                tracing::warn!(credential = %inner.id, generation, error = %e, attempt = attempt + 1, "saving the rotated credential failed again; it lives only in this process until saved");
                inner.note_unsaved(generation, &e);
            }
        }
    }
}

/// Serves the stored state if it is newer than the one held and usable.
pub(super) async fn adopt_stored(inner: &Arc<Inner>) {
    let held = inner
        .current
        .load()
        .as_ref()
        .map_or(0, |e| e.state.generation);
    if let Ok(Some(s)) = inner.load_own().await
        && s.generation > held
        && sendable(&s.access_token)
        && remaining(&s).is_none_or(|r| !r.is_zero())
    {
        tracing::info!(credential = %inner.id, generation = s.generation, "adopting the newer stored credential");
        let lifetime = remaining(&s);
        let expires_at = s.expires_at();
        publish(inner, s, lifetime);
        // A retired source's token is not the credential's any more.
        if let Some(obs) = &inner.observer
            && !inner.retired.load(std::sync::atomic::Ordering::Relaxed)
        {
            obs.on_adopted(&inner.id, expires_at);
        }
        // A good credential is served: failures before it (and their
        // backoff) are over, as after a refresh that worked.
        {
            let mut ctrl = inner.lock();
            ctrl.failures = 0;
            ctrl.refused = false;
            ctrl.next_attempt = None;
        }
        inner.wake.notify_one();
    }
}
