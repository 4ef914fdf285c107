//! Where a config reads its secrets, and what in it deserves a warning.

use super::Config;

/// Every secret reference in `config`, with the field it is in: client
/// tokens, static keys, OAuth2 client secrets and refresh tokens, basic
/// user names read from a secret, the management key, the Redis URL and
/// encryption keys.
pub fn secret_refs(config: &Config) -> Vec<(String, &crate::secret::SecretRef)> {
    let mut out = Vec::new();
    for (i, c) in config.clients.iter().enumerate() {
        if let Some(t) = &c.token {
            out.push((format!("clients[{i}].token"), t));
        }
    }
    for (i, c) in config.credentials.iter().enumerate() {
        if let Some(s) = &c.static_ {
            out.push((format!("credentials[{i}].static"), s));
        }
        if let Some(o) = &c.oauth2 {
            if let Some(s) = &o.client_secret {
                out.push((format!("credentials[{i}].oauth2.client_secret"), s));
            }
            if let Some(s) = &o.refresh_token {
                out.push((format!("credentials[{i}].oauth2.refresh_token"), s));
            }
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(super::Username::Secret(s)) = r
            .inject
            .as_ref()
            .and_then(|j| j.basic.as_ref())
            .map(|b| &b.username)
        {
            out.push((format!("routes[{i}].inject.basic.username"), s));
        }
    }
    if let Some(k) = config
        .admin
        .as_ref()
        .and_then(|a| a.management_key.as_ref())
    {
        out.push(("admin.management_key".to_owned(), k));
    }
    if let Some(r) = &config.redis {
        out.push(("redis.url".to_owned(), &r.url));
        for (k, key) in r.encryption_keys.iter().enumerate() {
            out.push((format!("redis.encryption_keys[{k}]"), key));
        }
    }
    out
}

/// Things that are allowed but worth a warning at startup.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if r.public {
            out.push(format!(
                "routes[{i}] ({}) is public: any caller that can reach the proxy uses its credential",
                r.id
            ));
        }
    }
    out.extend(super::checks::ignored_settings(config));
    for (field, secret) in secret_refs(config) {
        if secret.is_literal() {
            out.push(format!(
                "{field} is a literal value in the config file; prefer env or file"
            ));
        }
    }
    out
}
