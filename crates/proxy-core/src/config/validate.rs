//! Checks that types cannot express: ids, references, ambiguity.

use super::{ClientAuthMethod, Config, CredentialConfig, FieldError, Grant, StoreKind};
use crate::inject::InjectSpec;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Upper bound of `proxy.max_concurrent_requests`: far past what one
/// process serves, low enough to be a number someone meant.
const MAX_CONCURRENT: usize = 1_000_000;
/// Upper bound of `proxy.upstream_max_idle` (connections per origin).
const MAX_IDLE_PER_ORIGIN: usize = 100_000;
/// Upper bound of `routes[].retry.max_replay_body` (64 MiB).
const MAX_REPLAY_BODY: u64 = 64 << 20;

/// Validates a parsed config, returning every problem found.
pub fn validate(config: &Config) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();

    check_ids(
        "clients",
        config.clients.iter().map(|c| c.id.as_str()),
        &mut errs,
    );
    let cred_ids = check_ids(
        "credentials",
        config.credentials.iter().map(|c| c.id.as_str()),
        &mut errs,
    );
    let route_ids = check_ids(
        "routes",
        config.routes.iter().map(|r| r.id.as_str()),
        &mut errs,
    );

    for (i, c) in config.clients.iter().enumerate() {
        if c.routes.is_empty() {
            errs.push(FieldError::new(
                format!("clients[{i}].routes"),
                "must list at least one route id (or \"*\" for all routes)",
            ));
        }
        for (j, r) in c.routes.iter().enumerate() {
            if r != "*" && !route_ids.contains(r.as_str()) {
                errs.push(FieldError::new(
                    format!("clients[{i}].routes[{j}]"),
                    format!("no route has id {r:?}"),
                ));
            }
        }
    }

    check_client_identities(config, &mut errs);
    super::checks::check_shared_tokens(config, &mut errs);
    super::checks::check_listeners(config, &mut errs);
    super::checks::check_duration_bounds(config, &mut errs);
    if let Some(tls) = &config.proxy.tls
        && tls.client_cert.is_some()
        && tls.client_ca_file.is_none()
    {
        errs.push(FieldError::new(
            "proxy.tls.client_cert",
            "needs proxy.tls.client_ca_file (the CA that client certificates must chain to)",
        ));
    }

    for (i, c) in config.credentials.iter().enumerate() {
        check_credential(i, c, config, &mut errs);
    }
    if !(1..=MAX_CONCURRENT).contains(&config.proxy.max_concurrent_requests) {
        errs.push(FieldError::new(
            "proxy.max_concurrent_requests",
            format!("must be between 1 and {MAX_CONCURRENT}"),
        ));
    }
    if config.proxy.upstream_max_idle > MAX_IDLE_PER_ORIGIN {
        errs.push(FieldError::new(
            "proxy.upstream_max_idle",
            format!("must be at most {MAX_IDLE_PER_ORIGIN}"),
        ));
    }
    let idle = config.proxy.upstream_idle_timeout;
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(24 * 3600))
        .contains(&idle)
    {
        errs.push(FieldError::new(
            "proxy.upstream_idle_timeout",
            "must be between 1s and 24h",
        ));
    }
    let keepalive = config.proxy.upstream_h2_keepalive;
    if !keepalive.is_zero()
        && !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600))
            .contains(&keepalive)
    {
        errs.push(FieldError::new(
            "proxy.upstream_h2_keepalive",
            "must be 0s (off) or between 1s and 1h",
        ));
    }
    let t = config.proxy.client_header_timeout;
    if !t.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
        errs.push(FieldError::new(
            "proxy.client_header_timeout",
            "must be 0s (off) or between 1s and 1h",
        ));
    }
    let t = config.proxy.client_idle_timeout;
    if !t.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&t) {
        errs.push(FieldError::new(
            "proxy.client_idle_timeout",
            "must be 0s (off) or between 1s and 24h",
        ));
    }
    let t = config.proxy.send_timeout;
    if !t.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
        errs.push(FieldError::new(
            "proxy.send_timeout",
            "must be 0s (off) or between 1s and 1h",
        ));
    }
    if config.proxy.delayed_close_timeout > Duration::from_secs(60) {
        errs.push(FieldError::new(
            "proxy.delayed_close_timeout",
            "must be at most 60s (0s turns it off)",
        ));
    }
    if !(8 << 10..=16 << 20).contains(&config.proxy.max_header_bytes) {
        errs.push(FieldError::new(
            "proxy.max_header_bytes",
            "must be between 8KiB and 16MiB",
        ));
    }
    if let Some(r) = &config.redis {
        if r.encryption_keys.is_empty() {
            errs.push(FieldError::new(
                "redis.encryption_keys",
                "at least one key is required (base64 of 32 random bytes: `openssl rand -base64 32`)",
            ));
        }
        if r.key_prefix.is_empty() || r.key_prefix.contains(char::is_whitespace) {
            errs.push(FieldError::new(
                "redis.key_prefix",
                "must be non-empty without spaces",
            ));
        }
        // Both or neither, as a route's: a config error whatever the
        // machine (`latchkey check` must refuse what `run` would).
        match (&r.client_cert_file, &r.client_key_file) {
            (Some(_), None) => errs.push(FieldError::new(
                "redis.client_key_file",
                "needed with client_cert_file (the certificate's private key)",
            )),
            (None, Some(_)) => errs.push(FieldError::new(
                "redis.client_cert_file",
                "needed with client_key_file (the certificate the key belongs to)",
            )),
            _ => {}
        }
    }

    // (host, prefix) -> first route index, to report ambiguous routes.
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        let m = &r.matcher;
        if m.host.is_none() && m.path_prefix.is_none() {
            errs.push(FieldError::new(
                at("match"),
                "set host, path_prefix or both",
            ));
        }
        if let Some(p) = &m.path_prefix {
            // Request paths are normalized before they are matched
            // (crate::path): a prefix in another form would never match.
            let problem = if !p.starts_with('/') {
                Some(format!("{p:?} must start with /"))
            } else if let Some(c) = p
                .chars()
                .find(|c| matches!(c, '?' | '#' | ' ') || c.is_control())
            {
                // A request's path never holds these: the query and the
                // fragment are not part of it, and a space or a control
                // character is refused in a request line (non-ASCII
                // characters are not: they match as sent).
                Some(format!(
                    "{p:?} has {c:?}, which no request path holds (match the path only, without its query)"
                ))
            } else if config.proxy.escaped_slashes == crate::config::EscapedSlashes::Reject
                && p.to_ascii_uppercase().contains("%2F")
            {
                Some(format!(
                    "{p:?} has an encoded slash, and proxy.escaped_slashes: reject refuses every request with one"
                ))
            } else {
                match crate::path::normalize(p, crate::config::EscapedSlashes::Keep) {
                    Ok(None) => None,
                    Ok(Some(n)) => Some(format!(
                        "{p:?} is not in the form requests are matched in (encoded letters, digits and -._~ decoded, other escapes in upper case): write {n:?}"
                    )),
                    Err(problem) => Some(format!(
                        "{p:?} has {problem}, which no request path is allowed to have"
                    )),
                }
            };
            if let Some(problem) = problem {
                errs.push(FieldError::new(at("match.path_prefix"), problem));
            }
        }
        if let Some(h) = &m.host
            && let Err(problem) = super::checks::check_host(h)
        {
            errs.push(FieldError::new(at("match.host"), problem));
        }
        if r.strip_prefix && m.path_prefix.is_none() {
            errs.push(FieldError::new(
                at("strip_prefix"),
                "needs match.path_prefix",
            ));
        }
        let key = (
            m.host.as_deref().map(crate::router::normalize_host),
            m.path_prefix.clone().unwrap_or_else(|| "/".to_string()),
        );
        if let Some(first) = seen.get(&key) {
            errs.push(FieldError::new(
                at("match"),
                format!(
                    "same host and path_prefix as routes[{first}] ({:?}); the match would be ambiguous",
                    config.routes[*first].id
                ),
            ));
        } else {
            seen.insert(key, i);
        }

        match &r.credential {
            // Not echoed: a token pasted here in place of an id would be.
            Some(c) if !cred_ids.contains(c.as_str()) => errs.push(FieldError::new(
                at("credential"),
                unknown_credential(config),
            )),
            None if r.inject.is_some() => errs.push(FieldError::new(
                at("inject"),
                "inject needs a credential to inject; set routes[].credential",
            )),
            _ => {}
        }
        if let Err(e) = InjectSpec::parse(r.inject.as_ref()) {
            errs.push(FieldError::new(
                format!("routes[{i}].inject{}", e.path),
                e.message,
            ));
        }
        for (j, status) in r.retry.statuses.iter().enumerate() {
            if !(400..=599).contains(status) {
                errs.push(FieldError::new(
                    format!("routes[{i}].retry.statuses[{j}]"),
                    format!("{status} is not an error status (400-599)"),
                ));
            }
        }
        check_posture(i, r, config, &mut errs);
        if r.max_request_body == Some(0) {
            errs.push(FieldError::new(
                at("max_request_body"),
                "must be greater than zero",
            ));
        }
        // Buffered in memory, per request in flight.
        if r.retry.max_replay_body > MAX_REPLAY_BODY {
            errs.push(FieldError::new(
                at("retry.max_replay_body"),
                format!(
                    "must be at most {} MiB (each request in flight may hold that much in memory)",
                    MAX_REPLAY_BODY >> 20
                ),
            ));
        }
    }

    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The error for a `routes[].credential` that names no credential: the ids
