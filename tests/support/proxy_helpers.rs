//! Shared pieces of the whole-proxy end-to-end tests (`inject`, `routing`,
//! `errors`, `admin_and_lifecycle`, `secrets`): canary secrets, config
//! builders, request shortcuts and assertions on responses.
//!
//! Secrets in these configs are recognisable canaries so that any test can
//! check that they never show up where they must not.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::harness::TestProxy;
use super::{get, json};

/// The upstream API key every credential in these configs injects.
pub const UPSTREAM_KEY: &str = "canary-upstream-key-1";
/// The proxy token of client `billing`.
pub const CLIENT_TOKEN: &str = "canary-client-token-1";
/// The proxy token of client `search`.
pub const OTHER_TOKEN: &str = "canary-client-token-2";
/// An environment variable no test sets.
pub const UNSET_VAR: &str = "LATCHKEY_TEST_UNSET_VAR_XYZ";

pub type Resp = (StatusCode, HeaderMap, Bytes);

/// `proxy:` and `admin:` on ephemeral ports, followed by `rest`.
pub fn config(rest: &str) -> String {
    format!("proxy: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\n{rest}")
}

/// A config with client `billing` (token [`CLIENT_TOKEN`], routes `billing_routes`),
/// credential `upstream-key` holding [`UPSTREAM_KEY`], and `routes`.
pub fn billing_config(billing_routes: &str, routes: &str) -> String {
    billing_config_with("", billing_routes, routes)
}

/// As [`billing_config`], with `proxy_extra` inside the `proxy:` map
/// (`", max_concurrent_requests: 1"`).
pub fn billing_config_with(proxy_extra: &str, billing_routes: &str, routes: &str) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0{proxy_extra} }}
admin: {{ listen: 127.0.0.1:0 }}
clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: {billing_routes}
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
routes:
{routes}"
    )
}

/// [`billing_config_with`] with one route, `api` on `/api/` to `upstream`
/// with `upstream-key`, plus `route_extra` lines.
pub fn api_config(proxy_extra: &str, upstream: &str, route_extra: &str) -> String {
    billing_config_with(
        proxy_extra,
        "[\"*\"]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {upstream}
    credential: upstream-key
{route_extra}"
        ),
    )
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET` through the proxy as client `billing`.
pub async fn get_as_billing(p: &TestProxy, path: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = bearer(CLIENT_TOKEN);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    get(&p.url(path), &headers).await
}

/// The echo upstream's report of a successful proxied request.
pub fn echoed(resp: &Resp) -> Value {
    let (status, headers, body) = resp;
    assert_eq!(
        *status,
        StatusCode::OK,
        "expected the upstream's 200, got {status}: {}",
        String::from_utf8_lossy(body)
    );
    assert!(
        headers.get("x-latchkey-error").is_none(),
        "a proxied response carries no x-latchkey-error"
    );
    json(body)
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

pub fn assert_uuid(id: &str) {
    assert_eq!(id.len(), 36, "{id:?} is not a hyphenated UUID");
    for (i, c) in id.chars().enumerate() {
        if [8, 13, 18, 23].contains(&i) {
            assert_eq!(c, '-', "{id:?} is not a hyphenated UUID");
        } else {
            assert!(
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
                "{id:?} is not a lower-case hyphenated UUID"
            );
        }
    }
}

/// Checks that `resp` is a proxy error with `status` and `code` in the one
/// documented shape, and returns its message.
pub fn assert_proxy_error(resp: &Resp, status: u16, code: &str) -> String {
    let (st, headers, body) = resp;
    let text = String::from_utf8_lossy(body);
    assert_eq!(st.as_u16(), status, "status of {text}");
    assert_eq!(
        header(headers, "x-latchkey-error"),
        Some(code),
        "x-latchkey-error of {text}"
    );
    assert_eq!(header(headers, "content-type"), Some("application/json"));
    if code == "client_unauthenticated" {
        assert_eq!(
            header(headers, "www-authenticate"),
            Some("Bearer realm=\"latchkey\"")
        );
    } else {
        assert_eq!(header(headers, "www-authenticate"), None);
    }
    let request_id = header(headers, "x-request-id").expect("every response has x-request-id");
    let v = json(body);
    let top: Vec<&String> = v.as_object().expect("JSON object").keys().collect();
    assert_eq!(top, ["error"], "body {text}");
    let err = v["error"].as_object().expect("error is an object");
    let mut keys: Vec<&str> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "request_id"], "body {text}");
    assert_eq!(err["code"], code, "body {text}");
    assert_eq!(err["request_id"], request_id, "body {text}");
    let message = err["message"].as_str().expect("message is a string");
    assert!(!message.is_empty());
    message.to_owned()
}
