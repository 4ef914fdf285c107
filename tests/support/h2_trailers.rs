//! An h2 upstream over TLS that records the trailers of each request
//! body it gets (`caller_input.rs`, `trailers_and_framing.rs`).

use super::TestCa;
use http_body_util::BodyExt as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// An h2 upstream over TLS that records the trailers of each request body.
pub async fn h2_trailer_upstream(ca: &TestCa) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"], &[b"h2"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let trailers: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = trailers.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(s).await else {
                continue;
            };
            let seen = seen.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let got = req.into_body().collect().await;
                        let mut seen = seen.lock().unwrap();
                        match got {
                            Ok(c) => {
                                seen.extend(c.trailers().into_iter().flatten().map(|(k, v)| {
                                    format!("{k}: {}", String::from_utf8_lossy(v.as_bytes()))
                                }))
                            }
                            Err(e) => seen.push(format!("<body error: {e}>")),
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc),
            );
        }
    });
    (up, trailers)
}
