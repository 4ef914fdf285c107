//! A reload that turns `audit.enabled` and `metrics.enabled` on or off
//! applies to the refresh records and refresh metrics of every credential,
//! also those the reload kept (same config: same source, same token): they
//! report to the audit settings in service, not to those they were first
//! built under. Before, a kept credential wrote no refresh record and set
//! no refresh metric after metrics were turned on (its alerts could never
//! fire), and kept writing records after audit was turned off.
//!
//! Its own test binary: the metrics recorder is per process.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::sync::Arc;
use support::gauges::{gauge, is_set, oauth};
use support::{echo_upstream, get, send};

const TOKEN: &str = "toggle-client-token";
const M: &str = "/v0/management";

fn yaml(upstream: &str, ep: &support::token_endpoint::TokenEndpoint, on: bool) -> String {
    let mut out = support::gauges::yaml(TOKEN, upstream, &oauth(ep, "r1"), "");
    out.push_str(&format!(
        "audit: {{ enabled: {on} }}\nmetrics: {{ enabled: {on} }}\n"
    ));
    out
}

/// A manual refresh of `gauge-a` through the management API.
async fn refresh(admin: &str) {
    let req = Request::post(format!("{admin}{M}/credentials/gauge-a/refresh"))
        .header("authorization", "Bearer mgmt-key")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
}

fn manual_refreshes_counted() -> Option<String> {
    let line = "latchkey_credential_refreshes_total{credential=\"gauge-a\",trigger=\"manual\",result=\"ok\"} ";
    audit::metrics::handle()?
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map(str::to_owned)
}

#[tokio::test]
async fn turning_audit_and_metrics_on_by_reload_covers_kept_credentials() {
    let up = echo_upstream().await;
    let ep = support::gauges::endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml(&up.url(), &ep, false)).expect("write");
    let sink = Arc::new(audit::MemorySink::new());
    let config = latchkey::Config::load(&path).expect("valid config");
    let options = latchkey::StartOptions {
        config_path: Some(path.clone()),
        audit_sink: Some(sink.clone()),
        ..Default::default()
    };
    let running = latchkey::start_with(config, &path.display().to_string(), options)
        .await
        .expect("start");
    let base = format!("http://{}", running.proxy_addr);
    let admin = format!("http://{}", running.admin_addr.expect("admin"));
    let auth = format!("Bearer {TOKEN}");
    let (status, _, _) = get(&format!("{base}/a/x"), &[("authorization", &auth)]).await;
    assert_eq!(status.as_u16(), 200);
    refresh(&admin).await;
    assert!(sink.records().is_empty(), "audit off: no records");

    // Both on; the credential's config is the same, so the reload keeps
    // its source (and its token).
    std::fs::write(&path, yaml(&up.url(), &ep, true)).expect("rewrite");
    let outcome = running.reload().await.expect("reload");
    assert_eq!(outcome.credentials_kept, ["gauge-a"]);
    // Its gauges are set at once from the token it holds, not only at its
    // next refresh (an hour away): the expiry alert can see it.
    for name in [
        audit::metrics::EXPIRATION_TIMESTAMP,
        audit::metrics::LAST_REFRESH_SUCCESS,
    ] {
        assert!(is_set(gauge(name, "gauge-a").as_deref()), "{name}");
    }
    refresh(&admin).await;
    let refreshes = sink.refreshes();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert_eq!(refreshes[0]["credential"], "gauge-a");
    assert_eq!(refreshes[0]["trigger"], "manual");
    assert_eq!(manual_refreshes_counted().as_deref(), Some("1"));

    // Both off again: the kept credential stops writing records.
    std::fs::write(&path, yaml(&up.url(), &ep, false)).expect("rewrite");
    let outcome = running.reload().await.expect("reload");
    assert_eq!(outcome.credentials_kept, ["gauge-a"]);
    refresh(&admin).await;
    assert_eq!(sink.refreshes().len(), 1, "audit off: no new record");
    assert_eq!(
        manual_refreshes_counted().as_deref(),
        Some("1"),
        "metrics off: not counted"
    );
    assert!(running.shutdown().await);
}

/// An embedder that builds a proxy itself and puts it in service with
/// `put_in_service` gets refresh records in its audit sink.
#[tokio::test]
async fn an_embedded_proxy_put_in_service_reports_refreshes() {
    let ep = support::gauges::endpoint().await;
    let up = echo_upstream().await;
    let mut yaml = support::gauges::yaml("tok", &up.url(), &oauth(&ep, "s"), "");
    yaml.push_str("audit: { enabled: true }\nmetrics: { enabled: false }\n");
    let config = latchkey::Config::from_yaml(&yaml, "lk.yaml").unwrap();
    let sink = Arc::new(audit::MemorySink::new());
    let options = latchkey::StartOptions {
        audit_sink: Some(sink.clone()),
        ..Default::default()
    };
    let kept = latchkey::build::Kept::default();
    let proxy =
        latchkey::build::build_proxy_with(config, "lk.yaml", &options, None, &kept).unwrap();
    latchkey::build::put_in_service(&proxy, &options, &kept);
    let source = proxy
        .credentials
        .iter()
        .find(|c| c.id() == "gauge-a")
        .unwrap()
        .clone();
    source.refresh_now().await.unwrap();
    assert!(
        sink.refreshes().iter().any(|r| r["trigger"] == "manual"),
        "{:?}",
        sink.refreshes()
    );
}
