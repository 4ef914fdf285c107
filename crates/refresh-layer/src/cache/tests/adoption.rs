//! Adopting a stored credential (written before a restart or a reload, or
//! by another replica) when this process holds none.

use super::*;

fn stored(token: &str, expires_in_ms: Option<u64>, age_ms: u64) -> StoredCredential {
    let now = crate::token::to_ms(SystemTime::now());
    StoredCredential {
        access_token: token.into(),
        expires_at_ms: expires_in_ms.map(|e| now + e),
        refresh_token: Some("rt".into()),
        generation: 7,
        obtained_at_ms: now - age_ms,
        provider: None,
    }
}

async fn with_stored(
    p: &Arc<Scripted>,
    state: StoredCredential,
    settings: RefreshSettings,
) -> RefreshingSource {
    let store = Arc::new(MemoryStore::new());
    store.save("crm", &state).await.unwrap();
    RefreshingSource::new("crm", p.clone(), store, settings)
}

/// A restart while the token endpoint is down, the store holding a token
/// that is valid for 30 s more (inside the 60 s buffer): it is served, not
/// refused for a fetch that fails. Its refresh runs in the background
/// (once, then on the backoff schedule), and only its expiry ends it.
#[tokio::test(start_paused = true)]
async fn a_valid_stored_token_inside_its_buffer_is_served_while_the_endpoint_fails() {
    let p = Scripted::new(Some(S(3600)));
    p.failing.store(true, Ordering::SeqCst);
    let src = with_stored(
        &p,
        stored("stored-valid", Some(30_000), 3_570_000),
        RefreshSettings::default(),
    )
    .await;
    assert_eq!(token(&src).await, "stored-valid");
    // Past its refresh time (60 s before expiry), the refresh starts at
    // once, in the background: the request did not wait for it.
    assert!(p.calls() <= 1, "{} token calls", p.calls());
    for _ in 0..25 {
        tokio::time::advance(S(1)).await;
        settle().await;
        assert_eq!(token(&src).await, "stored-valid");
    }
    // Refreshed ahead, failed, backed off: a few calls, not one per
    // request.
    assert!(
        (1..=6).contains(&p.calls()),
        "{} token calls in 25 s",
        p.calls()
    );
    tokio::time::advance(S(10)).await;
    settle().await;
    assert!(
        token(&src).await.starts_with("ERR"),
        "an expired token is never served"
    );
}

/// A 1 h token adopted with 100 s left (outside the 60 s buffer) is
/// refreshed 60 s before its expiry, as its whole lifetime says: not at
/// half the time left (50 s before expiry), as if it were a 100 s token.
#[tokio::test(start_paused = true)]
async fn an_adopted_token_is_refreshed_buffer_before_its_expiry() {
    let p = Scripted::new(Some(S(3600)));
    let src = with_stored(
        &p,
        stored("stored-valid", Some(100_000), 3_500_000),
        RefreshSettings::default(),
    )
    .await;
    assert_eq!(token(&src).await, "stored-valid");
    assert_eq!(p.calls(), 0, "not due yet");
    // 41 s on: 59 s before expiry, inside the buffer (jitter only moves
    // the refresh earlier).
    tokio::time::advance(S(41)).await;
    settle().await;
    assert_eq!(p.calls(), 1, "refreshed buffer before expiry");
}

/// The same stored token with the endpoint up: served at once, replaced
/// in the background before it expires.
#[tokio::test(start_paused = true)]
async fn an_adopted_token_inside_its_buffer_is_replaced_in_the_background() {
    let p = Scripted::new(Some(S(3600)));
    let src = with_stored(
        &p,
        stored("stored-valid", Some(30_000), 3_570_000),
        RefreshSettings::default(),
    )
    .await;
    assert_eq!(token(&src).await, "stored-valid");
    tokio::time::advance(S(16)).await;
    settle().await;
    tokio::time::advance(S(1)).await;
    settle().await;
    assert_eq!(token(&src).await, "tok-1");
    assert_eq!(p.calls(), 1);
}

/// `max_age` (tokens without expiry) counts from when the token was
/// obtained: one stored 9m50s ago with `max_age: 10m` is refreshed within
/// ~10 s of being adopted, not 10 minutes later.
#[tokio::test(start_paused = true)]
async fn max_age_counts_from_when_an_adopted_token_was_obtained() {
    let p = Scripted::new(None);
    let settings = RefreshSettings {
        max_age: Some(S(600)),
        ..RefreshSettings::default()
    };
    let src = with_stored(&p, stored("stored-old", None, 590_000), settings).await;
    assert_eq!(token(&src).await, "stored-old");
    assert_eq!(p.calls(), 0);
    tokio::time::advance(S(11)).await;
    settle().await;
    tokio::time::advance(S(1)).await;
    settle().await;
    assert_eq!(p.calls(), 1, "a token 10 min old is refreshed");
    assert_eq!(token(&src).await, "tok-1");
}

/// Answers call n with `{name}-{n}` and `rt-of-{name}-{n}`, after 100 ms.
#[derive(Debug)]
struct Named(&'static str, AtomicUsize);

impl Named {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self(name, AtomicUsize::new(0)))
    }
}

impl TokenProvider for Named {
    fn kind(&self) -> &'static str {
        "named"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.1.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Token {
                access_token: SecretString::from(format!("{}-{n}", self.0)),
                expires_in: Some(S(3600)),
                refresh_token: Some(SecretString::from(format!("rt-of-{}-{n}", self.0))),
            })
        })
    }
}

/// A reload gives the credential another provider while the old one's
/// forced refresh is running (as `build.rs` does: `forget`, then a source
/// on a new `scoped` handle). The old refresh finishes after the new
/// source was built: what it got must not become the new source's token,
/// nor its refresh token the new provider's.
#[tokio::test(start_paused = true)]
async fn a_refresh_of_a_replaced_provider_cannot_hand_its_state_to_the_new_one() {
    let memory = Arc::new(MemoryStore::new());
    let old = RefreshingSource::new(
        "crm",
        Named::new("old-provider-token"),
        memory.scoped("crm"),
        RefreshSettings::default(),
    );
    assert_eq!(token(&old).await, "old-provider-token-1");
    let g = old.generation().unwrap();
    let inflight = tokio::spawn(old.invalidate(g));
    settle().await;
    memory.forget("crm");
    drop(old);
    let new = RefreshingSource::new(
        "crm",
        Named::new("new-provider-token"),
        memory.scoped("crm"),
        RefreshSettings::default(),
    );
    assert_eq!(token(&new).await, "new-provider-token-1");
    inflight.await.unwrap().unwrap();
    let stored = memory.load("crm").await.unwrap().unwrap();
    assert_eq!(stored.access_token, "new-provider-token-1");
    assert_eq!(
        stored.refresh_token.as_deref(),
        Some("rt-of-new-provider-token-1")
    );
}
