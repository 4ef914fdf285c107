//! Per-address lockout for the management API's key check.
//!
//! After [`MAX_FAILURES`] wrong keys from one IP address, that address is
//! refused for [`LOCKOUT`] without its key even being compared, so guessing
//! the key from one host costs 30 minutes per 5 guesses. Every loopback
//! address counts as one, and an IPv6 address as its /64 (see `bucket`). A success resets the
//! address's count; failures older than [`LOCKOUT`] are forgotten, each on
//! its own (a sliding window: one wrong key every 10 minutes never locks an
//! address out).
//!
//! The check, the key comparison and the bookkeeping run under one lock
//! ([`Lockout::attempt`]), so concurrent guesses cannot slip past the limit.
//! Nothing is awaited while it is held.
//!
//! Memory is bounded: at most `capacity` addresses are tracked, and
//! entries with nothing left to remember are pruned whenever the table is
//! full. While it is still full, the addresses it does not hold share one
//! more entry (their guesses count together, and lock them out together):
//! no tracked address is ever forgotten early, so a flood from many
//! addresses cannot buy anyone fresh guesses, only lock out newcomers
//! until the flood's own failures age out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Wrong keys from one address before it is locked out.
pub const MAX_FAILURES: u32 = 5;
/// How long an address stays locked out (and how long failures are counted).
pub const LOCKOUT: Duration = Duration::from_secs(30 * 60);
/// Addresses tracked at most.
pub const CAPACITY: usize = 10_000;

/// The outcome of one authentication attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The key matched.
    Accepted,
    /// The key did not match (the failure was counted).
    Rejected,
    /// The address is locked out; the key was not compared.
    Locked {
        /// Until the lockout ends.
        retry_after: Duration,
    },
}

/// Failure counts and lockouts by IP address.
#[derive(Debug)]
pub struct Lockout {
    table: Mutex<Table>,
    max_failures: u32,
    window: Duration,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Shared by the addresses not tracked while `entries` is full.
    overflow: Entry,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    /// When the failures still counted happened (at most `max_failures`,
    /// oldest first).
    failures: VecDeque<Instant>,
    /// Locked out until then.
    locked_until: Option<Instant>,
}

impl Entry {
    /// Forgets what is older than `window` (or over) at `now`.
    fn age(&mut self, now: Instant, window: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= window)
        {
            self.failures.pop_front();
        }
        if self.locked_until.is_some_and(|u| u <= now) {
            self.locked_until = None;
        }
    }

    /// When this entry has nothing left to remember.
    fn expires(&self, window: Duration) -> Option<Instant> {
        let last = self.failures.back().map(|&at| at + window);
        last.max(self.locked_until)
    }
}

// === impl Lockout ===

impl Default for Lockout {
    fn default() -> Self {
        Self::new(MAX_FAILURES, LOCKOUT, CAPACITY)
    }
}

