//! A small, fast loopback upstream for latchkey load tests and demos.
//!
//! It accepts HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge) on one
//! port, drains every request body completely (so upload benchmarks really
//! move the bytes), and answers with a fixed JSON body:
//!
//! * `200 {"ok":true}` normally;
//! * `401 {"error":"missing or wrong credential"}` when `--expect-value` is
//!   given and the request's `--expect-header` is absent or differs. This lets
//!   a benchmark prove that the proxy really injected the credential.
//!
//! Once bound it prints `listening on ADDR` to stdout, then serves until it is
//! killed (or gets Ctrl-C).
//!
//! ```text
//! cargo run --release --example upstream -- \
//!     --listen 127.0.0.1:18081 --expect-value "Bearer bench-token"
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const OK_BODY: &[u8] = br#"{"ok":true}"#;
const UNAUTHORIZED_BODY: &[u8] = br#"{"error":"missing or wrong credential"}"#;

/// Loopback upstream for latchkey benchmarks.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,

    /// Request header that carries the credential.
    #[arg(long, default_value = "authorization")]
    expect_header: String,

    /// When set, requests whose `--expect-header` differs from this value get
    /// 401 instead of 200.
    #[arg(long)]
    expect_value: Option<String>,

    /// Size of the 200 response body in bytes. By default the body is
    /// `{"ok":true}`; larger sizes pad it with spaces (still valid JSON),
    /// smaller sizes use filler bytes.
    #[arg(long)]
    body_bytes: Option<usize>,
}

/// Immutable per-process state shared by all connections.
#[derive(Debug)]
struct State {
    header: HeaderName,
    expected: Option<HeaderValue>,
    ok_body: Bytes,
}

fn ok_body(size: Option<usize>) -> Bytes {
    match size {
        None => Bytes::from_static(OK_BODY),
        Some(n) if n >= OK_BODY.len() => {
            let mut body = Vec::with_capacity(n);
            body.extend_from_slice(OK_BODY);
            body.resize(n, b' ');
            Bytes::from(body)
        }
        Some(n) => Bytes::from(b"ok".iter().copied().cycle().take(n).collect::<Vec<u8>>()),
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();

    let authorized = match &state.expected {
        None => true,
        Some(expected) => parts.headers.get(&state.header) == Some(expected),
    };

    // Drain the body frame by frame without buffering it, so large uploads
    // cost the upstream nothing but the read.
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                Bytes::from_static(br#"{"error":"request body failed"}"#),
            ));
        }
    }

    Ok(if authorized {
        json_response(StatusCode::OK, state.ok_body.clone())
    } else {
        json_response(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(UNAUTHORIZED_BODY),
        )
    })
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Typically EMFILE under heavy load: back off instead of spinning.
                eprintln!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            eprintln!("set TCP_NODELAY failed: {err}");
        }
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&state), req));
            // Errors here are client disconnects and the like; a load
            // generator being stopped produces plenty of them.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();

    let header = HeaderName::from_bytes(args.expect_header.as_bytes())
        .map_err(|e| format!("invalid --expect-header {:?}: {e}", args.expect_header))?;
    let expected = args
        .expect_value
        .as_deref()
        .map(HeaderValue::from_str)
        .transpose()
        .map_err(|e| format!("invalid --expect-value: {e}"))?;
    let state = Arc::new(State {
        header,
        expected,
        ok_body: ok_body(args.body_bytes),
    });

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);

    tokio::select! {
        () = serve(listener, state) => {}
        res = tokio::signal::ctrl_c() => res?,
    }
    Ok(())
}
