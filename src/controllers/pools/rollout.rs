//! Rolling a newly promoted model out to a Pool's members. Pure.
//!
//! A Pool with `model: {fromTrainingTarget: T}` wants every member to have T's current model
//! as its `model` input ([`wanted_model`]). A member that differs from the template only in
//! that input is *outdated*; [`super::plan`] replaces outdated members in batches
//! ([`replacements`]):
//!
//! 1. An outdated member that is not Running is replaced at once: it serves nothing, so
//!    replacing it costs no availability.
//! 2. Running outdated members are replaced only while fewer than `maxUnavailable` desired
//!    members are not Running (missing, pending, starting, failed and restarting all count),
//!    in name order. So a model whose members fail to start holds the rollout at its first
//!    batch instead of taking the whole Pool down, and a Pool whose members cannot all run
//!    (no room) stalls its rollout rather than dropping further below strength, as a
//!    Kubernetes Deployment does.
//! 3. A Running outdated member is replaced only once its node reports the new model
//!    prefetched into its cache (the Pool controller orders the prefetch in the member's
//!    binding), so the replacement starts without a staging wait, and a node that cannot fetch
//!    the model (store down, damaged bytes) keeps its member on the old model.
//! 4. With `update: Reload` no member is replaced for its model: its node swaps the model
//!    under the running process and reports it held; the member is then up to date.
//! 5. A newer promotion mid-rollout makes every member not on the newest model outdated: the
//!    rollout starts again for the newest one ([`rollout_status`]); the members already moved
//!    to the superseded model are replaced like the rest.
//!
//! `status.rollout.updated` counts members (not finished) on the rolled-out model (by their
//! spec, or by the model their node reports they hold); the rollout
//! is complete once all `total` of them are Running. `status.currentModel` is the model being
//! rolled out, `status.previousModel` the one before it: both pinned by garbage collection.

use chrono::{DateTime, Utc};

use crate::api::artifact::ArtifactSpec;
use crate::api::pool::{Pool, PoolStatus, Rollout};
use crate::api::training_target::TrainingTarget;
use crate::api::Spec;

/// The model a Pool's members should have: its TrainingTarget's current model when that is an
/// Artifact, else the model the Pool already rolled out (a deleted target or one that lost its
/// model must not churn the members), else none.
pub fn wanted_model(pool: &Pool, targets: &[TrainingTarget]) -> Option<String> {
    let source = pool.spec.model.as_ref()?;
    targets
        .iter()
        .find(|t| t.name() == source.from_training_target)
        .and_then(|t| t.status.as_ref()?.current_model.clone())
        .filter(|m| ArtifactSpec::name_problem(m).is_none())
        .or_else(|| pool.status.as_ref()?.current_model.clone())
}

/// A member the rollout may replace: its name, whether it is Running, and whether its node
/// reports the new model prefetched into its cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outdated {
    pub name: String,
    pub running: bool,
    pub prefetched: bool,
}

/// Which outdated members to delete now (each is made again with the wanted model by a later
/// pass): every one not Running, and Running ones whose node has prefetched the new model (so
/// the replacement starts from the node cache, with no staging wait), in name order, while
/// fewer than
/// `max_unavailable` of the Pool's desired members are not Running. `running` counts the
/// desired members Running now, `total` the desired members.
pub fn replacements(
    outdated: &[Outdated],
    running: u32,
    total: u32,
    max_unavailable: u32,
) -> Vec<String> {
    let mut out: Vec<String> = outdated
        .iter()
        .filter(|o| !o.running)
        .map(|o| o.name.clone())
        .collect();
    let unavailable = total.saturating_sub(running);
    let budget = max_unavailable.saturating_sub(unavailable) as usize;
    let mut live: Vec<&Outdated> = outdated
        .iter()
        .filter(|o| o.running && o.prefetched)
        .collect();
    live.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(live.into_iter().take(budget).map(|o| o.name.clone()));
    out
}

/// What the members look like with respect to the wanted model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Desired members.
    pub total: u32,
    /// Members, not finished, with the wanted model.
    pub updated: u32,
    /// Of those, the Running ones.
    pub updated_running: u32,
}

