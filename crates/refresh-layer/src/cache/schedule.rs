//! Pure timing arithmetic: when to refresh, how long to back off.
//!
//! Kept free of clocks and state (linkerd's `certify.rs::refresh_in`
//! pattern): callers pass `now` and a random fraction, so every rule is unit
//! tested exactly.

use std::time::Duration;
use tokio::time::Instant;

/// When a token obtained at `now` and living `lifetime` should be refreshed.
///
/// `buffer` before expiry; when the token lives less than twice the buffer,
/// at half its life. `jitter` in `[0, 1)` moves the moment earlier by up to a
/// tenth of the lead time, so replicas and credentials don't align. Tokens
/// without a lifetime are refreshed after `max_age` (up to 1% early) if set,
/// else never (only when invalidated).
pub fn refresh_at(
    now: Instant,
    lifetime: Option<Duration>,
    buffer: Duration,
    max_age: Option<Duration>,
    jitter: f64,
) -> Option<Instant> {
    let jitter = jitter.clamp(0.0, 1.0);
    let at = match lifetime {
        Some(l) => {
            let lead = if l < buffer.saturating_mul(2) {
                l / 2
            } else {
                buffer
            };
            l.saturating_sub(lead.saturating_add(lead.mul_f64(jitter / 10.0)))
        }
        // Up to 1% early, for the same reason as the lead-time jitter.
        None => max_age.map(|m| m.saturating_sub(m.mul_f64(jitter / 100.0)))?,
    };
    // Past what the clock can represent: never (only when invalidated).
    now.checked_add(at)
}

/// Delay before retry number `attempt` (1-based) after failures: doubles
/// from `min` up to `max`, with "equal jitter" (half fixed, half random) so
/// a fleet does not retry in lockstep.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    // Doubled until the cap, however small `min` is (a fixed cap on the
    // exponent would stop a `min` of a few nanoseconds far below `max`).
    let mut full = min;
    for _ in 1..attempt {
        if full >= max || full.is_zero() {
            break;
        }
        full = full.saturating_mul(2);
    }
    let full = full.min(max);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn refresh_is_buffer_before_expiry() {
        let now = Instant::now();
        // 1 h token, 60 s buffer, no jitter: at 59 min.
        assert_eq!(
            refresh_at(now, Some(S(3600)), S(60), None, 0.0),
            Some(now + S(3540))
        );
        // Max jitter moves it at most 6 s (a tenth of the buffer) earlier.
        let j = refresh_at(now, Some(S(3600)), S(60), None, 0.999).unwrap();
        assert!(j >= now + S(3534) && j <= now + S(3540), "{:?}", j - now);
    }

    #[tokio::test(start_paused = true)]
    async fn short_tokens_refresh_at_half_life() {
        let now = Instant::now();
        assert_eq!(
            refresh_at(now, Some(S(100)), S(60), None, 0.0),
            Some(now + S(50))
        );
        assert_eq!(
            refresh_at(now, Some(S(120)), S(60), None, 0.0),
            Some(now + S(60))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_expiry_uses_max_age_or_never() {
        let now = Instant::now();
        assert_eq!(refresh_at(now, None, S(60), None, 0.5), None);
        assert_eq!(
            refresh_at(now, None, S(60), Some(S(600)), 0.0),
            Some(now + S(600))
        );
    }

    /// Durations past the clock's range (a provider's or a config's) give
    /// a schedule or none, never a panic.
    #[tokio::test(start_paused = true)]
    async fn huge_durations_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(
            refresh_at(now, Some(S(3600)), Duration::MAX, None, 0.0),
            Some(now + S(1800))
        );
        assert_eq!(refresh_at(now, Some(Duration::MAX), S(60), None, 0.0), None);
        assert_eq!(refresh_at(now, None, S(60), Some(Duration::MAX), 0.0), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let (min, max) = (S(1), S(300));
        assert_eq!(backoff(1, min, max, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(1, min, max, 1.0), S(1));
        assert_eq!(backoff(4, min, max, 1.0), S(8));
        assert_eq!(backoff(20, min, max, 1.0), S(300));
        assert_eq!(backoff(20, min, max, 0.0), S(150));
        assert_eq!(backoff(u32::MAX, min, max, 1.0), S(300));
        // A tiny minimum still reaches the cap.
        assert_eq!(backoff(40, Duration::from_nanos(1), max, 0.0), S(150));
        assert_eq!(backoff(u32::MAX, Duration::from_nanos(1), max, 1.0), S(300));
        assert_eq!(
            backoff(3, Duration::from_nanos(1), max, 1.0),
            Duration::from_nanos(4)
        );
    }
}
