//! Handing a credential's state from one [`RefreshingSource`] to the one
//! that replaces it (a reload that rebuilds the credential: a changed
//! `redis` section, say), so that the replacement starts from what the old
//! one held instead of an empty memory.
//!
//! An empty memory is harmless while the store can be read (the new source
//! loads the state from it), but not when it cannot (Redis down during the
//! reload, or a new keyring): the new source would have nothing to serve,
//! and a rotated refresh token held only in memory (its save failed) would
//! be lost. With a [`Handover`], the new source serves the held token at
//! once (while it is valid), refreshes from the held refresh token, and
//! saves an unsaved rotated state to its own store.
//!
//! The handover is a snapshot: the old source keeps running until it is
//! dropped. The caller hands over only between sources of the same
//! provider (same endpoint, client and seed: the state is only meaningful
//! to it), and drops the old source once the new one is in service.
//!
//! A rotating credential's handed state is reconciled with the new store
//! once, under the store's lock, before the new source's first refresh
//! ([`settle`]), when it was not saved yet or comes from another store
//! (another kind, or another `file_store` directory). Generations of two
//! stores are not one lineage: a directory holding an older run's state
//! (generation 7, its refresh token spent long ago) must not beat the live
//! state handed over (generation 2). The rule, stored state S against
//! handed state H:
//! - nothing stored (or another provider's state): H is written;
//! - S older than H (a lower generation): H is written;
//! - the same store (an unsaved H): S as new as H or newer is another
//!   holder's rotation and wins; H is written only over an older or equal
//!   generation that differs (as the background save of an unsaved state
//!   always did);
//! - another store, S at H's generation or above: S wins if it carries H's
//!   refresh token or was obtained at or after H (another process moved
//!   first, copied the same lineage and may have rotated since); S obtained
//!   *before* H cannot descend from H: it is a stale lineage, and H is
//!   written, renumbered above S (max + 1) so that it wins everywhere
//!   (Redis's compare-and-set, every later comparison of generations).
//!
//! Where a store is ([`Store::location`]): a file store's directory, a
//! Redis store's URL and key prefix (fingerprinted).

use super::persist::{self, SAVE_RETRY_MAX, SAVE_RETRY_MIN};
use super::refresh::{keep_state, publish, remaining, sendable};
use super::{Entry, Inner, RefreshSettings, RefreshingSource, backoff};
use crate::provider::TokenProvider;
use crate::store::{Store, StoreError};
use crate::token::StoredCredential;
use proxy_core::Credential;
use proxy_core::facts::RefreshObserver;
use secrecy::SecretString;
use std::fmt;
use std::sync::{Arc, MutexGuard};

/// A credential's state as a source held it; see the module docs. Its
/// `Debug` prints no secret.
#[derive(Clone)]
pub struct Handover {
    state: StoredCredential,
    unsaved: bool,
    /// The token served, when it is not `state`'s own (a rotation whose
    /// new access token was of no use: `state` carries its refresh token,
    /// the older token is still served while valid).
    served: Option<StoredCredential>,
    /// The old source's store: its kind and location (see [`settle`]).
    from_store: (&'static str, Option<String>),
    /// Refresh at once (see [`Handover::refresh_first`]).
    refresh_first: bool,
}

/// A handed-over state still to be reconciled with the new store.
#[derive(Clone)]
pub(super) struct Pending {
    state: StoredCredential,
    other_store: bool,
    unsaved: bool,
    /// Where the state was last in a store (the store of the source that
    /// handed it over): handed over again before it is reconciled (a
    /// second reload while this store is down), it still comes from there.
    from_store: (&'static str, Option<String>),
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("generation", &self.state.generation)
            .field("unsaved", &self.unsaved)
            .finish_non_exhaustive()
    }
}

impl Handover {
    /// The generation held.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }

    /// Whether it is a rotated state the old source could not save yet.
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }
}

impl Handover {
    /// This hand-over for a source whose tokens are issued differently
    /// (new scopes, `params`, client secret): its refresh token is still
    /// good, but the access token held was issued for the old settings.
    /// The new source refreshes at once (a `client_credentials` credential
    /// fetches anew), and serves the token held meanwhile, and for as long
    /// as that refresh fails (an IdP down at the reload): the upstream
    /// decides whether it still works, as before the reload.
    #[must_use]
    pub fn refresh_first(mut self) -> Self {
        self.refresh_first = true;
        self
    }
}

