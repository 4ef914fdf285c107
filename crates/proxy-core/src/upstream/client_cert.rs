//! A client certificate for upstreams that ask for one (mTLS to the
//! upstream: nginx's `proxy_ssl_certificate` and
//! `proxy_ssl_certificate_key`, Envoy's upstream `tls_certificates`).
//!
//! `routes[].client_cert_file` and `client_key_file` are read and checked
//! when the config is built (an unreadable file, a chain without a
//! certificate, a key that is not PEM or does not match the certificate is
//! an error naming the field). Before each new upstream TLS connection the
//! two files' size, modification and change times and inode are compared
//! with what was loaded (two `stat` calls per handshake, nothing per
//! request): a pair rotated in place by cert-manager or a Secret volume is
//! presented from the next connection on, without a reload (sessions are
//! not resumed for such connections, see `tls_config`). A pair that does
//! not load (half written, key and certificate from different rotations,
//! unreadable) leaves the last good one in use and is logged, once per
//! change; any later change to either file (a fixed permission changes
//! the change time) makes it try again.

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A certificate file and its key file; see the module docs.
#[derive(Debug)]
pub struct ClientCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files as they were when `key` (or the last failed attempt) was
    /// read.
    stamp: Stamp,
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
    /// Reads and checks the pair now.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, (ClientCertField, String)> {
        let stamp = stamp(cert_file, key_file);
        let key = read_pair(cert_file, key_file, &provider)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: Mutex::new(Loaded {
                key: Arc::new(key),
                stamp,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        // Replaced whole: a panic cannot leave it half updated.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let now = stamp(&self.cert_file, &self.key_file);
        let mut current = self.lock();
        if now != current.stamp {
            current.stamp = now;
            match read_pair(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => current.key = Arc::new(key),
                Err((_, e)) => tracing::warn!(
                    cert_file = %self.cert_file.display(),
                    error = %e,
                    "the upstream client certificate changed but does not load; the previous one stays in use"
                ),
            }
        }
        Some(current.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
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
    let read = |p: &Path, f| {
        std::fs::read(p).map_err(|e| (f, format!("cannot read {}: {e}", p.display())))
    };
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
                format!("{} is not valid PEM: {e}", cert_file.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            Cert,
            format!("{} holds no certificate", cert_file.display()),
        ));
    }
    // The PEM parser's messages name only markers and offsets, never key
    // material; a fixed message keeps that a guarantee.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        (
            Key,
            format!("{} holds no PEM private key", key_file.display()),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            Key,
            format!(
                "{} does not fit {}: {e}",
                key_file.display(),
                cert_file.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that leaves size and modification time alone (a fixed
    /// permission, a file replaced by a rename) still changes the stamp, so
    /// a pair that failed to load for such a reason is read again.
    #[test]
    #[cfg(unix)]
    fn the_stamp_sees_permission_changes_and_renames() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let before = stamp(&cert, &key);
        assert_eq!(before, stamp(&cert, &key), "stable while nothing changes");

        // Only the change time moves (it ticks at the kernel's timestamp
        // granularity, so toggle the mode until it has).
        let mtime = std::fs::metadata(&key).unwrap().modified().unwrap();
        let mut chmodded = before;
        for i in 0..100_000u32 {
            let mode = if i % 2 == 0 { 0o600 } else { 0o644 };
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            chmodded = stamp(&cert, &key);
            if chmodded != before {
                break;
            }
        }
        assert_ne!(before, chmodded, "a chmod went unnoticed");
        assert_eq!(
            chmodded[1].map(|s| (s.0, s.1)),
            Some((3, mtime)),
            "size and mtime unchanged"
        );

        // The same size and mtime, by a rename: another inode.
        let next = dir.path().join("next.pem");
        std::fs::write(&next, "cer2").unwrap();
        let cert_mtime = std::fs::metadata(&cert).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(cert_mtime)
            .unwrap();
        std::fs::rename(&next, &cert).unwrap();
        assert_ne!(chmodded, stamp(&cert, &key), "a rename went unnoticed");
    }
}
