//! One way to start and stop tasks: a [`CancellationToken`] says "stop", a [`TaskTracker`]
//! knows every task started under it (tokio-util's pair, as in tokio's graceful-shutdown
//! guide).
//!
//! Every long-lived task rift starts is spawned through a [`Tasks`], which owns it: the task
//! either watches [`Tasks::token`] and ends on its own ([`Tasks::spawn`]), or is dropped at its
//! next await once the token fires ([`Tasks::spawn_until_stopped`], for loops any of whose
//! steps may be abandoned). [`Tasks::stop`] fires the token and waits until every task has
//! ended, so a caller that returns — normally or early, on an error — leaves nothing running.
//! Stopping is hierarchical: a [`Tasks::child`] stops with its parent, or alone.
//!
//! There is one signal listener per process ([`shutdown_on_signals`]); everything else
//! follows a token derived from it.
//!
//! Caveat: a task blocked in synchronous code (a hung driver call inside `spawn_blocking`)
//! cannot be interrupted; only its async waiter is dropped, and the blocking thread finishes
//! on its own.

use std::future::Future;

use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A stop signal and the tasks that follow it. Cheap to clone; clones share both.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Tasks that stop when `token` fires (or when [`Tasks::stop`] is called).
    pub fn new(token: CancellationToken) -> Self {
        Self {
            token,
            tracker: TaskTracker::new(),
        }
    }

    /// Tasks of their own that also stop when these do; stopping them leaves these running.
    pub fn child(&self) -> Self {
        Self::new(self.token.child_token())
    }

    /// The token these tasks stop on; hand it (or a child of it) to what must stop with them.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the stop was given.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns a task that ends on its own once [`Self::token`] fires.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a task that is dropped at its next await once [`Self::token`] fires: for loops
    /// whose every step may be abandoned (probes, reads).
    pub fn spawn_until_stopped<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            token.run_until_cancelled_owned(task).await;
        })
    }

    /// Fires the token and waits until every task spawned here has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: the token stays fired; calling it again waits again.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// How many tasks spawned here are still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

/// The process's one signal listener: a token fired by the first SIGTERM or SIGINT; a second
/// one exits the process at once (exit status 130). Spawned on the current runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        fire.cancel();
        // A second signal while shutting down means "now": exit without waiting (jobs keep
        // running under their shims either way).
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stop_waits_for_every_task_and_drops_abandonable_ones() {
        let tasks = Tasks::new(CancellationToken::new());
        let token = tasks.token().clone();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(1);
        tasks.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            done_tx.send(()).await.unwrap();
        });
        tasks.spawn_until_stopped(std::future::pending());
        assert_eq!(tasks.running(), 2);
        tasks.stop().await;
        assert_eq!(tasks.running(), 0);
        assert!(
            done_rx.try_recv().is_ok(),
            "the cooperative task finished its cleanup"
        );
    }

    #[tokio::test]
    async fn a_child_stops_with_its_parent_and_alone_without_it() {
        let parent = Tasks::new(CancellationToken::new());
        let child = parent.child();
        child.spawn_until_stopped(std::future::pending());
        child.stop().await;
        assert!(
            !parent.is_stopping(),
            "a child's stop leaves the parent running"
        );

        let child = parent.child();
        parent.token().cancel();
        assert!(child.is_stopping());
    }
}
