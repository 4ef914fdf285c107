//! TLS on the proxy listener, and client certificates (mTLS).
//!
//! [`acceptor`] turns `proxy.tls` into a [`TlsAcceptor`] (rustls with the
//! ring provider, ALPN `h2` then `http/1.1`). Everything it reads is checked
//! at startup, before the listener binds: an unreadable or invalid
//! certificate, key or CA is a [`ConfigError`] naming the field.
//!
//! The certificate is served by [`CertResolver`], which holds the current
//! [`CertifiedKey`] in an [`ArcSwap`]. A background task re-reads
//! `cert_file` and `key_file` every `reload_interval` (1 s by default) for
//! the same reason `file` secrets are polled (see [`proxy_core::secret`]):
//! a Kubernetes Secret volume or cert-manager rewrites the files in place
//! by swapping a symlink, which notifications miss on some filesystems. A
//! new pair is used for the next handshake; established connections keep
//! the certificate they negotiated. A pair that does not load (a half
//! written file, a key that does not match the certificate) is logged and
//! the previous certificate stays in service. `client_ca_file` is read once:
//! changing the client CA needs a restart.
//!
//! With `client_ca_file`, the handshake asks for a client certificate and
//! verifies it against that CA (webpki); [`peer_identity`] then extracts the
//! leaf's URI SANs (SPIFFE ids) for client auth
//! ([`proxy_core::client_auth`]).
//!
//! A failed handshake is counted and logged by reason ([`failures`]).

use arc_swap::ArcSwap;
use proxy_core::config::{ClientCertMode, ConfigError, FieldError, TlsSettings};
use proxy_core::context::PeerIdentity;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;

/// Builds the listener's acceptor from `settings`; `file` names the config in
/// errors. Starts the certificate reload task when a tokio runtime is
/// running; it ends once the acceptor (and every connection using it) is
/// gone.
pub fn acceptor(settings: &TlsSettings, file: &str) -> Result<TlsAcceptor, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errs = Vec::new();
    let key = match load_pair(&settings.cert_file, &settings.key_file, &provider) {
        Ok(k) => Some(k),
        Err(e) => {
            errs.push(e);
            None
        }
    };
    let verifier = match client_verifier(settings, &provider) {
        Ok(v) => v,
        Err(e) => {
            errs.push(e);
            None
        }
    };
    let Some((key, fingerprint)) = key else {
        return Err(ConfigError::new(file, errs));
    };
    if !errs.is_empty() {
        return Err(ConfigError::new(file, errs));
    }
    let config_err = |e: rustls::Error| ConfigError::single(file, "proxy.tls", e.to_string());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(CertResolver {
        current: ArcSwap::from_pointee(key),
    });
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(watch_files(
            Arc::downgrade(&resolver),
            Files {
                cert: settings.cert_file.clone(),
                key: settings.key_file.clone(),
                fingerprint,
            },
            provider,
            settings.reload_interval,
        ));
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Whether `settings` would load here (for `latchkey check`): the problems
/// [`acceptor`] would report, without starting anything.
pub fn check(settings: &TlsSettings) -> Vec<FieldError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errs = Vec::new();
    if let Err(e) = load_pair(&settings.cert_file, &settings.key_file, &provider) {
        errs.push(e);
    }
    if let Err(e) = client_verifier(settings, &provider) {
        errs.push(e);
    }
    errs
}

/// The verified client certificate of `conn`, if the caller sent one: its
/// leaf's URI SANs in certificate order (possibly none).
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(PeerIdentity {
        uri_sans: uri_sans(leaf).into(),
    })
}

/// The URI SANs of a DER certificate. The certificate was verified by
/// webpki before this runs, so a parse failure is unexpected; it yields no
/// SANs (the caller stays anonymous) rather than failing the connection.
fn uri_sans(der: &[u8]) -> Vec<String> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => {
            tracing::debug!(error = %e, "client certificate not parsed; no SANs used");
            return Vec::new();
        }
    };
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::debug!(error = %e, "client certificate SANs not parsed; none used");
            Vec::new()
        }
    }
}

// === impl CertResolver ===

/// Serves whatever certificate the reload task loaded last.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

// === loading ===

/// The files being watched and a hash of what was last read from them.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// Detects changes without keeping a copy of the private key around.
    fingerprint: u64,
}

