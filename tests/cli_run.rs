//! End-to-end tests of `latchkey run` and `latchkey demo`, the built binary
//! as a process: startup failures exit non-zero before binding anything,
//! a good config serves (readiness, health, the proxy listener) until
//! SIGTERM and then exits zero with its ports closed, and the demo passes its
//! own checks. No secret reaches the output.
//!
//! The command helpers and the README example config are in
//! `support/cli.rs`.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use support::cli::{
    BILLING_CANARY, EXAMPLE, PAYMENTS_CANARY, POLL, PROCESS_LIMIT, SEARCH_CANARY, SEARCH_KEY_FILE,
    http_get, latchkey, listening, loopback, poll_until, run_to_end, spawn, text, write_file,
};
use support::free_port;

/// The example config with fixed listen ports and the file credential at
/// `search_key`.
fn example_with(proxy_port: u16, admin_port: u16, search_key: &Path) -> String {
    EXAMPLE
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy_port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin_port}"))
        .replace(SEARCH_KEY_FILE, &search_key.display().to_string())
}

/// `latchkey run` with `config` must exit non-zero, saying `want` on stderr,
/// without ever listening on `port`.
#[expect(
    clippy::expect_used,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
fn assert_run_refuses(config: &Path, port: u16, want: &str) {
    let mut child = spawn(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .env("BILLING_PROXY_TOKEN", BILLING_CANARY)
            .arg("run")
            .arg("--config")
            .arg(config),
    );
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let out = child.output();
    let stderr = text(&out.stderr);
    let status = status.expect("run with a bad config did not exit");
    assert!(!status.success(), "run accepted a bad config:\n{stderr}");
    assert!(stderr.contains(want), "want {want:?} on stderr:\n{stderr}");
    assert!(!stderr.contains(PAYMENTS_CANARY) && !stderr.contains(BILLING_CANARY));
    assert!(!listening(loopback(port)), "something listens on {port}");
}

#[test]
fn run_with_a_bad_config_exits_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_file(dir.path(), "search-key", SEARCH_CANARY);

    // Invalid config: fails validation.
    let port = free_port();
    let bad =
        example_with(port, free_port(), &key).replace("routes: [payments]", "routes: [payment]");
    let path = write_file(dir.path(), "invalid.yaml", &bad);
    assert_run_refuses(
        &path,
        port,
        &format!(
            "{}: clients[0].routes[0]: no route has id \"payment\"",
            path.display()
        ),
    );

    // Valid YAML, but the CA file a route names cannot be read: the proxy
    // cannot be built, so nothing may be bound.
    let port = free_port();
    let missing_ca = dir.path().join("no-such-ca.pem");
    let bad = example_with(port, free_port(), &key).replace(
        "    strip_prefix: true\n",
        &format!(
            "    strip_prefix: true\n    ca_file: {}\n",
            missing_ca.display()
        ),
    );
    let path = write_file(dir.path(), "bad-ca.yaml", &bad);
    assert_run_refuses(
        &path,
        port,
        &format!("{}: routes[0].ca_file: cannot read CA file", path.display()),
    );

    // The proxy's TLS certificate cannot be read: refused before binding.
    let port = free_port();
    let missing_cert = dir.path().join("no-such-tls.crt");
    let bad = example_with(port, free_port(), &key).replace(
        &format!("  listen: 127.0.0.1:{port}\n"),
        &format!(
            "  listen: 127.0.0.1:{port}\n  tls: {{ cert_file: {}, key_file: {} }}\n",
            missing_cert.display(),
            missing_cert.display()
        ),
    );
    let path = write_file(dir.path(), "bad-tls.yaml", &bad);
    assert_run_refuses(
        &path,
        port,
        &format!("{}: proxy.tls.cert_file: cannot read", path.display()),
    );

    // The proxy port is taken: a clear bind error, and a non-zero exit.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let path = write_file(
        dir.path(),
        "taken.yaml",
        &example_with(taken_port, free_port(), &key),
    );
    let mut child = spawn(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .env("BILLING_PROXY_TOKEN", BILLING_CANARY)
            .arg("run")
            .arg("--config")
            .arg(&path),
    );
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let stderr = text(&child.output().stderr);
    assert!(!status.expect("run did not exit").success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{taken_port} (proxy)")),
        "{stderr}"
    );
}

