//! Campaign, lead while the lease holds, step down, campaign again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use serde_json::json;
use tokio::task::JoinHandle;

use super::{AgentConfig, AgentState};
use crate::api::event::Reason;
use crate::controllers::artifact_gc::ArtifactGc;
use crate::controllers::artifacts::ArtifactsController;
use crate::controllers::housekeeping::Housekeeping;
use crate::controllers::metrics::LeaderMetrics;
use crate::controllers::notifier::NotifierController;
use crate::controllers::placement::PlacementConfig;
use crate::controllers::scheduler::Scheduler;
use crate::controllers::voters::VotersController;
use crate::store::events::EventRecorder;
use crate::store::leader::{campaign, ElectionConfig, Leadership};
use crate::store::Op;
use crate::store::{Store, StoreError};
use crate::tasks::{CancellationToken, Tasks};

/// The key the leader's heartbeat controller writes: proof that the leader's fenced writes land.
pub const HEARTBEAT_KEY: &str = "/rift/v1/controllers/heartbeat";

/// Campaigns, leads while the lease holds, steps down and campaigns again, until `tasks` is
/// stopped; then resigns (so a standby takes over at once) and returns. The controllers run as
/// children of `tasks`.
pub async fn run(store: &Store, config: &AgentConfig, state: &Arc<AgentState>, tasks: &Tasks) {
    let mut election = ElectionConfig::new(config.name.clone(), config.lease_ttl);
    election.endpoint = config.advertise.clone();
    loop {
        if tasks.is_stopping() {
            return;
        }
        let leadership = match campaign(store, &election, tasks.token()).await {
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
            config,
            housekeeping,
            metrics.clone(),
            tasks.child(),
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

/// Runs the controllers under `controllers` until leadership is lost (returns false) or
/// `controllers` is stopped from above (returns true); either way every controller has ended
/// when it returns.
///
/// Leadership is lost, in one place ([`Leadership::lost`]), when the lease is lost or any
/// fenced write — a controller's, the heartbeat's, an event's — was refused. A controller that
/// ends on its own (an error, a panic) also ends leading: the leader steps down and campaigns
/// again rather than lead without it.
async fn lead(
    leadership: &Leadership,
    config: &AgentConfig,
    housekeeping: Housekeeping,
    metrics: LeaderMetrics,
    controllers: Tasks,
) -> bool {
    let node = config.name.as_str();
    let store = leadership.store();
    EventRecorder::controller(store.clone(), "leader").record(
        "Node",
        node,
        Reason::LeaderChanged,
        format!("{node} is now the leader"),
    );
    let stop = controllers.token().clone();
    let voters = VotersController::new(store.clone()).with_lease(leadership.lease_watch());
    let scheduler = Scheduler::new(store.clone(), PlacementConfig::default(), housekeeping)
        .with_metrics(metrics);
    let notifier = NotifierController::new(store.clone());
    let artifacts = ArtifactsController::new(store.clone());
    let artifact_gc = ArtifactGc::new(store.clone(), config.secrets_dir.clone());
    let mut running = Controllers {
        tasks: vec![
            (
                "scheduler",
                Some(controllers.spawn(scheduler.run(stop.clone()))),
            ),
            (
                "notifier",
                Some(controllers.spawn(notifier.run(stop.clone()))),
            ),
            ("voters", Some(controllers.spawn(voters.run(stop.clone())))),
            (
                "artifacts",
                Some(controllers.spawn(artifacts.run(stop.clone()))),
            ),
            (
                "artifact-gc",
                Some(controllers.spawn(artifact_gc.run(stop.clone()))),
            ),
        ],
    };
    let resign = lead_with_heartbeat(leadership, node, &store, &stop, &mut running).await;
    controllers.stop().await;
    running.report();
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

    /// Logs how each controller that was told to stop ended (all have: their tasks were
    /// waited for).
    fn report(self) {
        for (name, slot) in self.tasks {
            if let Some(handle) = slot {
                let how = match handle.now_or_never() {
                    Some(r) => describe(r),
                    None => "still running".into(),
                };
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
        Ok(Err(StoreError::Fenced)) => "stopped: no longer the leader".into(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(e) if e.is_panic() => format!("panicked: {e}"),
        Err(e) => format!("was cancelled: {e}"),
    }
}

async fn lead_with_heartbeat(
    leadership: &Leadership,
    node: &str,
    store: &Store,
    stop: &CancellationToken,
    controllers: &mut Controllers,
) -> bool {
    let mut seq: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = leadership.lost() => {
                tracing::warn!("leadership lost (the lease, or a write refused by the fence)");
                return false;
            }
            _ = stop.cancelled() => return true,
            (name, how) = controllers.any_ended() => {
                tracing::warn!(controller = name, how, "a controller ended: stepping down");
                leadership.step_down();
                return false;
            }
            _ = tick.tick() => {
                seq += 1;
                // Every 2 s: Nodes for agents that announced one and have none (workers
                // admitted without a join may not create their own). A refused write ends
                // leadership through the fence.
                if seq % 4 == 1 {
                    match crate::agent::registration::adopt_announced(store).await {
                        Ok(created) if !created.is_empty() => {
                            tracing::info!(nodes = %created.join(","), "created announced Nodes");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(%e, "cannot adopt announced Nodes"),
                    }
                }
                if let Err(e) = heartbeat(store, node, seq).await {
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
        .txn(vec![], vec![Op::put(HEARTBEAT_KEY, body)], vec![])
        .await
        .map(|_| ())
}
