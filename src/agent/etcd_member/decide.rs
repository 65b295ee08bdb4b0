//! What the agent does with its local etcd member, decided from what it observes. Pure.
//!
//! The member list is the authority: the agent starts a member only for a node the cluster
//! knows (or, with `--bootstrap`, when no cluster answers and this state directory never held
//! a member), and sets its data aside (never deletes it) only when its own cluster's leader
//! has answered, several times in a row, without it.

/// This node as the cluster's member list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// No cluster answered (etcd down or unreachable), or one that is not this node's cluster
    /// answered: nothing is known.
    Unknown,
    /// Listed; `cluster` is every started member plus this one, as `name=peer-url` pairs,
    /// for `--initial-cluster` when joining. `started_voter`: the entry is a voter that has
    /// run before (its name is set), so its data is part of the quorum's history.
    Member {
        cluster: Vec<(String, String)>,
        started_voter: bool,
    },
    /// This node's cluster answered, from its leader, several times in a row, and does not list
    /// this node.
    NotMember,
    /// Listed under this node's name but with other peer URLs than this agent offers: a
    /// configuration change that must not be "fixed" by wiping data.
    Mismatch { registered: Vec<String> },
}

/// What the agent sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The member process this agent started (or adopted) is running.
    pub running: bool,
    /// The data directory holds a member's write-ahead log.
    pub has_data: bool,
    /// This state directory has belonged to a cluster before (its cluster id is recorded).
    pub ever_member: bool,
    /// `--bootstrap`: start a new one-member cluster when there is nothing else.
    pub bootstrap: bool,
    pub membership: Membership,
}

/// How to start the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// From its data directory: etcd knows its cluster.
    FromData,
    /// A new cluster of one (`--initial-cluster-state new`).
    New,
    /// Join a cluster that already lists it (`--initial-cluster-state existing`).
    Join { cluster: Vec<(String, String)> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change.
    Keep,
    Start(StartMode),
    /// Removed from the cluster: stop the process if it runs and set the data directory aside.
    StopAndSetAside,
    /// Cannot act; the reason is reported in the Node's status.
    Refuse(String),
}

pub fn decide(o: &Observation) -> Action {
    if let Membership::Mismatch { registered } = &o.membership {
        return Action::Refuse(format!(
            "the cluster lists this node with peer URLs {} but this agent offers others; \
             fix the node's addresses or etcd ports, or remove it from the VoterSet first",
            registered.join(",")
        ));
    }
    let removed = o.membership == Membership::NotMember;
    if removed && (o.running || o.has_data) {
        return Action::StopAndSetAside;
    }
    if o.running {
        return Action::Keep;
    }
    if o.has_data {
        return Action::Start(StartMode::FromData);
    }
    match &o.membership {
        Membership::Member {
            started_voter: true,
            ..
        } => Action::Refuse(
            "this node is a voter that has run before but its data is gone; joining empty \
             would rewrite the quorum's history: remove it from the VoterSet, wait until it is \
             gone, then add it again"
                .into(),
        ),
        Membership::Member { cluster, .. } => Action::Start(StartMode::Join {
            cluster: cluster.clone(),
        }),
        Membership::Unknown if o.bootstrap && !o.ever_member => Action::Start(StartMode::New),
        Membership::Unknown if o.bootstrap => Action::Refuse(
            "--bootstrap: this state directory belonged to a cluster before (it was removed, \
             or its data is gone); refusing to start a second cluster. Use a fresh --state-dir \
             to bootstrap anew"
                .into(),
        ),
        _ => Action::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(running: bool, has_data: bool, bootstrap: bool, membership: Membership) -> Observation {
        Observation {
            running,
            has_data,
            ever_member: false,
            bootstrap,
            membership,
        }
    }

    fn joined() -> Membership {
        Membership::Member {
            cluster: vec![("a".into(), "http://a:2380".into())],
            started_voter: false,
        }
    }

    #[test]
    fn bootstrap_starts_a_new_cluster_only_without_data_and_without_a_cluster() {
        use Membership::*;
        assert_eq!(
            decide(&obs(false, false, true, Unknown)),
            Action::Start(StartMode::New)
        );
        assert_eq!(
            decide(&obs(false, true, true, Unknown)),
            Action::Start(StartMode::FromData),
            "a restart resumes the same cluster from its data"
        );
        assert_eq!(
            decide(&obs(false, false, false, Unknown)),
            Action::Keep,
            "without --bootstrap nothing starts on its own"
        );
        assert_eq!(
            decide(&obs(false, false, true, NotMember)),
            Action::Keep,
            "a reachable cluster that does not list us is not ours to create"
        );
    }

    #[test]
    fn a_listed_node_without_data_joins_the_existing_cluster() {
        assert_eq!(
            decide(&obs(false, false, false, joined())),
            Action::Start(StartMode::Join {
                cluster: vec![("a".into(), "http://a:2380".into())],
            })
        );
    }

    #[test]
    fn a_dead_member_with_data_is_restarted_from_its_data() {
        assert_eq!(
            decide(&obs(false, true, false, joined())),
            Action::Start(StartMode::FromData)
        );
        assert_eq!(
            decide(&obs(false, true, false, Membership::Unknown)),
            Action::Start(StartMode::FromData),
            "an outage of the rest of the cluster is no reason to stay down"
        );
    }

    #[test]
    fn a_removed_member_is_stopped_and_its_data_cleared() {
        assert_eq!(
            decide(&obs(true, true, false, Membership::NotMember)),
            Action::StopAndSetAside
        );
        assert_eq!(
            decide(&obs(false, true, false, Membership::NotMember)),
            Action::StopAndSetAside
        );
        assert_eq!(
            decide(&obs(false, false, false, Membership::NotMember)),
            Action::Keep
        );
    }

    #[test]
    fn a_state_dir_that_held_a_member_never_bootstraps_a_second_cluster() {
        let mut o = obs(false, false, true, Membership::Unknown);
        o.ever_member = true;
        assert!(matches!(decide(&o), Action::Refuse(r) if r.contains("second cluster")));
    }

    #[test]
    fn a_started_voter_without_data_does_not_rejoin_empty() {
        let m = Membership::Member {
            cluster: vec![("a".into(), "http://a:2380".into())],
            started_voter: true,
        };
        assert!(matches!(
            decide(&obs(false, false, false, m)),
            Action::Refuse(r) if r.contains("remove it from the VoterSet")
        ));
    }

    #[test]
    fn a_running_member_is_left_alone() {
        assert_eq!(decide(&obs(true, true, false, joined())), Action::Keep);
        assert_eq!(
            decide(&obs(true, true, false, Membership::Unknown)),
            Action::Keep
        );
    }

    #[test]
    fn a_peer_url_mismatch_never_wipes_data() {
        let m = Membership::Mismatch {
            registered: vec!["http://old:2380".into()],
        };
        assert!(matches!(
            decide(&obs(false, true, false, m)),
            Action::Refuse(r) if r.contains("http://old:2380")
        ));
    }
}
