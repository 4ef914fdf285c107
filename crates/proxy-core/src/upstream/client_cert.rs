//! A client certificate for upstreams that ask for one (mTLS to the
//! upstream: nginx's `proxy_ssl_certificate` and
//! `proxy_ssl_certificate_key`, Envoy's upstream `tls_certificates`).
//!
//! `routes[].client_cert_file` and `client_key_file` are read and checked
//! when the config is built (an unreadable or non-regular file, a chain
//! without a certificate, an encrypted key, a key that is not PEM, does not
//! match the certificate or is of a type rustls cannot use is an error
//! naming the field). A background task then compares the two files' size,
//! modification and change times and inode with what was loaded every
//! [`POLL`] (two `stat` calls a second, nothing per handshake or request):
//! a pair rotated in place by cert-manager or a Secret volume is presented
//! from the next connection after it is seen, without a reload (sessions
//! are not resumed for such connections, see `tls_config`). A pair that
//! does not load (half written, key and certificate from different
//! rotations, unreadable) leaves the last good one in use and is logged,
//! once per change; any later change to either file (a fixed permission
//! changes the change time) makes it try again.
//!
//! The handshake only loads the current pair: the `stat` and the reads run
//! on the blocking pool, bounded by [`files::READ_TIMEOUT`], so a hung
//! mount cannot stall the runtime ([`files`]). The task ends once the
//! [`ClientCert`] (the connector that uses it) is dropped.

use arc_swap::ArcSwap;
use files::BlockingReads;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

pub mod files;

/// How often the files' metadata is compared with what was loaded.
pub const POLL: Duration = Duration::from_secs(1);

/// A certificate file and its key file; see the module docs.
#[derive(Debug)]
pub struct ClientCert {
    /// The last pair that loaded; the watch task holds a weak reference.
    current: Arc<ArcSwap<CertifiedKey>>,
}

/// Of both files: size, modification time, and (on Unix) the change time
/// and inode, which a `chmod` or a rename changes where the rest may not.
type Stamp = [Option<(u64, SystemTime, i64, i64, u64)>; 2];

/// Which file a load error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertField {
    /// `client_cert_file`.
    Cert,
    /// `client_key_file`.
    Key,
}

impl ClientCert {
    /// Reads and checks the pair now (synchronously: this runs before the
    /// config serves; FIFOs and other non-regular files are refused rather
    /// than read). Inside a tokio runtime, starts the task that picks up
    /// rotations.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, (ClientCertField, String)> {
        let stamp = stamp(cert_file, key_file);
        let key = read_pair(cert_file, key_file, &provider)?;
        let current = Arc::new(ArcSwap::from_pointee(key));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(watch(
                Arc::downgrade(&current),
                Files {
                    cert: cert_file.to_path_buf(),
                    key: key_file.to_path_buf(),
                    provider,
                },
                stamp,
                POLL,
            ));
        }
        Ok(Self { current })
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The watched pair.
#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

/// What one poll found: the files' stamp, and the pair read if it changed.
type Polled = (
    Stamp,
    Option<Result<CertifiedKey, (ClientCertField, String)>>,
);

/// Every `every`, re-reads the pair if its stamp changed since `loaded`,
/// until `weak`'s [`ClientCert`] is dropped.
async fn watch(
    weak: Weak<ArcSwap<CertifiedKey>>,
    files: Files,
    mut loaded: Stamp,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut reads = BlockingReads::<Polled>::default();
    // Whether a stuck read was logged, so it is logged once.
    let mut stuck_logged = false;
    loop {
        tick.tick().await;
        if weak.strong_count() == 0 {
            return;
        }
        let polled = reads
            .run(files::READ_TIMEOUT, {
                let files = files.clone();
                move || {
                    let now = stamp(&files.cert, &files.key);
                    if now == loaded {
                        return (now, None);
                    }
                    let pair = read_pair(&files.cert, &files.key, &files.provider);
                    (now, Some(pair))
                }
            })
            .await;
        // Not held across the read: a certificate dropped meanwhile ends
        // the task.
        let Some(current) = weak.upgrade() else {
            return;
        };
        match polled {
            Ok((now, pair)) => {
                stuck_logged = false;
                loaded = now;
                match pair {
                    None => {}
                    Some(Ok(key)) => {
                        tracing::info!(
                            cert_file = %files.cert.display(),
                            "the upstream client certificate changed; new connections present the new one"
                        );
                        current.store(Arc::new(key));
                    }
                    Some(Err((_, e))) => tracing::warn!(
                        cert_file = %files.cert.display(),
                        error = %e,
                        "the upstream client certificate changed but does not load; the previous one stays in use"
                    ),
                }
            }
            // The stamp stays: the files are read again once the stuck
            // read returns.
            Err(e) => {
                if !stuck_logged {
                    stuck_logged = true;
                    tracing::warn!(
                        cert_file = %files.cert.display(),
                        key_file = %files.key.display(),
                        error = %e,
                        "the upstream client certificate files could not be checked; the previous pair stays in use"
                    );
                }
            }
        }
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        #[cfg(unix)]
        let (ctime, ctime_ns, ino) = {
            use std::os::unix::fs::MetadataExt as _;
            (m.ctime(), m.ctime_nsec(), m.ino())
        };
        #[cfg(not(unix))]
        let (ctime, ctime_ns, ino) = (0, 0, 0);
        Some((m.len(), m.modified().ok()?, ctime, ctime_ns, ino))
    };
    [one(cert_file), one(key_file)]
}

/// The pair's PEM bytes, read once and checked (a chain, a key that fits
/// it): for a client that takes the bytes itself (Redis).
pub fn read_checked(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<u8>, Vec<u8>), (ClientCertField, String)> {
    let (cert_pem, key_pem) = read_files(cert_file, key_file)?;
    parse_pair(cert_file, key_file, &cert_pem, &key_pem, provider)?;
    Ok((cert_pem, key_pem))
}

fn read_files(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<u8>, Vec<u8>), (ClientCertField, String)> {
    let read = |p: &Path, f| files::read_pem_file(p).map_err(|e| (f, e));
    Ok((
        read(cert_file, ClientCertField::Cert)?,
        read(key_file, ClientCertField::Key)?,
    ))
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (ClientCertField, String)> {
    let (cert_pem, key_pem) = read_files(cert_file, key_file)?;
    parse_pair(cert_file, key_file, &cert_pem, &key_pem, provider)
}

/// `cert_pem` and `key_pem` (read from the two files, named in errors) as
/// a key rustls can present.
fn parse_pair(
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (ClientCertField, String)> {
    use ClientCertField::{Cert, Key};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                Cert,
                format!(
                    "{} is not valid PEM: {}",
                    cert_file.display(),
                    files::pem_problem(&e)
                ),
            )
        })?;
    if chain.is_empty() {
        return Err((
            Cert,
            format!("{} holds no certificate", cert_file.display()),
        ));
    }
    let key = files::private_key(key_pem, key_file).map_err(|e| (Key, e))?;
    files::certified_key(
        chain,
        key,
        provider,
        key_file,
        &cert_file.display().to_string(),
    )
    .map_err(|e| (Key, e))
}

#[cfg(test)]
mod tests;
