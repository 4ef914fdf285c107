//! The cheapest header-injecting proxy hyper allows: a reference point for
//! `benches/compare.sh` (`CONTENDERS="latchkey hyper-floor nginx"`), not a
//! product.
//!
//! Every caller connection gets its own upstream connection (HTTP/1.1, kept
//! alive), so there is no pool; a request whose `Authorization` is not the
//! caller token gets an empty 401 (as every contender in the benchmark
//! checks it), any other gets the header replaced and goes upstream with
//! nothing else: no routing, no client identities, no
//! credential lookup or refresh, no 401 retry,
//! no audit record or metrics, no error bodies, no limits, no graceful
//! shutdown. One event loop (tokio's current-thread runtime), as latchkey
//! runs on one CPU. What latchkey costs above this is what its features
//! cost; what this costs above nginx is hyper and tokio.
//!
//! ```text
//! cargo run --release --example hyper_floor -- \
//!     --listen 127.0.0.1:18082 --upstream 127.0.0.1:18081 \
//!     --client-authorization "Bearer client-token" \
//!     --authorization "Bearer bench-token"
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::future::Either;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use http_body_util::{Either as EitherBody, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A minimal hyper proxy that sets one header.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18082")]
    listen: SocketAddr,
    /// The upstream's address.
    #[arg(long, default_value = "127.0.0.1:18081")]
    upstream: SocketAddr,
    /// The `Authorization` value a caller must send.
    #[arg(long)]
    client_authorization: String,
    /// The `Authorization` value every request gets upstream.
    #[arg(long)]
    authorization: String,
}

/// The two header values.
#[derive(Debug)]
struct Tokens {
    client: HeaderValue,
    upstream: HeaderValue,
}

/// One caller connection, proxied over one upstream connection.
async fn proxy(
    caller: TcpStream,
    upstream: SocketAddr,
    tokens: Arc<Tokens>,
) -> Result<(), BoxError> {
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(conn);
    // HTTP/1.1 serves one request at a time, so the lock is never contended;
    // the response future does not borrow the sender.
    let sender = Arc::new(Mutex::new(sender));
    let service = service_fn(move |mut req: http::Request<Incoming>| {
        if req.headers().get(AUTHORIZATION) != Some(&tokens.client) {
            let mut denied = http::Response::new(EitherBody::Right(Empty::<Bytes>::new()));
            *denied.status_mut() = http::StatusCode::UNAUTHORIZED;
            return Either::Left(std::future::ready(Ok::<_, hyper::Error>(denied)));
        }
        req.headers_mut()
            .insert(AUTHORIZATION, tokens.upstream.clone());
        // A panic cannot happen while the lock is held (`send_request` only
        // queues the request), so a poisoned lock is still a usable sender.
        let sent = sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send_request(req);
        Either::Right(async move { Ok(sent.await?.map(EitherBody::Left)) })
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(caller), service)
        .await?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let header = |flag: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|e| format!("invalid --{flag}: {e}"))
    };
    let tokens = Arc::new(Tokens {
        client: header("client-authorization", &args.client_authorization)?,
        upstream: header("authorization", &args.authorization)?,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("bind {}: {e}", args.listen))?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (caller, _) = listener.accept().await?;
            caller.set_nodelay(true)?;
            let tokens = Arc::clone(&tokens);
            tokio::spawn(async move {
                // Callers hanging up (the load generator stopping) end here.
                let _ = proxy(caller, args.upstream, tokens).await;
            });
        }
    })
}
