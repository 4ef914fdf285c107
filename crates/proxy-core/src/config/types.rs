//! The config as written, field by field: the top-level [`Config`], the
//! listener, admin, audit and metrics sections, clients and routes.
//!
//! Credentials and their stores are in `credentials.rs`; the serde helpers
//! (durations, sizes, defaults) in `serde_util.rs`. All are re-exported from
//! [`crate::config`].

use super::credentials::{CredentialConfig, FileStoreSettings, RedisSettings};
use super::serde_util::{
    de_duration, de_duration_or_zero, de_listen, de_opt_size, de_size,
    default_client_header_timeout, default_client_idle_timeout, default_connect_timeout,
    default_delayed_close_timeout, default_drain, default_max_concurrent, default_max_header,
    default_poll, default_replay_limit, default_response_idle_timeout, default_retry_statuses,
    default_send_timeout, default_timeout, default_true, default_tunnel_idle_timeout,
    default_upstream_h2_keepalive, default_upstream_idle, default_upstream_max_idle, ser_duration,
};
use crate::secret::SecretRef;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The proxy listener.
    pub proxy: ProxySettings,
    /// The admin listener (health, readiness). None: no admin listener.
    #[serde(default)]
    pub admin: Option<AdminSettings>,
    /// How secrets are read.
    #[serde(default)]
    pub secrets: SecretSettings,
    /// Where `store: file` credentials live.
    #[serde(default)]
    pub file_store: Option<FileStoreSettings>,
    /// The Redis shared by replicas for `store: redis` credentials.
    #[serde(default)]
    pub redis: Option<RedisSettings>,
    /// Callers allowed to use non-public routes.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Credentials injected into upstream requests.
    #[serde(default)]
    pub credentials: Vec<CredentialConfig>,
    /// Where requests go.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The audit trail: one JSON record per request and per refresh.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Prometheus metrics on the admin listener's `/metrics`.
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `audit:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Write audit records at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Append the records to this file (created mode 0640) instead of
    /// standard output.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
        }
    }
}

/// `metrics:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Record metrics and serve `/metrics` on the admin listener (default
    /// true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `proxy:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Address to listen on, e.g. `127.0.0.1:8080` (port 0 picks a free one).
    #[serde(deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM (default `30s`).
    #[serde(
        default = "default_drain",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub drain_timeout: Duration,
    /// Allow `public: true` routes on a listener that is not loopback
    /// (default false: anyone who can reach the port would use the
    /// credential).
    #[serde(default)]
    pub allow_public_routes: bool,
    /// Requests handled at once; more are refused at once with 503
    /// `overloaded` and `Retry-After: 1` rather than queued (default 10000).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Largest request head (request line + headers) accepted, e.g. `64KiB`
    /// (default `64KiB`); larger gets 431.
    #[serde(default = "default_max_header", deserialize_with = "de_size")]
    pub max_header_bytes: u64,
    /// How long a caller may take to send a request head, and how long an
    /// idle keep-alive connection waits for the next one (default `60s`,
    /// nginx's `client_header_timeout`; `0s` turns it off); then the
    /// connection is closed.
    #[serde(
        default = "default_client_header_timeout",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub client_header_timeout: Duration,
    /// How long an h2 connection may go without a byte from the caller
    /// before it is closed gracefully (GOAWAY: requests in flight finish;
    /// default `5m`, `0s` turns it off). HTTP/1.1 keep-alive connections
    /// are bounded by `client_header_timeout` instead.
    #[serde(
        default = "default_client_idle_timeout",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub client_idle_timeout: Duration,
    /// How long a caller's connection that the proxy closes first is
    /// half-closed and drained before its socket closes, so a caller still
    /// sending (a large upload refused with 413) reads the response
    /// instead of a reset (default `1s`, Envoy's `delayed_close_timeout`;
    /// `0s` turns it off).
    #[serde(
        default = "default_delayed_close_timeout",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub delayed_close_timeout: Duration,
    /// How long a write to a caller may make no progress (the caller takes
    /// none of its response) before the connection is closed (default
    /// `60s`, nginx's `send_timeout`; `0s` turns it off). Runs between two
    /// successive writes, not over a whole response.
    #[serde(
        default = "default_send_timeout",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub send_timeout: Duration,
    /// What to do with a percent-encoded slash or backslash (`%2F`,
    /// `%5C`) in a request path: `keep` (the default) routes and forwards
    /// it as it is, `reject` answers 400 (see [`crate::path`]).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Idle HTTP/1.1 connections kept per upstream origin (default 256;
    /// 0 keeps none: a connection per request).
    #[serde(default = "default_upstream_max_idle")]
    pub upstream_max_idle: usize,
    /// How long an idle upstream connection is kept, HTTP/1.1 or h2
    /// (default `90s`; closed between this and 4/3 of it).
    #[serde(
        default = "default_upstream_idle",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub upstream_idle_timeout: Duration,
    /// h2 keep-alive to upstreams (default `0s`: off): while requests are
    /// in flight on an h2 connection and nothing has come from the
    /// upstream for this long, a PING is sent; no answer within 20 s
    /// closes the connection.
    #[serde(
        default = "default_upstream_h2_keepalive",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub upstream_h2_keepalive: Duration,
    /// Serve TLS (and optionally verify client certificates) on the proxy
    /// listener. None: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// `proxy.tls`: the proxy listener's certificate and client verification.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. Re-read every `reload_interval`.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the leaf.
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to. Set it to ask
    /// callers for a certificate (mTLS); read once at startup.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is `required` or `optional` (default:
    /// `required` when `client_ca_file` is set).
    #[serde(default)]
    pub client_cert: Option<ClientCertMode>,
    /// How often `cert_file` and `key_file` are re-read (default `1s`).
    #[serde(
        default = "default_poll",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub reload_interval: Duration,
}