impl RefreshingSource {
    /// Waits for the refresh running now, if any (its outcome does not
    /// matter), for at most `limit`. A reload calls it before it takes
    /// the hand-overs: a hand-over taken while a refresh runs would miss
    /// the refresh token that refresh rotates to, and a successor on
    /// another store would start from the spent one.
    pub async fn quiesce(&self, limit: std::time::Duration) {
        let running = {
            let mut ctrl = self.inner.lock();
            // Not a refresh deferred by a pause: it waits for this reload.
            self.inner.inflight(&mut ctrl)
        };
        if let Some(f) = running {
            let _ = tokio::time::timeout(limit, f).await;
        }
    }

    /// What this source holds, for the source that replaces it (`None`
    /// when it holds nothing yet).
    pub fn handover(&self) -> Option<Handover> {
        let entry = self.inner.current.load_full()?;
        // A state still to be reconciled with this store is not in it yet,
        // and still comes from the store it was handed over from.
        let pending = self
            .inner
            .pending()
            .as_ref()
            .filter(|p| p.state.generation == entry.state.generation)
            .map(|p| p.from_store.clone());
        let unsaved =
            self.inner.unsaved_generation() == Some(entry.state.generation) || pending.is_some();
        let from_store =
            pending.unwrap_or_else(|| (self.inner.store.kind(), self.inner.store.location()));
        let cred = &entry.cred;
        let served = (cred.generation != entry.state.generation
            && entry.valid_at(tokio::time::Instant::now()))
        .then(|| StoredCredential {
            access_token: cred.expose().to_owned(),
            expires_at_ms: cred.expires_at.map(crate::token::to_ms),
            refresh_token: None,
            generation: cred.generation,
            obtained_at_ms: crate::token::to_ms(cred.obtained_at),
            provider: None,
        });
        Some(Handover {
            state: entry.state.clone(),
            unsaved,
            served,
            from_store,
            refresh_first: false,
        })
    }

    /// Like [`with_observer`](Self::with_observer), starting from what the
    /// source it replaces held (see [`handover`](Self::handover)).
    pub fn with_handover(
        id: impl Into<Arc<str>>,
        provider: Arc<dyn TokenProvider>,
        store: Arc<dyn Store>,
        settings: RefreshSettings,
        observer: Option<Arc<dyn RefreshObserver>>,
        from: Handover,
    ) -> Self {
        let source = Self::inactive(id, provider, store, settings, observer, Some(from));
        source.activate();
        source
    }
}

impl Inner {
    /// Starts from `from`, before the scheduler runs: a valid token is
    /// served (and refreshed on its schedule); one that expired or cannot
    /// be sent is kept only for its refresh token (the first refresh
    /// starts from it). A rotating credential's state that is unsaved or
    /// comes from another store is kept to be reconciled with this store
    /// once the source is active ([`settle`]).
    pub(super) fn start_from(self: &Arc<Self>, from: Handover) {
        let state = from.state;
        let (kind, location) = &from.from_store;
        let other_store = *kind != self.store.kind()
            || matches!((location, self.store.location()), (Some(a), Some(b)) if *a != b);
        let usable = |s: &StoredCredential| {
            let left = remaining(s);
            (sendable(&s.access_token) && left.is_none_or(|l| !l.is_zero())).then_some(left)
        };
        if let Some(left) = usable(&state) {
            publish(self, state.clone(), left);
        } else {
            // The older token the old source still served, while valid;
            // the state (and its refresh token) is kept beside it.
            if let Some((served, left)) = from.served.and_then(|s| usable(&s).map(|l| (s, l))) {
                publish(self, served, left);
            }
            keep_state(self, state.clone(), None, false);
        }
        if from.refresh_first
            && let Some(e) = self.current.load_full()
        {
            self.current.store(Some(Arc::new(Entry {
                cred: e.cred.clone(),
                state: e.state.clone(),
                expires: e.expires,
                refresh_at: Some(tokio::time::Instant::now()),
            })));
        }
        if self.provider.rotates() && (from.unsaved || other_store) {
            *self.pending() = Some(Pending {
                state,
                other_store,
                unsaved: from.unsaved,
                from_store: from.from_store,
            });
        }
    }

