//! A reload that moves a rotating credential to another store keeps what
//! its old source held: the access token in service and the rotated
//! refresh token (the configured seed was spent long ago).

#![expect(clippy::expect_used, reason = "test helpers outside #[test] fns")]

mod support;

use std::path::Path;
use support::get;
use support::token_endpoint::{self, EndpointOptions, TokenEndpoint};

const TOKEN: &str = "switch-client-token";

/// A rotating `refresh_token` credential `oauth` on `store` (with
/// `file_store.dir` = `dir`), behind `/a/`.
fn yaml(store: &str, dir: &Path, upstream: &str, token_url: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
file_store: {{ dir: "{dir}" }}
clients:
  - id: app
    token: {{ value: {TOKEN} }}
    routes: ["*"]
credentials:
  - id: oauth
    oauth2:
      grant: refresh_token
      refresh_token: {{ value: rt-seed }}
      token_url: {token_url}
      client_id: latchkey
      client_secret: {{ value: cs }}
    store: {store}
routes:
  - id: a
    match: {{ path_prefix: /a/ }}
    upstream: {upstream}
    credential: oauth
"#,
        dir = dir.display()
    )
}

async fn start(path: &Path) -> latchkey::Running {
    let config = latchkey::Config::load(path).expect("valid config");
    let options = latchkey::StartOptions {
        config_path: Some(path.to_path_buf()),
        watch_config: false,
        ..Default::default()
    };
    latchkey::start_with(config, &path.display().to_string(), options)
        .await
        .expect("start")
}

async fn status(base: &str, path: &str) -> u16 {
    let auth = format!("Bearer {TOKEN}");
    get(
        &format!("{base}{path}"),
        &[("authorization", auth.as_str())],
    )
    .await
    .0
    .as_u16()
}

async fn rotating_endpoint(seed: &str) -> TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: seed.into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs".into()),
    })
    .await
}

/// `file` to `memory` (and `redis` to `memory` alike): the new source
/// starts from the old one's token and rotated refresh token, instead of
/// an empty memory store and the spent seed (503 at once, then
/// `invalid_grant`, and a family revoked by an IdP that detects reuse).
#[tokio::test]
async fn file_to_memory_keeps_the_held_token_and_the_rotated_refresh_token() {
    let up = support::echo_upstream().await;
    let ep = rotating_endpoint("rt-seed").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let path = dir.path().join("latchkey.yaml");
    let url = up.url();
    std::fs::write(&path, yaml("file", &store_dir, &url, &ep.url)).expect("write");
    let running = start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(status(&base, "/a/x").await, 200);
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("manual refresh");
    let rotated = ep.current_refresh_token().expect("a refresh token");
    let calls = ep.calls();
    std::fs::write(&path, yaml("memory", &store_dir, &url, &ep.url)).expect("rewrite");
    let o = running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"]);
    assert_eq!(status(&base, "/a/x").await, 200, "the held token is served");
    assert_eq!(
        ep.calls(),
        calls,
        "the held token was taken over, not fetched"
    );
    let refreshed = running.proxy().credentials[0].refresh_now().await;
    assert_eq!(
        ep.last_form_value("refresh_token"),
        Some(rotated),
        "the rotated refresh token, not the spent seed ({refreshed:?})"
    );
    assert_eq!(ep.invalid_grants(), 0);
    running.shutdown().await;
}