/// that exist (names from the config, not secrets), never the value given.
fn unknown_credential(config: &Config) -> String {
    let ids: Vec<&str> = config
        .credentials
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| is_valid_id(id))
        .collect();
    if ids.is_empty() {
        "no credential has this id (no credentials are defined)".to_owned()
    } else {
        format!("no credential has this id (defined: {})", ids.join(", "))
    }
}

/// Every client needs a way to be identified: a token, certificate SANs or
/// both. SANs are only trusted from a certificate verified against
/// `proxy.tls.client_ca_file`, and one SAN names one client.
fn check_client_identities(config: &Config, errs: &mut Vec<FieldError>) {
    let has_client_ca = config
        .proxy
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca_file.is_some());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, c) in config.clients.iter().enumerate() {
        if c.token.is_none() && c.tls_san.is_empty() {
            errs.push(FieldError::new(
                format!("clients[{i}]"),
                "set token, tls_san or both",
            ));
        }
        if !c.tls_san.is_empty() && !has_client_ca {
            errs.push(FieldError::new(
                format!("clients[{i}].tls_san"),
                "needs proxy.tls.client_ca_file: client certificates are only asked for \
                 (and verified) when the proxy listener has a client CA",
            ));
        }
        for (j, san) in c.tls_san.iter().enumerate() {
            let at = format!("clients[{i}].tls_san[{j}]");
            if !is_uri_like(san) {
                errs.push(FieldError::new(
                    at,
                    format!(
                        "{san:?} is not a URI SAN such as spiffe://cluster.local/ns/billing/sa/billing"
                    ),
                ));
            } else if let Some(first) = seen.get(san.as_str()) {
                errs.push(FieldError::new(
                    at,
                    format!(
                        "{san:?} already identifies clients[{first}] ({:?}); a SAN names one client",
                        config.clients[*first].id
                    ),
                ));
            } else {
                seen.insert(san, i);
            }
        }
    }
}

