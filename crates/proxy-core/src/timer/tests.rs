//! Reused sleeps on tokio's paused clock: they fire at their new deadline,
//! earlier or later than the old one, after firing, and two at once.

use super::*;
use futures_util::FutureExt as _;

fn spare_of(r: &Reuse) -> bool {
    r.spare.lock().unwrap().is_some()
}

/// Whether `s` has fired, polled once (registering it, as a caller would).
fn fired(s: &mut Reused) -> bool {
    s.now_or_never().is_some()
}

#[tokio::test(start_paused = true)]
async fn a_reused_sleep_fires_at_its_new_later_deadline() {
    let reuse = Reuse::default();
    let start = Instant::now();
    let mut first = reuse.sleep_until(start + Duration::from_secs(60));
    assert!(!fired(&mut first));
    drop(first);
    assert!(spare_of(&reuse), "given back when dropped");

    tokio::time::advance(Duration::from_secs(10)).await;
    let mut second = reuse.sleep_until(start + Duration::from_secs(70));
    assert!(!spare_of(&reuse), "the spare is handed out again");
    // Past the first deadline, not the second: not fired.
    tokio::time::advance(Duration::from_secs(55)).await;
    assert!(!fired(&mut second));
    tokio::time::advance(Duration::from_secs(5)).await;
    (&mut second).await;
    assert_eq!(Instant::now(), start + Duration::from_secs(70));
}

#[tokio::test(start_paused = true)]
async fn a_reused_sleep_fires_at_an_earlier_deadline_too() {
    let reuse = Reuse::default();
    let start = Instant::now();
    let mut long = reuse.sleep_until(start + Duration::from_secs(60));
    assert!(!fired(&mut long));
    drop(long);
    let short = reuse.sleep_until(start + Duration::from_secs(5));
    short.await;
    assert_eq!(Instant::now(), start + Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_sleep_that_fired_is_reused_and_fires_again() {
    let reuse = Reuse::default();
    let start = Instant::now();
    reuse.sleep_until(start + Duration::from_secs(1)).await;
    assert!(spare_of(&reuse));
    reuse.sleep_until(start + Duration::from_secs(3)).await;
    assert_eq!(Instant::now(), start + Duration::from_secs(3));
}

/// A spare given back while still in the wheel, past its old deadline and
/// then handed out for a later one, wakes its new poller only then.
#[tokio::test(start_paused = true)]
async fn a_spare_past_its_old_deadline_waits_for_the_new_one() {
    let reuse = Reuse::default();
    let start = Instant::now();
    let mut s = reuse.sleep_until(start + Duration::from_secs(1));
    assert!(!fired(&mut s));
    drop(s);
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut s = reuse.sleep_until(start + Duration::from_secs(10));
    assert!(!fired(&mut s));
    tokio::time::advance(Duration::from_secs(7)).await;
    assert!(!fired(&mut s));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(fired(&mut s));
}

/// Two in use at once (two h2 streams on one connection): the second is a
/// new sleep; both fire at their own deadline; one is kept.
#[tokio::test(start_paused = true)]
async fn two_at_once_each_fire_and_one_is_kept() {
    let reuse = Reuse::default();
    let start = Instant::now();
    let a = reuse.sleep_until(start + Duration::from_secs(2));
    let b = reuse.sleep_until(start + Duration::from_secs(4));
    a.await;
    assert_eq!(Instant::now(), start + Duration::from_secs(2));
    assert!(spare_of(&reuse));
    b.await;
    assert_eq!(Instant::now(), start + Duration::from_secs(4));
    assert!(spare_of(&reuse));
}

#[tokio::test(start_paused = true)]
async fn a_fresh_sleep_is_given_back_to_nothing() {
    let start = Instant::now();
    Reused::until(None, start + Duration::from_secs(3)).await;
    assert_eq!(Instant::now(), start + Duration::from_secs(3));
}

/// hyper's side: `sleep`, `sleep_until` and `reset` of the header timer.
#[tokio::test(start_paused = true)]
async fn the_hyper_timer_sleeps_and_resets() {
    use hyper::rt::Timer as _;
    let timer = HyperTimer::default();
    let start = Instant::now();
    assert_eq!(timer.now(), start.into_std());
    timer.sleep(Duration::from_secs(2)).await;
    assert_eq!(Instant::now(), start + Duration::from_secs(2));
    assert!(spare_of(&timer.0));

    let mut s = timer.sleep_until((start + Duration::from_secs(30)).into_std());
    timer.reset(&mut s, (start + Duration::from_secs(5)).into_std());
    s.await;
    assert_eq!(Instant::now(), start + Duration::from_secs(5));
}

/// Uses up the task's cooperative budget, as a send that did a lot of
/// work in one poll would.
fn use_up_budget(cx: &mut Context<'_>) {
    while tokio::task::coop::has_budget_remaining() {
        let mut spend = std::pin::pin!(tokio::task::coop::consume_budget());
        if spend.as_mut().poll(cx).is_pending() {
            break;
        }
    }
}

/// A sleep whose deadline has passed is seen by `poll_after` even when the
/// work polled before it in the same turn used up the task's budget every
/// time (a plain poll would return `Pending` on the empty budget, turn
/// after turn: the timeout would never fire).
#[tokio::test(start_paused = true)]
async fn a_deadline_is_seen_when_the_work_before_it_used_up_the_budget() {
    let reuse = Reuse::default();
    let mut sleep = reuse.sleep_until(Instant::now() + Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..10 {
        let fired = std::future::poll_fn(|cx| {
            let had_budget = tokio::task::coop::has_budget_remaining();
            use_up_budget(cx);
            Poll::Ready(sleep.poll_after(had_budget, cx).is_ready())
        })
        .await;
        if fired {
            return;
        }
        // A new turn of the task, with a new budget.
        tokio::task::yield_now().await;
    }
    panic!("the deadline was never seen");
}
