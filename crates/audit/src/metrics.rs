//! Prometheus metrics, through the `metrics` facade.
//!
//! [`install`] puts a Prometheus recorder in place once per process and
//! returns the handle that renders the text format (the admin listener's
//! `/metrics`). Until it is called every update below is a no-op, so the
//! layers can always call them.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `latchkey_requests_total` | counter | `route`, `status_class`, `reason` |
//! | `latchkey_request_duration_seconds` | histogram | `route` |
//! | `latchkey_upstream_responses_total` | counter | `route`, `credential`, `status` |
//! | `latchkey_retry401_total` | counter | `route`, `outcome` |
//! | `latchkey_upstream_resends_total` | counter | `route` |
//! | `latchkey_credential_refreshes_total` | counter | `credential`, `trigger`, `result` |
//! | `latchkey_credential_refresh_duration_seconds` | histogram | `credential` |
//! | `latchkey_credential_expiration_timestamp_seconds` | gauge | `credential` |
//! | `latchkey_credential_last_refresh_success_timestamp_seconds` | gauge | `credential` |
//! | `latchkey_config_reloads_total` | counter | `result` |
//! | `latchkey_build_info` | gauge (1) | `version` |
//! | `latchkey_tls_handshake_failures_total` | counter | `reason` |
//!
//! `latchkey_request_duration_seconds` is kept by latchkey itself (one
//! atomic counter per bucket, [`histogram`]) and rendered after the
//! recorder's text; everything else goes through the `metrics` facade.
//!
//! Labels come only from config ids (routes, credentials) and closed sets:
//! `route` is `none` when no route matched, `reason` is `none` when the
//! record's reason is null, `credential` is `none` for routes without one,
//! `status` is the upstream's status code. A caller that went away counts
//! as `status_class="4xx", reason="none"` (status 499, no reason), the only
//! 4xx without a reason. Durations are the time to the response headers.

