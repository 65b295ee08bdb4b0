//! What needs a person's attention, decided from one snapshot: the overview page lists these
//! first. A pure function of the [`Cluster`], the [`Link`] and `now`, unit-tested without I/O.
//!
//! Rules, most severe first:
//! 1. etcd cannot be read (critical): every figure on the page is as of the last snapshot.
//! 2. No leader (critical): nothing is scheduled, no controller runs.
//! 3. The VoterSet's last report says quorum is lost (critical), members are unhealthy, or the
//!    voters controller is Blocked.
//! 4. Nodes not Ready; nodes overloaded.
//! 5. Tunnels down.
//! 6. Failed jobs; jobs Pending for longer than [`PENDING_GRACE`], grouped by why-not.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::cluster::{is_ready, Cluster};
use super::source::Link;
use crate::api::voter_set::VoterSetPhase;
use crate::api::JobPhase;

/// How long a job may be Pending before it is a warning (placement normally takes a second).
pub const PENDING_GRACE: chrono::Duration = chrono::Duration::seconds(60);
/// Names listed in one warning before "and N more".
const NAMES_SHOWN: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub severity: Severity,
    pub title: String,
    pub detail: String,
    /// A page with more.
    pub link: Option<String>,
}

fn warning(severity: Severity, title: String, detail: String, link: Option<&str>) -> Warning {
    Warning {
        severity,
        title,
        detail,
        link: link.map(str::to_string),
    }
}

/// Everything that needs attention, critical first, each severity in rule order.
pub fn warnings(cluster: &Cluster, link: &Link, now: DateTime<Utc>) -> Vec<Warning> {
    use Severity::{Critical, Warning as Warn};
    let mut out = Vec::new();
    match link {
        Link::Unreachable { since, error } => out.push(warning(
            Critical,
            "etcd unreachable".into(),
            format!(
                "since {}: {error}. Everything shown is as of {}.",
                since.format("%H:%M:%S UTC"),
                cluster.taken_at.format("%H:%M:%S UTC")
            ),
            None,
        )),
        Link::Connecting { .. } => out.push(warning(
            Warn,
            "connecting to etcd".into(),
            "nothing has been read yet".into(),
            None,
        )),
        Link::Live { .. } => {}
    }
    if cluster.revision == 0 {
        return sorted(out);
    }
    if cluster.leader.is_none() {
        out.push(warning(
            Critical,
            "no leader".into(),
            "no controller-eligible agent holds the lease: nothing is scheduled and no \
             controller runs"
                .into(),
            Some("/voters"),
        ));
    }
    if let Some(status) = cluster.voter_set.as_ref().and_then(|v| v.status.as_ref()) {
        if !status.members.is_empty() && !status.quorum {
            out.push(warning(
                Critical,
                "etcd quorum lost".into(),
                "the voters controller's last report says fewer than half the voters are \
                 healthy"
                    .into(),
                Some("/voters"),
            ));
        }
        let sick: Vec<&str> = status
            .members
            .iter()
            .filter(|m| !m.healthy)
            .map(|m| m.name.as_str())
            .collect();
        if !sick.is_empty() {
            out.push(warning(
                Warn,
                format!("{} etcd member(s) unhealthy", sick.len()),
                names(&sick),
                Some("/voters"),
            ));
        }
        if status.phase == VoterSetPhase::Blocked {
            out.push(warning(
                Warn,
                "voter changes blocked".into(),
                status.message.clone(),
                Some("/voters"),
            ));
        }
    }
    let not_ready: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| !is_ready(n))
        .map(|n| n.name())
        .collect();
    if !not_ready.is_empty() {
        out.push(warning(
            Warn,
            format!(
                "{} of {} nodes not ready",
                not_ready.len(),
                cluster.nodes.len()
            ),
            names(&not_ready),
            Some("/nodes"),
        ));
    }
    let overloaded: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| n.status.as_ref().is_some_and(|s| s.overloaded))
        .map(|n| n.name())
        .collect();
    if !overloaded.is_empty() {
        out.push(warning(
            Warn,
            format!("{} node(s) overloaded", overloaded.len()),
            format!("{}: no new jobs are placed there", names(&overloaded)),
            Some("/nodes"),
        ));
    }
    for t in &cluster.tunnels {
        let status = t.status.clone().unwrap_or_default();
        if !status.connected {
            let why = if status.last_error.is_empty() {
                "not connected".to_string()
            } else {
                status.last_error.clone()
            };
            out.push(warning(
                Warn,
                format!("tunnel {} down", t.name()),
                format!("node {}: {why}", t.spec.node),
                Some("/tunnels"),
            ));
        }
    }
    let failed = cluster.count(JobPhase::Failed);
    if failed > 0 {
        out.push(warning(
            Warn,
            format!("{failed} job(s) failed"),
            String::new(),
            Some("/jobs?phase=Failed"),
        ));
    }
    let mut pending: BTreeMap<String, usize> = BTreeMap::new();
    for job in &cluster.jobs {
        let status = job.status.clone().unwrap_or_default();
        let waited = job
            .metadata
            .creation_timestamp
            .is_some_and(|t| now - t > PENDING_GRACE);
        if status.phase == JobPhase::Pending && waited {
            let why = [status.message, status.reason]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or_else(|| "not placed yet".into());
            *pending.entry(why).or_default() += 1;
        }
    }
    for (why, n) in pending {
        out.push(warning(
            Warn,
            format!("{n} job(s) pending for over a minute"),
            why,
            Some("/jobs?phase=Pending"),
        ));
    }
    sorted(out)
}

