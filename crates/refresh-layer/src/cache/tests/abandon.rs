//! Refreshes whose parts never answer: the lock wait, store read and token
//! call are abandoned after [`RUN_LIMIT`], a save never is; and a reload's
//! hand-over after a rotation whose new access token was of no use.

use super::doubles::{Down, Saves, Script};
use super::*;

/// After a useless rotation that was saved, the old source still serves
/// its valid tok-1 (the new state carries rt-2): a reload's hand-over
/// serves tok-1 too, and refreshes from rt-2.
#[tokio::test(start_paused = true)]
async fn a_handover_after_a_saved_useless_rotation_keeps_serving_the_valid_token() {
    let p = Script::new("oz"); // then the endpoint answers 503
    let store = Saves::new("");
    let old = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&old).await, "tok-1");
    assert!(old.invalidate(1).await.is_err(), "tok-2 arrives expired");
    assert_eq!(
        token(&old).await,
        "tok-1",
        "the old source still serves the valid tok-1"
    );
    let h = old.handover().unwrap();
    let new = RefreshingSource::with_handover(
        "crm",
        p.clone(),
        store.clone(),
        RefreshSettings::default(),
        None,
        h,
    );
    drop(old);
    assert_eq!(
        token(&new).await,
        "tok-1",
        "the replacement dropped the valid held token"
    );
    let _ = new.refresh_now().await;
    assert_eq!(p.seen().last().cloned().flatten().as_deref(), Some("rt-2"));
}

/// A save that never answers is never abandoned: it may carry a rotated
/// refresh token the endpoint has spent the old one for. The refresh
/// stays in progress (the token held is served while valid), and the
/// spent refresh token is never sent.
#[tokio::test(start_paused = true)]
async fn a_save_that_never_answers_is_not_abandoned() {
    let p = Script::new("soo");
    let store = Saves::new("oh"); // the first save works, the rotation's hangs
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(70)).await; // the proactive refresh: rt-2 fetched, its save hangs
    settle().await;
    tokio::time::sleep(RUN_LIMIT + S(10)).await;
    settle().await;
    assert_eq!(
        p.seen(),
        [None, Some("rt-1".to_owned())],
        "no refresh with the spent rt-1"
    );
    assert!(src.status().refreshing);
}

/// A rotated state is unsaved (the store is down; the retries hold the
/// lock); a refresh takes the retries over (its one save fails too) and
/// its token call hangs. The store comes back meanwhile. Once the hung
/// call is abandoned (after RUN_LIMIT), the retries resume, or the next
/// refresh's first save runs: either way the live `rt-1` is saved, not
/// left only in memory.
#[tokio::test(start_paused = true)]
async fn an_abandoned_takeover_resumes_the_unsaved_retries() {
    let p = Script::new("shhhhhhhhhhhhhhh");
    let store = Arc::new(Down::default());
    store.down.store(true, Ordering::SeqCst);
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(70)).await; // the takeover: call 2 hangs
    settle().await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(RUN_LIMIT + S(10)).await; // abandoned, and a few seconds on
    settle().await;
    assert!(
        src.status().consecutive_failures >= 1,
        "the hung call counted"
    );
    let stored = store.inner.load("crm").await.unwrap();
    assert_eq!(
        stored.and_then(|s| s.refresh_token).as_deref(),
        Some("rt-1"),
        "the live rotated refresh token was never saved"
    );
}
