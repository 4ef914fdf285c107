use super::*;
use http::{HeaderValue, Request};
use proxy_core::context::{ConnInfo, RequestContext};
use proxy_core::facts::{CredentialFact, RefreshFact};
use serde_json::{Value, json};
use std::sync::Arc;

/// 2026-11-23T01:02:03.456Z
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_395_723_456)
}

fn meta(uri: &str) -> RequestMeta {
    let mut req = Request::get(uri)
        .header("host", "proxy.local:8080")
        .body(())
        .unwrap();
    req.extensions_mut().insert(RequestContext::new(
        ConnInfo {
            remote_addr: "127.0.0.1:5555".parse().unwrap(),
            local_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
        },
        RequestId(HeaderValue::from_static("rid-1")),
    ));
    RequestMeta::from_request(&req)
}

fn injected() -> RequestFacts {
    RequestFacts {
        client: Some(Arc::from("billing")),
        route: Some(Arc::from("payments")),
        route_credential: Some(Arc::from("payments-key")),
        credential: Some(CredentialFact {
            id: Arc::from("payments-key"),
            generation: Some(3),
            outcome: CredentialOutcome::Injected,
            obtained_at: Some(now() - Duration::from_millis(12_900)),
            expires_at: Some(now() + Duration::from_secs(3500)),
        }),
        upstream_status: Some(200),
        upstream_time: Some(Duration::from_micros(10_100)),
        upstream_attempts: 1,
        ..RequestFacts::default()
    }
}

fn record(facts: &RequestFacts, status: u16, error: Option<ErrorCode>) -> Value {
    let m = meta("/payments/x?secret=1");
    let r = RequestRecord::from_parts(
        &m,
        facts,
        StatusCode::from_u16(status).unwrap(),
        error,
        Duration::from_micros(12_345),
        false,
        now(),
    );
    r.with_json(|s| serde_json::from_str(s).unwrap())
}

#[test]
fn allow_with_injected_credential_is_the_full_documented_shape() {
    let v = record(&injected(), 200, None);
    assert_eq!(
        v,
        json!({
            "kind": "request",
            "ts": "2026-11-23T01:02:03.456Z",
            "request_id": "rid-1",
            "client": "billing",
            "route": "payments",
            "audit": {
                "host": "proxy.local:8080", "method": "GET", "path": "/payments/x",
                "remote_addr": "127.0.0.1:5555", "action": "allow",
                "status_code": 200, "duration_ms": 12.345
            },
            "rejected_by": null,
            "upstream_status": 200,
            "upstream_ms": 10.1,
            "denial_source": null,
            "credential": {
                "id": "payments-key", "generation": 3, "outcome": "injected",
                "token_age_s": 12, "token_ttl_s": 3500
            },
            "refresh": {"ran": false, "trigger": null, "result": null, "duration_ms": null, "error_code": null},
            "retry401": {"attempted": false, "outcome": null},
            "reason": null
        })
    );
}

#[test]
fn the_query_is_never_written() {
    let m = meta("/p?api_key=canary-query");
    let f = RequestFacts::default();
    let r = RequestRecord::from_parts(&m, &f, StatusCode::OK, None, Duration::ZERO, false, now());
    r.with_json(|s| assert!(!s.contains("canary") && !s.contains('?'), "{s}"));
}

#[test]
fn local_errors_reject_on_4xx_and_error_on_5xx_with_the_code_as_reason() {
    let cases = [
        (
            ErrorCode::ClientUnauthenticated,
            "reject",
            "client_unauthenticated",
        ),
        (ErrorCode::ClientForbidden, "reject", "client_forbidden"),
        (ErrorCode::NoRoute, "reject", "no_route"),
        (ErrorCode::BodyTooLarge, "reject", "body_too_large"),
        (ErrorCode::BadRequest, "reject", "bad_request"),
        (
            ErrorCode::UpstreamUnreachable,
            "error",
            "upstream_unreachable",
        ),
        (ErrorCode::UpstreamTimeout, "error", "upstream_timeout"),
        (ErrorCode::RequestTimeout, "reject", "request_timeout"),
        (
            ErrorCode::CredentialUnavailable,
            "error",
            "credential_unavailable",
        ),
        (ErrorCode::Internal, "error", "internal_error"),
    ];
    for (code, action, reason) in cases {
        let v = record(&RequestFacts::default(), code.status().as_u16(), Some(code));
        assert_eq!(v["audit"]["action"], action, "{code}");
        assert_eq!(v["reason"], reason, "{code}");
        assert_eq!(v["denial_source"], "local", "{code}");
        assert_eq!(v["audit"]["status_code"], code.status().as_u16());
    }
}

