//! End-to-end tests of credential injection (bearer, custom header and
//! format, query parameter, basic auth) and of the caller's proxy token never
//! being forwarded upstream.

mod support;

use support::harness::start_proxy;
use support::proxy_helpers::*;
use support::*;

// ---------------------------------------------------------------------------
// Injection
// ---------------------------------------------------------------------------

#[tokio::test]
async fn inject_default_is_authorization_bearer() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
",
            up.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/api/x", &[]).await);
    assert_eq!(
        echoed_header_all(&v, "authorization"),
        [format!("Bearer {UPSTREAM_KEY}")]
    );
    assert_eq!(up.hit_count(), 1);
}

#[tokio::test]
async fn inject_custom_header_carries_the_raw_key_and_replaces_the_callers() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ header: x-api-key }}
",
            up.url()
        ),
    ))
    .await;
    let v = echoed(
        &get_as_billing(
            &p,
            "/api/x",
            &[("x-api-key", "callers-own-key"), ("x-api-key", "another")],
        )
        .await,
    );
    assert_eq!(echoed_header_all(&v, "x-api-key"), [UPSTREAM_KEY]);
    assert_eq!(echoed_header(&v, "authorization"), None);
}

#[tokio::test]
async fn inject_custom_format() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ header: authorization, format: \"Token {{token}}\" }}
",
            up.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/api/x", &[]).await);
    assert_eq!(
        echoed_header_all(&v, "authorization"),
        [format!("Token {UPSTREAM_KEY}")]
    );
}

#[tokio::test]
async fn inject_query_replaces_callers_param_and_keeps_the_rest_byte_for_byte() {
    let up = echo_upstream().await;
    let yaml = config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [\"*\"]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
  - id: odd-key
    static: {{ value: \"k&y=1 2\" }}
routes:
  - id: search
    match: {{ path_prefix: /s/ }}
    strip_prefix: true
    upstream: {url}
    credential: upstream-key
    inject: {{ query: api_key }}
  - id: odd
    match: {{ path_prefix: /odd/ }}
    strip_prefix: true
    upstream: {url}
    credential: odd-key
    inject: {{ query: api_key }}
",
        url = up.url()
    ));
    let p = start_proxy(&yaml).await;

    let v = echoed(
        &get_as_billing(
            &p,
            "/s/search?q=a%20b&api_key=evil&x=1&y=%2F+z&api_key2=keep&API_KEY=keep&api%5Fkey=evil2&api_key&w=caf%C3%A9",
            &[],
        )
        .await,
    );
    assert_eq!(
        v["uri"],
        format!(
            "/search?q=a%20b&x=1&y=%2F+z&api_key2=keep&API_KEY=keep&w=caf%C3%A9&api_key={UPSTREAM_KEY}"
        )
    );
    // Query injection sets no header.
    assert_eq!(echoed_header(&v, "authorization"), None);

    // No query at all: the parameter is added.
    let v = echoed(&get_as_billing(&p, "/s/plain", &[]).await);
    assert_eq!(v["uri"], format!("/plain?api_key={UPSTREAM_KEY}"));

    // A key with query syntax in it is encoded, so it cannot add parameters.
    let v = echoed(&get_as_billing(&p, "/odd/x?a=1", &[]).await);
    assert_eq!(v["uri"], "/x?a=1&api_key=k%26y%3D1+2");
}

#[tokio::test]
async fn inject_basic_with_plain_username() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ basic: {{ username: svc }} }}
",
            up.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/api/x", &[]).await);
    // base64("svc:canary-upstream-key-1")
    assert_eq!(
        echoed_header_all(&v, "authorization"),
        ["Basic c3ZjOmNhbmFyeS11cHN0cmVhbS1rZXktMQ=="]
    );
}

