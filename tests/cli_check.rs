//! End-to-end tests of `latchkey check`, the built binary on a config file:
//! the summary of a good config (routes, credentials, clients, TLS) without
//! printing a secret, and every kind of bad config rejected with the file,
//! the field path and the problem named.
//!
//! The command helpers and the README example config are in
//! `support/cli.rs`.

mod support;

use std::path::Path;

use support::cli::{
    BILLING_CANARY, EXAMPLE, LITERAL_CANARY, PAYMENTS_CANARY, SEARCH_KEY_FILE, check, latchkey,
    run_to_end, text, write_file,
};

#[test]
fn check_summarises_the_example_config_without_printing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "latchkey.yaml", EXAMPLE);
    let out = run_to_end(
        latchkey()
            .env("PAYMENTS_API_KEY", PAYMENTS_CANARY)
            .env("BILLING_PROXY_TOKEN", BILLING_CANARY)
            .arg("check")
            .arg("--config")
            .arg(&path),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "check failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("config ok: {}", path.display())),
        "{stdout}"
    );

    let line = |needle: &str| -> String {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(needle))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no line starting with {needle:?} in:\n{stdout}"))
    };
    let payments = line("payments ");
    assert!(
        payments.contains("prefix /payments/ (stripped)"),
        "{payments}"
    );
    assert!(
        payments.contains("https://api.payments.example.com"),
        "{payments}"
    );
    assert!(
        payments.contains("payments-key -> header authorization"),
        "{payments}"
    );
    assert!(payments.contains("clients [billing]"), "{payments}");
    let search = line("search ");
    assert!(
        search.contains("host search.internal.example.com"),
        "{search}"
    );
    assert!(search.contains("https://search.example.com/v2"), "{search}");
    assert!(
        search.contains("search-key -> header x-api-key"),
        "{search}"
    );
    assert!(search.contains("public"), "{search}");

    let payments_key = line("payments-key ");
    assert!(
        payments_key.contains("env PAYMENTS_API_KEY (resolves here)"),
        "{payments_key}"
    );
    let search_key = line("search-key ");
    assert!(
        search_key.contains(&format!("file {SEARCH_KEY_FILE}")),
        "{search_key}"
    );
    if !Path::new(SEARCH_KEY_FILE).exists() {
        assert!(search_key.contains("does not resolve here"), "{search_key}");
    }
    let billing = line("billing ");
    assert!(
        billing.contains("token env BILLING_PROXY_TOKEN (resolves here)"),
        "{billing}"
    );

    assert!(
        stdout.contains("routes[1] (search) is public"),
        "missing the public-route warning:\n{stdout}"
    );
    for canary in [PAYMENTS_CANARY, BILLING_CANARY] {
        assert!(
            !stdout.contains(canary),
            "secret printed on stdout:\n{stdout}"
        );
        assert!(
            !stderr.contains(canary),
            "secret printed on stderr:\n{stderr}"
        );
    }
}

#[test]
fn check_tolerates_secrets_that_do_not_resolve_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "latchkey.yaml", EXAMPLE);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("env PAYMENTS_API_KEY (does not resolve here: environment variable PAYMENTS_API_KEY is not set)"),
        "{stdout}"
    );
}

#[test]
fn check_summarises_tls_and_certificate_clients() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tls.crt");
    let yaml = EXAMPLE
        .replace(
            "  listen: 127.0.0.1:8080\n",
            &format!(
                "  listen: 127.0.0.1:8080\n  tls: {{ cert_file: {0}, key_file: {0}, client_ca_file: {0} }}\n",
                missing.display()
            ),
        )
        .replace(
            "    token: { env: BILLING_PROXY_TOKEN }",
            "    tls_san: [spiffe://cluster.local/ns/billing/sa/billing]",
        );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for want in [
        "proxy tls: cert ",
        "client certificate required (CA ",
        "certificate SAN spiffe://cluster.local/ns/billing/sa/billing; routes [payments]",
        "proxy.tls.cert_file: cannot read ",
        "proxy.tls.client_ca_file: cannot read ",
    ] {
        assert!(stdout.contains(want), "want {want:?} in:\n{stdout}");
    }
}

