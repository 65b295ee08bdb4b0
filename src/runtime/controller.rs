//! The reconcile loop: keys come in from triggers, go through a [`WorkQueue`], and each is
//! reconciled against the object in a [`Cache`].
//!
//! Guarantees:
//!
//! * **Waits for its caches.** Nothing is reconciled until the controller's own cache and every
//!   cache given to [`Controller::owns`] / [`Controller::watches`] is ready (has applied a full
//!   list), so a reconciler never takes "not loaded yet" for "absent" (and, say, creates a Job
//!   twice). Then every cached object is reconciled once.
//! * **Never the same key twice at once, deduplicated, at most `concurrency` at a time.**
//!   Changes that arrive while a key runs cause exactly one more run after it.
//! * **Actions.** `Ok(Action::Requeue(after))` runs the key again no earlier than `after` past
//!   the end of this run; `Ok(Action::AwaitChange)` waits for a trigger. A success resets the
//!   key's failure backoff.
//! * **Failures.** An error (or a panic, which is caught and logged) requeues the key after
//!   its per-key backoff, which grows with each failure in a row; with
//!   [`Controller::run_with_error_policy`] the policy's [`Action`] decides instead (panics
//!   still back off).
//! * **Deleted objects are skipped.** A key whose object is no longer in the cache when its
//!   turn comes is not reconciled and its backoff is forgotten. Clean-up that must run on
//!   deletion belongs behind a finalizer: an object with finalizers stays in the cache (with
//!   `deletionTimestamp` set) until they are removed, and is reconciled like any other.
//! * **Graceful shutdown.** When the signal given to [`Controller::shutdown_on`] fires, no new
//!   key is started; `run` returns once the reconciles in flight have finished.
//!
//! Caveats: the object a reconciler gets is the cached one (spec and metadata; `status` is
//! `None`); it may be a little behind etcd, so writes must compare-and-swap on its
//! `resourceVersion`. A reconcile that never finishes holds its key (and a concurrency slot)
//! and delays shutdown: bound your own I/O with timeouts. A cache whose reflector never lists
//! keeps the controller waiting (until shutdown) without reconciling anything.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture};
use futures::stream::{self, BoxStream, Stream, StreamExt};
use futures::FutureExt;
use tokio::task::JoinSet;

use super::queue::{Claim, QueueConfig, WorkQueue};
use super::reflector::{Cache, Change};
use super::trigger::{self, Trigger};
use crate::api::{Object, Spec};

/// What to do with a key after reconciling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again no earlier than this long from now (sooner if a trigger fires).
    Requeue(Duration),
    /// Reconcile again only when something triggers it.
    AwaitChange,
}

/// Why a reconcile did not succeed (what the controller logs).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError<E: std::error::Error + 'static> {
    #[error("reconciling {key} failed: {source}")]
    Reconcile {
        key: String,
        #[source]
        source: E,
    },
    #[error("reconciling {key} panicked: {message}")]
    Panicked { key: String, message: String },
}

/// Tuning for a [`Controller`].
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// How many different keys may be reconciled at once (at least 1).
    pub concurrency: usize,
    pub queue: QueueConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            queue: QueueConfig::default(),
        }
    }
}

type ErrorPolicy<S, E, Ctx> = Arc<dyn Fn(&Object<S>, &E, &Ctx) -> Action + Send + Sync>;

/// Reconciles objects of kind `S`; build it, then [`Controller::run`] it.
pub struct Controller<S: Spec> {
    cache: Cache<S>,
    queue: WorkQueue,
    concurrency: usize,
    triggers: Vec<BoxStream<'static, Trigger>>,
    ready: Vec<BoxFuture<'static, ()>>,
    shutdown: BoxFuture<'static, ()>,
}

fn ready_of<O: Spec>(cache: &Cache<O>) -> BoxFuture<'static, ()> {
    let cache = cache.clone();
    async move { cache.ready().await }.boxed()
}

impl<S: Spec> Controller<S> {
    /// A controller for the objects in `cache`, triggered by their changes.
    pub fn new(cache: Cache<S>, config: ControllerConfig) -> Self {
        Self {
            triggers: vec![trigger::on_changes(&cache)],
            ready: vec![ready_of(&cache)],
            queue: WorkQueue::new(config.queue),
            concurrency: config.concurrency.max(1),
            cache,
            shutdown: future::pending().boxed(),
        }
    }

    /// Also reconcile the owner (of kind `S`, by `ownerReferences`) of each changed object of
    /// kind `O`.
    pub fn owns<O: Spec>(mut self, cache: Cache<O>) -> Self {
        self.triggers
            .push(trigger::on_owned_changes::<S, O>(&cache));
        self.ready.push(ready_of(&cache));
        self
    }

    /// Also reconcile the names `map` picks for each changed object of kind `O`.
    pub fn watches<O, F, I>(mut self, cache: Cache<O>, map: F) -> Self
    where
        O: Spec,
        F: Fn(&Change<O>) -> I + Send + 'static,
        I: IntoIterator<Item = String>,
    {
        self.triggers.push(trigger::on_mapped_changes(&cache, map));
        self.ready.push(ready_of(&cache));
        self
    }