/// One worker: the current-thread runtime (what a pod limited to one CPU
/// gets by default).
#[test]
fn run_serves_until_sigterm_then_exits_zero_on_one_worker() {
    serves_until_sigterm("1", "runtime=\"current-thread\"");
}

/// More than one worker: tokio's multi-thread runtime.
#[test]
fn run_serves_until_sigterm_then_exits_zero_on_two_workers() {
    serves_until_sigterm("2", "runtime=\"multi-thread\"");
}

#[test]
fn run_refuses_zero_workers() {
    let out = run_to_end(
        latchkey()
            .args(["run", "--config", "/nonexistent.yaml", "--workers", "0"])
            .env_remove("LATCHKEY_WORKERS"),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value '0' for '--workers <WORKERS>'"),
        "{stderr}"
    );
}

/// `latchkey run --workers N` with the README example: ready, proxying,
/// logs which runtime it started (`runtime`), exits 0 on SIGTERM.
#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
fn serves_until_sigterm(workers: &str, runtime: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = write_file(dir.path(), "search-key", SEARCH_CANARY);
    let (proxy_port, admin_port) = (free_port(), free_port());
    let path = write_file(
        dir.path(),
        "latchkey.yaml",
        &example_with(proxy_port, admin_port, &key),
    );
    let mut child = spawn(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .env("BILLING_PROXY_TOKEN", BILLING_CANARY)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--workers", workers]),
    );
    let (proxy, admin) = (loopback(proxy_port), loopback(admin_port));

    let mut ready = None;
    for _ in 0..200 {
        if let Some(exited) = child.child().try_wait().expect("try_wait") {
            let out = child.output();
            panic!(
                "latchkey run exited early ({exited:?}):\n{}",
                text(&out.stderr)
            );
        }
        match http_get(admin, "/readyz") {
            Some((200, body)) => {
                ready = Some(body);
                break;
            }
            _ => std::thread::sleep(POLL),
        }
    }
    let Some(body) = ready else {
        let _ = child.child().kill();
        let out = child.output();
        panic!("/readyz never answered 200:\n{}", text(&out.stderr));
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(v["ready"], true, "{body}");
    assert_eq!(v["credentials"]["payments-key"], "ok", "{body}");
    assert_eq!(v["credentials"]["search-key"], "ok", "{body}");
    assert_eq!(v["clients"]["billing"], "ok", "{body}");
    assert!(!body.contains(PAYMENTS_CANARY) && !body.contains(SEARCH_CANARY));
    assert_eq!(http_get(admin, "/healthz").map(|r| r.0), Some(200));

    // The proxy listener answers too: a protected route without a token is
    // refused by latchkey itself.
    let (status, body) = http_get(proxy, "/payments/charges").expect("proxy answers");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("client_unauthenticated"), "{body}");

    let pid = child.child().id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let out = child.output();
    let stderr = text(&out.stderr);
    let status =
        status.unwrap_or_else(|| panic!("no exit within {PROCESS_LIMIT:?} of SIGTERM:\n{stderr}"));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM:\n{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped logs:\n{stderr}"
    );
    let started = stderr
        .lines()
        .find(|l| l.contains("async runtime started"))
        .unwrap_or_else(|| panic!("no runtime line:\n{stderr}"));
    assert!(
        started.contains(runtime) && started.contains(&format!("workers={workers}")),
        "{started}"
    );
    assert!(!listening(proxy), "proxy port still open after exit");
    assert!(!listening(admin), "admin port still open after exit");
    for canary in [PAYMENTS_CANARY, BILLING_CANARY, SEARCH_CANARY] {
        assert!(!stderr.contains(canary), "secret in the logs:\n{stderr}");
        assert!(!text(&out.stdout).contains(canary));
    }
}