fn fingerprint(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, FieldError> {
    std::fs::read(path)
        .map_err(|e| FieldError::new(field, format!("cannot read {}: {e}", path.display())))
}

/// Reads and checks a certificate chain and its key. Returns the key and the
/// fingerprint of the bytes it came from.
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, u64), FieldError> {
    let cert_pem = read(cert_file, "proxy.tls.cert_file")?;
    let key_pem = read(key_file, "proxy.tls.key_file")?;
    let print = fingerprint(&cert_pem, &key_pem);
    let chain = parse_certs(&cert_pem, cert_file, "proxy.tls.cert_file")?;
    // The PEM parser's messages name only markers and offsets, never key
    // material, but a generic message is enough here.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        FieldError::new(
            "proxy.tls.key_file",
            format!(
                "{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {}",
                key_file.display(),
                match e {
                    rustls::pki_types::pem::Error::NoItemsFound => "none found".to_string(),
                    other => other.to_string(),
                }
            ),
        )
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => FieldError::new(
            "proxy.tls.key_file",
            format!(
                "{} does not match the certificate in {} (proxy.tls.cert_file)",
                key_file.display(),
                cert_file.display()
            ),
        ),
        other => FieldError::new(
            "proxy.tls.key_file",
            format!("{}: unusable private key: {other}", key_file.display()),
        ),
    })?;
    Ok((key, print))
}

/// PEM certificates, each checked to be X.509, at least one.
fn parse_certs(
    pem: &[u8],
    path: &Path,
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let err = |m: String| FieldError::new(field, format!("{}: {m}", path.display()));
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(err(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| err(format!("certificate #{} is not valid X.509 ({e})", i + 1)))?;
    }
    Ok(certs)
}

/// The client verifier for `client_ca_file`, or None when there is none.
fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, FieldError> {
    let (Some(ca_file), Some(mode)) = (&settings.client_ca_file, settings.client_cert_mode())
    else {
        return Ok(None);
    };
    const FIELD: &str = "proxy.tls.client_ca_file";
    let pem = read(ca_file, FIELD)?;
    let mut roots = RootCertStore::empty();
    for (i, der) in parse_certs(&pem, ca_file, FIELD)?.into_iter().enumerate() {
        roots.add(der).map_err(|e| {
            FieldError::new(
                FIELD,
                format!(
                    "{}: certificate #{} is not a usable CA: {e}",
                    ca_file.display(),
                    i + 1
                ),
            )
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if mode == ClientCertMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| FieldError::new(FIELD, format!("{}: {e}", ca_file.display())))
}

// === reload ===

/// Re-reads the certificate and key every `every` until the resolver is
/// dropped; see the module docs for why this polls.
async fn watch_files(
    weak: Weak<CertResolver>,
    mut files: Files,
    provider: Arc<CryptoProvider>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // The last problem logged, so a file that stays broken is reported once
    // rather than every second.
    let mut last_problem: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(resolver) = weak.upgrade() else {
            return;
        };
        // Two small files on a local volume: reading them inline once a
        // second is cheap and keeps the task on the runtime's clock.
        let changed = match (std::fs::read(&files.cert), std::fs::read(&files.key)) {
            (Ok(c), Ok(k)) => fingerprint(&c, &k) != files.fingerprint,
            // Unreadable now: let load_pair say why (below).
            _ => true,
        };
        if !changed {
            last_problem = None;
            continue;
        }
        match load_pair(&files.cert, &files.key, &provider) {
            Ok((key, print)) => {
                files.fingerprint = print;
                last_problem = None;
                tracing::info!(
                    cert_file = %files.cert.display(),
                    not_after = not_after(&key).as_deref().unwrap_or("unknown"),
                    "proxy TLS certificate reloaded; new connections use it"
                );
                resolver.current.store(Arc::new(key));
            }
            Err(e) => {
                let problem = format!("{}: {}", e.path, e.message);
                if last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        error = %problem,
                        "proxy TLS certificate files changed but do not load; still serving the previous certificate"
                    );
                    last_problem = Some(problem);
                }
            }
        }
    }
}

/// The leaf's expiry, for the reload log line.
fn not_after(key: &CertifiedKey) -> Option<String> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(cert.validity().not_after.to_string())
}

pub mod failures;

#[cfg(test)]
mod tests;
