//! What an endpoint answers when something went wrong: secrets it echoes,
//! waits it asks for with a body that cannot be read.

use super::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `oauth2.params` values can be secrets (a `client_assertion`): echoed
/// back in an error, they are redacted, raw and form-encoded. Short ones
/// (an audience name) are not, so messages stay readable.
#[tokio::test]
async fn echoed_params_values_are_redacted() {
    let ep = endpoint().await;
    let assertion = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln/+=";
    let encoded: String = form_urlencoded::byte_serialize(assertion.as_bytes()).collect();
    let mut cfg = cc_cfg(&ep.url, "cs-x");
    cfg.params
        .insert("client_assertion".into(), assertion.into());
    cfg.params.insert("audience".into(), "crm".into());
    ep.set_failure(Some(Failure::Status(
        400,
        format!(
            r#"{{"error":"invalid_client","error_description":"bad client_assertion {assertion} ({encoded}) for audience crm"}}"#
        ),
    )));
    let err = provider(&cfg).fetch(None).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(assertion) && !text.contains(&encoded),
        "{text}"
    );
    assert!(
        err.to_string()
            .ends_with("bad client_assertion [redacted] ([redacted]) for audience crm"),
        "{err}"
    );
}

/// A 503 with `Retry-After` whose body is cut short still asks for its
/// wait: the next attempt must not hammer a throttled endpoint after the
/// usual backoff.
#[tokio::test]
async fn retry_after_survives_a_body_cut_short() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 600\r\nContent-Length: 100\r\n\r\n0123456789",
                )
                .await;
        }
    });
    let err = provider(&cc_cfg(&url, "s")).fetch(None).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)), "{err:?}");
}
