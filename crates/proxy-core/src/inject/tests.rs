//! Injection into headers, query and basic auth, and its audit facts.

use super::*;
use crate::config::BasicConfig;
use secrecy::SecretString;
use std::time::SystemTime;

fn cred(v: &str) -> Arc<Credential> {
    Arc::new(Credential::new(
        SecretString::from(v.to_string()),
        1,
        SystemTime::now(),
        None,
    ))
}

fn inject(cfg: InjectConfig) -> Inject<()> {
    let spec = InjectSpec::parse(Some(&cfg)).unwrap();
    InjectLayer::new(Injection::from_spec(
        spec,
        Some(&cfg),
        std::time::Duration::from_secs(1),
    ))
    .layer(())
}

#[test]
fn header_default_and_custom() {
    let mut req = Request::new(());
    let i = InjectLayer::new(Injection::from_spec(
        InjectSpec::parse(None).unwrap(),
        None,
        std::time::Duration::from_secs(1),
    ))
    .layer(());
    i.apply(&mut req, &cred("abc")).unwrap();
    assert_eq!(req.headers()["authorization"], "Bearer abc");
    assert!(req.headers()["authorization"].is_sensitive());

    let mut req = Request::new(());
    req.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("callers"));
    inject(InjectConfig {
        header: Some("x-api-key".into()),
        ..Default::default()
    })
    .apply(&mut req, &cred("k1"))
    .unwrap();
    assert_eq!(req.headers().get_all("x-api-key").iter().count(), 1);
    assert_eq!(req.headers()["x-api-key"], "k1");
}

#[test]
fn cached_value_follows_new_credential() {
    let i = inject(InjectConfig {
        header: Some("x-k".into()),
        format: Some("K={token};".into()),
        ..Default::default()
    });
    let (a, b) = (cred("one"), cred("two"));
    for (c, want) in [(&a, "K=one;"), (&a, "K=one;"), (&b, "K=two;")] {
        let mut req = Request::new(());
        i.apply(&mut req, c).unwrap();
        assert_eq!(req.headers()["x-k"], want);
    }
}

#[test]
fn query_replaces_callers_param_and_keeps_the_rest() {
    let uri: Uri = "/v1/search?q=a%20b&api_key=evil&x=1".parse().unwrap();
    let out = set_query_param(&uri, "api_key", "s3cr&t").unwrap();
    assert_eq!(out.to_string(), "/v1/search?q=a%20b&x=1&api_key=s3cr%26t");
    let out = set_query_param(&"/p".parse().unwrap(), "k", "v").unwrap();
    assert_eq!(out.to_string(), "/p?k=v");
}

#[test]
fn basic_auth() {
    let i = inject(InjectConfig {
        basic: Some(BasicConfig {
            username: Username::Plain("svc".into()),
        }),
        ..Default::default()
    });
    let mut req = Request::new(());
    i.apply(&mut req, &cred("pw")).unwrap();
    assert_eq!(req.headers()["authorization"], "Basic c3ZjOnB3");
}

/// A Basic user name from a `file` secret that is rewritten: the next
/// request carries the new name with the same credential (the rendered
/// header is cached per credential and user name version).
#[tokio::test(start_paused = true)]
async fn a_rewritten_basic_user_name_is_used_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user");
    std::fs::write(&path, "alice").unwrap();
    let cfg = InjectConfig {
        basic: Some(BasicConfig {
            username: Username::Secret(crate::secret::SecretRef::File(path.clone())),
        }),
        ..Default::default()
    };
    let spec = InjectSpec::parse(Some(&cfg)).unwrap();
    let i = InjectLayer::new(Injection::from_spec(
        spec,
        Some(&cfg),
        std::time::Duration::from_secs(1),
    ))
    .layer(());
    let pw = cred("pw");
    let mut req = Request::new(());
    i.apply(&mut req, &pw).unwrap();
    assert_eq!(req.headers()["authorization"], "Basic YWxpY2U6cHc=");
    std::fs::write(&path, "bob").unwrap();
    // A sleep, not `advance`: the file is read on the blocking pool, and the
    // paused clock auto-advances only once that read has returned.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mut req = Request::new(());
    i.apply(&mut req, &pw).unwrap();
    assert_eq!(req.headers()["authorization"], "Basic Ym9iOnB3");
}

