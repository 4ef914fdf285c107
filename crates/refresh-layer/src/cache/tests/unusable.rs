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

/// A token with control characters (or an empty one) is a failed
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
    assert!(err.reason.contains("cannot be sent"), "{}", err.reason);
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

/// With nothing valid held (the first fetch) and a store that cannot save
/// (down), the unusable token is kept only for its refresh token: never
/// served, the request gets the error.
#[tokio::test(start_paused = true)]
async fn an_unusable_first_token_is_never_served_even_unsaved() {
    let p = Arc::new(Garbled {
        calls: AtomicUsize::new(0),
        garbage: AtomicBool::new(true),
    });
    let store = Arc::new(super::persist::Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(usize::MAX),
        saves: AtomicUsize::new(0),
    });
    let src = RefreshingSource::new("crm", p.clone(), store, RefreshSettings::default());
    let got = token(&src).await;
    assert!(
        got.starts_with("ERR") && got.contains("cannot be sent"),
        "{got:?}"
    );
    tokio::time::advance(S(1)).await;
    let again = token(&src).await;
    assert!(again.starts_with("ERR"), "{again:?}");
}

#[test]
fn what_can_be_sent() {
    use crate::cache::refresh::sendable;
    assert!(sendable("abc.DEF-_~+/="));
    assert!(sendable("with space"));
    // Non-ASCII is left to injection (`basic` and `query` encode it).
    assert!(sendable("caf\u{e9}"));
    for bad in ["", "a\nb", "a\rb", "tab\tx", "nul\0", "\u{7f}", "c1\u{85}"] {
        assert!(!sendable(bad), "{bad:?}");
    }
}
