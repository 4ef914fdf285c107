//! A refresh whose provider (or store) never answers is abandoned after
//! [`RUN_LIMIT`]: counted as a failed attempt, explained in the status,
//! retried with backoff. It used to hold the single in-flight slot for
//! good: no further attempt, no error, `refreshing` for ever.

use super::*;

/// Answers its first fetch (a 120 s token), then never again.
#[derive(Debug)]
struct HangsAfterFirst {
    calls: AtomicUsize,
}

impl TokenProvider for HangsAfterFirst {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if n > 1 {
                futures_util::future::pending::<()>().await;
            }
            Ok(Token {
                access_token: SecretString::from(format!("tok-{n}")),
                expires_in: Some(S(120)),
                refresh_token: None,
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_never_ends_is_abandoned_counted_and_retried() {
    let p = Arc::new(HangsAfterFirst {
        calls: AtomicUsize::new(0),
    });
    let src = RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await, "tok-1");
    // The proactive refresh starts ~60 s before expiry and hangs.
    tokio::time::sleep(S(90)).await;
    settle().await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    assert!(src.status().refreshing);

    tokio::time::sleep(RUN_LIMIT).await;
    settle().await;
    let st = src.status();
    assert!(
        p.calls.load(Ordering::SeqCst) >= 3,
        "retried after abandoning"
    );
    assert!(st.consecutive_failures >= 1, "{st:?}");
    let last = st.last_error.clone().unwrap_or_default();
    assert!(last.contains("did not end within 300s"), "{last}");

    // An hour on, attempts keep coming, spaced by the backoff, each
    // abandoned in turn: no stampede, and never stuck.
    tokio::time::sleep(S(3600)).await;
    settle().await;
    let calls = p.calls.load(Ordering::SeqCst);
    assert!((5..=20).contains(&calls), "{calls} calls in an hour");
}
