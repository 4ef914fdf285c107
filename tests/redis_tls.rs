//! A shared Redis store over TLS (`rediss://`) behind a private CA that
//! requires client certificates (Redis's default `tls-auth-clients yes`):
//! `redis.ca_file`, `client_cert_file` and `client_key_file`.

mod support;

use support::harness::start_proxy;
use support::redis_server::RedisServer;
use support::token_endpoint::{self, EndpointOptions};
use support::{TestCa, echo_upstream, echoed_header, get, json};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(redis_url: &str, tls: &str, token_url: &str, upstream: &str) -> String {
    format!(
        r#"
proxy: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
redis:
  url: {{ value: "{redis_url}" }}
  encryption_keys: [ {{ value: "{KEY}" }} ]
{tls}
credentials:
  - id: crm
    oauth2:
      grant: refresh_token
      token_url: {token_url}
      client_id: latchkey
      refresh_token: {{ value: rt-seed }}
    store: redis
routes:
  - {{ id: crm, match: {{ path_prefix: /crm/ }}, strip_prefix: true, upstream: "{upstream}", credential: crm, public: true }}
"#
    )
}

#[tokio::test]
async fn a_rediss_store_behind_a_private_ca_with_a_client_certificate() {
    let (server_ca, client_ca) = (TestCa::new(), TestCa::new());
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let (cert, key) = server_ca.issue(&["localhost", "127.0.0.1"]);
    let (server_cert, server_key) = (file("redis.crt", &cert), file("redis.key", &key));
    let clients_ca = file("clients-ca.pem", &client_ca.ca_pem());
    let redis_ca = file("redis-ca.pem", &server_ca.ca_pem());
    let (cert, key) = client_ca.issue_client(&["spiffe://test/latchkey"]);
    let (client_cert, client_key) = (file("client.crt", &cert), file("client.key", &key));
    let redis = RedisServer::start_tls(&server_cert, &server_key, &clients_ca).await;
    let endpoint = token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        initial_refresh_token: "rt-seed".into(),
        ..EndpointOptions::default()
    })
    .await;
    let up = echo_upstream().await;
    let tls = format!(
        "  ca_file: \"{}\"\n  client_cert_file: \"{}\"\n  client_key_file: \"{}\"",
        redis_ca.display(),
        client_cert.display(),
        client_key.display()
    );

    // TLS material with a plain redis:// URL is a mistake, named.
    let plain = config("redis://127.0.0.1:6379", &tls, &endpoint.url, &up.url());
    let cfg = latchkey::Config::from_yaml(&plain, "t.yaml").unwrap();
    let err = latchkey::start(cfg, "t.yaml")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("redis.ca_file: needs a rediss:// URL"),
        "{err}"
    );

    let p = start_proxy(&config(
        &format!("rediss://localhost:{}", redis.port),
        &tls,
        &endpoint.url,
        &up.url(),
    ))
    .await;
    let (status, _, body) = get(&p.url("/crm/x"), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        echoed_header(&json(&body), "authorization").is_some_and(|a| a.starts_with("Bearer ")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The token went through the store, which answered over TLS.
    let (_, _, ready) = get(&format!("{}/readyz", p.admin), &[]).await;
    assert_eq!(
        json(&ready)["stores"]["redis"],
        "up",
        "{}",
        String::from_utf8_lossy(&ready)
    );
    assert!(p.stop().await);
}