#[test]
fn credential_unavailable_after_a_failed_refresh_is_refresh_failed() {
    let mut f = RequestFacts {
        route_credential: Some(Arc::from("crm")),
        rejected_by: Some("credential"),
        credential: Some(CredentialFact {
            id: Arc::from("crm"),
            generation: None,
            outcome: CredentialOutcome::Unavailable,
            obtained_at: None,
            expires_at: None,
        }),
        refresh: Some(RefreshFact {
            trigger: "expired",
            ok: false,
            backing_off: false,
            duration: Duration::from_micros(1500),
            oauth_error: Some("invalid_grant".into()),
        }),
        ..RequestFacts::default()
    };
    let v = record(&f, 503, Some(ErrorCode::CredentialUnavailable));
    assert_eq!(v["reason"], "refresh_failed");
    assert_eq!(
        v["refresh"],
        json!({"ran": true, "trigger": "expired", "result": "error", "duration_ms": 1.5, "error_code": "invalid_grant"})
    );
    assert_eq!(
        v["credential"],
        json!({"id": "crm", "generation": null, "outcome": "unavailable", "token_age_s": null, "token_ttl_s": null})
    );
    // Backing off after failed attempts: no token call was made for this
    // request, and the record says so; the refresh is still the reason.
    f.refresh = Some(RefreshFact {
        trigger: "expired",
        ok: false,
        backing_off: true,
        duration: Duration::ZERO,
        oauth_error: None,
    });
    let v = record(&f, 503, Some(ErrorCode::CredentialUnavailable));
    assert_eq!(v["reason"], "refresh_failed");
    assert_eq!(
        v["refresh"],
        json!({"ran": false, "trigger": "expired", "result": "backing_off", "duration_ms": 0.0, "error_code": null})
    );
    // No refresh involved (e.g. a secret that does not resolve): the
    // plain code.
    f.refresh = None;
    assert_eq!(
        record(&f, 503, Some(ErrorCode::CredentialUnavailable))["reason"],
        "credential_unavailable"
    );
    // A refresh that worked does not make it a refresh failure.
    f.refresh = Some(RefreshFact {
        trigger: "expired",
        ok: true,
        backing_off: false,
        duration: Duration::ZERO,
        oauth_error: None,
    });
    assert_eq!(
        record(&f, 503, Some(ErrorCode::CredentialUnavailable))["reason"],
        "credential_unavailable"
    );
}

#[test]
fn upstream_401_and_403_to_an_injected_credential_are_denials() {
    let mut f = injected();
    for status in [401, 403] {
        f.upstream_status = Some(status);
        let v = record(&f, status, None);
        assert_eq!(v["reason"], "upstream_denied");
        assert_eq!(v["audit"]["action"], "allow");
        assert_eq!(v["denial_source"], "upstream");
    }
    f.retry = Some("still_unauthorized");
    f.upstream_status = Some(401);
    let v = record(&f, 401, None);
    assert_eq!(v["reason"], "upstream_denied");
    assert_eq!(
        v["retry401"],
        json!({"attempted": true, "outcome": "still_unauthorized"})
    );
    f.retry = Some("refresh_failed");
    assert_eq!(record(&f, 401, None)["reason"], "refresh_failed");
    // Whatever the route's retry status was.
    for status in [400, 429, 503] {
        f.upstream_status = Some(status);
        let v = record(&f, status, None);
        assert_eq!(v["reason"], "refresh_failed", "{status}");
        assert_eq!(v["denial_source"], "upstream", "{status}");
    }
}

