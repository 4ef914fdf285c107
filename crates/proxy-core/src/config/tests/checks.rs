//! Configs that `latchkey check` used to accept but that fail at run time
//! or can never work, and parse errors that now say what is expected.

use super::*;

const HEAD: &str = "proxy: { listen: 127.0.0.1:8080 }\n";

fn errors(yaml: &str) -> String {
    match Config::from_yaml(yaml, "t.yaml") {
        Ok(_) => "<accepted>".to_owned(),
        Err(e) => e.to_string(),
    }
}

fn public_route(extra: &str) -> String {
    format!(
        "{HEAD}routes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: http://127.0.0.1:1, public: true{extra} }}\n"
    )
}

/// The OAuth2 provider refuses these at build time; `check` must too.
#[test]
fn reserved_oauth2_params_are_refused() {
    for name in OAUTH2_RESERVED_PARAMS {
        let yaml = format!(
            "{HEAD}credentials:\n  - id: idp\n    oauth2:\n      grant: client_credentials\n      \
             token_url: https://idp.example.com/token\n      client_id: x\n      \
             client_secret: {{ env: S }}\n      params: {{ {name}: v, audience: api }}\n"
        );
        let e = errors(&yaml);
        assert!(
            e.contains(&format!(
                "t.yaml: credentials[0].oauth2.params.{name}: is set by latchkey"
            )),
            "{e}"
        );
        assert!(!e.contains("audience"), "{e}");
    }
}

#[test]
fn admin_and_proxy_on_one_address_are_refused() {
    for (proxy, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("\"[::]:8080\"", "127.0.0.1:8080"),
        ("\"[::1]:8080\"", "\"[::]:8080\""),
    ] {
        let e = errors(&format!(
            "proxy: {{ listen: {proxy} }}\nadmin: {{ listen: {admin} }}\n"
        ));
        assert!(e.contains("t.yaml: admin.listen: "), "{proxy} {admin}: {e}");
        assert!(e.contains("different ports"), "{e}");
    }
    for (proxy, admin) in [
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:8080", "127.0.0.1:9090"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("0.0.0.0:8080", "\"[::1]:8080\""),
    ] {
        let e = errors(&format!(
            "proxy: {{ listen: {proxy} }}\nadmin: {{ listen: {admin} }}\n"
        ));
        assert_eq!(e, "<accepted>", "{proxy} {admin}");
    }
}

#[test]
fn two_clients_with_one_token_are_refused() {
    let yaml = format!(
        "{HEAD}clients:\n  - {{ id: a, token: {{ env: SHARED }}, routes: [r1] }}\n  \
         - {{ id: b, token: {{ env: OTHER }}, routes: [r2] }}\n  \
         - {{ id: c, token: {{ env: SHARED }}, routes: [r2] }}\n\
         routes:\n  - {{ id: r1, match: {{ path_prefix: /a }}, upstream: http://127.0.0.1:1 }}\n  \
         - {{ id: r2, match: {{ path_prefix: /b }}, upstream: http://127.0.0.1:1 }}\n"
    );
    assert_eq!(
        errors(&yaml),
        "t.yaml: clients[2].token: the same token as clients[0] (\"a\"): a token names one client"
    );
    // Literals are compared as used: trimmed.
    let yaml = format!(
        "{HEAD}clients:\n  - {{ id: a, token: {{ value: shared-tok }}, routes: [r1] }}\n  \
         - {{ id: b, token: {{ value: \"shared-tok \" }}, routes: [r2] }}\n\
         routes:\n  - {{ id: r1, match: {{ path_prefix: /a }}, upstream: http://127.0.0.1:1 }}\n  \
         - {{ id: r2, match: {{ path_prefix: /b }}, upstream: http://127.0.0.1:1 }}\n"
    );
    assert_eq!(
        errors(&yaml),
        "t.yaml: clients[1].token: the same token as clients[0] (\"a\"): a token names one client"
    );
}