    /// Also reconcile each name from `keys` (any source: a channel, a timer, another watch).
    pub fn reconcile_on(mut self, keys: impl Stream<Item = String> + Send + 'static) -> Self {
        self.triggers.push(trigger::on_keys(keys));
        self
    }

    /// Stop gracefully once `signal` resolves.
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = signal.boxed();
        self
    }

    /// The controller's queue, to trigger keys directly. `run` shuts it down when it stops;
    /// shutting it down from outside stops `run` like the shutdown signal.
    pub fn queue(&self) -> WorkQueue {
        self.queue.clone()
    }

    /// Runs until the shutdown signal; failures back off per key.
    pub async fn run<Ctx, E, F, Fut>(self, reconcile: F, ctx: Arc<Ctx>)
    where
        Ctx: Send + Sync + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Arc<Object<S>>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        self.run_inner(Arc::new(reconcile), None, ctx).await;
    }

    /// Runs until the shutdown signal; after a failure, `error_policy` says what to do.
    pub async fn run_with_error_policy<Ctx, E, F, Fut, P>(
        self,
        reconcile: F,
        error_policy: P,
        ctx: Arc<Ctx>,
    ) where
        Ctx: Send + Sync + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Arc<Object<S>>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(&Object<S>, &E, &Ctx) -> Action + Send + Sync + 'static,
    {
        let policy: ErrorPolicy<S, E, Ctx> = Arc::new(error_policy);
        self.run_inner(Arc::new(reconcile), Some(policy), ctx).await;
    }

    async fn run_inner<Ctx, E, F, Fut>(
        self,
        reconcile: Arc<F>,
        policy: Option<ErrorPolicy<S, E, Ctx>>,
        ctx: Arc<Ctx>,
    ) where
        Ctx: Send + Sync + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Arc<Object<S>>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let Controller {
            cache,
            queue,
            concurrency,
            triggers,
            ready,
            mut shutdown,
        } = self;
        tokio::select! {
            _ = &mut shutdown => {
                queue.shut_down();
                return;
            }
            _ = future::join_all(ready) => {}
        }
        let enqueue_all = || cache.list().iter().for_each(|o| queue.enqueue(o.name()));
        enqueue_all();
        let mut triggers = stream::select_all(triggers);
        let mut triggers_open = true;
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(joined) = tasks.join_next() => report_join(joined),
                t = triggers.next(), if triggers_open => match t {
                    Some(Trigger::Key(key)) => queue.enqueue(key),
                    Some(Trigger::All) => enqueue_all(),
                    None => triggers_open = false,
                },
                claim = queue.next(), if tasks.len() < concurrency => {
                    let Some(claim) = claim else { break };
                    tasks.spawn(reconcile_one(
                        claim,
                        cache.clone(),
                        queue.clone(),
                        reconcile.clone(),
                        policy.clone(),
                        ctx.clone(),
                    ));
                }
            }
        }
        queue.shut_down();
        tracing::debug!(in_flight = tasks.len(), "controller stopping");
        while let Some(joined) = tasks.join_next().await {
            report_join(joined);
        }
    }
}

fn report_join(joined: Result<(), tokio::task::JoinError>) {
    // Panics are caught inside the task; only an abort from outside ends up here.
    if let Err(e) = joined {
        tracing::error!(error = %e, "a reconcile task ended abnormally");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Reconciles one claimed key and schedules what comes next; the claim is released (and a
/// change held back meanwhile becomes due) when this returns.
async fn reconcile_one<S, Ctx, E, F, Fut>(
    claim: Claim,
    cache: Cache<S>,
    queue: WorkQueue,
    reconcile: Arc<F>,
    policy: Option<ErrorPolicy<S, E, Ctx>>,
    ctx: Arc<Ctx>,
) where
    S: Spec,
    E: std::error::Error + Send + 'static,
    F: Fn(Arc<Object<S>>, Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    let key = claim.key();
    let Some(obj) = cache.get(key) else {
        tracing::debug!(key, "object is gone; skipping");
        queue.reset_backoff(key);
        return;
    };
    let run = AssertUnwindSafe(async { reconcile(obj.clone(), ctx.clone()).await });
    let action = match run.catch_unwind().await {
        Ok(Ok(action)) => {
            queue.reset_backoff(key);
            Some(action)
        }
        Ok(Err(source)) => {
            let action = policy.as_ref().map(|p| p(&obj, &source, &ctx));
            let key = key.to_string();
            let err = ControllerError::Reconcile { key, source };
            tracing::warn!(error = %err, "reconcile failed");
            action
        }
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            let err = ControllerError::<E>::Panicked {
                key: key.to_string(),
                message,
            };
            tracing::error!(error = %err, "reconcile panicked");
            None
        }
    };
    match action {
        Some(Action::Requeue(after)) => queue.enqueue_after(key, after),
        Some(Action::AwaitChange) => {}
        None => {
            let delay = queue.enqueue_backoff(key);
            tracing::debug!(key, ?delay, "backing off");
        }
    }
    drop(claim);
}

#[cfg(test)]
mod tests;