#[test]
fn other_upstream_failures_are_upstream_errors() {
    // A 401 without an injected credential is the upstream's business.
    let mut f = injected();
    f.credential = None;
    f.route_credential = None;
    assert_eq!(record(&f, 401, None)["reason"], "upstream_error");
    let f = injected();
    for status in [400, 404, 429, 500, 503] {
        let v = record(&f, status, None);
        assert_eq!(v["reason"], "upstream_error", "{status}");
        assert_eq!(v["denial_source"], "upstream", "{status}");
        assert_eq!(v["audit"]["action"], "allow", "{status}");
    }
    for status in [200, 204, 301, 304] {
        let v = record(&f, status, None);
        assert_eq!(v["reason"], Value::Null, "{status}");
        assert_eq!(v["denial_source"], Value::Null, "{status}");
    }
}

#[test]
fn a_cancelled_request_is_499_client_cancel_without_reason() {
    let m = meta("/payments/slow");
    let f = injected();
    let r = RequestRecord::from_parts(
        &m,
        &f,
        StatusCode::OK,
        None,
        Duration::from_secs(1),
        true,
        now(),
    );
    assert_eq!(r.audit.action, Action::ClientCancel);
    assert_eq!(r.audit.status_code, 499);
    assert_eq!(r.reason, None);
    assert_eq!(r.denial_source, None);
}

#[test]
fn credential_outcome_none_unavailable_and_ids() {
    // No credential on the route.
    let v = record(&RequestFacts::default(), 404, Some(ErrorCode::NoRoute));
    assert_eq!(
        v["credential"],
        json!({"id": null, "generation": null, "outcome": "none", "token_age_s": null, "token_ttl_s": null})
    );
    // The route has one but the request never got to it.
    let f = RequestFacts {
        route_credential: Some(Arc::from("k")),
        rejected_by: Some("authorize"),
        ..RequestFacts::default()
    };
    let v = record(&f, 403, Some(ErrorCode::ClientForbidden));
    assert_eq!(v["credential"]["id"], "k");
    assert_eq!(v["credential"]["outcome"], "none");
    assert_eq!(v["rejected_by"], "authorize");
    // Obtained but could not be written (inject refused it).
    let f = RequestFacts {
        route_credential: Some(Arc::from("k")),
        rejected_by: Some("credential"),
        ..RequestFacts::default()
    };
    let v = record(&f, 503, Some(ErrorCode::CredentialUnavailable));
    assert_eq!(v["credential"]["outcome"], "unavailable");
}

#[test]
fn token_ttl_goes_negative_once_expired_and_static_has_no_ttl() {
    let mut f = injected();
    if let Some(c) = f.credential.as_mut() {
        c.expires_at = Some(now() - Duration::from_secs(5));
    }
    assert_eq!(record(&f, 200, None)["credential"]["token_ttl_s"], -5);
    if let Some(c) = f.credential.as_mut() {
        c.expires_at = None;
    }
    let v = record(&f, 200, None);
    assert_eq!(v["credential"]["token_ttl_s"], Value::Null);
    assert_eq!(v["credential"]["token_age_s"], 12);
}

#[test]
fn host_falls_back_to_the_uri_authority_and_missing_context_is_null() {
    let req = Request::get("http://api.example.com:8443/v1/x?q=1")
        .body(())
        .unwrap();
    let m = RequestMeta::from_request(&req);
    assert_eq!(m.host(), "api.example.com:8443");
    let f = RequestFacts::default();
    let r = RequestRecord::from_parts(&m, &f, StatusCode::OK, None, Duration::ZERO, false, now());
    let v: Value = r.with_json(|s| serde_json::from_str(s).unwrap());
    assert_eq!(v["audit"]["path"], "/v1/x");
    assert_eq!(v["audit"]["remote_addr"], Value::Null);
    assert_eq!(v["request_id"], Value::Null);
    assert_eq!(v["credential"]["outcome"], "none");
}

