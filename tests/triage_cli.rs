//! `latchkey triage` as an operator runs it: the built binary on a file and
//! on stdin, text and `--json`.

use std::io::Write;
use std::process::{Command, Stdio};

fn record(route: &str, status: u16, reason: &str, upstream: bool) -> String {
    serde_json::json!({
        "kind": "request", "ts": "2026-11-23T01:02:03.456Z", "request_id": "r", "client": "billing", "route": route,
        "audit": {"host": "h", "method": "GET", "path": "/x", "remote_addr": "127.0.0.1:5", "action": if upstream { "allow" } else { "error" }, "status_code": status, "duration_ms": 1.0},
        "rejected_by": serde_json::Value::Null, "upstream_status": if upstream { serde_json::json!(status) } else { serde_json::Value::Null },
        "upstream_ms": 1.0, "denial_source": if upstream { "upstream" } else { "local" },
        "credential": {"id": "pk", "generation": 1, "outcome": if upstream { "injected" } else { "unavailable" }, "token_age_s": 3, "token_ttl_s": 3000},
        "refresh": {"ran": false, "trigger": null, "result": null, "duration_ms": null, "error_code": null},
        "retry401": {"attempted": false, "outcome": null},
        "reason": reason
    })
    .to_string()
}

#[test]
fn triage_reads_a_file_and_stdin_and_skips_junk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.log");
    let lines = [
        record("payments", 403, "upstream_denied", true),
        record("payments", 403, "upstream_denied", true),
        "2026-11-23T01:02:03Z INFO not an audit record".to_string(),
        record("crm", 503, "credential_unavailable", false),
    ];
    std::fs::write(&log, lines.join("\n")).expect("write log");

    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["triage", "--json"])
        .arg(&log)
        .output()
        .expect("run triage");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["totals"]["skipped_lines"], 1, "{report}");
    assert_eq!(report["totals"]["request_records"], 3, "{report}");
    let summary = report["findings"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(summary.contains("2 upstream denial"), "{summary}");
    assert!(summary.contains("1 local credential failure"), "{summary}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["triage", "--route", "payments", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn triage");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.join("\n").as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("triage output");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("route payments: 2 x 403 upstream_denied"),
        "{text}"
    );
    assert!(
        !text.contains("crm"),
        "the route filter leaked other routes: {text}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["triage", "/nonexistent/audit.log"])
        .output()
        .expect("run triage");
    assert_eq!(out.status.code(), Some(2));
}
