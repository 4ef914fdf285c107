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