use crate::record::RefreshRecord;
use crate::sink::AuditSink;
use metrics::{SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use proxy_core::facts::{RefreshEvent, RefreshObserver};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

mod histogram;
mod request;

pub use request::record_request;

/// `latchkey_requests_total{route,status_class,reason}`
pub const REQUESTS_TOTAL: &str = "latchkey_requests_total";
/// `latchkey_request_duration_seconds{route}`
pub const REQUEST_DURATION: &str = "latchkey_request_duration_seconds";
/// `latchkey_upstream_responses_total{route,credential,status}`
pub const UPSTREAM_RESPONSES_TOTAL: &str = "latchkey_upstream_responses_total";
/// `latchkey_retry401_total{route,outcome}`
pub const RETRY401_TOTAL: &str = "latchkey_retry401_total";
/// `latchkey_upstream_resends_total{route}`
pub const UPSTREAM_RESENDS_TOTAL: &str = "latchkey_upstream_resends_total";
/// `latchkey_credential_refreshes_total{credential,trigger,result}`
pub const REFRESHES_TOTAL: &str = "latchkey_credential_refreshes_total";
/// `latchkey_credential_refresh_duration_seconds{credential}`
pub const REFRESH_DURATION: &str = "latchkey_credential_refresh_duration_seconds";
/// `latchkey_credential_expiration_timestamp_seconds{credential}`
pub const EXPIRATION_TIMESTAMP: &str = "latchkey_credential_expiration_timestamp_seconds";
/// `latchkey_credential_last_refresh_success_timestamp_seconds{credential}`
pub const LAST_REFRESH_SUCCESS: &str = "latchkey_credential_last_refresh_success_timestamp_seconds";
/// `latchkey_config_reloads_total{result}`
pub const CONFIG_RELOADS_TOTAL: &str = "latchkey_config_reloads_total";
/// `latchkey_build_info{version}`
pub const BUILD_INFO: &str = "latchkey_build_info";
/// `latchkey_tls_handshake_failures_total{reason}`: failed TLS handshakes
/// on the proxy listener, by a closed set of reasons.
pub const TLS_HANDSHAKE_FAILURES: &str = "latchkey_tls_handshake_failures_total";
/// Gauge: 1 when a shared credential store (file, redis) answered its last
/// operation, 0 when it did not.
pub const STORE_UP: &str = "latchkey_store_up";
/// Gauge: Unix time at which the proxy listener's serving certificate (the
/// one in use) expires.
pub const TLS_CERT_EXPIRATION: &str = "latchkey_tls_certificate_expiration_timestamp_seconds";
/// `latchkey_tls_certificate_reloads_total{result}`: attempts to load
/// changed serving certificate files, `ok` (now served) or `error` (the
/// previous pair is still served; counted on every check while the files
/// stay broken).
pub const TLS_CERT_RELOADS: &str = "latchkey_tls_certificate_reloads_total";
/// Gauge: 1 while the serving certificate files have changed but do not
/// load (the previous certificate is still served), else 0.
pub const TLS_CERT_RELOAD_FAILING: &str = "latchkey_tls_certificate_reload_failing";

/// Histogram buckets, seconds: 1 ms to 30 s (the default route timeout).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's histogram samples (refresh durations; request
/// durations are kept apart, see [`histogram`]) are folded into buckets
/// when nobody scrapes. The exporter keeps every sample until then.
const UPKEEP: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();

/// Renders every latchkey metric in the Prometheus text format (what the
/// admin listener's `/metrics` serves). Cheap to clone.
#[derive(Clone)]
pub struct MetricsHandle {
    recorder: PrometheusHandle,
}

impl MetricsHandle {
    /// The text format: the recorder's metrics, then
    /// `latchkey_request_duration_seconds`.
    pub fn render(&self) -> String {
        let mut text = self.recorder.render();
        histogram::render(&mut text);
        text
    }
}

impl fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

/// Installs the Prometheus recorder (first call only; later calls return
/// the same handle), describes every metric and sets `latchkey_build_info`.
///
/// If another recorder was installed first, the handle renders only the
/// descriptions; this is logged.
pub fn install() -> MetricsHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REFRESH_DURATION.to_owned()), BUCKETS)
                // Only fails for empty buckets, which BUCKETS is not.
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Both results exist from the start, at 0: `increase()` cannot
            // see a series' first sample, so a pod's first refused reload
            // would otherwise never show.
            for result in ["ok", "error"] {
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("latchkey-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded at scrape time only");
            }
            MetricsHandle { recorder: handle }
        })
        .clone()
}

/// The handle, if [`install`] ran.
pub fn handle() -> Option<MetricsHandle> {
    HANDLE.get().cloned()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests by route, status class (1xx..5xx) and audit reason (none when the request succeeded)."
    );
    describe_counter!(
        UPSTREAM_RESPONSES_TOTAL,
        Unit::Count,
        "Responses received from upstreams (last attempt per request), by route, credential and status."
    );
    describe_counter!(
        RETRY401_TOTAL,
        Unit::Count,
        "Upstream credential rejections handled by the 401 retry, by route and outcome."
    );
    describe_counter!(
        UPSTREAM_RESENDS_TOTAL,
        Unit::Count,
        "Idempotent requests without a body sent again on a new connection after a reused one closed under them, and answered, by route."
    );
    describe_counter!(
        REFRESHES_TOTAL,
        Unit::Count,
        "Credential refresh attempts by credential, trigger (proactive, expired, forced, manual) and result (ok, error)."
    );
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "Time taken by credential refresh attempts."
    );
    describe_gauge!(
        EXPIRATION_TIMESTAMP,
        Unit::Seconds,
        "Unix time at which the credential value now served expires."
    );
    describe_gauge!(
        LAST_REFRESH_SUCCESS,
        Unit::Seconds,
        "Unix time of the credential's last successful refresh."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Config reloads by result (ok, error)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which latchkey is running."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        Unit::Count,
        "Failed TLS handshakes on the proxy listener, by reason (no_client_certificate, untrusted_client_certificate, ...)."
    );
    describe_gauge!(
        TLS_CERT_EXPIRATION,
        Unit::Seconds,
        "Unix time at which the proxy listener's serving certificate now in use expires."
    );
    describe_gauge!(
        TLS_CERT_RELOAD_FAILING,
        "1 while the serving certificate files have changed but do not load (the previous certificate is still served), else 0."
    );
    describe_counter!(
        TLS_CERT_RELOADS,
        Unit::Count,
        "Loads of changed serving certificate files by result (ok: now served; error: the previous certificate is still served, counted on every check while the files stay broken)."
    );
    describe_gauge!(
        STORE_UP,
        "1 when the shared credential store answered its last operation, 0 when it did not (by store)."
    );
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn label(v: Option<&Arc<str>>) -> SharedString {
    v.map_or(SharedString::const_str("none"), |v| {
        SharedString::from(v.clone())
    })
}

