//! Connections to upstreams: one [`OriginPool`] per origin, TLS by rustls.
//!
//! Routes get their pool when the config is built: one per distinct TLS
//! trust, connect timeout and origin (scheme + authority), shared by every
//! route that needs the same, so routes to one upstream share warm
//! connections. Across a reload the old and new routes share them too; the
//! cache holds pools weakly, so a pool no route uses any more closes. TLS
//! trusts the web PKI roots plus an optional per-route CA bundle; ALPN
//! offers h2 and http/1.1, so upstreams that speak h2 get it. [`pool`] has
//! the connection handling.
//!
//! A CA bundle is read each time a config is built (at startup and on every
//! reload), and the trust is keyed by its contents, not its path: a bundle
//! rotated in place (cert-manager's trust-manager, a Secret or ConfigMap
//! volume) is in force from the next reload, on new connections, and a
//! bundle that no longer loads fails that reload, naming the route's
//! `ca_file`, instead of surfacing at the next restart. A route can also
//! present a client certificate to an upstream that asks for one
//! ([`client_cert`]).
//!
//! [`HttpClient`] (hyper-util's pooled client over the same connector) is
//! for latchkey's own calls off the request path: token endpoints.

pub mod client_cert;
pub mod pool;

pub use pool::{OriginPool, PoolSettings, PooledBody, Resent, SendError};

use crate::ProxyBody;
use crate::config::UpstreamUrl;
use client_cert::{ClientCert, ClientCertField};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The client type used to reach upstreams.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Why a client could not be built (a bad CA file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBuildError(pub String);

/// Why a route's pool could not be built: the route field at fault
/// (`ca_file`, `client_cert_file`, `client_key_file`) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PoolError {
    /// The route field.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// The TLS a route's upstream connections use beyond the web PKI roots.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpstreamTls<'a> {
    /// Extra CA bundle (`routes[].ca_file`).
    pub ca_file: Option<&'a Path>,
    /// Client certificate and key files (`routes[].client_cert_file`,
    /// `client_key_file`).
    pub client_cert: Option<(&'a Path, &'a Path)>,
}

impl From<(ClientCertField, String)> for PoolError {
    fn from((field, message): (ClientCertField, String)) -> Self {
        Self {
            field: match field {
                ClientCertField::Cert => "client_cert_file",
                ClientCertField::Key => "client_key_file",
            },
            message,
        }
    }
}

impl<'a> UpstreamTls<'a> {
    /// From the config's optional files (a client certificate needs both
    /// of its files).
    pub fn from_files(
        ca_file: Option<&'a Path>,
        client_cert_file: Option<&'a Path>,
        client_key_file: Option<&'a Path>,
    ) -> Self {
        Self {
            ca_file,
            client_cert: client_cert_file.zip(client_key_file),
        }
    }
}

/// The connector settings a pool is built with: the CA bundle (its path,
/// for errors, and the contents read), the client certificate's files and
/// the connect timeout.
type ConnectorKey = (
    Option<(PathBuf, Arc<[u8]>)>,
    Option<(PathBuf, PathBuf)>,
    Duration,
);

/// Builds and shares upstream connection pools.
#[derive(Debug, Default)]
pub struct UpstreamClients {
    cache: Mutex<Cache>,
    settings: PoolSettings,
}

#[derive(Debug, Default)]
struct Cache {
    /// Per key: the connector (ALPN h2 and http/1.1) and one offering only
    /// http/1.1, for upgrade requests.
    connectors:
        HashMap<ConnectorKey, (HttpsConnector<HttpConnector>, HttpsConnector<HttpConnector>)>,
    /// Weak: a pool lives as long as a route (or a response body) holds
    /// it. A reload builds the new routes while the old ones still run, so
    /// origins both configs use keep their warm connections; an origin no
    /// route uses any more is dropped with its connections.
    pools: HashMap<(ConnectorKey, String), Weak<OriginPool>>,
    /// Dead entries are pruned when the map reaches this size.
    prune_at: usize,
}

