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
    yaml_seeded(store, dir, upstream, token_url, "rt-seed")
}

/// Like [`yaml`], seeded with `seed`.
fn yaml_seeded(store: &str, dir: &Path, upstream: &str, token_url: &str, seed: &str) -> String {
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
      refresh_token: {{ value: {seed} }}
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
/// latchkey serving a rotating credential on `store` (`file_store.dir`:
/// `store_dir`), after one request: what most tests here start from.
struct Serving {
    _up: support::Upstream,
    ep: TokenEndpoint,
    _dir: tempfile::TempDir,
    store_dir: std::path::PathBuf,
    path: std::path::PathBuf,
    url: String,
    config: String,
    running: latchkey::Running,
    base: String,
}

async fn serving(store: &str) -> Serving {
    let up = support::echo_upstream().await;
    let ep = rotating_endpoint("rt-seed").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let path = dir.path().join("latchkey.yaml");
    let url = up.url();
    let config = yaml(store, &store_dir, &url, &ep.url);
    std::fs::write(&path, &config).expect("write");
    let running = start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(status(&base, "/a/x").await, 200);
    Serving {
        _up: up,
        ep,
        _dir: dir,
        store_dir,
        path,
        url,
        config,
        running,
        base,
    }
}

/// Returns once `source` has a refresh running (the token endpoint is
/// slowed down, so it is still running then).
async fn refreshing(source: &dyn proxy_core::CredentialSource) {
    support::with_timeout(async {
        while !source.status().refreshing {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// A manual refresh; the refresh token it rotated to.
async fn rotate(f: &Serving) -> String {
    f.running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("manual refresh");
    f.ep.current_refresh_token().expect("a refresh token")
}

/// `invalid_grant`, and a family revoked by an IdP that detects reuse).
#[tokio::test]
async fn file_to_memory_keeps_the_held_token_and_the_rotated_refresh_token() {
    let f = serving("file").await;
    let rotated = rotate(&f).await;
    let calls = f.ep.calls();
    std::fs::write(&f.path, yaml("memory", &f.store_dir, &f.url, &f.ep.url)).expect("rewrite");
    let o = f.running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"]);
    assert_eq!(
        status(&f.base, "/a/x").await,
        200,
        "the held token is served"
    );
    assert_eq!(
        f.ep.calls(),
        calls,
        "the held token was taken over, not fetched"
    );
    let refreshed = f.running.proxy().credentials[0].refresh_now().await;
    assert_eq!(
        f.ep.last_form_value("refresh_token"),
        Some(rotated),
        "the rotated refresh token, not the spent seed ({refreshed:?})"
    );
    assert_eq!(f.ep.invalid_grants(), 0);
    f.running.shutdown().await;
}

/// The access token the upstream received with a request to `/a/x`.
async fn injected(base: &str) -> Option<String> {
    let auth = format!("Bearer {TOKEN}");
    let (code, _, body) = get(&format!("{base}/a/x"), &[("authorization", auth.as_str())]).await;
    assert_eq!(code.as_u16(), 200);
    support::echoed_header(&support::json(&body), "authorization")
        .map(|v| v.trim_start_matches("Bearer ").to_owned())
}

/// A `file` credential whose provider changes (another token endpoint and
/// seed) does not keep the old provider's stored state: the new IdP's
/// token is injected, and the old IdP's refresh token is never sent to the
/// new endpoint (a live secret to another party, then `invalid_grant` for
/// ever).
#[tokio::test]
async fn file_credential_whose_provider_changes_starts_from_the_new_seed() {
    let up = support::echo_upstream().await;
    let old_idp = rotating_endpoint("rt-seed").await;
    let new_idp = rotating_endpoint("rt-new-seed").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let path = dir.path().join("latchkey.yaml");
    let url = up.url();
    std::fs::write(&path, yaml("file", &store_dir, &url, &old_idp.url)).expect("write");
    let running = start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(status(&base, "/a/x").await, 200);
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("manual refresh");
    let old_rt = old_idp.current_refresh_token().expect("a refresh token");
    let new_yaml = yaml_seeded("file", &store_dir, &url, &new_idp.url, "rt-new-seed");
    std::fs::write(&path, &new_yaml).expect("rewrite");
    running.reload().await.expect("reload");
    let sent = injected(&base).await.expect("a token injected");
    assert!(
        new_idp.is_access_token_valid(&sent),
        "a token the new IdP issued is injected, not the old IdP's"
    );
    let refreshed = running.proxy().credentials[0].refresh_now().await;
    assert!(refreshed.is_ok(), "{refreshed:?}");
    assert_ne!(
        new_idp.last_form_value("refresh_token"),
        Some(old_rt.clone())
    );
    assert_eq!(new_idp.invalid_grants(), 0);
    let sent = injected(&base).await.expect("a token injected");
    assert!(new_idp.is_access_token_valid(&sent));
    running.shutdown().await;

    // A restart with the provider changed back: the state the new IdP
    // left is not the old IdP's, whose seed starts it again.
    let calls = new_idp.calls();
    std::fs::write(&path, yaml("file", &store_dir, &url, &old_idp.url)).expect("rewrite");
    old_idp.set_refresh_token("rt-seed");
    let running = start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    let sent = injected(&base).await.expect("a token injected");
    assert!(
        old_idp.is_access_token_valid(&sent),
        "the old IdP's token after the restart"
    );
    assert_eq!(
        old_idp.last_form_value("refresh_token").as_deref(),
        Some("rt-seed")
    );
    assert_eq!(
        new_idp.calls(),
        calls,
        "nothing sent to the IdP no longer configured"
    );
    assert_eq!(old_idp.invalid_grants(), 0);
    running.shutdown().await;
}

/// `memory` to `file` over a directory holding an older run's state (an
/// expired token, a refresh token spent long ago, a high generation): the
/// handed-over state is the live one and is written into the new store,
/// so the first refresh sends the live rotated refresh token, not the
/// stale one.
#[tokio::test]
async fn memory_to_file_over_a_stale_state_keeps_the_live_refresh_token() {
    let up = support::echo_upstream().await;
    let ep = rotating_endpoint("rt-seed").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).expect("mkdir");
    std::fs::write(
        store_dir.join("oauth.json"),
        r#"{"access_token":"at-old","expires_at_ms":1000,"refresh_token":"rt-spent-long-ago","generation":7,"obtained_at_ms":1}"#,
    )
    .expect("write stale state");
    let path = dir.path().join("latchkey.yaml");
    let url = up.url();
    std::fs::write(&path, yaml("memory", &store_dir, &url, &ep.url)).expect("write");
    let running = start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(status(&base, "/a/x").await, 200);
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("manual refresh");
    let rotated = ep.current_refresh_token().expect("a refresh token");
    std::fs::write(&path, yaml("file", &store_dir, &url, &ep.url)).expect("rewrite");
    running.reload().await.expect("reload");
    assert_eq!(status(&base, "/a/x").await, 200, "the held token is served");
    // Written into the new store at once (a restart before the next
    // refresh must find the live refresh token there), above the stale
    // generation.
    let state_file = store_dir.join("oauth.json");
    let mut stored = serde_json::Value::Null;
    for _ in 0..200 {
        stored = serde_json::from_slice(&std::fs::read(&state_file).expect("read state"))
            .expect("a JSON state");
        if stored["refresh_token"] == rotated.as_str() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(stored["refresh_token"], rotated.as_str(), "{stored}");
    assert_eq!(stored["generation"], 8, "{stored}");
    let refreshed = running.proxy().credentials[0].refresh_now().await;
    assert_eq!(
        ep.last_form_value("refresh_token"),
        Some(rotated),
        "the live rotated refresh token, not the stale stored one ({refreshed:?})"
    );
    assert!(refreshed.is_ok(), "{refreshed:?}");
    assert_eq!(ep.invalid_grants(), 0);
    running.shutdown().await;
}

/// Editing what is not the provider's identity (here the scopes, and the
/// seed's value) keeps the rotated refresh token in the file: starting
/// over from a seed spent long ago would replay it, and an IdP that
/// detects reuse would revoke the whole family, the live token included.
/// After a restart too.
#[tokio::test]
async fn a_scope_edit_keeps_the_stored_refresh_token() {
    let f = serving("file").await;
    let rotated = rotate(&f).await;
    let edited = f
        .config
        .replace(SECRET_LINE, SCOPED)
        .replace("{ value: rt-seed }", "{ value: rt-seed-spent-long-ago }");
    assert_ne!(edited, f.config);
    std::fs::write(&f.path, &edited).expect("rewrite");
    let o = f.running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"], "rebuilt");
    assert_eq!(status(&f.base, "/a/x").await, 200);
    let refreshed = f.running.proxy().credentials[0].refresh_now().await;
    assert_eq!(
        f.ep.last_form_value("refresh_token"),
        Some(rotated),
        "{refreshed:?}"
    );
    f.running.shutdown().await;
    // A restart reads the file: its first refresh adopts the stored state
    // (newer than none), the next one refreshes from it.
    let rotated = f.ep.current_refresh_token().expect("a refresh token");
    let running = start(&f.path).await;
    let source = running.proxy().credentials[0].clone();
    let adopted = source.refresh_now().await.expect("adopted");
    assert_eq!(adopted.generation, 3, "{adopted:?}");
    let refreshed = source.refresh_now().await;
    assert_eq!(
        f.ep.last_form_value("refresh_token"),
        Some(rotated),
        "{refreshed:?}"
    );
    assert_eq!(f.ep.invalid_grants(), 0);
    running.shutdown().await;
}

/// The same on a `memory` store: a scope edit (or a client secret rotated
/// by a reload) rebuilds the source, which serves the token held and
/// refreshes at once (that token was issued for the old scopes) from the
/// rotated refresh token the old one held, not from the spent seed.
#[tokio::test]
async fn a_scope_edit_keeps_the_rotated_refresh_token_in_memory() {
    let f = serving("memory").await;
    let rotated = rotate(&f).await;
    let calls = f.ep.calls();
    std::fs::write(&f.path, f.config.replace(SECRET_LINE, SCOPED)).expect("rewrite");
    let o = f.running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"], "rebuilt");
    assert_eq!(status(&f.base, "/a/x").await, 200);
    support::with_timeout(async {
        while f.ep.calls() < calls + 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(f.ep.calls(), calls + 1, "one refresh, for the new scopes");
    assert_eq!(f.ep.last_form_value("refresh_token"), Some(rotated));
    assert_eq!(f.ep.invalid_grants(), 0);
    f.running.shutdown().await;
}

/// A scope edit that lands while the old source's refresh is in flight:
/// the old source's save reaches the memory store both share, and the new
/// source's refresh, serialised behind it, adopts its result instead of
/// sending the refresh token that refresh spent.
#[tokio::test]
async fn a_scope_edit_during_a_refresh_keeps_the_rotated_refresh_token_in_memory() {
    let f = serving("memory").await;
    f.ep.set_delay(std::time::Duration::from_millis(500));
    let old = f.running.proxy().credentials[0].clone();
    let in_flight = tokio::spawn(old.refresh_now());
    refreshing(old.as_ref()).await;
    std::fs::write(&f.path, f.config.replace(SECRET_LINE, SCOPED)).expect("rewrite");
    let o = f.running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"], "rebuilt");
    let old_result = in_flight.await.expect("join");
    assert!(old_result.is_ok(), "{old_result:?}");
    f.ep.set_delay(std::time::Duration::ZERO);
    // The new source's own refresh (for the new scopes) has run: what it
    // sent is what the assertions below look at.
    let new = f.running.proxy().credentials[0].clone();
    support::with_timeout(async {
        while new.status().refreshing || new.status().last_refresh_result.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let now = status(&f.base, "/a/x").await;
    let st = f.running.proxy().credentials[0].status();
    assert_eq!(
        f.ep.invalid_grants(),
        0,
        "a spent refresh token was sent: {st:?}"
    );
    assert_eq!(now, 200, "{st:?}");
    f.running.shutdown().await;
}

/// A scope edit while the token endpoint is down: the token held (valid
/// for another hour) is still served while the refresh fails.
#[tokio::test]
async fn a_scope_edit_while_the_endpoint_is_down_keeps_serving() {
    let f = serving("memory").await;
    f.ep.set_failure(Some(token_endpoint::Failure::Status(
        503,
        "maintenance".into(),
    )));
    std::fs::write(&f.path, f.config.replace(SECRET_LINE, SCOPED)).expect("rewrite");
    let o = f.running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"], "rebuilt");
    let now = status(&f.base, "/a/x").await;
    let st = f.running.proxy().credentials[0].status();
    assert_eq!(now, 200, "{st:?}");
    f.running.shutdown().await;
}

const SECRET_LINE: &str = "      client_secret: { value: cs }\n";
const SCOPED: &str = "      client_secret: { value: cs }\n      scopes: [read]\n";

/// A store move (another `file_store.dir`) that lands while the old
/// source's refresh is in flight: the reload waits for that refresh before
/// it takes the hand-over, so the new store starts from the refresh token
/// it rotated to, not from the one it spent.
#[tokio::test]
async fn a_store_move_during_a_refresh_keeps_the_rotated_refresh_token() {
    let f = serving("file").await;
    f.ep.set_delay(std::time::Duration::from_millis(500));
    let old = f.running.proxy().credentials[0].clone();
    let in_flight = tokio::spawn(old.refresh_now());
    refreshing(old.as_ref()).await;
    let moved = f.store_dir.with_file_name("store2");
    std::fs::write(&f.path, yaml("file", &moved, &f.url, &f.ep.url)).expect("rewrite");
    let o = f.running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"], "rebuilt");
    let old_result = in_flight.await.expect("join");
    assert!(old_result.is_ok(), "{old_result:?}");
    f.ep.set_delay(std::time::Duration::ZERO);
    let refreshed = f.running.proxy().credentials[0].refresh_now().await;
    assert_eq!(
        f.ep.invalid_grants(),
        0,
        "a spent refresh token was sent ({:?}): {refreshed:?}",
        f.ep.last_form_value("refresh_token")
    );
    assert!(refreshed.is_ok(), "{refreshed:?}");
    f.running.shutdown().await;
}