/// Counts one refresh attempt that ended at `now`.
pub fn record_refresh(event: &RefreshEvent, now: SystemTime) {
    let credential = SharedString::from(event.credential.clone());
    metrics::counter!(
        REFRESHES_TOTAL,
        "credential" => credential.clone(),
        "trigger" => event.trigger,
        "result" => if event.ok { "ok" } else { "error" },
    )
    .increment(1);
    metrics::histogram!(REFRESH_DURATION, "credential" => credential.clone())
        .record(event.duration.as_secs_f64());
    // A retired source's token is not the credential's any more: the
    // gauges belong to the source configured now, or, for a removed
    // credential, stay NaN.
    if event.ok && !event.retired {
        // A token without an expiry: NaN, not the last token's expiry,
        // which would look like a credential about to expire for ever.
        let expires = event.expires_at.map_or(f64::NAN, unix_seconds);
        metrics::gauge!(EXPIRATION_TIMESTAMP, "credential" => credential.clone()).set(expires);
        metrics::gauge!(LAST_REFRESH_SUCCESS, "credential" => credential).set(unix_seconds(now));
    }
}

/// A reload removed credential `id`: its timestamp gauges become NaN (the
/// exporter cannot drop a series), so expiry alerts and panels, which
/// compare them with the time, see nothing rather than a token that looks
/// expired for ever.
pub fn forget_credential(id: &str) {
    let credential = SharedString::from(id.to_owned());
    metrics::gauge!(EXPIRATION_TIMESTAMP, "credential" => credential.clone()).set(f64::NAN);
    metrics::gauge!(LAST_REFRESH_SUCCESS, "credential" => credential).set(f64::NAN);
}

/// Sets a credential's gauges from the state it holds, when metrics start
/// while it runs (a reload turned them on): its token's expiry (NaN for
/// a token without one) and, if known, its last successful refresh.
pub fn record_credential_state(
    id: &str,
    expires_at: Option<SystemTime>,
    last_success: Option<SystemTime>,
) {
    let credential = SharedString::from(id.to_owned());
    let expires = expires_at.map_or(f64::NAN, unix_seconds);
    metrics::gauge!(EXPIRATION_TIMESTAMP, "credential" => credential.clone()).set(expires);
    if let Some(at) = last_success {
        metrics::gauge!(LAST_REFRESH_SUCCESS, "credential" => credential).set(unix_seconds(at));
    }
}

