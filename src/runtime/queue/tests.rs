use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use super::*;

fn queue() -> WorkQueue {
    WorkQueue::new(QueueConfig {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        jitter: false,
    })
}

/// The key `next` hands out without waiting, if any.
fn due_now(q: &WorkQueue) -> Option<Claim> {
    q.next().now_or_never().flatten()
}

#[tokio::test(start_paused = true)]
async fn a_key_queued_twice_before_it_runs_is_handed_out_once() {
    let q = queue();
    q.enqueue("a");
    q.enqueue("a");
    q.enqueue("b");
    assert_eq!(q.len(), 2);
    let first = due_now(&q).unwrap();
    let second = due_now(&q).unwrap();
    assert_eq!((first.key(), second.key()), ("a", "b"), "in queuing order");
    assert!(due_now(&q).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_claimed_key_is_not_handed_out_again_until_released() {
    let q = queue();
    q.enqueue("a");
    let claim = due_now(&q).unwrap();
    assert!(q.is_processing("a"));
    q.enqueue("a");
    q.enqueue("a");
    assert!(due_now(&q).is_none(), "held back while it runs");
    drop(claim);
    assert!(!q.is_processing("a"));
    let again = due_now(&q).expect("one more run after release");
    drop(again);
    assert!(due_now(&q).is_none(), "and only one");
}

#[tokio::test(start_paused = true)]
async fn a_released_key_becomes_due_when_its_held_back_time_comes() {
    let q = queue();
    q.enqueue("a");
    let claim = due_now(&q).unwrap();
    q.enqueue_after("a", Duration::from_secs(5));
    drop(claim);
    let start = Instant::now();
    let again = q.next().await.unwrap();
    assert_eq!(again.key(), "a");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn enqueue_after_is_not_due_before_its_delay() {
    let q = queue();
    let start = Instant::now();
    q.enqueue_after("a", Duration::from_secs(3));
    assert!(due_now(&q).is_none());
    let claim = q.next().await.unwrap();
    assert_eq!(claim.key(), "a");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn the_earliest_scheduled_time_wins() {
    let q = queue();
    let start = Instant::now();
    q.enqueue_after("a", Duration::from_secs(10));
    q.enqueue_after("a", Duration::from_secs(2));
    q.enqueue_after("a", Duration::from_secs(7));
    assert_eq!(q.len(), 1);
    let claim = q.next().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    drop(claim);
    assert!(
        q.is_empty(),
        "the later times were folded into the earlier one"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_next_wakes_for_a_key_queued_later() {
    let q = queue();
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.next().await.map(|c| c.key().to_string()) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.enqueue("late");
    assert_eq!(waiter.await.unwrap().as_deref(), Some("late"));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_per_key_and_resets() {
    let q = queue();
    // backon multiplies in f32, so compare whole milliseconds.
    let ms = |d: Duration| d.as_millis();
    let delays: Vec<_> = (0..5).map(|_| ms(q.enqueue_backoff("a"))).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1000]);
    assert_eq!(q.failures("a"), 5);
    assert_eq!(
        ms(q.enqueue_backoff("b")),
        100,
        "other keys are independent"
    );
    q.reset_backoff("a");
    assert_eq!(q.failures("a"), 0);
    assert_eq!(ms(q.enqueue_backoff("a")), 100);
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_between_the_delay_and_twice_it() {
    let q = WorkQueue::new(QueueConfig {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        jitter: true,
    });
    let mut base = Duration::from_millis(100);
    for _ in 0..6 {
        let d = q.enqueue_backoff("a");
        assert!(d >= base && d < base * 2, "{d:?} for base {base:?}");
        base *= 2;
    }
}

#[tokio::test(start_paused = true)]
async fn enqueue_backoff_schedules_the_key_after_the_delay() {
    let q = queue();
    let start = Instant::now();
    q.enqueue_backoff("a");
    q.enqueue_backoff("a");
    // The first failure's 100 ms is the earlier time and wins.
    let claim = q.next().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    drop(claim);
}

#[tokio::test(start_paused = true)]
async fn shut_down_wakes_a_waiting_next_and_ignores_new_keys() {
    let q = queue();
    q.enqueue_after("a", Duration::from_secs(60));
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.next().await.map(|c| c.key().to_string()) }
    });
    tokio::task::yield_now().await;
    q.shut_down();
    assert_eq!(waiter.await.unwrap(), None);
    q.enqueue("b");
    assert!(q.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_claim_dropped_by_a_panic_releases_its_key() {
    let q = queue();
    q.enqueue("a");
    let claim = due_now(&q).unwrap();
    let result = tokio::spawn(async move {
        let _claim = claim;
        panic!("reconcile blew up");
    })
    .await;
    assert!(result.is_err());
    assert!(!q.is_processing("a"));
    q.enqueue("a");
    assert!(due_now(&q).is_some());
}
