//! TLS on the proxy listener, and client certificates (mTLS).
//!
//! [`acceptor`] turns `proxy.tls` into a [`TlsAcceptor`] (rustls with the
//! ring provider, ALPN `h2` then `http/1.1`). Everything it reads is checked
//! at startup, before the listener binds: an unreadable or invalid
//! certificate, key or CA (a serving certificate outside its validity
//! period, an encrypted key, a key type rustls cannot sign with) is a
//! [`ConfigError`] naming the field.
//!
//! The certificate is served by [`CertResolver`], which holds the current
//! [`CertifiedKey`] in an [`ArcSwap`]. A background task re-reads
//! `cert_file` and `key_file` every `reload_interval` (1 s by default) for
//! the same reason `file` secrets are polled (see [`proxy_core::secret`]):
//! a Kubernetes Secret volume or cert-manager rewrites the files in place
//! by swapping a symlink, which notifications miss on some filesystems. A
//! new pair is used for the next handshake; established connections keep
//! the certificate they negotiated. A pair that does not load (a half
//! written file, a key that does not match the certificate, a certificate
//! that has expired or is not valid yet) is logged once and the previous
//! certificate stays in service. The reads run on the blocking pool,
//! bounded by a timeout, at most one outstanding, and only regular files
//! are read ([`proxy_core::upstream::client_cert::files`]): a hung mount
//! or a FIFO must not stall the runtime, which may have a single worker. A
//! read that does not finish counts as a pair that does not load.
//! `client_ca_file` is read once: changing the client CA needs a restart.
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
use proxy_core::upstream::client_cert::files::{self as cert_files, BlockingReads};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
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
use x509_parser::time::ASN1Time;

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
    audit::metrics::record_tls_certificate(not_after(&key).map(|(_, at)| at));
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
    cert_files::read_pem_file(path).map_err(|e| FieldError::new(field, e))
}

/// Reads and checks a certificate chain and its key. Returns the key and the
/// fingerprint of the bytes it came from.
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, u64), FieldError> {
    let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
    let key = parse_pair(cert_file, key_file, &cert_pem, &key_pem, provider)?;
    Ok((key, fingerprint(&cert_pem, &key_pem)))
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), FieldError> {
    Ok((
        read(cert_file, "proxy.tls.cert_file")?,
        read(key_file, "proxy.tls.key_file")?,
    ))
}

/// The chain and key read from `cert_file` and `key_file`, checked: X.509,
/// a leaf valid now, a usable key that matches it.
fn parse_pair(
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, FieldError> {
    let chain = parse_certs(cert_pem, cert_file, "proxy.tls.cert_file")?;
    check_validity(&chain, cert_file)?;
    let key_err = |e| FieldError::new("proxy.tls.key_file", e);
    let key = cert_files::private_key(key_pem, key_file).map_err(key_err)?;
    cert_files::certified_key(
        chain,
        key,
        provider,
        key_file,
        &format!("{} (proxy.tls.cert_file)", cert_file.display()),
    )
    .map_err(key_err)
}

/// Refuses a leaf that has expired or is not valid yet: clients would
/// refuse every handshake, so it must neither start latchkey nor replace
/// a certificate that works.
fn check_validity(chain: &[CertificateDer<'_>], cert_file: &Path) -> Result<(), FieldError> {
    let Some(leaf) = chain.first() else {
        return Ok(());
    };
    // Parsed (and checked) by `parse_certs` already.
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return Ok(());
    };
    let validity = cert.validity();
    let now = ASN1Time::now();
    let problem = if now > validity.not_after {
        format!("the certificate expired on {}", validity.not_after)
    } else if now < validity.not_before {
        format!("the certificate is not valid until {}", validity.not_before)
    } else {
        return Ok(());
    };
    Err(FieldError::new(
        "proxy.tls.cert_file",
        format!("{}: {problem}", cert_file.display()),
    ))
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
        .map_err(|e| {
            err(format!(
                "not a PEM certificate file ({})",
                cert_files::pem_problem(&e)
            ))
        })?;
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
    let mut reads = BlockingReads::default();
    loop {
        tick.tick().await;
        if weak.strong_count() == 0 {
            return;
        }
        let (cert, key, known) = (files.cert.clone(), files.key.clone(), files.fingerprint);
        let provider = provider.clone();
        let reloaded = reads
            .run(cert_files::READ_TIMEOUT, move || {
                reload(&cert, &key, known, &provider)
            })
            .await
            .unwrap_or_else(|e| {
                Err(FieldError::new(
                    "proxy.tls.cert_file",
                    format!("{} and {}: {e}", files.cert.display(), files.key.display()),
                ))
            });
        // Not held across the read: a resolver dropped meanwhile ends the
        // task.
        let Some(resolver) = weak.upgrade() else {
            return;
        };
        match reloaded {
            Ok(None) => {
                // The files are the pair served (again).
                if last_problem.take().is_some() {
                    audit::metrics::record_tls_certificate_unchanged();
                }
            }
            Ok(Some((key, print))) => {
                files.fingerprint = print;
                last_problem = None;
                let expires = not_after(&key);
                tracing::info!(
                    cert_file = %files.cert.display(),
                    not_after = expires.as_ref().map_or("unknown", |(text, _)| text.as_str()),
                    "proxy TLS certificate reloaded; new connections use it"
                );
                resolver.current.store(Arc::new(key));
                audit::metrics::record_tls_certificate_reload(true);
                audit::metrics::record_tls_certificate(expires.map(|(_, at)| at));
            }
            Err(e) => {
                audit::metrics::record_tls_certificate_reload(false);
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

/// Runs on the blocking pool: the pair if it changed since `known` (a
/// fingerprint) and loads, None if it did not change. A file that cannot
/// be read counts as a change (the error says why).
fn reload(
    cert_file: &Path,
    key_file: &Path,
    known: u64,
    provider: &CryptoProvider,
) -> Result<Option<(CertifiedKey, u64)>, FieldError> {
    let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
    let print = fingerprint(&cert_pem, &key_pem);
    if print == known {
        return Ok(None);
    }
    parse_pair(cert_file, key_file, &cert_pem, &key_pem, provider).map(|key| Some((key, print)))
}

/// The leaf's expiry, as the reload log line writes it and as a time.
fn not_after(key: &CertifiedKey) -> Option<(String, std::time::SystemTime)> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let at = cert.validity().not_after;
    let secs = u64::try_from(at.timestamp()).ok()?;
    Some((
        at.to_string(),
        std::time::UNIX_EPOCH + Duration::from_secs(secs),
    ))
}

pub mod failures;

#[cfg(test)]
mod tests;
