//! `/metrics` after a known mix of traffic, and the secrets canary: no
//! secret ever reaches an audit record, the metrics, an error body or the
//! debug logs.

use super::*;
use std::io;
use std::sync::Mutex;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

/// The value of `name{labels}` (all labels, any order) in Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let mut got: Vec<(&str, &str)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
            .collect();
        let mut want = labels.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        (got == want).then(|| value.parse().ok()).flatten()
    })
}

async fn scrape(p: &TestProxy) -> String {
    let (status, headers, body) = get(&format!("{}/metrics", p.admin), &[]).await;
    assert_eq!(status, 200);
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    assert!(
        ct.is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{ct:?}"
    );
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_count_a_known_mix_of_traffic() {
    let ep = endpoint(3600).await;
    let ok = echo_upstream().await;
    let deny = status_upstream(401).await;
    let routes = format!(
        "{}{}",
        route("mx-ok", &ok.url(), "    credential: mx-key\n"),
        route("mx-deny", &deny.url(), "    credential: mx-cred\n"),
    );
    let (p, sink) = start(&setup(
        "mx",
        "[mx-ok, mx-deny]",
        &oauth("mx-cred", &ep, ""),
        &routes,
    ))
    .await;
    for i in 0..3 {
        assert_eq!(get_as(&p, CLIENT_TOKEN, &format!("/mx-ok/{i}")).await, 200);
    }
    assert_eq!(get_as(&p, OTHER_TOKEN, "/mx-ok/x").await, 403);
    // 401 -> forced refresh -> replay -> 401 again.
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/mx-deny/x").await, 401);
    let deny_rec = sink.requests().pop().unwrap_or_default();
    assert_eq!(
        deny_rec["retry401"],
        json!({"attempted": true, "outcome": "still_unauthorized"})
    );
    assert_eq!(deny_rec["reason"], "upstream_denied");

    let text = scrape(&p).await;
    let n = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let ok_route = ("route", "mx-ok");
    let deny_route = ("route", "mx-deny");
    let requests = "latchkey_requests_total";
    assert_eq!(
        n(
            requests,
            &[ok_route, ("status_class", "2xx"), ("reason", "none")]
        ),
        Some(3.0)
    );
    assert_eq!(
        n(
            requests,
            &[
                ok_route,
                ("status_class", "4xx"),
                ("reason", "client_forbidden")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        n(
            requests,
            &[
                deny_route,
                ("status_class", "4xx"),
                ("reason", "upstream_denied")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        n("latchkey_request_duration_seconds_count", &[ok_route]),
        Some(4.0)
    );
    let upstream = "latchkey_upstream_responses_total";
    assert_eq!(
        n(
            upstream,
            &[ok_route, ("credential", "mx-key"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        n(
            upstream,
            &[deny_route, ("credential", "mx-cred"), ("status", "401")]
        ),
        Some(1.0)
    );
    assert_eq!(
        n(
            "latchkey_retry401_total",
            &[deny_route, ("outcome", "still_unauthorized")]
        ),
        Some(1.0)
    );
    let refreshes = "latchkey_credential_refreshes_total";
    let cred = ("credential", "mx-cred");
    assert_eq!(
        n(refreshes, &[cred, ("trigger", "expired"), ("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        n(refreshes, &[cred, ("trigger", "forced"), ("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        n(
            "latchkey_credential_refresh_duration_seconds_count",
            &[cred]
        ),
        Some(2.0)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let exp = n("latchkey_credential_expiration_timestamp_seconds", &[cred]).unwrap();
    assert!(
        (now + 3500.0..now + 3700.0).contains(&exp),
        "{exp} vs {now}"
    );
    let last = n(
        "latchkey_credential_last_refresh_success_timestamp_seconds",
        &[cred],
    )
    .unwrap();
    assert!((now - 60.0..=now + 1.0).contains(&last), "{last} vs {now}");
    assert_eq!(
        n(
            "latchkey_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for name in [
        requests,
        upstream,
        refreshes,
        "latchkey_request_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no help for {name}"
        );
    }
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let up = echo_upstream().await;
    let yaml = format!(
        "{}metrics: {{ enabled: false }}\n",
        setup("mo", "[mo]", "", &route("mo", &up.url(), ""))
    );
    let (p, sink) = start(&yaml).await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/mo/x").await, 200);
    assert_eq!(get(&format!("{}/metrics", p.admin), &[]).await.0, 404);
    // Records still flow.
    assert_eq!(sink.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// Secrets canary
// ---------------------------------------------------------------------------

const CLIENT_SECRET: &str = "canary-oauth-client-secret-7";
const REFRESH_TOKEN: &str = "canary-refresh-token-7";
const MANAGEMENT_KEY: &str = "canary-management-key-7";
const WRONG_TOKEN: &str = "canary-wrong-client-token-7";
const QUERY_SECRET: &str = "canary-query-secret-7";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

fn assert_clean(what: &str, text: &str) {
    for canary in [
        CLIENT_TOKEN,
        OTHER_TOKEN,
        UPSTREAM_KEY,
        CLIENT_SECRET,
        REFRESH_TOKEN,
        MANAGEMENT_KEY,
        WRONG_TOKEN,
        QUERY_SECRET,
    ] {
        assert!(
            !text.contains(canary),
            "{canary} leaked into {what}:\n{text}"
        );
    }
    assert!(
        !text.contains("Bearer at-"),
        "an access token leaked into {what}:\n{text}"
    );
}

/// Runs on the test's own thread (current-thread runtime), so a scoped
/// subscriber sees everything the proxy logs; audit records go through the
/// real `TracingSink` and the binary's layers.
#[tokio::test]
async fn no_secret_reaches_records_metrics_error_bodies_or_logs() {
    let (logs, records) = (Buf::default(), Buf::default());
    let subscriber = tracing_subscriber::registry().with(latchkey::cli::log_layers(
        latchkey::cli::LogFormat::Json,
        tracing_subscriber::EnvFilter::new("trace"),
        BoxMakeWriter::new(logs.clone()),
        false,
        Some(BoxMakeWriter::new(records.clone())),
    ));
    let _guard = tracing::subscriber::set_default(subscriber);

    let ep = token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        initial_refresh_token: REFRESH_TOKEN.into(),
        client_id: Some("canary-client".into()),
        client_secret: Some(CLIENT_SECRET.into()),
        ..EndpointOptions::default()
    })
    .await;
    let ok = echo_upstream().await;
    let deny = status_upstream(401).await;
    let creds = format!(
        "  - id: sc-cred
    oauth2:
      grant: refresh_token
      token_url: {}
      client_id: canary-client
      client_secret: {{ value: \"{CLIENT_SECRET}\" }}
      refresh_token: {{ value: \"{REFRESH_TOKEN}\" }}
",
        ep.url
    );
    let routes = format!(
        "{}{}{}{}",
        route(
            "sc-static",
            &ok.url(),
            "    credential: sc-key\n    inject: { query: api_key }\n"
        ),
        route("sc-oauth", &ok.url(), "    credential: sc-cred\n"),
        route("sc-deny", &deny.url(), "    credential: sc-cred\n"),
        route(
            "sc-down",
            &closed_port_url().await,
            "    credential: sc-key\n"
        ),
    );
    let yaml = setup("sc", "[\"*\"]", &creds, &routes).replace(
        "admin: { listen: 127.0.0.1:0 }",
        &format!(
            "admin: {{ listen: 127.0.0.1:0, management_key: {{ value: \"{MANAGEMENT_KEY}\" }} }}"
        ),
    );
    let p = start_proxy_with(&yaml, latchkey::StartOptions::default()).await;

    let mut bodies = String::new();
    let auth = bearer(CLIENT_TOKEN);
    let q = format!("/sc-static/x?api_key={QUERY_SECRET}&b=1");
    let oauth_paths = ["/sc-oauth/a", "/sc-deny/b", "/sc-down/c", "/nowhere"];
    for path in std::iter::once(q.as_str()).chain(oauth_paths) {
        let (_, _, body) = get(&p.url(path), &[("authorization", &auth)]).await;
        if !path.starts_with("/sc-static") && !path.starts_with("/sc-oauth") {
            bodies.push_str(&String::from_utf8_lossy(&body));
        }
    }
    for token in [WRONG_TOKEN, OTHER_TOKEN] {
        let (_, _, body) = get(&p.url("/sc-oauth/a"), &[("authorization", &bearer(token))]).await;
        bodies.push_str(&String::from_utf8_lossy(&body));
    }
    // Operator actions: a forced refresh, then one that fails after the
    // refresh token was revoked.
    let mgmt = |path: &str| format!("{}/v0/management/{path}", p.admin);
    let key = [("x-management-key", MANAGEMENT_KEY)];
    let post = |uri: String| {
        Request::post(uri)
            .header("authorization", bearer(MANAGEMENT_KEY))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    bodies.push_str(&String::from_utf8_lossy(
        &get(&mgmt("credentials"), &key).await.2,
    ));
    bodies.push_str(&String::from_utf8_lossy(
        &get(&mgmt("config"), &key).await.2,
    ));
    let (status, _, body) = send(post(mgmt("credentials/sc-cred/refresh"))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    bodies.push_str(&String::from_utf8_lossy(&body));
    ep.revoke_refresh_token();
    let (status, _, body) = send(post(mgmt("credentials/sc-cred/refresh"))).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    bodies.push_str(&String::from_utf8_lossy(&body));
    let metrics = scrape(&p).await;
    p.stop().await;

    let records = records.text();
    let lines: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds = |k: &str| lines.iter().filter(|v| v["kind"] == k).count();
    assert_eq!(kinds("request"), 7, "{records}");
    assert!(kinds("refresh") >= 4, "{records}");
    assert!(
        lines.iter().any(|v| v["error_code"] == "invalid_grant"),
        "{records}"
    );
    let logs = logs.text();
    assert!(
        logs.contains("credential refresh failed"),
        "the logs were captured"
    );
    assert!(
        !logs.contains("\"kind\":\"request\""),
        "audit records stay out of the debug logs"
    );
    assert_clean("the audit records", &records);
    assert_clean("the metrics", &metrics);
    assert_clean("the error and management bodies", &bodies);
    assert_clean("the logs", &logs);
}
