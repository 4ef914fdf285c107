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
//! Shared helpers for latchkey's end-to-end tests.
//!
//! Every server binds `127.0.0.1:0` so tests can run in parallel, and is torn
//! down when its [`Upstream`] handle is dropped: the accept loop owns the
//! per-connection tasks, so aborting it also closes every open connection.
//! That lets a test observe the proxy's behaviour when an upstream vanishes.

pub mod cli;
pub mod gauges;
pub mod h2_trailers;
pub mod harness;
pub mod pki;
pub mod proxy_helpers;
pub mod raw;
pub mod redis_server;
pub mod retry;
pub mod token_endpoint;
mod ws;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// Response body type shared by all test servers, so one accept loop fits them all.
pub type TestBody = BoxBody<Bytes, Infallible>;

/// Upper bound for anything a test awaits; a hung proxy must fail, not stall CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle to a running test server. Dropping it stops the server and closes
/// its open connections.
#[derive(Debug)]
pub struct Upstream {
    /// Address the server is listening on.
    pub addr: SocketAddr,
    /// Number of requests served (for WebSocket servers: handshakes accepted).
    pub hits: Arc<AtomicUsize>,
    /// Handshake request headers seen by [`ws_echo_upstream`], lowercased
    /// names, in arrival order across all handshakes. Empty for other servers.
    pub ws_headers: Arc<Mutex<Vec<(String, String)>>>,
    /// Connections accepted (TCP; for TLS servers, before the handshake).
    pub conns: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:4321`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// A handle over a server a test spawned itself.
    pub fn from_parts(addr: SocketAddr, task: JoinHandle<()>) -> Self {
        Self {
            addr,
            hits: Arc::default(),
            ws_headers: Arc::default(),
            conns: Arc::default(),
            task,
        }
    }

    /// Base URL for TLS servers, using the `localhost` name the leaf certificate carries.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// WebSocket base URL, e.g. `ws://127.0.0.1:4321`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.addr.port())
    }

    /// Requests served so far.
    pub fn hit_count(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn conn_count(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// First value of a recorded WebSocket handshake header (name is case-insensitive).
    pub fn ws_header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.ws_headers
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// First value of header `name` in an echo-server JSON response.
pub fn echoed_header(v: &serde_json::Value, name: &str) -> Option<String> {
    v.get("headers")?
        .get(name.to_ascii_lowercase())?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_owned)
}

/// All values of header `name` in an echo-server JSON response (empty if absent).
pub fn echoed_header_all(v: &serde_json::Value, name: &str) -> Vec<String> {
    v.get("headers")
        .and_then(|h| h.get(name.to_ascii_lowercase()))
        .and_then(serde_json::Value::as_array)
        .map(|vals| {
            vals.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).boxed()
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .unwrap()
}

/// Describes a request as JSON. `uri` is the path and query exactly as
/// received; h2 requests carry scheme and authority in pseudo-headers rather
/// than in the header map, so `authority` is reported separately for them.
async fn echo_json(req: Request<Incoming>) -> serde_json::Value {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    // A body error means the proxy broke the stream; surface it rather than
    // pretending the body was empty.
    let body = match body.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(e) => format!("<body error: {e}>"),
    };
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    serde_json::json!({
        "method": parts.method.as_str(),
        "uri": uri,
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": body,
    })
}

async fn echo_handler(req: Request<Incoming>) -> Response<TestBody> {
    json_response(StatusCode::OK, &echo_json(req).await)
}

fn bind() -> (TcpListener, SocketAddr) {
    let std_listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    (TcpListener::from_std(std_listener).unwrap(), addr)
}

/// Accepts connections until aborted. Connection tasks live in a `JoinSet`
/// owned by the loop, so aborting the loop drops (and aborts) them too.
fn spawn_accept_loop<F, Fut>(listener: TcpListener, on_conn: F) -> JoinHandle<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(on_conn(stream));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

async fn serve_http_conn<I, H, Fut>(io: I, handler: H, hits: Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        hits.fetch_add(1, Ordering::SeqCst);
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    // The auto builder sniffs the h2 preface, so one server covers HTTP/1.1,
    // h2c prior knowledge, and whatever ALPN picked under TLS. Upgrades are
    // enabled so a proxy's WebSocket passthrough attempt gets a real answer.
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

fn spawn_http<H, Fut>(tls: Option<TlsAcceptor>, handler: H) -> Upstream
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let (listener, addr) = bind();
    let hits = Arc::new(AtomicUsize::new(0));
    let conn_hits = Arc::clone(&hits);
    let conns = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&conns);
    let task = spawn_accept_loop(listener, move |stream| {
        accepted.fetch_add(1, Ordering::SeqCst);
        let handler = handler.clone();
        let hits = Arc::clone(&conn_hits);
        let tls = tls.clone();
        async move {
            match tls {
                None => serve_http_conn(stream, handler, hits).await,
                Some(acceptor) => {
                    // Handshake failures are expected in negative tests
                    // (e.g. a client that doesn't trust the CA).
                    if let Ok(tls_stream) = acceptor.accept(stream).await {
                        serve_http_conn(tls_stream, handler, hits).await;
                    }
                }
            }
        }
    });
    Upstream {
        addr,
        hits,
        ws_headers: Arc::default(),
        conns,
        task,
    }
}