/// A `Host` header or request id with bytes JSON must escape is written
/// escaped (the line still parses, the value is what the caller sent); a
/// `Host` that is not UTF-8 falls back to the URI's authority.
#[test]
fn host_and_request_id_are_escaped_and_non_utf8_host_falls_back() {
    let mut req = Request::get("http://api.example.com/v1/x")
        .header("host", HeaderValue::from_bytes(b"a\"b\\c\td:1").unwrap())
        .body(())
        .unwrap();
    RequestContext::of_mut(req.extensions_mut()).id =
        Some(RequestId(HeaderValue::from_static("id-\"quoted\"-\\")));
    let m = RequestMeta::from_request(&req);
    let f = RequestFacts::default();
    let r = RequestRecord::from_parts(&m, &f, StatusCode::OK, None, Duration::ZERO, false, now());
    let line = r.with_json(str::to_owned);
    assert_eq!(line, serde_json::to_string(&r).unwrap());
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["audit"]["host"], "a\"b\\c\td:1");
    assert_eq!(v["request_id"], "id-\"quoted\"-\\");

    let req = Request::get("http://api.example.com/v1/x")
        .header("host", HeaderValue::from_bytes(b"caf\xe9.example").unwrap())
        .body(())
        .unwrap();
    assert_eq!(RequestMeta::from_request(&req).host(), "api.example.com");
}

#[test]
fn every_key_is_present_on_every_record() {
    let expected = [
        "audit",
        "client",
        "credential",
        "denial_source",
        "kind",
        "reason",
        "refresh",
        "rejected_by",
        "request_id",
        "retry401",
        "route",
        "ts",
        "upstream_ms",
        "upstream_status",
    ];
    for v in [
        record(&RequestFacts::default(), 404, Some(ErrorCode::NoRoute)),
        record(&injected(), 200, None),
    ] {
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert!(v["credential"].is_object() && v["refresh"].is_object());
        assert!(v["retry401"].is_object());
    }
}

#[test]
fn refresh_record_shape() {
    let event = RefreshEvent {
        credential: Arc::from("crm"),
        trigger: "proactive",
        ok: false,
        adopted: false,
        duration: Duration::from_millis(12),
        error: Some("token endpoint refused the refresh token".into()),
        oauth_error: Some("invalid_grant".into()),
        generation: 4,
        expires_at: Some(now()),
        retired: false,
    };
    let r = RefreshRecord::from_event(&event, now());
    let v: Value = r.with_json(|s| serde_json::from_str(s).unwrap());
    assert_eq!(
        v,
        json!({
            "kind": "refresh", "ts": "2026-11-23T01:02:03.456Z", "credential": "crm",
            "trigger": "proactive", "result": "error", "adopted": false, "duration_ms": 12.0,
            "error": "token endpoint refused the refresh token", "error_code": "invalid_grant",
            "generation": 4, "expires_at": "2026-11-23T01:02:03.456Z"
        })
    );
}

#[test]
fn with_json_survives_reentry() {
    let f = injected();
    let m = meta("/a");
    let r = RequestRecord::from_parts(&m, &f, StatusCode::OK, None, Duration::ZERO, false, now());
    let (outer, inner) = r.with_json(|outer| {
        let inner = r.with_json(str::to_owned);
        (outer.to_owned(), inner)
    });
    assert_eq!(outer, inner);
    // The buffer is reused afterwards.
    assert_eq!(r.with_json(str::to_owned), outer);
}

#[test]
fn secs_between_and_millis() {
    let t = now();
    assert_eq!(secs_between(t, t + Duration::from_millis(1999)), 1);
    assert_eq!(secs_between(t + Duration::from_secs(3), t), -3);
    // Expired 0.6 s ago: -1, never 0 (not yet expired).
    assert_eq!(secs_between(t + Duration::from_millis(600), t), -1);
    assert_eq!(secs_between(t + Duration::from_millis(3001), t), -4);
    assert!((millis(Duration::from_nanos(1_234_567)) - 1.234).abs() < 1e-9);
    // The u64 conversion agrees with the u128 one up to 2^64 us.
    for d in [
        Duration::ZERO,
        Duration::from_nanos(999),
        Duration::from_micros(123_456_789),
        Duration::from_micros(u64::MAX),
    ] {
        assert_eq!(
            millis(d).to_bits(),
            (d.as_micros() as f64 / 1000.0).to_bits()
        );
    }
    assert_eq!(millis(Duration::MAX), u64::MAX as f64 / 1000.0);
}