impl TlsSettings {
    /// How client certificates are verified: None when no
    /// `client_ca_file` is set (no certificate is asked for).
    pub fn client_cert_mode(&self) -> Option<ClientCertMode> {
        self.client_ca_file
            .as_ref()
            .map(|_| self.client_cert.unwrap_or(ClientCertMode::Required))
    }
}

/// `proxy.escaped_slashes`: Envoy's `path_with_escaped_slashes_action`,
/// its `KEEP_UNCHANGED` and `REJECT_REQUEST`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Routed and forwarded as they are; they still count as slashes for
    /// the dot and empty segment checks.
    #[default]
    Keep,
    /// Refused with 400.
    Reject,
}

/// `proxy.tls.client_cert`
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// Handshakes without a valid client certificate fail.
    Required,
    /// A client certificate is asked for; callers without one go on to
    /// token authentication. A certificate that is sent must be valid.
    Optional,
}

impl ProxySettings {
    /// Whether only this machine can reach the listener.
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

/// `admin:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// Enables the management API under `/v0/management/`; without it every
    /// management path answers 404.
    #[serde(default)]
    pub management_key: Option<SecretRef>,
    /// Let non-loopback callers use the management API (default: loopback
    /// only).
    #[serde(default)]
    pub allow_remote: bool,
}

/// `secrets:`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    /// How often `file` secrets are re-read (default `1s`).
    #[serde(
        default = "default_poll",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub file_poll_interval: Duration,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            file_poll_interval: default_poll(),
        }
    }
}

/// `clients[]`: a caller of the proxy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Unique id, used in logs.
    pub id: String,
    /// The proxy token the caller presents as `Authorization: Bearer` or
    /// `Proxy-Authorization: Bearer`. A client needs a token, `tls_san` or
    /// both.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// URI SANs of client certificates that identify this client, e.g.
    /// `spiffe://cluster.local/ns/billing/sa/billing` (exact match; needs
    /// `proxy.tls.client_ca_file`).
    #[serde(default)]
    pub tls_san: Vec<String>,
    /// Route ids this client may use; `"*"` means all.
    pub routes: Vec<String>,
}

/// `routes[]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique id, used in logs, metrics and client permissions.
    pub id: String,
    /// Which requests this route takes.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Base URL of the upstream: scheme, host, optional port and base path.
    pub upstream: UpstreamUrl,
    /// Id of the credential to inject; none forwards without one.
    #[serde(default)]
    pub credential: Option<String>,
    /// How to inject it (default `Authorization: Bearer {token}`).
    #[serde(default)]
    pub inject: Option<InjectConfig>,
    /// No client token needed. For local development; warned at startup.
    #[serde(default)]
    pub public: bool,
    /// Limit for the upstream's response headers to arrive (default `30s`).
    #[serde(
        default = "default_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
    /// Limit for connecting to the upstream: TCP, TLS and the HTTP
    /// handshake together (default `10s`).
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub connect_timeout: Duration,
    /// Close a WebSocket tunnel after this long without a byte either way
    /// (default `1h`; `0s`: never).
    #[serde(
        default = "default_tunnel_idle_timeout",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub tunnel_idle_timeout: Duration,
    /// Cut a response whose body gets no byte from the upstream for this
    /// long (default `5m`; `0s`: never).
    #[serde(
        default = "default_response_idle_timeout",
        deserialize_with = "de_duration_or_zero",
        serialize_with = "ser_duration"
    )]
    pub response_idle_timeout: Duration,
    /// Extra PEM CA bundle trusted for this upstream, beside the web PKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to an https upstream that asks for
    /// a client certificate (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Largest request body accepted, e.g. `10MiB` (default: no limit).
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_request_body: Option<u64>,
    /// Replay after a forced refresh when the upstream rejects the
    /// credential.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Allow a plain `http://` upstream that is not on loopback for a route
    /// that injects a credential (default false: the credential would cross
    /// the network in clear).
    #[serde(default)]
    pub allow_insecure_upstream: bool,
}

