//! The serving certificate on `/metrics`: when the one in use expires
//! (`latchkey_tls_certificate_expiration_timestamp_seconds`), and how the
//! loads of changed files went (`latchkey_tls_certificate_reloads_total`),
//! so a rotation that does not take (cert-manager wrote a broken pair, a
//! key that does not fit) pages before the old certificate expires. A test
//! binary of its own: the metrics are the process's, and another test's
//! listener would set the same gauge.

mod support;

use std::time::Duration;
use support::harness::start_proxy;
use support::pki::{Pki, replace};
use support::{echo_upstream, get};

fn config(tls: &str, upstream: &str) -> String {
    format!(
        r#"
proxy:
  listen: 127.0.0.1:0
{tls}
admin: {{ listen: 127.0.0.1:0 }}
clients:
  - {{ id: search, token: {{ value: search-token }}, routes: [search] }}
credentials:
  - {{ id: key, static: {{ value: upstream-key }} }}
routes:
  - {{ id: search, match: {{ path_prefix: /search/ }}, upstream: "{upstream}", credential: key }}
"#
    )
}

/// The value of the series `series` (name and labels, as rendered).
async fn metric(admin: &str, series: &str) -> Option<f64> {
    let body = get(&format!("{admin}/metrics"), &[]).await.2;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
const OK: &str = "latchkey_tls_certificate_reloads_total{result=\"ok\"}";
const ERROR: &str = "latchkey_tls_certificate_reloads_total{result=\"error\"}";

/// At startup the gauge holds the served certificate's expiry; a rotation
/// moves it and counts an `ok`; broken files count `error` on every check
/// while they stay broken, and leave the gauge on the certificate still
/// served.
#[tokio::test]
async fn the_serving_certificates_expiry_and_reloads_are_exported() {
    let pki = Pki::new();
    let (cert, key) = pki
        .server_ca
        .issue_until(&["localhost", "127.0.0.1"], Some(2090));
    replace(pki.dir.path(), &pki.cert_file, &cert);
    replace(pki.dir.path(), &pki.key_file, &key);
    let upstream = echo_upstream().await;
    let p = start_proxy(&config(
        &pki.tls_yaml(", reload_interval: 100ms"),
        &upstream.url(),
    ))
    .await;
    assert_eq!(metric(&p.admin, EXPIRES).await, Some(new_year(2090)));
    assert_eq!(metric(&p.admin, OK).await, None, "no reload yet");

    let (cert, key) = pki
        .server_ca
        .issue_until(&["localhost", "127.0.0.1"], Some(2095));
    replace(pki.dir.path(), &pki.key_file, &key);
    replace(pki.dir.path(), &pki.cert_file, &cert);
    let mut rotated = false;
    for _ in 0..100 {
        if metric(&p.admin, EXPIRES).await == Some(new_year(2095)) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the gauge never showed the rotated certificate");
    assert_eq!(metric(&p.admin, OK).await, Some(1.0));

    // A half-written certificate: every check fails and counts.
    std::fs::write(&pki.cert_file, "-----BEGIN CERTIFICATE-----\ntrunc").unwrap();
    let mut errors = 0.0;
    for _ in 0..100 {
        errors = metric(&p.admin, ERROR).await.unwrap_or(0.0);
        if errors >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors >= 2.0, "failed checks counted: {errors}");
    assert_eq!(
        metric(&p.admin, EXPIRES).await,
        Some(new_year(2095)),
        "the gauge stays on the certificate still served"
    );
    assert_eq!(metric(&p.admin, OK).await, Some(1.0));
    assert!(p.stop().await);
}