#[test]
fn host_matchers_that_never_match_are_refused() {
    for host in [
        "*.example.com",
        "api.*.com",
        "a.example.com,b.example.com",
        ":8080",
        ".",
        "api_example!.com",
        "a..example.com",
        ".example.com",
        "example.com:http",
        "example.com:99999",
        "::1",
        "[::1",
        "[example.com]",
        "[::1]:x",
    ] {
        let yaml = format!(
            "{HEAD}routes:\n  - {{ id: r, match: {{ host: \"{host}\" }}, upstream: http://127.0.0.1:1, public: true }}\n"
        );
        let e = errors(&yaml);
        assert!(e.contains("t.yaml: routes[0].match.host: "), "{host}: {e}");
        if host.contains('*') {
            assert!(e.contains("wildcards are not supported"), "{e}");
        }
    }
    // Everything the router can match still passes: any case, a port, a
    // trailing dot, IP literals.
    for host in [
        "api.example.com",
        "API.Example.COM.",
        "api.example.com:8443",
        "localhost",
        "my_service",
        "10.0.0.1:80",
        "[::1]",
        "[2001:db8::1]:8443",
    ] {
        let yaml = format!(
            "{HEAD}routes:\n  - {{ id: r, match: {{ host: \"{host}\" }}, upstream: http://127.0.0.1:1, public: true }}\n"
        );
        assert_eq!(errors(&yaml), "<accepted>", "{host}");
    }
}

#[test]
fn token_url_errors_hide_the_query() {
    let yaml = format!(
        "{HEAD}credentials:\n  - id: idp\n    oauth2:\n      grant: client_credentials\n      \
         token_url: http://idp.example.com/token?code=s3cr3tCODE\n      client_id: x\n"
    );
    assert_eq!(
        errors(&yaml),
        "t.yaml: credentials[0].oauth2.token_url: \"http://idp.example.com/token?***\" must use https \
         (plain http is allowed only on loopback)"
    );
}

#[test]
fn durations_that_hold_something_are_bounded() {
    let cases = [
        ("proxy.drain_timeout", "proxy: { listen: 127.0.0.1:8080, drain_timeout: 5M }\n".to_owned()),
        ("secrets.file_poll_interval", format!("{HEAD}secrets: {{ file_poll_interval: 2h }}\n")),
        (
            "proxy.tls.reload_interval",
            "proxy: { listen: 127.0.0.1:8080, tls: { cert_file: a, key_file: b, reload_interval: 1y } }\n"
                .to_owned(),
        ),
        (
            "redis.lock_lease",
            format!("{HEAD}redis: {{ url: {{ env: R }}, encryption_keys: [{{ env: K }}], lock_lease: 3650d }}\n"),
        ),
        (
            "redis.timeout",
            format!("{HEAD}redis: {{ url: {{ env: R }}, encryption_keys: [{{ env: K }}], timeout: 6m }}\n"),
        ),
        ("routes[0].timeout", public_route(", timeout: 25h")),
        ("routes[0].connect_timeout", public_route(", connect_timeout: 3650d")),
        (
            "credentials[0].exec.timeout",
            format!("{HEAD}credentials: [{{ id: c, exec: {{ command: [x], timeout: 2h }} }}]\n"),
        ),
        ("credentials[0].refresh.timeout", refresh("timeout: 2h")),
        ("credentials[0].refresh.backoff_min", refresh("backoff_min: 1M, backoff_max: 1M")),
        ("credentials[0].refresh.backoff_max", refresh("backoff_max: 25h")),
        ("credentials[0].refresh.buffer", refresh("buffer: 1M")),
        ("credentials[0].refresh.max_age", refresh("max_age: 3651d")),
    ];
    for (field, yaml) in cases {
        let e = errors(&yaml);
        assert!(
            e.contains(&format!("t.yaml: {field}: must be at most ")),
            "{field}: {e}"
        );
    }
    let e = errors("proxy: { listen: 127.0.0.1:8080, drain_timeout: 5M }\n");
    assert!(
        e.contains("(M and month are months, y is years; minutes are m)"),
        "{e}"
    );
    // The bounds themselves are allowed.
    let at_bounds = "proxy: { listen: 127.0.0.1:8080, drain_timeout: 1h }\nsecrets: { file_poll_interval: 1h }\n\
         redis: { url: { env: R }, encryption_keys: [{ env: K }], lock_lease: 1h, timeout: 5m }\n\
         credentials: [{ id: c, exec: { command: [x], timeout: 1h }, refresh: \
         { timeout: 1h, backoff_min: 24h, backoff_max: 24h, buffer: 7d, max_age: 3650d } }]\n\
         routes:\n  - { id: r, match: { path_prefix: / }, upstream: http://127.0.0.1:1, public: true, \
         timeout: 24h, connect_timeout: 5m }\n";
    assert_eq!(errors(at_bounds), "<accepted>");
    // The Redis lock lease has a floor too: renewed every third of it.
    let e = errors(&format!(
        "{HEAD}redis: {{ url: {{ env: R }}, encryption_keys: [{{ env: K }}], lock_lease: 500ms }}\n"
    ));
    assert!(
        e.contains("t.yaml: redis.lock_lease: must be at least 1s"),
        "{e}"
    );
}

