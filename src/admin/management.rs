//! The management API under `/v0/management/` on the admin listener.
//!
//! Off unless `admin.management_key` is set: then every management path
//! answers 404. When on, each request passes, in order:
//! 1. the loopback rule: only loopback peers, unless `admin.allow_remote`
//!    (403 `remote_management_disabled`);
//! 2. the per-address lockout ([`super::lockout`]): 429 with `Retry-After`,
//!    checked before the key is compared;
//! 3. the key, as `Authorization: Bearer <key>` or `X-Management-Key: <key>`,
//!    compared in constant time (401 `unauthorized`).
//!
//! Endpoints (JSON, never a secret value):
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `credentials`, alias `auth-files` | `{"credentials": [status, ...]}` |
//! | GET | `credentials/{id}` | the status |
//! | POST | `credentials/{id}/refresh`, alias `auths/{id}/refresh` | forced refresh (single-flight), the new status |
//! | POST | `credentials/{id}/invalidate` | invalidate the current generation and refresh once, the new status |
//! | GET | `config` | the running config, secrets redacted |
//!
//! A failed refresh is 502 `refresh_failed` with the token endpoint's
//! `oauth_error` code (or `null`); a static credential is 409
//! `not_refreshable`.

use super::AdminState;
use super::lockout::{Attempt, Lockout};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use proxy_core::ProxyBody;
use proxy_core::config::AdminSettings;
use proxy_core::credential::{CredentialError, CredentialSource};
use proxy_core::secret::SecretSource;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// The path every management endpoint starts with.
pub const PREFIX: &str = "/v0/management";

/// Header carrying the key as an alternative to `Authorization: Bearer`.
pub const KEY_HEADER: &str = "x-management-key";

/// What the management API needs besides the proxy: the key, the loopback
/// rule and the lockout state.
#[derive(Debug, Default)]
pub struct Management {
    key: Option<SecretSource>,
    allow_remote: bool,
    lockout: Lockout,
}

/// One management endpoint, parsed from the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    List,
    Get(&'a str),
    Refresh(&'a str),
    Invalidate(&'a str),
    Config,
    Reload,
}

// === impl Management ===

impl Management {
    /// From `admin:`; `poll` is how often a `file` key is re-read, so a
    /// rotated key takes effect without a restart.
    pub fn from_config(admin: Option<&AdminSettings>, poll: Duration) -> Self {
        Self {
            key: admin
                .and_then(|a| a.management_key.as_ref())
                .map(|k| SecretSource::resolve(k, poll)),
            allow_remote: admin.is_some_and(|a| a.allow_remote),
            lockout: Lockout::default(),
        }
    }

    /// Whether a management key is configured.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }
}

/// Whether `path` belongs to the management API.
pub fn is_management_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Answers one management request from `peer`. Public so tests can present
/// a non-loopback peer without non-loopback traffic.
pub async fn handle(state: &AdminState, req: &Parts, peer: SocketAddr) -> Response<ProxyBody> {
    let m = &state.management;
    let Some(key) = &m.key else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the management API is off; set admin.management_key to enable it",
        );
    };
    if !m.allow_remote && !peer.ip().to_canonical().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "remote_management_disabled",
            "the management API answers loopback callers only; set admin.allow_remote to change that",
        );
    }
    let expected = match key.load() {
        Ok(k) => k,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "management_key_unavailable",
                &format!("the management key does not resolve: {e}"),
            );
        }
    };
    let mut presented = presented_keys(&req.headers);
    presented.sort_unstable();
    presented.dedup();
    // No key is no guess: it is refused without counting towards the
    // lockout, or a few keyless probes (a `curl` without the header, a
    // `ctl` with an empty key) would lock the operator out. Several
    // different keys in one request (header lines, or both headers) are
    // one failed attempt, whatever they are: compared, each would be a
    // guess, and a hundred header lines would make a request a hundred
    // guesses that the lockout counts as one.
    let verdict = if presented.is_empty() {
        Attempt::Rejected
    } else if presented.len() > 1 {
        m.lockout.attempt(peer.ip(), Instant::now(), || false)
    } else {
        m.lockout.attempt(peer.ip(), Instant::now(), || {
            // Every presented key is compared, so timing does not say which
            // header was checked.
            presented.iter().fold(false, |ok, p| {
                ok | bool::from(p.as_bytes().ct_eq(expected.expose().as_bytes()))
            })
        })
    };
    match verdict {
        Attempt::Accepted => {}
        Attempt::Rejected => {
            tracing::warn!(%peer, "management API: wrong or missing key");
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the management key as `Authorization: Bearer <key>` or `X-Management-Key: <key>`",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"latchkey-management\""),
            );
            return resp;
        }
        Attempt::Locked { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                &format!("too many wrong keys from {}; retry in {secs} s", peer.ip()),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }

    let path = req.uri.path();
    let Some((endpoint, allowed)) = route(path) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no management endpoint {path}"),
        );
    };
    let method_ok = req.method == allowed || (allowed == Method::GET && req.method == Method::HEAD);
    if !method_ok {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{path} takes {allowed}"),
        );
        if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    dispatch(state, endpoint, peer).await
}

