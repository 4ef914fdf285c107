//! The files under `deploy/observability/`: the Grafana dashboard and the
//! PrometheusRule parse, have the panels and alerts on-call relies on, and
//! query only metrics latchkey exports.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns"
)]

use std::collections::BTreeSet;

use serde_json::Value;

/// Every metric latchkey exports (see `src/metrics.rs`).
const KNOWN: [&str; 14] = [
    "latchkey_requests_total",
    "latchkey_request_duration_seconds",
    "latchkey_upstream_responses_total",
    "latchkey_retry401_total",
    "latchkey_upstream_resends_total",
    "latchkey_credential_refreshes_total",
    "latchkey_credential_refresh_duration_seconds",
    "latchkey_credential_expiration_timestamp_seconds",
    "latchkey_credential_last_refresh_success_timestamp_seconds",
    "latchkey_config_reloads_total",
    "latchkey_build_info",
    "latchkey_tls_certificate_expiration_timestamp_seconds",
    "latchkey_tls_certificate_reloads_total",
    "latchkey_tls_certificate_reload_failing",
];

/// Histograms, which are queried through these series.
const HISTOGRAMS: [&str; 2] = [
    "latchkey_request_duration_seconds",
    "latchkey_credential_refresh_duration_seconds",
];

fn read(rel: &str) -> String {
    let path = format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `latchkey_[a-z0-9_]+` tokens of a query.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("latchkey_") {
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..len].to_owned());
        rest = &tail[len..];
    }
    out
}

fn is_known(name: &str) -> bool {
    KNOWN.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_prefix(h) == Some(s))
        })
}

/// Only known metrics, at least one of them, and balanced brackets and
/// quotes (a cheap syntax check).
fn check_expr(what: &str, expr: &str) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no latchkey metric in {expr:?}");
    for name in &names {
        assert!(is_known(name), "{what}: unknown metric {name} in {expr:?}");
    }
    let mut stack = Vec::new();
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = stack.pop();
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                assert_eq!(open, Some(want), "{what}: unbalanced {c:?} in {expr:?}");
            }
            _ => {}
        }
    }
    assert!(
        !in_string && stack.is_empty(),
        "{what}: unclosed in {expr:?}"
    );
}

/// The serving certificate's alerts: a renewal that does not load, and a
/// served certificate near its end; every alert's query is well formed.
#[test]
fn the_serving_certificate_has_its_alerts() {
    let alerts = alerts();
    for alert in &alerts {
        let name = alert["alert"].as_str().expect("alert name");
        check_expr(name, alert["expr"].as_str().expect("expr"));
    }
    let want = [
        (
            "LatchkeyServingCertificateReloadFailing",
            "5m",
            "max by (pod) (latchkey_tls_certificate_reload_failing) == 1",
        ),
        (
            "LatchkeyServingCertificateExpiresSoon",
            "10m",
            "latchkey_tls_certificate_expiration_timestamp_seconds) - time() < 7 * 86400",
        ),
    ];
    for (name, for_, fragment) in want {
        let alert = alerts
            .iter()
            .find(|a| a["alert"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        let expr = alert["expr"].as_str().expect("expr");
        assert!(
            expr.contains(fragment),
            "{name}: {fragment:?} not in {expr:?}"
        );
        assert!(expr.contains("by (pod)"), "{name}: per replica");
        assert_eq!(alert["for"], for_, "{name}: for");
        assert_eq!(alert["labels"]["severity"], "warning", "{name}");
        let summary = alert["annotations"]["summary"].as_str().expect("summary");
        assert!(summary.contains("{{ $labels.pod }}"), "{name}: {summary}");
        let description = alert["annotations"]["description"]
            .as_str()
            .expect("description");
        assert!(description.contains("kubectl"), "{name}: {description}");
    }
}

/// Routes answering 503 for want of a usable credential (which `/readyz`
/// does not show once the pod is ready) page.
#[test]
fn an_unavailable_credential_pages() {
    let alerts = alerts();
    let alert = alerts
        .iter()
        .find(|a| a["alert"] == "LatchkeyCredentialUnavailable")
        .expect("LatchkeyCredentialUnavailable");
    let expr = alert["expr"].as_str().expect("expr");
    check_expr("LatchkeyCredentialUnavailable", expr);
    for fragment in [
        "sum by (route)",
        // 503s only: an upstream 401 whose forced refresh failed is
        // `refresh_failed` too, with a token latchkey holds.
        "latchkey_requests_total{reason=~\"credential_unavailable|refresh_failed\",status_class=\"5xx\"}[5m]",
        "> 0",
    ] {
        assert!(expr.contains(fragment), "{fragment:?} not in {expr:?}");
    }
    assert_eq!(alert["for"], "5m");
    assert_eq!(alert["labels"]["severity"], "critical");
    let description = alert["annotations"]["description"]
        .as_str()
        .expect("description");
    for command in ["latchkey triage", "latchkey ctl credentials"] {
        assert!(description.contains(command), "lacks `{command}`");
    }
}

#[test]
fn known_metrics_are_the_ones_the_code_exports() {
    let source = read("crates/audit/src/metrics.rs");
    for name in KNOWN {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} is not in src/metrics.rs"
        );
    }
}