    fn pending(&self) -> MutexGuard<'_, Option<Pending>> {
        self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a handed-over state is still to be reconciled.
    pub(super) fn handover_pending(&self) -> bool {
        self.pending().is_some()
    }
}

/// Once the source is active: reconciles a pending hand-over with the
/// store ([`settle`]) in the background, again with capped backoff while
/// the store cannot be locked or read. (A refresh settles it first too.)
pub(super) fn spawn_settle(inner: &Arc<Inner>) {
    if inner.pending().is_none() {
        return;
    }
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if settle(&inner).await.is_none() {
                return;
            }
            drop(inner);
            attempt = attempt.saturating_add(1);
            let delay = backoff(attempt, SAVE_RETRY_MIN, SAVE_RETRY_MAX, fastrand::f64());
            tokio::time::sleep(delay).await;
        }
    });
}

/// Reconciles the pending hand-over, if any, with the store under its
/// lock (see the module docs for the rule). Returns why it is still
/// pending (the store could not be locked or read), if it is.
pub(super) async fn settle(inner: &Arc<Inner>) -> Option<StoreError> {
    let _gate = inner.save_gate.lock().await;
    // Cleared only once reconciled: a hand-over made while this waits for
    // the store (a second reload) still carries it.
    let p = inner.pending().clone()?;
    let pending = settle_once(inner, p).await;
    if pending.is_none() {
        *inner.pending() = None;
    }
    pending
}

/// [`settle`]'s work on the pending hand-over `p`: why it is still
/// pending, if it is.
async fn settle_once(inner: &Arc<Inner>, p: Pending) -> Option<StoreError> {
    // A refresh since (or an adoption) superseded the handed state.
    if inner
        .current
        .load()
        .as_ref()
        .is_none_or(|e| e.state.generation != p.state.generation)
    {
        return None;
    }
    let limit = inner.run_limit();
    let read = async {
        let lock = inner.store.lock(&inner.id).await?;
        let stored = inner.store.load(&inner.id).await?;
        Ok::<_, StoreError>((lock, stored))
    };
    let (lock, stored) = match tokio::time::timeout(limit, read).await {
        Ok(Ok(read)) => read,
        // It may hold the only live refresh token: never written over.
        Ok(Err(e @ StoreError::Corrupt { .. })) => {
            tracing::error!(credential = %inner.id, error = %e, "the handed-over credential is not saved over a stored state that cannot be read");
            return None;
        }
        failed => {
            let e = match failed {
                Ok(Err(e)) => e,
                _ => StoreError::Unavailable(format!("no answer in {}s", limit.as_secs())),
            };
            tracing::warn!(credential = %inner.id, error = %e, "the handed-over credential could not be reconciled with its store yet; retrying");
            if p.unsaved {
                inner.note_unsaved(p.state.generation, &e);
            }
            return Some(e);
        }
    };
    let floor = stored.as_ref().map_or(0, |s| s.generation);
    let stored = inner.own(stored);
    let Some(generation) = written_as(&p, stored.as_ref(), floor) else {
        drop(lock);
        if stored.is_some_and(|s| s.generation > p.state.generation) {
            persist::adopt_stored(inner).await;
        }
        return None;
    };
    let mut state = p.state;
    if generation != state.generation {
        tracing::warn!(credential = %inner.id, stored = floor, held = state.generation, generation, "the new store holds an older lineage's state (obtained before the token handed over); the handed-over state replaces it");
        renumber(inner, state.generation, generation);
        state.generation = generation;
    }
    match inner.save_own(&state).await {
        Ok(()) => {
            tracing::info!(credential = %inner.id, generation, "the handed-over credential is saved to its store");
        }
        Err(StoreError::Conflict { .. }) => {
            drop(lock);
            persist::adopt_stored(inner).await;
        }
        // Saved again in the background until it is, with the lock.
        Err(e) => persist::spawn(inner.clone(), state, Some(lock), &e),
    }
    None
}