impl UpstreamClients {
    /// An empty cache; pools get the default [`PoolSettings`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache whose pools use `settings`.
    pub fn with_settings(settings: PoolSettings) -> Self {
        Self {
            cache: Mutex::default(),
            settings,
        }
    }

    /// The pool for `upstream`'s origin with this TLS and connect
    /// timeout, built on first use.
    pub fn pool(
        &self,
        tls: UpstreamTls<'_>,
        connect_timeout: Duration,
        upstream: &UpstreamUrl,
    ) -> Result<Arc<OriginPool>, PoolError> {
        let ca_error = |e: ClientBuildError| PoolError {
            field: "ca_file",
            message: e.0,
        };
        let ca = match tls.ca_file {
            Some(path) => Some((path.to_path_buf(), read_ca(path).map_err(ca_error)?)),
            None => None,
        };
        // Loaded (and checked) at every config build, like the CA bundle.
        let client_cert = match tls.client_cert {
            Some((cert, key)) => Some(Arc::new(ClientCert::load(cert, key, provider())?)),
            None => None,
        };
        let key = (
            ca,
            tls.client_cert
                .map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
            connect_timeout,
        );
        let mut cache = self.cache.lock().map_err(|_| PoolError {
            field: "upstream",
            message: "client cache poisoned".into(),
        })?;
        let origin = upstream.origin();
        if let Some(p) = cache
            .pools
            .get(&(key.clone(), origin.clone()))
            .and_then(Weak::upgrade)
        {
            return Ok(p);
        }
        let (connector, h1_connector) = match cache.connectors.get(&key) {
            Some(c) => c.clone(),
            None => {
                let ca = key.0.as_ref().map(|(path, pem)| (path.as_path(), &pem[..]));
                let c = (
                    connector_with(ca, client_cert.clone(), connect_timeout, true)
                        .map_err(ca_error)?,
                    connector_with(ca, client_cert, connect_timeout, false).map_err(ca_error)?,
                );
                // A bundle rotated in place: its old trust builds no new
                // pools (those still in use keep their connector).
                if let Some((path, _)) = &key.0 {
                    cache.connectors.retain(|(ca, cert, timeout), _| {
                        *timeout != connect_timeout
                            || *cert != key.1
                            || ca.as_ref().is_none_or(|(p, _)| p != path)
                    });
                }
                cache.connectors.insert(key.clone(), c.clone());
                c
            }
        };
        let pool = Arc::new(
            OriginPool::new(
                connector,
                upstream.scheme.clone(),
                upstream.authority.clone(),
                self.settings,
                connect_timeout,
            )
            .with_h1_connector(h1_connector),
        );
        if cache.pools.len() >= cache.prune_at {
            // Amortised: a config of 10,000 routes does not scan the map
            // 10,000 times.
            cache.pools.retain(|_, p| p.strong_count() > 0);
            // And the connectors no live pool uses (a CA bundle, client
            // certificate or connect timeout no route has any more): a
            // client certificate's watcher ends with its last connector.
            let Cache {
                pools, connectors, ..
            } = &mut *cache;
            connectors.retain(|k, _| *k == key || pools.keys().any(|(pk, _)| pk == k));
            cache.prune_at = (cache.pools.len() * 2).max(64);
        }
        cache.pools.insert((key, origin), Arc::downgrade(&pool));
        Ok(pool)
    }
}

/// The TCP + TLS connector: `TCP_NODELAY`, TCP keepalive, the connect
/// timeout, rustls with ALPN h2 and http/1.1.
pub fn build_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientBuildError> {
    let pem = ca_file.map(read_ca).transpose()?;
    let ca = ca_file.zip(pem.as_deref());
    connector(ca, connect_timeout, true)
}

/// As [`build_connector`], offering only HTTP/1.1 in ALPN: for upgrade
/// requests (WebSocket), which h2 cannot carry.
pub fn build_h1_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientBuildError> {
    let pem = ca_file.map(read_ca).transpose()?;
    let ca = ca_file.zip(pem.as_deref());
    connector(ca, connect_timeout, false)
}

