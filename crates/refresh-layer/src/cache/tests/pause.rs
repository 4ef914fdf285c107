//! A source paused by a reload starts no refresh until it is resumed (or
//! retired), and a refresh asked for meanwhile waits instead of failing.

use super::*;

/// Paused: a 401's forced refresh, a manual refresh and the scheduled one
/// all wait; the token held is served meanwhile. Resumed: one refresh, for
/// all of them.
#[tokio::test(start_paused = true)]
async fn a_paused_source_refreshes_once_it_is_resumed() {
    let p = Scripted::new(Some(S(120)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    src.pause();
    let forced = tokio::spawn({
        let src = src.clone();
        async move { src.invalidate(1).await }
    });
    let manual = tokio::spawn({
        let src = src.clone();
        async move { src.refresh_now().await.map(|s| s.generation) }
    });
    // Past the scheduled refresh (60 s before expiry), within the
    // refresh timeout the waiters have.
    tokio::time::sleep(S(5)).await;
    settle().await;
    assert_eq!(p.calls(), 1, "nothing starts while paused");
    assert!(!forced.is_finished() && !manual.is_finished());
    src.resume();
    forced.await.unwrap().unwrap();
    assert_eq!(manual.await.unwrap().unwrap(), 2);
    assert_eq!(
        p.calls(),
        2,
        "one refresh for the forced and the manual one"
    );
    assert_eq!(token(&src).await, "tok-2");

    // The scheduled refresh waits too, and runs once resumed.
    src.pause();
    tokio::time::sleep(S(119)).await;
    settle().await;
    assert_eq!(p.calls(), 2);
    assert_eq!(
        token(&src).await,
        "tok-2",
        "the held token is served while paused"
    );
    src.resume();
    tokio::time::sleep(S(1)).await;
    settle().await;
    assert_eq!(p.calls(), 3);
}

/// Retired while paused (the reload was applied): what waited is refused
/// when the pause ends, and the token held is served while valid.
#[tokio::test(start_paused = true)]
async fn a_source_retired_while_paused_starts_nothing() {
    let p = Scripted::new(Some(S(3600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    src.pause();
    let forced = tokio::spawn({
        let src = src.clone();
        async move { src.invalidate(1).await }
    });
    settle().await;
    CredentialSource::retire(&src);
    src.resume();
    let err = forced.await.unwrap().unwrap_err();
    assert!(
        err.reason.contains("replaced by a reload"),
        "{}",
        err.reason
    );
    assert_eq!(p.calls(), 1);
    assert_eq!(token(&src).await, "tok-1");
}
