//! `latchkey_request_duration_seconds`: a Prometheus histogram kept as one
//! atomic counter per bucket, the way the Prometheus client libraries
//! (and linkerd2-proxy) keep theirs.
//!
//! Not through the `metrics` facade: `metrics-exporter-prometheus` keeps
//! every histogram sample in a queue (`AtomicBucket`) and folds the queue
//! into buckets later, because its summaries need the raw samples (its
//! maintainer's explanation: metrics-rs/metrics#467). Once per request
//! that was a queue push, a timestamp and a later fold of each sample: it
//! measured 0.8-1.4% of the proxy's CPU time per request (side by side,
//! `benches/side_by_side.sh`), a fifth of what the audit trail and the
//! metrics cost together. Here a sample is a bucket search over
//! fourteen bounds and two relaxed atomic adds.
//!
//! The text is what the exporter wrote for the same histogram (same
//! buckets, `le` values, `_sum` and `_count`), so dashboards and alerts see
//! no difference; see [`render`].

use super::{BUCKETS, REQUEST_DURATION};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

/// The help text of `latchkey_request_duration_seconds`.
const HELP: &str = "Time from a request's arrival to its response headers, by route.";

/// One route's histogram: a count per bucket (not cumulative; the last is
/// `+Inf`) and the sum of the samples in whole microseconds (a counter
/// that wraps after 584,000 years of summed request time; nanoseconds
/// would wrap after months at a thousand one-second requests a second).
#[derive(Debug, Default)]
pub(super) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// The bounds of [`BUCKETS`] in nanoseconds, and their `le` label text.
struct Bounds {
    ns: [u64; BUCKETS.len()],
    le: [String; BUCKETS.len()],
}

static BOUNDS: LazyLock<Bounds> = LazyLock::new(|| Bounds {
    // Whole nanoseconds: every bound is a whole number of microseconds.
    ns: std::array::from_fn(|i| (BUCKETS[i] * 1e9).round() as u64),
    le: std::array::from_fn(|i| BUCKETS[i].to_string()),
});

/// Every route's histogram, by route label (a route id, or `none`).
static SERIES: LazyLock<Mutex<BTreeMap<String, Arc<Histogram>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn series() -> MutexGuard<'static, BTreeMap<String, Arc<Histogram>>> {
    // Inserting an `Arc` cannot leave the map half-updated.
    SERIES.lock().unwrap_or_else(|p| p.into_inner())
}

/// The histogram of the route labelled `route` (made on first use; the
/// caller caches it, so this lock is taken once per route and thread).
pub(super) fn for_route(route: &str) -> Arc<Histogram> {
    let mut series = series();
    match series.get(route) {
        Some(h) => h.clone(),
        None => series.entry(route.to_owned()).or_default().clone(),
    }
}

impl Histogram {
    /// Counts one request that took `d`. A sample on a bound counts in
    /// that bound's bucket (`le` is "less than or equal").
    pub(super) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS
            .ns
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends this histogram's series for `route` (an escaped label value).
    fn render(&self, out: &mut String, route: &str) {
        // Each bucket is read once; the cumulative counts and `_count` are
        // made from those reads, so they always agree with each other. A
        // request counted between the reads may be in `_sum` and not yet
        // in a bucket, or the reverse, until the next scrape.
        let mut cumulative = 0_u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BOUNDS.le.get(i).map_or("+Inf", String::as_str);
            let _ = writeln!(
                out,
                "{REQUEST_DURATION}_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{REQUEST_DURATION}_sum{{route=\"{route}\"}} {sum}");
        let _ = writeln!(
            out,
            "{REQUEST_DURATION}_count{{route=\"{route}\"}} {cumulative}"
        );
    }
}

/// Appends the `latchkey_request_duration_seconds` family (help, type and
/// one histogram per route, by route id) in the Prometheus text format;
/// nothing while no request was counted.
pub(super) fn render(out: &mut String) {
    let series: Vec<(String, Arc<Histogram>)> = series()
        .iter()
        .map(|(route, h)| (escape(route), h.clone()))
        .collect();
    if series.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {REQUEST_DURATION} {HELP}");
    let _ = writeln!(out, "# TYPE {REQUEST_DURATION} histogram");
    for (route, h) in &series {
        h.render(out, route);
    }
    out.push('\n');
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
