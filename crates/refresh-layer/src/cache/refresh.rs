//! One refresh, start to finish, under the store's lock.
//!
//! 1. Take the store lock (across processes for shared stores).
//! 2. Re-read the stored state. If another process already refreshed (a
//!    newer generation that is still good), adopt it: no token call.
//! 3. Otherwise fetch from the provider with the newest refresh token known.
//! 4. Persist the new state (a rotated refresh token is saved before the new
//!    access token is used), then publish it.
//! 5. On `invalid_grant`, re-read once more before calling it a failure:
//!    another holder may have rotated between our read and our call.
//! 6. If a shared store refuses the write because a newer generation is
//!    already there (this holder lost its lease), adopt the stored one.
//!
//! When a shared store is unreachable, a non-rotating grant refreshes
//! locally (and tries to save); a rotating one fails and backs off, keeping
//! the credential it holds until expiry, so replicas never fork a refresh
//! token.
//!
//! When the store holds a state this process cannot read (sealed with a key
//! not in its keyring, or not a credential), a rotating credential does not
//! refresh at all: the live refresh token is in that state, and the one in
//! memory or the config's seed may be spent. A non-rotating one refreshes
//! locally. Neither overwrites what it cannot read.
//!
//! A rotated state whose save fails is saved again in the background until
//! it is saved (`persist.rs`).
//!
//! A failure writes nothing.

use super::{Entry, Inner, MIN_LIFETIME, RUN_LIMIT, RefreshError, Trigger, persist, refresh_at};
use crate::store::{StoreError, StoreLock};
use crate::token::{StoredCredential, clamp_lifetime};
use proxy_core::Credential;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

impl Inner {
    /// How long a refresh's lock wait, store read or token call may take
    /// before the attempt is abandoned: far past every bound of their own
    /// (the token endpoint's 10 s, a store's lock wait, an `exec`
    /// command's `timeout`), so only a future that never answers meets
    /// it. Saves are never abandoned (see `refresh::attempt`).
    pub(super) fn run_limit(&self) -> Duration {
        let own = self.provider.time_limit().unwrap_or_default();
        RUN_LIMIT
            .max(own + RUN_LIMIT / 5)
            .max(self.settings.timeout * 2)
    }
}

/// Returns the credential now served and whether it was adopted from the
/// store (another process refreshed) rather than fetched.
pub(super) async fn run(
    inner: &Arc<Inner>,
    trigger: Trigger,
    invalidated: Option<u64>,
) -> Result<(Arc<Credential>, bool), RefreshError> {
    // A handed-over state not yet reconciled with this store is first
    // (see `handover.rs`): the refresh must start from the live lineage.
    // Until it is, the store may hold an older lineage's state (a higher
    // generation, its refresh token spent long ago) that this refresh
    // would take for the newest: a rotating credential waits (the token
    // held is served meanwhile, and the hand-over is retried).
    // The error is the store's own: it says what is wrong with it.
    if let Some(e) = super::handover::settle(inner).await
        && inner.provider.rotates()
    {
        return Err(RefreshError::Store(e));
    }
    // A rotated state still waiting to be saved holds this credential's
    // lock: this refresh takes it over (see `persist.rs`), and hands the
    // retries back if it leaves that state in place.
    // After any background save in flight: it could otherwise land over
    // the newer generation this refresh is about to save.
    let taken = {
        let _gate = inner.save_gate.lock().await;
        inner.take_unsaved()
    };
    // Handed back however this refresh ends, a panic in the token call
    // included: the live refresh token would otherwise be left in memory
    // only, with no retries and the lock released.
    let mut taken = match taken {
        Some((generation, lock)) => TakenOver {
            inner,
            unsaved: Some(generation),
            // A lease that lapsed and went to another process while the
            // save was retried is not held: this refresh takes the lock
            // again (waiting for that process's refresh, and adopting it).
            lock: lock.filter(|l| !l.is_lost()),
        },
        None => TakenOver {
            inner,
            unsaved: None,
            lock: None,
        },
    };
    // It saves that state first, once: the retries are paused while this
    // refresh runs, and one whose token call keeps failing (or hanging
    // until abandoned) must not keep the live refresh token out of the
    // store meanwhile.
    if let Some(generation) = taken.unsaved
        && let Some(entry) = inner.current.load_full()
        && entry.state.generation == generation
        && inner.save_own(&entry.state).await.is_ok()
    {
        tracing::info!(credential = %inner.id, generation, "the rotated credential is persisted");
        taken.unsaved = None;
    }
    let unsaved = taken.unsaved.is_some();
    attempt(inner, trigger, invalidated, unsaved, &mut taken.lock).await
}