fn sorted(mut out: Vec<Warning>) -> Vec<Warning> {
    out.sort_by_key(|w| w.severity);
    out
}

fn names(all: &[&str]) -> String {
    let shown = all[..all.len().min(NAMES_SHOWN)].join(", ");
    if all.len() > NAMES_SHOWN {
        format!("{shown} and {} more", all.len() - NAMES_SHOWN)
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::cluster::Parts;
    use crate::dashboard::fixtures;
    use crate::store::leader::LeaderRecord;

    fn leader() -> Option<LeaderRecord> {
        Some(LeaderRecord {
            node: "a".into(),
            since: Utc::now(),
            lease: 1,
            endpoint: None,
        })
    }

    fn titles(w: &[Warning]) -> Vec<String> {
        w.iter().map(|w| w.title.clone()).collect()
    }

    #[test]
    fn a_healthy_cluster_has_no_warnings() {
        let c = Cluster::assemble(Parts {
            revision: 5,
            leader: leader(),
            nodes: vec![fixtures::node("a", true, 2)],
            jobs: vec![fixtures::job("j", "Running", Some("a"), &[0])],
            tunnels: vec![fixtures::tunnel("t", "a", true)],
            ..Parts::default()
        });
        let live = Link::Live { since: Utc::now() };
        assert_eq!(warnings(&c, &live, Utc::now()), vec![]);
    }

    #[test]
    fn critical_warnings_come_first_and_every_rule_speaks() {
        let now = Utc::now();
        let mut nodes: Vec<_> = (0..7)
            .map(|i| fixtures::node(&format!("n{i}"), false, 1))
            .collect();
        nodes.push(fixtures::node("ok", true, 1));
        let c = Cluster::assemble(Parts {
            revision: 5,
            leader: None,
            nodes,
            jobs: vec![
                fixtures::job("f", "Failed", Some("ok"), &[]),
                fixtures::job("p1", "Pending", None, &[]),
                fixtures::job("p2", "Pending", None, &[]),
            ],
            tunnels: vec![fixtures::tunnel("t", "n1", false)],
            ..Parts::default()
        });
        let link = Link::Unreachable {
            since: now,
            error: "connection refused".into(),
        };
        let w = warnings(&c, &link, now);
        assert_eq!(
            titles(&w),
            [
                "etcd unreachable",
                "no leader",
                "7 of 8 nodes not ready",
                "tunnel t down",
                "1 job(s) failed",
                "2 job(s) pending for over a minute",
            ]
        );
        assert_eq!(w[2].detail, "n0, n1, n2, n3, n4 and 2 more");
        assert_eq!(w[3].detail, "node n1: ssh exited: connection refused");
        assert_eq!(w[5].detail, "no node has 8 free GPUs", "grouped by why-not");
        assert!(w[0].detail.contains("connection refused"));
    }

    #[test]
    fn a_job_pending_for_less_than_a_minute_is_not_a_warning() {
        let job = fixtures::job("p", "Pending", None, &[]);
        let created = job.metadata.creation_timestamp.unwrap();
        let c = Cluster::assemble(Parts {
            revision: 5,
            leader: leader(),
            jobs: vec![job],
            ..Parts::default()
        });
        let live = Link::Live { since: created };
        assert!(warnings(&c, &live, created + chrono::Duration::seconds(59)).is_empty());
        assert_eq!(
            warnings(&c, &live, created + chrono::Duration::seconds(61)).len(),
            1
        );
    }

    #[test]
    fn before_the_first_listing_only_the_link_is_reported() {
        let c = Cluster::default();
        let w = warnings(&c, &Link::Connecting { since: Utc::now() }, Utc::now());
        assert_eq!(titles(&w), ["connecting to etcd"]);
    }
}