#[test]
fn demo_passes_its_own_checks() {
    let out = run_to_end(latchkey().arg("demo"));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// `audit.enabled` applies at a reload: a proxy started with records off
/// writes them once a SIGHUP turns them on (the destination, here
/// `audit.file`, is opened at startup either way).
#[test]
fn audit_turned_on_by_a_reload_writes_records() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_file(dir.path(), "search-key", SEARCH_CANARY);
    let log = dir.path().join("audit.jsonl");
    let (proxy_port, admin_port) = (free_port(), free_port());
    let with = |enabled: bool| {
        format!(
            "{}\naudit:\n  enabled: {enabled}\n  file: {}\n",
            example_with(proxy_port, admin_port, &key),
            log.display()
        )
    };
    let path = write_file(dir.path(), "latchkey.yaml", &with(false));
    let mut child = spawn(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .env("BILLING_PROXY_TOKEN", BILLING_CANARY)
            .arg("run")
            .arg("--config")
            .arg(&path),
    );
    let (proxy, admin) = (loopback(proxy_port), loopback(admin_port));
    let ready = poll_until(|| http_get(admin, "/readyz").is_some_and(|r| r.0 == 200));
    assert!(ready, "/readyz never answered 200");
    assert_eq!(http_get(proxy, "/payments/charges").map(|r| r.0), Some(401));
    let records = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(records(), "", "audit is off");

    write_file(dir.path(), "latchkey.yaml", &with(true));
    let pid = child.child().id().to_string();
    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    let written = poll_until(|| {
        assert_eq!(http_get(proxy, "/payments/charges").map(|r| r.0), Some(401));
        records().contains("\"client_unauthenticated\"")
    });
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let out = child.output();
    assert!(
        written,
        "no record after the reload turned audit on:\n{}",
        text(&out.stderr)
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let first = records();
    let first = first.lines().next().unwrap_or_default();
    let record: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(record["audit"]["status_code"], 401);
}

/// A second SIGTERM (or Ctrl-C) while draining stops at once, exit 1,
/// instead of waiting `proxy.drain_timeout` for a request that hangs.
#[test]
fn a_second_signal_cuts_the_drain_short() {
    // An upstream that accepts and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let (accepted, upstream_got_it) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming().flatten() {
            held.push(s);
            let _ = accepted.send(());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:{proxy_port}, drain_timeout: 10m }}\nadmin: {{ listen: 127.0.0.1:{admin_port} }}\ncredentials:\n  - {{ id: k, static: {{ env: PAYMENTS_API_KEY }} }}\nroutes:\n  - {{ id: h, match: {{ path_prefix: /h/ }}, upstream: \"http://{hang_addr}\", credential: k, public: true, timeout: 10m }}\n"
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let mut child = spawn(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .arg("run")
            .arg("--config")
            .arg(&path),
    );
    let (proxy, admin) = (loopback(proxy_port), loopback(admin_port));
    let ready = poll_until(|| http_get(admin, "/readyz").is_some_and(|r| r.0 == 200));
    assert!(ready, "/readyz never answered 200");
    // A request that hangs at the upstream holds the drain.
    std::thread::spawn(move || http_get(proxy, "/h/x"));
    let pid = child.child().id().to_string();
    let signal = |name: &str| {
        let ok = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(ok.success());
    };
    upstream_got_it
        .recv_timeout(PROCESS_LIMIT)
        .expect("the request reached the upstream");
    signal("-TERM");
    // Draining: the listener is closed.
    let draining = poll_until(|| !listening(proxy));
    assert!(draining, "the listener never closed");
    signal("-INT");
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let out = child.output();
    let stderr = text(&out.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(stderr.contains("SIGTERM received; draining"), "{stderr}");
    assert!(
        stderr.contains("SIGINT received again; stopping now"),
        "{stderr}"
    );
    assert!(!stderr.contains(PAYMENTS_CANARY));
    // The request it cut is recorded as cut by the proxy, not as a caller
    // that went away.
    let stdout = text(&out.stdout);
    let record: serde_json::Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no audit record on stdout: {stdout}"));
    assert_eq!(
        (
            &record["audit"]["action"],
            &record["audit"]["status_code"],
            &record["reason"]
        ),
        (
            &serde_json::json!("error"),
            &serde_json::json!(503),
            &serde_json::json!("shutdown")
        ),
        "{record}"
    );
}

/// With audit off, an `audit.file` that cannot be opened (a read-only
/// filesystem, a missing directory) does not stop the proxy: it is opened
/// only so that a reload could turn records on. It is said on stderr.
#[test]
fn an_unopenable_audit_file_does_not_stop_a_proxy_with_audit_off() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_file(dir.path(), "search-key", SEARCH_CANARY);
    let (proxy_port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "{}\naudit:\n  enabled: false\n  file: {}\n",
        example_with(proxy_port, admin_port, &key),
        dir.path().join("missing-dir/audit.jsonl").display()
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let mut child = spawn(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .env("BILLING_PROXY_TOKEN", BILLING_CANARY)
            .arg("run")
            .arg("--config")
            .arg(&path),
    );
    let admin = loopback(admin_port);
    let ready = poll_until(|| {
        http_get(admin, "/readyz").is_some_and(|r| r.0 == 200)
            || child.child().try_wait().unwrap().is_some()
    }) && child.child().try_wait().unwrap().is_none();
    let pid = child.child().id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let out = child.output();
    let stderr = text(&out.stderr);
    assert!(ready, "never ready:\n{stderr}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert!(
        stderr.contains("audit.file cannot be opened; audit is off"),
        "{stderr}"
    );
}

/// A file-store lock held by a process that never lets go leaves a lock
/// wait on tokio's blocking pool (trying the lock until the 30 s wait is
/// over); SIGTERM still ends latchkey promptly (the runtime does not wait
/// for that thread on the way out).
#[test]
fn a_lock_wait_in_progress_does_not_keep_latchkey_alive_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let lock = store.join("x.lock");
    std::fs::write(&lock, "").unwrap();
    // Another process holds the credential's lock for a minute.
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    // `/proc/locks`: "N: FLOCK ADVISORY WRITE <pid> ..." for a holder,
    // "N: -> FLOCK ..." for a process blocked waiting.
    let locks = || std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let holder_pid = format!(" {} ", holder.id());
    assert!(
        poll_until(|| locks()
            .lines()
            .any(|l| l.contains("FLOCK") && l.contains(&holder_pid))),
        "the holder never took the lock"
    );
    let (proxy_port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:{proxy_port} }}\nadmin: {{ listen: 127.0.0.1:{admin_port} }}\nfile_store: {{ dir: {} }}\ncredentials:\n  - id: x\n    exec: {{ command: [/bin/sh, -c, 'echo {{\"access_token\":\"t\",\"expires_in\":3600}}'] }}\n    store: file\nroutes:\n  - {{ id: r, match: {{ path_prefix: /r/ }}, upstream: \"http://127.0.0.1:9\", credential: x, public: true }}\n",
        store.display()
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let mut child = spawn(latchkey().arg("run").arg("--config").arg(&path));
    let admin = loopback(admin_port);
    // Up (not ready: the credential waits for the lock).
    let up = poll_until(|| http_get(admin, "/healthz").is_some_and(|r| r.0 == 200));
    let pid = child.child().id().to_string();
    // latchkey's refresh is in its lock wait: it holds the lock file open
    // while it tries the lock (every 20 ms, on a blocking-pool thread).
    let lock_real = std::fs::canonicalize(&lock).unwrap();
    let holds_lock_file = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == lock_real))
    };
    assert!(
        poll_until(holds_lock_file),
        "latchkey never waited for the lock:\n{}",
        locks()
    );
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait_for_exit(PROCESS_LIMIT);
    let _ = holder.kill();
    let _ = holder.wait();
    let out = child.output();
    let stderr = text(&out.stderr);
    assert!(up, "never answered /healthz:\n{stderr}");
    assert!(
        status.is_some(),
        "still running {PROCESS_LIMIT:?} after SIGTERM:\n{stderr}"
    );
}

