//! TLS test material: a serving certificate and a client CA written where
//! the proxy reads them (`proxy.tls`), and HTTPS callers.

use super::{TestCa, with_timeout};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Certificates and the files the proxy reads them from.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// Issues the proxy's serving certificate; callers trust it.
    pub server_ca: TestCa,
    /// Issues client certificates; the proxy trusts it (`client_ca_file`).
    pub client_ca: TestCa,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = TestCa::new();
        let client_ca = TestCa::new();
        let client_ca_file = dir.path().join("client-ca.pem");
        std::fs::write(&client_ca_file, client_ca.ca_pem()).unwrap();
        let pki = Self {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            client_ca_file,
            dir,
            server_ca,
            client_ca,
        };
        pki.serve_leaf(&["localhost", "127.0.0.1"]);
        pki
    }

    /// Issues a new serving leaf for `names` and installs it the way a
    /// Secret update does: each file replaced by an atomic rename. Returns
    /// the leaf's DER.
    pub fn serve_leaf(&self, names: &[&str]) -> Vec<u8> {
        let (cert, key) = self.server_ca.issue(names);
        replace(self.dir.path(), &self.cert_file, &cert);
        replace(self.dir.path(), &self.key_file, &key);
        CertificateDer::from_pem_slice(cert.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// The `proxy.tls` block; `extra` adds fields.
    pub fn tls_yaml(&self, extra: &str) -> String {
        format!(
            "  tls: {{ cert_file: {:?}, key_file: {:?}{extra} }}",
            self.cert_file.display().to_string(),
            self.key_file.display().to_string(),
        )
    }

    pub fn mtls_yaml(&self, extra: &str) -> String {
        self.tls_yaml(&format!(
            ", client_ca_file: {:?}{extra}",
            self.client_ca_file.display().to_string()
        ))
    }

    /// A caller trusting the server CA, offering `alpn`, with an optional
    /// client certificate `(cert_pem, key_pem)`.
    pub fn caller(&self, alpn: &[&[u8]], client: Option<&(String, String)>) -> Caller {
        Caller(client_config(&self.server_ca, alpn, client))
    }
}

pub fn replace(dir: &Path, path: &Path, contents: &str) {
    let tmp = dir.join(".incoming");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn client_config(
    trust: &TestCa,
    alpn: &[&[u8]],
    client: Option<&(String, String)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.ca_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection does a full handshake: a resumed session does not
    // present the certificate again (the rotation test looks at it), and
    // client-certificate checks are then done on the first connection only.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// What a caller got back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub body: Bytes,
    /// The certificate the proxy presented.
    pub server_cert: Vec<u8>,
    /// Whether the TLS session was resumed.
    pub resumed: bool,
}

/// An HTTPS caller: one fresh connection per request, so every request sees
/// the certificate the proxy serves at that moment.
pub struct Caller(pub Arc<rustls::ClientConfig>);

impl Caller {
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(self.0.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// `GET path` with `headers`; h2 when ALPN picked it. Err: the
    /// handshake or the exchange failed. (In TLS 1.3 a server refuses a
    /// client certificate after the client's side of the handshake is done,
    /// so that refusal surfaces on the request.)
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        with_timeout(async {
            let tls = self
                .connect(addr)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (_, conn) = tls.get_ref();
            let h2 = conn.alpn_protocol() == Some(b"h2");
            let server_cert = conn.peer_certificates().unwrap()[0].to_vec();
            let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let io = TokioIo::new(tls);
            let mut req = if h2 {
                Request::get(format!("https://localhost:{}{path}", addr.port()))
            } else {
                Request::get(path).header("host", "localhost")
            };
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Empty::<Bytes>::new()).unwrap();
            let resp = if h2 {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(conn);
                send.send_request(req).await
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("http1 handshake: {e}"))?;
                tokio::spawn(conn);
                send.send_request(req).await
            }
            .map_err(|e| format!("request: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                version: parts.version,
                body,
                server_cert,
                resumed,
            })
        })
        .await
    }
}

/// The echo server behind TLS (a leaf from `server_ca` for `localhost` and
/// `127.0.0.1`, ALPN `http/1.1`) that requires a client certificate
/// chaining to `client_ca`: a handshake without one fails. Every response
/// closes its connection, so each request makes a new handshake.
pub fn mtls_echo_upstream(server_ca: &TestCa, client_ca: &TestCa) -> super::Upstream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.ca_der()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let (cert_pem, key_pem) = server_ca.issue(&["localhost", "127.0.0.1"]);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    super::spawn_http(
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        |req| async move {
            let mut resp = super::echo_handler(req).await;
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            resp
        },
    )
}
