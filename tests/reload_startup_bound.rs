//! What a reload keeps from the running proxy. Settings read once at
//! startup (`proxy.listen`, TLS, server timeouts, `admin`, `audit.file`)
//! keep their running values in the reloaded config, so the posture rules
//! are checked against the listener actually bound, the management API's
//! config view shows what is in force, and a change waiting for a restart
//! is reported on every reload. Client tokens whose reference did not
//! change keep their source, and the last value it read.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use support::{echo_upstream, get, json};

async fn start(path: &std::path::Path) -> latchkey::Running {
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

/// Started on all interfaces with no public route, then reloaded with
/// `listen` moved to loopback and the route made public: on loopback that
/// would be allowed, but the socket stays on 0.0.0.0 until a restart, so
/// the route would hand its credential to anyone on the network. The
/// reload is refused, saying why, and the old config keeps serving.
#[tokio::test]
async fn a_public_route_is_checked_against_the_listener_still_bound() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lk.yaml");
    let cfg = |listen: &str, public: bool| {
        format!(
            "proxy: {{ listen: \"{listen}\" }}\n\
             clients: [ {{ id: app, token: {{ value: app-tok }}, routes: [\"*\"] }} ]\n\
             credentials: [ {{ id: k, static: {{ value: upstream-key }} }} ]\n\
             routes:\n  - {{ id: r, match: {{ path_prefix: /r/ }}, upstream: \"{}\", credential: k, public: {public} }}\n",
            up.url()
        )
    };
    std::fs::write(&path, cfg("0.0.0.0:0", false)).unwrap();
    let running = start(&path).await;
    let url = format!("http://127.0.0.1:{}/r/x", running.proxy_addr.port());
    assert_eq!(get(&url, &[]).await.0, 401, "not public");

    std::fs::write(&path, cfg("127.0.0.1:0", true)).unwrap();
    let err = running.reload().await.expect_err("refused").to_string();
    assert!(
        err.contains("routes[0].public") && err.contains("non-loopback listener 0.0.0.0:0"),
        "{err}"
    );
    assert!(
        err.contains("proxy.listen") && err.contains("stays 0.0.0.0:0 until a restart"),
        "{err}"
    );
    assert!(
        err.contains("checked with the running values") && err.contains("proxy.listen changed"),
        "{err}"
    );
    assert_eq!(get(&url, &[]).await.0, 401, "the old config still serves");
    let auth = [("authorization", "Bearer app-tok")];
    assert_eq!(get(&url, &auth).await.0, 200);
}

/// `admin` changes apply after a restart: the first reload reports that,
/// and so does the next one (the running admin settings never took the
/// change); the config view shows the settings in force, and they are the
/// ones enforced (the old management key still works, the new one not yet).
#[tokio::test]
async fn admin_changes_are_reported_on_every_reload_and_the_view_shows_what_runs() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lk.yaml");
    let cfg = |remote: bool, key: &str, timeout: &str| {
        format!(
            "proxy: {{ listen: \"127.0.0.1:0\" }}\n\
             admin: {{ listen: \"127.0.0.1:0\", management_key: {{ value: {key} }}, allow_remote: {remote} }}\n\
             routes:\n  - {{ id: r, match: {{ path_prefix: /r/ }}, upstream: \"{}\", public: true, timeout: {timeout} }}\n",
            up.url()
        )
    };
    std::fs::write(&path, cfg(true, "old-key", "30s")).unwrap();
    let running = start(&path).await;
    std::fs::write(&path, cfg(false, "new-key", "30s")).unwrap();
    let first = running.reload().await.unwrap();
    std::fs::write(&path, cfg(false, "new-key", "31s")).unwrap();
    let second = running.reload().await.unwrap();
    for outcome in [&first, &second] {
        assert!(
            outcome
                .restart_required
                .iter()
                .any(|r| r.contains("admin changed")),
            "{:?}",
            outcome.restart_required
        );
    }
    let admin = format!(
        "http://{}/v0/management/config",
        running.admin_addr.unwrap()
    );
    let (new_key, _, _) = get(&admin, &[("x-management-key", "new-key")]).await;
    let (old_key, _, body) = get(&admin, &[("x-management-key", "old-key")]).await;
    assert_eq!(
        (new_key.as_u16(), old_key.as_u16()),
        (401, 200),
        "the running key is enforced"
    );
    let view = json(&body);
    assert_eq!(view["admin"]["allow_remote"], true, "{}", view["admin"]);
    // The rest of the reload did apply.
    assert!(
        view["routes"][0]["timeout"]
            .as_str()
            .is_some_and(|t| t.starts_with("31")),
        "{}",
        view["routes"][0]
    );
}

/// A client's `file` token whose file is gone keeps its last value (the
/// README's promise for `file` secrets), across a reload of unrelated
/// settings too: the reload keeps the client's token source instead of
/// resolving the missing file anew. A changed reference is resolved anew.
#[tokio::test]
async fn a_reload_keeps_a_client_tokens_last_good_value() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    std::fs::write(&tok, "file-tok\n").unwrap();
    let path = dir.path().join("lk.yaml");
    let cfg = |token: &str, timeout: &str| {
        format!(
            "proxy: {{ listen: \"127.0.0.1:0\" }}\n\
             clients: [ {{ id: app, token: {token}, routes: [\"*\"] }} ]\n\
             routes:\n  - {{ id: r, match: {{ path_prefix: /r/ }}, upstream: \"{}\", timeout: {timeout} }}\n",
            up.url()
        )
    };
    let from_file = format!("{{ file: \"{}\" }}", tok.display());
    std::fs::write(&path, cfg(&from_file, "30s")).unwrap();
    let running = start(&path).await;
    let url = format!("http://{}/r/x", running.proxy_addr);
    let auth = [("authorization", "Bearer file-tok")];
    assert_eq!(get(&url, &auth).await.0, 200);
    std::fs::remove_file(&tok).unwrap();
    std::fs::write(&path, cfg(&from_file, "31s")).unwrap();
    running.reload().await.unwrap();
    assert_eq!(get(&url, &auth).await.0, 200, "the last good value is kept");
    // A changed reference is a new secret.
    std::fs::write(&path, cfg("{ value: new-tok }", "31s")).unwrap();
    running.reload().await.unwrap();
    assert_eq!(get(&url, &auth).await.0, 401);
    let new = [("authorization", "Bearer new-tok")];
    assert_eq!(get(&url, &new).await.0, 200);
}
