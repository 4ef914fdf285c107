//! The world of the 401-retry end-to-end tests (`retry_replay.rs`,
//! `retry_policy.rs`): a real OAuth2 token endpoint, an upstream that accepts
//! only the endpoint's currently valid access tokens (so revoking tokens at
//! the endpoint makes it answer 401, or 403, exactly like a real API after a
//! server-side revocation), and the config and request helpers built on them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::harness::TestProxy;
use super::token_endpoint::{self, EndpointOptions, TokenEndpoint};
use super::{echoed_header, get, json};

pub const CLIENT_ID: &str = "latchkey-retry-test";
pub const CLIENT_SECRET: &str = "cs-retry-canary";
pub const SEED: &str = "rt-seed-retry";
pub const STATIC_KEY: &str = "static-key-canary";
pub const RETRY: &str = "x-latchkey-retry";

// ---------------------------------------------------------------------------
// An upstream that checks tokens against the endpoint
// ---------------------------------------------------------------------------

/// One request the upstream received, as it arrived.
#[derive(Clone, Debug)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The bearer token presented, if any.
    pub token: Option<String>,
    /// What the upstream answered.
    pub status: u16,
}

/// A hyper server on `127.0.0.1:0`: `Authorization: Bearer <t>` with a token
/// the endpoint considers valid gets 200 and a JSON echo (`hit`, `method`,
/// `path`, `headers`, `body`, `body_len`); anything else gets `reject` and
/// `{"error":"invalid_token"}`. Paths under `/deny/` are always rejected
/// with 401, whatever the token. Every request is recorded. Dropping it stops
/// the server and its connections.
pub struct AuthUpstream {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: JoinHandle<()>,
}

impl Drop for AuthUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthUpstream {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn hit_count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    /// The hits whose path starts with `prefix`, in arrival order.
    pub fn hits_under(&self, prefix: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.path.starts_with(prefix))
            .collect()
    }
}

pub async fn auth_upstream(endpoint: Arc<TokenEndpoint>, reject: StatusCode) -> AuthUpstream {
    // A deep accept queue: the proxy opens up to 200 connections at once,
    // and an overflowing queue (128 by default here) costs a 1 s SYN
    // retransmission, which is not what these tests are about.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let loop_hits = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let endpoint = Arc::clone(&endpoint);
                    let hits = Arc::clone(&loop_hits);
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let endpoint = Arc::clone(&endpoint);
                            let hits = Arc::clone(&hits);
                            async move {
                                Ok::<_, Infallible>(handle(&endpoint, &hits, reject, req).await)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    AuthUpstream { addr, hits, task }
}

async fn handle(
    endpoint: &TokenEndpoint,
    hits: &Mutex<Vec<Hit>>,
    reject: StatusCode,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => Bytes::from(format!("<body error: {e}>")),
    };
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let path = parts.uri.path().to_owned();
    let status = if path.starts_with("/deny/") {
        StatusCode::UNAUTHORIZED
    } else if token
        .as_deref()
        .is_some_and(|t| endpoint.is_access_token_valid(t))
    {
        StatusCode::OK
    } else {
        reject
    };
    let n = {
        let mut hits = hits.lock().unwrap();
        hits.push(Hit {
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            token,
            status: status.as_u16(),
        });
        hits.len()
    };
    let answer = if status == StatusCode::OK {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &parts.headers {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        serde_json::json!({
            "hit": n,
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "body_len": body.len(),
        })
    } else {
        serde_json::json!({ "error": "invalid_token" })
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap()
}

// ---------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------

pub async fn endpoint() -> Arc<TokenEndpoint> {
    Arc::new(
        token_endpoint::start(EndpointOptions {
            expires_in: 3600,
            rotate: true,
            initial_refresh_token: SEED.to_owned(),
            client_id: Some(CLIENT_ID.to_owned()),
            client_secret: Some(CLIENT_SECRET.to_owned()),
        })
        .await,
    )
}

/// A config with the oauth2 credential `api` (plus `credential_extra`
/// lines at its level), `top` lines after `proxy:`, and `routes`.
pub fn config(endpoint: &TokenEndpoint, top: &str, credential_extra: &str, routes: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0", drain_timeout: 2s }}
{top}
credentials:
  - id: api
    oauth2:
      grant: refresh_token
      token_url: {url}
      client_id: {CLIENT_ID}
      client_secret: {{ value: {CLIENT_SECRET} }}
      refresh_token: {{ value: {SEED} }}
{credential_extra}
routes:
{routes}"#,
        url = endpoint.url,
    )
}

/// A proxy whose one credential `key` is the static [`STATIC_KEY`], with
/// `routes`.
pub fn static_config(routes: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0", drain_timeout: 2s }}
credentials:
  - id: key
    static: {{ value: {STATIC_KEY} }}
routes:
{routes}"#
    )
}

/// A public route on `prefix` (not stripped) injecting `credential` with
/// the default `Authorization: Bearer`, plus `extra` lines.
pub fn route(id: &str, prefix: &str, upstream: &str, credential: &str, extra: &str) -> String {
    format!(
        "  - id: {id}
    match: {{ path_prefix: {prefix} }}
    upstream: {upstream}
    credential: {credential}
    public: true
{extra}
"
    )
}

/// An HTTP/1.1 connection to `addr`, ready to send one request.
pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub fn retry_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(RETRY).map(|v| v.to_str().unwrap())
}

/// One request so the first token is in use; returns the header it carried.
pub async fn warm_up(p: &TestProxy, endpoint: &TokenEndpoint, path: &str) -> String {
    let (status, headers, body) = get(&p.url(path), &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "warm-up: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(retry_header(&headers), None, "warm-up was not retried");
    assert_eq!(endpoint.calls(), 1, "one token call for the first token");
    let auth = echoed_header(&json(&body), "authorization").unwrap();
    assert_eq!(auth, format!("Bearer {}", endpoint.current_access_token()));
    auth
}

/// The upstream's rejection body, unchanged.
pub fn assert_upstream_rejection(headers: &HeaderMap, body: &Bytes) {
    assert_eq!(json(body), serde_json::json!({ "error": "invalid_token" }));
    assert!(
        headers.get("x-latchkey-error").is_none(),
        "the upstream's answer is not a proxy error"
    );
}
