//! A reload pauses every rotating credential of the running config until
//! it is applied or refused: a refresh started while the reload waits for
//! another credential's refresh cannot rotate a refresh token behind the
//! hand-over's back; so are the credentials it may rebuild (a scope edit
//! must not adopt a token the old scopes got). The others are neither
//! paused nor waited for.
#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::time::Duration;
use support::token_endpoint::{self, EndpointOptions};
use support::{echo_upstream, with_timeout};

/// `a` and `b` rotate their refresh tokens; `c` (client credentials) does
/// not.
fn config(up: &str, urls: [&str; 3], a_store: &str, dir: &str, c_scopes: &str) -> String {
    let [a_url, b_url, c_url] = urls;
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", management_key: {{ value: mgmt-key }} }}
file_store: {{ dir: "{dir}" }}
clients:
  - {{ id: app, token: {{ value: review-client }}, routes: ["*"] }}
credentials:
  - id: a
    oauth2:
      grant: refresh_token
      token_url: {a_url}
      client_id: latchkey
      client_secret: {{ value: cs }}
      refresh_token: {{ value: rt-seed }}
    store: {a_store}
  - id: b
    oauth2:
      grant: refresh_token
      token_url: {b_url}
      client_id: latchkey
      client_secret: {{ value: cs }}
      refresh_token: {{ value: rt-seed }}
  - id: c
    oauth2:
      grant: client_credentials
      token_url: {c_url}
      client_id: latchkey
      client_secret: {{ value: cs }}
      scopes: [{c_scopes}]
routes:
  - {{ id: a, match: {{ path_prefix: /a/ }}, upstream: "{up}", credential: a }}
  - {{ id: b, match: {{ path_prefix: /b/ }}, upstream: "{up}", credential: b }}
  - {{ id: c, match: {{ path_prefix: /c/ }}, upstream: "{up}", credential: c }}
"#
    )
}

fn opts(rotate: bool) -> EndpointOptions {
    EndpointOptions {
        expires_in: 3600,
        rotate,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs".into()),
    }
}

/// An upstream, the three token endpoints, and latchkey running
/// `config` (with `a` on `memory`) from `latchkey.yaml` in `dir`, every
/// credential holding its first token.
struct Rig {
    up: support::Upstream,
    eps: [token_endpoint::TokenEndpoint; 3],
    dir: tempfile::TempDir,
    running: latchkey::Running,
}

impl Rig {
    /// Rewrites the config file with `a` on `a_store` and `c`'s scopes.
    fn rewrite(&self, a_store: &str, c_scopes: &str) {
        let store = self.dir.path().join("store").display().to_string();
        let urls = [
            self.eps[0].url.as_str(),
            self.eps[1].url.as_str(),
            self.eps[2].url.as_str(),
        ];
        let text = config(&self.up.url(), urls, a_store, &store, c_scopes);
        std::fs::write(self.dir.path().join("latchkey.yaml"), text).unwrap();
    }
}

