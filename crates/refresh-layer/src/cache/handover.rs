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

use super::refresh::{keep_state, publish, remaining, sendable};
use super::{Inner, RefreshSettings, RefreshingSource};
use crate::provider::TokenProvider;
use crate::store::Store;
use crate::token::StoredCredential;
use proxy_core::facts::RefreshObserver;
use std::fmt;
use std::sync::Arc;

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

impl RefreshingSource {
    /// What this source holds, for the source that replaces it (`None`
    /// when it holds nothing yet).
    pub fn handover(&self) -> Option<Handover> {
        let entry = self.inner.current.load_full()?;
        let unsaved = self.inner.unsaved_generation() == Some(entry.state.generation);
        let cred = &entry.cred;
        let served = (cred.generation != entry.state.generation
            && entry.valid_at(tokio::time::Instant::now()))
        .then(|| StoredCredential {
            access_token: cred.expose().to_owned(),
            expires_at_ms: cred.expires_at.map(crate::token::to_ms),
            refresh_token: None,
            generation: cred.generation,
            obtained_at_ms: crate::token::to_ms(cred.obtained_at),
        });
        Some(Handover {
            state: entry.state.clone(),
            unsaved,
            served,
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
    /// starts from it). An unsaved rotated state is returned, to be saved
    /// to this store once the source is active.
    pub(super) fn start_from(self: &Arc<Self>, from: Handover) -> Option<StoredCredential> {
        let state = from.state;
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
        (from.unsaved && self.provider.rotates()).then_some(state)
    }
}
