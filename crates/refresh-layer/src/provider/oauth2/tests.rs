//! Tests against a real token endpoint over loopback HTTP.

use super::*;
use base64::Engine as _;
use proxy_core::secret::SecretRef;
use std::collections::BTreeMap;
use std::time::SystemTime;

#[path = "../../../../../tests/support/token_endpoint.rs"]
mod token_endpoint;

use token_endpoint::{EndpointOptions, Failure, TokenEndpoint};

const POLL: Duration = Duration::from_secs(1);

fn lit(s: &str) -> SecretRef {
    SecretRef::Value(SecretString::from(s.to_owned()))
}

fn refresh_cfg(url: &str, refresh_token: &str) -> OAuth2Config {
    OAuth2Config {
        grant: Grant::RefreshToken,
        token_url: url.to_owned(),
        client_id: "client".to_owned(),
        client_secret: None,
        client_auth: ClientAuthMethod::Basic,
        refresh_token: Some(lit(refresh_token)),
        scopes: Vec::new(),
        params: Default::default(),
        ca_file: None,
    }
}

fn provider(cfg: &OAuth2Config) -> OAuth2Provider {
    OAuth2Provider::new(cfg, POLL).unwrap()
}

async fn endpoint() -> TokenEndpoint {
    token_endpoint::start(EndpointOptions::default()).await
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn stored(token: &Token, prior: Option<&SecretString>, generation: u64) -> StoredCredential {
    StoredCredential::from_token(token, prior, generation, SystemTime::now())
}

#[tokio::test]
async fn refresh_grant_sends_form_and_basic_auth() {
    let ep = token_endpoint::start(EndpointOptions {
        client_id: Some("my client".into()),
        client_secret: Some("s3cr:et/+".into()),
        ..EndpointOptions::default()
    })
    .await;
    let mut cfg = refresh_cfg(&ep.url, "rt-0");
    cfg.client_id = "my client".into();
    cfg.client_secret = Some(lit("s3cr:et/+"));
    let p = provider(&cfg);
    assert_eq!(p.kind(), "oauth2");
    assert!(p.rotates());
    assert_eq!(p.seed_refresh_token().unwrap().expose_secret(), "rt-0");

    let token = p.fetch(None).await.unwrap();
    assert_eq!(token.access_token.expose_secret(), "at-1");
    assert_eq!(
        token.refresh_token.as_ref().unwrap().expose_secret(),
        "rt-1"
    );
    assert_eq!(token.expires_in, Some(Duration::from_secs(3600)));

    assert_eq!(
        ep.last_user_agent().as_deref(),
        Some(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
    );
    // Basic auth carries the credentials, so the form must not repeat them.
    assert_eq!(
        ep.last_form(),
        pairs(&[("grant_type", "refresh_token"), ("refresh_token", "rt-0")])
    );
    let auth = ep.last_authorization().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ").unwrap())
        .unwrap();
    // RFC 6749 2.3.1: each part is form-urlencoded before joining.
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "my+client:s3cr%3Aet%2F%2B"
    );
}

#[tokio::test]
async fn post_client_auth_sends_id_and_secret_in_the_form() {
    let ep = token_endpoint::start(EndpointOptions {
        client_id: Some("client".into()),
        client_secret: Some("sekret".into()),
        ..EndpointOptions::default()
    })
    .await;
    let mut cfg = refresh_cfg(&ep.url, "rt-0");
    cfg.client_secret = Some(lit("sekret"));
    cfg.client_auth = ClientAuthMethod::Post;
    let token = provider(&cfg).fetch(None).await.unwrap();
    assert_eq!(token.access_token.expose_secret(), "at-1");
    assert_eq!(
        ep.last_form(),
        pairs(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-0"),
            ("client_id", "client"),
            ("client_secret", "sekret"),
        ])
    );
    assert_eq!(ep.last_authorization(), None);
}

#[tokio::test]
async fn public_client_sends_only_its_id() {
    let ep = endpoint().await;
    provider(&refresh_cfg(&ep.url, "rt-0"))
        .fetch(None)
        .await
        .unwrap();
    assert_eq!(
        ep.last_form(),
        pairs(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "rt-0"),
            ("client_id", "client")
        ])
    );
    assert_eq!(ep.last_authorization(), None);
}