/// Whether the CA bundle at `path` loads now (read and parsed as
/// [`build_client`] would).
pub fn check_ca_file(path: &Path) -> Result<(), ClientBuildError> {
    read_checked_ca(path).map(|_| ())
}

/// The CA bundle at `path`, read once and checked as [`check_ca_file`]
/// does: for a client that takes the bytes itself (Redis).
pub fn read_checked_ca(path: &Path) -> Result<Arc<[u8]>, ClientBuildError> {
    let pem = read_ca(path)?;
    tls_config(Some((path, &pem)), None)?;
    Ok(pem)
}

/// A client certificate pair's PEM bytes, read once and checked as
/// [`check_tls`] does.
pub fn read_checked_client_cert(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), PoolError> {
    Ok(client_cert::read_checked(cert, key, &provider())?)
}

/// Whether a route's TLS files load now (as [`UpstreamClients::pool`]
/// would read them), without building or caching anything.
pub fn check_tls(tls: UpstreamTls<'_>) -> Result<(), PoolError> {
    if let Some(path) = tls.ca_file {
        check_ca_file(path).map_err(|e| PoolError {
            field: "ca_file",
            message: e.0,
        })?;
    }
    if let Some((cert, key)) = tls.client_cert {
        ClientCert::load(cert, key, provider())?;
    }
    Ok(())
}

/// The CA bundle at `path`, as read now.
///
/// Only a regular file of at most [`MAX_PEM_FILE`](client_cert::files::MAX_PEM_FILE)
/// bytes is read: a named pipe would block the read until a writer came.
pub fn read_ca(path: &Path) -> Result<Arc<[u8]>, ClientBuildError> {
    client_cert::files::read_pem_file(path)
        .map(Arc::from)
        // "cannot read PATH: ..." -> "cannot read CA file PATH: ...".
        .map_err(|e| ClientBuildError(e.replacen("cannot read ", "cannot read CA file ", 1)))
}

/// `ca`: the CA bundle's path (for errors) and contents.
fn connector(
    ca: Option<(&Path, &[u8])>,
    connect_timeout: Duration,
    h2: bool,
) -> Result<HttpsConnector<HttpConnector>, ClientBuildError> {
    connector_with(ca, None, connect_timeout, h2)
}

/// As [`connector`], presenting `client_cert` to upstreams that ask.
fn connector_with(
    ca: Option<(&Path, &[u8])>,
    client_cert: Option<Arc<ClientCert>>,
    connect_timeout: Duration,
    h2: bool,
) -> Result<HttpsConnector<HttpConnector>, ClientBuildError> {
    let tcp = tcp_connector(connect_timeout);
    if !h2 {
        // hyper-rustls' HTTP/1.1-only builder offers no ALPN at all; say
        // `http/1.1` so an upstream that would pick h2 cannot.
        let mut config = tls_config(ca, client_cert)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        return Ok(HttpsConnector::from((tcp, config)));
    }
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca, client_cert)?)
        .https_or_http();
    Ok(tls.enable_all_versions().wrap_connector(tcp))
}