/// Plain-HTTP (HTTP/1.1 and h2c prior knowledge) server answering every
/// request with 200 and a JSON description of the request: `method`, `uri`
/// (path and query as received), `path`, `query` (string or null),
/// `authority` (string or null), `version` (`"HTTP/1.1"` / `"HTTP/2.0"`),
/// `headers` (lowercased name to list of values) and `body` (UTF-8, lossy).
pub async fn echo_upstream() -> Upstream {
    spawn_http(None, echo_handler)
}

/// Plain-HTTP server answering every request with what `handler` makes of
/// it: for an upstream that does something of its own (see
/// [`text_response`]).
pub async fn handler_upstream<H, Fut>(handler: H) -> Upstream
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    spawn_http(None, handler)
}

/// A response with `status` and `body` as it is.
pub fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

/// Answers every request with `status` and a small JSON body naming it.
pub async fn status_upstream(status: u16) -> Upstream {
    let status = StatusCode::from_u16(status).expect("valid status code");
    spawn_http(None, move |_req| async move {
        json_response(status, &serde_json::json!({ "status": status.as_u16() }))
    })
}

/// Waits `delay` before answering 200 with the echo JSON, to exercise proxy timeouts.
pub async fn slow_upstream(delay: Duration) -> Upstream {
    spawn_http(None, move |req| async move {
        tokio::time::sleep(delay).await;
        echo_handler(req).await
    })
}

/// As [`slow_upstream`] for paths that contain `/slow`; any other path is
/// answered at once.
pub async fn slow_path_upstream(delay: Duration) -> Upstream {
    spawn_http(None, move |req| async move {
        if req.uri().path().contains("/slow") {
            tokio::time::sleep(delay).await;
        }
        echo_handler(req).await
    })
}

