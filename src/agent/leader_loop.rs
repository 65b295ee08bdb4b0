//! Campaign, lead while the lease holds, step down, campaign again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use etcd_client::TxnOp;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{AgentConfig, AgentState};
use crate::controllers::housekeeping::Housekeeping;
use crate::controllers::metrics::LeaderMetrics;
use crate::controllers::notifier::NotifierController;
use crate::controllers::placement::PlacementConfig;
use crate::controllers::scheduler::Scheduler;
use crate::controllers::voters::VotersController;
use crate::store::events::EventRecorder;
use crate::store::leader::{campaign, ElectionConfig, Leadership};
use crate::store::{Store, StoreError};

/// The key the leader's heartbeat controller writes: proof that the leader's fenced writes land.
pub const HEARTBEAT_KEY: &str = "/rift/v1/controllers/heartbeat";

pub async fn run(
    store: &Store,
    config: &AgentConfig,
    state: &Arc<AgentState>,
    shutdown: watch::Receiver<bool>,
) {
    let mut election = ElectionConfig::new(config.name.clone(), config.lease_ttl);
    election.endpoint = config.advertise.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut stop = shutdown.clone();
        let leadership = match campaign(store, &election, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%e, "campaign failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        state.is_leader.store(true, Ordering::Relaxed);
        *state.leader.write().expect("lock") = Some(config.name.clone());
        let housekeeping = Housekeeping {
            margin: config.reschedule_margin,
        };
        let metrics = state.metrics.leader.clone();
        metrics.leading(true);
        let resign = lead(
            &leadership,
            &config.name,
            housekeeping,
            metrics.clone(),
            shutdown.clone(),
        )
        .await;
        metrics.leading(false);
        state.is_leader.store(false, Ordering::Relaxed);
        if resign {
            leadership.resign().await;
            tracing::info!("resigned leadership");
            return;
        }
        tracing::warn!("lost leadership; campaigning again");
    }
}

/// Runs the controllers until leadership is lost (returns false) or shutdown (returns true).
/// A controller that ends on its own (a refused fenced write, an error, a panic) ends leading:
/// the leader steps down and campaigns again rather than lead without it.
async fn lead(
    leadership: &Leadership,
    node: &str,
    housekeeping: Housekeeping,
    metrics: LeaderMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let store = leadership.store();
    EventRecorder::controller(store.clone(), "leader").normal(
        "Node",
        node,
        "leader_changed",
        format!("{node} is now the leader"),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let voters = VotersController::new(store.clone()).with_lease(leadership.lease_watch());
    let scheduler = Scheduler::new(store.clone(), PlacementConfig::default(), housekeeping)
        .with_metrics(metrics);
    let mut controllers = Controllers {
        tasks: vec![
            (
                "scheduler",
                Some(tokio::spawn(scheduler.run(stop(stop_rx.clone())))),
            ),
            (
                "notifier",
                Some(tokio::spawn(
                    NotifierController::new(store.clone()).run(stop(stop_rx.clone())),
                )),
            ),
            ("voters", Some(tokio::spawn(voters.run(stop(stop_rx))))),
        ],
    };
    let resign =
        lead_with_heartbeat(leadership, node, &store, &mut shutdown, &mut controllers).await;
    let _ = stop_tx.send(true);
    controllers.join().await;
    resign
}

/// One controller's task.
type ControllerTask = JoinHandle<Result<(), StoreError>>;

/// The leader's controller tasks, each `None` once it has ended and been looked at.
struct Controllers {
    tasks: Vec<(&'static str, Option<ControllerTask>)>,
}

impl Controllers {
    /// Resolves when a controller ends while leading, with its name and how it ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: a task's end is taken (and its slot cleared) only when it is returned.
    async fn any_ended(&mut self) -> (&'static str, String) {
        std::future::poll_fn(|cx| {
            for (name, slot) in self.tasks.iter_mut() {
                if let Some(handle) = slot {
                    if let Poll::Ready(r) = Pin::new(handle).poll(cx) {
                        *slot = None;
                        return Poll::Ready((*name, describe(r)));
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Waits for every controller still running (they were told to stop) and logs how each
    /// ended.
    async fn join(self) {
        for (name, slot) in self.tasks {
            if let Some(handle) = slot {
                let how = describe(handle.await);
                if how != "stopped" {
                    tracing::warn!(controller = name, how, "a controller ended badly");
                }
            }
        }
    }
}

fn describe(r: Result<Result<(), StoreError>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "stopped".into(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(e) if e.is_panic() => format!("panicked: {e}"),
        Err(e) => format!("was cancelled: {e}"),
    }
}

async fn lead_with_heartbeat(
    leadership: &Leadership,
    node: &str,
    store: &Store,
    shutdown: &mut watch::Receiver<bool>,
    controllers: &mut Controllers,
) -> bool {
    let mut seq: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = leadership.lost() => return false,
            _ = super::stopped(shutdown) => return true,
            (name, how) = controllers.any_ended() => {
                tracing::warn!(controller = name, how, "a controller ended: stepping down");
                leadership.step_down();
                return false;
            }
            _ = tick.tick() => {
                seq += 1;
                // Every 2 s: Nodes for agents that announced one and have none (workers
                // admitted without a join may not create their own).
                if seq % 4 == 1 {
                    match crate::agent::registration::adopt_announced(store).await {
                        Ok(created) if !created.is_empty() => {
                            tracing::info!(nodes = %created.join(","), "created announced Nodes");
                        }
                        Err(StoreError::Fenced) => {
                            leadership.step_down();
                            return false;
                        }
                        _ => {}
                    }
                }
                if let Err(e) = heartbeat(store, node, seq).await {
                    if matches!(e, StoreError::Fenced) {
                        tracing::warn!("a leader write was refused by the fence: stepping down");
                        leadership.step_down();
                        return false;
                    }
                    tracing::debug!(%e, "leader heartbeat failed");
                }
            }
        }
    }
}

/// The trivial controller every leader runs: a fenced write of who leads, a sequence number
/// and the time. Operators see the leader is alive and able to write.
async fn heartbeat(store: &Store, node: &str, seq: u64) -> Result<(), StoreError> {
    let body = json!({"node": node, "seq": seq, "at": Utc::now()}).to_string();
    store
        .txn(vec![], vec![TxnOp::put(HEARTBEAT_KEY, body, None)], vec![])
        .await
        .map(|_| ())
}