#[tokio::test]
async fn rotation_uses_the_stored_token_and_a_reused_one_is_invalid_grant() {
    let ep = endpoint().await;
    let p = provider(&refresh_cfg(&ep.url, "rt-0"));

    let first = p.fetch(None).await.unwrap();
    let state1 = stored(&first, None, 1);
    assert_eq!(state1.refresh_token.as_deref(), Some("rt-1"));

    let second = p.fetch(Some(&state1)).await.unwrap();
    assert_eq!(second.access_token.expose_secret(), "at-2");
    assert_eq!(ep.last_form_value("refresh_token").as_deref(), Some("rt-1"));
    let state2 = stored(&second, state1.refresh_token().as_ref(), 2);
    assert_eq!(state2.refresh_token.as_deref(), Some("rt-2"));

    // rt-1 was consumed by the second fetch: presenting it again is what a
    // second holder racing on the same credential would do.
    let err = p.fetch(Some(&state1)).await.unwrap_err();
    assert!(err.is_invalid_grant(), "{err:?}");
    assert!(
        matches!(&err, ProviderError::OAuth { status: 400, error, .. } if error == "invalid_grant"),
        "{err:?}"
    );
    assert_eq!(ep.invalid_grants(), 1);

    // The seed is spent too; only the latest refresh token works.
    assert!(p.fetch(None).await.unwrap_err().is_invalid_grant());
    let third = p.fetch(Some(&state2)).await.unwrap();
    assert_eq!(third.access_token.expose_secret(), "at-5");
}

#[tokio::test]
async fn state_without_a_refresh_token_falls_back_to_the_seed() {
    let ep = endpoint().await;
    let p = provider(&refresh_cfg(&ep.url, "rt-0"));
    let mut state = stored(&p.fetch(None).await.unwrap(), None, 1);
    state.refresh_token = None;
    ep.set_refresh_token("rt-0");
    p.fetch(Some(&state)).await.unwrap();
    assert_eq!(ep.last_form_value("refresh_token").as_deref(), Some("rt-0"));
}

#[tokio::test]
async fn refresh_grant_without_any_refresh_token_is_a_config_error() {
    let ep = endpoint().await;
    let mut cfg = refresh_cfg(&ep.url, "unused");
    cfg.refresh_token = None;
    let p = provider(&cfg);
    assert!(p.seed_refresh_token().is_none());
    assert_eq!(
        p.fetch(None).await.unwrap_err(),
        ProviderError::Config("no refresh token".into())
    );
    assert_eq!(ep.calls(), 0);
}

#[tokio::test]
async fn client_credentials_sends_scopes_and_params() {
    let ep = token_endpoint::start(EndpointOptions {
        client_secret: Some("sekret".into()),
        ..EndpointOptions::default()
    })
    .await;
    let cfg = OAuth2Config {
        grant: Grant::ClientCredentials,
        token_url: ep.url.clone(),
        client_id: "client".into(),
        client_secret: Some(lit("sekret")),
        client_auth: ClientAuthMethod::Post,
        refresh_token: None,
        scopes: vec!["read".into(), "write:all".into()],
        params: proxy_core::config::PlainValues(BTreeMap::from([
            ("audience".to_owned(), "https://api.example".to_owned()),
            ("resource".to_owned(), "a b".to_owned()),
        ])),
        ca_file: None,
    };
    let p = provider(&cfg);
    assert!(!p.rotates());
    let token = p.fetch(None).await.unwrap();
    assert_eq!(token.access_token.expose_secret(), "at-1");
    assert!(token.refresh_token.is_none());
    assert_eq!(
        ep.last_form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("scope", "read write:all"),
            ("audience", "https://api.example"),
            ("resource", "a b"),
            ("client_id", "client"),
            ("client_secret", "sekret"),
        ])
    );
}

