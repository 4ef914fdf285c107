//! Failed TLS handshakes on the proxy listener are counted by reason on
//! `/metrics` (`latchkey_tls_handshake_failures_total{reason}`), so an mTLS
//! rollout shows the workloads it turns away.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use support::harness::start_proxy;
use support::pki::Pki;
use support::{TestCa, echo_upstream, get};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The failures of `reason` so far (the recorder is per process: other
/// tests in this binary may add to it, never take away).
async fn failures(admin: &str, reason: &str) -> u64 {
    let (status, _, body) = get(&format!("{admin}/metrics"), &[]).await;
    assert_eq!(status, 200);
    let prefix = format!("latchkey_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    let pki = Pki::new();
    let up = echo_upstream().await;
    let proxy = start_proxy(&format!(
        "proxy:\n  listen: 127.0.0.1:0\n{}\nadmin: {{ listen: 127.0.0.1:0 }}
clients:
  - {{ id: billing, tls_san: [\"spiffe://test/billing\"], routes: [\"*\"] }}
routes:
  - {{ id: api, match: {{ path_prefix: /api/ }}, upstream: \"{}\" }}
",
        pki.mtls_yaml(""),
        up.url()
    ))
    .await;
    let at = proxy.running.as_ref().unwrap().proxy_addr;
    let admin = proxy.admin.clone();
    let reasons = [
        "no_client_certificate",
        "untrusted_client_certificate",
        "protocol_error",
    ];
    let mut before = Vec::new();
    for r in reasons {
        before.push(failures(&admin, r).await);
    }

    // No client certificate.
    pki.caller(&[b"http/1.1"], None)
        .get(at, "/api/x", &[])
        .await
        .unwrap_err();
    // A certificate from a CA the proxy does not trust.
    let forged = TestCa::new().issue_client(&["spiffe://test/billing"]);
    pki.caller(&[b"http/1.1"], Some(&forged))
        .get(at, "/api/x", &[])
        .await
        .unwrap_err();
    // Plain HTTP to the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    tcp.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = support::with_timeout(tcp.read_to_end(&mut rest)).await;
    assert_eq!(up.hit_count(), 0);

    // Counted once the proxy's side of each handshake has ended.
    support::with_timeout(async {
        loop {
            let mut now = Vec::new();
            for r in reasons {
                now.push(failures(&admin, r).await);
            }
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(proxy.stop().await);
}
