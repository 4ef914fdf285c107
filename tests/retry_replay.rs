//! End-to-end tests of the 401 retry (`retry401-layer` as wired by
//! `LatchkeyLayers`) when it recovers: a whole proxy in-process, a real OAuth2
//! token endpoint and an upstream that accepts only the endpoint's currently
//! valid access tokens. A revocation under 200 concurrent requests is absorbed
//! by one refresh, a POST body is replayed byte-identical, and a body over the
//! replay limit streams through once and is not replayed.
//!
//! Real time throughout (the proxy runs real sockets); tokens live an hour,
//! so nothing expires during a test and every refresh seen is a forced one.
//! The token endpoint, the token-checking upstream and the config helpers are
//! in `support/retry.rs`.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use tokio::task::JoinSet;

use std::sync::Arc;
use support::harness::{TestProxy, start_proxy};
use support::retry::{
    AuthUpstream, Hit, assert_upstream_rejection, auth_upstream, config, connect, endpoint,
    retry_header, route, static_config, warm_up,
};
use support::token_endpoint::TokenEndpoint;
use support::{echoed_header, json, send, with_timeout};

/// A token endpoint, an upstream that accepts only its current token, and
/// a proxy with route `api` on `/api/` to it.
async fn api_route() -> (Arc<TokenEndpoint>, AuthUpstream, TestProxy) {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let p = start_proxy(&config(
        &ep,
        "",
        "",
        &route("api", "/api/", &up.url(), "api", ""),
    ))
    .await;
    (ep, up, p)
}

