//! The `file` store's health as `/readyz` (`stores.file`), the management
//! API (`store_error`) and `/metrics` (`latchkey_store_up{store="file"}`)
//! report it: down with the failure while its lock, load or save fails, up
//! again once one succeeds, and no longer reported (`/readyz`) nor set
//! (the gauge is NaN) once a reload leaves no credential on it.
//!
//! Its own test binary: the metrics recorder is per process. The tests
//! here share the one `store="file"` series, so they take turns.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::path::Path;
use support::{echo_upstream, get, json, send, with_timeout};

const KEY: &str = "mk-store-health-key";
const M: &str = "/v0/management";

/// The store gauge is one series per process: one test at a time.
static GAUGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Credential `cluster` (exec, a token valid for an hour) on store `store`,
/// with `file_store.dir` at `store_dir`, behind route `/c/`.
fn yaml(store_dir: &Path, store: &str, upstream: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", management_key: {{ value: {KEY} }} }}
file_store: {{ dir: "{dir}" }}
clients:
  - {{ id: app, token: {{ value: store-health-client }}, routes: ["*"] }}
credentials:
  - id: cluster
    exec:
      command: ["/bin/sh", "-c", "echo '{{\"access_token\":\"tok-1\",\"expires_in\":3600}}'"]
    store: {store}
routes:
  - {{ id: c, match: {{ path_prefix: /c/ }}, upstream: "{upstream}", credential: cluster }}
"#,
        dir = store_dir.display(),
    )
}

/// Starts latchkey from `config` written to `<dir>/latchkey.yaml` (so it
/// can be reloaded) and waits until `/readyz` answers 200.
async fn start(dir: &Path, config: &str) -> (latchkey::Running, String) {
    let path = dir.join("latchkey.yaml");
    std::fs::write(&path, config).unwrap();
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
    let admin = format!("http://{}", running.admin_addr.unwrap());
    with_timeout(async {
        while get(&format!("{admin}/readyz"), &[]).await.0 != StatusCode::OK {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    (running, admin)
}

async fn refresh(admin: &str) -> (StatusCode, Value) {
    let req = Request::post(format!("{admin}{M}/credentials/cluster/refresh"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(req).await;
    (status, json(&body))
}

async fn store_error(admin: &str) -> Value {
    let auth = format!("Bearer {KEY}");
    let (status, _, body) = get(
        &format!("{admin}{M}/credentials/cluster"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    json(&body)["store_error"].clone()
}

async fn readyz_stores(admin: &str) -> Value {
    json(&get(&format!("{admin}/readyz"), &[]).await.2)["stores"].clone()
}

/// `latchkey_store_up{store="file"}` as `/metrics` renders it.
async fn store_up(admin: &str) -> Option<String> {
    let (status, _, body) = get(&format!("{admin}/metrics"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_store_up{store=\"file\"} "))
        .map(str::to_owned)
}

/// Replaces the store directory by a regular file: every lock, load and
/// save fails with "Not a directory".
fn break_store(store: &Path) {
    std::fs::remove_dir_all(store).unwrap();
    std::fs::write(store, "not a directory").unwrap();
}

async fn assert_down(admin: &str) {
    // The store is only a cache for this non-rotating credential: it
    // refreshes without it, and the store is reported down.
    let (status, body) = refresh(admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["last_error"], Value::Null, "{body}");
    let error = store_error(admin).await;
    let error = error.as_str().expect("store_error is set");
    assert!(error.contains("Not a directory"), "{error}");
    assert!(!error.contains("tok-1"), "{error}");
    let stores = readyz_stores(admin).await;
    let file = stores["file"].as_str().unwrap_or_default();
    assert!(
        file.starts_with("down: ") && file.contains("Not a directory"),
        "{stores}"
    );
    assert_eq!(store_up(admin).await.as_deref(), Some("0"));
}

#[tokio::test]
async fn a_failing_file_store_is_reported_down_and_up_again_once_it_answers() {
    let _turn = GAUGE.lock().await;
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (running, admin) = start(dir.path(), &yaml(&store, "file", &up.url())).await;
    assert_eq!(store_error(&admin).await, Value::Null);
    assert_eq!(readyz_stores(&admin).await["file"], "up");
    assert_eq!(store_up(&admin).await.as_deref(), Some("1"));

    break_store(&store);
    assert_down(&admin).await;

    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir(&store).unwrap();
    let (status, body) = refresh(&admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(store_error(&admin).await, Value::Null);
    assert_eq!(readyz_stores(&admin).await["file"], "up");
    assert_eq!(store_up(&admin).await.as_deref(), Some("1"));
    running.shutdown().await;
}

/// A store down when a reload moves its last credential elsewhere: no
/// longer in `/readyz`, and its gauge no longer 0 (a "store down" alert
/// would fire for ever for a store nothing uses).
#[tokio::test]
async fn a_store_no_credential_uses_after_a_reload_loses_its_gauge() {
    let _turn = GAUGE.lock().await;
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (running, admin) = start(dir.path(), &yaml(&store, "file", &up.url())).await;
    break_store(&store);
    assert_down(&admin).await;

    std::fs::write(
        dir.path().join("latchkey.yaml"),
        yaml(&store, "memory", &up.url()),
    )
    .unwrap();
    let outcome = running.reload().await.unwrap();
    assert_eq!(outcome.credentials_new, ["cluster"]);
    assert_eq!(readyz_stores(&admin).await, serde_json::json!({}));
    let gauge = store_up(&admin).await;
    assert!(
        gauge.as_deref().is_none_or(|v| v == "NaN"),
        "latchkey_store_up{{store=\"file\"}} {gauge:?}"
    );
    running.shutdown().await;
}
