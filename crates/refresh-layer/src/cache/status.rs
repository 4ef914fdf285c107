//! The operator's view of one credential: the [`CredentialStatus`] built
//! from the served entry and the refresh controller (state, generation,
//! expiry, last refresh and error, next refresh), as the management API and
//! `latchkey ctl` show it.
//!
//! Read-only: it changes nothing, and reports the `Instant` deadlines
//! (scheduled refresh, end of backoff) as wall-clock times.

use super::Inner;
use proxy_core::credential::CredentialStatus;
use std::time::SystemTime;
use tokio::time::Instant;

impl Inner {
    pub(super) fn status(&self) -> CredentialStatus {
        let ctrl = self.lock();
        let now = Instant::now();
        let sys_now = SystemTime::now();
        let to_sys = |i: Instant| {
            if i >= now {
                sys_now + (i - now)
            } else {
                sys_now - (now - i)
            }
        };
        let entry = self.current.load_full();
        let refreshing = ctrl.inflight.as_ref().is_some_and(|f| f.peek().is_none());
        let state = match &entry {
            _ if ctrl.failures > 0 => "failing",
            None => "empty",
            Some(e) if !e.valid_at(now) => "expired",
            Some(e) if e.refresh_at.is_some_and(|r| now >= r) => "refresh_ahead",
            Some(_) => "fresh",
        };
        let scheduled = entry.as_ref().and_then(|e| e.refresh_at);
        let next = match (scheduled, ctrl.next_attempt) {
            (Some(s), Some(n)) => Some(s.max(n)),
            (s, n) => s.or(n),
        };
        CredentialStatus {
            id: self.id.to_string(),
            kind: self.provider.kind(),
            store: self.store.kind(),
            store_error: self.store.health().err(),
            state,
            generation: entry.as_ref().map_or(0, |e| e.cred.generation),
            expires_at: entry.as_ref().and_then(|e| e.cred.expires_at),
            obtained_at: entry.as_ref().map(|e| e.cred.obtained_at),
            last_refresh_at: ctrl.last_refresh.map(|l| l.0),
            last_refresh_result: ctrl.last_refresh.map(|l| if l.1 { "ok" } else { "error" }),
            last_refresh_trigger: ctrl.last_refresh.map(|l| l.2.as_str()),
            last_error: ctrl.last_error.as_ref().map(|e| e.0.clone()),
            last_error_at: ctrl.last_error.as_ref().map(|e| e.1),
            next_refresh_at: next.map(to_sys),
            consecutive_failures: ctrl.failures,
            has_refresh_token: entry
                .as_ref()
                .is_some_and(|e| e.state.refresh_token.is_some())
                || (entry.is_none() && self.provider.seed_refresh_token().is_some()),
            refreshing,
        }
    }
}
