//! The demo's loopback servers: an upstream API that reports what it
//! received, and an OAuth2 token endpoint issuing short-lived tokens.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

use super::{BoxError, PROXY_TOKEN, UPSTREAM_KEY};

/// Lifetime of the demo's OAuth2 access tokens, in seconds.
pub(super) const TOKEN_LIFETIME_S: u64 = 4;

/// Serves `handler` over HTTP/1.1 on a loopback port.
async fn serve<F, Fut>(handler: F) -> Result<SocketAddr, BoxError>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp
}

/// The token endpoint: `client_credentials`, a new `demo-at-N` per call.
#[derive(Clone, Default)]
pub(super) struct TokenEndpoint {
    pub(super) calls: Arc<AtomicU64>,
    pub(super) current: Arc<Mutex<String>>,
}

impl TokenEndpoint {
    pub(super) async fn start(&self) -> Result<SocketAddr, BoxError> {
        let me = self.clone();
        serve(move |req: Request<Incoming>| {
            let me = me.clone();
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let form: Vec<(String, String)> = form_urlencoded_pairs(&body);
                if !form.iter().any(|(k, v)| k == "grant_type" && v == "client_credentials") {
                    return json_response(StatusCode::BAD_REQUEST, json!({"error": "unsupported_grant_type"}));
                }
                let n = me.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let token = format!("demo-at-{n}");
                if let Ok(mut cur) = me.current.lock() {
                    cur.clone_from(&token);
                }
                json_response(
                    StatusCode::OK,
                    json!({"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S}),
                )
            }
        })
        .await
    }

    pub(super) fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Revokes the token latchkey holds, as a security reset or a second
    /// login elsewhere would: the upstream refuses it from now on, although
    /// latchkey's copy has not expired.
    pub(super) fn revoke(&self) {
        if let Ok(mut cur) = self.current.lock() {
            cur.clear();
        }
    }
}

fn form_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The upstream API: says whether the expected credential arrived (the
/// static key, or the token endpoint's current token) and whether the
/// caller's proxy token leaked through.
pub(super) async fn start_upstream(tokens: TokenEndpoint) -> Result<SocketAddr, BoxError> {
    serve(move |req: Request<Incoming>| {
        let tokens = tokens.clone();
        async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let query = req.uri().query().unwrap_or("");
            let by_header = auth == format!("Bearer {UPSTREAM_KEY}");
            let by_query = query
                .split('&')
                .any(|p| p == format!("api_key={UPSTREAM_KEY}"));
            let oauth = auth
                .strip_prefix("Bearer ")
                .filter(|t| t.starts_with("demo-at-"));
            let by_oauth = oauth.is_some_and(|t| t == tokens.current());
            let saw_proxy_token = req
                .headers()
                .values()
                .any(|v| v.to_str().is_ok_and(|s| s.contains(PROXY_TOKEN)))
                || query.contains(PROXY_TOKEN);
            let ok = by_header || by_query || by_oauth;
            json_response(
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                },
                json!({
                    "path": req.uri().path(),
                    "credential_ok": ok,
                    "oauth_token": oauth,
                    "saw_proxy_token": saw_proxy_token,
                }),
            )
        }
    })
    .await
}
