//! One end-to-end test per `reason`, plus allow, client cancel and a
//! proactive refresh: each compares the whole record.

use super::*;

#[tokio::test]
async fn allow_with_an_oauth2_credential_records_generation_age_and_ttl() {
    let ep = endpoint(3600).await;
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "al",
        "[al]",
        &oauth("al-cred", &ep, ""),
        &route("al", &up.url(), "    credential: al-cred\n"),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/al/x?token=q-canary").await, 200);
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/al/y").await, 200);
    let recs = sink.requests();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let cred = json!({"id": "al-cred", "generation": 1, "outcome": "injected", "token_age_s": 0, "token_ttl_s": "<ttl>"});
    let norm_ttl = |v: Value| {
        let mut v = norm(v);
        set(&mut v, &["credential", "token_ttl_s"], "<ttl>", |t| {
            assert!(
                t.as_i64().is_some_and(|t| (3590..=3600).contains(&t)),
                "ttl {t}"
            );
        });
        v
    };
    // The first request waited for the first token.
    assert_eq!(
        norm_ttl(recs[0].clone()),
        expected(
            "GET",
            "/al/x",
            "allow",
            200,
            json!({
                "client": "billing", "route": "al", "upstream_status": 200, "upstream_ms": "<ms>",
                "credential": cred,
                "refresh": {"ran": true, "trigger": "expired", "result": "ok", "duration_ms": "<ms>", "error_code": null},
            })
        )
    );
    assert_eq!(
        norm_ttl(recs[1].clone()),
        expected(
            "GET",
            "/al/y",
            "allow",
            200,
            json!({
                "client": "billing", "route": "al", "upstream_status": 200, "upstream_ms": "<ms>",
                "credential": cred,
            })
        )
    );
    // The fetch of that token left a refresh record.
    let refreshes = sink.refreshes();
    assert_eq!(refreshes.len(), 1, "{refreshes:#?}");
    assert_eq!(
        norm(refreshes[0].clone()),
        json!({"kind": "refresh", "ts": "<ts>", "credential": "al-cred", "trigger": "expired",
               "result": "ok", "adopted": false, "duration_ms": "<ms>", "error": null,
               "error_code": null, "generation": 1, "expires_at": "<ts>"})
    );
}