/// Server-sent-events server: sends `data: first\n\n` at once, then holds the
/// response open until `gate` resolves (fired or sender dropped), then sends
/// `data: second\n\n` and ends. The gate is shared, so every request waits on
/// the same signal. A proxy that buffers the body will never deliver `first`
/// before the gate fires.
pub async fn sse_upstream(gate: tokio::sync::oneshot::Receiver<()>) -> Upstream {
    let gate = gate.shared();
    spawn_http(None, move |_req| {
        let gate = gate.clone();
        async move {
            let first = futures_util::stream::once(async {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: first\n\n")))
            });
            let second = futures_util::stream::once(async move {
                let _ = gate.await;
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: second\n\n")))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "text/event-stream")
                .header(http::header::CACHE_CONTROL, "no-cache")
                .body(http_body_util::BodyExt::boxed(StreamBody::new(
                    first.chain(second),
                )))
                .unwrap()
        }
    })
}

/// WebSocket echo server: echoes text and binary messages back and records
/// each handshake's request headers in [`Upstream::ws_headers`]. `hits`
/// counts accepted handshakes.
pub async fn ws_echo_upstream() -> Upstream {
    ws::echo_upstream(None)
}

/// [`ws_echo_upstream`] behind TLS with a leaf from `ca`, offering ALPN
/// `h2, http/1.1` (its WebSocket handshake works only on HTTP/1.1).
pub async fn tls_ws_echo_upstream(ca: &TestCa) -> Upstream {
    let config = ca.server_config(&["localhost", "127.0.0.1"], &[b"h2", b"http/1.1"]);
    ws::echo_upstream(Some(TlsAcceptor::from(config)))
}

/// Throwaway certificate authority for TLS tests.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// Generates a fresh self-signed CA (ECDSA P-256).
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A CN distinct from the leaves' keeps issuer and subject names
        // unambiguous during path building.
        params
            .distinguished_name
            .push(DnType::CommonName, "latchkey test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.cert_pem).unwrap();
        path
    }

    /// Issues a server leaf for `names`; entries that parse as IP addresses
    /// become IP SANs, everything else DNS SANs. Returns `(cert_pem, key_pem)`.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_until(names, None)
    }

    /// [`TestCa::issue`], valid until January 1st of `until_year` (rcgen's
    /// default, 4096, when `None`).
    pub fn issue_until(&self, names: &[&str], until_year: Option<i32>) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        if let Some(year) = until_year {
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issues a client leaf (clientAuth) whose SANs are the URIs `uri_sans`
    /// (SPIFFE ids). Returns `(cert_pem, key_pem)`.
    pub fn issue_client(&self, uri_sans: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "latchkey test client");
        params.subject_alt_names = uri_sans
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls server config (ring provider) presenting a leaf for `names`
    /// and advertising `alpn` protocols in preference order.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let (cert_pem, key_pem) = self.issue(names);
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A rustls client config (ring provider) trusting only this CA and
    /// offering `alpn` protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// The echo server behind TLS, presenting a leaf from `ca` for `localhost`
/// and `127.0.0.1`. ALPN offers `h2, http/1.1` when `alpn_h2` is set, else
/// only `http/1.1`; the echoed `version` shows which one was negotiated.
pub async fn tls_echo_upstream(ca: &TestCa, alpn_h2: bool) -> Upstream {
    let alpn: &[&[u8]] = if alpn_h2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    let config = ca.server_config(&["localhost", "127.0.0.1"], alpn);
    spawn_http(Some(TlsAcceptor::from(config)), echo_handler)
}

/// An OAuth2 token endpoint behind TLS, presenting a leaf from `ca` for
/// `localhost` and `127.0.0.1`: answers every request with the access token
/// `tls-idp-token`, valid for an hour. `hits` counts token requests.
pub async fn tls_token_endpoint(ca: &TestCa) -> Upstream {
    let config = ca.server_config(&["localhost", "127.0.0.1"], &[b"http/1.1"]);
    spawn_http(Some(TlsAcceptor::from(config)), |_req| async {
        json_response(
            StatusCode::OK,
            &serde_json::json!({"access_token": "tls-idp-token", "token_type": "Bearer", "expires_in": 3600}),
        )
    })
}

/// A port that was free a moment ago. Racy by nature, so only use it where
/// a collision would merely make the test fail loudly.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// An `http://127.0.0.1:PORT` URL with nothing listening, so connects are refused.
pub async fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Awaits `fut`, panicking if it takes longer than [`TEST_TIMEOUT`].
pub async fn with_timeout<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(TEST_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test step timed out after {TEST_TIMEOUT:?}"),
    }
}

/// Sends `req` over plain HTTP/1.1 with a fresh client (no pooling across
/// calls, so tests don't influence each other) and collects the response.
pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    with_timeout(async move {
        let resp = client.request(req).await.expect("send request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read response body").to_bytes();
        (parts.status, parts.headers, body)
    })
    .await
}

/// `GET url` with the given extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(Full::new(Bytes::new())).unwrap()).await
}

/// Parses a response body as JSON, with the raw body in the panic message.
pub fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "response body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}
