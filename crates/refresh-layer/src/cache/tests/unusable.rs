//! A provider's access token that cannot be sent in a header.

use super::*;

/// Answers `tok-N` until `garbage` is set, then a token with a newline.
#[derive(Debug)]
struct Garbled {
    calls: AtomicUsize,
    garbage: AtomicBool,
}

impl TokenProvider for Garbled {
    fn kind(&self) -> &'static str {
        "garbled"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let token = if self.garbage.load(Ordering::SeqCst) {
            format!("tok-{n}\nX-Injected: 1")
        } else {
            format!("tok-{n}")
        };
        Box::pin(async move {
            Ok(Token {
                access_token: SecretString::from(token),
                expires_in: Some(S(600)),
                refresh_token: None,
            })
        })
    }
}

/// A token with control characters (or empty, or non-ASCII) is a failed
/// refresh: the token held stays served until it expires, the next attempt
/// backs off, and the error says what was wrong; a request never gets a
/// token it cannot send.
#[tokio::test(start_paused = true)]
async fn a_token_that_cannot_be_sent_is_a_failed_refresh() {
    let p = Arc::new(Garbled {
        calls: AtomicUsize::new(0),
        garbage: AtomicBool::new(false),
    });
    let src = RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await, "tok-1");
    p.garbage.store(true, Ordering::SeqCst);
    let g = src.generation().unwrap();
    let err = src.invalidate(g).await.unwrap_err();
    assert!(
        err.reason.contains("cannot be sent in a header"),
        "{}",
        err.reason
    );
    assert_eq!(token(&src).await, "tok-1", "the held token is kept");
    // Backing off: no second call right away.
    let _ = src.invalidate(g).await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    // Once the endpoint is sane again, the next attempt recovers.
    p.garbage.store(false, Ordering::SeqCst);
    tokio::time::advance(S(2)).await;
    settle().await;
    let g = src.generation().unwrap();
    src.invalidate(g).await.unwrap();
    assert_eq!(token(&src).await, "tok-3");
}

#[test]
fn what_can_be_sent() {
    use crate::cache::refresh::sendable;
    assert!(sendable("abc.DEF-_~+/="));
    assert!(sendable("with space"));
    for bad in ["", "a\nb", "a\rb", "tab\tx", "nul\0", "caf\u{e9}", "\u{7f}"] {
        assert!(!sendable(bad), "{bad:?}");
    }
}