#[tokio::test]
async fn upstream_denied() {
    let up = status_upstream(401).await;
    let (p, sink) = start(&setup(
        "ud",
        "[ud]",
        "",
        &route(
            "ud",
            &up.url(),
            "    credential: ud-key\n    retry: { enabled: false }\n",
        ),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/ud/x").await, 401);
    assert_eq!(
        norm_age(only_request(&sink)),
        expected(
            "GET",
            "/ud/x",
            "allow",
            401,
            json!({
                "client": "billing", "route": "ud", "upstream_status": 401, "upstream_ms": "<ms>",
                "denial_source": "upstream", "credential": static_injected("ud-key"),
                "reason": "upstream_denied",
            })
        )
    );
}

#[tokio::test]
async fn credential_unavailable() {
    let up = echo_upstream().await;
    let creds = format!("  - id: cu-missing\n    static: {{ env: {UNSET_VAR} }}\n");
    let (p, sink) = start(&setup(
        "cu",
        "[cu]",
        &creds,
        &route("cu", &up.url(), "    credential: cu-missing\n"),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/cu/x").await, 503);
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "GET",
            "/cu/x",
            "error",
            503,
            json!({
                "client": "billing", "route": "cu", "rejected_by": "credential",
                "denial_source": "local", "reason": "credential_unavailable",
                "credential": {"id": "cu-missing", "generation": null, "outcome": "unavailable", "token_age_s": null, "token_ttl_s": null},
            })
        )
    );
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn refresh_failed() {
    let ep = endpoint(3600).await;
    ep.set_failure(Some(Failure::InvalidGrant));
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "rf",
        "[rf]",
        // Backing off for an hour after the failure: the second request
        // below finds the credential backing off, whatever the machine's
        // speed.
        &oauth(
            "rf-cred",
            &ep,
            "    refresh: { backoff_min: 1h, backoff_max: 1h }\n",
        ),
        &route("rf", &up.url(), "    credential: rf-cred\n"),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/rf/x").await, 503);
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "GET",
            "/rf/x",
            "error",
            503,
            json!({
                "client": "billing", "route": "rf", "rejected_by": "credential",
                "denial_source": "local", "reason": "refresh_failed",
                "credential": {"id": "rf-cred", "generation": null, "outcome": "unavailable", "token_age_s": null, "token_ttl_s": null},
                "refresh": {"ran": true, "trigger": "expired", "result": "error", "duration_ms": "<ms>", "error_code": "invalid_grant"},
            })
        )
    );
    let r = wait_for(&sink, |r| {
        r.iter().find(|v| v["kind"] == "refresh").cloned()
    })
    .await;
    let mut r = norm(r);
    set(&mut r, &["error"], "<error>", |e| {
        assert!(
            e.as_str().is_some_and(|e| e.contains("invalid_grant")),
            "{e}"
        );
    });
    assert_eq!(
        r,
        json!({"kind": "refresh", "ts": "<ts>", "credential": "rf-cred", "trigger": "expired",
               "result": "error", "adopted": false, "duration_ms": "<ms>", "error": "<error>",
               "error_code": "invalid_grant", "generation": 0, "expires_at": null})
    );
    // The next request makes no token call: the record says no refresh
    // ran (it did not), and why the request failed all the same, with the
    // last attempt's error code (someone must log in again).
    let calls = ep.calls();
    sink.take();
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/rf/y").await, 503);
    assert_eq!(ep.calls(), calls);
    let v = norm(only_request(&sink));
    assert_eq!(v["reason"], "refresh_failed", "{v:#}");
    assert_eq!(
        v["refresh"],
        json!({"ran": false, "trigger": "expired", "result": "backing_off", "duration_ms": "<ms>", "error_code": "invalid_grant"})
    );
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn upstream_unreachable() {
    let (p, sink) = start(&setup(
        "uu",
        "[uu]",
        "",
        &route("uu", &closed_port_url().await, "    credential: uu-key\n"),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/uu/x").await, 502);
    assert_eq!(
        norm_age(only_request(&sink)),
        expected(
            "GET",
            "/uu/x",
            "error",
            502,
            json!({
                "client": "billing", "route": "uu", "upstream_ms": "<ms>",
                "denial_source": "local", "reason": "upstream_unreachable",
                "credential": static_injected("uu-key"),
            })
        )
    );
}

#[tokio::test]
async fn upstream_timeout() {
    let up = slow_upstream(Duration::from_secs(3)).await;
    let (p, sink) = start(&setup(
        "ut",
        "[ut]",
        "",
        &route(
            "ut",
            &up.url(),
            "    credential: ut-key\n    timeout: 200ms\n",
        ),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/ut/x").await, 504);
    assert_eq!(
        norm_age(only_request(&sink)),
        expected(
            "GET",
            "/ut/x",
            "error",
            504,
            json!({
                "client": "billing", "route": "ut", "upstream_ms": "<ms>",
                "denial_source": "local", "reason": "upstream_timeout",
                "credential": static_injected("ut-key"),
            })
        )
    );
}

#[tokio::test]
async fn client_unauthenticated() {
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "cn",
        "[cn]",
        "",
        &route("cn", &up.url(), "    credential: cn-key\n"),
    ))
    .await;
    assert_eq!(get(&p.url("/cn/x"), &[]).await.0, 401);
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "GET",
            "/cn/x",
            "reject",
            401,
            json!({
                "route": "cn", "rejected_by": "authorize", "denial_source": "local",
                "reason": "client_unauthenticated",
                "credential": {"id": "cn-key", "generation": null, "outcome": "none", "token_age_s": null, "token_ttl_s": null},
            })
        )
    );
}

#[tokio::test]
async fn client_forbidden() {
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "cf",
        "[cf]",
        "",
        &route("cf", &up.url(), "    credential: cf-key\n"),
    ))
    .await;
    assert_eq!(get_as(&p, OTHER_TOKEN, "/cf/x").await, 403);
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "GET",
            "/cf/x",
            "reject",
            403,
            json!({
                "client": "search", "route": "cf", "rejected_by": "authorize",
                "denial_source": "local", "reason": "client_forbidden",
                "credential": {"id": "cf-key", "generation": null, "outcome": "none", "token_age_s": null, "token_ttl_s": null},
            })
        )
    );
}

