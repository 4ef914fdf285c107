use super::*;

/// The example from the foundation issue, verbatim.
pub(crate) const EXAMPLE: &str = include_str!("../../../../examples/latchkey.yaml");

#[test]
fn the_issue_example_loads() {
    let c = Config::from_yaml(EXAMPLE, "latchkey.yaml").unwrap();
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].upstream.base_path, "/v2");
    assert_eq!(c.routes[0].timeout, std::time::Duration::from_secs(30));
    assert!(c.routes[1].public);
    let w = warnings(&c);
    assert!(
        w.iter()
            .any(|w| w.contains("search") && w.contains("public"))
    );
}

fn err_of(yaml: &str) -> String {
    Config::from_yaml(yaml, "bad.yaml").unwrap_err().to_string()
}

fn with_route(route: &str) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0 }}\nclients:\n  - {{ id: c, token: {{ env: T }}, routes: [\"*\"] }}\ncredentials:\n  - id: k\n    static: {{ value: lit-canary-9f3 }}\nroutes:\n  - {route}\n"
    )
}

#[test]
fn bad_configs_name_file_and_field() {
    let cases: &[(&str, &str)] = &[
        (
            &with_route("{ id: r, match: { path_prefix: /a/ }, upstream: ftp://x, credential: k }"),
            "bad.yaml: routes[0].upstream: \"ftp://x\": scheme must be http or https",
        ),
        (
            &with_route(
                "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k, inject: { header: \"x y\" } }",
            ),
            "bad.yaml: routes[0].inject.header: is not a valid header name",
        ),
        (
            &with_route(
                "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: nope }",
            ),
            "bad.yaml: routes[0].credential: no credential has this id (defined: k)",
        ),
        (
            &with_route("{ id: r, match: { path_prefix: a/ }, upstream: https://x }"),
            "bad.yaml: routes[0].match.path_prefix: \"a/\" must start with /",
        ),
        (
            &with_route(
                "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, timeout: 5 parsecs }",
            ),
            "bad.yaml: routes[0].timeout: is not a duration like 30s, 5m or 1h30m (an unknown unit",
        ),
        (
            &with_route(
                "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, colour: blue }",
            ),
            "bad.yaml: routes[0].colour: unknown field `colour`, expected one of id, match",
        ),
        (
            &with_route(
                "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k, inject: { header: x-k, format: \"Bearer\" } }",
            ),
            "bad.yaml: routes[0].inject.format: must contain {token} where the token goes",
        ),
        (
            &with_route(
                "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k, inject: { header: x-k, query: k } }",
            ),
            "bad.yaml: routes[0].inject: set exactly one of header, query or basic",
        ),
        (
            &with_route("{ id: r, match: {}, upstream: https://x }"),
            "bad.yaml: routes[0].match: set host, path_prefix or both",
        ),
        (
            &with_route("{ id: \"r r\", match: { path_prefix: /a/ }, upstream: https://x }"),
            "bad.yaml: routes[0].id: \"r r\": ids use only letters",
        ),
        (
            "proxy: { listen: nowhere }\n",
            "bad.yaml: proxy.listen: \"nowhere\" is not an IP address and port such as 127.0.0.1:8080",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n",
            "bad.yaml: credentials[0]: exactly one provider must be set",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\nclients:\n  - { id: c, token: { env: T }, routes: [ghost] }\n",
            "bad.yaml: clients[0].routes[0]: no route has id \"ghost\"",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n    static: { vault: x }\n",
            "bad.yaml: credentials[0].static: unknown variant (value hidden), expected one of",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\nroutes:\n  - { id: a, match: { path_prefix: /x/ }, upstream: https://a, public: true }\n  - { id: b, match: { path_prefix: /x/ }, upstream: https://b, public: true }\n",
            "bad.yaml: routes[1].match: same host and path_prefix as routes[0] (\"a\")",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n    static: { value: lit-canary-9f3 }\n    refresh: { buffer: 400d }\n",
            "bad.yaml: credentials[0].refresh.buffer: must be at most 7d",
        ),
        (
            // 2M is two months: one failed refresh would wait 61 days.
            "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n    static: { value: lit-canary-9f3 }\n    refresh: { backoff_min: 2M, backoff_max: 3M }\n",
            "bad.yaml: credentials[0].refresh.backoff_min: must be at most 24h (M and month are months, y is years; minutes are m)",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n    static: { value: lit-canary-9f3 }\n    refresh: { max_age: 5000000000d }\n",
            "bad.yaml: credentials[0].refresh.max_age: must be at most 3650d",
        ),
        (
            "proxy: { listen: 127.0.0.1:0, client_header_timeout: 2h }\n",
            "bad.yaml: proxy.client_header_timeout: must be 0s (off) or between 1s and 1h",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\nroutes:\n  - { id: a, match: { path_prefix: /%7Ejane/ }, upstream: https://a, public: true }\n",
            "bad.yaml: routes[0].match.path_prefix: \"/%7Ejane/\" is not in the form requests are matched in (encoded letters, digits and -._~ decoded, other escapes in upper case): write \"/~jane/\"",
        ),
        (
            "proxy: { listen: 127.0.0.1:0 }\nroutes:\n  - { id: a, match: { path_prefix: /a/../b/ }, upstream: https://a, public: true }\n",
            "bad.yaml: routes[0].match.path_prefix: \"/a/../b/\" has a . or .. path segment, which no request path is allowed to have",
        ),
        (
            "proxy: { listen: 127.0.0.1:0, client_idle_timeout: 2d }\n",
            "bad.yaml: proxy.client_idle_timeout: must be 0s (off) or between 1s and 24h",
        ),
        (
            "proxy: { listen: 127.0.0.1:0, send_timeout: 500ms }\n",
            "bad.yaml: proxy.send_timeout: must be 0s (off) or between 1s and 1h",
        ),
        (
            "proxy: { listen: 127.0.0.1:0, delayed_close_timeout: 2m }\n",
            "bad.yaml: proxy.delayed_close_timeout: must be at most 60s (0s turns it off)",
        ),
        (
            "proxy: { listen: 127.0.0.1:0, escaped_slashes: decode }\n",
            "bad.yaml: proxy.escaped_slashes: unknown variant (value hidden), expected one of keep, reject",
        ),
        ("proxy: [", "bad.yaml: "),
    ];
    for (yaml, want) in cases {
        let got = err_of(yaml);
        assert!(
            got.starts_with(want),
            "\nwant prefix: {want}\ngot:         {got}"
        );
        assert!(!got.contains("lit-canary-9f3"), "secret leaked: {got}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = "proxy: { listen: 127.0.0.1:0 }\nroutes:\n  - { id: a, match: { path_prefix: x }, upstream: https://a, credential: k1, public: true }\n  - { id: a, match: { path_prefix: /y/ }, upstream: https://a, credential: k2, public: true }\n";
    let e = Config::from_yaml(yaml, "f.yaml").unwrap_err();
    let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[1].id",
            "routes[0].match.path_prefix",
            "routes[0].credential",
            "routes[1].credential"
        ]
    );
}

#[test]
fn misplaced_secret_is_not_echoed() {
    // A secret pasted where a number or map is expected must not be echoed.
    let yaml = "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n    static: \"sk_live_canary_123\"\n";
    let e = err_of(yaml);
    assert!(e.starts_with("bad.yaml: credentials[0].static:"), "{e}");
    assert!(!e.contains("sk_live_canary_123"), "{e}");
    let yaml = "proxy: { listen: 127.0.0.1:0, drain_timeout: { sk_live_canary_456: 1 } }\n";
    let e = err_of(yaml);
    assert!(!e.contains("sk_live_canary_456"), "{e}");
}

#[test]
fn debug_of_config_hides_literals() {
    let c = Config::from_yaml(
        &with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k }"),
        "f",
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("lit-canary-9f3"));
    // An `exec` command's arguments and environment values may be secrets.
    let c = Config::from_yaml(
        "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: e\n    exec: { command: [get-token, --secret=arg-canary-1], env: { KEY: env-canary-2 } }\n",
        "f",
    )
    .unwrap();
    let shown = format!("{c:?}");
    assert!(
        shown.contains("get-token") && shown.contains("KEY"),
        "{shown}"
    );
    assert!(
        !shown.contains("arg-canary-1") && !shown.contains("env-canary-2"),
        "{shown}"
    );
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("10MiB"), Ok(10 << 20));
    assert_eq!(parse_size("512KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert!(parse_size("ten").is_err());
    assert_eq!(
        parse_duration("5m"),
        Ok(std::time::Duration::from_secs(300))
    );
    assert!(parse_duration("0s").is_err());
}

#[test]
fn serialised_config_redacts_literals_and_round_trips() {
    let yaml = "proxy: { listen: 127.0.0.1:0 }\nadmin: { listen: 127.0.0.1:0, management_key: { value: mk-canary-77 } }\nclients:\n  - { id: c, token: { env: T }, routes: [r] }\ncredentials:\n  - id: k\n    static: { value: lit-canary-9f3 }\nroutes:\n  - { id: r, match: { path_prefix: /a/ }, upstream: \"https://x/v1\", credential: k, timeout: 5s, retry: { statuses: [401, 403] } }\n";
    let c = Config::from_yaml(yaml, "f").unwrap();
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("canary"), "{json}");
    assert!(json.contains("<redacted>"));
    assert!(json.contains("\"upstream\":\"https://x/v1\""), "{json}");
    assert!(json.contains("\"timeout\":\"5s\""), "{json}");
    assert_eq!(c.routes[0].retry.statuses, [401, 403]);
    assert_eq!(c.routes[0].retry.max_replay_body, 1 << 20);
    let e = err_of(&with_route(
        "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, retry: { statuses: [200] } }",
    ));
    assert!(
        e.starts_with("bad.yaml: routes[0].retry.statuses[0]: 200 is not an error status"),
        "{e}"
    );
}

#[test]
fn audit_and_metrics_default_on_and_reject_unknown_fields() {
    let c = Config::from_yaml(EXAMPLE, "latchkey.yaml").unwrap();
    assert!(c.audit.enabled);
    assert_eq!(c.audit.file, None);
    assert!(c.metrics.enabled);
    let text = format!(
        "{EXAMPLE}audit: {{ enabled: false, file: /var/log/latchkey/audit.jsonl }}\nmetrics: {{ enabled: false }}\n"
    );
    let c = Config::from_yaml(&text, "latchkey.yaml").unwrap();
    assert!(!c.audit.enabled);
    assert_eq!(
        c.audit.file.as_deref(),
        Some(std::path::Path::new("/var/log/latchkey/audit.jsonl"))
    );
    assert!(!c.metrics.enabled);
    let e = Config::from_yaml(&format!("{EXAMPLE}audit: {{ level: info }}\n"), "l.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("audit"), "{e}");
}

#[test]
fn default_posture_refusals_name_the_field_and_the_fix() {
    let base = |listen: &str, route: &str| {
        format!(
            "proxy: {{ listen: \"{listen}\" }}\ncredentials:\n  - {{ id: k, static: {{ env: K }} }}\nroutes:\n  - {route}\n"
        )
    };
    // Public route on a non-loopback listener.
    let e = err_of(&base(
        "0.0.0.0:8080",
        "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k, public: true }",
    ));
    assert!(e.starts_with("bad.yaml: routes[0].public: route \"r\" is public on non-loopback listener 0.0.0.0:8080"), "{e}");
    assert!(e.contains("proxy.allow_public_routes: true"), "{e}");
    let ok = base(
        "0.0.0.0:8080",
        "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k, public: true }",
    )
    .replace(
        "proxy: { listen: \"0.0.0.0:8080\" }",
        "proxy: { listen: \"0.0.0.0:8080\", allow_public_routes: true }",
    );
    Config::from_yaml(&ok, "ok.yaml").unwrap();
    // A route nobody may use.
    let e = err_of(&base(
        "127.0.0.1:0",
        "{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k }",
    ));
    assert!(
        e.starts_with("bad.yaml: routes[0]: route \"r\" is not public and no client lists it"),
        "{e}"
    );
    // A credential sent in clear over the network.
    let e = err_of(&base(
        "127.0.0.1:0",
        "{ id: r, match: { path_prefix: /a/ }, upstream: http://api.example.com, credential: k, public: true }",
    ));
    assert!(
        e.starts_with(
            "bad.yaml: routes[0].upstream: http://api.example.com is plain http and not on loopback"
        ),
        "{e}"
    );
    assert!(e.contains("routes[0].allow_insecure_upstream: true"), "{e}");
    // Loopback upstreams (the sidecar pattern) and explicit opt-ins pass.
    for route in [
        "{ id: r, match: { path_prefix: /a/ }, upstream: http://127.0.0.1:9000, credential: k, public: true }",
        "{ id: r, match: { path_prefix: /a/ }, upstream: http://localhost:9000, credential: k, public: true }",
        "{ id: r, match: { path_prefix: /a/ }, upstream: http://api.example.com, credential: k, public: true, allow_insecure_upstream: true }",
        "{ id: r, match: { path_prefix: /a/ }, upstream: http://api.example.com, public: true }",
    ] {
        Config::from_yaml(&base("127.0.0.1:0", route), "ok.yaml").unwrap();
    }
    // An upstream client certificate: both files, and only over https.
    for (files, upstream, expected) in [
        (
            "client_cert_file: c.pem",
            "https://x",
            "bad.yaml: routes[0].client_key_file: needed with client_cert_file",
        ),
        (
            "client_key_file: k.pem",
            "https://x",
            "bad.yaml: routes[0].client_cert_file: needed with client_key_file",
        ),
        (
            "client_cert_file: c.pem, client_key_file: k.pem",
            "http://127.0.0.1:9",
            "bad.yaml: routes[0].client_cert_file: http://127.0.0.1:9 is not https",
        ),
        (
            "tunnel_idle_timeout: 25h",
            "https://x",
            "bad.yaml: routes[0].tunnel_idle_timeout: must be 0s (never) or between 1s and 24h",
        ),
        (
            "response_idle_timeout: 500ms",
            "https://x",
            "bad.yaml: routes[0].response_idle_timeout: must be 0s (never) or between 1s and 24h",
        ),
    ] {
        let e = err_of(&base(
            "127.0.0.1:0",
            &format!(
                "{{ id: r, match: {{ path_prefix: /a/ }}, upstream: \"{upstream}\", public: true, {files} }}"
            ),
        ));
        assert!(e.starts_with(expected), "{e}");
    }
}

#[test]
fn proxy_tls_and_certificate_clients() {
    let with = |tls: &str, client: &str| {
        format!(
            "proxy: {{ listen: 127.0.0.1:0{tls} }}\nclients:\n  - {client}\nroutes:\n  - {{ id: r, match: {{ path_prefix: /a/ }}, upstream: https://x }}\n"
        )
    };
    let mtls = ", tls: { cert_file: /t/tls.crt, key_file: /t/tls.key, client_ca_file: /t/ca.crt }";
    let spiffe = "spiffe://cluster.local/ns/billing/sa/billing";

    // Certificate-only, token-only and both are fine with a client CA.
    for client in [
        format!("{{ id: c, tls_san: [\"{spiffe}\"], routes: [r] }}"),
        "{ id: c, token: { env: T }, routes: [r] }".to_string(),
        format!("{{ id: c, token: {{ env: T }}, tls_san: [\"{spiffe}\"], routes: [r] }}"),
    ] {
        let c = Config::from_yaml(&with(mtls, &client), "ok.yaml").unwrap();
        let tls = c.proxy.tls.as_ref().unwrap();
        assert_eq!(tls.client_cert_mode(), Some(ClientCertMode::Required));
        assert_eq!(tls.reload_interval, std::time::Duration::from_secs(1));
    }
    let c = Config::from_yaml(
        &with(
            ", tls: { cert_file: a, key_file: b, client_ca_file: c, client_cert: optional, reload_interval: 250ms }",
            "{ id: c, token: { env: T }, routes: [r] }",
        ),
        "ok.yaml",
    )
    .unwrap();
    let tls = c.proxy.tls.as_ref().unwrap();
    assert_eq!(tls.client_cert_mode(), Some(ClientCertMode::Optional));
    assert_eq!(tls.reload_interval, std::time::Duration::from_millis(250));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["proxy"]["tls"]["client_cert"], "optional");

    let cases: &[(String, &str)] = &[
        (
            with(mtls, "{ id: c, routes: [r] }"),
            "bad.yaml: clients[0]: set token, tls_san or both",
        ),
        (
            with(
                "",
                &format!("{{ id: c, tls_san: [\"{spiffe}\"], routes: [r] }}"),
            ),
            "bad.yaml: clients[0].tls_san: needs proxy.tls.client_ca_file",
        ),
        (
            with(
                ", tls: { cert_file: a, key_file: b }",
                &format!("{{ id: c, tls_san: [\"{spiffe}\"], routes: [r] }}"),
            ),
            "bad.yaml: clients[0].tls_san: needs proxy.tls.client_ca_file",
        ),
        (
            with(
                mtls,
                "{ id: c, tls_san: [billing.example.com], routes: [r] }",
            ),
            "bad.yaml: clients[0].tls_san[0]: \"billing.example.com\" is not a URI SAN",
        ),
        (
            with(
                mtls,
                &format!(
                    "{{ id: c, tls_san: [\"{spiffe}\"], routes: [r] }}\n  - {{ id: d, tls_san: [\"{spiffe}\"], routes: [r] }}"
                ),
            ),
            "bad.yaml: clients[1].tls_san[0]: \"spiffe://cluster.local/ns/billing/sa/billing\" already identifies clients[0] (\"c\")",
        ),
        (
            with(
                ", tls: { cert_file: a, key_file: b, client_cert: required }",
                "{ id: c, token: { env: T }, routes: [r] }",
            ),
            "bad.yaml: proxy.tls.client_cert: needs proxy.tls.client_ca_file",
        ),
        (
            with(
                ", tls: { cert_file: a, key_file: b, client_ca_file: c, client_cert: sometimes }",
                "{ id: c, token: { env: T }, routes: [r] }",
            ),
            "bad.yaml: proxy.tls.client_cert: unknown variant",
        ),
        (
            with(
                ", tls: { cert_file: a }",
                "{ id: c, token: { env: T }, routes: [r] }",
            ),
            "bad.yaml: proxy.tls: missing field `key_file`",
        ),
    ];
    for (yaml, want) in cases {
        let got = err_of(yaml);
        assert!(
            got.starts_with(want),
            "\nwant prefix: {want}\ngot:         {got}"
        );
    }
}

#[test]
fn is_uri_like_accepts_uri_sans_only() {
    use super::validate::is_uri_like;
    for ok in [
        "spiffe://td/ns/a/sa/b",
        "urn:uuid:1234",
        "https://a.example/x",
    ] {
        assert!(is_uri_like(ok), "{ok}");
    }
    for bad in [
        "billing",
        "",
        ":x",
        "1x:y",
        "spiffe:",
        "spiffe://a b",
        "a.example.com",
    ] {
        assert!(!is_uri_like(bad), "{bad}");
    }
}

#[test]
fn upstream_pool_settings_default_parse_and_are_checked() {
    let c = Config::from_yaml(
        &with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k }"),
        "ok.yaml",
    )
    .unwrap();
    assert_eq!(c.proxy.upstream_max_idle, 256);
    assert_eq!(
        c.proxy.upstream_idle_timeout,
        std::time::Duration::from_secs(90)
    );

    let tuned =
        with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k }")
            .replace(
                "proxy: { listen: 127.0.0.1:0 }",
                "proxy: { listen: 127.0.0.1:0, upstream_max_idle: 0, upstream_idle_timeout: 5m }",
            );
    let c = Config::from_yaml(&tuned, "ok.yaml").unwrap();
    assert_eq!(c.proxy.upstream_max_idle, 0);
    assert_eq!(
        c.proxy.upstream_idle_timeout,
        std::time::Duration::from_secs(300)
    );

    let short = tuned.replace("upstream_idle_timeout: 5m", "upstream_idle_timeout: 500ms");
    let e = err_of(&short);
    assert!(
        e.contains("bad.yaml: proxy.upstream_idle_timeout: must be between 1s and 24h"),
        "{e}"
    );
    let long = tuned.replace("upstream_idle_timeout: 5m", "upstream_idle_timeout: 25h");
    assert!(
        err_of(&long).contains("proxy.upstream_idle_timeout: must be between 1s and 24h"),
        "{}",
        err_of(&long)
    );

    // h2 keep-alive: off (0s) by default, otherwise 1s to 1h.
    let d = Config::from_yaml(
        &with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: k }"),
        "ok.yaml",
    )
    .unwrap();
    assert_eq!(d.proxy.upstream_h2_keepalive, std::time::Duration::ZERO);
    for (value, secs) in [("0s", 0), ("30s", 30), ("1h", 3600)] {
        let yaml = tuned.replace(
            "upstream_idle_timeout: 5m",
            &format!("upstream_h2_keepalive: {value}"),
        );
        let c = Config::from_yaml(&yaml, "ok.yaml").unwrap();
        assert_eq!(
            c.proxy.upstream_h2_keepalive,
            std::time::Duration::from_secs(secs)
        );
    }
    let e = err_of(&tuned.replace("upstream_idle_timeout: 5m", "upstream_h2_keepalive: 10"));
    assert!(
        e.contains("proxy.upstream_h2_keepalive") && e.contains("is not a duration"),
        "{e}"
    );
    for bad in ["500ms", "2h"] {
        let yaml = tuned.replace(
            "upstream_idle_timeout: 5m",
            &format!("upstream_h2_keepalive: {bad}"),
        );
        let e = err_of(&yaml);
        assert!(
            e.contains("proxy.upstream_h2_keepalive: must be 0s (off) or between 1s and 1h"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn the_client_header_timeout_defaults_to_a_minute_and_can_be_off() {
    let c = Config::from_yaml("proxy: { listen: 127.0.0.1:0 }\n", "t.yaml").unwrap();
    assert_eq!(
        c.proxy.client_header_timeout,
        std::time::Duration::from_secs(60)
    );
    let off = Config::from_yaml(
        "proxy: { listen: 127.0.0.1:0, client_header_timeout: 0s }\n",
        "t.yaml",
    )
    .unwrap();
    assert!(off.proxy.client_header_timeout.is_zero());
    assert_eq!(
        c.proxy.delayed_close_timeout,
        std::time::Duration::from_secs(1)
    );
    assert_eq!(c.proxy.send_timeout, std::time::Duration::from_secs(60));
}

/// A key written twice names the field, not the YAML library's option.
#[test]
fn a_duplicate_key_names_the_field() {
    let e = err_of("proxy: { listen: 127.0.0.1:0 }\nproxy: { listen: 127.0.0.1:1 }\n");
    assert!(
        e.contains(": proxy: is set twice; keep one at line 2"),
        "{e}"
    );
    let e = err_of("proxy:\n  listen: 127.0.0.1:0\n  listen: 127.0.0.1:1\n");
    assert!(
        e.contains(": proxy.listen: is set twice; keep one at line 3"),
        "{e}"
    );
    assert!(!e.contains("DuplicateKeyPolicy"), "{e}");
}

mod checks;
mod secrets;

/// A `file` token with no expiry in it and no `refresh.max_age` is re-read
/// only after a 401: `check` says so, and not when either gives a limit.
#[test]
fn a_file_token_that_never_expires_is_warned_about() {
    let yaml = |extra: &str| {
        format!(
            "proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: sa\n    file: {{ path: /var/run/token{extra} }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: https://x, credential: sa, public: true }}\n"
        )
    };
    let warned = |extra: &str| {
        let c = Config::from_yaml(&yaml(extra), "t.yaml").unwrap();
        warnings(&c).iter().any(|w| w.contains("refresh.max_age"))
    };
    assert!(warned(""));
    assert!(!warned(", token_field: t, expiry_field: e"));
    assert!(!warned(" }\n    refresh: { max_age: 5m"));
}