/// The hand-written request JSON (record/write.rs) is byte for byte what
/// serde_json makes of the derived impl, over every optional field set and
/// unset, every action, and strings that need escaping.
#[test]
fn hand_written_json_is_exactly_serde_jsons() {
    let odd = "we\"ird\\ \u{1} \n é ✓ </script>";
    /// Facts, URI, status, the proxy's error code, cancelled, duration.
    type Case = (
        RequestFacts,
        &'static str,
        u16,
        Option<ErrorCode>,
        bool,
        Duration,
    );
    let mut cases: Vec<Case> = vec![
        (
            injected(),
            "/payments/x?secret=1",
            200,
            None,
            false,
            Duration::from_micros(12_345),
        ),
        (
            RequestFacts::default(),
            "/",
            404,
            Some(ErrorCode::NoRoute),
            false,
            Duration::ZERO,
        ),
        (
            RequestFacts::default(),
            "/x",
            200,
            None,
            true,
            Duration::from_secs(3),
        ),
        (injected(), "/a", 401, None, false, Duration::from_nanos(1)),
        (
            injected(),
            "/a",
            503,
            Some(ErrorCode::CredentialUnavailable),
            false,
            Duration::MAX,
        ),
    ];
    let mut full = injected();
    full.client = Some(Arc::from(odd));
    full.route = Some(Arc::from(odd));
    full.rejected_by = Some("credential");
    full.retry = Some("recovered");
    full.refresh = Some(RefreshFact {
        trigger: "forced",
        ok: false,
        backing_off: false,
        duration: Duration::from_micros(1_234_567),
        oauth_error: Some(odd.into()),
    });
    if let Some(c) = &mut full.credential {
        c.expires_at = Some(now() - Duration::from_secs(5));
        c.generation = Some(u64::MAX);
    }
    cases.push((
        full,
        "/p%22ath/%5C",
        500,
        None,
        false,
        Duration::from_micros(999),
    ));
    let no_cred = RequestFacts {
        route_credential: Some(Arc::from("k")),
        upstream_status: Some(502),
        upstream_time: Some(Duration::from_micros(1)),
        ..RequestFacts::default()
    };
    cases.push((
        no_cred,
        "/z",
        502,
        Some(ErrorCode::UpstreamUnreachable),
        false,
        Duration::ZERO,
    ));

    for (facts, uri, status, error, cancelled, duration) in &cases {
        for with_context in [true, false] {
            // Without the listener's context: no host, address or id.
            let m = if with_context {
                meta(uri)
            } else {
                RequestMeta::from_request(&Request::get(*uri).body(()).unwrap())
            };
            let r = RequestRecord::from_parts(
                &m,
                facts,
                StatusCode::from_u16(*status).unwrap(),
                *error,
                *duration,
                *cancelled,
                now(),
            );
            let expected = serde_json::to_string(&r).unwrap();
            r.with_json(|s| assert_eq!(s, expected));
            // Fast paths for the usual `kind` and `outcome`; any other still goes out escaped.
            for odd in [odd, "requests", "reques", "inject", "injected ", ""] {
                let mut r = r.clone();
                (r.kind, r.credential.outcome) = (odd, odd);
                let expected = serde_json::to_string(&r).unwrap();
                r.with_json(|s| assert_eq!(s, expected));
            }
        }
    }
}

/// The hand-written time stamps (cached per second) and addresses match
/// serde_json's output of the derived impl too.
#[test]
fn hand_written_ts_and_addresses_are_exactly_serde_jsons() {
    let facts = injected();
    let times = [
        now(),
        now() + Duration::from_millis(1),
        now() + Duration::from_millis(999),
        now() + Duration::from_millis(1007),
        now() + Duration::from_micros(1_999_999),
        now(),
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799),
    ];
    let addrs = [
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.1.20.3:80",
        "[::1]:8080",
        "[2001:db8::ff00:42:8329%3]:443",
    ];
    for (i, t) in times.into_iter().enumerate() {
        let mut req = Request::get("/x").body(()).unwrap();
        RequestContext::of_mut(req.extensions_mut()).conn = Some(ConnInfo {
            remote_addr: addrs[i % addrs.len()].parse().unwrap(),
            local_addr: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
        });
        let m = RequestMeta::from_request(&req);
        let r =
            RequestRecord::from_parts(&m, &facts, StatusCode::OK, None, Duration::ZERO, false, t);
        let expected = serde_json::to_string(&r).unwrap();
        r.with_json(|s| assert_eq!(s, expected));
    }
}

mod long;
