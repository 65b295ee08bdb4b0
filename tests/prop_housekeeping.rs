//! Property tests of the leader's housekeeping decisions
//! (`rift::controllers::housekeeping::decide`) about jobs on lost nodes, over random
//! durations — user numbers included, up to `u64::MAX` seconds — and random times lost:
//! - deciding never panics, whatever a Job's `lostAfter`, `terminationGracePeriod` or
//!   `ttlAfterFinished` says;
//! - a `wait` job is never moved off a lost node;
//! - a `reschedule` job is moved only once its node has been lost for `lostAfter` + its
//!   `terminationGracePeriod` + the margin (DESIGN.md, "Hand-over only after the old holder is
//!   gone": the cut-off node's shim sends SIGTERM at `lostAfter` and SIGKILL a grace later).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rift::api::duration::HumanDuration;
use rift::api::job::OnNodeLost;
use rift::api::node::NodeSpec;
use rift::api::placement::{Binding, Placement};
use rift::api::{JobPhase, JobSpec, JobStatus, Object};
use rift::controllers::housekeeping::{decide, BoundRecord, Housekeeping, Undecodable, World};
use rift::controllers::writes::Write;

/// Seconds as a user may write them: small, around the defaults, and absurd.
fn seconds() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        4 => 1u64..120,
        1 => 120u64..100_000,
        1 => Just(u64::MAX),
        1 => (u64::MAX / 2)..u64::MAX,
    ]
}

/// Seconds up to about a year: no sum of them overflows, so only the window is judged.
fn sane_seconds() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![4 => 1u64..120, 1 => 120u64..40_000_000]
}

#[derive(Clone, Debug)]
struct Case {
    reschedule: bool,
    lost_after: u64,
    grace: u64,
    ttl: Option<u64>,
    finished: bool,
    lost_for: Option<u64>,
    margin: u64,
}

fn case(seconds: impl Strategy<Value = u64> + Clone) -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        seconds.clone(),
        seconds.clone(),
        prop::option::of(seconds.clone()),
        any::<bool>(),
        prop::option::of(seconds),
        0u64..30,
    )
        .prop_map(
            |(reschedule, lost_after, grace, ttl, finished, lost_for, margin)| Case {
                reschedule,
                lost_after,
                grace,
                ttl,
                finished,
                lost_for,
                margin,
            },
        )
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
}

/// One job on node `n1`, as the case says; the decision about it.
fn run(c: &Case) -> Vec<Write> {
    let mut spec = JobSpec::with_command(["x"]);
    spec.on_node_lost = if c.reschedule {
        OnNodeLost::Reschedule
    } else {
        OnNodeLost::Wait
    };
    spec.lost_after = HumanDuration::from_secs(c.lost_after);
    spec.termination_grace_period = HumanDuration::from_secs(c.grace);
    spec.ttl_after_finished = c.ttl.map(HumanDuration::from_secs);
    let mut job = Object::new("j", spec);
    job.status = Some(JobStatus {
        phase: if c.finished {
            JobPhase::Succeeded
        } else {
            JobPhase::Running
        },
        finish_time: c.finished.then(now),
        ..JobStatus::default()
    });
    let placements: HashMap<String, (Placement, i64)> = [(
        "j".to_string(),
        (
            Placement {
                node: Some("n1".into()),
                gpus: vec![],
                epoch: 1,
                pending: None,
                uid: String::new(),
            },
            7,
        ),
    )]
    .into();
    // Its binding on n1, without terms of its own: the Job's current ones count.
    let bindings = [BoundRecord {
        node: "n1".into(),
        job: "j".into(),
        binding: Binding {
            epoch: 1,
            ..Binding::default()
        },
        revision: 8,
    }];
    let lost: HashMap<String, Duration> = c
        .lost_for
        .map(|s| ("n1".to_string(), Duration::from_secs(s)))
        .into_iter()
        .collect();
    let config = Housekeeping {
        margin: Duration::from_secs(c.margin),
    };
    let world = World {
        nodes: &[Object::new("n1", NodeSpec::default())],
        jobs: &[job],
        undecodable: &Undecodable::default(),
        pools: &[],
        placements: &placements,
        bindings: &bindings,
        released: &HashSet::new(),
        lost_for: &lost,
    };
    decide(&world, &config, now()).writes
}

proptest! {
    // Failures are reported with their shrunk input; none is written into the tree.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn deciding_never_panics_whatever_the_durations(c in case(seconds())) {
        // A panic fails the case; proptest shrinks it to the smallest durations that panic.
        run(&c);
    }

    #[test]
    fn a_job_leaves_a_lost_node_only_after_lost_after_grace_and_margin(
        c in case(sane_seconds()),
    ) {
        let writes = run(&c);
        // Moving starts with releasing its binding on the lost node (or placing it elsewhere).
        let moved = writes.iter().any(|w| {
            matches!(w, Write::Release { node, .. } if node == "n1")
                || matches!(w, Write::Place { .. })
        });
        if moved {
            prop_assert!(c.reschedule, "a wait job was moved: {c:?}");
            let lost = Duration::from_secs(c.lost_for.unwrap_or(0));
            let window = Duration::from_secs(c.lost_after)
                .saturating_add(Duration::from_secs(c.grace))
                .saturating_add(Duration::from_secs(c.margin));
            prop_assert!(
                lost >= window,
                "moved after {lost:?} lost, before lostAfter + grace + margin = {window:?}: {c:?}"
            );
        }
    }
}