async fn dispatch(
    state: &AdminState,
    endpoint: Endpoint<'_>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let proxy = state.proxy.load_full();
    let find = |id: &str| proxy.credentials.iter().find(|c| c.id() == id).cloned();
    match endpoint {
        Endpoint::List => {
            let all: Vec<_> = proxy.credentials.iter().map(|c| c.status()).collect();
            ok(&json!({ "credentials": all }))
        }
        Endpoint::Config => match serde_json::to_value(&*proxy.config) {
            Ok(mut v) => {
                redact_config(&mut v);
                ok(&v)
            }
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("cannot serialise the config: {e}"),
            ),
        },
        Endpoint::Reload => {
            tracing::info!(%peer, "management API: reload");
            let Some(reloader) = state.reloader.as_ref() else {
                return error(
                    StatusCode::CONFLICT,
                    "reload_unavailable",
                    "latchkey was started without a config file; there is nothing to reload",
                );
            };
            match reloader.reload("api", false).await {
                Ok(outcome) => ok(&json!(outcome)),
                Err(crate::reload::ReloadError::Config(e)) => {
                    let errors: Vec<_> = e
                        .errors
                        .iter()
                        .map(|f| json!({ "path": f.path, "message": f.message }))
                        .collect();
                    respond(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({"error": {
                            "code": "invalid_config",
                            "message": format!("{e}\nthe running config keeps serving"),
                            "errors": errors,
                        }}),
                    )
                }
                Err(e) => error(StatusCode::CONFLICT, "reload_unavailable", &e.to_string()),
            }
        }
        Endpoint::Get(id) => match find(id) {
            Some(src) => ok(&json!(src.status())),
            None => unknown(id),
        },
        Endpoint::Refresh(id) | Endpoint::Invalidate(id) => {
            let Some(src) = find(id) else {
                return unknown(id);
            };
            if src.kind() == "static" {
                return error(
                    StatusCode::CONFLICT,
                    "not_refreshable",
                    &format!("credential {id:?} is static and has nothing to refresh"),
                );
            }
            let invalidate = matches!(endpoint, Endpoint::Invalidate(_));
            tracing::info!(%peer, credential = id, invalidate, "management API: forced refresh");
            match force(&src, invalidate).await {
                Ok(()) => ok(&json!(src.status())),
                Err(e) => refresh_failed(&e),
            }
        }
    }
}

/// Refreshes `src` through its single-flight path. `invalidate` marks the
/// generation served now as rejected first, so requests wait for the new
/// value instead of using it; with nothing served yet there is nothing to
/// mark, and a plain refresh does the same job.
async fn force(src: &Arc<dyn CredentialSource>, invalidate: bool) -> Result<(), CredentialError> {
    match (invalidate, src.generation()) {
        (true, Some(generation)) => src.invalidate(generation).await,
        _ => src.refresh_now().await.map(|_| ()),
    }
}

fn route(path: &str) -> Option<(Endpoint<'_>, Method)> {
    let rest = path.strip_prefix(PREFIX)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    Some(match segments.as_slice() {
        ["credentials"] | ["auth-files"] => (Endpoint::List, Method::GET),
        ["config"] => (Endpoint::Config, Method::GET),
        ["credentials", id] => (Endpoint::Get(id), Method::GET),
        ["credentials", id, "refresh"] | ["auths", id, "refresh"] => {
            (Endpoint::Refresh(id), Method::POST)
        }
        ["credentials", id, "invalidate"] => (Endpoint::Invalidate(id), Method::POST),
        ["reload"] => (Endpoint::Reload, Method::POST),
        _ => return None,
    })
}

/// The keys a request presents: a bearer token and/or the key header.
fn presented_keys(headers: &HeaderMap) -> Vec<&str> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let header = headers
        .get_all(KEY_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim);
    bearer.chain(header).filter(|k| !k.is_empty()).collect()
}