#[tokio::test]
async fn inject_basic_with_username_from_a_secret() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ basic: {{ username: {{ value: \"u\" }} }} }}
",
            up.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/api/x", &[]).await);
    // base64("u:canary-upstream-key-1")
    assert_eq!(
        echoed_header_all(&v, "authorization"),
        ["Basic dTpjYW5hcnktdXBzdHJlYW0ta2V5LTE="]
    );
}

/// A user name from a secret that holds ':' is not sent: the upstream
/// would split `svc:team:<key>` into user `svc` and password `team:<key>`
/// and answer 401 to every request, while the audit said "injected".
/// (An inline name with ':' is refused at load.)
#[tokio::test]
async fn a_basic_user_name_with_a_colon_from_a_secret_is_not_sent() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ basic: {{ username: {{ value: \"svc:team\" }} }} }}
",
            up.url()
        ),
    ))
    .await;
    let resp = get_as_billing(&p, "/api/x", &[]).await;
    let msg = assert_proxy_error(&resp, 503, "credential_unavailable");
    assert!(msg.contains("contains ':'"), "{msg}");
    assert!(!msg.contains("svc:team"), "the name is not echoed: {msg}");
    assert_eq!(up.hit_count(), 0, "nothing was sent");
}

/// Headers the forwarder writes for every request cannot carry a
/// credential: it would be overwritten (`x-request-id`) or altered
/// (`x-forwarded-for` gets the caller's address appended). Refused at
/// load, naming the field.
#[test]
fn headers_the_forwarder_writes_cannot_carry_a_credential() {
    for name in [
        "x-request-id",
        "X-Forwarded-For",
        "x-forwarded-host",
        "x-forwarded-proto",
    ] {
        let yaml = billing_config(
            "[api]",
            &format!(
                "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: http://127.0.0.1:9
    credential: upstream-key
    inject: {{ header: {name} }}
"
            ),
        );
        let err = latchkey::Config::from_yaml(&yaml, "t.yaml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("routes[0].inject.header")
                && err.contains("latchkey writes it for every forwarded request"),
            "{name}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------
// The caller's proxy token
// ---------------------------------------------------------------------------

#[tokio::test]
async fn callers_proxy_token_never_reaches_the_upstream() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ header: x-api-key }}
",
            up.url()
        ),
    ))
    .await;
    let token = bearer(CLIENT_TOKEN);
    for name in ["authorization", "proxy-authorization"] {
        let v = echoed(&get(&p.url("/api/x"), &[(name, token.as_str())]).await);
        let headers = v["headers"].as_object().unwrap();
        assert!(
            !headers.contains_key("authorization") && !headers.contains_key("proxy-authorization"),
            "token sent as {name}: upstream saw {headers:?}"
        );
        for (h, values) in headers {
            for value in values.as_array().unwrap() {
                assert!(
                    !value.as_str().unwrap().contains(CLIENT_TOKEN),
                    "token sent as {name} reached the upstream in {h}: {value}"
                );
            }
        }
        assert!(!v.to_string().contains(CLIENT_TOKEN), "{v}");
        assert_eq!(echoed_header_all(&v, "x-api-key"), [UPSTREAM_KEY]);
    }
    assert_eq!(up.hit_count(), 2);
}

/// An upstream's trailing-slash redirect keeps the query, and with query
/// injection the query holds the credential: the caller gets the
/// `Location` without it.
#[tokio::test]
async fn a_query_credential_does_not_come_back_in_a_redirect() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 301 Moved Permanently\r\nlocation: {path}/?{query}\r\n\
                         content-location: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let p = start_proxy(&api_config(
        "",
        &format!("http://{up}"),
        "    inject: { query: api_key }\n",
    ))
    .await;
    let auth = bearer(CLIENT_TOKEN);
    let (status, headers, _) =
        get(&p.url("/api/dir?x=1"), &[("authorization", auth.as_str())]).await;
    assert_eq!(status, 301);
    assert_eq!(header(&headers, "location"), Some("/api/dir/?x=1"));
    assert_eq!(header(&headers, "content-location"), Some("/api/dir?x=1"));
}