/// `scheme:rest` with an RFC 3986 scheme and no whitespace: enough to catch
/// a DNS name or a typo where a URI SAN was meant.
pub(super) fn is_uri_like(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether `id` is a valid id: non-empty, made of `[A-Za-z0-9_.-]`, and
/// not `.` or `..` (ids become log fields, metric labels and management API
/// path segments, where clients remove dot segments before sending).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Ids must be unique and valid ([`is_valid_id`]).
fn check_ids<'a>(
    section: &str,
    ids: impl Iterator<Item = &'a str>,
    errs: &mut Vec<FieldError>,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, id) in ids.enumerate() {
        let path = format!("{section}[{i}].id");
        if id == "." || id == ".." {
            errs.push(FieldError::new(
                path,
                format!(
                    "{id:?} cannot be an id: ids are URL path segments, where . and .. are removed"
                ),
            ));
        } else if !is_valid_id(id) {
            errs.push(FieldError::new(
                path,
                format!("{id:?}: ids use only letters, digits, '_', '-' and '.'"),
            ));
        } else if id == "none" && section != "clients" {
            // The metrics' label for no route matched / no credential.
            errs.push(FieldError::new(
                path,
                "\"none\" cannot be a route or credential id: the metrics label requests that matched no route, or used no credential, `none`",
            ));
        } else if !seen.insert(id) {
            errs.push(FieldError::new(path, format!("duplicate id {id:?}")));
        }
    }
    seen
}

