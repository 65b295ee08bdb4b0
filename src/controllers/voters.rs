//! The voters controller (leader only): converges etcd's real member list toward the
//! `VoterSet`, one safe step per pass ([`plan::plan`]), and publishes what it sees as the
//! VoterSet's status.
//!
//! Caveat: membership changes are not key-value transactions, so the leader fence cannot guard
//! them. Right before each change the controller checks the fence (it leads now) and its leader
//! lease's remaining validity on the local monotonic clock (no other leader can exist before that
//! lease can expire): the change is sent only with at least [`min_budget`] of it left, and given
//! up when the lease could lapse. What no client can rule out is the process pausing between
//! that last check and the bytes leaving it; a step sent that late is still one safe step of an
//! earlier plan — etcd's `--strict-reconfig-check` refuses one that would lose quorum — and the
//! next pass re-derives the plan from the real member list.

pub mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::event::Reason;
use crate::api::selector::LabelSelector;
use crate::api::voter_set::{Member, VoterSetStatus, VOTER_SET_NAME};
use crate::api::{NodeSpec, VoterSetSpec};
use crate::clock::BootTime;
use crate::store::events::EventRecorder;
use crate::store::lease::LeaseStatus;
use crate::store::members::{self, MemberInfo, Promotion};
use crate::store::{Store, StoreError};
use crate::tasks::CancellationToken;

use plan::{Candidate, Plan, Step};

/// How often the controller looks at the member list.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);

pub struct VotersController {
    store: Store,
    events: EventRecorder,
    last_status: Option<VoterSetStatus>,
    /// The leader lease, when known: steps are taken only while it is surely valid.
    lease: Option<watch::Receiver<LeaseStatus>>,
}

/// The least validity left on the leader lease for a membership step to be sent: a quarter of
/// its TTL.
pub fn min_budget(ttl: Duration) -> Duration {
    ttl / 4
}

/// How long a membership step may take given the leader lease `lease` at `now`: its remaining
/// validity, or [`StoreError::LeaseLost`] when less than [`min_budget`] is left.
pub fn step_budget(lease: &LeaseStatus, now: BootTime) -> Result<Duration, StoreError> {
    let left = lease.valid_for(now);
    if left < min_budget(lease.ttl) || left.is_zero() {
        return Err(StoreError::LeaseLost { lease: lease.id });
    }
    Ok(left)
}

impl VotersController {
    pub fn new(store: Store) -> Self {
        VotersController {
            events: EventRecorder::controller(store.clone(), "voters"),
            store,
            last_status: None,
            lease: None,
        }
    }

    /// Takes membership steps only while the leader lease `lease` is surely valid.
    pub fn with_lease(mut self, lease: watch::Receiver<LeaseStatus>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Runs passes until `stop` resolves; a failing pass is logged and retried. A refused
    /// fenced write ends it with [`StoreError::Fenced`]: the caller must step down.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), StoreError> {
        loop {
            if let Err(e) = self.pass().await {
                if matches!(e, StoreError::Fenced) {
                    return Err(e);
                }
                tracing::debug!(%e, "voters pass failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = stop.cancelled() => return Ok(()),
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
                    self.events.record(
                        "VoterSet",
                        VOTER_SET_NAME,
                        Reason::VoterStepFailed,
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
        let budget = match &self.lease {
            Some(lease) => step_budget(&lease.borrow(), BootTime::now())?,
            None => crate::store::client::DEFAULT_OP_TIMEOUT,
        };
        tokio::time::timeout(budget, self.apply(step))
            .await
            .map_err(|_| StoreError::Timeout {
                endpoints: self.store.endpoints().to_string(),
                seconds: budget.as_secs(),
            })?
    }

    async fn apply(&self, step: &Step) -> Result<Option<String>, StoreError> {
        match step {
            Step::AddLearner { node, peer_urls } => {
                let id = members::add_learner(&self.store, peer_urls).await?;
                self.events.record(
                    "VoterSet",
                    VOTER_SET_NAME,
                    Reason::VoterLearnerAdded,
                    format!("{node} added as learner {id:x} ({})", peer_urls.join(",")),
                );
                Ok(None)
            }
            Step::Promote { node, id } => match members::promote(&self.store, *id).await? {
                Promotion::Promoted => {
                    self.events.record(
                        "VoterSet",
                        VOTER_SET_NAME,
                        Reason::VoterPromoted,
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
                self.events.record(
                    "VoterSet",
                    VOTER_SET_NAME,
                    Reason::VoterRemoved,
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

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_membership_step_needs_a_quarter_of_the_leader_lease_left() {
        let renewed = BootTime::from_nanos(100_000_000_000);
        let lease = LeaseStatus {
            id: 1,
            ttl: Duration::from_secs(4),
            renewed,
            round_trip: Duration::ZERO,
            renewals: 1,
            lost: None,
        };
        let at = |ms: u64| BootTime::from_nanos(renewed.as_nanos() + ms * 1_000_000);
        assert_eq!(
            step_budget(&lease, at(1_000)).unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(
            step_budget(&lease, at(3_000)).unwrap(),
            Duration::from_secs(1)
        );
        assert!(
            step_budget(&lease, at(3_001)).is_err(),
            "less than a quarter left"
        );
        let lost = LeaseStatus {
            lost: Some(crate::store::lease::LossReason::Unrenewed),
            ..lease
        };
        assert!(step_budget(&lost, at(0)).is_err());
    }
}