#[test]
fn spec_errors_name_the_field() {
    let e = InjectSpec::parse(Some(&InjectConfig {
        header: Some("x y".into()),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(e.path, ".header");
    let e = InjectSpec::parse(Some(&InjectConfig {
        header: Some("x-k".into()),
        format: Some("Bearer".into()),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(e.path, ".format");
    let e = InjectSpec::parse(Some(&InjectConfig {
        header: Some("Host".into()),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(e.path, ".header");
    let e = InjectSpec::parse(Some(&InjectConfig::default())).unwrap_err();
    assert_eq!(e.path, "");
}

#[test]
fn bad_credential_bytes_are_an_error_without_the_value() {
    let i = inject(InjectConfig {
        header: Some("x-k".into()),
        ..Default::default()
    });
    let mut req = Request::new(());
    let err = i.apply(&mut req, &cred("bad\nvalue")).unwrap_err();
    assert!(!err.contains("bad"));
}

/// A credential that cannot be injected (a refreshed value with bytes
/// a header cannot hold, on a 401 retry's replay) replaces what an
/// earlier attempt recorded: the record never claims it was sent.
#[tokio::test]
async fn a_credential_that_cannot_be_injected_is_recorded_unavailable() {
    use crate::facts::{CredentialFact, CredentialOutcome, Facts};
    use tower::ServiceExt as _;
    let facts = Facts::new();
    facts.update(|f| {
        f.credential = Some(CredentialFact {
            id: "k".into(),
            generation: Some(1),
            outcome: CredentialOutcome::Injected,
            obtained_at: None,
            expires_at: None,
        });
    });
    let svc = InjectLayer::new(Injection::from_spec(
        InjectSpec::parse(None).unwrap(),
        None,
        std::time::Duration::from_secs(1),
    ))
    .layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(()))
    }));
    let mut req = Request::new(());
    let ctx = crate::context::RequestContext::of_mut(req.extensions_mut());
    ctx.facts = Some(facts.clone());
    ctx.acquired = Some(crate::acquire::Acquired {
        credential: cred("bad\nvalue"),
        used: crate::credential::CredentialUsed {
            id: "k".into(),
            generation: 2,
            obtained_at: SystemTime::now(),
            expires_at: None,
        },
    });
    assert!(svc.oneshot(req).await.is_err());
    let seen = facts.snapshot();
    assert_eq!(seen.rejected_by, Some("credential"));
    let c = seen.credential.unwrap();
    assert_eq!(
        (c.outcome, c.generation),
        (CredentialOutcome::Unavailable, None)
    );
}

/// The credential parameter leaves every `Location` and
/// `Content-Location` line; every other byte stays (fragment and non-ASCII
/// bytes included), and a copy of the credential nested in another
/// parameter (a login redirect's return URL) is cut out of the query.
#[test]
fn the_query_credential_is_scrubbed_from_location() {
    use super::scrub::{scrub, without_param};
    let cases = [
        ("/api/dir/?x=1&api_key=s3cr%26t", Some("/api/dir/?x=1")),
        ("/dir/?api_key=s", Some("/dir/")),
        (
            "https://h.example/d/?a=1&api%5Fkey=s&b=2#top",
            Some("https://h.example/d/?a=1&b=2#top"),
        ),
        ("/d/?api_key", Some("/d/")),
        ("/d/?x=api_key", None),
        ("/d/#api_key=s", None),
        ("/d/", None),
    ];
    for (uri, want) in cases {
        let got = without_param(uri.as_bytes(), "api_key");
        assert_eq!(got.as_deref(), want.map(str::as_bytes), "{uri}");
    }
    let secret = "SECRET-k&y";
    let mut h = http::HeaderMap::new();
    h.append(header::LOCATION, HeaderValue::from_static("/a/"));
    h.append(
        header::LOCATION,
        HeaderValue::from_static("/a/?api_key=SECRET-k%26y&q=1"),
    );
    h.insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_bytes("/caf\u{e9}?api_key=SECRET-k%26y".as_bytes()).unwrap(),
    );
    h.insert(
        "link",
        HeaderValue::from_static("</a?api_key=SECRET-k%26y>"),
    );
    scrub(&mut h, "api_key", secret);
    let lines: Vec<_> = h.get_all(header::LOCATION).iter().collect();
    assert_eq!(lines, ["/a/", "/a/?q=1"]);
    assert_eq!(
        h[header::CONTENT_LOCATION].as_bytes(),
        "/caf\u{e9}".as_bytes()
    );
    assert_eq!(
        h["link"], "</a?api_key=SECRET-k%26y>",
        "other headers are not touched"
    );

    // Nested once more in a return URL, in a path-free position.
    let mut h = http::HeaderMap::new();
    h.insert(
        header::LOCATION,
        HeaderValue::from_static(
            "/login/?next=%2Fapi%2Fdir%2F%3Fx%3D1%26api_key%3DSECRET-k%2526y#SECRET-k&y",
        ),
    );
    scrub(&mut h, "api_key", secret);
    assert_eq!(
        h[header::LOCATION],
        "/login/?next=%2Fapi%2Fdir%2F%3Fx%3D1%26api_key%3D#"
    );
    // The path is left alone, even where it spells the credential.
    let mut h = http::HeaderMap::new();
    h.insert(header::LOCATION, HeaderValue::from_static("/SECRET-k&y/"));
    scrub(&mut h, "api_key", secret);
    assert_eq!(h[header::LOCATION], "/SECRET-k&y/");
}
