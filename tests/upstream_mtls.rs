//! A client certificate for upstreams that require one
//! (`routes[].client_cert_file` / `client_key_file`, nginx's
//! `proxy_ssl_certificate`): presented in the handshake, re-read when the
//! files change (no reload), and checked at startup, naming the field.

mod support;

use std::path::Path;
use support::harness::start_proxy;
use support::pki::{mtls_echo_upstream, replace};
use support::{TestCa, echoed_header, get, json, with_timeout};

const CLIENT_TOKEN: &str = "mtls-test-client-token";

fn config(upstream: &str, ca_file: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0 }}
clients:
  - {{ id: app, token: {{ value: \"{CLIENT_TOKEN}\" }}, routes: [\"*\"] }}
credentials:
  - {{ id: key, static: {{ value: mtls-upstream-key }} }}
routes:
  - {{ id: plain, match: {{ path_prefix: /plain/ }}, strip_prefix: true, upstream: \"{upstream}\", ca_file: \"{ca}\", credential: key }}
  - {{ id: mtls, match: {{ path_prefix: /mtls/ }}, strip_prefix: true, upstream: \"{upstream}\", ca_file: \"{ca}\", client_cert_file: \"{cert}\", client_key_file: \"{key}\", credential: key }}
",
        ca = ca_file.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let (server_ca, client_ca, other_ca) = (TestCa::new(), TestCa::new(), TestCa::new());
    let up = mtls_echo_upstream(&server_ca, &client_ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = server_ca.write_ca(dir.path());
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    let url = up.https_url();

    // A key that does not belong to the certificate stops startup.
    let (good_cert, _) = client_ca.issue_client(&["spiffe://test/latchkey"]);
    let (_, other_key) = client_ca.issue_client(&["spiffe://test/latchkey"]);
    std::fs::write(&cert, &good_cert).unwrap();
    std::fs::write(&key, &other_key).unwrap();
    let cfg = latchkey::Config::from_yaml(&config(&url, &ca_file, &cert, &key), "t.yaml").unwrap();
    let err = latchkey::start(cfg, "t.yaml")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("routes[1].client_key_file"), "{err}");
    assert!(
        !err.contains("PRIVATE KEY"),
        "key material in an error: {err}"
    );

    // A certificate the upstream does not trust: refused, as is no
    // certificate at all.
    let (untrusted_cert, untrusted_key) = other_ca.issue_client(&["spiffe://test/latchkey"]);
    std::fs::write(&cert, &untrusted_cert).unwrap();
    std::fs::write(&key, &untrusted_key).unwrap();
    let p = start_proxy(&config(&url, &ca_file, &cert, &key)).await;
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let headers = [("authorization", auth.as_str())];
    for path in ["/plain/x", "/mtls/x"] {
        let (status, _, body) = get(&p.url(path), &headers).await;
        assert_eq!(status, 502, "{path}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(up.hit_count(), 0);

    // Rotated in place (as cert-manager does): presented from the next
    // connection, without a reload.
    let (good_cert, good_key) = client_ca.issue_client(&["spiffe://test/latchkey"]);
    replace(dir.path(), &key, &good_key);
    replace(dir.path(), &cert, &good_cert);
    let body = with_timeout(async {
        loop {
            let (status, _, body) = get(&p.url("/mtls/x"), &headers).await;
            match status.as_u16() {
                200 => break body,
                502 => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                other => panic!("{other}: {}", String::from_utf8_lossy(&body)),
            }
        }
    })
    .await;
    let echo = json(&body);
    assert_eq!(
        echoed_header(&echo, "authorization").as_deref(),
        Some("Bearer mtls-upstream-key")
    );
    // The route without a certificate still gets none.
    assert_eq!(get(&p.url("/plain/x"), &headers).await.0, 502);

    // Rotated again, to a certificate the upstream does not trust: the
    // next connection presents it (and is refused), rather than resuming
    // the session of the trusted one.
    replace(dir.path(), &key, &untrusted_key);
    replace(dir.path(), &cert, &untrusted_cert);
    with_timeout(async {
        while get(&p.url("/mtls/x"), &headers).await.0 != 502 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(p.stop().await);
}

/// A client key whose read hangs (a hung NFS or FUSE mount; here a FIFO
/// nobody writes to, renamed over the file) must not freeze the proxy on a
/// current-thread runtime (the shipped Deployment runs one worker): the
/// handshake presents the pair already loaded and the admin port answers.
#[tokio::test]
async fn a_client_key_that_blocks_does_not_stall_a_single_threaded_proxy() {
    let (server_ca, client_ca) = (TestCa::new(), TestCa::new());
    let up = mtls_echo_upstream(&server_ca, &client_ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = server_ca.write_ca(dir.path());
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    let (good_cert, good_key) = client_ca.issue_client(&["spiffe://test/latchkey"]);
    std::fs::write(&cert, &good_cert).unwrap();
    std::fs::write(&key, &good_key).unwrap();
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

    let yaml = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n{}",
        config(&up.https_url(), &ca_file, &cert, &key)
    );
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = latchkey::Config::from_yaml(&yaml, "t.yaml").unwrap();
            let running = latchkey::start(cfg, "t.yaml").await.unwrap();
            addrs_tx
                .send((running.proxy_addr, running.admin_addr.unwrap()))
                .unwrap();
            let _ = stop_rx.await;
            running.shutdown().await;
        });
    });
    let (proxy_addr, admin_addr) = addrs_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();

    std::fs::rename(&fifo, &key).unwrap();
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let mtls = tokio::spawn(async move {
        let headers = [("authorization", auth.as_str())];
        let url = format!("http://{proxy_addr}/mtls/x");
        tokio::time::timeout(std::time::Duration::from_secs(3), get(&url, &headers))
            .await
            .map(|(status, _, _)| status)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let healthz = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        get(&format!("http://{admin_addr}/healthz"), &[]),
    )
    .await
    .map(|(status, _, _)| status);
    let mtls = mtls.await.unwrap();

    // Unstick a blocked read: a regular file for any later read, then a
    // read-write open of the FIFO (never blocks on Linux) as the writer.
    replace(dir.path(), &key, &good_key);
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_link)
            .unwrap(),
    );
    let _ = stop_tx.send(());
    proxy.join().unwrap();

    assert_eq!(
        healthz.expect("/healthz did not answer within 3 s while client.key was a FIFO"),
        200
    );
    // The pair loaded before stays in use.
    assert_eq!(mtls.expect("the mTLS request hung"), 200);
}

/// An encrypted key, or one of a type rustls cannot sign with, is named as
/// such on `client_key_file`, not as a key that "does not fit".
#[tokio::test]
async fn encrypted_and_unsupported_client_keys_say_so() {
    let (server_ca, client_ca) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = server_ca.write_ca(dir.path());
    let (cert, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    let (good_cert, good_key) = client_ca.issue_client(&["spiffe://test/latchkey"]);
    std::fs::write(&cert, &good_cert).unwrap();
    std::fs::write(&key, &good_key).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let start_error = || async {
        let yaml = config("https://127.0.0.1:9", &ca_file, &cert, &key);
        let cfg = latchkey::Config::from_yaml(&yaml, "t.yaml").unwrap();
        latchkey::start(cfg, "t.yaml")
            .await
            .unwrap_err()
            .to_string()
    };

    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        "client.key",
        "-passout",
        "pass:x",
        "-out",
        "enc.key",
    ]);
    std::fs::rename(dir.path().join("enc.key"), &key).unwrap();
    let err = start_error().await;
    assert!(err.contains("routes[1].client_key_file"), "{err}");
    assert!(
        err.contains("is encrypted; latchkey takes no passphrase"),
        "{err}"
    );

    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-521",
        "-nodes",
        "-subj",
        "/CN=client",
        "-days",
        "1",
        "-keyout",
        "client.key",
        "-out",
        "client.crt",
    ]);
    let err = start_error().await;
    assert!(err.contains("routes[1].client_key_file"), "{err}");
    assert!(err.contains("key type or size not supported"), "{err}");
    assert!(!err.contains("does not fit"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