#[test]
fn metric_name_extraction() {
    let names = metric_names(
        "histogram_quantile(0.99, rate(latchkey_request_duration_seconds_bucket[5m])) / \
         latchkey_retry401_total",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "latchkey_request_duration_seconds_bucket",
            "latchkey_retry401_total"
        ]
    );
    assert!(is_known(names[0]) && is_known(names[1]));
    assert!(!is_known("latchkey_requests_total_bucket"));
    assert!(!is_known("latchkey_request_duration_seconds_total"));
}

#[test]
fn dashboard_parses_and_has_the_panels() {
    let dash: Value = serde_json::from_str(&read("deploy/observability/grafana-dashboard.json"))
        .expect("dashboard is JSON");
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));

    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("DS_PROMETHEUS variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let query = var["definition"]
            .as_str()
            .expect("query variable definition");
        check_expr(&format!("variable {}", var["name"]), query);
    }

    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            check_expr(title, expr);
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }
    let has = |title_part: &str, fragments: &[&str]| {
        assert!(
            exprs.iter().any(|(title, expr)| {
                title.to_lowercase().contains(title_part)
                    && fragments.iter().all(|f| expr.contains(f))
            }),
            "no panel {title_part:?} with {fragments:?}"
        );
    };
    has(
        "request rate",
        &["sum by (route)", "rate(latchkey_requests_total"],
    );
    has(
        "401 rate",
        &[
            "sum by (credential) (rate(latchkey_upstream_responses_total{",
            "status=\"401\"",
            ") / sum by (credential) (rate(latchkey_upstream_responses_total",
        ],
    );
    has("retry", &["by (outcome)", "latchkey_retry401_total"]);
    has("resent", &["by (route)", "latchkey_upstream_resends_total"]);
    has(
        "refresh success",
        &[
            "latchkey_credential_refreshes_total{",
            "result=\"ok\"",
            ") / sum by (credential)",
        ],
    );
    has(
        "expiry",
        &[
            "latchkey_credential_expiration_timestamp_seconds",
            "- time()",
        ],
    );
    has(
        "p99",
        &[
            "histogram_quantile(0.99,",
            "latchkey_request_duration_seconds_bucket",
            "le",
        ],
    );
    has("reason", &["by (reason)", "latchkey_requests_total"]);
}

fn alerts() -> Vec<Value> {
    let rule: Value = serde_saphyr::from_str(&read("deploy/observability/prometheus-rule.yaml"))
        .expect("rule file is YAML");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert!(
        rule["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    groups
        .iter()
        .flat_map(|g| {
            assert!(g["name"].as_str().is_some(), "group without a name");
            g["rules"].as_array().expect("rules").clone()
        })
        .collect()
}

/// `5m`, `1h30m`: Prometheus durations.
fn is_duration(s: &str) -> bool {
    let mut digits = false;
    let mut units = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits = true;
        } else if digits && "smhdwy".contains(c) {
            if c == 'm' && chars.peek() == Some(&'s') {
                chars.next();
            }
            digits = false;
            units += 1;
        } else {
            return false;
        }
    }
    !digits && units > 0
}

#[test]
fn rules_parse_and_have_the_alerts() {
    let alerts = alerts();
    let want = [
        (
            "LatchkeyHigh401Rate",
            "10m",
            &["status=\"401\"", "> 0.05", "by (credential)"][..],
        ),
        (
            "LatchkeyRefreshFailing",
            "5m",
            &[
                "result=\"error\"}[10m]",
                // The last success from its gauge: increase() cannot see a
                // counter series' first sample (a first success).
                "latchkey_credential_last_refresh_success_timestamp_seconds) < 600",
                "by (credential, pod)",
            ][..],
        ),
        (
            "LatchkeyCredentialExpiringSoon",
            "1m",
            &[
                "latchkey_credential_expiration_timestamp_seconds) - time() < 300",
                "latchkey_credential_last_refresh_success_timestamp_seconds) < 300",
            ][..],
        ),
    ];
    for (name, for_, fragments) in want {
        let alert = alerts
            .iter()
            .find(|a| a["alert"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        let expr = alert["expr"].as_str().expect("expr");
        check_expr(name, expr);
        for f in fragments {
            assert!(expr.contains(f), "{name}: {f:?} not in {expr:?}");
        }
        assert_eq!(alert["for"], for_, "{name}: for");
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = alert["annotations"]["summary"].as_str().expect("summary");
        let description = alert["annotations"]["description"]
            .as_str()
            .expect("description");
        assert!(
            summary.contains("{{ $labels.credential }}"),
            "{name}: summary names the credential"
        );
        for command in ["latchkey triage", "latchkey ctl credentials"] {
            assert!(
                description.contains(command),
                "{name}: description lacks `{command}`"
            );
        }
        for text in [summary, description] {
            assert_eq!(
                text.matches("{{").count(),
                text.matches("}}").count(),
                "{name}: {text}"
            );
        }
    }
    for alert in &alerts {
        let name = alert["alert"]
            .as_str()
            .or(alert["record"].as_str())
            .expect("alert or record");
        check_expr(name, alert["expr"].as_str().expect("expr"));
        for key in ["for", "keep_firing_for"] {
            if let Some(d) = alert[key].as_str() {
                assert!(is_duration(d), "{name}: {key}: {d:?}");
            }
        }
    }
    assert!(is_duration("5m") && is_duration("1h30m") && is_duration("500ms"));
    assert!(!is_duration("5") && !is_duration("m") && !is_duration("5 m"));
}