/// A token URL's query can hold a key (an Azure Function's `?code=`):
/// the summary shows `?***`.
#[test]
fn check_hides_a_token_urls_query() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: fn\n    oauth2:\n      grant: client_credentials\n      token_url: https://fn.example.net/api/token?code={LITERAL_CANARY}\n      client_id: x\n      client_secret: {{ env: FN_SECRET }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: /r/ }}, upstream: \"https://api.example.net\", credential: fn, public: true }}\n"
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("at https://fn.example.net/api/token?*** as client x"),
        "{stdout}"
    );
    assert!(!stdout.contains(LITERAL_CANARY), "{stdout}");
}

/// `LATCHKEY_LOG_FORMAT` is read in any case (`JSON` as `json`).
#[test]
fn the_log_format_ignores_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "latchkey.yaml", EXAMPLE);
    for format in ["JSON", "Text"] {
        let out = run_to_end(
            latchkey()
                .env("LATCHKEY_LOG_FORMAT", format)
                .arg("check")
                .arg("--config")
                .arg(&path),
        );
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
    }
}

fn with_route(route: &str) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: k\n    static: {{ value: {LITERAL_CANARY} }}\nroutes:\n  - {route}\n"
    )
}

#[test]
fn check_rejects_bad_configs_naming_file_field_and_problem() {
    let two_routes_bad_header = format!(
        "proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: k\n    static: {{ value: {LITERAL_CANARY} }}\nroutes:\n  - {{ id: a, match: {{ path_prefix: /a/ }}, upstream: https://a, credential: k }}\n  - {{ id: b, match: {{ path_prefix: /b/ }}, upstream: https://b, credential: k, inject: {{ header: \"bad header\" }} }}\n"
    );
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "invalid inject header",
            two_routes_bad_header,
            Some("routes[1].inject.header"),
            "is not a valid header name",
        ),
        (
            "upstream scheme",
            with_route("{ id: r, match: { path_prefix: /a/ }, upstream: ftp://x, credential: k }"),
            Some("routes[0].upstream"),
            "scheme must be http or https",
        ),
        (
            "credential without provider",
            "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: k\n".into(),
            Some("credentials[0]"),
            "exactly one provider must be set",
        ),
        (
            "client lists an unknown route",
            "proxy: { listen: 127.0.0.1:0 }\nclients:\n  - { id: c, token: { env: T }, routes: [ghost] }\n".into(),
            Some("clients[0].routes[0]"),
            "no route has id \"ghost\"",
        ),
        (
            "listen address",
            "proxy: { listen: nowhere }\n".into(),
            Some("proxy.listen"),
            "is not an IP address and port such as 127.0.0.1:8080",
        ),
        (
            "timeout syntax",
            with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, timeout: 5 parsecs }"),
            Some("routes[0].timeout"),
            "is not a duration",
        ),
        (
            "unknown field",
            with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, colour: blue }"),
            Some("routes[0].colour"),
            "unknown field `colour`",
        ),
        (
            "unknown credential reference",
            with_route("{ id: r, match: { path_prefix: /a/ }, upstream: https://x, credential: nope }"),
            Some("routes[0].credential"),
            "no credential has this id (defined: k)",
        ),
        (
            "ambiguous routes",
            "proxy: { listen: 127.0.0.1:0 }\nroutes:\n  - { id: a, match: { path_prefix: /x/ }, upstream: https://a }\n  - { id: b, match: { path_prefix: /x/ }, upstream: https://b }\n".into(),
            Some("routes[1].match"),
            "the match would be ambiguous",
        ),
        (
            "secret pasted where a reference belongs",
            format!("proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: k\n    static: \"{LITERAL_CANARY}\"\n"),
            Some("credentials[0].static"),
            "",
        ),
        (
            "unknown secret provider",
            format!("proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: k\n    static: {{ {LITERAL_CANARY}: x }}\n"),
            Some("credentials[0].static"),
            "unknown variant",
        ),
        (
            "missing required section",
            "routes: []\n".into(),
            None,
            "proxy",
        ),
        ("YAML syntax error", "proxy: [\n".into(), None, ""),
        (
            "YAML syntax error next to a literal secret",
            format!("proxy: {{ listen: 127.0.0.1:0 }}\ncredentials:\n  - id: k\n    static: {{ value: \"{LITERAL_CANARY}\"\nroutes: []\n"),
            None,
            "",
        ),
    ];
    assert!(cases.len() >= 8);

    let dir = tempfile::tempdir().unwrap();
    for (i, (what, yaml, field, message)) in cases.iter().enumerate() {
        let path = write_file(dir.path(), &format!("bad-{i}.yaml"), yaml);
        let file = path.display().to_string();
        let out = check(&path);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            !out.status.success(),
            "{what}: check accepted a bad config\n{yaml}\nstdout:\n{stdout}"
        );
        assert!(!stdout.contains("config ok"), "{what}: {stdout}");
        let want = match field {
            Some(field) => format!("{file}: {field}: "),
            None => format!("{file}: "),
        };
        let found = stderr
            .lines()
            .any(|l| l.starts_with(&want) && l.contains(message));
        assert!(
            found,
            "{what}: want a line starting with {want:?} (and containing {message:?})\nstderr:\n{stderr}"
        );
        assert!(stderr.contains("config invalid"), "{what}: {stderr}");
        assert!(
            !stderr.contains(LITERAL_CANARY) && !stdout.contains(LITERAL_CANARY),
            "{what}: a literal from the config was echoed:\n{stderr}"
        );
    }
}