fn refresh(settings: &str) -> String {
    format!(
        "{HEAD}credentials: [{{ id: c, exec: {{ command: [x] }}, refresh: {{ {settings} }} }}]\n"
    )
}

/// Tokens without an expiry may live for months, so `max_age` keeps a
/// long bound; a value written in months or years (`M` meant as minutes)
/// is refused as written, whatever number of days it makes.
#[test]
fn max_age_in_months_is_refused() {
    for v in [
        "1M", "5M", "25M", "50M", "30M", "2months", "1y", "4y", "1y 2M", "3 months", "1yr", "2yrs",
        "9 yrs", "1.5M",
    ] {
        let e = errors(&refresh(&format!("max_age: {v}")));
        assert!(
            e.starts_with("t.yaml: credentials[0].refresh.max_age: is written in months or years")
                && e.contains("(M and month are months, y is years; minutes are m)"),
            "{v}: {e}"
        );
    }
    for v in [
        "10m", "30d", "90d", "365d", "761d", "1461d", "2922d", "3650d", "8766h", "1w",
    ] {
        assert_eq!(
            errors(&refresh(&format!("max_age: {v}"))),
            "<accepted>",
            "{v}"
        );
    }
}

/// Durations are shown (the management API's config view) as the config
/// reads them back, in days at most: a `max_age` copied from the view is
/// accepted, and means the same.
#[test]
fn durations_are_shown_in_days_and_read_back() {
    for (written, shown) in [
        ("90d", "90d"),
        ("1h30m", "1h 30m"),
        ("250ms", "250ms"),
        ("3650d", "3650d"),
        ("36h", "1d 12h"),
    ] {
        let c = Config::from_yaml(&refresh(&format!("max_age: {written}")), "t.yaml").unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["credentials"][0]["refresh"]["max_age"], shown,
            "{written}"
        );
        let back = Config::from_yaml(&refresh(&format!("max_age: {shown}")), "t.yaml").unwrap();
        assert_eq!(
            back.credentials[0].refresh.max_age,
            c.credentials[0].refresh.max_age
        );
    }
}

#[test]
fn size_type_errors_say_what_a_size_is() {
    for (v, want) in [
        (
            "-1",
            "is negative; expected a size such as 1048576 or 10MiB",
        ),
        ("1e30", "a size such as 1048576 or 10MiB"),
        ("18446744073709551616", "this is too large"),
        ("1.5", "not a whole number of bytes"),
        ("[1]", "expected a size such as 1048576 or 10MiB"),
        ("{ a: 1 }", "expected a size such as 1048576 or 10MiB"),
    ] {
        let e = errors(&public_route(&format!(", max_request_body: {v}")));
        assert!(
            e.contains("t.yaml: routes[0].max_request_body: "),
            "{v}: {e}"
        );
        assert!(e.contains(want), "{v}: {e}");
        assert!(!e.contains("untagged"), "{v}: {e}");
    }
    for (v, want) in [("1048576", 1 << 20), ("10MiB", 10 << 20), ("\"2KB\"", 2000)] {
        let c = Config::from_yaml(&public_route(&format!(", max_request_body: {v}")), "t.yaml")
            .unwrap();
        assert_eq!(c.routes[0].max_request_body, Some(want), "{v}");
    }
}

