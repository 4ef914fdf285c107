//! End-to-end tests of the management API on the admin listener and of
//! `latchkey ctl` (the built binary) against a whole in-process proxy, a real
//! OAuth2 token endpoint and an echo upstream, all on loopback.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use std::process::Output;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::*;
use support::token_endpoint::{self, EndpointOptions, Failure, TokenEndpoint};
use support::*;

const KEY: &str = "mk-canary-management-key";
const CLIENT_SECRET: &str = "cs-canary-client-secret";
const SEED_REFRESH_TOKEN: &str = "rt-canary-0";
const M: &str = "/v0/management";

/// Every management path, with the method it takes.
const PATHS: [(&str, &str); 8] = [
    ("GET", "/credentials"),
    ("GET", "/credentials/crm"),
    ("POST", "/credentials/crm/refresh"),
    ("POST", "/credentials/crm/invalidate"),
    ("GET", "/config"),
    ("GET", "/auth-files"),
    ("POST", "/auths/crm/refresh"),
    ("GET", "/nope"),
];

struct Setup {
    p: TestProxy,
    endpoint: TokenEndpoint,
    _upstream: Upstream,
}

/// `crm` (OAuth2 refresh_token, rotating) and `upstream-key` (static) on
/// routes `/crm/` and `/plain/`; `admin` is appended to the admin listener.
async fn setup(admin: &str) -> Setup {
    let endpoint = token_endpoint::start(EndpointOptions {
        initial_refresh_token: SEED_REFRESH_TOKEN.into(),
        client_id: Some("latchkey".into()),
        client_secret: Some(CLIENT_SECRET.into()),
        ..EndpointOptions::default()
    })
    .await;
    let upstream = echo_upstream().await;
    let yaml = format!(
        r#"proxy: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0{admin} }}
clients:
  - {{ id: billing, token: {{ value: "{CLIENT_TOKEN}" }}, routes: ["*"] }}
credentials:
  - id: crm
    oauth2:
      grant: refresh_token
      token_url: {token_url}
      client_id: latchkey
      client_secret: {{ value: "{CLIENT_SECRET}" }}
      refresh_token: {{ value: "{SEED_REFRESH_TOKEN}" }}
  - id: upstream-key
    static: {{ value: "{UPSTREAM_KEY}" }}
routes:
  - {{ id: crm, match: {{ path_prefix: /crm/ }}, strip_prefix: true, upstream: "{up}", credential: crm }}
  - {{ id: plain, match: {{ path_prefix: /plain/ }}, upstream: "{up}", credential: upstream-key }}
"#,
        token_url = endpoint.url,
        up = upstream.url(),
    );
    let p = start_proxy(&yaml).await;
    with_timeout(async {
        while get(&format!("{}/readyz", p.admin), &[]).await.0 != StatusCode::OK {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    Setup {
        p,
        endpoint,
        _upstream: upstream,
    }
}

async fn enabled() -> Setup {
    setup(&format!(", management_key: {{ value: \"{KEY}\" }}")).await
}

/// A management request with optional `(header, value)` auth.
async fn call(p: &TestProxy, method: &str, path: &str, auth: Option<(&str, &str)>) -> Resp {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("{}{M}{path}", p.admin));
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

async fn authed(p: &TestProxy, method: &str, path: &str) -> Resp {
    call(p, method, path, Some(("authorization", &bearer(KEY)))).await
}

fn error_code(resp: &Resp) -> String {
    json(&resp.2)["error"]["code"].as_str().unwrap().to_owned()
}

fn assert_error(resp: &Resp, status: u16, code: &str) {
    let text = String::from_utf8_lossy(&resp.2);
    assert_eq!(resp.0.as_u16(), status, "{text}");
    assert_eq!(header(&resp.1, "content-type"), Some("application/json"));
    assert_eq!(error_code(resp), code, "{text}");
}

/// `token` occurs in `hay` as a whole token (`at-1` but not `at-12`).
fn has_token(hay: &str, token: &str) -> bool {
    hay.match_indices(token).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + token.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Asserts that none of the config's secrets nor anything the token
/// endpoint issued appears in `texts`.
fn assert_no_secrets(endpoint: &TokenEndpoint, texts: &[String]) {
    let mut secrets: Vec<String> = [
        KEY,
        CLIENT_SECRET,
        SEED_REFRESH_TOKEN,
        CLIENT_TOKEN,
        UPSTREAM_KEY,
    ]
    .map(String::from)
    .to_vec();
    secrets.extend(endpoint.issued_access_tokens());
    secrets.extend((1..=endpoint.calls()).map(|n| format!("rt-{n}")));
    assert!(secrets.len() > 6, "the endpoint issued tokens: {secrets:?}");
    for text in texts {
        for s in &secrets {
            assert!(!has_token(text, s), "{s:?} leaked in {text}");
        }
    }
}

fn resp_text(resp: &Resp) -> String {
    let headers: Vec<String> = resp.1.iter().map(|(k, v)| format!("{k}: {v:?}")).collect();
    format!(
        "{} {}\n{}",
        resp.0,
        headers.join("\n"),
        String::from_utf8_lossy(&resp.2)
    )
}

async fn ctl(p: &TestProxy, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(["ctl", "--admin-url", &p.admin, "--key", KEY])
        .args(args)
        .env_remove("LATCHKEY_ADMIN_URL")
        .env_remove("LATCHKEY_MANAGEMENT_KEY");
    with_timeout(cmd.output()).await.expect("run latchkey ctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn without_a_key_every_management_path_is_404() {
    let s = setup("").await;
    for (method, path) in PATHS
        .iter()
        .chain(&[("GET", ""), ("DELETE", "/credentials")])
    {
        let resp = authed(&s.p, method, path).await;
        assert_error(&resp, 404, "not_found");
    }
    assert_eq!(get(&format!("{}/healthz", s.p.admin), &[]).await.0, 200);
}

#[tokio::test]
async fn key_is_required_in_either_header() {
    let s = enabled().await;
    let p = &s.p;
    assert_error(
        &call(p, "GET", "/credentials", None).await,
        401,
        "unauthorized",
    );
    let wrong = call(
        p,
        "GET",
        "/credentials",
        Some(("authorization", "Bearer nope")),
    )
    .await;
    assert_error(&wrong, 401, "unauthorized");
    assert!(header(&wrong.1, "www-authenticate").is_some());
    let bearer = authed(p, "GET", "/credentials").await;
    assert_eq!(bearer.0, 200, "{}", resp_text(&bearer));
    let header_key = call(p, "GET", "/credentials", Some(("x-management-key", KEY))).await;
    assert_eq!(header_key.0, 200);
    assert_eq!(json(&bearer.2), json(&header_key.2));
    let ids: Vec<String> = json(&bearer.2)["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["crm", "upstream-key"]);
    // Authenticated: wrong method is 405, unknown path 404.
    let resp = authed(p, "POST", "/credentials").await;
    assert_error(&resp, 405, "method_not_allowed");
    assert_eq!(header(&resp.1, "allow"), Some("GET"));
    assert_error(
        &authed(p, "GET", "/credentials/crm/refresh").await,
        405,
        "method_not_allowed",
    );
    assert_error(&authed(p, "GET", "/nope").await, 404, "not_found");
    assert_error(
        &authed(p, "GET", "/credentials/nope").await,
        404,
        "unknown_credential",
    );
}

/// Several different keys in one request (header lines, or both headers)
/// are one failed guess, never a guess each: with the right key among
/// them the request is still 401, and the fifth such request locks the
/// address out. The same key in both headers is one key.
#[tokio::test]
async fn several_keys_in_one_request_are_one_failed_guess() {
    let s = enabled().await;
    let p = &s.p;
    let url = format!("{}{M}/credentials", p.admin);
    let key = bearer(KEY);
    let same = [("authorization", key.as_str()), ("x-management-key", KEY)];
    assert_eq!(get(&url, &same).await.0, 200);
    let several = [
        ("x-management-key", "guess-1"),
        ("x-management-key", "guess-2"),
        ("authorization", key.as_str()),
    ];
    for _ in 0..5 {
        let (status, _, body) = get(&url, &several).await;
        assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    }
    assert_error(
        &authed(p, "GET", "/credentials").await,
        429,
        "too_many_failures",
    );
}

#[tokio::test]
async fn five_wrong_keys_lock_the_address_out() {
    let s = enabled().await;
    let p = &s.p;
    for _ in 0..4 {
        assert_error(
            &call(
                p,
                "GET",
                "/credentials",
                Some(("x-management-key", "guess")),
            )
            .await,
            401,
            "unauthorized",
        );
    }
    // Requests with no key (or an empty one) are refused but are no
    // guess: they do not count.
    for _ in 0..5 {
        assert_error(
            &call(p, "GET", "/credentials", None).await,
            401,
            "unauthorized",
        );
        assert_error(
            &call(p, "GET", "/credentials", Some(("authorization", "Bearer "))).await,
            401,
            "unauthorized",
        );
    }
    // A success resets the count.
    assert_eq!(authed(p, "GET", "/credentials").await.0, 200);
    for _ in 0..5 {
        assert_error(
            &call(
                p,
                "GET",
                "/credentials",
                Some(("x-management-key", "guess")),
            )
            .await,
            401,
            "unauthorized",
        );
    }
    for resp in [
        call(
            p,
            "GET",
            "/credentials",
            Some(("x-management-key", "guess")),
        )
        .await,
        authed(p, "GET", "/credentials").await,
    ] {
        assert_error(&resp, 429, "too_many_failures");
        let retry: u64 = header(&resp.1, "retry-after").unwrap().parse().unwrap();
        assert!((1790..=1800).contains(&retry), "Retry-After {retry}");
    }
    // Health endpoints are not affected.
    assert_eq!(get(&format!("{}/healthz", p.admin), &[]).await.0, 200);
}

#[tokio::test]
async fn non_loopback_callers_need_allow_remote() {
    async fn as_remote(s: &Setup) -> Resp {
        let state = s.p.running.as_ref().unwrap().admin_state();
        let req = Request::get(format!("{M}/credentials"))
            .header("x-management-key", KEY)
            .body(())
            .unwrap();
        let peer = "10.1.2.3:5555".parse().unwrap();
        let resp = latchkey::admin::handle(&state, req, peer).await;
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }
    let s = enabled().await;
    let resp = as_remote(&s).await;
    assert_error(&resp, 403, "remote_management_disabled");
    assert_eq!(
        authed(&s.p, "GET", "/credentials").await.0,
        200,
        "loopback still works"
    );

    let s = setup(&format!(
        ", management_key: {{ value: \"{KEY}\" }}, allow_remote: true"
    ))
    .await;
    let resp = as_remote(&s).await;
    assert_eq!(resp.0, 200, "{}", resp_text(&resp));
    assert_eq!(json(&resp.2)["credentials"][0]["id"], "crm");
}

#[tokio::test]
async fn refresh_invalidate_and_errors_never_show_a_secret() {
    let s = enabled().await;
    let (p, endpoint) = (&s.p, &s.endpoint);
    let mut seen = Vec::new();
    let list = authed(p, "GET", "/credentials").await;
    let crm = &json(&list.2)["credentials"][0];
    assert_eq!(
        (crm["kind"].as_str(), crm["has_refresh_token"].as_bool()),
        (Some("oauth2"), Some(true))
    );
    let g0 = crm["generation"].as_u64().unwrap();
    seen.push(list);

    let refreshed = authed(p, "POST", "/credentials/crm/refresh").await;
    assert_eq!(refreshed.0, 200, "{}", resp_text(&refreshed));
    assert_eq!(json(&refreshed.2)["generation"].as_u64(), Some(g0 + 1));
    assert_eq!(json(&refreshed.2)["last_refresh_trigger"], "manual");
    let alias = authed(p, "POST", "/auths/crm/refresh").await;
    assert_eq!(json(&alias.2)["generation"].as_u64(), Some(g0 + 2));
    let invalidated = authed(p, "POST", "/credentials/crm/invalidate").await;
    assert_eq!(json(&invalidated.2)["generation"].as_u64(), Some(g0 + 3));
    let one = authed(p, "GET", "/credentials/crm").await;
    assert_eq!(json(&one.2)["generation"].as_u64(), Some(g0 + 3));
    let files = authed(p, "GET", "/auth-files").await;
    assert_eq!(json(&files.2)["credentials"][1]["id"], "upstream-key");
    let config = authed(p, "GET", "/config").await;
    let cfg = json(&config.2);
    assert_eq!(
        cfg["credentials"][0]["oauth2"]["client_secret"]["value"],
        "<redacted>"
    );
    assert_eq!(cfg["admin"]["management_key"]["value"], "<redacted>");
    seen.extend([refreshed, alias, invalidated, one, files, config]);

    for path in [
        "/credentials/upstream-key/refresh",
        "/credentials/upstream-key/invalidate",
    ] {
        let resp = authed(p, "POST", path).await;
        assert_error(&resp, 409, "not_refreshable");
        seen.push(resp);
    }

    endpoint.set_failure(Some(Failure::InvalidGrant));
    let failed = authed(p, "POST", "/credentials/crm/refresh").await;
    assert_error(&failed, 502, "refresh_failed");
    assert_eq!(json(&failed.2)["error"]["oauth_error"], "invalid_grant");
    seen.push(failed);
    let status = authed(p, "GET", "/credentials/crm").await;
    assert_eq!(json(&status.2)["state"], "failing");
    assert!(
        json(&status.2)["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant")
    );
    seen.push(status);

    // A revoked refresh token fails the same way; nothing was deleted, so
    // re-seeding the endpoint's token is not needed to keep the old value.
    endpoint.set_failure(None);
    endpoint.revoke_refresh_token();
    let revoked = authed(p, "POST", "/auths/crm/refresh").await;
    assert_error(&revoked, 502, "refresh_failed");
    assert_eq!(json(&revoked.2)["error"]["oauth_error"], "invalid_grant");
    seen.push(revoked);

    // Errors that echo nothing the caller sent, even a secret used as a key.
    seen.push(
        call(
            p,
            "GET",
            "/credentials",
            Some(("authorization", &bearer(CLIENT_TOKEN))),
        )
        .await,
    );
    seen.push(
        call(
            p,
            "GET",
            "/config",
            Some(("x-management-key", UPSTREAM_KEY)),
        )
        .await,
    );
    seen.push(authed(p, "DELETE", "/config").await);
    seen.push(authed(p, "GET", "/credentials/nope").await);
    seen.push(authed(p, "GET", "/nope").await);
    assert_eq!(seen.len(), 17);
    let texts: Vec<String> = seen.iter().map(resp_text).collect();
    assert_no_secrets(endpoint, &texts);
}

#[tokio::test]
async fn ctl_refresh_moves_expiry_forward() {
    let s = enabled().await;
    let (p, endpoint) = (&s.p, &s.endpoint);
    let before = json(&authed(p, "GET", "/credentials/crm").await.2);
    endpoint.set_expires_in(7200);

    let out = ctl(p, &["refresh", "crm", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let after: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(after["id"], "crm");
    assert_eq!(
        after["generation"].as_u64(),
        Some(before["generation"].as_u64().unwrap() + 1)
    );
    // RFC 3339 in UTC with seconds: string order is time order.
    let (old, new) = (
        before["expires_at"].as_str().unwrap(),
        after["expires_at"].as_str().unwrap(),
    );
    assert!(new > old, "expires_at {old} -> {new}");
    assert_eq!(json(&authed(p, "GET", "/credentials/crm").await.2), after);

    let table = ctl(p, &["credentials"]).await;
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("crm ") && lines[1].contains("oauth2"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("upstream-key ") && lines[2].contains("static"),
        "{text}"
    );

    let unknown = ctl(p, &["refresh", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown_credential"),
        "{}",
        stderr(&unknown)
    );
    let static_ = ctl(p, &["invalidate", "upstream-key"]).await;
    assert_eq!(static_.status.code(), Some(1));
    assert!(stderr(&static_).contains("not_refreshable"));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args([
        "ctl",
        "--admin-url",
        &closed_port_url().await,
        "credentials",
    ])
    .env("LATCHKEY_MANAGEMENT_KEY", KEY);
    let refused = with_timeout(cmd.output()).await.unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    // An empty key (an empty Secret key) is no key: exit 2, nothing sent.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(["ctl", "--admin-url", &p.admin, "credentials"])
        .env_remove("LATCHKEY_ADMIN_URL")
        .env("LATCHKEY_MANAGEMENT_KEY", " ");
    let empty = with_timeout(cmd.output()).await.unwrap();
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
    assert!(
        stderr(&empty).contains("no management key"),
        "{}",
        stderr(&empty)
    );

    let texts: Vec<String> = [out, table, unknown, static_, refused]
        .iter()
        .map(|o| format!("{}{}", stdout(o), stderr(o)))
        .collect();
    assert_no_secrets(endpoint, &texts);
}

#[tokio::test]
async fn ctl_invalidate_then_a_request_is_one_refresh_in_total() {
    let s = enabled().await;
    let (p, endpoint) = (&s.p, &s.endpoint);
    let first = echoed(&get_as_billing(p, "/crm/x", &[]).await);
    let old = echoed_header(&first, "authorization").unwrap();
    let calls = endpoint.calls();

    let out = ctl(p, &["invalidate", "crm"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).lines().nth(1).unwrap().starts_with("crm "));
    let resp = echoed(&get_as_billing(p, "/crm/x", &[]).await);
    let new = echoed_header(&resp, "authorization").unwrap();
    assert_ne!(new, old);
    assert_eq!(new, format!("Bearer {}", endpoint.current_access_token()));
    assert_eq!(endpoint.calls(), calls + 1, "one refresh in total");
    assert_eq!(endpoint.invalid_grants(), 0);
}
