//! Spacing forced refreshes when the upstream rejects fresh tokens too.
//!
//! A 401 forces one refresh of the generation it was sent with. If the
//! upstream rejects every token (wrong audience or scope, a permission
//! the credential lacks with 403 in `retry.statuses`, its own auth
//! backend down), each forced refresh succeeds at the token endpoint and
//! its new token is rejected at once: without a limit, every wave of
//! requests would make a token call, and no backoff would ever start
//! because no refresh fails. So when the generation a forced refresh got
//! is itself invalidated soon after (within twice `backoff_max`, at
//! least a minute), that counts as
//! a rejection: the first is refreshed again at once (the endpoint may
//! have handed out a stale token), and from then on forced refreshes are
//! spaced like failed ones (`backoff_min` doubling to `backoff_max`, with
//! jitter). In between, the token held is kept and served (the upstream
//! decides), and an invalidation returns an error that says why. A
//! refresh that was not forced (ahead of expiry, on expiry, by an
//! operator) starts the count over.

use super::{RefreshError, RefreshSettings, Trigger, backoff};
use std::time::Duration;
use tokio::time::Instant;

/// How long after a forced refresh a rejection of its token counts as the
/// same incident: twice `backoff_max`, so a spacing at its cap always
/// falls inside it (else the count would start over, two forced refreshes
/// at once, each time the cap is reached), and at least a minute, so a
/// small `backoff_max` (or a slow upstream) cannot switch the spacing off.
fn same_incident(settings: &RefreshSettings) -> Duration {
    settings
        .backoff_max
        .saturating_mul(2)
        .max(Duration::from_secs(60))
}

/// The spacing state, kept under the credential's control lock.
#[derive(Debug, Default)]
pub(super) struct Spacing {
    /// The generation the last forced refresh got, and when.
    last: Option<(u64, Instant)>,
    /// Rejections in a row of generations that forced refreshes got.
    rejected: u32,
    /// No forced refresh before this.
    next: Option<Instant>,
}

impl Spacing {
    /// Whether a forced refresh of `generation` may start `now`: an error
    /// when it is the token a forced refresh just got and the next one is
    /// not due yet. Counts the rejection otherwise.
    pub(super) fn admit(
        &mut self,
        credential: &str,
        generation: u64,
        now: Instant,
        settings: &RefreshSettings,
    ) -> Result<(), RefreshError> {
        let Some((forced_gen, got_at)) = self.last else {
            return Ok(());
        };
        let age = now.saturating_duration_since(got_at);
        if forced_gen != generation || age >= same_incident(settings) {
            // Another token, or one that worked for a long while: a new
            // incident, not the same rejection again.
            self.rejected = 0;
            self.next = None;
            return Ok(());
        }
        if let Some(next) = self.next
            && now < next
        {
            return Err(RefreshError::Rejected {
                times: self.rejected,
                age,
                retry_in: next - now,
            });
        }
        self.rejected = self.rejected.saturating_add(1);
        if self.rejected == 1 {
            tracing::warn!(
                credential,
                generation,
                age_ms = age.as_millis() as u64,
                "the upstream rejected the token a forced refresh just got; further forced refreshes of this credential are spaced out"
            );
        }
        // This rejection is refreshed at once; the next waits, like a
        // failure: so only the first is refreshed again without a pause.
        let delay = backoff(
            self.rejected,
            settings.backoff_min,
            settings.backoff_max,
            fastrand::f64(),
        );
        self.next = Some(now + delay.min(crate::token::MAX_LIFETIME));
        Ok(())
    }

    /// A refresh that got `generation` succeeded.
    pub(super) fn refreshed(&mut self, trigger: Trigger, generation: u64, now: Instant) {
        match trigger {
            Trigger::Forced => self.last = Some((generation, now)),
            Trigger::Proactive | Trigger::Expired | Trigger::Manual => *self = Self::default(),
        }
    }
}