/// A refresh's store lock, and the generation of the unsaved rotated state
/// whose save retries it took over, if it did: on drop, the retries
/// resume under the lock if that state is still the one held (see
/// `persist::resume`); otherwise the lock is released.
struct TakenOver<'a> {
    inner: &'a Arc<Inner>,
    unsaved: Option<u64>,
    lock: Option<StoreLock>,
}

impl Drop for TakenOver<'_> {
    fn drop(&mut self) {
        // Not while a runtime drops its tasks from outside (nothing could
        // run the retries then; the lock is released).
        if let Some(generation) = self.unsaved
            && tokio::runtime::Handle::try_current().is_ok()
        {
            persist::resume(self.inner, generation, self.lock.take());
        }
    }
}

/// One refresh; `lock` is the store lock when already held (taken over
/// from a pending save), and is taken here otherwise. `unsaved`: the
/// state held is a rotated one still to be saved (its retries were taken
/// over and could not save it first).
async fn attempt(
    inner: &Arc<Inner>,
    trigger: Trigger,
    invalidated: Option<u64>,
    unsaved: bool,
    lock: &mut Option<StoreLock>,
) -> Result<(Arc<Credential>, bool), RefreshError> {
    // Bounded up to the token call, where nothing has been spent yet: a
    // lock wait, load or fetch that never answers is abandoned as a
    // failed attempt. The saves after it are not: abandoning one would
    // drop a rotated refresh token the endpoint has already spent the old
    // one for.
    let limit = inner.run_limit();
    let overran = |_| RefreshError::Overran(limit);
    if lock.is_none() {
        match tokio::time::timeout(limit, inner.store.lock(&inner.id))
            .await
            .map_err(overran)?
        {
            Ok(l) => *lock = Some(l),
            // A store that cannot serve (Redis down, a lock wait that
            // timed out, a `file_store.dir` gone or unwritable) must not
            // stop a grant that can be repeated safely: the store is only
            // its cache, and still reported down. A rotating refresh token
            // must never be used outside the lock (two replicas would fork
            // it).
            Err(e) if !inner.provider.rotates() => {
                tracing::warn!(credential = %inner.id, error = %e, "store unavailable; refreshing this non-rotating credential locally");
            }
            Err(e) => return Err(RefreshError::Store(e)),
        }
    }
    let ours = inner.current.load_full();
    let our_gen = ours.as_ref().map_or(0, |e| e.cred.generation);
    // Set when the store holds a state this process cannot read: it is
    // never overwritten (it may hold the only live refresh token).
    let mut unreadable = false;
    let stored = match tokio::time::timeout(limit, inner.store.load(&inner.id))
        .await
        .map_err(overran)?
    {
        Ok(s) => s,
        // The live refresh token is in that state (the seed and the one in
        // memory are spent once another holder rotated): sending either
        // would be an `invalid_grant`, and a replay to an IdP that revokes
        // the token family. Fail instead: the token held is served until
        // it expires, and retries back off.
        Err(e @ StoreError::Corrupt { .. }) if inner.provider.rotates() => {
            tracing::error!(credential = %inner.id, error = %e, "stored credential unreadable; not refreshing with a refresh token that may be spent");
            return Err(RefreshError::StoreUnreadable {
                credential: inner.id.to_string(),
                cause: e,
            });
        }
        // Nothing to fork: refresh locally, and leave the state alone.
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::error!(credential = %inner.id, error = %e, "stored credential unreadable; refreshing this non-rotating credential locally, without overwriting it");
            unreadable = true;
            None
        }
        // Refreshing locally (above): the store is not read either.
        Err(_) if lock.is_none() => None,
        Err(e) => return Err(RefreshError::Store(e)),
    };
    // The new state's generation exceeds whatever is stored, even another
    // provider's state (not ours to use, but a store with compare-and-set
    // refuses a generation that is not newer).
    let stored_gen = stored.as_ref().map_or(0, |s| s.generation);
    let stored = inner.own(stored);
    if let Some(s) = &stored
        && s.generation > our_gen
        && invalidated.is_none_or(|g| s.generation > g)
        // A newer state that holds the very token served is nothing new:
        // saved for the refresh token a useless refresh rotated to, with
        // the access token kept. After a 401 for that token, adopting it
        // would "refresh" to the token just refused, with no token call.
        && ours.as_ref().is_none_or(|o| o.cred.expose() != s.access_token)
        && adoptable(s, inner, trigger)
    {
        tracing::info!(credential = %inner.id, generation = s.generation, "adopting a credential refreshed by another process");
        return Ok((publish(inner, s.clone(), remaining(s)), true));
    }

    let base = match (stored, ours.as_ref().map(|e| &e.state)) {
        (Some(s), Some(o)) if o.generation > s.generation => Some(o.clone()),
        (Some(s), _) => Some(s),
        (None, o) => o.cloned(),
    };
    let base_gen = base.as_ref().map_or(0, |b| b.generation);
    let fetched = tokio::time::timeout(limit, inner.provider.fetch(base.as_ref()))
        .await
        .map_err(overran)?;
    // `expires_in` counts from here, not from the end of the save below.
    let arrived = Instant::now();
    match fetched {
        Ok(token) => {
            let prior = base
                .as_ref()
                .and_then(StoredCredential::refresh_token)
                .or_else(|| inner.provider.seed_refresh_token());
            let rotated = token.refresh_token.as_ref().is_some_and(|t| {
                prior
                    .as_ref()
                    .is_none_or(|p| p.expose_secret() != t.expose_secret())
            });
            let mut state = StoredCredential::from_token(
                &token,
                prior.as_ref(),
                base_gen.max(our_gen).max(stored_gen) + 1,
                SystemTime::now(),
            );
            let failure = if !sendable(token.access_token.expose_secret()) {
                Some(RefreshError::Unusable)
            } else if invalidated.is_some()
                && ours
                    .as_ref()
                    .is_some_and(|o| o.cred.expose() == token.access_token.expose_secret())
            {
                // A forced refresh that got the very token the upstream
                // refused (a token file its writer has not replaced yet, a
                // command or endpoint that hands out a cached token): sent
                // again, it would be refused again. A failed attempt: the
                // 401 retry gives up, and the next forced refresh waits.
                Some(RefreshError::Unchanged)
            } else {
                token
                    .expires_in
                    .filter(|l| *l < MIN_LIFETIME)
                    .map(RefreshError::ShortLived)
            };
            if failure.is_some() {
                // A failed refresh: the store keeps the valid token it may
                // hold. A rotated refresh token must still be kept (the
                // old one is spent): with the access token held, if that
                // is still valid.
                if let Some(held) = inner.current.load_full()
                    && held.valid_at(Instant::now())
                {
                    let cred = &held.cred;
                    state = StoredCredential {
                        access_token: cred.expose().to_owned(),
                        expires_at_ms: cred.expires_at.map(crate::token::to_ms),
                        obtained_at_ms: crate::token::to_ms(cred.obtained_at),
                        ..state
                    };
                }
                // Nothing worth a generation is held then, unless a refresh
                // token is to be saved: the access token is the one served
                // (or a useless one), the refresh token the base's. A new
                // generation would say otherwise, climbing with every
                // failure, and the write-back would take a store another
                // process has since rotated (a lower generation) for a
                // store that lost this state, and write the spent refresh
                // token over the live one.
                if !rotated && !unsaved && base.is_some() {
                    state.generation = base_gen;
                }
            }
            // A failure saves only a refresh token still to be saved: one
            // it rotated to, or the held one whose save is being retried
            // (the state replacing it in memory ends those retries, so
            // this save, and its own retries if it fails, take them on).
            if !unreadable
                && (failure.is_none() || rotated || unsaved)
                && let Saved::Adopted(cred) = save(inner, &state, lock).await
            {
                return Ok((cred, true));
            }
            // Whether or not it was saved, the new state is held in memory
            // from here on: it may carry a rotated refresh token (the old
            // one is spent), and the state held is what the next refresh,
            // a resumed background save and a reload's hand-over start
            // from.
            let lifetime = token
                .expires_in
                .map(|l| l.saturating_sub(arrived.elapsed()));
            // A token that expired while its state was saved (a store
            // slower than the token's life) is as useless as one that came
            // expired: served, it would be refreshed again at once, with
            // no backoff, for as long as saves are that slow.
            let failure = failure.or_else(|| {
                lifetime
                    .filter(|l| *l < MIN_LIFETIME)
                    .map(|_| RefreshError::ExpiredWhileSaving(arrived.elapsed()))
            });
            match failure {
                // As a short-lived token below, the state is kept; but
                // never served, even when nothing valid is held.
                Some(e @ RefreshError::Unusable) => {
                    keep_state(inner, state, None, false);
                    Err(e)
                }
                // Useless to requests, and taken as a success it would be
                // refreshed again at once, in a loop. The credential held is
                // kept, with the new state (see above).
                Some(e) => {
                    keep_state(inner, state, lifetime, true);
                    Err(e)
                }
                None => Ok((publish(inner, state, lifetime), false)),
            }
        }
        Err(e) if e.is_invalid_grant() => {
            if let Ok(Some(s)) = inner.load_own().await
                && s.generation > base_gen
                && !expired(&s)
                && sendable(&s.access_token)
            {
                tracing::info!(credential = %inner.id, generation = s.generation, "invalid_grant after another process rotated; adopting its credential");
                return Ok((publish(inner, s.clone(), remaining(&s)), true));
            }
            Err(RefreshError::Provider(e))
        }
        Err(e) => Err(RefreshError::Provider(e)),
    }
}

