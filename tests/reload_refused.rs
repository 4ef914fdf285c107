//! A reload that is refused changes nothing outside the config either:
//! the credentials it built never reach a token endpoint or a store and
//! get no metrics (`CredentialSource::activate`).
//!
//! Its own test binary: the metrics recorder is per process.

mod support;

use support::gauges::{gauge, is_set, oauth};
use support::{echo_upstream, get};

const TOKEN: &str = "refused-client-token";

fn yaml(upstream: &str, a: &str, b: &str) -> String {
    support::gauges::yaml(TOKEN, upstream, a, b)
}

/// A reload that is refused changes nothing: the credentials it would
/// have added (`gauge-b`) or rebuilt (`gauge-a`, new scope) never ask the
/// token endpoint for a token, nor get metrics. The config is built whole
/// before it is refused (here for a route's missing client certificate),
/// so its sources exist for a moment; they are built inactive and only a
/// config in service starts them. Two worker threads, as a pod with 2
/// CPUs runs: a source started at build would refresh at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_asks_no_token_endpoint_for_a_token() {
    let up = echo_upstream().await;
    let ep = support::gauges::endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml(&up.url(), &oauth(&ep, "r1"), "")).expect("write");
    let running = support::gauges::start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    let auth = format!("Bearer {TOKEN}");
    let (status, _, _) = get(&format!("{base}/a/x"), &[("authorization", &auth)]).await;
    assert_eq!(status.as_u16(), 200);
    let calls = ep.calls();

    let missing = dir.path().display();
    let refused = format!(
        "{}  - id: bad\n    match: {{ path_prefix: /bad/ }}\n    upstream: https://127.0.0.1:9\n    credential: gauge-a\n    client_cert_file: {missing}/missing.crt\n    client_key_file: {missing}/missing.key\n",
        yaml(&up.url(), &oauth(&ep, "r2"), &oauth(&ep, "r1"))
    );
    std::fs::write(&path, &refused).expect("rewrite");
    for _ in 0..5 {
        let err = running.reload().await.expect_err("must be refused");
        assert!(err.to_string().contains("client_cert_file"), "{err}");
    }
    // A source started at build would have asked by now (a few ms each).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(ep.calls(), calls, "a refused reload asked for tokens");
    assert_eq!(
        gauge(audit::metrics::EXPIRATION_TIMESTAMP, "gauge-b"),
        None,
        "a credential of a refused config has metrics"
    );

    // Accepted, the same credentials start at once, before any request.
    std::fs::write(&path, yaml(&up.url(), &oauth(&ep, "r2"), &oauth(&ep, "r1"))).expect("write");
    running.reload().await.expect("accepted");
    support::with_timeout(async {
        // Both fetches (gauge-a rebuilt, gauge-b added) run in the
        // background; wait for both.
        while !is_set(gauge(audit::metrics::EXPIRATION_TIMESTAMP, "gauge-b").as_deref())
            || ep.calls() < calls + 2
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(ep.calls(), calls + 2, "gauge-a rebuilt and gauge-b added");
    running.shutdown().await;
}
