//! A WebSocket tunnel is accounted for like the request it was: it holds
//! its `max_concurrent_requests` slot until it closes, the graceful drain
//! waits for it, and the drain timeout cuts it with the connections still
//! open (Envoy keeps an upgraded stream as an active request; nginx keeps
//! it through `worker_shutdown_timeout`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use futures_util::{SinkExt as _, StreamExt as _};
use std::time::Duration;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::{CLIENT_TOKEN, assert_proxy_error, bearer, billing_config_with};
use support::{Upstream, echo_upstream, get, with_timeout, ws_echo_upstream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Route `ws` on `/ws/` to `ws_up`, route `api` on `/api/` to `api_up`.
fn config(proxy_extra: &str, ws_up: &Upstream, api_up: &Upstream) -> String {
    billing_config_with(
        proxy_extra,
        "[\"*\"]",
        &format!(
            "  - {{ id: ws, match: {{ path_prefix: /ws/ }}, strip_prefix: true, upstream: \"{}\", credential: upstream-key }}
  - {{ id: api, match: {{ path_prefix: /api/ }}, upstream: \"{}\", credential: upstream-key }}
",
            ws_up.url(),
            api_up.url()
        ),
    )
}

/// A WebSocket through the proxy, checked with one echo.
async fn open_ws(p: &TestProxy) -> Ws {
    let url = format!("{}/ws/chat", p.base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", bearer(CLIENT_TOKEN).parse().unwrap());
    let (mut ws, resp) = with_timeout(tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    echo(&mut ws, "first").await;
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let reply = with_timeout(ws.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::text(text));
}

/// The closing handshake, then the caller's connection goes (as a
/// browser's does once the server has closed).
async fn close(mut ws: Ws) {
    with_timeout(ws.close(None)).await.unwrap();
    while with_timeout(ws.next()).await.is_some() {}
    drop(ws);
}

async fn get_api(p: &TestProxy) -> support::proxy_helpers::Resp {
    let auth = bearer(CLIENT_TOKEN);
    get(&p.url("/api/x"), &[("authorization", auth.as_str())]).await
}

#[tokio::test]
async fn an_open_websocket_holds_its_concurrency_slot_until_it_closes() {
    let (ws_up, api_up) = (ws_echo_upstream().await, echo_upstream().await);
    let p = start_proxy(&config(", max_concurrent_requests: 1", &ws_up, &api_up)).await;
    let ws = open_ws(&p).await;

    // The tunnel is the one request in flight: the next is shed.
    let shed = get_api(&p).await;
    assert_proxy_error(&shed, 503, "overloaded");
    assert_eq!(api_up.hit_count(), 0);

    // Closed, the tunnel gives its slot back.
    close(ws).await;
    with_timeout(async {
        loop {
            match get_api(&p).await.0.as_u16() {
                200 => break,
                503 => tokio::time::sleep(Duration::from_millis(10)).await,
                other => panic!("unexpected status {other}"),
            }
        }
    })
    .await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn the_drain_waits_for_an_open_websocket() {
    let (ws_up, api_up) = (ws_echo_upstream().await, echo_upstream().await);
    let p = start_proxy(&config(", drain_timeout: 30s", &ws_up, &api_up)).await;
    let proxy_addr = p.running.as_ref().unwrap().proxy_addr;
    let mut ws = open_ws(&p).await;

    let mut stop = tokio::spawn(p.stop());
    // Draining: the listener is closed...
    with_timeout(async {
        while tokio::net::TcpStream::connect(proxy_addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // ... and the tunnel still carries messages, and holds the drain open.
    echo(&mut ws, "during the drain").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stop)
            .await
            .is_err(),
        "the drain ended while a WebSocket was open"
    );

    // Closed by its caller, the tunnel lets the drain end, cleanly.
    close(ws).await;
    assert!(with_timeout(stop).await.unwrap(), "an unclean drain");
}

#[tokio::test]
async fn the_drain_timeout_cuts_an_open_websocket() {
    let (ws_up, api_up) = (ws_echo_upstream().await, echo_upstream().await);
    let p = start_proxy(&config(", drain_timeout: 200ms", &ws_up, &api_up)).await;
    let mut ws = open_ws(&p).await;

    assert!(
        !with_timeout(p.stop()).await,
        "a WebSocket outlived the drain timeout: stop must report an unclean stop"
    );
    // Cut: the stream ends (with or without an error), and nothing more
    // is echoed.
    let _ = ws.send(Message::text("after the drain")).await;
    loop {
        match with_timeout(ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Close(_))) => {}
            Some(Ok(m)) => panic!("the tunnel survived the drain timeout: received {m:?}"),
        }
    }
}

/// The route's `tunnel_idle_timeout` reaches the tunnel: a WebSocket that
/// goes quiet is closed (the timing itself is tested on the paused clock
/// in `proxy_core::tunnel`; here only that it happens, bounded).
#[tokio::test]
async fn a_quiet_websocket_is_closed_after_the_routes_idle_timeout() {
    let (ws_up, api_up) = (ws_echo_upstream().await, echo_upstream().await);
    let yaml = config("", &ws_up, &api_up).replacen(
        "strip_prefix: true, upstream",
        "strip_prefix: true, tunnel_idle_timeout: 1s, upstream",
        1,
    );
    assert!(yaml.contains("tunnel_idle_timeout: 1s"));
    let p = start_proxy(&yaml).await;
    let mut ws = open_ws(&p).await;
    loop {
        match with_timeout(ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Close(_))) => {}
            Some(Ok(m)) => panic!("unexpected {m:?}"),
        }
    }
    assert!(p.stop().await);
}

/// Reads from `s` until the end of a message head (or EOF, or 5 s).
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

/// An upstream that answers every request with a 101 switching to h2c if
/// h2c was offered, else to `answer`; it reports each request head it got.
async fn switching_upstream(
    answer: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let proto = if head.to_ascii_lowercase().contains("h2c") {
                    "h2c"
                } else {
                    answer
                };
                let _ = tx.send(head);
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\
                             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
                // Held open (a tunnel's upstream end) until the test ends.
                let _ = read_head(&mut s).await;
            });
        }
    });
    (url, rx)
}