/// The generation to write the handed state `p` as, over `stored` (this
/// provider's state, if any; `floor`: the generation of whatever is
/// stored), or `None` to leave the store alone. See the module docs.
fn written_as(p: &Pending, stored: Option<&StoredCredential>, floor: u64) -> Option<u64> {
    let held = &p.state;
    let above = held.generation.max(floor) + 1;
    match stored {
        // Nothing, or another provider's state: above it.
        None if floor >= held.generation => Some(above),
        None => Some(held.generation),
        Some(s) if s.generation < held.generation => Some(held.generation),
        Some(s) if s.refresh_token == held.refresh_token && s.access_token == held.access_token => {
            None
        }
        Some(s) if !p.other_store => (s.generation == held.generation).then_some(held.generation),
        Some(s) if s.refresh_token == held.refresh_token => None,
        Some(s) if s.obtained_at_ms < held.obtained_at_ms => Some(above),
        Some(_) => None,
    }
}

/// Makes the state held (generation `from`) generation `to`: the same
/// token, renumbered to win over an older lineage's higher generation.
fn renumber(inner: &Inner, from: u64, to: u64) {
    let Some(e) = inner.current.load_full() else {
        return;
    };
    if e.state.generation != from {
        return;
    }
    let mut state = e.state.clone();
    state.generation = to;
    let cred = if e.cred.generation == from {
        Arc::new(Credential::new(
            SecretString::from(e.cred.expose().to_owned()),
            to,
            e.cred.obtained_at,
            e.cred.expires_at,
        ))
    } else {
        e.cred.clone()
    };
    inner.current.store(Some(Arc::new(Entry {
        cred,
        state,
        expires: e.expires,
        refresh_at: e.refresh_at,
    })));
}

#[cfg(test)]
mod rule_tests {
    use super::{Pending, written_as};
    use crate::token::StoredCredential;

    fn state(generation: u64, rt: &str, obtained_at_ms: u64) -> StoredCredential {
        StoredCredential {
            access_token: format!("at-{rt}"),
            expires_at_ms: None,
            refresh_token: Some(rt.to_owned()),
            generation,
            obtained_at_ms,
            provider: None,
        }
    }

    fn pending(held: StoredCredential, other_store: bool) -> Pending {
        Pending {
            state: held,
            other_store,
            unsaved: !other_store,
            from_store: ("memory", None),
        }
    }

    /// Another store's state obtained before the handed one is a stale
    /// lineage: the handed state is written above it.
    #[test]
    fn another_store_older_lineage_loses_to_the_held_state() {
        let p = pending(state(2, "rt-live", 5_000), true);
        let stale = state(7, "rt-spent", 1);
        assert_eq!(written_as(&p, Some(&stale), 7), Some(8));
        assert_eq!(written_as(&p, None, 0), Some(2));
        assert_eq!(written_as(&p, Some(&state(1, "rt-old", 1)), 1), Some(2));
        // Another provider's state at generation 9: written above it.
        assert_eq!(written_as(&p, None, 9), Some(10));
    }

    /// Another store's state obtained at or after the handed one (another
    /// process moved first and may have rotated since), or carrying its
    /// refresh token, is kept.
    #[test]
    fn another_store_newer_or_same_lineage_is_kept() {
        let p = pending(state(2, "rt-live", 5_000), true);
        assert_eq!(written_as(&p, Some(&state(3, "rt-next", 6_000)), 3), None);
        assert_eq!(written_as(&p, Some(&state(3, "rt-live", 5_000)), 3), None);
        assert_eq!(written_as(&p, Some(&state(2, "rt-live", 5_000)), 2), None);
    }

    /// Within one store, a newer generation is another holder's rotation
    /// and always wins; an older or equal one that differs is written over
    /// (an unsaved rotated state, as before).
    #[test]
    fn the_same_store_keeps_a_newer_generation() {
        let p = pending(state(2, "rt-live", 5_000), false);
        assert_eq!(written_as(&p, Some(&state(7, "rt-x", 1)), 7), None);
        assert_eq!(written_as(&p, Some(&state(2, "rt-x", 1)), 2), Some(2));
        assert_eq!(written_as(&p, Some(&state(1, "rt-x", 1)), 1), Some(2));
    }
}
