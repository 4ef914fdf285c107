//! Secrets in the config: never echoed in errors, warned about when
//! written as literals.

use super::*;

/// A password in an upstream or token URL never reaches an error (which
/// goes to logs and to the reload API's answer).
#[test]
fn url_passwords_are_not_echoed_in_errors() {
    for (url, want) in [
        (
            "http://admin:hunter2-canary@127.0.0.1:1/base",
            "\"http://***@127.0.0.1:1/base\": user info in a URL is not supported",
        ),
        (
            "ftp://u:hunter2-canary@x",
            "\"ftp://***@x\": scheme must be http or https",
        ),
        ("u:hunter2-canary@x/y", "\"***@x/y\""),
        // A password holding `#`, `/` or `?` ends the parsed authority
        // early: still user info, still hidden, never accepted.
        (
            "https://svc:Tr0ub4dor#hunter2-canary@api.example.com",
            "\"https://***@api.example.com\": user info in a URL is not supported",
        ),
        (
            "https://svc:123/hunter2-canary@api.example.com/base",
            "\"https://***@api.example.com/base\": user info",
        ),
        (
            "https://svc:x?hunter2-canary@api.example.com",
            "\"https://***@api.example.com\": user info",
        ),
        // A query may be a key (Azure Functions' `?code=`).
        (
            "https://fn.example.com/api/x?code=hunter2-canary",
            "\"https://fn.example.com/api/x?***\": an upstream URL cannot have a query or a fragment",
        ),
        (
            "https://api.example.com/base#hunter2-canary",
            "\"https://api.example.com/base?***\": an upstream URL cannot have a query or a fragment",
        ),
        (
            "https://api.example.com:x8443/x",
            "the port must be a number from 1 to 65535",
        ),
    ] {
        let got = err_of(&with_route(&format!(
            "{{ id: r, match: {{ path_prefix: /a/ }}, upstream: \"{url}\", credential: k }}"
        )));
        assert!(!got.contains("hunter2-canary"), "{got}");
        assert!(got.contains(want), "want {want}\ngot  {got}");
    }
}

/// Every secret written as a literal in the file is warned about, by
/// field, without its value.
#[test]
fn literal_secrets_are_warned_about_by_field() {
    let yaml = "proxy: { listen: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0, management_key: { value: mk-canary-1 } }
redis: { url: { value: \"redis://127.0.0.1:6379\" }, encryption_keys: [{ value: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" }] }
clients:
  - { id: c, token: { value: ct-canary-2 }, routes: [\"*\"] }
credentials:
  - id: o
    oauth2:
      grant: refresh_token
      token_url: http://127.0.0.1:9/token
      client_id: x
      client_secret: { value: cs-canary-3 }
      refresh_token: { value: rt-canary-4 }
    store: redis
  - { id: s, static: { env: S } }
routes:
  - { id: r, match: { path_prefix: /a/ }, upstream: \"http://127.0.0.1:9\", credential: o }
";
    let c = Config::from_yaml(yaml, "t.yaml").unwrap();
    let w = warnings(&c).join("\n");
    for field in [
        "clients[0].token",
        "credentials[0].oauth2.client_secret",
        "credentials[0].oauth2.refresh_token",
        "admin.management_key",
        "redis.url",
        "redis.encryption_keys[0]",
    ] {
        assert!(
            w.contains(&format!("{field} is a literal value")),
            "{field} not warned about: {w}"
        );
    }
    assert!(!w.contains("credentials[1]"), "{w}");
    for canary in [
        "mk-canary-1",
        "ct-canary-2",
        "cs-canary-3",
        "rt-canary-4",
        "AAAA",
    ] {
        assert!(!w.contains(canary), "a value in a warning: {w}");
    }
}

/// A token pasted into a field that is not a secret reference (a route's
/// credential id, the inject format or header, a duration, a size) is
/// refused by field, and the error never echoes it.
#[test]
fn misplaced_tokens_are_not_echoed() {
    const C: &str = "sk_live_CANARY";
    let route = |extra: &str| {
        with_route(&format!(
            "{{ id: r, match: {{ path_prefix: /a/ }}, upstream: https://x, credential: k{extra} }}"
        ))
    };
    let cases = [
        (
            with_route(&format!(
                "{{ id: r, match: {{ path_prefix: /a/ }}, upstream: https://x, credential: {C} }}"
            )),
            "routes[0].credential: no credential has this id (defined: k)",
        ),
        (
            route(&format!(
                ", inject: {{ header: authorization, format: \"Token {C}\" }}"
            )),
            "routes[0].inject.format: must contain {token}",
        ),
        (
            route(&format!(
                ", inject: {{ header: x-k, format: \"{{token}} {C} {{token}}\" }}"
            )),
            "routes[0].inject.format: must contain {token} once",
        ),
        (
            route(&format!(
                ", inject: {{ header: x-k, format: \"{C}\\n{{token}}\" }}"
            )),
            "routes[0].inject.format: has characters not allowed in a header value",
        ),
        (
            route(&format!(
                ", inject: {{ header: \"Authorization: Bearer {C}\" }}"
            )),
            "routes[0].inject.header: is not a valid header name",
        ),
        (
            route(&format!(", timeout: {C}")),
            "routes[0].timeout: is not a duration like 30s, 5m or 1h30m",
        ),
        (
            route(&format!(", timeout: 5{C}")),
            "routes[0].timeout: is not a duration like 30s, 5m or 1h30m",
        ),
        (
            // Letters only, so humantime reads it as a unit.
            route(", timeout: \"5 skliveCANARY\""),
            "routes[0].timeout: is not a duration like 30s, 5m or 1h30m (an unknown unit",
        ),
        (
            route(&format!(", tunnel_idle_timeout: {C}")),
            "routes[0].tunnel_idle_timeout: is not a duration like 30s, 5m or 1h30m, or 0s",
        ),
        (
            format!(
                "proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - {{ id: k, exec: {{ command: [x] }}, refresh: {{ max_age: {C} }} }}\n"
            ),
            "credentials[0].refresh.max_age: is not a duration",
        ),
        (
            route(&format!(", max_request_body: {C}")),
            "routes[0].max_request_body: is not a size like 1048576",
        ),
        (
            route(&format!(", max_request_body: 10{C}")),
            "routes[0].max_request_body: has an unknown size unit",
        ),
        (
            route(&format!(", max_request_body: 999999999999999999999{C}")),
            "routes[0].max_request_body: is too large",
        ),
        (
            format!("proxy: {{ listen: 127.0.0.1:0, max_header_bytes: {C} }}\n"),
            "proxy.max_header_bytes: is not a size like 1048576",
        ),
    ];
    for (yaml, want) in cases {
        let got = err_of(&yaml);
        assert!(
            got.contains(&format!("bad.yaml: {want}")),
            "want {want}\ngot  {got}"
        );
        assert!(!got.contains("CANARY"), "echoed: {got}");
    }
}
