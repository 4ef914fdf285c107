//! Reading certificate and key files, for the upstream client certificate
//! and the proxy listener's certificate (`proxy.tls`, in the `latchkey`
//! crate).
//!
//! A read must never hang the runtime, which may have a single worker
//! thread: [`read_pem_file`] refuses anything but a regular file (a FIFO
//! would block the open until a writer comes) and files over
//! [`MAX_PEM_FILE`], and the watchers run it through [`BlockingReads`]
//! (the blocking pool, bounded by [`READ_TIMEOUT`], at most one read
//! outstanding), as `file` secrets are read (see `secret::watch`).
//!
//! [`private_key`] and [`certified_key`] say why a key does not load:
//! encrypted, not PEM, not the certificate's, or of a type or size rustls
//! cannot sign with. Messages name files, never key material: the PEM
//! parser's own messages quote the file, so [`pem_problem`] says in fixed
//! words what it found wrong.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The largest certificate or key file read (1 MiB): a chain of a few
/// certificates is a few KiB; anything larger is the wrong file.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// How long reading a certificate and key may take before the attempt
/// counts as failed: two small files, anything near this is a hung mount.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole file at `path`, if it is a regular file of at most
/// [`MAX_PEM_FILE`] bytes. The error starts `cannot read PATH`.
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |why: String| format!("cannot read {}: {why}", path.display());
    // A FIFO would block the open until a writer comes, for ever.
    let meta = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if !meta.is_file() {
        return Err(cannot(
            "not a regular file (a named pipe or a device?)".to_string(),
        ));
    }
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| cannot(e.to_string()))?;
    if pem.len() as u64 > MAX_PEM_FILE {
        return Err(cannot(format!(
            "larger than {} KiB: not a PEM certificate or key (the wrong file?)",
            MAX_PEM_FILE >> 10
        )));
    }
    Ok(pem)
}

/// The private key in `pem`, read from `key_file` (named in errors).
pub fn private_key(pem: &[u8], key_file: &Path) -> Result<PrivateKeyDer<'static>, String> {
    if is_encrypted(pem) {
        return Err(format!(
            "{} is encrypted; latchkey takes no passphrase (decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`)",
            key_file.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!(
            "{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {}",
            key_file.display(),
            match e {
                pem::Error::NoItemsFound => "none found",
                other => pem_problem(&other),
            }
        )
    })
}

/// What is wrong with a PEM file, in words that never quote it.
///
/// The parser's own messages quote the file: a section start it cannot
/// read is quoted whole, and the end marker it looked for is made from the
/// text after `-----BEGIN `. A key whose line breaks were lost (written on
/// one line, or with literal `\n`s, both common when a key is pasted into
/// a Secret) is such a line, so the message would hold the whole key.
pub fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => {
            "a PEM section has no matching END line (were the line breaks lost?)"
        }
        pem::Error::IllegalSectionStart { .. } => {
            "a PEM BEGIN line is malformed (were the line breaks lost?)"
        }
        pem::Error::Base64Decode(_) => "a PEM section's body is not valid base64",
        pem::Error::NoItemsFound => "no PEM section of the expected type",
        pem::Error::SectionTooLarge => "a PEM section is larger than 256 MB",
        // Only from the `std::io` readers, which nothing here uses.
        _ => "not readable as PEM",
    }
}

/// An encrypted PKCS#8 key, or a legacy PEM one (`Proc-Type: 4,ENCRYPTED`
/// under `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`).
fn is_encrypted(pem: &[u8]) -> bool {
    let has = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

/// `chain` and `key` as a key rustls can use. `key_file` and `cert` (the
/// certificate file as errors should name it) describe them.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    key_file: &Path,
    cert: &str,
) -> Result<CertifiedKey, String> {
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {cert}",
            key_file.display()
        ),
        // rustls reports the rest as "failed to parse private key as RSA,
        // ECDSA, or EdDSA", which reads like a corrupt file.
        _ => format!(
            "{}: key type or size not supported (RSA 2048-8192 bits, ECDSA P-256/P-384, Ed25519)",
            key_file.display()
        ),
    })
}

