//! `rift status [-o json|yaml] [-w]`: leader, voters and quorum, nodes, jobs by phase.
//!
//! With `-w` the view is kept current: read again on every change in etcd and every 2 s (for
//! member health), printed only when what it shows changed; on a terminal it is redrawn in
//! place.

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

use super::output;
use super::printer::{self, age};
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format: table (for people), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: StatusOutput,
    /// Keep the view current as the cluster changes (redrawn in place on a terminal; printed
    /// again only when something shown changed otherwise).
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// `rift status -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Report {
    pub leader: Option<LeaderView>,
    pub voters: VotersView,
    pub nodes: NodesView,
    pub jobs: BTreeMap<String, usize>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct LeaderView {
    pub node: String,
    pub since: chrono::DateTime<Utc>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct VotersView {
    pub desired: Vec<String>,
    pub members: Vec<MemberView>,
    pub quorum: bool,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct MemberView {
    pub name: String,
    pub id: String,
    pub learner: bool,
    pub healthy: bool,
}

#[derive(Debug, PartialEq, Serialize)]
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

/// The report in the chosen format.
fn text(report: &Report, output: StatusOutput) -> String {
    let value = || serde_json::to_value(report).expect("reports serialize");
    match output {
        StatusOutput::Json => format!("{}\n", output::to_json(&value())),
        StatusOutput::Yaml => output::to_yaml(&value()),
        StatusOutput::Table => render(report),
    }
}

pub async fn run(args: StatusArgs, store: &Store) -> Result<(), CliError> {
    let mut report = collect(store).await?;
    if !args.watch {
        print!("{}", text(&report, args.output));
        return Ok(());
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown = String::new();
    let mut first = true;
    let mut watcher = Watcher::new(store.clone(), keys::ROOT, WatchConfig::default());
    let _ = watcher.next().await; // the initial list: already read
    loop {
        let now = text(&report, args.output);
        if terminal && now != shown {
            // Home, the view (each line cleared to its end), then clear what is below.
            let mut frame = String::from("\x1b[H");
            for line in now.lines() {
                frame += &format!("{line}\x1b[K\n");
            }
            frame += &format!(
                "\x1b[K\nas of {} (Ctrl-C to stop)\x1b[K\n\x1b[J",
                Utc::now().format("%H:%M:%S")
            );
            print!("{frame}");
        } else if !terminal && changed(&shown, &now, args.output) {
            if !first && args.output == StatusOutput::Table {
                println!("---- {}", Utc::now().format("%H:%M:%S"));
            }
            print!("{now}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        shown = now;
        first = false;
        // Read again on any change, and at least every 2 s for member health.
        tokio::select! {
            _ = watcher.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        match collect(store).await {
            Ok(r) => report = r,
            Err(e) => eprintln!("warning: {e}; retrying"),
        }
    }
}

/// Whether a view differs from the one shown, leaving out what only time changes (the
/// leader's age in the table).
fn changed(shown: &str, now: &str, output: StatusOutput) -> bool {
    let steady = |s: &str| -> String {
        if output != StatusOutput::Table {
            return s.to_string();
        }
        s.lines()
            .map(|l| match l.strip_prefix("Leader:") {
                Some(rest) => format!("Leader:{}", rest.rsplit_once(", ").map_or(rest, |(a, _)| a)),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    steady(shown) != steady(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shown_change_counts_not_the_leaders_age() {
        let a = "Leader:  n1 (since 2026-11-22 12:00:00 UTC, 5s)\nNodes:   1 total\n";
        let b = "Leader:  n1 (since 2026-11-22 12:00:00 UTC, 7s)\nNodes:   1 total\n";
        let c = "Leader:  n1 (since 2026-11-22 12:00:00 UTC, 7s)\nNodes:   2 total\n";
        assert!(!changed(a, b, StatusOutput::Table));
        assert!(changed(b, c, StatusOutput::Table));
        assert!(changed("", a, StatusOutput::Table));
    }
}