/// h2 logs a warning for every PING acknowledgement it never asked for:
/// with latchkey's default filter, a caller sending thousands of them
/// (no token needed: they come before any request) does not flood the log.
#[test]
fn unsolicited_ping_acks_do_not_flood_the_log() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:{proxy_port} }}\nadmin: {{ listen: 127.0.0.1:{admin_port} }}\nroutes:\n  - {{ id: any, match: {{ path_prefix: / }}, upstream: \"http://127.0.0.1:9\", public: true }}\n"
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let mut child = spawn(latchkey().arg("run").arg("--config").arg(&path));
    let proxy = loopback(proxy_port);
    assert!(poll_until(|| listening(proxy)), "the proxy never listened");
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(PROCESS_LIMIT)).unwrap();
    // Preface, empty SETTINGS, 10,000 PING ACKs, then one real PING: its
    // answer comes after every frame before it was handled (and logged).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s.write_all(&b"\x00\x00\x08\x06\x01\x00\x00\x00\x00floodack".repeat(10_000))
        .unwrap();
    s.write_all(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00lastping")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(8).any(|w| w == b"lastping") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before the PING was answered");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let pid = child.child().id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = child.wait_for_exit(PROCESS_LIMIT);
    let stderr = text(&child.output().stderr);
    let warnings = stderr.matches("PING ack").count();
    assert!(
        warnings < 10,
        "{warnings} log lines from PING ACKs:\n{}",
        &stderr[..stderr.len().min(2000)]
    );
}
