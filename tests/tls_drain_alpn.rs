//! The TLS listener's drain and the upstream WebSocket connection's ALPN:
//! a TLS caller that has sent nothing does not hold a stop, and the
//! handshake of a WebSocket to an https upstream offers `http/1.1` only.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::harness::{TestProxy, start_proxy};
use support::pki::Pki;
use support::*;

const UPSTREAM_KEY: &str = "upstream-key-canary-77aa";
const SEARCH_TOKEN: &str = "search-token-canary-55cd";

fn addr(proxy: &TestProxy) -> SocketAddr {
    proxy.running.as_ref().unwrap().proxy_addr
}

fn config(proxy_extra: &str, route_extra: &str, upstream: &str) -> String {
    format!(
        r#"
proxy:
  listen: 127.0.0.1:0
  drain_timeout: 5s
{proxy_extra}
admin: {{ listen: 127.0.0.1:0 }}
clients:
  - {{ id: search, token: {{ value: "{SEARCH_TOKEN}" }}, routes: ["*"] }}
credentials:
  - {{ id: key, static: {{ value: "{UPSTREAM_KEY}" }} }}
routes:
  - {{ id: search, match: {{ path_prefix: /search/ }}, strip_prefix: true, upstream: "{upstream}", credential: key, inject: {{ header: x-api-key }}{route_extra} }}
"#
    )
}

/// README "Routing": "to an https upstream that would agree on h2 the
/// handshake goes on an HTTP/1.1 connection of its own (ALPN `http/1.1`
/// only)". The upstream records what ALPN each connection offered.
#[tokio::test]
async fn a_websocket_to_an_h2_upstream_offers_alpn_http11_only() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let offered: Arc<Mutex<Vec<Vec<Vec<u8>>>>> = Arc::default();
    let (listener, up_addr) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let a = l.local_addr().unwrap();
        (tokio::net::TcpListener::from_std(l).unwrap(), a)
    };
    let server_config = ca.server_config(&["localhost", "127.0.0.1"], &[b"h2", b"http/1.1"]);
    let seen = offered.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let config = server_config.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let start =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), s)
                        .await
                        .unwrap();
                let alpn: Vec<Vec<u8>> = start
                    .client_hello()
                    .alpn()
                    .map(|i| i.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                seen.lock().unwrap().push(alpn);
                let Ok(tls) = start.into_stream(config).await else {
                    return;
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await {
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let _up = Upstream::from_parts(up_addr, task);
    let ca_extra = format!(", ca_file: {:?}", ca_file.display().to_string());
    let p = start_proxy(&config(
        "",
        &ca_extra,
        &format!("https://localhost:{}", up_addr.port()),
    ))
    .await;
    let url = format!("{}/search/chat", p.base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {SEARCH_TOKEN}").parse().unwrap(),
    );
    let (mut ws, resp) = with_timeout(tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        with_timeout(ws.next()).await.unwrap().unwrap(),
        Message::text("hi")
    );
    drop(ws);
    let offered = offered.lock().unwrap().clone();
    assert!(
        offered.contains(&vec![b"http/1.1".to_vec()]),
        "no connection offered ALPN [http/1.1] only; offered: {:?}",
        offered
            .iter()
            .map(|a| a
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    let _ = p.stop().await;
}

/// README "Shutdown": "Connections with nothing in flight (idle keep-alive
/// ones, and callers that connected but have not sent a byte yet) are
/// closed at once and never hold the drain". On the TLS port, a caller
/// that connected and has not sent its ClientHello (a browser's
/// preconnect, a load balancer's TCP check) has sent no byte either.
#[tokio::test]
async fn a_tls_caller_that_sent_nothing_does_not_hold_the_drain() {
    let pki = Pki::new();
    let upstream = echo_upstream().await;
    let yaml = config(&pki.tls_yaml(""), "", &upstream.url());
    let proxy = start_proxy(&yaml).await;
    let silent = tokio::net::TcpStream::connect(addr(&proxy)).await.unwrap();
    // Give the proxy a moment to accept it (the assertion below holds
    // either way; accepted, the old code held the stop past the 5 s
    // `drain_timeout`, for its 10 s handshake timeout).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let clean = with_timeout(proxy.stop()).await;
    assert!(
        clean,
        "a TLS caller that never sent a byte held the drain past drain_timeout"
    );
    drop(silent);
}
