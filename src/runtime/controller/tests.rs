use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};

use super::*;
use crate::runtime::reflector::Writer;
use crate::runtime::testing::{part, widget, PartSpec, WidgetSpec};

#[derive(Debug, thiserror::Error)]
#[error("scripted failure")]
struct Scripted;

/// What one reconcile of a key does.
#[derive(Clone, Copy, Debug)]
enum Step {
    Return(Action),
    Fail,
    Panic,
}

/// The context: watches reconciles and plays a script per key (then `AwaitChange`).
struct Probe {
    start: Instant,
    /// How long each reconcile takes.
    work: Duration,
    script: Mutex<HashMap<String, VecDeque<Step>>>,
    /// (key, seconds since start) of every reconcile as it began.
    runs: Mutex<Vec<(String, f64)>>,
    per_key: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    max_per_key: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    finished: AtomicUsize,
}

impl Probe {
    fn new(work: Duration) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            work,
            script: Mutex::default(),
            runs: Mutex::default(),
            per_key: Mutex::default(),
            max_per_key: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        })
    }

    fn script(self: Arc<Self>, key: &str, steps: &[Step]) -> Arc<Self> {
        self.script
            .lock()
            .unwrap()
            .insert(key.into(), steps.iter().copied().collect());
        self
    }

    /// When `key` began each run, in seconds since the start.
    fn times(&self, key: &str) -> Vec<f64> {
        let runs = self.runs.lock().unwrap();
        runs.iter().filter(|(k, _)| k == key).map(|r| r.1).collect()
    }

    fn count(&self, key: &str) -> usize {
        self.times(key).len()
    }
}