/// How long a non-rotating grant's save may take before the refreshed
/// token is served from memory anyway (see [`save`]): below the default
/// `refresh.timeout` (10 s), above a Redis command's 2 s timeout.
const NON_ROTATING_SAVE_LIMIT: Duration = Duration::from_secs(5);

/// What became of the save of a refreshed state.
enum Saved {
    Yes,
    /// Kept in memory only (and saved again in the background if rotated).
    No,
    /// A newer stored state is served instead.
    Adopted(Arc<Credential>),
}

/// Saves the refreshed `state`; see [`Saved`].
///
/// A save that does not answer (an fsync stuck on a failing disk) is
/// abandoned after [`NON_ROTATING_SAVE_LIMIT`] only for a grant that does
/// not rotate: it carries nothing that is not also in memory, and waiting
/// on it would keep the new token from being served (requests wait
/// `refresh.timeout` at most) and every later refresh from starting. A
/// rotated refresh token's save is never abandoned (the old one is spent).
async fn save(inner: &Arc<Inner>, state: &StoredCredential, lock: &mut Option<StoreLock>) -> Saved {
    let saved = if inner.provider.rotates() {
        inner.save_own(state).await
    } else {
        let limit = NON_ROTATING_SAVE_LIMIT;
        match tokio::time::timeout(limit, inner.save_own(state)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(credential = %inner.id, limit = ?limit, "the store did not answer the save; serving the refreshed credential from memory");
                return Saved::No;
            }
        }
    };
    match saved {
        Ok(()) => Saved::Yes,
        // Someone wrote a newer generation while we refreshed (we
        // lost the lease): theirs wins, ours is dropped.
        Err(StoreError::Conflict { stored }) => match inner.load_own().await {
            Ok(Some(s)) if s.generation >= stored && sendable(&s.access_token) => {
                tracing::warn!(credential = %inner.id, generation = s.generation, "a newer credential was stored while refreshing; adopting it");
                Saved::Adopted(publish(inner, s.clone(), remaining(&s)))
            }
            other => {
                let found = match &other {
                    Ok(Some(s)) => format!("generation {}", s.generation),
                    Ok(None) => "nothing".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(credential = %inner.id, stored, found = %found, "the store refused the refreshed credential (it holds a newer generation) and reading it back failed; serving the refreshed one from memory");
                Saved::No
            }
        },
        // The endpoint already consumed the old refresh token, so the
        // new one must be used even though it is only in memory now.
        // A rotated one is saved again in the background until it
        // is saved, under the lock still held (other holders wait
        // rather than send the consumed token); else the next
        // refresh saves again.
        Err(e) => {
            tracing::error!(credential = %inner.id, error = %e, "could not persist the refreshed credential; keeping it in memory");
            if inner.provider.rotates() {
                persist::spawn(inner.clone(), state.clone(), lock.take(), &e);
            }
            Saved::No
        }
    }
}

