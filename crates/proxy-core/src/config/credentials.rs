//! The credential side of the config: `credentials[]` with its providers
//! (`static`, `oauth2`, `exec`, `file`), refresh policy and store, and the
//! top-level `file_store:` and `redis:` sections those stores use.
//!
//! Re-exported from [`crate::config`]; the top-level [`Config`](super::Config)
//! and the route and listener sections live in `types.rs`.

use super::serde_util::{
    de_duration, de_opt_duration, default_backoff_max, default_backoff_min, default_buffer,
    default_key_prefix, default_lease, default_redis_timeout, default_refresh_timeout,
    ser_duration, ser_opt_duration,
};
use crate::secret::SecretRef;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `credentials[]`: exactly one provider must be set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// Unique id, referenced by routes.
    pub id: String,
    /// A long-lived secret that never expires (re-read if it is a file).
    #[serde(default, rename = "static")]
    pub static_: Option<SecretRef>,
    /// An OAuth2 access token from a token endpoint.
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    /// A token printed by a command (Kubernetes `ExecCredential` or
    /// `{access_token, expires_in}`).
    #[serde(default)]
    pub exec: Option<ExecConfig>,
    /// A token file written by something else, with an optional expiry.
    #[serde(default)]
    pub file: Option<TokenFileConfig>,
    /// Where the credential's state is kept (default `memory`).
    #[serde(default)]
    pub store: StoreKind,
    /// When and how the credential is refreshed.
    #[serde(default)]
    pub refresh: RefreshConfig,
}

impl CredentialConfig {
    /// The provider's name, for summaries and status.
    pub fn kind(&self) -> &'static str {
        if self.static_.is_some() {
            "static"
        } else if self.oauth2.is_some() {
            "oauth2"
        } else if self.exec.is_some() {
            "exec"
        } else if self.file.is_some() {
            "file"
        } else {
            "none"
        }
    }

    /// How many providers are set (exactly one is valid).
    pub fn provider_count(&self) -> usize {
        [
            self.static_.is_some(),
            self.oauth2.is_some(),
            self.exec.is_some(),
            self.file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// `credentials[].store`
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process only; lost on restart.
    #[default]
    Memory,
    /// One JSON file per credential under `file_store.dir`, shared by the
    /// processes on one host under an advisory lock.
    File,
    /// Shared by replicas through Redis, encrypted, with a distributed lock.
    Redis,
}

impl StoreKind {
    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::File => "file",
            Self::Redis => "redis",
        }
    }
}

/// `credentials[].refresh`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Refresh this long before expiry (default `60s`). A token that lives
    /// less than twice this is refreshed at half its life. At most `7d`.
    #[serde(
        default = "default_buffer",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub buffer: Duration,
    /// How long a request waits for a refresh when there is no valid token
    /// (default `10s`); then 503 `credential_unavailable`. At most `1h`.
    #[serde(
        default = "default_refresh_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
    /// Refresh tokens that carry no expiry after this long (default: only
    /// when invalidated). At most `3650d`, and not a whole number of months
    /// or years (`2M` was most likely meant as minutes).
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration"
    )]
    pub max_age: Option<Duration>,
    /// First retry delay after a failure (default `1s`), doubled per failure.
    /// At most `24h`, like `backoff_max`.
    #[serde(
        default = "default_backoff_min",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub backoff_min: Duration,
    /// Longest retry delay (default `5m`).
    #[serde(
        default = "default_backoff_max",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub backoff_max: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            buffer: default_buffer(),
            timeout: default_refresh_timeout(),
            max_age: None,
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
        }
    }
}

/// `credentials[].oauth2`
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// `refresh_token` or `client_credentials`.
    pub grant: Grant,
    /// The token endpoint: https, or http on loopback only.
    pub token_url: String,
    /// The OAuth2 client id.
    pub client_id: String,
    /// The client secret, if the client has one.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// How the client authenticates (default `basic`).
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// The refresh token that seeds the credential (`refresh_token` grant).
    #[serde(default)]
    pub refresh_token: Option<SecretRef>,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra form parameters (e.g. `audience`); not the ones in
    /// [`OAUTH2_RESERVED_PARAMS`].
    #[serde(default)]
    pub params: PlainValues,
    /// Extra PEM CA bundle to trust for the token endpoint, beside the web
    /// PKI roots (an in-cluster IdP with a private CA). Read before every
    /// token request, so a bundle rotated in place is used from the next
    /// one.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Form fields the OAuth2 provider sets itself from the grant and client
/// settings; `oauth2.params` may not set them, or a token request would
/// carry each twice and servers differ in which one they use.
pub const OAUTH2_RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
];

/// OAuth2 grant types latchkey can run.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// RFC 6749 section 6, with refresh-token rotation.
    RefreshToken,
    /// RFC 6749 section 4.4.
    ClientCredentials,
}

