//! Config reload: under continuous traffic with zero failed requests, an
//! invalid reload that keeps the old config serving, routes added by a
//! reload, credentials that keep their state (no refresh) across reloads,
//! Kubernetes' ConfigMap symlink swap, and SIGHUP on the real binary.

#![expect(clippy::expect_used, reason = "test helpers outside #[test] fns")]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::token_endpoint::{self, EndpointOptions};
use support::{echo_upstream, free_port, get, json, with_timeout};

const TOKEN: &str = "reload-client-token";

fn yaml(
    listen: &str,
    upstream: &str,
    token_url: &str,
    extra_routes: &str,
    timeout: &str,
) -> String {
    format!(
        r#"proxy: {{ listen: "{listen}" }}
admin: {{ listen: "127.0.0.1:0", management_key: {{ value: mgmt-key }} }}
clients:
  - id: app
    token: {{ value: {TOKEN} }}
    routes: ["*"]
credentials:
  - id: oauth
    oauth2:
      grant: client_credentials
      token_url: {token_url}
      client_id: latchkey
      client_secret: {{ value: cs }}
routes:
  - id: a
    match: {{ path_prefix: /a/ }}
    upstream: {upstream}
    credential: oauth
    timeout: {timeout}
{extra_routes}"#
    )
}

fn route_b(upstream: &str) -> String {
    format!(
        "  - id: b\n    match: {{ path_prefix: /b/ }}\n    upstream: {upstream}\n    credential: oauth\n"
    )
}

/// The config with route `b` added, on any port.
fn with_route_b(upstream: &str, token_url: &str, timeout: &str) -> String {
    yaml(
        "127.0.0.1:0",
        upstream,
        token_url,
        &route_b(upstream),
        timeout,
    )
}

async fn endpoint() -> token_endpoint::TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: false,
        initial_refresh_token: "unused".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs".into()),
    })
    .await
}

async fn start(path: &Path, watch: bool) -> latchkey::Running {
    let config = latchkey::Config::load(path).expect("valid config");
    let options = latchkey::StartOptions {
        config_path: Some(path.to_path_buf()),
        watch_config: watch,
        ..Default::default()
    };
    latchkey::start_with(config, &path.display().to_string(), options)
        .await
        .expect("start")
}