impl Lockout {
    /// `max_failures` wrong keys lock an address out for `window`; at most
    /// `capacity` addresses are tracked.
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            max_failures: max_failures.max(1),
            window,
            capacity: capacity.max(1),
        }
    }

    /// Runs `authenticate` for `ip` unless `ip` is locked out, and records
    /// the result: a failure counts towards the lockout, a success clears
    /// the address's count.
    pub fn attempt(
        &self,
        ip: IpAddr,
        now: Instant,
        authenticate: impl FnOnce() -> bool,
    ) -> Attempt {
        let ip = bucket(ip);
        let window = self.window;
        // A panic while holding this lock leaves plain counters behind.
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Table { entries, overflow } = &mut *table;
        if !entries.contains_key(&ip) && entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires(window).is_some_and(|x| x > now));
        }
        let tracked = entries.contains_key(&ip) || entries.len() < self.capacity;
        let known = if tracked {
            entries.get_mut(&ip)
        } else {
            Some(&mut *overflow)
        };
        if let Some(e) = known {
            e.age(now, window);
            if let Some(until) = e.locked_until {
                return Attempt::Locked {
                    retry_after: until - now,
                };
            }
        }
        if authenticate() {
            if tracked {
                entries.remove(&ip);
            }
            return Attempt::Accepted;
        }
        let e = if tracked {
            entries.entry(ip).or_default()
        } else {
            overflow
        };
        e.failures.push_back(now);
        if e.failures.len() >= self.max_failures as usize {
            e.failures.clear();
            e.locked_until = Some(now + self.window);
        }
        Attempt::Rejected
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.entries.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The address a failure counts against: every loopback address is one
/// (127.0.0.0/8 and `::1` are all this host: rotating through them, or
/// between them on a dual-stack listener, must not buy fresh guesses), and
/// an IPv6 address counts for its /64 (what one host or subscriber is
/// usually given).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !u128::from(u64::MAX),
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fail(l: &Lockout, a: IpAddr) -> Attempt {
        l.attempt(a, Instant::now(), || false)
    }

    fn ok(l: &Lockout, a: IpAddr) -> Attempt {
        l.attempt(a, Instant::now(), || true)
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_lock_for_thirty_minutes() {
        let l = Lockout::default();
        let a = ip("10.0.0.1");
        for _ in 0..5 {
            assert_eq!(fail(&l, a), Attempt::Rejected);
        }
        // Locked: even the right key is not compared.
        let mut compared = false;
        let got = l.attempt(a, Instant::now(), || {
            compared = true;
            true
        });
        assert_eq!(
            got,
            Attempt::Locked {
                retry_after: LOCKOUT
            }
        );
        assert!(!compared);

        tokio::time::advance(29 * MIN).await;
        assert_eq!(ok(&l, a), Attempt::Locked { retry_after: MIN });

        tokio::time::advance(MIN).await;
        assert_eq!(ok(&l, a), Attempt::Accepted);
        assert!(l.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_are_independent_and_success_resets() {
        let l = Lockout::default();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for _ in 0..5 {
            fail(&l, a);
        }
        assert!(matches!(fail(&l, a), Attempt::Locked { .. }));
        assert_eq!(ok(&l, b), Attempt::Accepted);

        for _ in 0..4 {
            assert_eq!(fail(&l, b), Attempt::Rejected);
        }
        assert_eq!(ok(&l, b), Attempt::Accepted);
        for _ in 0..4 {
            assert_eq!(fail(&l, b), Attempt::Rejected);
        }
        assert_eq!(
            ok(&l, b),
            Attempt::Accepted,
            "the count restarted after the success"
        );
        // IPv4-mapped IPv6 is the same address.
        assert!(matches!(
            fail(&l, ip("::ffff:10.0.0.1")),
            Attempt::Locked { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn loopback_is_one_address_and_ipv6_counts_per_64() {
        let l = Lockout::default();
        for i in 0..5 {
            // Rotating through 127.0.0.0/8 buys no fresh guesses.
            assert_eq!(
                fail(&l, ip(&format!("127.0.0.{}", 2 + i))),
                Attempt::Rejected
            );
        }
        assert!(matches!(ok(&l, ip("127.0.0.1")), Attempt::Locked { .. }));
        assert!(matches!(
            ok(&l, ip("::ffff:127.9.9.9")),
            Attempt::Locked { .. }
        ));
        // So is IPv6 loopback (a dual-stack listener sees both).
        assert!(matches!(ok(&l, ip("::1")), Attempt::Locked { .. }));

        for i in 0..5 {
            fail(&l, ip(&format!("2001:db8:1:2::{i:x}")));
        }
        assert!(matches!(
            ok(&l, ip("2001:db8:1:2:ffff::1")),
            Attempt::Locked { .. }
        ));
        assert_eq!(ok(&l, ip("2001:db8:1:3::1")), Attempt::Accepted);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_are_forgotten() {
        let l = Lockout::default();
        let a = ip("10.0.0.1");
        for _ in 0..4 {
            fail(&l, a);
        }
        tokio::time::advance(LOCKOUT).await;
        for _ in 0..4 {
            assert_eq!(fail(&l, a), Attempt::Rejected);
        }
        assert_eq!(ok(&l, a), Attempt::Accepted);
    }

    /// The window slides: one wrong key every 10 minutes never has more
    /// than 3 in any 30 minutes, and never locks the address out; 5 within
    /// 30 minutes still do, however they are spread.
    #[tokio::test(start_paused = true)]
    async fn the_window_slides_per_failure() {
        let l = Lockout::default();
        let a = ip("10.0.0.1");
        for _ in 0..12 {
            assert_eq!(fail(&l, a), Attempt::Rejected);
            tokio::time::advance(10 * MIN).await;
        }
        assert_eq!(ok(&l, a), Attempt::Accepted);
        // 5 in 29 minutes, the first long before: locked.
        for _ in 0..4 {
            assert_eq!(fail(&l, a), Attempt::Rejected);
            tokio::time::advance(7 * MIN).await;
        }
        tokio::time::advance(MIN).await;
        assert_eq!(fail(&l, a), Attempt::Rejected);
        assert!(matches!(ok(&l, a), Attempt::Locked { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let l = Lockout::new(5, LOCKOUT, 100);
        for i in 0..1000u32 {
            fail(&l, IpAddr::from(i.to_be_bytes()));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(l.len(), 100);
        // Expired entries are pruned first, before anything live is evicted.
        tokio::time::advance(LOCKOUT).await;
        let locked = ip("10.9.9.9");
        for _ in 0..5 {
            fail(&l, locked);
        }
        assert_eq!(l.len(), 1);
        // The default map holds at most CAPACITY addresses.
        let l = Lockout::default();
        for i in 0..(CAPACITY as u32 + 500) {
            fail(&l, IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.len(), CAPACITY);
    }

    /// A flood from many addresses fills the table: no tracked address is
    /// forgotten early (a locked one stays locked, one with failures keeps
    /// them), and the addresses it cannot hold share one budget of guesses.
    #[tokio::test(start_paused = true)]
    async fn a_flood_buys_no_guesses() {
        let l = Lockout::new(5, LOCKOUT, 3);
        let (locked, counting) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for _ in 0..5 {
            fail(&l, locked);
        }
        for _ in 0..4 {
            fail(&l, counting);
        }
        tokio::time::advance(MIN).await;
        // The third slot, then the newcomers, who share one entry.
        for i in 0..100u32 {
            assert_eq!(
                fail(&l, IpAddr::from((0x0b00_0000 + i).to_be_bytes())),
                if i < 6 {
                    Attempt::Rejected
                } else {
                    Attempt::Locked {
                        retry_after: LOCKOUT,
                    }
                },
                "newcomer {i}"
            );
        }
        assert_eq!(l.len(), 3);
        assert!(matches!(ok(&l, locked), Attempt::Locked { .. }));
        assert_eq!(fail(&l, counting), Attempt::Rejected);
        assert!(matches!(ok(&l, counting), Attempt::Locked { .. }));
        // A newcomer with the right key is locked out with the flood...
        assert!(matches!(ok(&l, ip("10.1.1.1")), Attempt::Locked { .. }));
        // ...until the flood's failures age out and free the table.
        tokio::time::advance(LOCKOUT).await;
        assert_eq!(ok(&l, ip("10.1.1.1")), Attempt::Accepted);
        assert_eq!(fail(&l, ip("10.1.1.2")), Attempt::Rejected);
        assert_eq!(l.len(), 1);
    }
}