async fn reconcile(obj: Arc<Object<WidgetSpec>>, p: Arc<Probe>) -> Result<Action, Scripted> {
    let key = obj.name().to_string();
    let secs = p.start.elapsed().as_secs_f64();
    p.runs.lock().unwrap().push((key.clone(), secs));
    let mine = p
        .per_key
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default()
        .clone();
    p.max_per_key
        .fetch_max(mine.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
    p.max_running.fetch_max(
        p.running.fetch_add(1, Ordering::SeqCst) + 1,
        Ordering::SeqCst,
    );
    sleep(p.work).await;
    mine.fetch_sub(1, Ordering::SeqCst);
    p.running.fetch_sub(1, Ordering::SeqCst);
    p.finished.fetch_add(1, Ordering::SeqCst);
    let step = p
        .script
        .lock()
        .unwrap()
        .get_mut(&key)
        .and_then(VecDeque::pop_front);
    match step.unwrap_or(Step::Return(Action::AwaitChange)) {
        Step::Return(action) => Ok(action),
        Step::Fail => Err(Scripted),
        Step::Panic => panic!("scripted panic"),
    }
}

fn config(concurrency: usize) -> ControllerConfig {
    ControllerConfig {
        concurrency,
        queue: QueueConfig {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: false,
        },
    }
}

/// A ready cache holding widgets of these names.
fn widgets(names: &[&str]) -> Writer<WidgetSpec> {
    let w = Writer::default();
    w.replace(names.iter().map(|n| widget(n, 1)));
    w
}

/// A stream of keys and the sender that feeds it.
fn key_channel() -> (mpsc::UnboundedSender<String>, impl Stream<Item = String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let keys = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|k| (k, rx)) });
    (tx, keys)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn a_key_triggered_repeatedly_before_its_turn_is_reconciled_once() {
    let cache = widgets(&["a", "b"]);
    let probe = Probe::new(secs(10));
    let (tx, keys) = key_channel();
    let c = Controller::new(cache.cache(), config(1)).reconcile_on(keys);
    tokio::spawn(c.run(reconcile, probe.clone()));
    sleep(secs(1)).await; // "a" runs (names start in order), "b" waits for the one slot
    for _ in 0..3 {
        tx.send("b".into()).unwrap();
    }
    sleep(secs(60)).await;
    assert_eq!((probe.count("a"), probe.count("b")), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_same_key_is_never_reconciled_twice_at_once() {
    let cache = widgets(&["a"]);
    let probe = Probe::new(secs(1));
    let (tx, keys) = key_channel();
    let c = Controller::new(cache.cache(), config(4)).reconcile_on(keys);
    tokio::spawn(c.run(reconcile, probe.clone()));
    for _ in 0..50 {
        tx.send("a".into()).unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    sleep(secs(5)).await;
    assert_eq!(probe.max_per_key.load(Ordering::SeqCst), 1);
    let runs = probe.count("a");
    assert!(
        (5..=6).contains(&runs),
        "one run per second of triggers: {runs}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_cap_holds_across_keys() {
    let names: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let cache = widgets(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let probe = Probe::new(secs(1));
    tokio::spawn(Controller::new(cache.cache(), config(3)).run(reconcile, probe.clone()));
    sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        probe.finished.load(Ordering::SeqCst),
        9,
        "three rounds of three"
    );
    sleep(secs(10)).await;
    assert_eq!(probe.max_running.load(Ordering::SeqCst), 3);
    assert!(names.iter().all(|n| probe.count(n) == 1));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_on_repeated_errors_and_resets_after_a_success() {
    let cache = widgets(&["a"]);
    let probe = Probe::new(Duration::ZERO).script(
        "a",
        &[
            Step::Fail,
            Step::Fail,
            Step::Fail,
            Step::Return(Action::AwaitChange),
            Step::Fail,
        ],
    );
    let (tx, keys) = key_channel();
    let c = Controller::new(cache.cache(), config(1)).reconcile_on(keys);
    tokio::spawn(c.run(reconcile, probe.clone()));
    sleep_until(probe.start + secs(20)).await;
    tx.send("a".into()).unwrap();
    sleep(secs(60)).await;
    // Failures at 0, 1, 3 wait 1, 2, 4 s; success at 7; the failure at 20 waits 1 s again.
    assert_eq!(probe.times("a"), [0.0, 1.0, 3.0, 7.0, 20.0, 21.0]);
}

#[tokio::test(start_paused = true)]
async fn requeue_runs_again_no_earlier_than_asked() {
    let cache = widgets(&["a"]);
    let requeue = Step::Return(Action::Requeue(secs(5)));
    let probe = Probe::new(secs(1)).script("a", &[requeue, requeue]);
    tokio::spawn(Controller::new(cache.cache(), config(1)).run(reconcile, probe.clone()));
    sleep(secs(600)).await;
    // Each run takes 1 s and asks for 5 s more; the third awaits a change.
    assert_eq!(probe.times("a"), [0.0, 6.0, 12.0]);
}

#[tokio::test(start_paused = true)]
async fn await_change_does_not_requeue_but_a_change_triggers() {
    let cache = widgets(&["a"]);
    let probe = Probe::new(Duration::ZERO);
    tokio::spawn(Controller::new(cache.cache(), config(1)).run(reconcile, probe.clone()));
    sleep(secs(3600)).await;
    assert_eq!(probe.count("a"), 1);
    cache.put(widget("a", 2));
    sleep(secs(1)).await;
    assert_eq!(probe.times("a"), [0.0, 3600.0]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_reconciles_and_starts_no_more() {
    let cache = widgets(&["a", "b", "c"]);
    let probe = Probe::new(secs(10));
    let (stop, stopped) = oneshot::channel::<()>();
    let c = Controller::new(cache.cache(), config(2)).shutdown_on(async {
        let _ = stopped.await;
    });
    let queue = c.queue();
    let run = tokio::spawn(c.run(reconcile, probe.clone()));
    sleep(secs(1)).await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(
        probe.start.elapsed(),
        secs(10),
        "returned when a and b finished"
    );
    assert_eq!(probe.finished.load(Ordering::SeqCst), 2);
    assert_eq!(probe.count("c"), 0, "c was never started");
    queue.enqueue("c");
    sleep(secs(60)).await;
    assert_eq!(probe.count("c"), 0, "nothing runs after shutdown");
}

#[tokio::test(start_paused = true)]
async fn nothing_is_reconciled_before_every_cache_is_ready() {
    let cache = Writer::<WidgetSpec>::default();
    let parts = Writer::<PartSpec>::default();
    let probe = Probe::new(Duration::ZERO);
    let c = Controller::new(cache.cache(), config(1)).owns(parts.cache());
    tokio::spawn(c.run(reconcile, probe.clone()));
    cache.replace([widget("a", 1)]);
    sleep(secs(10)).await;
    assert_eq!(probe.count("a"), 0, "the parts are not loaded yet");
    parts.replace([]);
    sleep(secs(1)).await;
    assert_eq!(probe.times("a"), [10.0]);
}

#[tokio::test(start_paused = true)]
async fn a_change_of_an_owned_object_reconciles_its_owner() {
    let cache = widgets(&["w1", "w2"]);
    let parts = Writer::<PartSpec>::default();
    parts.replace([]);
    let probe = Probe::new(Duration::ZERO);
    let c = Controller::new(cache.cache(), config(2)).owns(parts.cache());
    tokio::spawn(c.run(reconcile, probe.clone()));
    sleep(secs(1)).await;
    parts.put(part("p", &["w1"]));
    sleep(secs(1)).await;
    parts.delete("p");
    sleep(secs(1)).await;
    assert_eq!(probe.times("w1"), [0.0, 1.0, 2.0]);
    assert_eq!(probe.count("w2"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_mapped_trigger_reconciles_the_keys_it_names() {
    let cache = widgets(&["w1", "w2"]);
    let parts = Writer::<PartSpec>::default();
    parts.replace([]);
    let probe = Probe::new(Duration::ZERO);
    let c = Controller::new(cache.cache(), config(2))
        .watches(parts.cache(), |_: &Change<PartSpec>| ["w2".to_string()]);
    tokio::spawn(c.run(reconcile, probe.clone()));
    sleep(secs(1)).await;
    parts.put(part("anything", &[]));
    sleep(secs(1)).await;
    assert_eq!((probe.count("w1"), probe.times("w2")), (1, vec![0.0, 1.0]));
}

#[tokio::test(start_paused = true)]
async fn a_trigger_that_lagged_reconciles_everything() {
    let cache = widgets(&["w1", "w2", "w3", "w4"]);
    let parts = Writer::<PartSpec>::new(1);
    parts.replace([]);
    let probe = Probe::new(Duration::ZERO);
    let c = Controller::new(cache.cache(), config(4)).owns(parts.cache());
    tokio::spawn(c.run(reconcile, probe.clone()));
    sleep(secs(1)).await;
    for owner in ["w1", "w2", "w3"] {
        parts.put(part(&format!("p-{owner}"), &[owner]));
    }
    sleep(secs(1)).await;
    assert_eq!(
        probe.times("w4"),
        [0.0, 1.0],
        "w4 owns nothing, yet is looked at"
    );
}

#[tokio::test(start_paused = true)]
async fn an_object_deleted_before_its_turn_is_skipped() {
    let cache = widgets(&["a", "b"]);
    let probe = Probe::new(secs(5));
    tokio::spawn(Controller::new(cache.cache(), config(1)).run(reconcile, probe.clone()));
    sleep(secs(1)).await;
    cache.delete("b");
    sleep(secs(60)).await;
    assert_eq!((probe.count("a"), probe.count("b")), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_reconcile_is_retried_after_backoff() {
    let cache = widgets(&["a"]);
    let probe = Probe::new(Duration::ZERO).script("a", &[Step::Panic, Step::Panic]);
    tokio::spawn(Controller::new(cache.cache(), config(1)).run(reconcile, probe.clone()));
    sleep(secs(60)).await;
    assert_eq!(probe.times("a"), [0.0, 1.0, 3.0]);
}

#[tokio::test(start_paused = true)]
async fn an_error_policy_decides_what_follows_a_failure() {
    let cache = widgets(&["a"]);
    let probe = Probe::new(Duration::ZERO).script("a", &[Step::Fail, Step::Fail]);
    let policy = |_: &Object<WidgetSpec>, _: &Scripted, _: &Probe| Action::Requeue(secs(30));
    let c = Controller::new(cache.cache(), config(1));
    tokio::spawn(c.run_with_error_policy(reconcile, policy, probe.clone()));
    sleep(secs(600)).await;
    assert_eq!(probe.times("a"), [0.0, 30.0, 60.0]);
}