/// Polls until the reload that adds route `b` is live (bounded).
async fn wait_for_route_b(base: &str) {
    with_timeout(async {
        while get_as_app(base, "/b/x").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn get_as_app(base: &str, path: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = get(
        &format!("{base}{path}"),
        &[("authorization", auth.as_str())],
    )
    .await;
    (
        status.as_u16(),
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_drops_nothing_and_adds_routes() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s")).expect("write");
    let running = start(&path, true).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(get_as_app(&base, "/a/x").await.0, 200);
    let calls_before = ep.calls();

    // Continuous traffic from 4 callers while the file is rewritten.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut traffic = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, base) = (stop.clone(), ok.clone(), failed.clone(), base.clone());
        traffic.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match get_as_app(&base, "/a/x").await.0 {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    // Five reloads through the file watcher, the last one adding route b.
    for t in ["31s", "32s", "33s", "34s"] {
        std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", t)).expect("rewrite");
        with_timeout(async {
            while running.proxy().config.routes[0].timeout
                != proxy_core::config::parse_duration(t).expect("duration")
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    std::fs::write(&path, with_route_b(&up.url(), &ep.url, "34s")).expect("rewrite");
    wait_for_route_b(&base).await;
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        t.await.expect("traffic task");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::SeqCst) > 20);
    // The upstream connections outlive the reloads (the new routes share
    // the old routes' pool): four callers need about four, where a pool per
    // config would have opened four more at each of the five reloads.
    assert!(
        up.conn_count() <= 12,
        "{} upstream connections for 4 callers over 5 reloads",
        up.conn_count()
    );
    // The OAuth credential's config never changed: no token call at all.
    assert_eq!(
        ep.calls(),
        calls_before,
        "a reload refreshed an unchanged credential"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_config_and_says_why() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s")).expect("write");
    let running = start(&path, false).await;
    let base = format!("http://{}", running.proxy_addr);
    let metrics_before = reload_errors();

    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "soon")).expect("rewrite");
    let err = running
        .reload()
        .await
        .expect_err("invalid config must be refused");
    assert!(err.to_string().contains("routes[0].timeout"), "{err}");
    assert_eq!(
        get_as_app(&base, "/a/x").await.0,
        200,
        "the old config stopped serving"
    );
    assert!(
        reload_errors() > metrics_before,
        "latchkey_config_reloads_total{{result=\"error\"}} did not move"
    );

    // The same through the management API: 422 with the field path.
    let admin = format!("http://{}", running.admin_addr.expect("admin"));
    let req = http::Request::post(format!("{admin}/v0/management/reload"))
        .header("authorization", "Bearer mgmt-key")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let (status, _, body) = support::send(req).await;
    assert_eq!(status, 422);
    let body = json(&body);
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(
        body["error"]["errors"][0]["path"], "routes[0].timeout",
        "{body}"
    );

    // Fixed file: the API reload applies it and reports what it kept.
    std::fs::write(&path, with_route_b(&up.url(), &ep.url, "30s")).expect("rewrite");
    let req = http::Request::post(format!("{admin}/v0/management/reload"))
        .header("x-management-key", "mgmt-key")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let (status, _, body) = support::send(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let body = json(&body);
    assert_eq!(body["routes"], 2);
    assert_eq!(body["credentials_kept"], serde_json::json!(["oauth"]));
    assert_eq!(get_as_app(&base, "/b/x").await.0, 200);
    running.shutdown().await;
}

/// A kept-alive connection sees a reload at its next request (the
/// listener loads the current proxy per request, not per connection), and
/// requests on a connection opened before the reload keep working.
#[tokio::test]
async fn a_kept_alive_connection_sees_a_reload_at_its_next_request() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s")).expect("write");
    let running = start(&path, false).await;

    let stream = tokio::net::TcpStream::connect(running.proxy_addr)
        .await
        .expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .expect("handshake");
    let conn = tokio::spawn(conn);
    let auth = format!("Bearer {TOKEN}");
    let mut status_of = async |path: &str| {
        let req = http::Request::get(path)
            .header("host", "proxy.test")
            .header("authorization", auth.as_str())
            .body(http_body_util::Empty::new())
            .expect("request");
        let resp = with_timeout(tx.send_request(req)).await.expect("response");
        let status = resp.status().as_u16();
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body");
        status
    };
    assert_eq!(status_of("/a/x").await, 200);
    assert_eq!(
        status_of("/b/x").await,
        404,
        "route b exists before the reload"
    );

    std::fs::write(&path, with_route_b(&up.url(), &ep.url, "30s")).expect("rewrite");
    running.reload().await.expect("reload");
    // The same connection, not a new one.
    assert_eq!(
        status_of("/b/x").await,
        200,
        "the connection kept the old config"
    );
    assert_eq!(status_of("/a/x").await, 200);
    assert!(!conn.is_finished(), "the connection was closed");
    drop(tx);
    running.shutdown().await;
}

#[tokio::test]
async fn refused_content_is_not_retried_on_every_directory_event() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s")).expect("write");
    let running = start(&path, false).await;
    let reloader = running.reloader().expect("started with a file");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "soon")).expect("rewrite");
    // The watcher's view: the first event reports the invalid file...
    assert!(reloader.reload("file", true).await.is_err());
    // ...later events for the same content (an audit log or another file in
    // the directory changing) are no-ops, not a stream of errors.
    for _ in 0..3 {
        let o = reloader
            .reload("file", true)
            .await
            .expect("unchanged content is not re-validated");
        assert!(!o.changed);
    }
    // An explicit reload (SIGHUP, API) still reports the problem.
    assert!(running.reload().await.is_err());
    running.shutdown().await;
}

/// The file changed after the config was loaded at startup and before it
/// was watched (no event came): the running proxy still gets the file's
/// content, from the check made once the watch began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_during_startup_is_applied() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s")).expect("write");
    // Loaded, then changed before `start_with` watches the file.
    let loaded = latchkey::Config::load(&path).expect("valid config");
    std::fs::write(&path, with_route_b(&up.url(), &ep.url, "30s")).expect("rewrite");
    let options = latchkey::StartOptions {
        config_path: Some(path.clone()),
        watch_config: true,
        ..Default::default()
    };
    let running = latchkey::start_with(loaded, &path.display().to_string(), options)
        .await
        .expect("start");
    wait_for_route_b(&format!("http://{}", running.proxy_addr)).await;
    assert_eq!(running.proxy().config.routes.len(), 2);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_other_files_in_the_directory_do_not_reload() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s")).expect("write");
    let running = start(&path, true).await;
    let reloader = running.reloader().expect("started with a file");
    // The check at startup reads the file once.
    with_timeout(async {
        while reloader.reads() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A noisy neighbour (an audit log, an editor's swap file) writes 50
    // times; the watcher's debounce is 100 ms, so reacting to it would read
    // the config at least once in the 400 ms that follow.
    for i in 0..50 {
        std::fs::write(dir.path().join("audit.log"), format!("line {i}\n")).expect("neighbour");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reloader.reads(),
        1,
        "the watcher woke for an unrelated file"
    );
    // The config file itself still is watched.
    std::fs::write(&path, with_route_b(&up.url(), &ep.url, "30s")).expect("rewrite");
    with_timeout(async {
        while running.proxy().config.routes.len() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Reading the file (as that reload did) is no change: the watcher
    // must not wake for it, or it reloads ten times a second for ever.
    let settled = reloader.reads();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reloader.reads(),
        settled,
        "the reload's own read woke the watcher"
    );
    running.shutdown().await;
}

fn reload_errors() -> f64 {
    let text = audit::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("latchkey_config_reloads_total{") && l.contains("result=\"error\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_changed_credential_is_rebuilt_and_an_unchanged_one_keeps_its_token() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    let config = yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s");
    std::fs::write(&path, &config).expect("write");
    let running = start(&path, false).await;
    let base = format!("http://{}", running.proxy_addr);
    let (_, first) = get_as_app(&base, "/a/x").await;
    let generation = running.proxy().credentials[0].status().generation;
    let calls = ep.calls();

    // Identical file: every credential kept, no token call.
    let o = running.reload().await.expect("reload");
    assert_eq!(o.credentials_kept, ["oauth"]);
    assert_eq!(ep.calls(), calls);
    assert_eq!(
        running.proxy().credentials[0].status().generation,
        generation
    );
    let (_, again) = get_as_app(&base, "/a/x").await;
    assert_eq!(
        support::echoed_header(&first, "authorization"),
        support::echoed_header(&again, "authorization")
    );

    // The credential's own config changes (a scope): rebuilt, one new token.
    std::fs::write(
        &path,
        config.replace(
            "client_secret: { value: cs }",
            "client_secret: { value: cs }\n      scopes: [read]",
        ),
    )
    .expect("rewrite");
    // The token held is served while the new one is fetched at once.
    let o = running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"]);
    assert_eq!(get_as_app(&base, "/a/x").await.0, 200);
    with_timeout(async {
        while ep.calls() < calls + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(ep.calls(), calls + 1);
    running.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Kubernetes' layout: latchkey.yaml -> ..data/latchkey.yaml,
    // ..data -> ..2026_11_23_01, swapped atomically on update.
    let v1 = dir.path().join("..2026_11_23_01");
    std::fs::create_dir(&v1).expect("v1");
    std::fs::write(
        v1.join("latchkey.yaml"),
        yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s"),
    )
    .expect("v1 file");
    symlink("..2026_11_23_01", dir.path().join("..data")).expect("..data");
    symlink("..data/latchkey.yaml", dir.path().join("latchkey.yaml")).expect("file link");
    let path = dir.path().join("latchkey.yaml");
    let running = start(&path, true).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(get_as_app(&base, "/b/x").await.0, 404);

    let v2 = dir.path().join("..2026_11_23_02");
    std::fs::create_dir(&v2).expect("v2");
    std::fs::write(
        v2.join("latchkey.yaml"),
        with_route_b(&up.url(), &ep.url, "30s"),
    )
    .expect("v2 file");
    symlink("..2026_11_23_02", dir.path().join("..data_tmp")).expect("tmp link");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");
    std::fs::remove_dir_all(&v1).expect("remove old");
    wait_for_route_b(&base).await;
    running.shutdown().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let up = echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    std::fs::write(&path, yaml(&listen, &up.url(), &ep.url, "", "30s")).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let base = format!("http://{listen}");
    with_timeout(async {
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(&listen),
            )
            .await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(get_as_app(&base, "/b/x").await.0, 404);
    // Write the new file where the watcher is not told (same bytes would be
    // skipped anyway); SIGHUP reloads unconditionally.
    std::fs::write(
        &path,
        yaml(&listen, &up.url(), &ep.url, &route_b(&up.url()), "30s"),
    )
    .expect("rewrite");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    wait_for_route_b(&base).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

/// A `store: memory` credential whose settings change but whose provider
/// does not (here `refresh.buffer`) keeps its state across the reload: the
/// new source adopts the token held (no token call) and its next refresh
/// sends the rotated refresh token, not the config's seed, which the
/// endpoint has already consumed (`invalid_grant`, and with reuse
/// detection the whole token family revoked).
#[tokio::test]
async fn a_rebuilt_memory_credential_keeps_its_rotated_refresh_token() {
    let up = echo_upstream().await;
    let ep = token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs".into()),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    let config = yaml("127.0.0.1:0", &up.url(), &ep.url, "", "30s").replace(
        "      grant: client_credentials\n",
        "      grant: refresh_token\n      refresh_token: { value: rt-seed }\n",
    );
    std::fs::write(&path, &config).expect("write");
    let running = start(&path, false).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(get_as_app(&base, "/a/x").await.0, 200);
    // One more rotation: the seed and its successor are both spent now.
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("manual refresh");
    let rotated = ep.current_refresh_token().expect("a refresh token");
    let calls = ep.calls();
    assert_eq!(calls, 2);

    std::fs::write(
        &path,
        config.replace(
            "      client_secret: { value: cs }\n",
            "      client_secret: { value: cs }\n    refresh: { buffer: 120s }\n",
        ),
    )
    .expect("rewrite");
    let o = running.reload().await.expect("reload");
    assert_eq!(o.credentials_new, ["oauth"]);
    assert_eq!(get_as_app(&base, "/a/x").await.0, 200);
    assert_eq!(ep.calls(), calls, "the held token was adopted");
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("a refresh after the reload");
    assert_eq!(ep.last_form_value("refresh_token"), Some(rotated));
    assert_eq!(ep.invalid_grants(), 0);
    running.shutdown().await;
}