/// A WebSocket handshake through the proxy, with `upgrade` lines; the
/// status line the caller got.
async fn handshake(p: &TestProxy, upgrade: &str) -> String {
    use tokio::io::AsyncWriteExt as _;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Connection: Upgrade\r\n{upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    read_head(&mut c)
        .await
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// h2c listed beside websocket is not offered to the upstream (an h2c
/// upstream would switch to it, and the tunnel would carry requests that
/// skip routing, client routes and the audit trail), and an upstream
/// that switches to anything but websocket gets the caller a 502, never a
/// tunnel.
#[tokio::test]
async fn only_websocket_is_ever_tunnelled() {
    let api_to = |url: &str| {
        billing_config_with(
            "",
            "[\"*\"]",
            &format!(
                "  - {{ id: api, match: {{ path_prefix: /api/ }}, upstream: \"{url}\", credential: upstream-key }}\n"
            ),
        )
    };
    let (url, mut heads) = switching_upstream("websocket").await;
    let p = start_proxy(&api_to(&url)).await;
    for upgrade in [
        "Upgrade: websocket, h2c\r\n",
        "Upgrade: h2c\r\nUpgrade: websocket\r\n",
    ] {
        let status = handshake(&p, upgrade).await;
        let head = with_timeout(heads.recv())
            .await
            .unwrap()
            .to_ascii_lowercase();
        let offered: Vec<&str> = head.lines().filter(|l| l.starts_with("upgrade:")).collect();
        assert_eq!(offered, ["upgrade: websocket"], "{upgrade:?}");
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols", "{upgrade:?}");
    }
    let (url, _heads) = switching_upstream("h2c").await;
    let p = start_proxy(&api_to(&url)).await;
    let status = handshake(&p, "Upgrade: websocket\r\n").await;
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
}
