//! A route's basic-auth user name read from a secret is the route's
//! credential as much as its token: a reload keeps the last value its file
//! gave (as it does for a client's token), and `/readyz` waits for it.

#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::path::Path;
use std::time::Duration;
use support::{echo_upstream, echoed_header, get, json, with_timeout};

/// `base64("svc:the-key")`.
const BASIC: &str = "Basic c3ZjOnRoZS1rZXk=";

fn config(up: &str, user_file: &Path, extra_route: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
secrets: {{ file_poll_interval: 100ms }}
clients:
  - {{ id: app, token: {{ value: app-token }}, routes: ["*"] }}
credentials:
  - {{ id: key, static: {{ value: the-key }} }}
routes:
  - {{ id: api, match: {{ path_prefix: /api/ }}, upstream: "{up}", credential: key, inject: {{ basic: {{ username: {{ file: "{}" }} }} }} }}
{extra_route}"#,
        user_file.display()
    )
}

async fn start(path: &Path) -> latchkey::Running {
    let options = latchkey::StartOptions {
        config_path: Some(path.to_path_buf()),
        watch_config: false,
        ..Default::default()
    };
    latchkey::start_with(
        latchkey::Config::load(path).unwrap(),
        &path.display().to_string(),
        options,
    )
    .await
    .unwrap()
}

async fn authorization_sent(running: &latchkey::Running) -> (u16, Option<String>) {
    let url = format!("http://{}/api/x", running.proxy_addr);
    let (status, _, body) = get(&url, &[("authorization", "Bearer app-token")]).await;
    let sent = (status == 200).then(|| echoed_header(&json(&body), "authorization"));
    (status.as_u16(), sent.flatten())
}

/// The user-name file goes away (a Secret key removed, a rotation half
/// done): the route keeps sending the last name it read, and still does
/// after a reload that edits another route. The reload used to read the
/// file afresh, and every request on the route was a 503.
#[tokio::test]
async fn a_reload_keeps_the_last_user_name_its_file_gave() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, user) = (dir.path().join("lk.yaml"), dir.path().join("user"));
    std::fs::write(&user, "svc\n").unwrap();
    std::fs::write(&path, config(&up.url(), &user, "")).unwrap();
    let running = start(&path).await;
    assert_eq!(
        authorization_sent(&running).await,
        (200, Some(BASIC.into()))
    );
    std::fs::remove_file(&user).unwrap();
    let other = format!(
        "  - {{ id: other, match: {{ path_prefix: /other/ }}, upstream: \"{}\", public: true }}\n",
        up.url()
    );
    std::fs::write(&path, config(&up.url(), &user, &other)).unwrap();
    let outcome = running.reload().await.unwrap();
    assert_eq!(outcome.routes, 2);
    assert_eq!(
        authorization_sent(&running).await,
        (200, Some(BASIC.into()))
    );
    running.shutdown().await;
}

/// A user name that does not resolve keeps the pod unready, naming the
/// route (never a value), until its file appears.
#[tokio::test]
async fn readyz_waits_for_a_user_name_from_a_file() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, user) = (dir.path().join("lk.yaml"), dir.path().join("user"));
    std::fs::write(&path, config(&up.url(), &user, "")).unwrap();
    let running = start(&path).await;
    let readyz = format!("http://{}/readyz", running.admin_addr.unwrap());
    let (status, _, body) = get(&readyz, &[]).await;
    let body = json(&body);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["all_resolved"], false, "{body}");
    let reason = body["usernames"]["api"].as_str().unwrap();
    assert!(reason.contains("user"), "{body}");
    assert_eq!(authorization_sent(&running).await.0, 503);

    std::fs::write(&user, "svc").unwrap();
    with_timeout(async {
        while get(&readyz, &[]).await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, _, body) = get(&readyz, &[]).await;
    assert_eq!(json(&body)["usernames"]["api"], "ok");
    assert_eq!(
        authorization_sent(&running).await,
        (200, Some(BASIC.into()))
    );
    running.shutdown().await;
}
