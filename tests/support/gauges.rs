//! Config and metric helpers for the tests of the credential gauges
//! across reloads (`reload_metrics`, `reload_refused`).

use super::token_endpoint::{self, EndpointOptions, TokenEndpoint};
use std::path::Path;

/// A `client_credentials` token endpoint for client `latchkey` / `cs`,
/// issuing 1 h tokens.
pub async fn endpoint() -> TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: false,
        initial_refresh_token: "unused".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs".into()),
    })
    .await
}

/// latchkey from the config file at `path`, reloadable through
/// [`latchkey::Running::reload`] (no file watch).
pub async fn start(path: &Path) -> latchkey::Running {
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

/// One client (proxy token `token`), credential `gauge-a` as given and
/// `gauge-b` when `b` is not empty, one route per credential (`/a/`,
/// `/b/`).
pub fn yaml(token: &str, upstream: &str, a: &str, b: &str) -> String {
    let mut out = format!(
        r#"proxy: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", management_key: {{ value: mgmt-key }} }}
clients:
  - id: app
    token: {{ value: {token} }}
    routes: ["*"]
credentials:
  - id: gauge-a
{a}
"#
    );
    if !b.is_empty() {
        out.push_str(&format!("  - id: gauge-b\n{b}\n"));
    }
    out.push_str(&format!(
        "routes:\n  - id: a\n    match: {{ path_prefix: /a/ }}\n    upstream: {upstream}\n    credential: gauge-a\n"
    ));
    if !b.is_empty() {
        out.push_str(&format!(
            "  - id: b\n    match: {{ path_prefix: /b/ }}\n    upstream: {upstream}\n    credential: gauge-b\n"
        ));
    }
    out
}

/// An OAuth2 `client_credentials` credential on `ep` with `scope`.
pub fn oauth(ep: &TokenEndpoint, scope: &str) -> String {
    format!(
        "    oauth2:\n      grant: client_credentials\n      token_url: {}\n      client_id: latchkey\n      client_secret: {{ value: cs }}\n      scopes: [{scope}]",
        ep.url
    )
}

fn rendered() -> String {
    audit::metrics::handle()
        .map(|h| h.render())
        .unwrap_or_default()
}

/// The gauge `name`'s value for `credential`, as the exporter renders it.
pub fn gauge(name: &str, credential: &str) -> Option<String> {
    let label = format!("credential=\"{credential}\"");
    rendered()
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

/// `latchkey_config_reloads_total{result}`, as rendered.
pub fn reloads(result: &str) -> Option<String> {
    let prefix = format!("latchkey_config_reloads_total{{result=\"{result}\"}} ");
    rendered()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// A time stamp gauge that holds a time (not NaN, not unset).
pub fn is_set(value: Option<&str>) -> bool {
    value.is_some_and(|v| v != "NaN" && v.parse::<f64>().is_ok_and(|f| f > 1e9))
}