/// Whether `token` can be sent at all: not empty, no control characters
/// (a newline would end a header line; no injection mode can carry one).
/// Other bytes are left to injection: `basic` and `query` encode the
/// token, and a header that cannot hold it says so there.
pub(super) fn sendable(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(char::is_control)
}

/// Makes `state` the served credential.
pub(super) fn publish(
    inner: &Inner,
    state: StoredCredential,
    lifetime: Option<Duration>,
) -> Arc<Credential> {
    let now = Instant::now();
    let lifetime = lifetime.map(clamp_lifetime);
    let cred = Arc::new(Credential::new(
        SecretString::from(state.access_token.clone()),
        state.generation,
        state.obtained_at(),
        state.expires_at(),
    ));
    let s = &inner.settings;
    // `max_age` counts from when the token was obtained, not from now: an
    // adopted token (stored before a restart, or by another replica) may
    // already be most of it old.
    let age = SystemTime::now()
        .duration_since(state.obtained_at())
        .unwrap_or(Duration::ZERO);
    let max_age = s.max_age.map(|m| m.saturating_sub(age));
    let jitter = fastrand::f64();
    // A token obtained a while ago (adopted from the store after a restart
    // or from another replica, handed over by a reload) is refreshed when
    // its whole lifetime says, `buffer` before its expiry: scheduled from
    // the time left alone, a 1 h token with 100 s left would count as a
    // 100 s token and be refreshed at half of that, 50 s before expiry.
    // Past that moment already: at once.
    let whole = state
        .expires_at()
        .and_then(|e| e.duration_since(state.obtained_at()).ok())
        .map(clamp_lifetime);
    let refresh = match (lifetime, whole) {
        (Some(_), Some(whole)) if age >= ADOPTED_AGE => {
            refresh_at(now, Some(whole), s.buffer, None, jitter)
                .map(|at| at.checked_sub(age).unwrap_or(now).max(now))
        }
        _ => refresh_at(now, lifetime, s.buffer, max_age, jitter),
    };
    inner.current.store(Some(Arc::new(Entry {
        cred: cred.clone(),
        expires: lifetime.map(|l| now + l),
        refresh_at: refresh,
        state,
    })));
    cred
}

