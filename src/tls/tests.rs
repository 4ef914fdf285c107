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
    let tick = || async {
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(500)).await;
            tokio::task::yield_now().await;
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

    // The task ends with the resolver.
    drop(resolver);
    tick().await;
    tick().await;
    assert!(task.is_finished());
}
