//! HTTP clients for upstreams: pooled hyper-util clients over rustls.
//!
//! One client (and so one connection pool) per distinct TLS trust and connect
//! timeout, shared by every route that needs the same, so routes to one
//! upstream share warm connections. TLS trusts the web PKI roots plus an
//! optional per-route CA bundle; ALPN offers h2 and http/1.1, so upstreams that
//! speak h2 get it.

use crate::ProxyBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client type used to reach upstreams.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// Why a client could not be built (a bad CA file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBuildError(pub String);

/// Builds and shares upstream clients.
#[derive(Debug, Default)]
pub struct UpstreamClients {
    cache: Mutex<HashMap<(Option<PathBuf>, Duration), HttpClient>>,
}

impl UpstreamClients {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client for this trust and connect timeout, built on first use.
    pub fn get(
        &self,
        ca_file: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<HttpClient, ClientBuildError> {
        let key = (ca_file.map(Path::to_path_buf), connect_timeout);
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| ClientBuildError("client cache poisoned".into()))?;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let client = build_client(ca_file, connect_timeout)?;
        cache.insert(key, client.clone());
        Ok(client)
    }
}

/// Builds one pooled client.
pub fn build_client(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpClient, ClientBuildError> {
    let tls = tls_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ClientBuildError(format!("cannot read CA file {}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ClientBuildError(format!("CA file {} is not valid PEM: {e}", path.display()))
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