async fn fail_with(status: u16, body: &str) -> ProviderError {
    let ep = endpoint().await;
    ep.set_failure(Some(Failure::Status(status, body.to_owned())));
    provider(&refresh_cfg(&ep.url, "rt-0"))
        .fetch(None)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn error_responses_map_to_precise_errors() {
    assert_eq!(
        fail_with(500, "upstream exploded").await,
        ProviderError::Http { status: 500 }
    );
    assert_eq!(
        fail_with(503, r#"{"message":"busy"}"#).await,
        ProviderError::Http { status: 503 }
    );
    assert_eq!(
        fail_with(200, "<html>login</html>").await,
        ProviderError::NotJson { status: 200 }
    );
    assert_eq!(
        fail_with(200, r#"{"token_type":"Bearer"}"#).await,
        ProviderError::MissingAccessToken
    );
    assert_eq!(
        fail_with(200, r#"{"access_token":""}"#).await,
        ProviderError::MissingAccessToken
    );
    assert_eq!(
        fail_with(200, r#"{"access_token":42}"#).await,
        ProviderError::MissingAccessToken
    );
    assert_eq!(
        fail_with(200, "[1,2]").await,
        ProviderError::MissingAccessToken
    );
    // An error object wins over a 2xx status.
    assert_eq!(
        fail_with(200, r#"{"error":"slow_down"}"#).await,
        ProviderError::OAuth {
            status: 200,
            error: "slow_down".into(),
            description: None
        }
    );
    assert!(matches!(
        fail_with(200, r#"{"access_token":"x","refresh_token":7}"#).await,
        ProviderError::BadField {
            field: "refresh_token",
            ..
        }
    ));
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client_with_description() {
    let ep = token_endpoint::start(EndpointOptions {
        client_secret: Some("right".into()),
        ..EndpointOptions::default()
    })
    .await;
    let mut cfg = refresh_cfg(&ep.url, "rt-0");
    cfg.client_secret = Some(lit("wrong"));
    let err = provider(&cfg).fetch(None).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::OAuth {
            status: 401,
            error: "invalid_client".into(),
            description: Some("client authentication failed".into()),
        }
    );
    assert!(!err.is_invalid_grant());
    assert_eq!(err.oauth_error(), Some("invalid_client"));
    assert_eq!(
        err.to_string(),
        "token endpoint answered 401 invalid_client: client authentication failed"
    );
}

#[tokio::test]
async fn expires_in_accepts_numbers_and_numeric_strings_only() {
    async fn expiry(body: &str) -> Result<Option<Duration>, ProviderError> {
        let ep = endpoint().await;
        ep.set_failure(Some(Failure::Status(200, body.to_owned())));
        provider(&refresh_cfg(&ep.url, "rt-0"))
            .fetch(None)
            .await
            .map(|t| t.expires_in)
    }
    assert_eq!(
        expiry(r#"{"access_token":"a","expires_in":"120"}"#).await,
        Ok(Some(Duration::from_secs(120)))
    );
    assert_eq!(
        expiry(r#"{"access_token":"a","expires_in":59.5}"#).await,
        Ok(Some(Duration::from_millis(59_500)))
    );
    assert_eq!(
        expiry(r#"{"access_token":"a","expires_in":" 7.25 "}"#).await,
        Ok(Some(Duration::from_millis(7_250)))
    );
    assert_eq!(expiry(r#"{"access_token":"a"}"#).await, Ok(None));
    assert_eq!(
        expiry(r#"{"access_token":"a","expires_in":null}"#).await,
        Ok(None)
    );
    for bad in [r#""soon""#, "-5", "true", r#"{"s":1}"#, "1e300"] {
        let body = format!(r#"{{"access_token":"a","expires_in":{bad}}}"#);
        let got = expiry(&body).await;
        assert!(
            matches!(
                got,
                Err(ProviderError::BadField {
                    field: "expires_in",
                    ..
                })
            ),
            "{bad}: {got:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_endpoint_times_out() {
    let ep = endpoint().await;
    ep.set_failure(Some(Failure::Hang));
    let err = provider(&refresh_cfg(&ep.url, "rt-0"))
        .fetch(None)
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::Timeout(Duration::from_secs(10)));
    assert_eq!(
        ep.calls(),
        1,
        "the request reached the endpoint before it hung"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_a_transport_error() {
    // Bind then drop: the port is free and nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/token", addr.port());
    let err = provider(&refresh_cfg(&url, "rt-0"))
        .fetch(None)
        .await
        .unwrap_err();
    let ProviderError::Transport(text) = &err else {
        panic!("{err:?}")
    };
    assert!(text.contains("onnect"), "{text}");
}

#[test]
fn new_rejects_bad_urls_and_reserved_params() {
    let mut cfg = refresh_cfg("not a url", "rt");
    assert!(OAuth2Provider::new(&cfg, POLL).is_err());
    cfg.token_url = "/token".into();
    assert!(OAuth2Provider::new(&cfg, POLL).is_err());
    cfg.token_url = "ftp://127.0.0.1/token".into();
    assert!(OAuth2Provider::new(&cfg, POLL).is_err());
    cfg.token_url = "http://127.0.0.1:1/token".into();
    assert!(OAuth2Provider::new(&cfg, POLL).is_ok());
    cfg.params.insert("grant_type".into(), "password".into());
    let err = OAuth2Provider::new(&cfg, POLL).unwrap_err();
    assert!(err.contains("grant_type"), "{err}");
}

#[tokio::test]
async fn no_secret_reaches_errors_or_debug() {
    const CANARIES: [&str; 3] = ["rt-canary-1", "cs-canary/2", "at-canary-3"];
    let ep = endpoint().await;
    let mut cfg = refresh_cfg(&ep.url, CANARIES[0]);
    cfg.client_secret = Some(lit(CANARIES[1]));
    let p = provider(&cfg);

    let check = |what: &str, text: String| {
        for c in CANARIES {
            // The encoded spelling too: a server may echo the raw form.
            let encoded: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
            assert!(
                !text.contains(c) && !text.contains(&encoded),
                "{what} leaks {c}: {text}"
            );
        }
    };
    check("provider Debug", format!("{p:?}"));

    let bodies = [
        (200, r#"{"access_token":"at-canary-3","expires_in":"soon"}"#.to_owned()),
        (200, r#"{"access_token":"at-canary-3","refresh_token":["rt-canary-1"]}"#.to_owned()),
        (500, "at-canary-3 rt-canary-1 cs-canary/2".to_owned()),
        (200, "access_token=at-canary-3".to_owned()),
        (
            400,
            r#"{"error":"invalid_grant rt-canary-1","error_description":"refresh_token=rt-canary-1&client_secret=cs-canary%2F2 (cs-canary/2)"}"#
                .to_owned(),
        ),
    ];
    for (status, body) in bodies {
        ep.set_failure(Some(Failure::Status(status, body.clone())));
        let err = p.fetch(None).await.unwrap_err();
        check(&format!("Display for {body}"), err.to_string());
        check(&format!("Debug for {body}"), format!("{err:?}"));
    }
    // The redaction keeps the rest of the description readable.
    ep.set_failure(Some(Failure::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"token rt-canary-1 is revoked"}"#
            .to_owned(),
    )));
    let err = p.fetch(None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "token endpoint answered 400 invalid_grant: token [redacted] is revoked"
    );

    // A real success followed by a reuse of the now-spent seed.
    ep.set_failure(None);
    ep.set_refresh_token(CANARIES[0]);
    let token = p.fetch(None).await.unwrap();
    check("Token Debug", format!("{token:?}"));
    let err = p.fetch(None).await.unwrap_err();
    assert!(err.is_invalid_grant());
    check("invalid_grant", format!("{err} {err:?}"));
}

/// A 429 or 503 with `Retry-After` (seconds or an HTTP date) carries the
/// wait with the error; without the header, or on another status, it is the
/// plain error.
#[tokio::test]
async fn retry_after_is_read_from_429_and_503() {
    let ep = endpoint().await;
    let p = provider(&refresh_cfg(&ep.url, "rt-0"));
    ep.set_failure(Some(Failure::Throttled(429, "120".into())));
    let err = p.fetch(None).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(
        err.to_string(),
        "token endpoint answered HTTP 429; the endpoint asked to retry after 120s"
    );
    ep.set_failure(Some(Failure::Throttled(503, "999999".into())));
    let err = p.fetch(None).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(super::super::MAX_RETRY_AFTER));
    ep.set_failure(Some(Failure::Throttled(500, "120".into())));
    assert_eq!(p.fetch(None).await.unwrap_err().retry_after(), None);
    ep.set_failure(Some(Failure::Status(
        429,
        "{\"error\":\"slow_down\"}".into(),
    )));
    let err = p.fetch(None).await.unwrap_err();
    assert_eq!(
        (err.retry_after(), err.oauth_error()),
        (None, Some("slow_down"))
    );
}

#[test]
fn retry_after_values() {
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
    let h = |v: &str| {
        let mut m = http::HeaderMap::new();
        m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
        super::retry_after(&m, now)
    };
    assert_eq!(h("0"), Some(Duration::ZERO));
    assert_eq!(h(" 30 "), Some(Duration::from_secs(30)));
    // 2015-10-21T07:28:00Z is `now`; a minute later, and a date passed.
    assert_eq!(
        h("Wed, 21 Oct 2015 07:29:00 GMT"),
        Some(Duration::from_secs(60))
    );
    assert_eq!(h("Wed, 21 Oct 2015 07:27:00 GMT"), Some(Duration::ZERO));
    assert_eq!(h("soon"), None);
    assert_eq!(h("-5"), None);
    assert_eq!(super::retry_after(&http::HeaderMap::new(), now), None);
}

fn cc_cfg(url: &str, secret: &str) -> OAuth2Config {
    OAuth2Config {
        grant: Grant::ClientCredentials,
        token_url: url.to_owned(),
        client_id: "client".to_owned(),
        client_secret: Some(lit(secret)),
        client_auth: ClientAuthMethod::Basic,
        refresh_token: None,
        scopes: Vec::new(),
        params: Default::default(),
        ca_file: None,
    }
}

/// RFC 6749 3.2: "The endpoint URI MAY include an
/// application/x-www-form-urlencoded formatted query component ... which
/// MUST be retained". Azure AD B2C's documented token URL form carries the
/// policy as `?p=B2C_1_...`: config accepts it and the provider sends it.
#[tokio::test]
async fn a_token_url_with_a_query_is_accepted_and_kept() {
    let ep = endpoint().await;
    let url = format!("{}?p=B2C_1_signin", ep.url);
    let mut cfg = cc_cfg(&url, "s");
    cfg.client_secret = None;
    // The provider works with it (the endpoint serves /token, query kept).
    let token = provider(&cfg).fetch(None).await.unwrap();
    assert_eq!(token.access_token.expose_secret(), "at-1");
    // Config accepts it, local or https; a fragment is still refused.
    let b2c =
        "https://contoso.b2clogin.com/contoso.onmicrosoft.com/oauth2/v2.0/token?p=B2C_1_signin";
    let local = proxy_core::config::check_token_url(&url);
    let remote = proxy_core::config::check_token_url(b2c);
    assert!(
        local.is_ok() && remote.is_ok(),
        "local: {local:?}\nb2c: {remote:?}"
    );
    assert!(proxy_core::config::check_token_url(&format!("{b2c}#f")).is_err());
}

/// An endpoint (or a WAF/gateway in front of it) that echoes the request's
/// Authorization header into error_description: the Basic credentials
/// (base64 of `client:secret`) are redacted like everything else sent.
#[tokio::test]
async fn echoed_basic_credentials_are_redacted() {
    let ep = endpoint().await;
    let secret = "cs-canary-2";
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("client:{secret}"));
    ep.set_failure(Some(Failure::Status(
        401,
        format!(
            r#"{{"error":"invalid_client","error_description":"bad header Authorization: Basic {basic}"}}"#
        ),
    )));
    let err = provider(&cc_cfg(&ep.url, secret))
        .fetch(None)
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(&basic),
        "client secret (base64) leaks: {text}"
    );
}

/// RFC 6749 7.1: "The client MUST NOT use an access token if it does not
/// understand the token type." A DPoP- or MAC-typed token is refused (it
/// would be injected as `Bearer {token}` and refused upstream); `bearer` in
/// any case, or no `token_type` at all, is fine.
#[tokio::test]
async fn a_token_that_is_not_bearer_is_refused_and_bearer_in_any_case_is_not() {
    for tt in ["DPoP", "MAC", "N_A"] {
        let ep = endpoint().await;
        ep.set_failure(Some(Failure::Status(
            200,
            format!(r#"{{"access_token":"at-x","token_type":"{tt}","expires_in":3600}}"#),
        )));
        let got = provider(&cc_cfg(&ep.url, "s")).fetch(None).await;
        assert!(got.is_err(), "token_type {tt} accepted as a bearer token");
    }
    for tt in [r#","token_type":"bearer""#, r#","token_type":"BEARER""#, ""] {
        let ep = endpoint().await;
        ep.set_failure(Some(Failure::Status(
            200,
            format!(r#"{{"access_token":"at-x"{tt},"expires_in":3600}}"#),
        )));
        let got = provider(&cc_cfg(&ep.url, "s")).fetch(None).await;
        assert!(got.is_ok(), "{tt:?}: {got:?}");
    }
}

mod echo;
