use super::*;
use rcgen::{CertificateParams, KeyPair, SanType};

/// A self-signed leaf for `dns` plus `uris` as URI SANs: `(cert_pem, key_pem)`.
fn leaf(dns: &[&str], uris: &[&str]) -> (String, String) {
    let mut params =
        CertificateParams::new(dns.iter().map(|s| (*s).to_string()).collect::<Vec<_>>()).unwrap();
    for u in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*u).try_into().unwrap()));
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn settings(dir: &Path) -> TlsSettings {
    TlsSettings {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
        client_ca_file: None,
        client_cert: None,
        reload_interval: Duration::from_secs(1),
    }
}

fn write_pair(s: &TlsSettings, (cert, key): &(String, String)) {
    std::fs::write(&s.cert_file, cert).unwrap();
    std::fs::write(&s.key_file, key).unwrap();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn one_error(s: &TlsSettings) -> FieldError {
    let errs = check(s);
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn a_valid_pair_loads_and_bad_ones_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let pair = leaf(&["localhost"], &[]);

    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.cert_file");
    assert!(e.message.contains("cannot read"), "{}", e.message);

    write_pair(&s, &pair);
    assert!(check(&s).is_empty());
    assert!(acceptor(&s, "x.yaml").is_ok());

    std::fs::write(&s.cert_file, "not a certificate").unwrap();
    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.cert_file");
    assert!(e.message.contains("no PEM certificate"), "{}", e.message);

    // PEM armour around bytes that are not X.509.
    std::fs::write(
        &s.cert_file,
        "-----BEGIN CERTIFICATE-----\nAAECAwQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = one_error(&s);
    assert!(e.message.contains("not valid X.509"), "{}", e.message);

    std::fs::write(&s.cert_file, &pair.0).unwrap();
    std::fs::write(&s.key_file, "garbage").unwrap();
    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.key_file");
    assert!(
        e.message.contains("no usable PEM private key"),
        "{}",
        e.message
    );

    std::fs::write(&s.key_file, leaf(&["localhost"], &[]).1).unwrap();
    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.key_file");
    assert!(e.message.contains("does not match"), "{}", e.message);
}

/// A key whose line breaks were lost (pasted on one line, or with literal
/// `\n`s) is refused without quoting it: the PEM parser's own message
/// would hold the whole key. The same for a certificate file that holds
/// such a key (a combined file).
#[test]
fn a_key_with_lost_line_breaks_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let (cert, key) = leaf(&["localhost"], &[]);
    // The key's base64 body, and its first bytes as the parser's `Debug`
    // of a byte vector would print them.
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let bytes = format!("{:?}", &body.as_bytes()[..12]);
    let quoted = bytes.trim_start_matches('[').trim_end_matches(']');
    let one_line = key.replace('\n', "");
    let escaped = key.replace('\n', "\\n");
    for broken in [&one_line, &escaped] {
        std::fs::write(&s.cert_file, &cert).unwrap();
        std::fs::write(&s.key_file, broken).unwrap();
        let e = one_error(&s);
        assert_eq!(e.path, "proxy.tls.key_file");
        assert!(e.message.contains("line breaks"), "{}", e.message);
        for m in [e.message.clone(), format!("{e:?}")] {
            assert!(!m.contains(&body[..16]) && !m.contains(quoted), "{m}");
            assert!(m.len() < 300, "{m}");
        }

        std::fs::write(&s.cert_file, format!("{cert}{broken}")).unwrap();
        std::fs::write(&s.key_file, &key).unwrap();
        let e = one_error(&s);
        assert_eq!(e.path, "proxy.tls.cert_file");
        assert!(e.message.contains("line breaks"), "{}", e.message);
        assert!(!e.message.contains(quoted), "{}", e.message);
        assert!(e.message.len() < 300, "{}", e.message);
    }
}

#[test]
fn client_ca_problems_are_reported_with_the_pair_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.client_ca_file = Some(dir.path().join("ca.pem"));
    let Err(err) = acceptor(&s, "x.yaml") else {
        panic!("acceptor built without a certificate")
    };
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["proxy.tls.cert_file", "proxy.tls.client_ca_file"]);
    assert!(err.to_string().starts_with("x.yaml: proxy.tls.cert_file: "));

    write_pair(&s, &leaf(&["localhost"], &[]));
    std::fs::write(dir.path().join("ca.pem"), "").unwrap();
    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.client_ca_file");
    // A self-signed leaf is a usable trust anchor: the file loads.
    std::fs::write(dir.path().join("ca.pem"), leaf(&["ca"], &[]).0).unwrap();
    assert!(check(&s).is_empty());
}

#[test]
fn client_cert_mode_defaults_to_required_with_a_ca() {
    let mut s = settings(Path::new("/"));
    assert_eq!(s.client_cert_mode(), None);
    s.client_ca_file = Some("/ca.pem".into());
    assert_eq!(s.client_cert_mode(), Some(ClientCertMode::Required));
    s.client_cert = Some(ClientCertMode::Optional);
    assert_eq!(s.client_cert_mode(), Some(ClientCertMode::Optional));
}