/// How an OAuth2 client sends its secret.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP basic (`client_secret_basic`).
    #[default]
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
}

/// `credentials[].exec`. Its `Debug` shows the program and how many
/// arguments follow, not the arguments (a `--client-secret=...` flag).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: PlainValues,
    /// Limit for the command to finish (default `10s`).
    #[serde(
        default = "default_refresh_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
}

impl std::fmt::Debug for ExecConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            command,
            env,
            timeout,
        } = self;
        f.debug_struct("ExecConfig")
            .field("program", &command.first())
            .field("args", &command.len().saturating_sub(1))
            .field("env", env)
            .field("timeout", timeout)
            .finish()
    }
}

/// `credentials[].file`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenFileConfig {
    /// The token file.
    pub path: PathBuf,
    /// For a JSON file, the field holding the token (plain text when unset).
    #[serde(default)]
    pub token_field: Option<String>,
    /// For a JSON file, the field holding the expiry (RFC 3339 or Unix
    /// seconds).
    #[serde(default)]
    pub expiry_field: Option<String>,
}

/// `file_store:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileStoreSettings {
    /// Directory holding one JSON file per credential (created 0700 if missing).
    pub dir: PathBuf,
}

/// `redis:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: SecretRef,
    /// Prefix of every key, so several deployments can share one Redis
    /// (default `latchkey`).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// AES-256-GCM keys (base64 of 32 random bytes). The first encrypts;
    /// any decrypts, so a key can be rotated by prepending the new one.
    pub encryption_keys: Vec<SecretRef>,
    /// Lease of the refresh lock, renewed while a refresh runs (default
    /// `10s`). A replica that dies mid-refresh blocks others this long.
    #[serde(
        default = "default_lease",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub lock_lease: Duration,
    /// Limit for each Redis command (default `2s`).
    #[serde(
        default = "default_redis_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
    /// PEM CA bundle that a `rediss://` server's certificate must chain
    /// to, instead of the web PKI roots (a Redis behind a private CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain presented to a `rediss://` server that asks
    /// for one (Redis's `tls-auth-clients`), with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
}

/// A map of names to plain-string values that may carry a secret
/// (`oauth2.params`: a `client_assertion`; `exec.env`: the key an `exec`
/// command needs). Its `Debug` shows the names only; the management API's
/// config view shows the values as `***`.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct PlainValues(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for OAuth2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field listed, so a new one is a compile error here rather
        // than a derive that could print a secret.
        let Self {
            grant,
            token_url,
            client_id,
            client_secret,
            client_auth,
            refresh_token,
            scopes,
            params,
            ca_file,
        } = self;
        f.debug_struct("OAuth2Config")
            .field("grant", grant)
            // Its query may hold a key (an Azure Function's `?code=`).
            .field(
                "token_url",
                &format_args!("{}", super::shown_url(token_url)),
            )
            .field("client_id", client_id)
            .field("client_secret", client_secret)
            .field("client_auth", client_auth)
            .field("refresh_token", refresh_token)
            .field("scopes", scopes)
            .field("params", params)
            .field("ca_file", ca_file)
            .finish()
    }
}

impl std::ops::Deref for PlainValues {
    type Target = std::collections::BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PlainValues {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for PlainValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "***")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    /// A config's `Debug` shows the names of `oauth2.params` and
    /// `exec.env`, never their values.
    #[test]
    fn debug_hides_param_and_exec_env_values() {
        let yaml = r#"proxy: { listen: 127.0.0.1:0 }
credentials:
  - id: idp
    oauth2:
      grant: client_credentials
      token_url: https://idp.example.net/token
      client_id: x
      params: { client_assertion: canary-assertion }
  - id: ex
    exec:
      command: [sh, -c, 'echo "$API_SECRET"']
      env: { API_SECRET: canary-exec-env }
routes:
  - { id: r, match: { path_prefix: /r/ }, upstream: "https://api.example.net", credential: idp, public: true }
  - { id: s, match: { path_prefix: /s/ }, upstream: "https://api.example.net", credential: ex, public: true }
"#;
        let config = crate::config::Config::from_yaml(yaml, "t.yaml").unwrap();
        let debug = format!("{config:?}");
        assert!(debug.contains("client_assertion") && debug.contains("API_SECRET"));
        assert!(!debug.contains("canary-assertion"), "{debug}");
        assert!(!debug.contains("canary-exec-env"), "{debug}");
        // The values still reach the providers.
        let crate::config::CredentialConfig {
            oauth2: Some(o), ..
        } = &config.credentials[0]
        else {
            panic!("not oauth2");
        };
        assert_eq!(o.params["client_assertion"], "canary-assertion");
    }
}