/// Counts one failed TLS handshake on the proxy listener; `reason` is from
/// a closed set (the listener's).
pub fn record_tls_handshake_failure(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// The serving certificate's state, kept so that metrics turned on later
/// (by a reload) show it at once rather than at its next change.
#[derive(Clone, Copy)]
struct TlsCertificate {
    not_after: Option<SystemTime>,
    failing: bool,
}

static TLS_CERTIFICATE: std::sync::Mutex<Option<TlsCertificate>> = std::sync::Mutex::new(None);

fn tls_certificate(update: impl FnOnce(&mut TlsCertificate)) -> TlsCertificate {
    let mut slot = TLS_CERTIFICATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = slot.get_or_insert(TlsCertificate {
        not_after: None,
        failing: false,
    });
    update(state);
    *state
}

fn publish_tls_certificate(state: TlsCertificate) {
    metrics::gauge!(TLS_CERT_EXPIRATION).set(state.not_after.map_or(f64::NAN, unix_seconds));
    metrics::gauge!(TLS_CERT_RELOAD_FAILING).set(if state.failing { 1.0 } else { 0.0 });
    // Both results exist from the start, at 0 (`increase()` cannot see a
    // series' first sample).
    for result in ["ok", "error"] {
        metrics::counter!(TLS_CERT_RELOADS, "result" => result).increment(0);
    }
}

/// The serving certificate now in use expires at `not_after` (`None`: not
/// known), and the files on disk are what it was loaded from.
pub fn record_tls_certificate(not_after: Option<SystemTime>) {
    publish_tls_certificate(tls_certificate(|s| {
        s.not_after = not_after;
        s.failing = false;
    }));
}

/// Counts one load of changed serving certificate files; a failed one
/// leaves `latchkey_tls_certificate_reload_failing` at 1 until the files
/// load (or go back to what is served).
pub fn record_tls_certificate_reload(ok: bool) {
    metrics::counter!(TLS_CERT_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
    if !ok {
        publish_tls_certificate(tls_certificate(|s| s.failing = true));
    }
}

/// The files are what is served again (reverted) without a reload.
pub fn record_tls_certificate_unchanged() {
    let state = tls_certificate(|s| s.failing = false);
    metrics::gauge!(TLS_CERT_RELOAD_FAILING).set(if state.failing { 1.0 } else { 0.0 });
}

/// Publishes the serving certificate's gauges again (metrics were turned
/// on by a reload); nothing without a TLS listener.
pub fn republish_tls_certificate() {
    let state = *TLS_CERTIFICATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(state) = state {
        publish_tls_certificate(state);
    }
}

/// Counts one config reload.
pub fn record_config_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Turns refresh events into refresh records and metrics: hand it to every
/// refreshing credential source.
#[derive(Clone, Debug)]
pub struct AuditObserver {
    sink: Option<Arc<dyn AuditSink>>,
    metrics: bool,
}

impl AuditObserver {
    /// Writes records to `sink` (none: no records) and updates the refresh
    /// metrics if `metrics`.
    pub fn new(sink: Option<Arc<dyn AuditSink>>, metrics: bool) -> Self {
        Self { sink, metrics }
    }

    /// Whether it updates the refresh metrics.
    pub fn metrics(&self) -> bool {
        self.metrics
    }
}

impl RefreshObserver for AuditObserver {
    fn on_refresh(&self, event: &RefreshEvent) {
        let now = SystemTime::now();
        if let Some(sink) = &self.sink {
            sink.refresh(&RefreshRecord::from_event(event, now));
        }
        if self.metrics {
            record_refresh(event, now);
        }
    }

    /// The expiry gauge follows the token served: left at the old token's
    /// expiry, the expiry alert would fire on a credential holding a fresh
    /// token. Not a refresh: no counter moves, no record is written.
    fn on_adopted(&self, credential: &str, expires_at: Option<SystemTime>) {
        if self.metrics {
            record_credential_state(credential, expires_at, None);
        }
    }
}

#[cfg(test)]
mod tests;

/// Sets `latchkey_store_up{store}` from the stores' last known health (the
/// admin listener calls this before rendering, so the gauge is as fresh as
/// the last store operation).
pub fn record_store_health<'a>(stores: impl IntoIterator<Item = (&'a str, bool)>) {
    let mut seen: HashMap<&str, bool> = HashMap::new();
    for (store, up) in stores {
        let e = seen.entry(store).or_insert(true);
        *e &= up;
    }
    for (store, up) in seen {
        metrics::gauge!(STORE_UP, "store" => store.to_string()).set(if up { 1.0 } else { 0.0 });
    }
}

/// A reload left no credential on shared store `store` (`file`, `redis`):
/// its `latchkey_store_up` becomes NaN (the exporter cannot drop a series),
/// so a "store down" alert stops firing for a store nothing uses, and
/// `/metrics` agrees with `/readyz`, which no longer names it.
pub fn forget_store(store: &str) {
    metrics::gauge!(STORE_UP, "store" => store.to_string()).set(f64::NAN);
}