#[test]
fn check_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.yaml");
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}: cannot read the config file", path.display())),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_tls_files_that_do_not_load_here() {
    let dir = tempfile::tempdir().unwrap();
    let missing = |name: &str| dir.path().join(name).display().to_string();
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:0 }}
redis: {{ url: {{ env: LATCHKEY_TEST_UNSET_REDIS_URL }}, encryption_keys: [{{ env: LATCHKEY_TEST_UNSET_KEY }}], ca_file: \"{redis_ca}\" }}
credentials:
  - id: o
    oauth2: {{ grant: client_credentials, token_url: \"http://127.0.0.1:9/token\", client_id: x, ca_file: \"{idp}\" }}
routes:
  - {{ id: a, match: {{ path_prefix: /a/ }}, upstream: \"https://a.example.com\", ca_file: \"{ca}\", public: true }}
  - {{ id: b, match: {{ path_prefix: /b/ }}, upstream: \"https://b.example.com\", client_cert_file: \"{cert}\", client_key_file: \"{key}\", public: true }}
",
        idp = missing("idp-ca.pem"),
        redis_ca = missing("redis-ca.pem"),
        ca = missing("ca.pem"),
        cert = missing("client.crt"),
        key = missing("client.key"),
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for want in [
        "routes[0].ca_file does not load here (cannot read CA file ",
        "routes[1].client_cert_file does not load here (cannot read ",
        "credentials[0].oauth2.ca_file does not load here (cannot read CA file ",
    ] {
        assert!(stdout.contains(want), "want {want:?} in:\n{stdout}");
    }
    // `run` reads Redis's files only for a credential stored there.
    assert!(!stdout.contains("redis.ca_file"), "{stdout}");
    let yaml = yaml.replace(
        "    oauth2: { grant",
        "    store: redis\n    oauth2: { grant",
    );
    let path = write_file(dir.path(), "latchkey.yaml", &yaml);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("redis.ca_file does not load here (cannot read CA file "),
        "{stdout}"
    );
}
