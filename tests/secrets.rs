//! End-to-end secret-canary tests: no configured secret ever appears in a
//! response, in Debug output, or in a config error.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use latchkey::Config;
use support::harness::start_proxy;
use support::proxy_helpers::*;
use support::*;

const CANARIES: [&str; 3] = [UPSTREAM_KEY, CLIENT_TOKEN, OTHER_TOKEN];

fn assert_no_canary(what: &str, text: &str) {
    for c in CANARIES {
        assert!(!text.contains(c), "{what} contains secret {c:?}: {text}");
    }
}

fn assert_response_has_no_canary(what: &str, resp: &Resp) {
    let (status, headers, body) = resp;
    for (name, value) in headers {
        assert_no_canary(
            &format!("{what} ({status}) header {name}"),
            &String::from_utf8_lossy(value.as_bytes()),
        );
    }
    assert_no_canary(
        &format!("{what} ({status}) body"),
        &String::from_utf8_lossy(body),
    );
}

#[tokio::test]
async fn secrets_never_appear_in_responses() {
    assert!(
        std::env::var_os(UNSET_VAR).is_none(),
        "{UNSET_VAR} must not be set"
    );
    let ok = status_upstream(200).await;
    let rejects = status_upstream(401).await;
    let slow = slow_upstream(Duration::from_secs(2)).await;
    let down = closed_port_url().await;
    let yaml = config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [ok, rejects, down, slow, missing, bad, small]
  - id: search
    token: {{ value: \"{OTHER_TOKEN}\" }}
    routes: [ok, private]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
  - id: missing-key
    static: {{ env: {UNSET_VAR} }}
  - id: bad-key
    static: {{ value: \"{UPSTREAM_KEY}\\u0001\" }}
routes:
  - id: ok
    match: {{ path_prefix: /ok/ }}
    upstream: {ok}
    credential: upstream-key
  - id: rejects
    match: {{ path_prefix: /rejects/ }}
    upstream: {rejects}
    credential: upstream-key
    inject: {{ basic: {{ username: svc }} }}
  - id: down
    match: {{ path_prefix: /down/ }}
    upstream: {down}
    credential: upstream-key
    inject: {{ query: api_key }}
  - id: slow
    match: {{ path_prefix: /slow/ }}
    upstream: {slow}
    credential: upstream-key
    inject: {{ query: api_key }}
    timeout: 200ms
  - id: missing
    match: {{ path_prefix: /missing/ }}
    upstream: {ok}
    credential: missing-key
  - id: bad
    match: {{ path_prefix: /bad/ }}
    upstream: {ok}
    credential: bad-key
    inject: {{ header: x-api-key }}
  - id: small
    match: {{ path_prefix: /small/ }}
    upstream: {ok}
    credential: upstream-key
    max_request_body: 16
  - id: private
    match: {{ path_prefix: /private/ }}
    upstream: {ok}
    credential: upstream-key
",
        ok = ok.url(),
        rejects = rejects.url(),
        slow = slow.url(),
    ));
    let p = start_proxy(&yaml).await;
    let billing = bearer(CLIENT_TOKEN);
    let search = bearer(OTHER_TOKEN);
    let wrong = bearer(&format!("{CLIENT_TOKEN}-wrong"));

    let mut seen: Vec<(&str, Resp)> = Vec::new();
    let as_billing = [("authorization", billing.as_str())];
    seen.push(("success", get(&p.url("/ok/x"), &as_billing).await));
    seen.push(("upstream 401", get(&p.url("/rejects/x"), &as_billing).await));
    seen.push(("no route", get(&p.url("/nowhere"), &as_billing).await));
    seen.push(("missing token", get(&p.url("/ok/x"), &[]).await));
    seen.push((
        "wrong token",
        get(&p.url("/ok/x"), &[("authorization", wrong.as_str())]).await,
    ));
    seen.push((
        "wrong proxy token",
        get(&p.url("/ok/x"), &[("proxy-authorization", wrong.as_str())]).await,
    ));
    seen.push((
        "forbidden",
        get(&p.url("/down/x"), &[("authorization", search.as_str())]).await,
    ));
    seen.push((
        "unlisted route",
        get(&p.url("/private/x"), &as_billing).await,
    ));
    seen.push((
        "unreachable",
        get(&p.url("/down/x?api_key=evil"), &as_billing).await,
    ));
    seen.push(("timeout", get(&p.url("/slow/x"), &as_billing).await));
    seen.push((
        "credential unavailable",
        get(&p.url("/missing/x"), &as_billing).await,
    ));
    seen.push(("bad credential", get(&p.url("/bad/x"), &as_billing).await));
    let big = Request::post(p.url("/small/x"))
        .header("authorization", &billing)
        .body(Full::new(Bytes::from(vec![b'z'; 64])))
        .unwrap();
    seen.push(("body too large", send(big).await));
    for path in ["/healthz", "/readyz", "/nope"] {
        seen.push(("admin", get(&format!("{}{path}", p.admin), &[]).await));
    }

    let statuses: Vec<u16> = seen.iter().map(|(_, r)| r.0.as_u16()).collect();
    assert_eq!(
        statuses,
        [
            200, 401, 404, 401, 401, 401, 403, 403, 502, 504, 503, 503, 413, 200, 503, 404
        ],
        "every case produced the response it was meant to"
    );
    for (what, resp) in &seen {
        assert_response_has_no_canary(what, resp);
    }
    assert_eq!((ok.hit_count(), rejects.hit_count()), (1, 1));
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output_or_config_errors() {
    let up = echo_upstream().await;
    let yaml = config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [\"*\"]
  - id: search
    token: {{ value: \"{OTHER_TOKEN}\" }}
    routes: [api]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
routes:
  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    inject: {{ basic: {{ username: {{ value: \"{OTHER_TOKEN}\" }} }} }}
",
        up.url()
    ));
    let config = Config::from_yaml(&yaml, "test.yaml").unwrap();
    assert_no_canary("Debug of Config", &format!("{config:?}"));
    assert_no_canary("Debug of Config (pretty)", &format!("{config:#?}"));

    let p = start_proxy(&yaml).await;
    let running = p.running.as_ref().unwrap();
    assert_no_canary("Debug of Running", &format!("{running:?}"));
    assert_no_canary("Debug of Proxy", &format!("{:?}", running.proxy()));
    assert_no_canary(
        "Debug of Proxy (pretty)",
        &format!("{:#?}", running.proxy()),
    );
    assert!(p.stop().await);

    let secrets = format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [\"*\"]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
"
    );
    let broken = [
        // A broken field beside literal secrets.
        format!(
            "{secrets}routes:\n  - id: r\n    match: {{ path_prefix: /a/ }}\n    upstream: http://x\n    timeout: banana\n"
        ),
        format!(
            "{secrets}routes:\n  - id: r\n    match: {{ path_prefix: a }}\n    upstream: http://x\n    credential: nope\n"
        ),
        format!("{secrets}bogus: 1\n"),
        format!(
            "{secrets}  - id: other\n    static: {{ value: \"{OTHER_TOKEN}\" }}\n    extra: 1\n"
        ),
        // The secret itself in the wrong shape or syntax.
        format!("clients:\n  - id: c\n    token: \"{CLIENT_TOKEN}\"\n    routes: [\"*\"]\n"),
        format!("clients:\n  - id: c\n    token: {CLIENT_TOKEN}\n    routes: [\"*\"]\n"),
        format!("credentials:\n  - id: k\n    static: \"{UPSTREAM_KEY}\"\n"),
        format!("credentials:\n  - id: k\n    static: {{ valeu: \"{UPSTREAM_KEY}\" }}\n"),
        format!("credentials:\n  - id: k\n    static: {{ value: [\"{UPSTREAM_KEY}\"] }}\n"),
        format!("credentials:\n  - id: k\n    static: {{ value: \"{UPSTREAM_KEY} }}\n"),
        format!("credentials:\n  - id: k\n    static: {{ value: {UPSTREAM_KEY} }} trailing\n"),
        format!("credentials:\n  - id: k\n    static: {{ value: {UPSTREAM_KEY}, env: X }}\n"),
        format!(
            "credentials:\n  - id: k\n    static: {{ value: \"{UPSTREAM_KEY}\" }}\n\tbroken: tab\n"
        ),
        format!(
            "{secrets}routes:\n  - id: r\n    match: {{ path_prefix: /a/ }}\n    upstream: http://x\n    credential: upstream-key\n    inject: {{ basic: {{ username: {{ value: \"{OTHER_TOKEN}\", x: 1 }} }} }}\n"
        ),
    ];
    for (i, text) in broken.iter().enumerate() {
        let err = Config::from_yaml(&config_text_for_errors(text), "broken.yaml")
            .expect_err(&format!("case {i} must not parse"));
        assert_no_canary(
            &format!("case {i}: Display of ConfigError"),
            &err.to_string(),
        );
        assert_no_canary(
            &format!("case {i}: Debug of ConfigError"),
            &format!("{err:?}"),
        );
        for fe in &err.errors {
            assert_no_canary(
                &format!("case {i}: field error"),
                &format!("{} {}", fe.path, fe.message),
            );
        }
    }
}

fn config_text_for_errors(rest: &str) -> String {
    format!("proxy: {{ listen: 127.0.0.1:0 }}\n{rest}")
}
