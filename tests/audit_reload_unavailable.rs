//! `latchkey run` started with audit off and an `audit.file` it cannot
//! open (a warning, not a startup failure): a reload that turns
//! `audit.enabled` on cannot take effect, and says so. Drives the built
//! binary, since only `latchkey run` opens the audit destination.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::cli::{http_get, latchkey, loopback, poll_until, spawn, write_file};
use support::free_port;

/// One management call over a raw socket: `(status, body)`.
fn management(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Management-Key: test-key\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = r.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).expect(body))
}

/// README, "Where the records go" and "Reloading config": turning audit on
/// when its destination could not be opened at startup needs a restart, so
/// the reload lists it in `restart_required`, and the config in force (the
/// management view) keeps audit off, reload after reload.
#[test]
fn turning_audit_on_without_a_destination_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let yaml = |enabled: bool| {
        format!(
            "proxy: {{ listen: 127.0.0.1:{proxy} }}\n\
             admin: {{ listen: 127.0.0.1:{admin}, management_key: {{ value: test-key }} }}\n\
             audit: {{ enabled: {enabled}, file: {}/missing-dir/audit.log }}\n",
            dir.path().display()
        )
    };
    let path = write_file(dir.path(), "lk.yaml", &yaml(false));
    let mut child = spawn(latchkey().arg("run").arg("--config").arg(&path));
    assert!(
        poll_until(|| http_get(loopback(admin), "/healthz").is_some_and(|(s, _)| s == 200)),
        "latchkey did not start"
    );
    write_file(dir.path(), "lk.yaml", &yaml(true));
    for _ in 0..2 {
        let (status, outcome) = management(loopback(admin), "POST", "/v0/management/reload");
        assert_eq!(status, 200, "{outcome}");
        let pending = outcome["restart_required"].as_array().unwrap();
        assert!(
            pending
                .iter()
                .any(|r| r.as_str().unwrap().starts_with("audit.enabled changed")),
            "{outcome}"
        );
        let (status, view) = management(loopback(admin), "GET", "/v0/management/config");
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["audit"]["enabled"], false, "{}", view["audit"]);
    }
    let _ = child.child().kill();
}