/// TCP under the TLS: `TCP_NODELAY`, TCP keepalive, the connect timeout.
fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// Builds one hyper-util pooled client (for token endpoints).
pub fn build_client(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpClient, ClientBuildError> {
    let pem = ca_file.map(read_ca).transpose()?;
    build_client_with_ca(ca_file.zip(pem.as_deref()), connect_timeout)
}

/// As [`build_client`], trusting `ca`: a CA bundle's path (for errors) and
/// the contents already read from it.
pub fn build_client_with_ca(
    ca: Option<(&Path, &[u8])>,
    connect_timeout: Duration,
) -> Result<HttpClient, ClientBuildError> {
    let https = connector(ca, connect_timeout, true)?;
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// The crypto provider every upstream TLS config uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(
    ca: Option<(&Path, &[u8])>,
    client_cert: Option<Arc<ClientCert>>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some((path, pem)) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ClientBuildError(format!(
                    "CA file {} is not valid PEM: {}",
                    path.display(),
                    client_cert::files::pem_problem(&e)
                ))
            })?;
        if certs.is_empty() {
            return Err(ClientBuildError(format!(
                "CA file {} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            roots.add(c).map_err(|e| {
                ClientBuildError(format!(
                    "CA file {}: unusable certificate: {e}",
                    path.display()
                ))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    Ok(match client_cert {
        Some(cert) => {
            let mut config = config.with_client_cert_resolver(cert);
            // A resumed session skips the certificate request, and the
            // upstream would go on seeing the identity of the certificate
            // the session began with: a rotated one would never be
            // presented. Every connection makes a full handshake instead.
            config.resumption = rustls::client::Resumption::disabled();
            config
        }
        None => config.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_shared_per_origin_while_in_use_and_dropped_after() {
        let clients = UpstreamClients::new();
        let t = Duration::from_secs(1);
        let a = UpstreamUrl::parse("http://127.0.0.1:9/one").unwrap();
        let a2 = UpstreamUrl::parse("http://127.0.0.1:9/two").unwrap();
        let b = UpstreamUrl::parse("http://127.0.0.1:10").unwrap();
        let pa = clients.pool(UpstreamTls::default(), t, &a).unwrap();
        assert!(Arc::ptr_eq(
            &pa,
            &clients.pool(UpstreamTls::default(), t, &a2).unwrap()
        ));
        assert!(!Arc::ptr_eq(
            &pa,
            &clients.pool(UpstreamTls::default(), t, &b).unwrap()
        ));
        let other_timeout = clients
            .pool(UpstreamTls::default(), Duration::from_secs(2), &a)
            .unwrap();
        assert!(!Arc::ptr_eq(&pa, &other_timeout));
        // No route holds it any more: the next build gets a new one.
        let weak = Arc::downgrade(&pa);
        drop(pa);
        assert!(weak.upgrade().is_none(), "the cache does not keep it alive");
        let again = clients.pool(UpstreamTls::default(), t, &a).unwrap();
        assert_eq!(Arc::strong_count(&again), 1);
    }

    #[test]
    fn dead_entries_are_pruned() {
        let clients = UpstreamClients::new();
        let t = Duration::from_secs(1);
        for port in 1..=200u16 {
            let u = UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
            drop(clients.pool(UpstreamTls::default(), t, &u).unwrap());
        }
        let cache = clients.cache.lock().unwrap();
        assert!(cache.pools.len() < 130, "{} entries", cache.pools.len());
    }

    /// A connector (and a client certificate's watcher with it) no route
    /// uses any more is dropped at the next prune; one in use is kept.
    #[test]
    fn connectors_no_pool_uses_are_pruned() {
        let clients = UpstreamClients::new();
        let u = UpstreamUrl::parse("http://127.0.0.1:9").unwrap();
        let kept = clients
            .pool(UpstreamTls::default(), Duration::from_millis(5000), &u)
            .unwrap();
        for ms in 1..=200u64 {
            let t = Duration::from_millis(ms);
            drop(clients.pool(UpstreamTls::default(), t, &u).unwrap());
        }
        let cache = clients.cache.lock().unwrap();
        assert!(
            cache.connectors.len() < 130,
            "{} connectors",
            cache.connectors.len()
        );
        let in_use = (None, None, Duration::from_millis(5000));
        assert!(cache.connectors.contains_key(&in_use));
        drop(kept);
    }

    /// A `ca_file` that is a named pipe is refused, not read: the read
    /// would block until a writer came (startup, or a reload's build).
    #[test]
    fn a_ca_file_that_is_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let e = read_ca(&fifo).unwrap_err().0;
        assert!(
            e.starts_with(&format!(
                "cannot read CA file {}: not a regular file",
                fifo.display()
            )),
            "{e}"
        );
        let e = read_ca(&dir.path().join("missing.pem")).unwrap_err().0;
        assert!(e.starts_with("cannot read CA file "), "{e}");
    }
}
