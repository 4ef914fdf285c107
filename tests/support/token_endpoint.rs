#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test binaries, each uses a subset"
)]
#![allow(
    clippy::allow_attributes,
    reason = "expect would fail in the binaries that use every item"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]
//! A real OAuth2 token endpoint (RFC 6749) for tests.
//!
//! It speaks HTTP on `127.0.0.1:0`, parses the form, checks client
//! authentication like a real authorization server (basic or post, never
//! both), and implements refresh-token rotation strictly: a refresh token
//! works exactly once, and presenting a used or revoked one answers
//! `invalid_grant`. That makes double refreshes (two holders racing on one
//! rotating credential) observable through [`TokenEndpoint::invalid_grants`].
//!
//! Tokens are predictable (`at-N`, `rt-N`, N = the call number) so tests can
//! assert exactly which exchange produced what. Failures and delays can be
//! switched on and off while the endpoint runs.
//!
//! The module depends only on tokio, hyper, hyper-util, http,
//! http-body-util, bytes, serde_json and std, so any test binary can include
//! it with `#[path]`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// How the endpoint behaves.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// `expires_in` of every issued access token, in seconds.
    pub expires_in: u64,
    /// Issue a new refresh token on every refresh (the old one is used up).
    pub rotate: bool,
    /// The refresh token that works first.
    pub initial_refresh_token: String,
    /// When set, the client must identify as this id.
    pub client_id: Option<String>,
    /// When set, the client must authenticate with this secret (basic or post).
    pub client_secret: Option<String>,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            expires_in: 3600,
            rotate: true,
            initial_refresh_token: "rt-0".to_owned(),
            client_id: None,
            client_secret: None,
        }
    }
}

/// A failure the endpoint answers every call with until cleared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// This status and body (sent as JSON if it parses as JSON, else text).
    Status(u16, String),
    /// 400 `invalid_grant`, whatever was presented.
    InvalidGrant,
    /// Never answer (the connection stays open): for timeout tests.
    Hang,
    /// This status with `Retry-After: <value>` and a text body.
    Throttled(u16, String),
}

#[derive(Debug)]
struct State {
    opts: EndpointOptions,
    calls: usize,
    invalid_grants: usize,
    /// The one refresh token that works; `None` once revoked.
    refresh_token: Option<String>,
    /// Every refresh token that worked once (rotated away or revoked).
    used_refresh_tokens: Vec<String>,
    issued_access_tokens: Vec<String>,
    revoked_access_tokens: HashSet<String>,
    failure: Option<Failure>,
    delay: Duration,
    last_form: Vec<(String, String)>,
    last_authorization: Option<String>,
    last_user_agent: Option<String>,
    expires_in_f64: Option<f64>,
}

impl State {
    fn expires_in_json(&self) -> serde_json::Value {
        match self.expires_in_f64 {
            Some(f) => serde_json::json!(f),
            None => serde_json::json!(self.opts.expires_in),
        }
    }
}

/// A running token endpoint. Dropping it stops the server and closes its
/// connections.
#[derive(Debug)]
pub struct TokenEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The token URL, `http://127.0.0.1:PORT/token`.
    pub url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an endpoint on `127.0.0.1:0`.
pub async fn start(opts: EndpointOptions) -> TokenEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State {
        refresh_token: Some(opts.initial_refresh_token.clone()),
        opts,
        calls: 0,
        invalid_grants: 0,
        used_refresh_tokens: Vec::new(),
        issued_access_tokens: Vec::new(),
        revoked_access_tokens: HashSet::new(),
        failure: None,
        delay: Duration::ZERO,
        last_form: Vec::new(),
        last_authorization: None,
        last_user_agent: None,
        expires_in_f64: None,
    }));
    let loop_state = Arc::clone(&state);
    // The accept loop owns the connection tasks, so aborting it on drop also
    // closes every open connection (including hung ones).
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&loop_state);
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, Infallible>(handle(state, req).await) }
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
    TokenEndpoint {
        addr,
        url: format!("http://127.0.0.1:{}/token", addr.port()),
        state,
        task,
    }
}

