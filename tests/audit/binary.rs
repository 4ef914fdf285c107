//! The `latchkey run` binary's two output streams: audit records as pure
//! JSON lines (stdout by default, or `audit.file`, appended, mode 0640),
//! debug logs on stderr without a single record.

use super::*;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Kills the child when dropped (also when the test fails).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `latchkey run` on `yaml` (with `PORT` replaced by a free port)
/// and waits until it answers; returns the process and the proxy address.
fn run(dir: &Path, name: &str, yaml: &str) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let path = dir.join(name);
    std::fs::write(&path, yaml.replace("PORT", &addr.port().to_string())).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("LATCHKEY_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let step = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    while TcpStream::connect(addr).is_err() {
        assert!(waited < TEST_TIMEOUT, "latchkey did not start");
        std::thread::sleep(step);
        waited += step;
    }
    (proc, addr)
}

/// `GET path` over a fresh connection; returns the status.
fn hit(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Stops the process as Kubernetes does (SIGTERM: drain, flush the audit
/// trail, exit) and returns (stdout, stderr).
fn finish(mut p: Proc) -> (String, String) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status();
    let _ = p.0.wait();
    let (mut out, mut err) = (String::new(), String::new());
    p.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (out, err)
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

const YAML: &str = "proxy: { listen: 127.0.0.1:PORT }
routes:
  - id: bin-dead
    match: { path_prefix: /dead/ }
    upstream: http://127.0.0.1:9
    public: true
";

#[test]
fn records_go_to_stdout_as_json_lines_and_never_into_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (p, addr) = run(dir.path(), "a.yaml", YAML);
    assert_eq!(hit(addr, "/dead/x?secret=q"), 502);
    assert_eq!(hit(addr, "/nowhere"), 404);
    let (out, err) = finish(p);
    let recs = records(&out);
    let reasons: Vec<&Value> = recs.iter().map(|r| &r["reason"]).collect();
    assert_eq!(
        reasons,
        [&json!("upstream_unreachable"), &json!("no_route")]
    );
    assert!(!out.contains("secret=q"));
    assert!(err.contains("latchkey serving"), "{err}");
    assert!(!err.contains("\"kind\""), "{err}");
}

#[cfg(unix)]
#[test]
fn audit_file_is_appended_and_created_0640() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let yaml = format!("{YAML}audit: {{ file: {} }}\n", file.display());
    for (i, expected) in [(0, 1), (1, 2)] {
        let (p, addr) = run(dir.path(), &format!("{i}.yaml"), &yaml);
        assert_eq!(hit(addr, &format!("/dead/{i}")), 502);
        let (out, _) = finish(p);
        assert_eq!(out, "", "records go to the file only");
        let recs = records(&std::fs::read_to_string(&file).unwrap());
        assert_eq!(recs.len(), expected, "appended, not truncated");
        assert_eq!(recs[i]["audit"]["path"], format!("/dead/{i}"));
    }
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "mode {mode:o}");
}