/// A token at least this old when published was obtained earlier (by
/// this process before a restart, another replica, a replaced source),
/// not just now: see [`publish`].
const ADOPTED_AGE: Duration = Duration::from_secs(1);

/// Keeps `state` (and the rotated refresh token it may carry) for the
/// next refresh, in memory only, while the credential served stays the one
/// held if that is still valid; else `state`'s own is served if
/// `servable`, or none (an entry already expired: requests wait for the
/// next refresh, which starts from `state`).
pub(super) fn keep_state(
    inner: &Inner,
    state: StoredCredential,
    lifetime: Option<Duration>,
    servable: bool,
) {
    let now = Instant::now();
    match inner.current.load_full() {
        Some(held) if held.valid_at(now) => {
            inner.current.store(Some(Arc::new(Entry {
                cred: held.cred.clone(),
                state,
                expires: held.expires,
                refresh_at: held.refresh_at,
            })));
        }
        _ if servable => {
            publish(inner, state, lifetime);
        }
        _ => {
            let cred = Arc::new(Credential::new(
                SecretString::from(String::new()),
                state.generation,
                state.obtained_at(),
                state.expires_at(),
            ));
            inner.current.store(Some(Arc::new(Entry {
                cred,
                state,
                expires: Some(now),
                refresh_at: None,
            })));
        }
    }
}

pub(super) fn remaining(s: &StoredCredential) -> Option<Duration> {
    s.expires_at().map(|e| {
        e.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    })
}

fn expired(s: &StoredCredential) -> bool {
    remaining(s).is_some_and(|r| r.is_zero())
}

/// A state written by someone else (or before a restart) is worth adopting
/// if it is still good for a while: not inside its own refresh lead (else
/// we would adopt and immediately refresh again), except
/// - for forced refreshes, where any newer valid token beats the rejected
///   one;
/// - when nothing valid is held (`Expired`: at startup, after a reload, or
///   on a new replica): a valid token in its lead is still a token. It is
///   served at once and refreshed ahead in the background (its refresh
///   time has passed), with the usual backoff if that fails; fetching
///   first would turn a token endpoint outage into 503s while the store
///   holds a token good for seconds or minutes more.
fn adoptable(s: &StoredCredential, inner: &Inner, trigger: Trigger) -> bool {
    // Saved for its (rotated) refresh token, never to be served.
    if !sendable(&s.access_token) {
        return false;
    }
    let Some(left) = remaining(s) else {
        return true;
    };
    match trigger {
        Trigger::Forced | Trigger::Manual | Trigger::Expired => !left.is_zero(),
        Trigger::Proactive => {
            let lifetime = s
                .expires_at()
                .and_then(|e| e.duration_since(s.obtained_at()).ok())
                .unwrap_or(left);
            let lead = if lifetime < inner.settings.buffer.saturating_mul(2) {
                lifetime / 2
            } else {
                inner.settings.buffer
            };
            left > lead
        }
    }
}