impl TokenEndpoint {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Requests to `/token` so far, whatever their outcome.
    pub fn calls(&self) -> usize {
        self.with(|s| s.calls)
    }

    /// Refreshes refused with `invalid_grant` (used, revoked or unknown
    /// refresh token, or [`Failure::InvalidGrant`]).
    pub fn invalid_grants(&self) -> usize {
        self.with(|s| s.invalid_grants)
    }

    /// The access token issued last (empty before the first).
    pub fn current_access_token(&self) -> String {
        self.with(|s| s.issued_access_tokens.last().cloned().unwrap_or_default())
    }

    /// The refresh token that works now (`None` after a revocation).
    pub fn current_refresh_token(&self) -> Option<String> {
        self.with(|s| s.refresh_token.clone())
    }

    /// Every access token issued so far, oldest first.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued_access_tokens.clone())
    }

    /// Answers every call with `failure` until cleared with `None`.
    pub fn set_failure(&self, failure: Option<Failure>) {
        self.with(|s| s.failure = failure);
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// `expires_in` of tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.with(|s| {
            s.opts.expires_in = secs;
            s.expires_in_f64 = None;
        });
    }

    /// A fractional `expires_in` (RFC 6749 says integer; latchkey accepts
    /// fractions), for tests that run many expiries in real time.
    pub fn set_expires_in_f64(&self, secs: f64) {
        self.with(|s| s.expires_in_f64 = Some(secs));
    }

    /// Invalidates the current refresh token: every refresh answers
    /// `invalid_grant` until [`set_refresh_token`](Self::set_refresh_token).
    pub fn revoke_refresh_token(&self) {
        self.with(|s| {
            if let Some(rt) = s.refresh_token.take() {
                s.used_refresh_tokens.push(rt);
            }
        });
    }

    /// Makes `token` the refresh token that works (an operator re-seeding).
    pub fn set_refresh_token(&self, token: &str) {
        self.with(|s| s.refresh_token = Some(token.to_owned()));
    }

    /// Revokes every access token issued so far.
    pub fn revoke_access_tokens(&self) {
        self.with(|s| {
            let issued = s.issued_access_tokens.clone();
            s.revoked_access_tokens.extend(issued);
        });
    }

    /// Whether `token` was issued here and not revoked (for an upstream
    /// that checks the tokens it receives).
    pub fn is_access_token_valid(&self, token: &str) -> bool {
        self.with(|s| {
            s.issued_access_tokens.iter().any(|t| t == token)
                && !s.revoked_access_tokens.contains(token)
        })
    }

    /// The decoded form of the last call, in order.
    pub fn last_form(&self) -> Vec<(String, String)> {
        self.with(|s| s.last_form.clone())
    }

    /// The first value of form field `name` in the last call.
    pub fn last_form_value(&self, name: &str) -> Option<String> {
        self.with(|s| {
            s.last_form
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    /// The `Authorization` header of the last call.
    pub fn last_authorization(&self) -> Option<String> {
        self.with(|s| s.last_authorization.clone())
    }

    /// The `User-Agent` header of the last call.
    pub fn last_user_agent(&self) -> Option<String> {
        self.with(|s| s.last_user_agent.clone())
    }
}

type Answer = Response<Full<Bytes>>;

fn json(status: u16, value: &serde_json::Value) -> Answer {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

fn oauth_error(status: u16, error: &str, description: &str) -> Answer {
    json(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    )
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Answer {
    if req.uri().path() != "/token" {
        return oauth_error(404, "not_found", "only /token is served");
    }
    if req.method() != Method::POST {
        return oauth_error(405, "invalid_request", "the token endpoint takes POST");
    }
    let is_form = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(400, "invalid_request", "body could not be read"),
    };
    let form = parse_form(&body);

    let (delay, failure) = {
        let mut s = state.lock().unwrap();
        s.calls += 1;
        s.last_form = form.clone();
        s.last_authorization = authorization.clone();
        s.last_user_agent = user_agent;
        (s.delay, s.failure.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match failure {
        Some(Failure::Hang) => std::future::pending::<()>().await,
        Some(Failure::Throttled(status, retry_after)) => {
            return Response::builder()
                .status(status)
                .header(http::header::RETRY_AFTER, retry_after)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .body(Full::new(Bytes::from_static(b"slow down")))
                .unwrap();
        }
        Some(Failure::Status(status, body)) => {
            let content_type = if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain"
            };
            return Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
        }
        Some(Failure::InvalidGrant) => {
            state.lock().unwrap().invalid_grants += 1;
            return oauth_error(
                400,
                "invalid_grant",
                "refresh token already used or revoked",
            );
        }
        None => {}
    }
    if !is_form {
        return oauth_error(
            400,
            "invalid_request",
            "content-type must be application/x-www-form-urlencoded",
        );
    }

    let mut s = state.lock().unwrap();
    if let Err((status, error, description)) =
        check_client(&s.opts, authorization.as_deref(), &form)
    {
        return oauth_error(status, error, description);
    }
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let n = s.calls;
    match field("grant_type").as_deref() {
        Some("refresh_token") => {
            let Some(presented) = field("refresh_token") else {
                return oauth_error(400, "invalid_request", "refresh_token is missing");
            };
            if s.refresh_token.as_deref() != Some(presented.as_str()) {
                s.invalid_grants += 1;
                return oauth_error(
                    400,
                    "invalid_grant",
                    "refresh token already used or revoked",
                );
            }
            let access = format!("at-{n}");
            s.issued_access_tokens.push(access.clone());
            let mut answer = serde_json::json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": s.expires_in_json(),
            });
            if s.opts.rotate {
                let next = format!("rt-{n}");
                s.used_refresh_tokens.push(presented);
                s.refresh_token = Some(next.clone());
                answer["refresh_token"] = serde_json::Value::String(next);
            }
            json(200, &answer)
        }
        Some("client_credentials") => {
            let access = format!("at-{n}");
            s.issued_access_tokens.push(access.clone());
            json(
                200,
                &serde_json::json!({
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": s.expires_in_json(),
                }),
            )
        }
        Some(_) => oauth_error(
            400,
            "unsupported_grant_type",
            "this endpoint runs refresh_token and client_credentials",
        ),
        None => oauth_error(400, "invalid_request", "grant_type is missing"),
    }
}

/// Why a request is refused: status, OAuth2 `error`, `error_description`.
type Refusal = (u16, &'static str, &'static str);

/// Client authentication as RFC 6749 2.3.1 describes it: basic with
/// form-urlencoded id and secret, or `client_id` + `client_secret` form
/// fields, never both at once.
fn check_client(
    opts: &EndpointOptions,
    authorization: Option<&str>,
    form: &[(String, String)],
) -> Result<(), Refusal> {
    const MALFORMED: Refusal = (401, "invalid_client", "malformed basic credentials");
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let basic = match authorization {
        None => None,
        Some(h) => {
            let encoded = h.strip_prefix("Basic ").ok_or((
                401,
                "invalid_client",
                "unsupported authorization scheme",
            ))?;
            let decoded = base64_decode(encoded.trim())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(MALFORMED)?;
            let (id, secret) = decoded.split_once(':').ok_or(MALFORMED)?;
            Some((url_decode(id), url_decode(secret)))
        }
    };
    let post_secret = field("client_secret");
    if basic.is_some() && post_secret.is_some() {
        return Err((
            400,
            "invalid_request",
            "more than one client authentication method",
        ));
    }
    let (id, secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (field("client_id"), post_secret),
    };
    if let Some(want) = &opts.client_id
        && id.as_deref() != Some(want.as_str())
    {
        return Err((401, "invalid_client", "unknown client"));
    }
    if let Some(want) = &opts.client_secret
        && secret.as_deref() != Some(want.as_str())
    {
        return Err((401, "invalid_client", "client authentication failed"));
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` to pairs.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// Percent-decoding with `+` as space (form encoding).
fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 (with or without padding); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