fn check_credential(i: usize, c: &CredentialConfig, config: &Config, errs: &mut Vec<FieldError>) {
    let at = |f: &str| format!("credentials[{i}].{f}");
    if c.provider_count() != 1 {
        errs.push(FieldError::new(
            format!("credentials[{i}]"),
            "exactly one provider must be set (static, oauth2, exec or file)",
        ));
    }
    if c.store == StoreKind::File && config.file_store.is_none() {
        errs.push(FieldError::new(
            at("store"),
            "store: file needs a top-level file_store: { dir: ... }",
        ));
    }
    if c.store == StoreKind::Redis && config.redis.is_none() {
        errs.push(FieldError::new(
            at("store"),
            "store: redis needs a top-level redis: { url, encryption_keys }",
        ));
    }
    if c.static_.is_some() && c.store != StoreKind::Memory {
        errs.push(FieldError::new(
            at("store"),
            "a static credential has nothing to store; remove store",
        ));
    }
    let r = &c.refresh;
    // Upper bounds of the refresh durations: checks::check_duration_bounds.
    if r.backoff_min > r.backoff_max {
        errs.push(FieldError::new(
            at("refresh.backoff_min"),
            "must not exceed refresh.backoff_max",
        ));
    }
    if let Some(o) = &c.oauth2 {
        if let Err(e) = super::checks::check_token_url(&o.token_url) {
            errs.push(FieldError::new(at("oauth2.token_url"), e));
        }
        for k in o.params.keys() {
            if super::OAUTH2_RESERVED_PARAMS.contains(&k.as_str()) {
                errs.push(FieldError::new(
                    at(&format!("oauth2.params.{k}")),
                    "is set by latchkey from the grant and client settings; remove it from params",
                ));
            }
        }
        if o.client_id.is_empty() {
            errs.push(FieldError::new(at("oauth2.client_id"), "cannot be empty"));
        }
        match (o.grant, &o.refresh_token) {
            (Grant::RefreshToken, None) => errs.push(FieldError::new(
                at("oauth2.refresh_token"),
                "grant refresh_token needs a refresh_token to start from",
            )),
            (Grant::ClientCredentials, Some(_)) => errs.push(FieldError::new(
                at("oauth2.refresh_token"),
                "grant client_credentials does not use a refresh_token",
            )),
            _ => {}
        }
        if o.client_auth == ClientAuthMethod::Post && o.client_secret.is_none() {
            errs.push(FieldError::new(
                at("oauth2.client_auth"),
                "post sends client_secret as a form field; set oauth2.client_secret",
            ));
        }
    }
    if let Some(e) = &c.exec
        && e.command.first().is_none_or(|p| p.is_empty())
    {
        errs.push(FieldError::new(
            at("exec.command"),
            "needs at least the program to run",
        ));
    }
    if let Some(f) = &c.file
        && f.expiry_field.is_some()
        && f.token_field.is_none()
    {
        errs.push(FieldError::new(
            at("file.expiry_field"),
            "needs file.token_field (the file must be JSON to carry an expiry)",
        ));
    }
}

/// The default posture: refuse configs that would hand a credential to
/// anyone who can reach the proxy, or send it in clear over the network.
fn check_posture(i: usize, r: &super::RouteConfig, config: &Config, errs: &mut Vec<FieldError>) {
    if r.public && !config.proxy.is_loopback() && !config.proxy.allow_public_routes {
        errs.push(FieldError::new(
            format!("routes[{i}].public"),
            format!(
                "route {:?} is public on non-loopback listener {}: anyone who can reach the port uses its credential; \
                 list it in a client's routes instead, or set proxy.allow_public_routes: true",
                r.id, config.proxy.listen
            ),
        ));
    }
    if !r.public
        && !config
            .clients
            .iter()
            .any(|c| c.routes.iter().any(|x| x == "*" || *x == r.id))
    {
        errs.push(FieldError::new(
            format!("routes[{i}]"),
            format!(
                "route {:?} is not public and no client lists it, so every request would get 403; \
                 add it to a client's routes, or set public: true (loopback listeners only)",
                r.id
            ),
        ));
    }
    if r.credential.is_some()
        && r.upstream.scheme == http::uri::Scheme::HTTP
        && !r.upstream.is_loopback()
        && !r.allow_insecure_upstream
    {
        errs.push(FieldError::new(
            format!("routes[{i}].upstream"),
            format!(
                "{} is plain http and not on loopback: the credential would cross the network in clear; \
                 use https, or set routes[{i}].allow_insecure_upstream: true",
                r.upstream
            ),
        ));
    }
    for (name, t) in [
        ("tunnel_idle_timeout", r.tunnel_idle_timeout),
        ("response_idle_timeout", r.response_idle_timeout),
    ] {
        if !t.is_zero() && !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&t) {
            errs.push(FieldError::new(
                format!("routes[{i}].{name}"),
                "must be 0s (never) or between 1s and 24h",
            ));
        }
    }
    match (&r.client_cert_file, &r.client_key_file) {
        (Some(_), None) => errs.push(FieldError::new(
            format!("routes[{i}].client_key_file"),
            "needed with client_cert_file (the certificate's private key)",
        )),
        (None, Some(_)) => errs.push(FieldError::new(
            format!("routes[{i}].client_cert_file"),
            "needed with client_key_file (the certificate the key belongs to)",
        )),
        (Some(_), Some(_)) if r.upstream.scheme != http::uri::Scheme::HTTPS => {
            errs.push(FieldError::new(
                format!("routes[{i}].client_cert_file"),
                format!(
                    "{} is not https: a client certificate is presented only in a TLS handshake",
                    r.upstream
                ),
            ));
        }
        _ => {}
    }
}
