//! "Explain every failure": a WebSocket handshake refused with 401 is not
//! replayed because it is an upgrade, and its log line says so, instead of
//! sending the SRE to `max_replay_body`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::sync::{Arc, Mutex};

use http::StatusCode;
use support::harness::start_proxy;
use support::retry::{self, auth_upstream, endpoint, warm_up};
use support::with_timeout;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The log lines the test's subscriber writes.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

#[tokio::test]
async fn a_websocket_401_is_explained_as_an_upgrade_not_as_its_body() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let endpoint = endpoint().await;
    let up = auth_upstream(endpoint.clone(), StatusCode::UNAUTHORIZED).await;
    let yaml = retry::config(
        &endpoint,
        "",
        "",
        &retry::route("api", "/api/", &up.url(), "api", ""),
    );
    let p = start_proxy(&yaml).await;
    warm_up(&p, &endpoint, "/api/warm").await;
    endpoint.revoke_access_tokens();
    let mut s = tokio::net::TcpStream::connect(p.running.as_ref().unwrap().proxy_addr)
        .await
        .unwrap();
    s.write_all(
        b"GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = with_timeout(s.read(&mut buf)).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-latchkey-retry: not_replayable"),
        "{head}"
    );
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("cannot be replayed"))
        .unwrap_or_else(|| panic!("no not-replayable line in:\n{text}"))
        .to_owned();
    assert!(
        line.contains("an upgrade (WebSocket) is never replayed") && !line.contains("replay cap"),
        "{line}"
    );
    drop(s);
    assert!(p.stop().await);
}
