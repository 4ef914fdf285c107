//! Whose stored state this is.
//!
//! A stored state is only meaningful to the provider that produced it (see
//! `TokenProvider::identity`): after the credential's provider changed (a
//! new token endpoint, client or grant), the state
//! the old one left in a `file` or `redis` store carries the old IdP's
//! (or client's) tokens. Served, it injects the old IdP's access token; refreshed from,
//! it sends the old IdP's refresh token (a live secret) to the new
//! endpoint, and `invalid_grant` for ever. So every read of the store goes
//! through [`Inner::own`], which treats a state stamped with another
//! provider's fingerprint as nothing stored (the credential starts from
//! its configured seed), and every write through [`Inner::save_own`],
//! which stamps ours: the next save under the lock replaces the other
//! provider's state. A state with no fingerprint (written by an older
//! version) is taken as ours, as before.

use super::Inner;
use crate::store::StoreError;
use crate::token::StoredCredential;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub(super) struct Lineage {
    /// The "another provider's state" warning was logged (once per source).
    warned: AtomicBool,
}

impl Inner {
    /// `stored` if it is this provider's state; see the module docs.
    pub(super) fn own(&self, stored: Option<StoredCredential>) -> Option<StoredCredential> {
        let s = stored?;
        if let (Some(theirs), Some(ours)) = (s.provider.as_deref(), self.provider.identity())
            && !theirs.is_empty()
            && theirs != ours
        {
            if !self.lineage.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(credential = %self.id, stored_generation = s.generation, "stored state belongs to another provider (the credential's provider changed); starting from the configured seed");
            }
            return None;
        }
        Some(s)
    }

    /// The stored state, if it is this provider's.
    pub(super) async fn load_own(&self) -> Result<Option<StoredCredential>, StoreError> {
        self.store.load(&self.id).await.map(|s| self.own(s))
    }

    /// Saves `state`, stamped with this provider's fingerprint.
    pub(super) async fn save_own(&self, state: &StoredCredential) -> Result<(), StoreError> {
        let mut stamped = state.clone();
        stamped.provider = self.provider.identity();
        self.store.save(&self.id, &stamped).await
    }
}