/// `routes[].retry`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Replay at all (default true; only requests that carried an injected
    /// credential are ever replayed).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Upstream statuses that mean "credential rejected" (default `[401]`;
    /// some APIs answer 403 for expired tokens).
    #[serde(default = "default_retry_statuses")]
    pub statuses: Vec<u16>,
    /// Largest request body buffered for a replay (default `1MiB`); larger
    /// bodies stream through and are not replayed.
    #[serde(default = "default_replay_limit", deserialize_with = "de_size")]
    pub max_replay_body: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            statuses: default_retry_statuses(),
            max_replay_body: default_replay_limit(),
        }
    }
}

/// `routes[].match`
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host (case-insensitive, port ignored).
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, starting with `/`; the longest matching prefix wins.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// `routes[].inject`: exactly one of `header`, `query`, `basic`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Header to set.
    #[serde(default)]
    pub header: Option<String>,
    /// Template for the header value; `{token}` is replaced by the credential.
    /// Default `Bearer {token}` for `Authorization`, `{token}` otherwise.
    #[serde(default)]
    pub format: Option<String>,
    /// Query parameter to set (replacing any the caller sent).
    #[serde(default)]
    pub query: Option<String>,
    /// HTTP basic auth: the credential is the password.
    #[serde(default)]
    pub basic: Option<BasicConfig>,
}

/// `routes[].inject.basic`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    /// The user name: a plain string or a secret reference.
    pub username: Username,
}

/// A basic-auth user name, inline or from a secret reference. Its
/// `Deserialize` is hand-written in `serde_util.rs`, so an error says what
/// a user name is rather than naming an untagged enum.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Username {
    /// Written inline (a user name is not a secret).
    Plain(String),
    /// From env, file or literal.
    Secret(SecretRef),
}

/// An upstream base URL: `http(s)://host[:port][/base/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and optional port.
    pub authority: http::uri::Authority,
    /// Base path without a trailing slash (empty for `/`).
    pub base_path: String,
}

/// `url`, quoted, for an error message (error messages reach logs and the
/// reload API's answer): everything up to the last `@` after the scheme is
/// shown as `***@` (a password may itself hold `/`, `?` or `#`, so the
/// authority cannot be cut at them first), and a query or fragment as
/// `?***` (an Azure Functions `?code=` is a key).
pub(super) fn shown(url: &str) -> String {
    shown_url(url)
}

/// `url` as errors and `Debug` output show it (see [`shown`]): quoted,
/// with userinfo as `***@` and a query or fragment as `?***`.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((_, host)) => ("***@", host),
        None => ("", rest),
    };
    let (rest, hidden) = match rest.find(['?', '#']) {
        Some(i) => (rest.get(..i).unwrap_or_default(), "?***"),
        None => (rest, ""),
    };
    format!("{:?}", format!("{scheme}{user}{rest}{hidden}"))
}

impl UpstreamUrl {
    /// Parses and checks an upstream URL. Errors never quote a
    /// `user:password@` part.
    pub fn parse(s: &str) -> Result<Self, String> {
        let shown = shown(s);
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("{shown} is not a valid URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{shown} needs a scheme (https:// or http://)"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("{shown}: scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{shown} needs a host"))?;
        // Any `@`, not only one in the authority as parsed: the parser
        // ends the authority at a `/`, `?` or `#`, which a password may
        // hold (`svc:pa#ss@host` parses as host `svc`, "port" `pa`).
        if s.contains('@') {
            return Err(format!(
                "{shown}: user info in a URL is not supported (an upstream's credential \
                 goes in `credential`, a token endpoint's in client_id/client_secret); \
                 an `@` in the path must be written %40"
            ));
        }
        let port = authority
            .as_str()
            .rsplit_once(':')
            .filter(|(_, port)| !port.contains(']'));
        if port.is_some() && authority.port_u16().is_none_or(|p| p == 0) {
            return Err(format!(
                "{shown}: the port must be a number from 1 to 65535"
            ));
        }
        if uri.query().is_some() || s.contains('#') {
            return Err(format!(
                "{shown}: an upstream URL cannot have a query or a fragment"
            ));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            scheme,
            authority,
            base_path,
        })
    }

    /// `scheme://authority`, for messages and metrics.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}
