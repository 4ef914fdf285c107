//! The admin listener: `/healthz`, `/readyz` and the management API, on
//! their own port so probes and operator actions never share a port with
//! proxied traffic.
//!
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 when the config is loaded, the listeners are bound, the
//!   process is not draining, and every credential and client token
//!   resolves or resolved once; 503 otherwise, with a JSON body saying
//!   which check failed (never a value). See [`readiness`].
//! - `/v0/management/...`: see [`management`]; 404 unless a management key
//!   is configured.
//! - `/metrics`: Prometheus text format; 404 when `metrics.enabled` is
//!   false.

pub mod lockout;
pub mod management;
mod metrics;

use crate::build::Proxy;
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use management::Management;
use proxy_core::{ProxyBody, full};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// The running proxy.
    pub proxy: Arc<ArcSwap<Proxy>>,
    /// False once shutdown began.
    pub serving: AtomicBool,
    /// Every credential and client token resolved at some readiness check
    /// (a probe's, or [`watch_resolved`]'s every second until then): from
    /// then on their failures no longer make the process unready.
    pub resolved_once: AtomicBool,
    /// The management API's key, loopback rule and lockout.
    pub management: Management,
    /// Reloads the config file (`POST /v0/management/reload`); `None` when
    /// started without a file.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
}

impl AdminState {
    /// State for serving `proxy`, with the management settings of its
    /// config. Call inside a tokio runtime, so a `file` key is watched.
    pub fn new(proxy: Arc<ArcSwap<Proxy>>) -> Self {
        let config = proxy.load().config.clone();
        Self {
            management: Management::from_config(
                config.admin.as_ref(),
                config.secrets.file_poll_interval,
            ),
            proxy,
            serving: AtomicBool::new(true),
            resolved_once: AtomicBool::new(false),
            reloader: None,
        }
    }

    /// With `reloader` behind `POST /v0/management/reload`.
    pub fn with_reloader(mut self, reloader: Option<Arc<crate::reload::Reloader>>) -> Self {
        self.reloader = reloader;
        self
    }
}

/// Serves the admin endpoints until `shutdown` turns true.
/// A caller gets `header_timeout` to send a request head (the first, or
/// the next on a keep-alive connection); a connection whose caller sends
/// nothing for `idle_timeout` (zero: no limit) is closed gracefully, as on
/// the proxy port (h2 included).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: watch::Receiver<bool>,
    header_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Some(header_timeout).filter(|t| !t.is_zero()));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let stop = crate::app::stopped(shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: not a busy loop.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let builder = builder.clone();
                let shutdown = shutdown.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, req, peer).await) }
                });
                tokio::spawn(async move {
                    // The auto builder reads the first bytes itself, with no
                    // timeout: a silent caller is dropped here.
                    if crate::server::speaks_within(&stream, header_timeout).await {
                        let _ = crate::server::serve_admin(&builder, stream, svc, shutdown, idle_timeout).await;
                    }
                });
            }
            _ = &mut stop => return,
        }
    }
}

/// Answers one admin request from `peer`. Generic over the body (no
/// endpoint reads one), so tests can call it with any peer address.
pub async fn handle<B>(
    state: &AdminState,
    req: Request<B>,
    peer: std::net::SocketAddr,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    drop(body);
    if management::is_management_path(parts.uri.path()) {
        return management::handle(state, &parts, peer).await;
    }
    let path = parts.uri.path();
    let known = matches!(path, "/healthz" | "/metrics" | "/readyz");
    if known && parts.method != Method::GET && parts.method != Method::HEAD {
        // RFC 9110 15.5.6: a 405 says what is allowed.
        let mut resp = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": {"code": "method_not_allowed", "message": format!("{path} answers GET and HEAD")}}),
        );
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/metrics" => metrics::response(state),
        "/readyz" => {
            let (ready, body) = readiness(state);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(status, &body)
        }
        other => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"code": "not_found", "message": format!("no admin endpoint {other}")}}),
        ),
    }
}

