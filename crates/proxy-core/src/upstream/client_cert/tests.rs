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

/// A self-signed P-256 pair made by `openssl` (proxy-core has no rcgen):
/// `(cert_pem, key_pem)`.
fn pair(dir: &Path) -> (String, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=client",
            "-days",
            "1",
            "-keyout",
            "new.key",
            "-out",
            "new.crt",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(dir.join("new.crt")).unwrap(),
        std::fs::read_to_string(dir.join("new.key")).unwrap(),
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn presented(c: &ClientCert) -> Vec<u8> {
    c.resolve(&[], &[]).unwrap().cert[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// One poll: the clock moves a period on, and the read on the blocking pool
/// (real time: the paused clock does not wait for it) finishes.
async fn poll_once() {
    tokio::time::advance(POLL).await;
    for _ in 0..5 {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(2));
    }
    tokio::task::yield_now().await;
}

/// A pair rotated in place, certificate first: the old pair is presented
/// until the key matches again, then the new one; the handshake itself
/// reads nothing. The task ends with the certificate.
#[tokio::test(start_paused = true)]
async fn a_rotation_is_picked_up_by_the_poll_and_the_task_ends_with_the_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let first = pair(dir.path());
    std::fs::write(&cert, &first.0).unwrap();
    std::fs::write(&key, &first.1).unwrap();
    let loaded = stamp(&cert, &key);
    let current = Arc::new(ArcSwap::from_pointee(
        read_pair(&cert, &key, &provider()).unwrap(),
    ));
    let task = tokio::spawn(watch(
        Arc::downgrade(&current),
        Files {
            cert: cert.clone(),
            key: key.clone(),
            provider: provider(),
        },
        loaded,
        POLL,
    ));
    let client = ClientCert { current };
    tokio::task::yield_now().await;

    let second = pair(dir.path());
    std::fs::write(&cert, &second.0).unwrap();
    // Not read by the handshake: only the poll picks it up.
    assert_eq!(presented(&client), der(&first.0));
    for _ in 0..3 {
        poll_once().await;
    }
    assert_eq!(
        presented(&client),
        der(&first.0),
        "a mismatched pair was used"
    );
    std::fs::write(&key, &second.1).unwrap();
    for _ in 0..20 {
        if presented(&client) == der(&second.0) {
            break;
        }
        poll_once().await;
    }
    assert_eq!(presented(&client), der(&second.0));

    drop(client);
    // The paused clock moves on by itself while the task waits.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the watch task outlived its certificate")
        .unwrap();
}