#[tokio::test]
async fn no_route() {
    let up = echo_upstream().await;
    let (p, sink) = start(&setup("nr", "[nr]", "", &route("nr", &up.url(), ""))).await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/elsewhere/x?q=1").await, 404);
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "GET",
            "/elsewhere/x",
            "reject",
            404,
            json!({
                "client": "billing", "rejected_by": "router", "denial_source": "local",
                "reason": "no_route",
            })
        )
    );
}

/// `TRACE` is refused before routing (its answer would echo the injected
/// credential): 405, never forwarded.
#[tokio::test]
async fn method_not_allowed() {
    let up = echo_upstream().await;
    let (p, sink) = start(&setup("mn", "[mn]", "", &route("mn", &up.url(), ""))).await;
    let req = Request::builder()
        .method("TRACE")
        .uri(p.url("/mn/x?q=1"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, 405);
    assert_eq!(headers["x-latchkey-error"], "method_not_allowed");
    assert!(headers.contains_key("allow"));
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "TRACE",
            "/mn/x",
            "reject",
            405,
            json!({
                "client": "billing", "rejected_by": "router", "denial_source": "local",
                "reason": "method_not_allowed",
            })
        )
    );
    assert_eq!(up.hit_count(), 0);
}

/// `CONNECT` asks for a tunnel: refused the same way, with a message that
/// says so, even where a host-only route would match its authority.
#[tokio::test]
async fn connect_is_not_allowed() {
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "cn",
        "[cn]",
        "",
        &format!(
            "  - id: cn\n    match: {{ host: 127.0.0.1 }}\n    upstream: {}\n    credential: cn-key\n",
            up.url()
        ),
    ))
    .await;
    let authority = p
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert!(
        answer.contains("x-latchkey-error: method_not_allowed"),
        "{answer}"
    );
    assert!(answer.contains("opens no tunnels"), "{answer}");
    let record = only_request(&sink);
    assert_eq!(record["audit"]["method"], "CONNECT");
    assert_eq!(record["audit"]["status_code"], 405);
    assert_eq!(record["rejected_by"], "router");
    assert_eq!(record["reason"], "method_not_allowed");
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn body_too_large() {
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "bt",
        "[bt]",
        "",
        &route(
            "bt",
            &up.url(),
            "    credential: bt-key\n    max_request_body: 16\n",
        ),
    ))
    .await;
    let req = Request::post(p.url("/bt/upload"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    assert_eq!(send(req).await.0, 413);
    assert_eq!(
        norm(only_request(&sink)),
        expected(
            "POST",
            "/bt/upload",
            "reject",
            413,
            json!({
                "client": "billing", "route": "bt", "rejected_by": "limits",
                "denial_source": "local", "reason": "body_too_large",
                "credential": {"id": "bt-key", "generation": null, "outcome": "none", "token_age_s": null, "token_ttl_s": null},
            })
        )
    );
    assert_eq!(up.hit_count(), 0);
}

/// A path whose rest, after a stripped prefix that does not end in `/`,
/// starts with a dot segment is refused (it would climb out of the
/// upstream's base path); the record names the router as the stage.
#[tokio::test]
async fn a_dot_segment_after_a_stripped_prefix_is_refused_by_the_router() {
    let up = echo_upstream().await;
    let route = format!(
        "  - id: sp\n    match: {{ path_prefix: /sp }}\n    strip_prefix: true\n    upstream: {}/base\n    credential: sp-key\n",
        up.url()
    );
    let (p, sink) = start(&setup("sp", "[sp]", "", &route)).await;
    let req = Request::get(p.url("/sp../admin"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.0, 400);
    let record = only_request(&sink);
    assert_eq!(record["rejected_by"], "router", "{record}");
    assert_eq!(record["reason"], "bad_request", "{record}");
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn request_timeout() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    // The echo upstream reads the whole body before it answers; the caller
    // sends 10 of the 100 bytes it declared and then nothing.
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "rt",
        "[rt]",
        "",
        &route(
            "rt",
            &up.url(),
            "    credential: rt-key
    timeout: 200ms
    retry: { max_replay_body: 1 }
",
        ),
    ))
    .await;
    let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
        Bytes::from_static(b"0123456789"),
    ))]);
    let stalled = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = Request::post(p.url("/rt/upload"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .header("content-length", 100)
        .body(StreamBody::new(stalled))
        .unwrap();
    let resp = with_timeout(client.request(req)).await.unwrap();
    assert_eq!(resp.status(), 408);
    assert_eq!(
        norm_age(only_request(&sink)),
        expected(
            "POST",
            "/rt/upload",
            "reject",
            408,
            json!({
                "client": "billing", "route": "rt", "upstream_ms": "<ms>",
                "rejected_by": "request_body",
                "denial_source": "local", "reason": "request_timeout",
                "credential": static_injected("rt-key"),
            })
        )
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_is_recorded_as_client_cancel() {
    let up = slow_upstream(Duration::from_secs(5)).await;
    let (p, sink) = start(&setup(
        "cc",
        "[cc]",
        "",
        &route("cc", &up.url(), "    credential: cc-key\n"),
    ))
    .await;
    let conn = held_at_upstream(&p, &up, "/cc/slow").await;
    // Hang up once the request is at the upstream.
    drop(conn);
    let v = wait_for(&sink, |r| {
        r.iter().find(|v| v["kind"] == "request").cloned()
    })
    .await;
    assert_eq!(
        norm_age(v),
        expected(
            "GET",
            "/cc/slow",
            "client_cancel",
            499,
            json!({
                "client": "billing", "route": "cc", "credential": static_injected("cc-key"),
            })
        )
    );
    assert!(
        sink.requests()[0]["audit"]["duration_ms"].as_f64().unwrap() < 4000.0,
        "recorded when the caller left, not when the upstream answered"
    );
}

#[tokio::test]
async fn a_proactive_refresh_leaves_a_refresh_record() {
    let ep = endpoint(2).await;
    let up = echo_upstream().await;
    let (p, sink) = start(&setup(
        "pr",
        "[pr]",
        &oauth("pr-cred", &ep, ""),
        &route("pr", &up.url(), "    credential: pr-cred\n"),
    ))
    .await;
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/pr/x").await, 200);
    // A 2 s token is refreshed at half its life, in the background.
    let r = wait_for(&sink, |r| {
        r.iter()
            .find(|v| v["kind"] == "refresh" && v["trigger"] == "proactive")
            .cloned()
    })
    .await;
    assert_eq!(
        norm(r),
        json!({"kind": "refresh", "ts": "<ts>", "credential": "pr-cred", "trigger": "proactive",
               "result": "ok", "adopted": false, "duration_ms": "<ms>", "error": null,
               "error_code": null, "generation": 2, "expires_at": "<ts>"})
    );
    // Requests after it use the new generation without waiting.
    assert_eq!(get_as(&p, CLIENT_TOKEN, "/pr/y").await, 200);
    let last = sink.requests().pop().unwrap_or_default();
    assert_eq!(last["credential"]["generation"], 2);
    assert_eq!(last["refresh"]["ran"], false);
}
