//! A token endpoint behind a private CA (an in-cluster IdP): trusted
//! through `oauth2.ca_file`, which is read before every token request, so a
//! bundle rotated in place is used from the next one; a bundle that does
//! not load stops startup, naming the field.

mod support;

use std::path::Path;
use support::harness::start_proxy;
use support::{TestCa, echo_upstream, echoed_header, get, json, tls_token_endpoint, with_timeout};

const CLIENT_TOKEN: &str = "idp-test-client-token";

fn config(token_url: &str, ca_file: &Path, upstream: &str) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0 }}
clients:
  - {{ id: app, token: {{ value: \"{CLIENT_TOKEN}\" }}, routes: [\"*\"] }}
credentials:
  - id: idp
    oauth2:
      grant: client_credentials
      token_url: \"{token_url}\"
      client_id: latchkey
      client_secret: {{ value: idp-client-secret }}
      ca_file: \"{}\"
    refresh: {{ backoff_min: 1ms, backoff_max: 5ms }}
routes:
  - {{ id: api, match: {{ path_prefix: /api/ }}, upstream: \"{upstream}\", credential: idp }}
",
        ca_file.display()
    )
}

#[tokio::test]
async fn a_token_endpoint_behind_a_private_ca_is_trusted_through_ca_file() {
    let (idp_ca, other_ca) = (TestCa::new(), TestCa::new());
    let idp = tls_token_endpoint(&idp_ca).await;
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    let token_url = format!("https://localhost:{}/token", idp.addr.port());

    // A bundle that does not load stops startup, naming the field.
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let cfg =
        latchkey::Config::from_yaml(&config(&token_url, &ca_file, &up.url()), "t.yaml").unwrap();
    let err = latchkey::start(cfg, "t.yaml")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("credentials[0].oauth2.ca_file"), "{err}");
    assert!(err.contains("holds no certificate"), "{err}");

    // The wrong CA: the endpoint is not trusted, nothing is injected.
    std::fs::write(&ca_file, other_ca.ca_pem()).unwrap();
    let p = start_proxy(&config(&token_url, &ca_file, &up.url())).await;
    let auth = format!("Bearer {CLIENT_TOKEN}");
    let headers = [("authorization", auth.as_str())];
    let (status, _, body) = get(&p.url("/api/x"), &headers).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"]["code"], "credential_unavailable");
    assert_eq!(up.hit_count(), 0);

    // The bundle rotated in place to the IdP's CA: used from the next
    // token request, without a reload.
    std::fs::write(&ca_file, idp_ca.ca_pem()).unwrap();
    let body = with_timeout(async {
        loop {
            let (status, _, body) = get(&p.url("/api/x"), &headers).await;
            match status.as_u16() {
                200 => break body,
                503 => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                other => panic!("{other}: {}", String::from_utf8_lossy(&body)),
            }
        }
    })
    .await;
    assert_eq!(
        echoed_header(&json(&body), "authorization").as_deref(),
        Some("Bearer tls-idp-token")
    );
    assert!(idp.hit_count() >= 1);

    // The bundle replaced by a named pipe (whose open would wait for a
    // writer for ever, on this test's single runtime thread): the next
    // refresh fails at once, naming the file, and the token held is
    // still served.
    std::fs::remove_file(&ca_file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&ca_file)
        .status()
        .unwrap();
    assert!(made.success());
    let idp_cred = p.running.as_ref().unwrap().proxy().credentials[0].clone();
    let err = with_timeout(idp_cred.refresh_now())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ca_file") && err.contains("not a regular file"),
        "{err}"
    );
    let (status, _, _) = get(&p.url("/api/x"), &headers).await;
    assert_eq!(status, 200);
    assert!(p.stop().await);
}

/// A bundle that stops loading fails the next reload, naming the field,
/// though the credential's config did not change (its source is kept).
#[tokio::test]
async fn a_broken_oauth2_ca_file_fails_the_reload() {
    let idp_ca = TestCa::new();
    let idp = tls_token_endpoint(&idp_ca).await;
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, idp_ca.ca_pem()).unwrap();
    let token_url = format!("https://localhost:{}/token", idp.addr.port());
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, config(&token_url, &ca_file, &up.url())).unwrap();
    let options = latchkey::StartOptions {
        config_path: Some(path.clone()),
        watch_config: false,
        ..Default::default()
    };
    let running = latchkey::start_with(
        latchkey::Config::load(&path).unwrap(),
        &path.display().to_string(),
        options,
    )
    .await
    .unwrap();
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let err = with_timeout(running.reload())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("credentials[0].oauth2.ca_file"), "{err}");
    assert!(running.shutdown().await);
}
