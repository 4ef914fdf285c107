//! The OAuth2 token-endpoint provider (RFC 6749).
//!
//! Two grants: `refresh_token` (section 6), where the endpoint may rotate the
//! refresh token on every use, and `client_credentials` (section 4.4). The
//! response is parsed strictly (sections 5.1 and 5.2): an answer that is not
//! what the RFC describes is an error rather than a guess, because a wrong
//! guess would inject garbage into every upstream request.
//!
//! Secrets (client secret, refresh tokens, issued tokens) never reach an
//! error, a log line or `Debug`: errors carry statuses, field names and the
//! endpoint's own `error`/`error_description`, with anything we sent
//! redacted out of the latter in case a server echoes it.

use super::{ProviderError, TokenProvider};
use crate::token::{StoredCredential, Token};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Limited};
// Form fields the provider sets itself; `params` may not override them.
// Config validation refuses them too, so `latchkey check` agrees.
use proxy_core::config::{
    ClientAuthMethod, Grant, OAUTH2_RESERVED_PARAMS as RESERVED_PARAMS, OAuth2Config,
};
use proxy_core::secret::SecretSource;
use secrecy::{ExposeSecret as _, SecretString};
use std::fmt;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// Limit for one whole exchange: connect, request, response and body.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit for the TCP connect (inside [`EXCHANGE_TIMEOUT`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body read. Token responses are a few hundred bytes; the
/// cap stops a broken or hostile endpoint from making us buffer without end.
const MAX_BODY: usize = 1024 * 1024;

/// Longest `error`/`error_description` kept, so a chatty server cannot flood
/// logs and status pages.
const MAX_ERROR_TEXT: usize = 512;

/// Obtains tokens from an OAuth2 token endpoint.
pub struct OAuth2Provider {
    grant: Grant,
    token_url: Uri,
    client_id: String,
    client_secret: Option<SecretSource>,
    client_auth: ClientAuthMethod,
    refresh_token: Option<SecretSource>,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    trust: trust::Trust,
    /// See [`TokenProvider::identity`]; computed once from the config.
    identity: String,
}

mod trust;

impl fmt::Debug for OAuth2Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SecretSource's Debug is already value-free; listed explicitly so a
        // future field cannot slip a secret in through a derive.
        f.debug_struct("OAuth2Provider")
            .field("grant", &self.grant)
            // Its query may hold a key (an Azure Function's `?code=`).
            .field(
                "token_url",
                &format_args!(
                    "{}",
                    proxy_core::config::shown_url(&self.token_url.to_string())
                ),
            )
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(SecretSource::describe),
            )
            .field("client_auth", &self.client_auth)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(SecretSource::describe),
            )
            .field("scopes", &self.scopes)
            .field(
                "params",
                &self.params.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("ca_file", &self.trust.ca_file())
            .finish_non_exhaustive()
    }
}

