//! `rift status [-o json] [-w]`: leader, voters and quorum, nodes, jobs by phase.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::api::selector::LabelSelector;
use crate::api::voter_set::VOTER_SET_NAME;
use crate::api::{JobPhase, JobSpec, NodeSpec, VoterSetSpec};
use crate::store::leader::current_leader;
use crate::store::members;
use crate::store::watcher::{WatchConfig, Watcher};
use crate::store::{keys, Store};

use super::printer::{self, age};
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// `table` (default) or `json`.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: printer::Output,
    /// Keep the view current as the cluster changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub leader: Option<LeaderView>,
    pub voters: VotersView,
    pub nodes: NodesView,
    pub jobs: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct LeaderView {
    pub node: String,
    pub since: chrono::DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct VotersView {
    pub desired: Vec<String>,
    pub members: Vec<MemberView>,
    pub quorum: bool,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub name: String,
    pub id: String,
    pub learner: bool,
    pub healthy: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesView {
    pub total: usize,
    pub ready: usize,
    pub not_ready: Vec<String>,
}

/// Collects the whole report. Member health is checked on each member's own client URL.
pub async fn collect(store: &Store) -> Result<Report, CliError> {
    let leader = current_leader(store).await?.map(|l| LeaderView {
        node: l.record.node,
        since: l.record.since,
    });
    let desired = store
        .get::<VoterSetSpec>(VOTER_SET_NAME)
        .await?
        .map(|v| v.spec.voters)
        .unwrap_or_default();
    let views: Vec<MemberView> = members::list(store)
        .await?
        .into_iter()
        .map(|m| MemberView {
            id: m.hex_id(),
            name: m.name,
            learner: m.learner,
            healthy: m.healthy,
        })
        .collect();
    let voters: Vec<&MemberView> = views.iter().filter(|m| !m.learner).collect();
    let quorum = voters.iter().filter(|m| m.healthy).count() * 2 > voters.len();
    let (nodes, _) = store.list::<NodeSpec>(&LabelSelector::everything()).await?;
    let not_ready: Vec<String> = nodes
        .iter()
        .filter(|n| !n.status.as_ref().is_some_and(|s| s.is_ready()))
        .map(|n| n.name().to_string())
        .collect();
    let (jobs, _) = store.list::<JobSpec>(&LabelSelector::everything()).await?;
    let mut by_phase: BTreeMap<String, usize> = JobPhase::ALL
        .iter()
        .map(|p| (p.as_str().to_string(), 0))
        .collect();
    for j in &jobs {
        let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
        *by_phase.entry(phase.as_str().to_string()).or_default() += 1;
    }
    Ok(Report {
        leader,
        voters: VotersView {
            desired,
            members: views,
            quorum,
        },
        nodes: NodesView {
            total: nodes.len(),
            ready: nodes.len() - not_ready.len(),
            not_ready,
        },
        jobs: by_phase,
    })
}

/// The report as people read it.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    match &r.leader {
        Some(l) => {
            out += &format!(
                "Leader:  {} (since {}, {})\n",
                l.node,
                l.since.format("%Y-%m-%d %H:%M:%S UTC"),
                age(Some(l.since), Utc::now())
            )
        }
        None => out += "Leader:  none (no controller-eligible agent holds the lease)\n",
    }
    let healthy = r.voters.members.iter().filter(|m| m.healthy).count();
    out += &format!(
        "Voters:  desired [{}]; {} etcd members, {} healthy; quorum: {}\n",
        r.voters.desired.join(", "),
        r.voters.members.len(),
        healthy,
        if r.voters.quorum { "yes" } else { "NO" }
    );
    let rows: Vec<Vec<String>> = r
        .voters
        .members
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.id.clone(),
                if m.learner { "learner" } else { "voter" }.into(),
                if m.healthy { "healthy" } else { "UNHEALTHY" }.into(),
            ]
        })
        .collect();
    let mut buf = Vec::new();
    printer::write_table(&mut buf, Some(&["MEMBER", "ID", "ROLE", "HEALTH"]), &rows)
        .expect("writing to memory cannot fail");
    out += &String::from_utf8_lossy(&buf)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>();
    out += &format!("Nodes:   {} total, {} ready", r.nodes.total, r.nodes.ready);
    if !r.nodes.not_ready.is_empty() {
        // A fleet-wide outage must not print thousands of names: the first few, then a count.
        const SHOWN: usize = 10;
        let names = &r.nodes.not_ready;
        out += &format!(
            "; not ready: {}",
            names[..names.len().min(SHOWN)].join(", ")
        );
        if names.len() > SHOWN {
            out += &format!(" and {} more (rift get nodes)", names.len() - SHOWN);
        }
    }
    out += "\nJobs:    ";
    out += &r
        .jobs
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    out += "\n";
    out
}

fn print(report: &Report, output: printer::Output) {
    match output {
        printer::Output::Json => {
            println!(
                "{}",
                serde_json::to_string(report).expect("reports serialize")
            )
        }
        _ => print!("{}", render(report)),
    }
}

pub async fn run(args: StatusArgs, store: &Store) -> Result<(), CliError> {
    print(&collect(store).await?, args.output);
    if !args.watch {
        return Ok(());
    }
    let mut watcher = Watcher::new(store.clone(), keys::ROOT, WatchConfig::default());
    let _ = watcher.next().await; // the initial list: already shown
    loop {
        // Redraw on any change, and at least every 2 s for member health.
        tokio::select! {
            _ = watcher.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        match collect(store).await {
            Ok(r) => {
                if args.output != printer::Output::Json {
                    println!("---- {}", Utc::now().format("%H:%M:%S"));
                }
                print(&r, args.output);
            }
            Err(e) => eprintln!("warning: {e}; retrying"),
        }
    }
}
