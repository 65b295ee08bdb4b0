//! Property tests of the voter plan (`rift::controllers::voters::plan::plan`) over random
//! member histories: members fail and come back, learners start late, the VoterSet and the
//! nodes change under it, and after every step the plan takes the healthy voting members are
//! still a quorum of the new voting set, there is never more than one learner, and nothing is
//! promoted, added or removed that the rules forbid. Without faults, the plan converges.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rift::api::voter_set::VoterSetPhase;
use rift::controllers::voters::plan::{plan, quorum, Candidate, Step};
use rift::store::members::MemberInfo;

const NODES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn url(node: &str) -> String {
    format!("http://{node}:2380")
}

/// One thing that happens between two plans.
#[derive(Clone, Debug)]
enum Event {
    /// The controller plans and takes the step, if any.
    Plan,
    /// Member `i` (modulo the count) turns healthy or unhealthy.
    Flip(usize),
    /// An added learner's agent starts its member (it gets a name and answers).
    StartLearner,
    /// The operator applies a new VoterSet (bit `i` set: `NODES[i]` wanted; empty: `a`).
    Desire(u8),
    /// Node `i` turns Ready or not.
    NodeReady(usize, bool),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Plan),
        2 => (0usize..8).prop_map(Event::Flip),
        2 => Just(Event::StartLearner),
        1 => (0u8..64).prop_map(Event::Desire),
        1 => ((0usize..NODES.len()), any::<bool>()).prop_map(|(i, r)| Event::NodeReady(i, r)),
    ]
}

fn desired(bits: u8) -> Vec<String> {
    let d: Vec<String> = NODES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    if d.is_empty() {
        vec!["a".into()]
    } else {
        d
    }
}

/// Nodes a..f, with `nat` NAT-blocked and `bare` offering no member.
fn nodes(nat: usize, bare: usize) -> BTreeMap<String, Candidate> {
    NODES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = Candidate {
                ready: true,
                nat_blocked: i == nat,
                peer_urls: if i == bare { vec![] } else { vec![url(n)] },
            };
            (n.to_string(), c)
        })
        .collect()
}

/// A starting membership: the first `n` of a..c, all voters, all healthy.
fn members(n: usize) -> Vec<MemberInfo> {
    NODES[..n]
        .iter()
        .enumerate()
        .map(|(i, name)| MemberInfo {
            id: i as u64 + 1,
            name: name.to_string(),
            peer_urls: vec![url(name)],
            client_urls: vec![],
            learner: false,
            healthy: true,
        })
        .collect()
}

fn voting(m: &[MemberInfo]) -> (usize, usize) {
    let voters = m.iter().filter(|m| !m.learner);
    let n = voters.clone().count();
    (n, voters.filter(|m| m.healthy).count())
}

/// Applies `step` to `members`, checking every rule; `Err` says which broke.
fn apply(
    step: &Step,
    want: &[String],
    nodes: &BTreeMap<String, Candidate>,
    members: &mut Vec<MemberInfo>,
    next_id: &mut u64,
) -> Result<(), String> {
    let (n_before, healthy_before) = voting(members);
    if n_before > 0 && healthy_before < quorum(n_before) {
        return Err(format!("a step was taken without quorum: {step:?}"));
    }
    match step {
        Step::AddLearner { node, peer_urls } => {
            let c = nodes.get(node).ok_or(format!("added {node}, not a node"))?;
            if !want.contains(node) || !c.ready || c.nat_blocked || c.peer_urls.is_empty() {
                return Err(format!("added {node}, which may not be a voter: {c:?}"));
            }
            if members
                .iter()
                .any(|m| m.peer_urls == *peer_urls || m.name == *node)
            {
                return Err(format!("added {node}, already a member"));
            }
            members.push(MemberInfo {
                id: *next_id,
                name: String::new(),
                peer_urls: peer_urls.clone(),
                client_urls: vec![],
                learner: true,
                healthy: false,
            });
            *next_id += 1;
        }
        Step::Promote { node, id } => {
            let m = members
                .iter_mut()
                .find(|m| m.id == *id)
                .ok_or(format!("promoted {node}, not a member"))?;
            if !m.learner || !m.healthy {
                return Err(format!("promoted {node}, not a healthy learner: {m:?}"));
            }
            m.learner = false;
        }
        Step::Remove { node, id, .. } => {
            let i = members
                .iter()
                .position(|m| m.id == *id)
                .ok_or(format!("removed {node}, not a member"))?;
            if !members[i].name.is_empty() && want.contains(&members[i].name) {
                return Err(format!("removed {node}, which the VoterSet wants"));
            }
            members.remove(i);
        }
    }
    let (n, healthy) = voting(members);
    if n == 0 {
        return Err(format!("{step:?} left no voting member"));
    }
    if healthy < quorum(n) {
        return Err(format!(
            "{step:?} left {healthy} healthy of {n} voters, short of a quorum of {}",
            quorum(n)
        ));
    }
    if members.iter().filter(|m| m.learner).count() > 1 {
        return Err(format!("{step:?} left two learners: {members:?}"));
    }
    Ok(())
}

