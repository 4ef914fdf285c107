//! A rotating credential's state, written back into a store that lost it.
//!
//! After a rotation, the live refresh token is in the store and in the
//! memory of the processes that hold it; the configured seed is spent.
//! A store that loses the state (Redis restarted without persistence,
//! evicted or flushed; a `file` state deleted by mistake) would make the
//! next process that starts, or refreshes before the holders do, send
//! that spent seed: `invalid_grant`, and an IdP that revokes the token
//! family on replay then revokes the live token too.
//!
//! So every [`RefreshSettings::store_check`](super::RefreshSettings)
//! (10 s, jittered) a rotating source reads the store. When the store
//! holds nothing, or an older generation of this provider's state with
//! another refresh token than the one held, it
//! takes the store lock, reads again, and writes the state it holds back
//! (compare-and-set where the store has it, as every save). It does not
//! write back
//! - once the token endpoint answered `invalid_grant` to it, until a
//!   refresh works again: the refresh token it holds may be dead, and an
//!   operator starting the credential over from a new seed deletes the
//!   state on purpose (other failures, a store or an endpoint that is
//!   down, say nothing against the token, and do not stop it);
//! - a generation older than one it has seen stored: another process
//!   refreshed since, and this one's refresh token is spent (a process
//!   that has not checked since another one rotated cannot know that: it
//!   may write its older state back first, and the process holding the
//!   newer one replaces it at its next check, compare-and-set letting
//!   the newer generation in; a process starting in between adopts the
//!   older state, no worse than the spent seed it would send otherwise);
//! - over another provider's state (see `lineage.rs`), or a state it
//!   cannot read (that may hold the only live refresh token);
//! - while a refresh, a retried save (`persist.rs`) or a hand-over
//!   (`handover.rs`) is under way, or while paused or retired: those
//!   save, or their successor does.
//!
//! The reads are [`Store::peek`](crate::store::Store::peek)s, which leave
//! the store's health to the refreshes and saves (a read-only Redis
//! replica answers reads). Nothing is abandoned on a timeout: each store
//! bounds its own operations, and a check that hangs (a wedged file
//! system) holds up only the next check, never a thread per check.
//!
//! Non-rotating grants are not watched: a lost state costs them one
//! token call.

use super::Inner;
use crate::store::StoreError;
use crate::token::StoredCredential;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a rotating credential checks its store, by default.
pub const STORE_CHECK: Duration = Duration::from_secs(10);

/// What a check found in the store.
enum Found {
    /// The state held, or something not ours to touch.
    Fine,
    /// Nothing, or an older generation of this provider's state.
    Lost(Option<u64>),
}

/// Starts the checks of a rotating source; they end with the source.
pub(super) fn spawn(inner: &Arc<Inner>) {
    if !inner.provider.rotates() || inner.settings.store_check.is_zero() {
        return;
    }
    tokio::spawn(watch(Arc::downgrade(inner)));
}

async fn watch(inner: Weak<Inner>) {
    // The newest generation of this provider's state seen stored.
    let mut seen = 0u64;
    loop {
        let every = inner.upgrade().map(|i| i.settings.store_check);
        let Some(every) = every else { return };
        // Jittered (+-10 %), so replicas started together do not check
        // together.
        let spread = u64::try_from((every / 5).as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(fastrand::u64(..=spread));
        tokio::time::sleep(every.saturating_sub(every / 10).saturating_add(jitter)).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.retired.load(Ordering::SeqCst) {
            return;
        }
        check(&inner, &mut seen).await;
    }
}

/// The state held, if it is this source's to write back now (see the
/// module docs).
fn held(inner: &Inner) -> Option<StoredCredential> {
    if inner.paused.load(Ordering::SeqCst) || inner.retired.load(Ordering::SeqCst) {
        return None;
    }
    {
        let mut ctrl = inner.lock();
        if inner.inflight(&mut ctrl).is_some() || ctrl.refused {
            return None;
        }
    }
    if inner.unsaved_generation().is_some() || inner.handover_pending() {
        return None;
    }
    let entry = inner.current.load_full()?;
    entry.state.refresh_token.as_ref()?;
    Some(entry.state.clone())
}

/// Reads the store and compares it with `held`.
async fn look(inner: &Inner, held: &StoredCredential, seen: &mut u64) -> Found {
    // Unreadable or unreachable: nothing is touched (the refreshes and
    // the store's health report it).
    let Ok(stored) = inner.store.peek(&inner.id).await else {
        return Found::Fine;
    };
    let Some(stored) = stored else {
        return Found::Lost(None);
    };
    let Some(stored) = inner.own(Some(stored)) else {
        return Found::Fine;
    };
    *seen = (*seen).max(stored.generation);
    // An older generation that holds the same refresh token lost nothing:
    // a failed refresh keeps a newer generation in memory without saving
    // it (see `refresh.rs`), and its refresh token is the stored one.
    if stored.generation < held.generation && stored.refresh_token != held.refresh_token {
        Found::Lost(Some(stored.generation))
    } else {
        Found::Fine
    }
}

async fn check(inner: &Arc<Inner>, seen: &mut u64) {
    let Some(state) = held(inner) else { return };
    if !matches!(look(inner, &state, seen).await, Found::Lost(_)) || state.generation < *seen {
        return;
    }
    // Under the lock, no refresh (here or in another process) runs; the
    // store and the state held are checked again.
    let Ok(_lock) = inner.store.lock(&inner.id).await else {
        return;
    };
    let Some(state) = held(inner) else { return };
    let Found::Lost(found) = look(inner, &state, seen).await else {
        return;
    };
    if state.generation < *seen {
        return;
    }
    let found = found.map_or_else(|| "nothing".to_owned(), |g| format!("generation {g}"));
    match inner.save_own(&state).await {
        Ok(()) => {
            tracing::warn!(credential = %inner.id, generation = state.generation, found = %found, "the store had lost this credential's state; wrote back the one held");
        }
        // Another process wrote a newer one meanwhile: nothing was lost.
        Err(StoreError::Conflict { .. }) => {}
        Err(e) => {
            tracing::warn!(credential = %inner.id, generation = state.generation, found = %found, error = %e, "the store had lost this credential's state; writing the one held back failed (retried at the next check)");
        }
    }
}
