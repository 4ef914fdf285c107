//! A real `redis-server` for tests: started from PATH on a free loopback
//! port with no persistence, stopped (killed) when dropped, restartable on
//! the same port. `scripts/test.sh` makes sure the binary is installed.
//!
//! Standalone (std + tokio only) so crate-level tests can include it with
//! `#[path]` as well as `tests/support/mod.rs`.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support shared by several test binaries"
)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or stopped) redis-server.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
    /// TLS only (no plain port): its certificate, key, and the CA client
    /// certificates must chain to (`tls-auth-clients yes`).
    tls: Option<[std::path::PathBuf; 3]>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl RedisServer {
    /// Starts a fresh server.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a fresh server that speaks only TLS, presenting `cert`/`key`
    /// and requiring client certificates that chain to `client_ca`.
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: &std::path::Path,
    ) -> Self {
        Self::start_with(Some([
            cert.to_path_buf(),
            key.to_path_buf(),
            client_ca.to_path_buf(),
        ]))
        .await
    }

    async fn start_with(tls: Option<[std::path::PathBuf; 3]>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "latchkey-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = Self {
            port: free_port(),
            child: None,
            dir,
            tls,
        };
        s.spawn().await;
        s
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some([cert, key, ca]) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "yes"]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it (`apt-get install redis-server`) or run scripts/test.sh, which does")
            });
        self.child = Some(child);
        for _ in 0..200 {
            let up = match self.tls {
                None => ping(self.port).await,
                // Listening is all a TLS port shows without a handshake.
                Some(_) => tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok(),
            };
            if up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Kills the server (its data is gone: it writes nothing to disk
    /// unless told to `SAVE`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the server: stopped, it still
    /// accepts connections (the kernel does) but never answers, like a
    /// Redis that hangs or a network that drops its packets.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Starts it again on the same port: empty, unless a `SAVE` left a
    /// snapshot in its directory, which it loads (a Redis that comes back
    /// with old data).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `PING` over raw RESP and waits for `+PONG`.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}