#[test]
fn username_errors_name_the_problem() {
    let yaml = |user: &str| {
        format!(
            "{HEAD}credentials: [{{ id: c, static: {{ env: X }} }}]\nroutes:\n  - id: r\n    \
             match: {{ path_prefix: / }}\n    upstream: http://127.0.0.1:1\n    public: true\n    \
             credential: c\n    inject: {{ basic: {{ username: {user} }} }}\n"
        )
    };
    let e = errors(&yaml("{ evn: USER }"));
    assert!(e.contains("routes[0].inject.basic.username"), "{e}");
    assert!(e.contains("expected one of"), "{e}");
    assert!(!e.contains("untagged enum"), "{e}");
    let e = errors(&yaml("[a]"));
    assert!(
        e.contains("expected a user name, or { env | file | value: ... }"),
        "{e}"
    );
    // A misplaced secret in the wrong shape is not echoed.
    let e = errors(&yaml("{ value: [sk_live_canary_77] }"));
    assert!(!e.contains("sk_live_canary_77"), "{e}");

    let c = Config::from_yaml(&yaml("svc"), "t.yaml").unwrap();
    let basic = c.routes[0].inject.as_ref().and_then(|i| i.basic.clone());
    assert_eq!(
        basic.map(|b| b.username),
        Some(Username::Plain("svc".into()))
    );
    let c = Config::from_yaml(&yaml("{ env: USER }"), "t.yaml").unwrap();
    let basic = c.routes[0].inject.as_ref().and_then(|i| i.basic.clone());
    assert_eq!(
        basic.map(|b| b.username),
        Some(Username::Secret(crate::secret::SecretRef::Env(
            "USER".into()
        )))
    );
}

#[test]
fn empty_and_multi_document_files_say_what_is_wrong() {
    for text in ["", "\n\n", "# just a comment\n", "---\n# nothing\n"] {
        assert_eq!(
            errors(text),
            "t.yaml: the config is empty: proxy.listen is required",
            "{text:?}"
        );
    }
    let e = errors(&format!("{HEAD}---\n{HEAD}"));
    assert!(
        e.starts_with("t.yaml: the file holds several YAML documents"),
        "{e}"
    );
    assert!(e.ends_with("latchkey reads one"), "{e}");
    assert!(!e.contains("from_str_multiple"), "{e}");
}

#[test]
fn listen_errors_say_an_ip_address_is_needed() {
    for (listen, want) in [
        (
            "localhost:8080",
            "t.yaml: proxy.listen: \"localhost:8080\" is not an IP address and port such as \
             127.0.0.1:8080 (write 127.0.0.1:8080; host names are not resolved)",
        ),
        (
            "8080",
            "t.yaml: proxy.listen: 8080 is a port alone; write an IP address and port such as \
             127.0.0.1:8080 (this machine only) or 0.0.0.0:8080 (every interface)",
        ),
        ("\":8080\"", "write 127.0.0.1:8080 for this machine only"),
        ("\"::1:8080\"", "[::1]:8080"),
        ("proxy.example.com:80", "host names are not resolved"),
    ] {
        let e = errors(&format!("proxy: {{ listen: {listen} }}\n"));
        assert!(e.contains(want), "{listen}: {e}");
    }
    let e = errors("proxy: { listen: 127.0.0.1:1 }\nadmin: { listen: localhost:9090 }\n");
    assert!(
        e.contains("t.yaml: admin.listen: \"localhost:9090\""),
        "{e}"
    );
}

#[test]
fn dot_ids_are_refused() {
    assert!(!is_valid_id("."));
    assert!(!is_valid_id(".."));
    assert!(is_valid_id("..a"));
    assert!(is_valid_id("a.b"));
    let e = errors(&format!(
        "{HEAD}credentials: [{{ id: \"..\", static: {{ env: X }} }}]\n"
    ));
    assert!(
        e.contains("t.yaml: credentials[0].id: \"..\" cannot be an id"),
        "{e}"
    );
}

