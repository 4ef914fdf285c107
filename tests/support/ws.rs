//! The WebSocket echo upstream, plain or behind TLS.

use super::{Upstream, bind, spawn_accept_loop};
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse as WsErrorResponse, Request as WsRequest, Response as WsResponse,
};

/// Echoes messages; records handshake headers; counts handshakes.
pub(super) fn echo_upstream(tls: Option<TlsAcceptor>) -> Upstream {
    let (listener, addr) = bind();
    let hits = Arc::new(AtomicUsize::new(0));
    let ws_headers: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (conn_hits, conn_headers) = (Arc::clone(&hits), Arc::clone(&ws_headers));
    let task = spawn_accept_loop(listener, move |stream| {
        let hits = Arc::clone(&conn_hits);
        let headers = Arc::clone(&conn_headers);
        let tls = tls.clone();
        async move {
            match tls {
                None => serve(stream, hits, headers).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, hits, headers).await;
                    }
                }
            }
        }
    });
    Upstream {
        addr,
        hits,
        ws_headers,
        conns: Arc::default(),
        task,
    }
}

async fn serve<S>(stream: S, hits: Arc<AtomicUsize>, headers: Arc<Mutex<Vec<(String, String)>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's Callback trait fixes the error type"
    )]
    let record = move |req: &WsRequest, resp: WsResponse| {
        let mut seen = headers.lock().unwrap();
        for (name, value) in req.headers() {
            seen.push((
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
        Ok::<WsResponse, WsErrorResponse>(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    hits.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if ws.send(msg).await.is_err() {
                    return;
                }
            }
            // tungstenite queues the close reply itself; keep polling so it
            // gets flushed and the stream ends cleanly.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}