/// Blocking reads run on the blocking pool, each bounded by a timeout, at
/// most one outstanding: a read that never returns (a hung NFS or FUSE
/// mount) costs one blocked thread, not one more per poll.
#[derive(Debug)]
pub struct BlockingReads<T> {
    stuck: Option<JoinHandle<T>>,
}

impl<T> Default for BlockingReads<T> {
    fn default() -> Self {
        Self { stuck: None }
    }
}

impl<T: Send + 'static> BlockingReads<T> {
    /// Runs `read` on the blocking pool and waits up to `timeout` for it.
    /// While an earlier read that timed out has not returned, fails at
    /// once without starting another, with the same message (a stuck mount
    /// is logged once, not once per poll).
    pub async fn run<F>(&mut self, timeout: Duration, read: F) -> Result<T, String>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let timed_out = || {
            format!(
                "the read did not finish within {} (a hung mount?)",
                humantime::format_duration(timeout)
            )
        };
        let mut handle = match self.stuck.take() {
            Some(stuck) if !stuck.is_finished() => {
                self.stuck = Some(stuck);
                return Err(timed_out());
            }
            // One that has returned since is dropped unread: the files may
            // have changed, read them afresh.
            _ => tokio::task::spawn_blocking(read),
        };
        match tokio::time::timeout(timeout, &mut handle).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(format!("the read failed: {e}")),
            Err(_) => {
                self.stuck = Some(handle);
                Err(timed_out())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A read that never returns times out and is not piled up: later
    /// calls fail at once without starting another until it returns.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_read_times_out_and_is_not_piled_up() {
        let started = Arc::new(AtomicUsize::new(0));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        let mut reads = BlockingReads::default();
        let read =
            |started: &Arc<AtomicUsize>,
             wait: &Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>| {
                let (started, wait) = (started.clone(), wait.clone());
                move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = wait.lock().unwrap().recv();
                    7
                }
            };
        let first = {
            let f = reads.run(READ_TIMEOUT, read(&started, &wait));
            tokio::pin!(f);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(f.as_mut().poll(&mut cx).is_pending());
            // `advance`, not `sleep`: a running blocking read holds the
            // auto-advance.
            tokio::time::advance(READ_TIMEOUT).await;
            f.await
        };
        let e = first.unwrap_err();
        assert!(e.contains("did not finish within 5s"), "{e}");
        for _ in 0..3 {
            assert_eq!(
                reads.run(READ_TIMEOUT, read(&started, &wait)).await,
                Err(e.clone())
            );
        }
        // The first read is on another thread: let it start.
        for _ in 0..2000 {
            if started.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "reads piled up");

        // Once it returns, the next call reads afresh.
        release.send(()).unwrap();
        while reads.stuck.as_ref().is_some_and(|h| !h.is_finished()) {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(1));
        }
        release.send(()).unwrap();
        assert_eq!(reads.run(READ_TIMEOUT, read(&started, &wait)).await, Ok(7));
        assert_eq!(started.load(Ordering::SeqCst), 2);
    }

    #[test]
    #[cfg(unix)]
    fn only_regular_files_of_a_sane_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let e = read_pem_file(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_pem_file(dir.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 2 << 20]).unwrap();
        let e = read_pem_file(&big).unwrap_err();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
        let e = read_pem_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
        std::fs::write(&big, "pem").unwrap();
        assert_eq!(read_pem_file(&big).unwrap(), b"pem");
    }

    #[test]
    fn encrypted_keys_are_recognised() {
        let e = private_key(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            Path::new("/k.pem"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("/k.pem is encrypted; latchkey takes no passphrase"),
            "{e}"
        );
        let e = private_key(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            Path::new("/k.pem"),
        )
        .unwrap_err();
        assert!(e.contains("is encrypted"), "{e}");
        let e = private_key(b"garbage", Path::new("/k.pem")).unwrap_err();
        assert!(e.contains("holds no usable PEM private key"), "{e}");
    }
}