#[test]
fn uri_sans_are_extracted_in_order_and_other_names_ignored() {
    let (pem, _) = leaf(
        &["billing.example"],
        &["spiffe://test/ns/billing/sa/billing", "urn:example:other"],
    );
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(
        uri_sans(&der),
        ["spiffe://test/ns/billing/sa/billing", "urn:example:other"]
    );
    let (pem, _) = leaf(&["only-dns.example"], &[]);
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert!(uri_sans(&der).is_empty());
    assert!(uri_sans(b"not der").is_empty());
}

/// Lets a poll's read finish on the blocking pool (real time: the paused
/// clock does not wait for it) and the watcher act on it.
async fn settle() {
    for _ in 0..5 {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(2));
    }
    tokio::task::yield_now().await;
}

/// A resolver serving the pair in `s`'s files, and its watch task.
fn serve_and_watch(s: &TlsSettings) -> (Arc<CertResolver>, tokio::task::JoinHandle<()>) {
    let (key, print) = load_pair(&s.cert_file, &s.key_file, &provider()).unwrap();
    let resolver = Arc::new(CertResolver {
        current: ArcSwap::from_pointee(key),
    });
    let task = tokio::spawn(watch_files(
        Arc::downgrade(&resolver),
        Files {
            cert: s.cert_file.clone(),
            key: s.key_file.clone(),
            fingerprint: print,
        },
        provider(),
        s.reload_interval,
    ));
    (resolver, task)
}

fn serving(r: &CertResolver) -> Vec<u8> {
    r.current.load().cert[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(start_paused = true)]
async fn rotated_files_are_served_and_broken_ones_keep_the_previous_pair() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let first = leaf(&["localhost"], &[]);
    write_pair(&s, &first);
    let (resolver, task) = serve_and_watch(&s);
    let tick = || async {
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(500)).await;
            settle().await;
        }
    };
    let serves = |want: &(String, String)| {
        let resolver = resolver.clone();
        let want = der_of(&want.0);
        async move {
            for _ in 0..20 {
                if serving(&resolver) == want {
                    return;
                }
                tick().await;
            }
            panic!("the rotated certificate was never served");
        }
    };

    let second = leaf(&["localhost", "rotated.example"], &[]);
    write_pair(&s, &second);
    serves(&second).await;

    // Half-rotated (new cert, old key), then a missing key: keep serving.
    std::fs::write(&s.cert_file, leaf(&["localhost"], &[]).0).unwrap();
    tick().await;
    assert_eq!(serving(&resolver), der_of(&second.0));
    std::fs::remove_file(&s.key_file).unwrap();
    tick().await;
    assert_eq!(serving(&resolver), der_of(&second.0));

    let third = leaf(&["localhost"], &[]);
    write_pair(&s, &third);
    serves(&third).await;

    // The task ends with the resolver (the paused clock moves on by
    // itself while it waits).
    drop(resolver);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the watch task outlived its resolver")
        .unwrap();
}

/// Runs `openssl` with `args` in `dir`; the tests below need key types
/// rcgen does not make (P-521, RSA-1024, Ed448) or encrypted keys.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed pair made by `openssl req` with `-newkey newkey` plus
/// `extra` (e.g. `-pkeyopt`), written to the settings' files.
fn openssl_pair(s: &TlsSettings, newkey: &str, extra: &[&str]) {
    let dir = s.cert_file.parent().unwrap();
    let mut args = vec!["req", "-x509", "-newkey", newkey];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-days",
        "1",
        "-keyout",
        "tls.key",
        "-out",
        "tls.crt",
    ]);
    openssl(dir, &args);
}

#[test]
fn encrypted_and_unsupported_keys_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    write_pair(&s, &leaf(&["localhost"], &[]));
    // PKCS#8 encrypted, then the legacy `Proc-Type: 4,ENCRYPTED` form.
    for args in [
        &[
            "pkcs8", "-topk8", "-in", "tls.key", "-passout", "pass:x", "-out", "enc.key",
        ][..],
        &[
            "ec", "-in", "tls.key", "-aes128", "-passout", "pass:x", "-out", "enc.key",
        ][..],
    ] {
        openssl(dir.path(), args);
        let plain = std::fs::read(&s.key_file).unwrap();
        std::fs::copy(dir.path().join("enc.key"), &s.key_file).unwrap();
        let e = one_error(&s);
        assert_eq!(e.path, "proxy.tls.key_file");
        assert!(
            e.message
                .contains("is encrypted; latchkey takes no passphrase"),
            "{args:?}: {}",
            e.message
        );
        assert!(e.message.contains("openssl pkey -in"), "{}", e.message);
        std::fs::write(&s.key_file, plain).unwrap();
    }

    for (newkey, extra) in [
        ("ec", &["-pkeyopt", "ec_paramgen_curve:P-521"][..]),
        ("rsa:1024", &[][..]),
        ("ed448", &[][..]),
    ] {
        openssl_pair(&s, newkey, extra);
        let e = one_error(&s);
        assert_eq!(e.path, "proxy.tls.key_file", "{newkey}");
        assert!(
            e.message.contains(
                "key type or size not supported (RSA 2048-8192 bits, ECDSA P-256/P-384, Ed25519)"
            ),
            "{newkey}: {}",
            e.message
        );
        assert!(!e.message.contains("PRIVATE KEY"), "{}", e.message);
    }

    // A supported key for another certificate is still a mismatch.
    openssl_pair(&s, "ec", &["-pkeyopt", "ec_paramgen_curve:P-384"]);
    assert!(check(&s).is_empty());
    std::fs::write(&s.key_file, leaf(&["localhost"], &[]).1).unwrap();
    let e = one_error(&s);
    assert!(
        e.message.contains("does not match the certificate"),
        "{}",
        e.message
    );
}