/// [`api_route`] after one request (its token, as `Bearer ...`) and the
/// revocation of that token at the endpoint.
async fn revoked_after_warm_up() -> (Arc<TokenEndpoint>, AuthUpstream, TestProxy, String) {
    let (ep, up, p) = api_route().await;
    let old = warm_up(&p, &ep, "/api/warm").await;
    ep.revoke_access_tokens();
    (ep, up, p, old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_under_200_concurrent_requests_is_absorbed_by_one_refresh() {
    const N: usize = 200;
    let (ep, up, p) = api_route().await;
    let old = warm_up(&p, &ep, "/api/warm").await;

    // Connect first, one at a time, then send all requests at once: the
    // burst hits the proxy's credential path, not its listen backlog.
    let addr = p.running.as_ref().unwrap().proxy_addr;
    let mut senders = Vec::with_capacity(N);
    for _ in 0..N {
        senders.push(with_timeout(connect(addr)).await);
    }
    ep.revoke_access_tokens();
    let mut set = JoinSet::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let req = Request::get(format!("/api/c/{i}"))
            .header(header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        set.spawn(async move {
            let resp = sender.send_request(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (i, (parts.status, parts.headers, body))
        });
    }
    let mut responses = Vec::with_capacity(N);
    while let Some(r) = with_timeout(set.join_next()).await {
        responses.push(r.unwrap());
    }
    responses.sort_by_key(|(i, _)| *i);

    let failed: Vec<String> = responses
        .iter()
        .filter(|(_, (s, _, _))| *s != StatusCode::OK)
        .map(|(i, (s, h, b))| {
            format!(
                "#{i}: {s} retry={:?} {}",
                retry_header(h),
                String::from_utf8_lossy(b)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} callers saw a non-200: {failed:?}",
        failed.len()
    );
    assert_eq!(ep.calls(), 2, "exactly one refresh for the whole burst");
    assert_eq!(ep.invalid_grants(), 0);
    let new = format!("Bearer {}", ep.current_access_token());
    assert_ne!(new, old);

    // What the upstream saw per caller: the rejected first attempts, then
    // exactly one accepted attempt each.
    let mut seen: HashMap<String, Vec<Hit>> = HashMap::new();
    for h in up.hits_under("/api/c/") {
        seen.entry(h.path.clone()).or_default().push(h);
    }
    let mut replayed = 0;
    for (i, (_, headers, body)) in &responses {
        let v = json(body);
        let path = format!("/api/c/{i}");
        assert_eq!(v["path"], path.as_str());
        assert_eq!(
            echoed_header(&v, "authorization").as_deref(),
            Some(new.as_str()),
            "#{i} was answered with the refreshed token"
        );
        let hits = &seen[&path];
        let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
        match statuses.as_slice() {
            [200] => assert_eq!(
                retry_header(headers),
                None,
                "#{i} was accepted at once and carries no retry header"
            ),
            [401, 200] => {
                replayed += 1;
                assert_eq!(
                    hits[0].token.as_deref(),
                    old.strip_prefix("Bearer "),
                    "#{i}: the rejected attempt carried the revoked token"
                );
                assert_eq!(retry_header(headers), Some("recovered"), "#{i}");
            }
            other => panic!("#{i}: upstream answered {other:?}; expected [200] or [401, 200]"),
        }
    }
    assert!(
        replayed >= 1,
        "the first request after the revocation carried the revoked token"
    );
    assert_eq!(up.hit_count(), 1 + N + replayed);
    p.stop().await;
}

#[tokio::test]
async fn post_json_body_is_replayed_byte_identical() {
    let (ep, up, p, old) = revoked_after_warm_up().await;

    let body = Bytes::from_static(
        "{\"order\":{\"id\":42,\"items\":[\"a\",\"b\"],\"note\":\"caf\u{e9} \u{2603}\"},\"pad\":\"                \"}"
            .as_bytes(),
    );
    let req = Request::post(p.url("/api/orders?dry_run=1"))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header("x-custom-trace", "trace-7f3a")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(body.clone()))
        .unwrap();
    let (status, headers, resp_body) = send(req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&resp_body)
    );
    assert_eq!(retry_header(&headers), Some("recovered"));
    let new = format!("Bearer {}", ep.current_access_token());
    assert_ne!(new, old);
    assert_eq!(ep.calls(), 2);
    let v = json(&resp_body);
    assert_eq!(v["body"], std::str::from_utf8(&body).unwrap());
    assert_eq!(v["body_len"], body.len());

    let hits = up.hits_under("/api/orders");
    assert_eq!(hits.len(), 2, "one rejected attempt and one replay");
    let (first, replay) = (&hits[0], &hits[1]);
    assert_eq!((first.status, replay.status), (401, 200));
    assert_eq!(first.token.as_deref(), old.strip_prefix("Bearer "));
    assert_eq!(replay.token.as_deref(), new.strip_prefix("Bearer "));
    assert_eq!(first.body, body, "first attempt body");
    assert_eq!(replay.body, body, "replay body is byte-identical");
    assert_eq!(first.method, "POST");
    assert_eq!(replay.method, "POST");
    assert_eq!(
        replay.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json; charset=utf-8"
    );
    assert_eq!(replay.headers.get("x-custom-trace").unwrap(), "trace-7f3a");
    let strip = |h: &HeaderMap| {
        let mut h = h.clone();
        h.remove(header::AUTHORIZATION);
        h
    };
    assert_eq!(
        strip(&first.headers),
        strip(&replay.headers),
        "the replay's headers equal the first attempt's apart from the credential"
    );
    p.stop().await;
}

#[tokio::test]
async fn two_mib_body_is_not_replayed_but_its_refused_token_is_replaced() {
    let (ep, up, p, _) = revoked_after_warm_up().await;

    let body: Bytes = (0..2 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let req = Request::post(p.url("/api/upload"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(body.clone()))
        .unwrap();
    let (status, headers, resp_body) = send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry_header(&headers), Some("not_replayable"));
    assert_upstream_rejection(&headers, &resp_body);

    let hits = up.hits_under("/api/upload");
    assert_eq!(hits.len(), 1, "no replay");
    assert_eq!(hits[0].body.len(), body.len());
    assert!(
        hits[0].body == body,
        "the upstream got the whole body intact"
    );
    // Not replayed, but the refused token is replaced for the requests
    // after it: one forced refresh, started in the background.
    with_timeout(async {
        while ep.calls() < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (status, headers, body) = support::get(&p.url("/api/after"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        retry_header(&headers),
        None,
        "the next request has the new token"
    );
    assert_eq!(ep.calls(), 2, "one refresh");
    p.stop().await;
}

/// A chunked request body that arrives whole (one write, two chunks) is
/// read ahead and replayed after a 401, like one with a `Content-Length`.
#[tokio::test]
async fn a_chunked_body_is_replayed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_ep, up, p, _) = revoked_after_warm_up().await;

    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        b"POST /api/chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    with_timeout(conn.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-latchkey-retry: recovered"), "{answer}");
    let hits = up.hits_under("/api/chunks");
    assert_eq!(hits.len(), 2, "one rejected attempt and one replay");
    assert_eq!(hits[0].body, "abcdefghij");
    assert_eq!(hits[1].body, "abcdefghij");
    p.stop().await;
}

/// README: "Static keys are not replayed. ... the upstream's answer stands,
/// without `x-latchkey-retry`", whether or not the body could have been
/// replayed: a body over the replay cap gets no `not_replayable` either.
#[tokio::test]
async fn static_key_with_a_body_over_the_cap_gets_no_retry_header() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let yaml = static_config(&route(
        "api",
        "/api/",
        &up.url(),
        "key",
        "    retry: { max_replay_body: 16 }",
    ));
    let p = start_proxy(&yaml).await;
    // Within the cap: the upstream's answer, no header (as documented).
    let small = Request::post(p.url("/api/small"))
        .header(header::CONTENT_LENGTH, 4)
        .body(Full::new(Bytes::from_static(b"abcd")))
        .unwrap();
    let (status, headers, body) = send(small).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_upstream_rejection(&headers, &body);
    assert_eq!(retry_header(&headers), None, "small body, static key");
    // Over the cap: same credential, same upstream answer.
    let big = Bytes::from(vec![b'x'; 64]);
    let req = Request::post(p.url("/api/big"))
        .header(header::CONTENT_LENGTH, big.len())
        .body(Full::new(big))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_upstream_rejection(&headers, &body);
    assert_eq!(
        retry_header(&headers),
        None,
        "a static key has no other credential: no x-latchkey-retry"
    );
    p.stop().await;
}