/// The Pool's model fields after a pass: `prev` is the stored status, `wanted` the model
/// members should have.
pub fn rollout_status(
    prev: Option<&PoolStatus>,
    wanted: Option<&str>,
    progress: Progress,
    now: DateTime<Utc>,
) -> (Option<Rollout>, Option<String>, Option<String>) {
    let prev_rollout = prev.and_then(|p| p.rollout.clone());
    let prev_current = prev.and_then(|p| p.current_model.clone());
    let prev_previous = prev.and_then(|p| p.previous_model.clone());
    let Some(wanted) = wanted else {
        return (prev_rollout, prev_current, prev_previous);
    };
    let (mut rollout, previous) = match prev_rollout {
        Some(r) if r.artifact == wanted => (r, prev_previous),
        _ => (
            Rollout {
                artifact: wanted.to_string(),
                started_at: Some(now),
                ..Rollout::default()
            },
            prev_current.filter(|c| c != wanted).or(prev_previous),
        ),
    };
    rollout.updated = progress.updated;
    rollout.total = progress.total;
    if progress.updated_running >= progress.total && rollout.completed_at.is_none() {
        rollout.completed_at = Some(now);
    }
    (Some(rollout), Some(wanted.to_string()), previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(name: &str, running: bool) -> Outdated {
        Outdated {
            name: name.into(),
            running,
            prefetched: true,
        }
    }

    #[test]
    fn a_running_member_is_replaced_only_once_its_node_prefetched_the_model() {
        let mut members = vec![o("a", true), o("b", true), o("c", true)];
        members[0].prefetched = false;
        // Budget 2: a is skipped (its node still downloads), b and c go.
        assert_eq!(replacements(&members, 3, 3, 2), ["b", "c"]);
        // Its node cannot fetch the model (store down): a keeps running the old one.
        assert!(replacements(&members[..1], 3, 3, 3).is_empty());
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_full_pool_is_replaced_in_batches_of_max_unavailable() {
        let all: Vec<Outdated> = (0..8).map(|i| o(&format!("sp-{i}"), true)).collect();
        // 8 members all Running, 25 % → 2 at a time.
        assert_eq!(replacements(&all, 8, 8, 2), ["sp-0", "sp-1"]);
        // Those two are being replaced (not Running): nothing more until they run.
        assert!(replacements(&all[2..], 6, 8, 2).is_empty());
        // One is back: one more.
        assert_eq!(replacements(&all[2..], 7, 8, 2), ["sp-2"]);
    }

    #[test]
    fn outdated_members_that_serve_nothing_are_replaced_at_once() {
        let members = [o("a", false), o("b", true), o("c", false)];
        // 2 of 3 not Running already: the budget (1) is spent, but a and c cost nothing.
        assert_eq!(replacements(&members, 1, 3, 1), ["a", "c"]);
    }

    #[test]
    fn a_failing_new_model_holds_the_rollout_at_its_first_batch() {
        let rest: Vec<Outdated> = (2..8).map(|i| o(&format!("sp-{i}"), true)).collect();
        // sp-0 and sp-1 run the new model and keep failing (never Running): 6 of 8 Running.
        for _ in 0..5 {
            assert!(
                replacements(&rest, 6, 8, 2).is_empty(),
                "no more members taken down while the new ones fail"
            );
        }
    }

    #[test]
    fn max_unavailable_rounds_down_but_never_to_zero() {
        use crate::api::pool::parse_max_unavailable as p;
        assert_eq!(p("25%", 8), Some(2));
        assert_eq!(p("25%", 7), Some(1));
        assert_eq!(p("25%", 3), Some(1), "at least one, or nothing would move");
        assert_eq!(p("25%", 0), Some(1));
        assert_eq!(p("100%", 5), Some(5));
        assert_eq!(p("3", 2), Some(3));
        for bad in [
            "0",
            "0%",
            "101%",
            "-1",
            "x",
            "%",
            "",
            "25.5%",
            "99999999999999999999",
        ] {
            assert_eq!(p(bad, 8), None, "{bad:?} accepted");
        }
        // A huge Pool does not overflow.
        assert_eq!(p("100%", u32::MAX), Some(u32::MAX));
    }

    #[test]
    fn a_rollout_starts_counts_and_completes_once_every_member_runs_the_model() {
        let start = rollout_status(
            None,
            Some("m1"),
            Progress {
                total: 4,
                updated: 0,
                updated_running: 0,
            },
            t(0),
        );
        let (r, current, previous) = start.clone();
        let r = r.unwrap();
        assert_eq!((r.artifact.as_str(), r.updated, r.total), ("m1", 0, 4));
        assert_eq!((r.started_at, r.completed_at), (Some(t(0)), None));
        assert_eq!((current.as_deref(), previous), (Some("m1"), None));
        let prev = PoolStatus {
            rollout: Some(r),
            current_model: current,
            ..PoolStatus::default()
        };
        let all_running = Progress {
            total: 4,
            updated: 4,
            updated_running: 4,
        };
        let (r, _, _) = rollout_status(Some(&prev), Some("m1"), all_running, t(9));
        let r = r.unwrap();
        assert_eq!(
            (r.updated, r.started_at, r.completed_at),
            (4, Some(t(0)), Some(t(9)))
        );
    }

    #[test]
    fn a_newer_promotion_mid_rollout_restarts_it_for_the_newest_model() {
        let prev = PoolStatus {
            rollout: Some(Rollout {
                artifact: "m2".into(),
                updated: 2,
                total: 4,
                started_at: Some(t(0)),
                completed_at: None,
            }),
            current_model: Some("m2".into()),
            previous_model: Some("m1".into()),
            ..PoolStatus::default()
        };
        let (r, current, previous) = rollout_status(
            Some(&prev),
            Some("m3"),
            Progress {
                total: 4,
                ..Progress::default()
            },
            t(5),
        );
        let r = r.unwrap();
        assert_eq!((r.artifact.as_str(), r.updated), ("m3", 0));
        assert_eq!((r.started_at, r.completed_at), (Some(t(5)), None));
        assert_eq!(current.as_deref(), Some("m3"));
        assert_eq!(
            previous.as_deref(),
            Some("m2"),
            "the model being left is pinned"
        );
    }

    #[test]
    fn no_model_yet_leaves_the_status_alone() {
        let prev = PoolStatus {
            current_model: Some("m1".into()),
            ..PoolStatus::default()
        };
        let (r, current, _) = rollout_status(Some(&prev), None, Progress::default(), t(0));
        assert_eq!((r, current.as_deref()), (None, Some("m1")));
    }
}
