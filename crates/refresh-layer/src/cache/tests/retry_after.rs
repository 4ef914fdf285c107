//! An endpoint's `Retry-After` stretches the backoff.

use super::*;

/// Throttled (429, `Retry-After: 120`) until `open` is set.
#[derive(Debug)]
struct Throttled {
    calls: AtomicUsize,
    open: AtomicBool,
}

impl TokenProvider for Throttled {
    fn kind(&self) -> &'static str {
        "throttled"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let open = self.open.load(Ordering::SeqCst);
        Box::pin(async move {
            if !open {
                return Err(ProviderError::RetryAfter {
                    error: Box::new(ProviderError::Http { status: 429 }),
                    retry_after: S(120),
                });
            }
            Ok(Token {
                access_token: SecretString::from(format!("tok-{n}")),
                expires_in: Some(S(3600)),
                refresh_token: None,
            })
        })
    }
}

/// The first failure would back off about a second; the endpoint asked
/// for two minutes, and gets them: requests in between fail at once with
/// the backoff error, without a token call.
#[tokio::test(start_paused = true)]
async fn the_next_attempt_waits_for_the_endpoints_retry_after() {
    let p = Arc::new(Throttled {
        calls: AtomicUsize::new(0),
        open: AtomicBool::new(false),
    });
    let src = RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    );
    let first = token(&src).await;
    assert!(first.contains("asked to retry after 120s"), "{first}");
    p.open.store(true, Ordering::SeqCst);
    for _ in 0..11 {
        tokio::time::advance(S(10)).await;
        settle().await;
        assert!(token(&src).await.starts_with("ERR refresh failing"));
    }
    assert_eq!(p.calls.load(Ordering::SeqCst), 1, "no call before 120 s");
    tokio::time::advance(S(11)).await;
    settle().await;
    assert_eq!(token(&src).await, "tok-2");
}