impl OAuth2Provider {
    /// Builds the provider. Secrets are resolved now and re-read every `poll`
    /// if they are files, so a rotated client secret or a re-seeded refresh
    /// token is picked up without a restart. Fails on a token URL that is not
    /// an absolute http(s) URL or on `params` that collide with the fields
    /// the provider sets.
    pub fn new(cfg: &OAuth2Config, poll: Duration) -> Result<Self, String> {
        let token_url: Uri = cfg.token_url.parse().map_err(|e| {
            format!(
                "token_url {} is not a valid URL: {e}",
                proxy_core::config::shown_url(&cfg.token_url)
            )
        })?;
        match token_url.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "token_url {:?} must be an http or https URL",
                    cfg.token_url
                ));
            }
        }
        if token_url.authority().is_none() {
            return Err(format!("token_url {:?} needs a host", cfg.token_url));
        }
        if let Some(k) = cfg
            .params
            .keys()
            .find(|k| RESERVED_PARAMS.contains(&k.as_str()))
        {
            return Err(format!(
                "oauth2.params may not set {k:?}: the provider sets it from the grant and client settings"
            ));
        }
        let trust =
            trust::Trust::new(cfg.ca_file.as_deref()).map_err(|e| format!("ca_file: {e}"))?;
        Ok(Self {
            grant: cfg.grant,
            token_url,
            client_id: cfg.client_id.clone(),
            client_secret: cfg
                .client_secret
                .as_ref()
                .map(|r| SecretSource::resolve(r, poll)),
            client_auth: cfg.client_auth,
            refresh_token: cfg
                .refresh_token
                .as_ref()
                .map(|r| SecretSource::resolve(r, poll)),
            scopes: cfg.scopes.clone(),
            params: cfg
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            trust,
            identity: identity(cfg),
        })
    }

    /// The refresh token to present: the stored one once a state exists
    /// (with rotation the seed is spent by then), else the seed.
    fn refresh_token_for(
        &self,
        current: Option<&StoredCredential>,
    ) -> Result<SecretString, ProviderError> {
        if let Some(rt) = current
            .and_then(|c| c.refresh_token.as_deref())
            .filter(|t| !t.is_empty())
        {
            return Ok(SecretString::from(rt.to_owned()));
        }
        match &self.refresh_token {
            None => Err(ProviderError::Config("no refresh token".into())),
            Some(src) => src
                .load()
                .map(|v| v.secret().clone())
                .map_err(|e| ProviderError::Config(format!("refresh token: {e}"))),
        }
    }

    /// Builds the token request. Returns it with the secrets it carries, so
    /// they can be redacted from whatever the endpoint answers.
    fn request(
        &self,
        current: Option<&StoredCredential>,
    ) -> Result<(Request<proxy_core::ProxyBody>, Vec<SecretString>), ProviderError> {
        let mut sent = Vec::new();
        let mut form = form_urlencoded::Serializer::new(String::new());
        match self.grant {
            Grant::RefreshToken => {
                let rt = self.refresh_token_for(current)?;
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("refresh_token", rt.expose_secret());
                sent.push(rt);
            }
            Grant::ClientCredentials => {
                form.append_pair("grant_type", "client_credentials");
            }
        }
        if !self.scopes.is_empty() {
            form.append_pair("scope", &self.scopes.join(" "));
        }
        for (k, v) in &self.params {
            form.append_pair(k, v);
            // A value may be a secret (a `client_assertion`). Short ones
            // (`read`, an audience) are not, and redacting them would
            // garble every message they occur in.
            if v.len() >= MIN_REDACTED_PARAM {
                sent.push(SecretString::from(v.clone()));
            }
        }

        let secret = match &self.client_secret {
            None => None,
            Some(src) => Some(
                src.load()
                    .map(|v| v.secret().clone())
                    .map_err(|e| ProviderError::Config(format!("client secret: {e}")))?,
            ),
        };
        let mut authorization = None;
        match (&secret, self.client_auth) {
            (Some(secret), ClientAuthMethod::Basic) => {
                authorization = Some(basic_authorization(&self.client_id, secret)?);
            }
            (Some(secret), ClientAuthMethod::Post) => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", secret.expose_secret());
            }
            // A public client identifies itself but has nothing to prove.
            (None, _) => {
                form.append_pair("client_id", &self.client_id);
            }
        }
        if let Some(secret) = secret {
            sent.push(secret);
        }
        // An endpoint (or a gateway in front of it) echoing the request's
        // headers would show the Basic credentials in their encoded form.
        if let Some(b64) = authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        {
            sent.push(SecretString::from(b64.to_owned()));
        }

        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            // Some token endpoints and the WAFs in front of them refuse
            // requests without one.
            .header(USER_AGENT, concat!("latchkey/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = authorization {
            builder = builder.header(AUTHORIZATION, auth);
        }
        // The builder's error names what is wrong, never the value, but a
        // fixed text keeps that a guarantee rather than an observation.
        let request = builder
            .body(proxy_core::full(form.finish()))
            .map_err(|_| ProviderError::Config("cannot build the token request".into()))?;
        Ok((request, sent))
    }

    async fn exchange(
        &self,
        request: Request<proxy_core::ProxyBody>,
        sent: &[SecretString],
    ) -> Result<Token, ProviderError> {
        let response = self
            .trust
            .client()
            .await?
            .request(request)
            .await
            .map_err(|e| ProviderError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let wait = matches!(status, 429 | 503)
            .then(|| retry_after(response.headers(), std::time::SystemTime::now()))
            .flatten();
        let with_wait = |error| match wait {
            Some(retry_after) => ProviderError::RetryAfter {
                error: Box::new(error),
                retry_after,
            },
            None => error,
        };
        // A 429 or 503 whose body cannot be read still asks for its wait.
        let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(with_wait(ProviderError::Transport(format!(
                    "response body larger than {MAX_BODY} bytes"
                ))));
            }
            Err(e) => return Err(with_wait(ProviderError::Transport(error_chain(&*e)))),
        };
        parse_response(status, &body, sent).map_err(with_wait)
    }
}