/// What the config view hides beyond the secrets the config types redact
/// themselves, as `latchkey check` and config errors do:
///
/// - a token URL's query, shown as `?***`: it can hold a key (an Azure
///   Function's `?code=`);
/// - every value of `oauth2.params` and `exec.env`, shown as `***` (the
///   names stay): plain strings that may carry a secret (a
///   `client_assertion`, the API key an `exec` command needs, which it
///   does not inherit from latchkey's environment).
fn redact_config(config: &mut Value) {
    let Some(credentials) = config.get_mut("credentials").and_then(Value::as_array_mut) else {
        return;
    };
    for c in credentials {
        if let Some(url) = c.pointer_mut("/oauth2/token_url")
            && let Some((base, _)) = url.as_str().and_then(|u| u.split_once('?'))
        {
            *url = Value::String(format!("{base}?***"));
        }
        for map in ["/oauth2/params", "/exec/env"] {
            if let Some(values) = c.pointer_mut(map).and_then(Value::as_object_mut) {
                for v in values.values_mut() {
                    *v = Value::String("***".to_owned());
                }
            }
        }
    }
}

fn ok(body: &Value) -> Response<ProxyBody> {
    respond(StatusCode::OK, body)
}

fn unknown(id: &str) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        "unknown_credential",
        &format!("no credential has id {id:?}"),
    )
}

fn refresh_failed(e: &CredentialError) -> Response<ProxyBody> {
    respond(
        StatusCode::BAD_GATEWAY,
        &json!({"error": {
            "code": "refresh_failed",
            "message": e.reason,
            "oauth_error": e.oauth_error,
        }}),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    respond(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn respond(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut resp = super::json_response(status, body);
    // Status and config views are point-in-time; nothing should cache them.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/v0/management/credentials"),
            Some((Endpoint::List, Method::GET))
        );
        assert_eq!(
            route("/v0/management/auth-files/"),
            Some((Endpoint::List, Method::GET))
        );
        assert_eq!(
            route("/v0/management/auths/crm/refresh"),
            Some((Endpoint::Refresh("crm"), Method::POST))
        );
        assert_eq!(
            route("/v0/management/credentials/crm/invalidate"),
            Some((Endpoint::Invalidate("crm"), Method::POST))
        );
        assert_eq!(route("/v0/management/credentials/crm/x"), None);
        assert_eq!(route("/v0/management"), None);
        assert!(is_management_path("/v0/management"));
        assert!(is_management_path("/v0/management/x"));
        assert!(!is_management_path("/v0/managementx"));
    }

    /// The config view masks a token URL's query and the values of
    /// `oauth2.params` and `exec.env`, from a real config.
    #[test]
    fn the_config_view_redacts_queries_params_and_exec_env() {
        let yaml = r#"proxy: { listen: 127.0.0.1:0 }
credentials:
  - id: fn
    oauth2:
      grant: client_credentials
      token_url: https://fn.example.net/api/token?code=canary-code
      client_id: x
      client_secret: { env: FN_SECRET }
      params: { client_assertion: canary-assertion, audience: canary-audience }
  - id: plain
    oauth2:
      grant: client_credentials
      token_url: https://idp.example.net/token
      client_id: y
      client_secret: { env: FN_SECRET }
  - id: ex
    exec:
      command: [sh, -c, 'echo "$API_SECRET"']
      env: { API_SECRET: canary-exec-env }
routes:
  - { id: r, match: { path_prefix: /r/ }, upstream: "https://api.example.net", credential: fn, public: true }
  - { id: s, match: { path_prefix: /s/ }, upstream: "https://api.example.net", credential: ex, public: true }
"#;
        let config = proxy_core::config::Config::from_yaml(yaml, "t.yaml").unwrap();
        let mut v = serde_json::to_value(&config).unwrap();
        redact_config(&mut v);
        assert_eq!(
            v["credentials"][0]["oauth2"]["token_url"],
            "https://fn.example.net/api/token?***"
        );
        assert_eq!(
            v["credentials"][1]["oauth2"]["token_url"],
            "https://idp.example.net/token"
        );
        // The names stay, the values go.
        assert_eq!(
            v["credentials"][0]["oauth2"]["params"],
            serde_json::json!({ "client_assertion": "***", "audience": "***" })
        );
        assert_eq!(
            v["credentials"][2]["exec"]["env"],
            serde_json::json!({ "API_SECRET": "***" })
        );
        let text = v.to_string();
        for canary in [
            "canary-code",
            "canary-assertion",
            "canary-audience",
            "canary-exec-env",
        ] {
            assert!(!text.contains(canary), "{canary} in {text}");
        }
    }

    #[test]
    fn keys_from_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  k1 "),
        );
        h.insert(KEY_HEADER, HeaderValue::from_static("k2"));
        assert_eq!(presented_keys(&h), ["k1", "k2"]);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert_eq!(presented_keys(&h), ["k2"]);
    }
}