/// Runs a history; returns the steps taken, or names the first broken rule.
fn run(
    start: usize,
    nat: usize,
    bare: usize,
    first_want: u8,
    events: &[Event],
) -> Result<usize, String> {
    let mut steps = 0;
    let mut nodes = nodes(nat, bare);
    let mut members = members(start);
    let mut want = desired(first_want);
    let mut next_id = 100;
    for (k, e) in events.iter().enumerate() {
        match e {
            Event::Plan => {
                let p = plan(&want, &nodes, &members);
                if let Some(step) = &p.step {
                    apply(step, &want, &nodes, &mut members, &mut next_id)
                        .map_err(|why| format!("event {k}: {why}\nwant {want:?}"))?;
                    steps += 1;
                }
            }
            Event::Flip(i) if !members.is_empty() => {
                let i = i % members.len();
                // An unstarted learner has nothing to flip.
                if !members[i].name.is_empty() {
                    members[i].healthy = !members[i].healthy;
                }
            }
            Event::Flip(_) => {}
            Event::StartLearner => {
                for m in members.iter_mut().filter(|m| m.name.is_empty()) {
                    let node = NODES
                        .iter()
                        .find(|n| m.peer_urls.contains(&url(n)))
                        .expect("learners are added with a node's URL");
                    m.name = node.to_string();
                    m.healthy = true;
                }
            }
            Event::Desire(bits) => want = desired(*bits),
            Event::NodeReady(i, r) => {
                nodes.get_mut(NODES[*i]).expect("a node").ready = *r;
            }
        }
    }
    Ok(steps)
}

proptest! {
    // Failures are reported with their shrunk input; none is written into the tree.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_step_of_any_history_loses_quorum_or_adds_a_second_learner(
        start in 1usize..4,
        nat in 0usize..8,
        bare in 0usize..8,
        first_want in 0u8..64,
        events in prop::collection::vec(event(), 1..80),
    ) {
        if let Err(broken) = run(start, nat, bare, first_want, &events) {
            prop_assert!(false, "{broken}");
        }
    }

    #[test]
    fn with_every_member_healthy_the_plan_converges_to_the_voterset(
        start in 1usize..4,
        want_bits in 0u8..64,
    ) {
        let nodes = nodes(usize::MAX, usize::MAX);
        let want = desired(want_bits);
        let mut members = members(start);
        let mut next_id = 100;
        // Each desired node takes three passes (add, wait for its agent, promote), each
        // unwanted one a removal, and one more says Converged.
        let budget = 3 * NODES.len() + start + 1;
        let mut converged = false;
        for _ in 0..budget {
            let p = plan(&want, &nodes, &members);
            match &p.step {
                None if p.phase == VoterSetPhase::Converged => { converged = true; break; }
                None => {
                    // Waiting for an added learner's agent: it starts at once here.
                    for m in members.iter_mut().filter(|m| m.name.is_empty()) {
                        let node = NODES.iter().find(|n| m.peer_urls.contains(&url(n))).unwrap();
                        m.name = node.to_string();
                        m.healthy = true;
                    }
                }
                Some(step) => {
                    if let Err(broken) = apply(step, &want, &nodes, &mut members, &mut next_id) {
                        prop_assert!(false, "{broken}");
                    }
                }
            }
        }
        prop_assert!(converged, "not converged in {budget} passes: {members:?} want {want:?}");
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        prop_assert_eq!(names, want.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// The history checker itself refuses a step that loses quorum, and the history machinery
/// takes steps (a growing VoterSet is added and promoted).
#[test]
fn the_checker_refuses_a_removal_that_loses_quorum_and_histories_take_steps() {
    let nodes = nodes(usize::MAX, usize::MAX);
    let mut three = members(3);
    three[1].healthy = false;
    let remove_healthy = Step::Remove {
        node: "c".into(),
        id: 3,
        reason: "test".into(),
    };
    let mut next = 100;
    let e = apply(
        &remove_healthy,
        &["a".into()],
        &nodes,
        &mut three,
        &mut next,
    )
    .unwrap_err();
    assert!(e.contains("short of a quorum"), "{e}");
    let grow = [
        Event::Plan,
        Event::StartLearner,
        Event::Plan,
        Event::Plan,
        Event::StartLearner,
        Event::Plan,
    ];
    // Add b, promote b, add c, promote c.
    assert_eq!(run(1, usize::MAX, usize::MAX, 0b111, &grow), Ok(4));
}
