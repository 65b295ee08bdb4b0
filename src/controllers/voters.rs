//! The voters controller (leader only): converges etcd's real member list toward the
//! `VoterSet`, one safe step per pass ([`plan::plan`]), and publishes what it sees as the
//! VoterSet's status.
//!
//! Caveat: membership changes are not key-value transactions, so the leader fence cannot guard
//! them. The controller checks that it still leads right before each change, and each change is
//! one step that the next pass re-derives from the real member list, so a stale leader can at
//! worst repeat a step that was already safe.

pub mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::selector::LabelSelector;
use crate::api::voter_set::{Member, VoterSetStatus, VOTER_SET_NAME};
use crate::api::{NodeSpec, VoterSetSpec};
use crate::store::events::EventRecorder;
use crate::store::members::{self, MemberInfo, Promotion};
use crate::store::{Store, StoreError};

use plan::{Candidate, Plan, Step};

/// How often the controller looks at the member list.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);

pub struct VotersController {
    store: Store,
    events: EventRecorder,
    last_status: Option<VoterSetStatus>,
}

impl VotersController {
    pub fn new(store: Store) -> Self {
        VotersController {
            events: EventRecorder::controller(store.clone(), "voters"),
            store,
            last_status: None,
        }
    }

    /// Runs passes until `stop` resolves; a failing pass is logged and retried.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.pass().await {
                if matches!(e, StoreError::Fenced) {
                    return;
                }
                tracing::debug!(%e, "voters pass failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = &mut stop => return,
            }
        }
    }

    /// One pass: read, decide, take at most one step, publish status.
    pub async fn pass(&mut self) -> Result<(), StoreError> {
        let Some(voter_set) = self.store.get::<VoterSetSpec>(VOTER_SET_NAME).await? else {
            return Ok(());
        };
        let (nodes, _) = self
            .store
            .list::<NodeSpec>(&LabelSelector::everything())
            .await?;
        let candidates: BTreeMap<String, Candidate> = nodes
            .iter()
            .map(|n| {
                let status = n.status.clone().unwrap_or_default();
                let candidate = Candidate {
                    ready: status.is_ready(),
                    nat_blocked: n.spec.nat_blocked,
                    peer_urls: status.etcd.map(|e| e.peer_urls).unwrap_or_default(),
                };
                (n.name().to_string(), candidate)
            })
            .collect();
        let members = members::list(&self.store).await?;
        let plan = plan::plan(&voter_set.spec.voters, &candidates, &members);
        let mut message = plan.message.clone();
        if let Some(step) = &plan.step {
            match self.take(step).await {
                Ok(Some(note)) => message = note,
                Ok(None) => {}
                Err(e) => {
                    message = format!("{message}: {e}");
                    self.events.warning(
                        "VoterSet",
                        VOTER_SET_NAME,
                        "voter_step_failed",
                        message.clone(),
                    );
                }
            }
        }
        // Status reflects the member list this pass decided on; the next pass shows the step.
        let status = status_of(&plan, message, &members, &candidates);
        if self.last_status.as_ref() != Some(&status) {
            self.store
                .put_status::<VoterSetSpec>(VOTER_SET_NAME, &status)
                .await?;
            self.last_status = Some(status);
        }
        Ok(())
    }

    /// Takes one step; `Some(message)` replaces the plan's message when the step is waiting.
    async fn take(&self, step: &Step) -> Result<Option<String>, StoreError> {
        self.store.check_fence().await?;
        match step {
            Step::AddLearner { node, peer_urls } => {
                let id = members::add_learner(&self.store, peer_urls).await?;
                self.events.normal(
                    "VoterSet",
                    VOTER_SET_NAME,
                    "voter_learner_added",
                    format!("{node} added as learner {id:x} ({})", peer_urls.join(",")),
                );
                Ok(None)
            }
            Step::Promote { node, id } => match members::promote(&self.store, *id).await? {
                Promotion::Promoted => {
                    self.events.normal(
                        "VoterSet",
                        VOTER_SET_NAME,
                        "voter_promoted",
                        format!("{node} promoted to voter"),
                    );
                    Ok(None)
                }
                Promotion::NotCaughtUp => Ok(Some(format!(
                    "learner {node} is catching up with the leader's log"
                ))),
            },
            Step::Remove { node, id, reason } => {
                if let Err(e) = members::remove(&self.store, *id).await {
                    // The member that served the request may have been the one removed: it
                    // stops before it answers. The member list tells whether it is gone.
                    let gone = members::list(&self.store)
                        .await
                        .is_ok_and(|list| list.iter().all(|m| m.id != *id));
                    if !gone {
                        return Err(e);
                    }
                }
                self.events.normal(
                    "VoterSet",
                    VOTER_SET_NAME,
                    "voter_removed",
                    format!("{node} removed: {reason}"),
                );
                Ok(None)
            }
        }
    }
}

fn status_of(
    plan: &Plan,
    message: String,
    members: &[MemberInfo],
    candidates: &BTreeMap<String, Candidate>,
) -> VoterSetStatus {
    let voters: Vec<&MemberInfo> = members.iter().filter(|m| !m.learner).collect();
    let healthy = voters.iter().filter(|m| m.healthy).count();
    VoterSetStatus {
        members: members
            .iter()
            .map(|m| Member {
                name: plan::member_node(m, candidates).unwrap_or_default(),
                id: m.hex_id(),
                learner: m.learner,
                healthy: m.healthy,
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
            })
            .collect(),
        quorum: !voters.is_empty() && healthy >= plan::quorum(voters.len()),
        phase: plan.phase,
        message,
    }
}