async fn rig() -> Rig {
    let up = echo_upstream().await;
    let eps = [
        token_endpoint::start(opts(true)).await,
        token_endpoint::start(opts(true)).await,
        token_endpoint::start(opts(false)).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let urls = [
        eps[0].url.as_str(),
        eps[1].url.as_str(),
        eps[2].url.as_str(),
    ];
    let path = dir.path().join("latchkey.yaml");
    let running = start(&path, &config(&up.url(), urls, "memory", &store, "read")).await;
    Rig {
        up,
        eps,
        dir,
        running,
    }
}

async fn start(path: &std::path::Path, config: &str) -> latchkey::Running {
    std::fs::write(path, config).unwrap();
    let options = latchkey::StartOptions {
        config_path: Some(path.to_path_buf()),
        watch_config: false,
        ..Default::default()
    };
    let running = latchkey::start_with(
        latchkey::Config::load(path).unwrap(),
        &path.display().to_string(),
        options,
    )
    .await
    .unwrap();
    let creds = running.proxy().credentials.clone();
    let ids: Vec<_> = creds.iter().map(|c| c.id().to_owned()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    with_timeout(async {
        while creds.iter().any(|c| c.generation().is_none()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    running
}

/// Starts a refresh of `cred` whose token call (at `ep`) takes `delay`,
/// and waits until that call is under way.
async fn slow_refresh(
    ep: &token_endpoint::TokenEndpoint,
    cred: &std::sync::Arc<dyn proxy_core::credential::CredentialSource>,
    delay: Duration,
) -> tokio::task::JoinHandle<()> {
    ep.set_delay(delay);
    let before = ep.calls();
    let c = cred.clone();
    let refresh = tokio::spawn(async move {
        let _ = c.refresh_now().await;
    });
    with_timeout(async {
        while ep.calls() <= before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    refresh
}

/// `cred` as the refreshing source it is.
fn refreshing(
    cred: &std::sync::Arc<dyn proxy_core::credential::CredentialSource>,
) -> refresh_layer::RefreshingSource {
    cred.as_any()
        .and_then(|x| x.downcast_ref::<refresh_layer::RefreshingSource>())
        .unwrap()
        .clone()
}

/// Credential `a` (rotating) moves from `memory` to `file` in a reload
/// while credential `b` (rotating too) has a refresh running (a slow token
/// endpoint: the reload waits for it). Meanwhile an upstream 401 asks for
/// a refresh of `a`. Before pausing, that refresh could start after `a`
/// was waited for and still run when the hand-overs were taken: `a`'s
/// successor started from the refresh token it spent, and its first
/// refresh was an `invalid_grant` (a person must log in again; an IdP with
/// reuse detection revokes the family). Now it waits for the reload, and
/// the retired source refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_asked_for_while_the_reload_waits_does_not_fork_the_refresh_token() {
    let rig = rig().await;
    let ([ea, eb, _], running) = (&rig.eps, &rig.running);
    let creds = running.proxy().credentials.clone();
    let (a, b) = (creds[0].clone(), creds[1].clone());
    assert_eq!(ea.invalid_grants(), 0);

    // b: a refresh that takes 1 s, running when the reload starts.
    let b_refresh = slow_refresh(eb, &b, Duration::from_secs(1)).await;
    // The reload: a moves to the file store.
    rig.rewrite("file", "read");
    let reloader = running.reloader().unwrap();
    let reload = tokio::spawn(async move { reloader.reload("api", false).await });
    // Where the 401 lands does not matter for the outcome: before the
    // pause, its refresh is waited for (and handed over); after it, it
    // waits for the reload. This sleep only puts it where the code before
    // pausing forked the token (after `a` was waited for, before the
    // hand-over), to keep this test a regression test for that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A 401 for a's token while the reload waits for b: a forced refresh
    // of a, whose token call takes 2 s.
    ea.set_delay(Duration::from_secs(2));
    let g = a.generation().unwrap();
    let a2 = a.clone();
    let forced = tokio::spawn(async move { a2.invalidate(g).await });
    let outcome = reload.await.unwrap().expect("reload");
    assert!(
        outcome.credentials_new.contains(&"a".to_owned()),
        "{outcome:?}"
    );
    let _ = forced.await;
    let _ = b_refresh.await;
    ea.set_delay(Duration::ZERO);
    // a's successor refreshes (an operator's `ctl refresh`, or its schedule).
    let new_a = running
        .proxy()
        .credentials
        .iter()
        .find(|c| c.id() == "a")
        .unwrap()
        .clone();
    let r = new_a.refresh_now().await;
    assert_eq!(
        ea.invalid_grants(),
        0,
        "a's successor sent a spent refresh token ({r:?}); last sent {:?}, live {:?}",
        ea.last_form_value("refresh_token"),
        ea.current_refresh_token()
    );
    rig.running.shutdown().await;
}

/// A reload that waits for a rotating credential's slow refresh (`a`,
/// 3 s) neither pauses nor waits for a non-rotating one: `c`'s forced
/// refresh (an upstream 401) runs and ends while the reload still waits.
/// Before, every refreshing credential was paused, and `c`'s requests
/// waited for the reload (or 503 after `refresh.timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_holds_back_no_refresh_of_a_non_rotating_credential() {
    // All bound: the upstream, b's endpoint and the config's directory
    // must live to the end.
    let Rig {
        up: _up,
        eps: [ea, _eb, ec],
        dir: _dir,
        running,
    } = rig().await;
    let creds = running.proxy().credentials.clone();
    let (a, c) = (creds[0].clone(), creds[2].clone());

    let a_refresh = slow_refresh(&ea, &a, Duration::from_secs(3)).await;
    let reloader = running.reloader().unwrap();
    let reload = tokio::spawn(async move { reloader.reload("api", false).await });
    // Once a is paused, the reload waits for a's refresh (~3 s more).
    let a_source = refreshing(&a);
    with_timeout(async {
        while !a_source.is_paused() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let g = c.generation().unwrap();
    with_timeout(c.invalidate(g)).await.expect("c refreshed");
    assert!(
        !reload.is_finished(),
        "c's refresh waited for the reload to end"
    );
    assert_eq!(ec.calls(), 2);
    assert!(c.generation().unwrap() > g);
    reload.await.unwrap().expect("reload");
    let _ = a_refresh.await;
    running.shutdown().await;
}

/// A reload that edits a non-rotating credential's scopes while its
/// refresh runs (old scopes, a 1 s token call) waits for that refresh and
/// then has the new source ask for a token with the new scopes, as the
/// README promises for a scope edit. Not pausing it, the new source
/// adopted the running refresh's old-scope token from the store instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_edit_during_a_running_refresh_still_fetches_with_the_new_scopes() {
    let rig = rig().await;
    let (ec, running) = (&rig.eps[2], &rig.running);
    let c = running.proxy().credentials[2].clone();
    let old_refresh = slow_refresh(ec, &c, Duration::from_secs(1)).await;
    rig.rewrite("memory", "read, write");
    let reloader = running.reloader().unwrap();
    let outcome = reloader.reload("api", false).await.expect("reload");
    assert_eq!(outcome.credentials_new, ["c"]);
    ec.set_delay(Duration::ZERO);
    let _ = old_refresh.await;
    // The successor's refresh with the new scopes.
    with_timeout(async {
        while ec.calls() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(ec.last_form_value("scope").as_deref(), Some("read write"));
    // And its token is the one served.
    let new_c = running.proxy().credentials[2].clone();
    with_timeout(async {
        loop {
            let served = new_c.get().await.unwrap().expose().to_owned();
            if ec.issued_access_tokens().get(2) == Some(&served) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    rig.running.shutdown().await;
}

/// A reload whose caller stops waiting (a management API caller that
/// disconnects, a timeout around the call) while the reload waits for a
/// rotating credential's refresh still applies the new config. Cut
/// there, it left the new file recorded as seen and never applied: every
/// later watcher reload skipped it as unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_caller_goes_away_still_applies_the_file() {
    let rig = rig().await;
    let (ea, running) = (&rig.eps[0], &rig.running);
    let a = running.proxy().credentials[0].clone();
    let old_c = running.proxy().credentials[2].clone();
    let a_refresh = slow_refresh(ea, &a, Duration::from_secs(1)).await;
    // c's scopes change: c is built anew.
    rig.rewrite("memory", "read, write");
    let a_source = refreshing(&a);
    let reloader = running.reloader().unwrap();
    {
        let reload = reloader.reload("api", false);
        tokio::pin!(reload);
        tokio::select! {
            r = &mut reload => panic!("the reload did not wait for a's refresh: {r:?}"),
            () = async {
                while !a_source.is_paused() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            } => {}
        }
        // The caller goes away while the reload waits for a.
    }
    with_timeout(async {
        while running
            .proxy()
            .credentials
            .iter()
            .any(|c| std::sync::Arc::ptr_eq(c, &old_c))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The file is recorded as applied: a watcher reload has nothing to do.
    let again = reloader.reload("file", true).await.expect("reload");
    assert!(!again.changed, "{again:?}");
    ea.set_delay(Duration::ZERO);
    let _ = a_refresh.await;
    rig.running.shutdown().await;
}
