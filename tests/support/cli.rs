//! Running the built `latchkey` binary in the CLI end-to-end tests
//! (`cli_check.rs`, `cli_run.rs`): a command with a clean environment,
//! bounded waits for the child, raw HTTP probes of its listeners, and the
//! README's example config with the canary secrets that must never be
//! printed.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// Values that must never appear in anything latchkey prints.
pub const PAYMENTS_CANARY: &str = "sk_live_payments_canary_6a1f";
pub const BILLING_CANARY: &str = "billing-token-canary-93c0";
pub const SEARCH_CANARY: &str = "search-file-key-canary-0b7d";
pub const LITERAL_CANARY: &str = "literal-canary-in-bad-config-41aa";

/// The example config from the README, verbatim.
pub const EXAMPLE: &str = include_str!("../../examples/latchkey.yaml");

pub const SEARCH_KEY_FILE: &str = "/var/run/secrets/search/api-key";

/// How long any one child process may take before the test gives up.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(20);
pub const POLL: Duration = Duration::from_millis(50);

/// Whether `ok` holds within 200 tries, `POLL` apart (10 s: a bound that
/// turns a hang into a failure, not a timing assertion).
pub fn poll_until(mut ok: impl FnMut() -> bool) -> bool {
    (0..200).any(|_| {
        let done = ok();
        if !done {
            std::thread::sleep(POLL);
        }
        done
    })
}

/// A `latchkey` command with a clean environment for the variables it reads.
pub fn latchkey() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("LATCHKEY_CONFIG")
        .env_remove("LATCHKEY_LOG_FORMAT")
        .env_remove("PAYMENTS_API_KEY")
        .env_remove("BILLING_PROXY_TOKEN")
        .stdin(Stdio::null());
    cmd
}

/// Kills the child if a test fails while it runs.
pub struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[expect(
    clippy::expect_used,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
impl Running {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }

    /// Waits for the child to exit, for at most `limit`.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut waited = Duration::ZERO;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                return Some(status);
            }
            if waited >= limit {
                return None;
            }
            std::thread::sleep(POLL);
            waited += POLL;
        }
    }

    /// Collects the output of a child that has exited.
    pub fn output(mut self) -> Output {
        let child = self.0.take().expect("child already taken");
        child.wait_with_output().expect("collect child output")
    }
}

/// Spawns `cmd` with captured output.
#[expect(
    clippy::expect_used,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
pub fn spawn(cmd: &mut Command) -> Running {
    Running(Some(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn latchkey"),
    ))
}

/// Runs `cmd` to completion (bounded) and returns its output.
pub fn run_to_end(cmd: &mut Command) -> Output {
    let mut child = spawn(cmd);
    let status = child.wait_for_exit(PROCESS_LIMIT);
    assert!(
        status.is_some(),
        "latchkey did not exit within {PROCESS_LIMIT:?}"
    );
    child.output()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[expect(
    clippy::expect_used,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
pub fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write config");
    path
}

/// `latchkey check --config PATH`.
pub fn check(path: &Path) -> Output {
    run_to_end(latchkey().arg("check").arg("--config").arg(path))
}

/// A one-shot HTTP/1.1 GET over a raw socket: `(status, body)`, or None if
/// nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