/// A leaf valid from 1 January of `from` to 1 January of `until`.
fn leaf_valid(from: i32, until: i32) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn expired() -> (String, String) {
    leaf_valid(2020, 2021)
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    write_pair(&s, &expired());
    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.cert_file");
    assert!(e.message.contains("expired on "), "{}", e.message);
    assert!(e.message.contains("2021"), "{}", e.message);
    assert!(acceptor(&s, "x.yaml").is_err());

    write_pair(&s, &leaf_valid(2100, 2101));
    let e = one_error(&s);
    assert_eq!(e.path, "proxy.tls.cert_file");
    assert!(e.message.contains("not valid until "), "{}", e.message);
    assert!(e.message.contains("2100"), "{}", e.message);
}

#[tokio::test(start_paused = true)]
async fn an_expired_certificate_is_not_rotated_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let first = leaf(&["localhost"], &[]);
    write_pair(&s, &first);
    let (resolver, task) = serve_and_watch(&s);
    write_pair(&s, &expired());
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(500)).await;
        settle().await;
    }
    assert_eq!(serving(&resolver), der_of(&first.0));
    // A valid pair after it is served.
    let second = leaf(&["localhost", "second.example"], &[]);
    write_pair(&s, &second);
    for _ in 0..20 {
        if serving(&resolver) == der_of(&second.0) {
            break;
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        settle().await;
    }
    assert_eq!(serving(&resolver), der_of(&second.0));
    drop(resolver);
    task.await.unwrap();
}

/// A certificate file that blocks every read (a FIFO nobody writes to,
/// standing in for a hung NFS or FUSE mount) must not stall a
/// current-thread runtime: a 500 ms timer still fires on time, and the
/// previous certificate stays in service.
#[test]
fn a_blocked_certificate_read_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.reload_interval = Duration::from_millis(100);
    let first = leaf(&["localhost"], &[]);
    write_pair(&s, &first);
    let fifo = dir.path().join("fifo");
    let fifo_link = dir.path().join("fifo-link");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::hard_link(&fifo, &fifo_link).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    let want = der_of(&first.0);
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (key, print) = load_pair(&s2.cert_file, &s2.key_file, &provider()).unwrap();
            let resolver = Arc::new(CertResolver {
                current: ArcSwap::from_pointee(key),
            });
            tokio::spawn(watch_files(
                Arc::downgrade(&resolver),
                Files {
                    cert: s2.cert_file.clone(),
                    key: s2.key_file.clone(),
                    fingerprint: print,
                },
                provider(),
                s2.reload_interval,
            ));
            std::fs::rename(&fifo, &s2.cert_file).unwrap();
            let start = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tx.send(start.elapsed());
            assert_eq!(serving(&resolver), want);
        });
    });
    let slept = rx.recv_timeout(Duration::from_secs(10));
    // Unstick a blocked open: a regular file for any later read, then a
    // read-write open of the FIFO (never blocks on Linux) as the writer.
    std::fs::write(dir.path().join("regular"), &first.0).unwrap();
    std::fs::rename(dir.path().join("regular"), &s.cert_file).unwrap();
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_link)
            .unwrap(),
    );
    worker.join().unwrap();
    let slept = slept.expect("a 500 ms sleep on the runtime did not finish in 10 s");
    // (The stall this guards against never ends: the timeout above
    // catches it; no bound on how fast a loaded machine wakes.)
    let _ = slept;
}

#[test]
fn a_fifo_is_refused_at_startup_rather_than_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    write_pair(&s, &leaf(&["localhost"], &[]));
    std::fs::remove_file(&s.key_file).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&s.key_file)
            .status()
            .unwrap()
            .success()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(check(&s2));
    });
    let errs = rx.recv_timeout(Duration::from_secs(10));
    // Unstick a blocked open, if any.
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&s.key_file)
            .unwrap(),
    );
    worker.join().unwrap();
    let errs = errs.expect("check blocked on a FIFO");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "proxy.tls.key_file");
    assert!(
        errs[0].message.contains("not a regular file"),
        "{}",
        errs[0].message
    );
}
