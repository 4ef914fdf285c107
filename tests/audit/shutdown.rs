//! Requests the proxy cuts when it stops: those still waiting for their
//! upstream when the drain timeout runs out are recorded as cut by the
//! proxy (`action: error`, 503, reason `shutdown`), not as callers that
//! went away (`client_cancel`), which triage does not count as failures.

use super::*;

#[tokio::test]
async fn a_request_cut_at_the_drain_timeout_is_recorded_as_shutdown() {
    use tokio::io::AsyncReadExt as _;
    let up = slow_upstream(Duration::from_secs(5)).await;
    let yaml = setup(
        "sd",
        "[sd]",
        "",
        &route("sd", &up.url(), "    credential: sd-key\n"),
    )
    .replace(
        "proxy: { listen: 127.0.0.1:0 }",
        "proxy: { listen: 127.0.0.1:0, drain_timeout: 200ms }",
    );
    let (p, sink) = start(&yaml).await;
    let mut conn = held_at_upstream(&p, &up, "/sd/slow").await;
    assert!(!with_timeout(p.stop()).await, "the drain timed out");
    // The caller got no answer: its connection was closed.
    let mut got = Vec::new();
    let _ = with_timeout(conn.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let v = wait_for(&sink, |r| {
        r.iter().find(|v| v["kind"] == "request").cloned()
    })
    .await;
    assert_eq!(
        norm_age(v),
        expected(
            "GET",
            "/sd/slow",
            "error",
            503,
            json!({
                "client": "billing", "route": "sd", "credential": static_injected("sd-key"),
                "denial_source": "local", "reason": "shutdown",
            })
        )
    );
}
