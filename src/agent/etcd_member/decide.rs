//! What the agent does with its local etcd member, decided from what it observes. Pure.
//!
//! The member list is the authority: the agent starts a member only for a node the cluster
//! knows (or, with `--bootstrap`, when no cluster answers and there is no data yet), and
//! clears its data only when a cluster that answers no longer lists it.

/// This node as the cluster's member list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// No cluster answered (etcd down or unreachable): nothing is known.
    Unknown,
    /// Listed; `cluster` is every started member plus this one, as `name=peer-url` pairs,
    /// for `--initial-cluster` when joining.
    Member { cluster: Vec<(String, String)> },
    /// A cluster answered and does not list this node.
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
    /// The data directory holds a member's data.
    pub has_data: bool,
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
    /// Removed from the cluster: stop the process if it runs and clear the data directory.
    StopAndWipe,
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
        return Action::StopAndWipe;
    }
    if o.running {
        return Action::Keep;
    }
    if o.has_data {
        return Action::Start(StartMode::FromData);
    }
    match &o.membership {
        Membership::Member { cluster } => Action::Start(StartMode::Join {
            cluster: cluster.clone(),
        }),
        Membership::Unknown if o.bootstrap => Action::Start(StartMode::New),
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
            bootstrap,
            membership,
        }
    }

    fn joined() -> Membership {
        Membership::Member {
            cluster: vec![("a".into(), "http://a:2380".into())],
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
                cluster: vec![("a".into(), "http://a:2380".into())]
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
            Action::StopAndWipe
        );
        assert_eq!(
            decide(&obs(false, true, false, Membership::NotMember)),
            Action::StopAndWipe
        );
        assert_eq!(
            decide(&obs(false, false, false, Membership::NotMember)),
            Action::Keep
        );
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
