//! `latchkey demo`: the first-run experience, with nothing to install.
//!
//! Starts, on loopback only, a small upstream API that reports what it
//! received, an OAuth2 token endpoint issuing 4-second tokens, and latchkey
//! in front of them with a protected route (header injection), a public route
//! (query injection) and an OAuth2 route. Sends requests as a workload would:
//! a proactive refresh under traffic, then a token revoked at the provider
//! absorbed by one refresh and one replay. Prints what happened, and exits 0
//! if every check held.

mod servers;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use servers::{TOKEN_LIFETIME_S, TokenEndpoint, start_upstream};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

const UPSTREAM_KEY: &str = "demo-upstream-api-key-7f3a";
const PROXY_TOKEN: &str = "demo-workload-token-41c2";

/// Runs the demo and reports success as the exit code.
pub async fn run() -> ExitCode {
    match demo().await {
        Ok(true) => {
            println!("\nall checks passed.");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nsome checks FAILED (see above).");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn demo() -> Result<bool, BoxError> {
    let tokens = TokenEndpoint::default();
    let token_addr = tokens.start().await?;
    let upstream = start_upstream(tokens.clone()).await?;
    let yaml = format!(
        r#"
proxy:
  listen: 127.0.0.1:0
  drain_timeout: 5s
admin:
  listen: 127.0.0.1:0
clients:
  - id: demo-app
    token: {{ value: "{PROXY_TOKEN}" }}
    routes: [api, oauth-api]
credentials:
  - id: demo-key
    static: {{ value: "{UPSTREAM_KEY}" }}
  - id: demo-oauth
    oauth2:
      grant: client_credentials
      token_url: http://{token_addr}/token
      client_id: latchkey-demo
      client_secret: {{ value: "demo-client-secret" }}
    refresh: {{ buffer: 2s }}
routes:
  - id: api
    match: {{ path_prefix: /api/ }}
    strip_prefix: true
    upstream: http://{upstream}/v1
    credential: demo-key
    inject: {{ header: Authorization, format: "Bearer {{token}}" }}
  - id: public-search
    match: {{ path_prefix: /search }}
    upstream: http://{upstream}
    credential: demo-key
    inject: {{ query: api_key }}
    public: true
  - id: oauth-api
    match: {{ path_prefix: /oauth/ }}
    strip_prefix: true
    upstream: http://{upstream}/v1
    credential: demo-oauth
"#
    );
    let config = crate::Config::from_yaml(&yaml, "demo.yaml")?;
    let running = crate::start(config, "demo.yaml").await?;
    let base = format!("http://{}", running.proxy_addr);
    println!("latchkey demo");
    println!(
        "  upstream API   http://{upstream}  (accepts only 'Authorization: Bearer <demo-key>' or '?api_key=<demo-key>')"
    );
    println!(
        "  latchkey proxy {base}  (admin http://{})",
        running
            .admin_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    println!("  the workload holds only its proxy token; latchkey holds demo-key\n");

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut ok = true;

    // 1. A workload calls the protected route with its proxy token.
    let (status, body) = send(
        &client,
        &format!("{base}/api/orders?limit=2"),
        Some(PROXY_TOKEN),
    )
    .await?;
    ok &= report(
        "workload -> /api/orders with its proxy token",
        status == StatusCode::OK
            && body["credential_ok"] == true
            && body["saw_proxy_token"] == false,
        &format!(
            "{status}; upstream saw path {} with the injected credential ({}); the proxy token was stripped ({})",
            body["path"],
            yes(&body["credential_ok"]),
            if body["saw_proxy_token"] == false {
                "it never reached the upstream"
            } else {
                "LEAKED"
            }
        ),
    );

    // 2. No token: refused by latchkey itself, with a JSON error.
    let (status, body) = send(&client, &format!("{base}/api/orders"), None).await?;
    ok &= report(
        "workload -> /api/orders without a token",
        status == StatusCode::UNAUTHORIZED,
        &format!("{status} {}", body["error"]["code"]),
    );

    // 3. Public route with query injection.
    let (status, body) = send(&client, &format!("{base}/search?q=latchkey"), None).await?;
    ok &= report(
        "anyone -> /search (public route, query injection)",
        status == StatusCode::OK && body["credential_ok"] == true,
        &format!(
            "{status}; upstream got api_key in the query ({})",
            yes(&body["credential_ok"])
        ),
    );

    // 4. No route.
    let (status, body) = send(&client, &format!("{base}/nowhere"), Some(PROXY_TOKEN)).await?;
    ok &= report(
        "workload -> /nowhere",
        status == StatusCode::NOT_FOUND,
        &format!("{status} {}", body["error"]["code"]),
    );

    ok &= oauth_refresh(&client, &base, &tokens).await?;
    ok &= revocation(&client, &base, &tokens).await?;

    running.shutdown().await;
    Ok(ok)
}

/// Traffic across an OAuth2 token's refresh: the token lives 4 s, latchkey
/// refreshes it 2 s before expiry in the background, and no request fails
/// or waits for it.
async fn oauth_refresh(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    tokens: &TokenEndpoint,
) -> Result<bool, BoxError> {
    println!(
        "\nOAuth2 route (client_credentials, tokens live {TOKEN_LIFETIME_S} s, refresh buffer 2 s):"
    );
    let start = Instant::now();
    let (mut failures, mut slowest, mut requests) = (0, Duration::ZERO, 0);
    let mut seen: Vec<(String, Duration)> = Vec::new();
    while start.elapsed() < Duration::from_millis(3_500) {
        let t = Instant::now();
        let (status, body) =
            send(client, &format!("{base}/oauth/reports"), Some(PROXY_TOKEN)).await?;
        slowest = slowest.max(t.elapsed());
        requests += 1;
        if status != StatusCode::OK || body["credential_ok"] != true {
            failures += 1;
        }
        let token = body["oauth_token"].as_str().unwrap_or("").to_string();
        if seen.last().is_none_or(|(last, _)| *last != token) {
            seen.push((token, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (token, at) in &seen {
        println!(
            "       t={:>4.1}s  upstream receives {token}",
            at.as_secs_f64()
        );
    }
    let calls = tokens.calls.load(Ordering::SeqCst);
    Ok(report(
        "workload -> /oauth/reports every 100 ms for 3.5 s",
        failures == 0 && seen.len() >= 2 && slowest < Duration::from_secs(1),
        &format!(
            "{requests} requests, {failures} failed; the token was refreshed ahead of expiry while traffic flowed \
             ({} token(s) seen, {calls} token endpoint call(s)); slowest request {} ms: none waited for a refresh",
            seen.len(),
            slowest.as_millis()
        ),
    ))
}

/// A token revoked server-side before its expiry: the upstream answers
/// 401, latchkey invalidates that generation, refreshes once and replays the
/// request once; the workload sees a 200.
async fn revocation(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    tokens: &TokenEndpoint,
) -> Result<bool, BoxError> {
    println!("\nRevocation (the provider revokes the token before it expires):");
    let calls_before = tokens.calls.load(Ordering::SeqCst);
    tokens.revoke();
    let url = format!("{base}/oauth/reports");
    let req = Request::get(&url).header("authorization", format!("Bearer {PROXY_TOKEN}"));
    let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status();
    let retry = resp
        .headers()
        .get("x-latchkey-retry")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())
        .unwrap_or(Value::Null);
    let calls = tokens.calls.load(Ordering::SeqCst) - calls_before;
    Ok(report(
        "workload -> /oauth/reports right after the revocation",
        // One forced refresh; a refresh ahead of expiry due at the same
        // moment (tokens live 4 s) may add one on a slow machine.
        status == StatusCode::OK && retry == "recovered" && (1..=2).contains(&calls),
        &format!(
            "{status}; the upstream's 401 was absorbed: x-latchkey-retry: {retry}, {calls} token endpoint call(s), \
             one replay with {} (the workload never saw the 401)",
            body["oauth_token"].as_str().unwrap_or("?")
        ),
    ))
}

fn yes(v: &Value) -> &'static str {
    if v == true { "yes" } else { "no" }
}

fn report(what: &str, passed: bool, detail: &str) -> bool {
    println!(
        "[{}] {what}\n       {detail}",
        if passed { "ok" } else { "FAIL" }
    );
    passed
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    token: Option<&str>,
) -> Result<(StatusCode, Value), BoxError> {
    let mut req = Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}