/// A `Retry-After` header (RFC 9110 10.2.3): seconds, or an HTTP date
/// (counted from `now`; a date in the past is no wait). Anything else is
/// ignored.
fn retry_after(
    headers: &http::HeaderMap,
    now: std::time::SystemTime,
) -> Option<std::time::Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

impl TokenProvider for OAuth2Provider {
    fn kind(&self) -> &'static str {
        "oauth2"
    }

    fn rotates(&self) -> bool {
        self.grant == Grant::RefreshToken
    }

    fn identity(&self) -> Option<String> {
        Some(self.identity.clone())
    }

    fn seed_refresh_token(&self) -> Option<SecretString> {
        self.refresh_token
            .as_ref()?
            .load()
            .ok()
            .map(|v| v.secret().clone())
    }

    fn fetch<'a>(
        &'a self,
        current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        Box::pin(async move {
            let (request, sent) = self.request(current)?;
            tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(request, &sent))
                .await
                .unwrap_or(Err(ProviderError::Timeout(EXCHANGE_TIMEOUT)))
        })
    }
}

/// The provider's fingerprint ([`TokenProvider::identity`]): what makes a
/// stored refresh token meaningless, and sending it a leak: another token
/// endpoint (another IdP, or tenant), another client, another grant. Not
/// the scopes, `params`, client secret or seed: a refresh token stays
/// valid across those edits, and starting over from a seed that was spent
/// long ago would replay it (an IdP that detects reuse then revokes the
/// whole family, the live refresh token included).
fn identity(cfg: &OAuth2Config) -> String {
    let grant: &[u8] = match cfg.grant {
        Grant::RefreshToken => b"refresh_token",
        Grant::ClientCredentials => b"client_credentials",
    };
    super::fingerprint([
        b"oauth2".as_slice(),
        cfg.token_url.trim().as_bytes(),
        cfg.client_id.as_bytes(),
        grant,
    ])
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`: RFC 6749 2.3.1 says
/// both parts are form-urlencoded first, which servers rely on to split ids
/// or secrets that contain `:`. Marked sensitive so HTTP/2 never indexes it
/// (HPACK) and debug output of the header map hides it.
fn basic_authorization(
    client_id: &str,
    secret: &SecretString,
) -> Result<HeaderValue, ProviderError> {
    use base64::Engine as _;
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let pw: String = form_urlencoded::byte_serialize(secret.expose_secret().as_bytes()).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{pw}"));
    let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| ProviderError::Config("cannot build the Authorization header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// An error and its sources, `: `-joined. hyper-util's own text is just
/// "client error (Connect)"; the cause ("connection refused", a TLS alert)
/// is what an operator needs. None of these carry the request body.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // Some layers repeat their cause in their own text.
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// RFC 6749 5.1 (success) and 5.2 (error) responses.
fn parse_response(
    status: u16,
    body: &Bytes,
    sent: &[SecretString],
) -> Result<Token, ProviderError> {
    let success = (200..300).contains(&status);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(if success {
            ProviderError::NotJson { status }
        } else {
            ProviderError::Http { status }
        });
    };
    // An error body wins whatever the status: some servers answer 200 with
    // an error object, and treating that as a token would be worse.
    if let Some(error) = json.get("error").and_then(serde_json::Value::as_str) {
        return Err(ProviderError::OAuth {
            status,
            error: scrub(error, sent),
            description: json
                .get("error_description")
                .and_then(serde_json::Value::as_str)
                .map(|d| scrub(d, sent)),
        });
    }
    if !success {
        return Err(ProviderError::Http { status });
    }
    let access_token = match json.get("access_token") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => SecretString::from(t.clone()),
        _ => return Err(ProviderError::MissingAccessToken),
    };
    check_token_type(json.get("token_type"))?;
    let expires_in = parse_expires_in(json.get("expires_in"))?;
    let refresh_token = match json.get("refresh_token") {
        None | Some(serde_json::Value::Null) => None,
        // An empty refresh token is no token: keep the one we have rather
        // than store "" and lose the credential on the next refresh.
        Some(serde_json::Value::String(t)) if t.is_empty() => None,
        Some(serde_json::Value::String(t)) => Some(SecretString::from(t.clone())),
        Some(_) => {
            return Err(ProviderError::BadField {
                field: "refresh_token",
                problem: "expected a string".into(),
            });
        }
    };
    Ok(Token {
        access_token,
        expires_in,
        refresh_token,
    })
}

/// `token_type` must be `Bearer` (any case), or absent (many servers leave
/// it out): RFC 6749 7.1 says a client must not use a token of a type it
/// does not understand, and a DPoP- or MAC-bound token sent as a bearer
/// token would be refused by every upstream, then refreshed and refused
/// again.
fn check_token_type(v: Option<&serde_json::Value>) -> Result<(), ProviderError> {
    let problem = match v {
        None | Some(serde_json::Value::Null) => return Ok(()),
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("bearer") => return Ok(()),
        // Endpoint-supplied: shown only if it looks like a type name.
        Some(serde_json::Value::String(t))
            if t.len() <= 32
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            format!("{t:?} is not a bearer token; latchkey sends only bearer tokens")
        }
        Some(serde_json::Value::String(_)) => {
            "not a bearer token; latchkey sends only bearer tokens".to_owned()
        }
        Some(_) => "expected a string".to_owned(),
    };
    Err(ProviderError::BadField {
        field: "token_type",
        problem,
    })
}

/// `expires_in`: absent or null (no expiry given), a non-negative number of
/// seconds, or such a number as a string (several servers send `"3600"`).
/// Shared with the exec provider's `{access_token, expires_in}` form.
pub(crate) fn parse_expires_in(
    value: Option<&serde_json::Value>,
) -> Result<Option<Duration>, ProviderError> {
    let bad = |problem: &str| ProviderError::BadField {
        field: "expires_in",
        problem: problem.to_owned(),
    };
    let seconds = |f: f64| {
        if f.is_nan() || f < 0.0 {
            Err(bad("must be a non-negative number of seconds"))
        } else {
            Duration::try_from_secs_f64(f).map_err(|_| bad("is out of range"))
        }
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(s) => Ok(Some(Duration::from_secs(s))),
            None => seconds(n.as_f64().unwrap_or(f64::NAN)).map(Some),
        },
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<u64>() {
                Ok(Some(Duration::from_secs(n)))
            } else {
                let f = s
                    .parse::<f64>()
                    .map_err(|_| bad("expected a number of seconds"))?;
                seconds(f).map(Some)
            }
        }
        Some(_) => Err(bad("expected a number of seconds")),
    }
}

/// Endpoint-supplied text, made safe to log: anything we sent (a refresh
/// token, the client secret) is replaced, control characters are dropped and
/// the length is capped.
/// `oauth2.params` values this long or longer are redacted from what the
/// token endpoint answers, as the secrets sent are.
const MIN_REDACTED_PARAM: usize = 8;

fn scrub(text: &str, sent: &[SecretString]) -> String {
    let mut out = text.to_owned();
    for s in sent {
        let raw = s.expose_secret();
        if raw.is_empty() {
            continue;
        }
        // A server echoing the form would show the encoded spelling.
        let encoded: String = form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        out = out
            .replace(raw, "[redacted]")
            .replace(&encoded, "[redacted]");
    }
    let mut out: String = out.chars().filter(|c| !c.is_control()).collect();
    if out.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}