/// Sizes and counts that would only be typos are refused, naming the
/// field: a replay buffer of gigabytes per request in flight, a
/// concurrency limit or an idle pool no process could use.
#[test]
fn counts_and_buffers_are_bounded() {
    let route = "routes: [{ id: r, match: { path_prefix: /a/ }, upstream: \"http://127.0.0.1:9\", public: true, retry: { max_replay_body: 100GiB } }]\n";
    let e = errors(&format!(
        "proxy: {{ listen: 127.0.0.1:8080, max_concurrent_requests: 2000000, upstream_max_idle: 200000 }}\n{route}"
    ));
    for want in [
        "t.yaml: routes[0].retry.max_replay_body: must be at most 64 MiB",
        "t.yaml: proxy.max_concurrent_requests: must be between 1 and 1000000",
        "t.yaml: proxy.upstream_max_idle: must be at most 100000",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = errors(&format!(
        "proxy: {{ listen: 127.0.0.1:8080, max_concurrent_requests: 0 }}\n{route}"
    ));
    assert!(
        e.contains("proxy.max_concurrent_requests: must be between 1"),
        "{e}"
    );
    let ok = route.replace("100GiB", "64MiB");
    assert_eq!(
        errors(&format!(
            "proxy: {{ listen: 127.0.0.1:8080, max_concurrent_requests: 1000000, upstream_max_idle: 100000 }}\n{ok}"
        )),
        "<accepted>"
    );
}

/// `none` is the metrics' label for "no route" and "no credential": a
/// route or credential of that id would share their series. A client may
/// be called `none` (clients label no metric).
#[test]
fn none_is_no_route_or_credential_id() {
    let e = errors(&format!(
        "{HEAD}clients: [{{ id: none, token: {{ env: T }}, routes: [none] }}]\ncredentials: [{{ id: none, static: {{ env: X }} }}]\nroutes: [{{ id: none, match: {{ path_prefix: /a/ }}, upstream: \"http://127.0.0.1:9\", credential: none }}]\n"
    ));
    for field in ["credentials[0].id", "routes[0].id"] {
        assert!(
            e.contains(&format!(
                "t.yaml: {field}: \"none\" cannot be a route or credential id"
            )),
            "{e}"
        );
    }
    assert!(!e.contains("clients[0].id"), "{e}");
}

/// Settings accepted but without effect where they are are warned about:
/// a CA for a plain-http upstream, `refresh` on a static credential.
#[test]
fn settings_without_effect_are_warned_about() {
    let yaml = "proxy: { listen: 127.0.0.1:0 }\nclients:\n  - { id: c, token: { env: T }, routes: [\"*\"] }\ncredentials:\n  - id: k\n    static: { env: K }\n    refresh: { buffer: 5m }\n  - id: j\n    static: { env: J }\nroutes:\n  - { id: a, match: { path_prefix: /a/ }, upstream: \"http://127.0.0.1:9\", credential: k, ca_file: /tmp/ca.pem }\n  - { id: b, match: { path_prefix: /b/ }, upstream: \"https://b.example\", credential: j, ca_file: /tmp/ca.pem }\n";
    let c = Config::from_yaml(yaml, "t.yaml").unwrap();
    let w = warnings(&c);
    assert!(
        w.contains(
            &"routes[0].ca_file is ignored: the upstream is plain http, with no TLS to verify"
                .to_owned()
        ),
        "{w:?}"
    );
    assert!(
        w.contains(
            &"credentials[0].refresh is ignored: a static credential is never refreshed".to_owned()
        ),
        "{w:?}"
    );
    assert!(
        !w.iter()
            .any(|w| w.starts_with("routes[1]") || w.starts_with("credentials[1]")),
        "{w:?}"
    );
}

/// Prefixes no request path can have: matched by nothing, they would
/// answer 404 `no_route` with nothing pointing at the cause.
#[test]
fn path_prefixes_no_request_can_match_are_refused() {
    for (prefix, says) in [
        ("\"/search?\"", "'?'"),
        ("\"/docs#/\"", "'#'"),
        ("\"/my api/\"", "' '"),
        ("\"/a\\tb/\"", "'\\t'"),
    ] {
        let e = errors(&format!(
            "{HEAD}routes:\n  - {{ id: r, match: {{ path_prefix: {prefix} }}, upstream: http://127.0.0.1:1, public: true }}\n"
        ));
        assert!(
            e.contains("t.yaml: routes[0].match.path_prefix: ") && e.contains(says),
            "{prefix}: {e}"
        );
        assert!(e.contains("which no request path holds"), "{e}");
    }
    // Non-ASCII is matched as sent.
    let route = "routes:\n  - { id: r, match: { path_prefix: /caf\u{e9}/ }, upstream: http://127.0.0.1:1, public: true }\n";
    assert_eq!(errors(&format!("{HEAD}{route}")), "<accepted>");
    // An encoded slash is fine, unless every request with one is refused.
    let route = "routes:\n  - { id: r, match: { path_prefix: /a%2Fb }, upstream: http://127.0.0.1:1, public: true }\n";
    assert_eq!(errors(&format!("{HEAD}{route}")), "<accepted>");
    let e = errors(&format!(
        "proxy: {{ listen: 127.0.0.1:8080, escaped_slashes: reject }}\n{route}"
    ));
    assert!(
        e.contains("routes[0].match.path_prefix: ") && e.contains("escaped_slashes: reject"),
        "{e}"
    );
}

/// `run` refuses these; `check` must too, whatever the machine.
#[test]
fn a_redis_client_certificate_needs_its_key_and_the_reverse() {
    let redis = |tls: &str| {
        errors(&format!(
            "{HEAD}redis: {{ url: {{ env: R }}, encryption_keys: [{{ env: K }}]{tls} }}\n"
        ))
    };
    let e = redis(", client_cert_file: /c.pem");
    assert!(
        e.contains("t.yaml: redis.client_key_file: needed with client_cert_file"),
        "{e}"
    );
    let e = redis(", client_key_file: /k.pem");
    assert!(
        e.contains("t.yaml: redis.client_cert_file: needed with client_key_file"),
        "{e}"
    );
    assert_eq!(
        redis(", client_cert_file: /c.pem, client_key_file: /k.pem"),
        "<accepted>"
    );
}

/// The token endpoint is asked at the whole URL, query included: a query
/// with bytes a request target cannot carry is refused at load, naming
/// the field, without showing the query.
#[test]
fn a_token_url_query_that_is_not_a_valid_target_is_refused() {
    let yaml = |url: &str| {
        format!(
            "{HEAD}credentials:\n  - id: idp\n    oauth2:\n      grant: client_credentials\n      \
             token_url: '{url}'\n      client_id: x\n      client_secret: {{ env: S }}\n"
        )
    };
    let e = errors(&yaml("https://idp.example.com/token?claims={\"a\":1}"));
    assert!(
        e.contains("t.yaml: credentials[0].oauth2.token_url: ") && e.contains("percent-encode"),
        "{e}"
    );
    assert!(!e.contains("claims"), "{e}");
    assert_eq!(
        errors(&yaml("https://idp.example.com/token?p=B2C_1_signin")),
        "<accepted>"
    );
}

/// A poll of a millisecond is a read of every watched file a millisecond.
#[test]
fn polls_faster_than_ten_milliseconds_are_refused() {
    let e = errors(&format!("{HEAD}secrets: {{ file_poll_interval: 1ms }}\n"));
    assert!(
        e.contains("t.yaml: secrets.file_poll_interval: must be at least 10ms"),
        "{e}"
    );
    assert_eq!(
        errors(&format!("{HEAD}secrets: {{ file_poll_interval: 10ms }}\n")),
        "<accepted>"
    );
    let e = errors(
        "proxy: { listen: 127.0.0.1:8080, tls: { cert_file: a, key_file: b, reload_interval: 5ms } }\n",
    );
    assert!(
        e.contains("t.yaml: proxy.tls.reload_interval: must be at least 10ms"),
        "{e}"
    );
}
