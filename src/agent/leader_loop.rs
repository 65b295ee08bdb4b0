//! Campaign, lead while the lease holds, step down, campaign again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use etcd_client::TxnOp;
use serde_json::json;
use tokio::sync::watch;

use super::{AgentConfig, AgentState};
use crate::controllers::housekeeping::Housekeeping;
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
        let resign = lead(&leadership, &config.name, housekeeping, shutdown.clone()).await;
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
async fn lead(
    leadership: &Leadership,
    node: &str,
    housekeeping: Housekeeping,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let store = leadership.store();
    EventRecorder::controller(store.clone(), "leader").normal(
        "Node",
        node,
        "leader_changed",
        format!("{node} is now the leader"),
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut notifier_stop = stop_tx.subscribe();
    let notifier = tokio::spawn(NotifierController::new(store.clone()).run(async move {
        let _ = notifier_stop.wait_for(|s| *s).await;
    }));
    let mut voters_stop = stop_tx.subscribe();
    let voters = tokio::spawn(VotersController::new(store.clone()).run(async move {
        let _ = voters_stop.wait_for(|s| *s).await;
    }));
    let scheduler = Scheduler::new(store.clone(), PlacementConfig::default(), housekeeping);
    let mut scheduler = tokio::spawn(scheduler.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let resign = lead_with_heartbeat(leadership, node, &store, &mut shutdown, &mut scheduler).await;
    let _ = stop_tx.send(true);
    // The scheduler may already have ended (that is why leading stopped): a finished handle
    // must not be awaited again.
    if !scheduler.is_finished() {
        let _ = scheduler.await;
    }
    let _ = notifier.await;
    let _ = voters.await;
    resign
}

async fn lead_with_heartbeat(
    leadership: &Leadership,
    node: &str,
    store: &Store,
    shutdown: &mut watch::Receiver<bool>,
    scheduler: &mut tokio::task::JoinHandle<Result<(), StoreError>>,
) -> bool {
    let mut seq: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = leadership.lost() => return false,
            _ = super::stopped(shutdown) => return true,
            r = &mut *scheduler => {
                tracing::warn!(result = ?r.map(|r| r.err()), "the scheduler stopped: stepping down");
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