/// Computes readiness and its explanation.
///
/// Until every credential and client token has resolved once, the process
/// is not ready: a new pod whose Secret key is missing, or whose token
/// endpoint refuses it, never takes traffic, and a rollout of a broken
/// config stalls (`maxUnavailable: 0`) with the old pods serving. After
/// that, a credential that fails (its token endpoint down past expiry, a
/// revoked refresh token, a reload naming a missing Secret key) is reported
/// in the body but does not make the process unready: every replica fails
/// it at once, and taking them all out of the Service would turn one
/// failing credential into an outage of every route. Its own routes answer
/// 503 `credential_unavailable` and its metrics and alerts say why.
pub fn readiness(state: &AdminState) -> (bool, Value) {
    let proxy = state.proxy.load();
    let serving = state.serving.load(Ordering::Acquire);
    // Whether everything resolves now.
    let mut ready = true;
    let mut creds = serde_json::Map::new();
    for src in &proxy.credentials {
        let status = match src.get().now_or_never() {
            Some(Ok(_)) => "ok".to_string(),
            Some(Err(e)) => {
                ready = false;
                e.reason
            }
            None => {
                ready = false;
                "waiting for the first value".to_string()
            }
        };
        creds.insert(src.id().to_string(), Value::String(status));
    }
    // Shared stores are reported but do not decide readiness: replicas keep
    // serving the credentials they hold while Redis is down, and taking every
    // replica out of the Service at once would turn a Redis outage into a
    // full outage.
    let mut stores = serde_json::Map::new();
    for src in &proxy.credentials {
        let st = src.status();
        if matches!(st.store, "none" | "memory") {
            continue;
        }
        let health = match st.store_error {
            Some(e) => format!("down: {e}"),
            None => "up".to_string(),
        };
        let entry = stores
            .entry(st.store.to_string())
            .or_insert(Value::String(health.clone()));
        if health != "up" {
            *entry = Value::String(health);
        }
    }
    let mut clients = serde_json::Map::new();
    for c in &proxy.clients {
        // A certificate-only client has nothing to load: its identity is
        // checked by the TLS handshake.
        let status = match c.token.as_ref().map(|t| t.load()) {
            None | Some(Ok(_)) => "ok".to_string(),
            Some(Err(e)) => {
                ready = false;
                e.to_string()
            }
        };
        clients.insert(c.id.to_string(), Value::String(status));
    }
    // A route's basic-auth user name from a secret is as much the route's
    // credential as its token: a route whose name does not resolve answers
    // 503 to everything.
    let mut usernames = serde_json::Map::new();
    for u in &proxy.usernames {
        let status = match u.source.load() {
            Ok(_) => "ok".to_string(),
            Err(e) => {
                ready = false;
                e.to_string()
            }
        };
        usernames.insert(u.route.to_string(), Value::String(status));
    }
    let resolved = ready;
    if resolved {
        state.resolved_once.store(true, Ordering::Release);
    }
    let ready = serving && (resolved || state.resolved_once.load(Ordering::Acquire));
    let mut body = json!({
        "ready": ready,
        "serving": serving,
        "all_resolved": resolved,
        "routes": proxy.config.routes.len(),
        "credentials": creds,
        "stores": stores,
        "clients": clients,
    });
    // Only when there are any: most configs have none.
    if !usernames.is_empty() {
        body["usernames"] = Value::Object(usernames);
    }
    (ready, body)
}

/// How often [`watch_resolved`] checks.
const RESOLVED_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the readiness check every second until everything has resolved
/// once, then ends. Without it, `resolved_once` would be set only by a
/// probe: a credential that resolved at startup and failed before the
/// first probe came (the probe's initial delay) would keep the pod unready
/// although it had resolved. The check only reads what the credentials
/// hold (its refresh kicks are single-flight and back off, as a probe's).
pub async fn watch_resolved(state: Arc<AdminState>) {
    let mut tick = tokio::time::interval(RESOLVED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !state.resolved_once.load(Ordering::Acquire) {
        tick.tick().await;
        let _ = readiness(&state);
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
