use super::*;

fn node(ready: bool) -> Candidate {
    Candidate {
        ready,
        nat_blocked: false,
        peer_urls: vec![],
    }
}

/// Nodes a..e, all Ready, each offering `http://<name>:2380`.
fn fleet() -> BTreeMap<String, Candidate> {
    ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| {
            let mut c = node(true);
            c.peer_urls = vec![format!("http://{n}:2380")];
            (n.to_string(), c)
        })
        .collect()
}

fn member(id: u64, name: &str, learner: bool, healthy: bool) -> MemberInfo {
    MemberInfo {
        id,
        name: name.into(),
        peer_urls: vec![format!("http://{name}:2380")],
        client_urls: vec![],
        learner,
        healthy,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn quorum_is_a_strict_majority() {
    assert_eq!(
        [1, 2, 3, 4, 5].map(quorum),
        [1, 2, 2, 3, 3],
        "quorum of 1..5 voters"
    );
}

#[test]
fn a_converged_set_takes_no_step() {
    let p = plan(&names(&["a"]), &fleet(), &[member(1, "a", false, true)]);
    assert_eq!(p.step, None);
    assert_eq!(p.phase, VoterSetPhase::Converged);
    assert_eq!(p.message, "");
}

#[test]
fn growing_adds_one_learner_in_voterset_order() {
    let p = plan(
        &names(&["a", "b", "c"]),
        &fleet(),
        &[member(1, "a", false, true)],
    );
    assert_eq!(
        p.step,
        Some(Step::AddLearner {
            node: "b".into(),
            peer_urls: vec!["http://b:2380".into()]
        })
    );
}

#[test]
fn never_a_second_learner_while_one_is_waiting_to_start() {
    let mut unstarted = member(2, "", true, false);
    unstarted.peer_urls = vec!["http://b:2380".into()];
    let p = plan(
        &names(&["a", "b", "c"]),
        &fleet(),
        &[member(1, "a", false, true), unstarted],
    );
    assert_eq!(p.step, None, "c is not added while b is a learner");
    assert_eq!(p.phase, VoterSetPhase::Progressing);
    assert!(p.message.contains("learner b"), "{}", p.message);
}

#[test]
fn a_healthy_desired_learner_is_promoted() {
    let p = plan(
        &names(&["a", "b"]),
        &fleet(),
        &[member(1, "a", false, true), member(2, "b", true, true)],
    );
    assert_eq!(
        p.step,
        Some(Step::Promote {
            node: "b".into(),
            id: 2
        })
    );
}

#[test]
fn a_learner_no_longer_desired_is_removed() {
    let p = plan(
        &names(&["a"]),
        &fleet(),
        &[member(1, "a", false, true), member(2, "b", true, false)],
    );
    assert!(matches!(p.step, Some(Step::Remove { id: 2, .. })));
}

#[test]
fn replacing_a_healthy_voter_adds_the_new_one_before_removing_the_old() {
    let members = [
        member(1, "a", false, true),
        member(2, "b", false, true),
        member(3, "c", false, true),
    ];
    let p = plan(&names(&["a", "b", "d"]), &fleet(), &members);
    assert!(matches!(p.step, Some(Step::AddLearner { ref node, .. }) if node == "d"));
    // Once d is a voter, c goes.
    let grown = [
        member(1, "a", false, true),
        member(2, "b", false, true),
        member(3, "c", false, true),
        member(4, "d", false, true),
    ];
    let p = plan(&names(&["a", "b", "d"]), &fleet(), &grown);
    assert!(matches!(p.step, Some(Step::Remove { id: 3, .. })), "{p:?}");
}

#[test]
fn a_dead_voter_is_removed_before_its_replacement_is_added() {
    let members = [
        member(1, "a", false, true),
        member(2, "b", false, true),
        member(3, "c", false, false),
    ];
    let p = plan(&names(&["a", "b", "d"]), &fleet(), &members);
    assert!(
        matches!(p.step, Some(Step::Remove { id: 3, ref reason, .. }) if reason.contains("dead")),
        "{p:?}"
    );
}

#[test]
fn no_step_without_quorum() {
    let members = [
        member(1, "a", false, true),
        member(2, "b", false, false),
        member(3, "c", false, false),
    ];
    let p = plan(&names(&["a"]), &fleet(), &members);
    assert_eq!(p.step, None);
    assert_eq!(p.phase, VoterSetPhase::Blocked);
    assert!(p.message.contains("quorum lost"), "{}", p.message);
}

#[test]
fn removing_a_healthy_voter_that_would_cost_quorum_is_refused() {
    // 4 voters, b dead but desired: removing healthy `d` leaves 2 healthy of 3 (a quorum).
    let members = [
        member(1, "a", false, true),
        member(2, "b", false, false),
        member(3, "c", false, true),
        member(4, "d", false, true),
    ];
    let p = plan(&names(&["a", "b", "c"]), &fleet(), &members);
    assert!(matches!(p.step, Some(Step::Remove { id: 4, .. })), "{p:?}");

    let members = [
        member(1, "a", false, true),
        member(2, "b", false, false),
        member(3, "c", false, false),
        member(4, "d", false, true),
        member(5, "e", false, true),
    ];
    let p = plan(&names(&["a", "b", "c"]), &fleet(), &members);
    assert_eq!(
        p.step, None,
        "3 healthy of 5: removing d would leave 2 healthy of 4"
    );
    assert_eq!(p.phase, VoterSetPhase::Blocked);
    assert!(
        p.message.contains("short of a quorum of 3"),
        "{}",
        p.message
    );
}

#[test]
fn every_step_of_a_replacement_keeps_quorum() {
    // Simulate the controller against an ideal cluster: apply each step, check quorum.
    let mut members = vec![
        member(1, "a", false, true),
        member(2, "b", false, true),
        member(3, "c", false, true),
    ];
    let desired = names(&["a", "d", "e"]);
    let fleet = fleet();
    let mut next_id = 10;
    for _ in 0..20 {
        let p = plan(&desired, &fleet, &members);
        let Some(step) = p.step else {
            assert_eq!(p.phase, VoterSetPhase::Converged, "{p:?}");
            break;
        };
        match step {
            Step::AddLearner { node, .. } => {
                assert!(members.iter().all(|m| !m.learner), "one learner at a time");
                next_id += 1;
                members.push(member(next_id, &node, true, true));
            }
            Step::Promote { id, .. } => {
                members.iter_mut().find(|m| m.id == id).unwrap().learner = false;
            }
            Step::Remove { id, .. } => members.retain(|m| m.id != id),
        }
        let voters = members.iter().filter(|m| !m.learner).count();
        let healthy = members.iter().filter(|m| !m.learner && m.healthy).count();
        assert!(healthy >= quorum(voters), "quorum kept after each step");
    }
    let mut left: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    left.sort();
    assert_eq!(left, ["a", "d", "e"]);
}

#[test]
fn unsafe_candidates_block_with_the_reason_and_change_nothing() {
    let mut nodes = fleet();
    nodes.get_mut("b").unwrap().nat_blocked = true;
    nodes.get_mut("c").unwrap().ready = false;
    nodes.get_mut("d").unwrap().peer_urls.clear();
    let members = [member(1, "a", false, true)];
    let p = plan(&names(&["a", "b", "c", "d", "x"]), &nodes, &members);
    assert_eq!(p.step, None);
    assert_eq!(p.phase, VoterSetPhase::Blocked);
    for needle in [
        "b is NAT-blocked",
        "c is not Ready",
        "d's agent offers no etcd member",
        "x does not exist",
    ] {
        assert!(p.message.contains(needle), "{needle}: {}", p.message);
    }
}

#[test]
fn a_member_that_is_not_ready_does_not_block_when_it_is_already_a_voter() {
    let mut nodes = fleet();
    nodes.get_mut("b").unwrap().ready = false;
    let members = [
        member(1, "a", false, true),
        member(2, "b", false, false),
        member(3, "c", false, true),
    ];
    let p = plan(&names(&["a", "b", "c"]), &nodes, &members);
    assert_eq!(p.phase, VoterSetPhase::Converged);
    assert!(p.message.contains("unhealthy: b"), "{}", p.message);
}

#[test]
fn an_even_sized_set_converges_with_a_warning() {
    let members = [member(1, "a", false, true), member(2, "b", false, true)];
    let p = plan(&names(&["a", "b"]), &fleet(), &members);
    assert_eq!(p.phase, VoterSetPhase::Converged);
    assert!(p.message.contains("warning: 2 voters"), "{}", p.message);
}

#[test]
fn an_unstarted_member_is_known_by_its_peer_url() {
    let mut m = member(7, "", true, false);
    m.peer_urls = vec!["http://c:2380".into()];
    assert_eq!(member_node(&m, &fleet()).as_deref(), Some("c"));
    m.peer_urls = vec!["http://elsewhere:2380".into()];
    assert_eq!(member_node(&m, &fleet()), None);
}
