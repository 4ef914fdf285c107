//! The serving certificate on `/metrics`: when the one in use expires
//! (`latchkey_tls_certificate_expiration_timestamp_seconds`), whether
//! changed files fail to load (`latchkey_tls_certificate_reload_failing`),
//! and how the loads went (`latchkey_tls_certificate_reloads_total`), so a
//! rotation that does not take (cert-manager wrote a broken pair, a key
//! that does not fit) pages before the old certificate expires. Also when
//! metrics are turned on by a reload, after the certificate was loaded. A
//! test binary of its own: the metrics are the process's, and another
//! test's listener would set the same gauges.

mod support;

use std::time::Duration;
use support::pki::{Pki, replace};
use support::{echo_upstream, get};

fn config(tls: &str, upstream: &str, metrics: bool) -> String {
    format!(
        r#"
proxy:
  listen: 127.0.0.1:0
{tls}
admin: {{ listen: 127.0.0.1:0 }}
metrics: {{ enabled: {metrics} }}
clients:
  - {{ id: search, token: {{ value: search-token }}, routes: [search] }}
credentials:
  - {{ id: key, static: {{ value: upstream-key }} }}
routes:
  - {{ id: search, match: {{ path_prefix: /search/ }}, upstream: "{upstream}", credential: key }}
"#
    )
}

/// The value of the series `series` (name and labels, as rendered), or
/// `None` when `/metrics` is off or lacks it.
async fn metric(admin: &str, series: &str) -> Option<f64> {
    let (status, _, body) = get(&format!("{admin}/metrics"), &[]).await;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `series` until `want(value)`, for at most 5 s.
async fn until(admin: &str, series: &str, want: impl Fn(Option<f64>) -> bool) -> Option<f64> {
    let mut value = None;
    for _ in 0..100 {
        value = metric(admin, series).await;
        if want(value) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    value
}

/// Unix time of January 1st of `year` (2090 or 2095), 00:00 UTC.
fn new_year(year: i32) -> f64 {
    match year {
        2090 => 3_786_912_000.0,
        2095 => 3_944_678_400.0,
        _ => unreachable!("add the year"),
    }
}

const EXPIRES: &str = "latchkey_tls_certificate_expiration_timestamp_seconds";
const FAILING: &str = "latchkey_tls_certificate_reload_failing";
const OK: &str = "latchkey_tls_certificate_reloads_total{result=\"ok\"}";
const ERROR: &str = "latchkey_tls_certificate_reloads_total{result=\"error\"}";

fn serve_until(pki: &Pki, year: i32) {
    let (cert, key) = pki
        .server_ca
        .issue_until(&["localhost", "127.0.0.1"], Some(year));
    replace(pki.dir.path(), &pki.key_file, &key);
    replace(pki.dir.path(), &pki.cert_file, &cert);
}

/// Metrics off at startup, then on by a reload: the certificate's gauges
/// are there at once. A rotation moves the expiry and counts an `ok`;
/// broken files count `error` on every check and hold `reload_failing` at
/// 1 while the gauge stays on the certificate still served; fixed files
/// bring it back to 0.
#[tokio::test]
async fn the_serving_certificates_expiry_and_reloads_are_exported() {
    let pki = Pki::new();
    serve_until(&pki, 2090);
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    let tls = pki.tls_yaml(", reload_interval: 100ms");
    std::fs::write(&path, config(&tls, &upstream.url(), false)).expect("write");
    let running = latchkey::start_with(
        latchkey::Config::load(&path).expect("config"),
        &path.display().to_string(),
        latchkey::StartOptions {
            config_path: Some(path.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("start");
    let admin = format!("http://{}", running.admin_addr.expect("admin"));
    assert_eq!(metric(&admin, EXPIRES).await, None, "metrics are off");

    std::fs::write(&path, config(&tls, &upstream.url(), true)).expect("rewrite");
    running.reload().await.expect("reload");
    assert_eq!(metric(&admin, EXPIRES).await, Some(new_year(2090)));
    assert_eq!(metric(&admin, FAILING).await, Some(0.0));
    assert_eq!(metric(&admin, OK).await, Some(0.0), "no reload yet");

    serve_until(&pki, 2095);
    let rotated = until(&admin, EXPIRES, |v| v == Some(new_year(2095))).await;
    assert_eq!(rotated, Some(new_year(2095)), "the rotated certificate");
    assert_eq!(metric(&admin, OK).await, Some(1.0));

    // A half-written certificate: every check fails and counts.
    std::fs::write(&pki.cert_file, "-----BEGIN CERTIFICATE-----\ntrunc").expect("write");
    let errors = until(&admin, ERROR, |v| v.is_some_and(|v| v >= 2.0)).await;
    assert!(
        errors.is_some_and(|v| v >= 2.0),
        "failed checks counted: {errors:?}"
    );
    assert_eq!(metric(&admin, FAILING).await, Some(1.0));
    assert_eq!(
        metric(&admin, EXPIRES).await,
        Some(new_year(2095)),
        "the gauge stays on the certificate still served"
    );

    // Fixed: loaded, and no longer failing.
    serve_until(&pki, 2090);
    let fixed = until(&admin, FAILING, |v| v == Some(0.0)).await;
    assert_eq!(fixed, Some(0.0));
    assert_eq!(metric(&admin, EXPIRES).await, Some(new_year(2090)));
    assert_eq!(metric(&admin, OK).await, Some(2.0));
    assert!(running.shutdown().await);
}
