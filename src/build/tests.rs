//! Building credential sources: what an `exec` command inherits; which
//! routes get the 401 retry.
use super::{Kept, Proxy, build_proxy_with, credential_sources, retry_policy};
use crate::StartOptions;
use proxy_core::config::Config;

/// One `exec` credential whose command prints whether it sees
/// `CARGO_PKG_NAME` (set by cargo for the test process; setting one would
/// need `unsafe`), and a client whose token is `client_token`.
fn config(client_token: &str) -> Config {
    let yaml = format!(
        r#"
proxy: {{ listen: "127.0.0.1:0" }}
clients:
  - {{ id: c, token: {client_token}, routes: ["*"] }}
credentials:
  - id: x
    exec:
      command: [sh, -c, 'printf "{{\"access_token\":\"seen-%s\"}}" "${{CARGO_PKG_NAME:-absent}}"']
routes:
  - {{ id: r, match: {{ path_prefix: / }}, upstream: "http://127.0.0.1:9", credential: x }}
"#
    );
    Config::from_yaml(&yaml, "t.yaml").unwrap()
}

/// An exec credential's command does not see the variables latchkey's
/// own config reads with `{ env: NAME }` (here a client token), and
/// sees the rest of the environment.
#[tokio::test]
async fn exec_commands_do_not_inherit_latchkeys_env_secrets() {
    for (token, want) in [
        ("{ env: CARGO_PKG_NAME }", "seen-absent"),
        ("{ value: a-literal-token }", "seen-latchkey"),
    ] {
        let c = config(token);
        let sources = credential_sources(&c, "t.yaml").unwrap();
        let got = sources["x"].get().await.unwrap();
        assert_eq!(got.expose(), want, "client token {token}");
    }
}

/// The same for a basic-auth user name read from the environment.
#[tokio::test]
async fn exec_commands_do_not_inherit_a_basic_username_from_env() {
    let yaml = r#"
proxy: { listen: "127.0.0.1:0" }
credentials:
  - id: x
    exec:
      command: [sh, -c, 'printf "{\"access_token\":\"seen-%s\"}" "${CARGO_PKG_NAME:-absent}"']
routes:
  - { id: r, match: { path_prefix: / }, upstream: "http://127.0.0.1:9", credential: x, public: true, inject: { basic: { username: { env: CARGO_PKG_NAME } } } }
"#;
    let c = Config::from_yaml(yaml, "t.yaml").unwrap();
    let sources = credential_sources(&c, "t.yaml").unwrap();
    assert_eq!(sources["x"].get().await.unwrap().expose(), "seen-absent");
}

/// A reload that starts reading a variable as a secret rebuilds an
/// `exec` credential whose own config did not change: the command's
/// next run no longer sees it. (It kept the old source, and with it
/// the variable.)
#[tokio::test]
async fn a_reload_that_reads_another_env_secret_rebuilds_exec_credentials() {
    let kept = Kept::default();
    let options = StartOptions::default();
    let token = |p: &Proxy| {
        p.credentials
            .iter()
            .find(|c| c.id() == "x")
            .unwrap()
            .clone()
    };
    let first = build_proxy_with(
        config("{ value: a-literal-token }"),
        "t.yaml",
        &options,
        None,
        &kept,
    )
    .unwrap();
    token(&first).activate();
    assert_eq!(token(&first).get().await.unwrap().expose(), "seen-latchkey");
    let second = build_proxy_with(
        config("{ env: CARGO_PKG_NAME }"),
        "t.yaml",
        &options,
        Some(&first),
        &kept,
    )
    .unwrap();
    let x = token(&second);
    assert!(!std::sync::Arc::ptr_eq(&x, &token(&first)), "kept");
    x.activate();
    // It starts from the token the old source left in the memory store,
    // and its command's next run no longer sees the variable.
    assert_eq!(x.get().await.unwrap().expose(), "seen-latchkey");
    x.refresh_now().await.unwrap();
    assert_eq!(x.get().await.unwrap().expose(), "seen-absent");
}

/// The 401 retry is wired where a replay could send another credential: a
/// static key from a watched file (rewritten, it is a new generation) or a
/// refreshing credential, unless `retry.enabled: false`; never for a
/// static key from a literal value or an environment variable, which stays
/// what it was until a reload builds new sources.
#[tokio::test]
async fn the_401_retry_is_left_out_where_the_credential_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "file-key\n").unwrap();
    let yaml = format!(
        r#"
proxy: {{ listen: "127.0.0.1:0" }}
clients:
  - {{ id: c, token: {{ value: client-token }}, routes: ["*"] }}
credentials:
  - {{ id: from-file, static: {{ file: {key} }} }}
  - {{ id: from-value, static: {{ value: literal-key }} }}
  - {{ id: from-env, static: {{ env: CARGO_PKG_NAME }} }}
  - id: oauth
    oauth2:
      grant: client_credentials
      token_url: http://127.0.0.1:9/token
      client_id: c
      client_secret: {{ value: s }}
routes:
  - {{ id: file, match: {{ path_prefix: /file/ }}, upstream: "http://127.0.0.1:9", credential: from-file }}
  - {{ id: file-off, match: {{ path_prefix: /off/ }}, upstream: "http://127.0.0.1:9", credential: from-file, retry: {{ enabled: false }} }}
  - {{ id: value, match: {{ path_prefix: /value/ }}, upstream: "http://127.0.0.1:9", credential: from-value }}
  - {{ id: env, match: {{ path_prefix: /env/ }}, upstream: "http://127.0.0.1:9", credential: from-env }}
  - {{ id: oauth, match: {{ path_prefix: /oauth/ }}, upstream: "http://127.0.0.1:9", credential: oauth }}
"#,
        key = key.display()
    );
    let c = Config::from_yaml(&yaml, "t.yaml").unwrap();
    let sources = credential_sources(&c, "t.yaml").unwrap();
    for (route, want) in [
        ("file", true),
        ("file-off", false),
        ("value", false),
        ("env", false),
        ("oauth", true),
    ] {
        let r = c.routes.iter().find(|r| r.id == route).unwrap();
        let source = &sources[r.credential.as_deref().unwrap()];
        assert_eq!(
            retry_policy(r, source.as_ref()).is_some(),
            want,
            "route {route}"
        );
    }
}
