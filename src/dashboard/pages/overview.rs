//! Overview: what needs attention first, then the leader, quorum, nodes, GPUs and jobs at a
//! glance, and the last day of GPU use and jobs as charts.

use maud::html;

use super::widgets::{bar, count, phase_badge, time, Chart, Series, Style};
use super::{unread, Rendered};
use crate::api::event::EventType;
use crate::api::voter_set::VoterSetPhase;
use crate::api::JobPhase;
use crate::dashboard::health::{warnings, Severity};
use crate::dashboard::history::History;
use crate::dashboard::source::View;

/// Warning events listed.
const RECENT_WARNINGS: usize = 8;

pub fn render(view: &View, history: &History) -> Rendered {
    let c = &view.cluster;
    let list = warnings(c, &view.link, c.taken_at);
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let (busy, gpus) = c.gpu_occupancy();
    let ready = c.ready_nodes();
    let voters = c.voter_set.as_ref();
    let members = voters
        .and_then(|v| v.status.as_ref())
        .map(|s| s.members.as_slice())
        .unwrap_or_default();
    let healthy = members.iter().filter(|m| m.healthy).count();
    let recent: Vec<_> = c
        .events
        .iter()
        .filter(|e| e.spec.event_type == EventType::Warning)
        .take(RECENT_WARNINGS)
        .collect();
    Rendered::ok(html! {
        section.attention aria-label="needs attention" {
            @if list.is_empty() {
                div.allclear { "All clear: leader elected, quorum, every node ready, nothing failed or stuck." }
            }
            @for w in &list {
                div class={"warning " (if w.severity == Severity::Critical { "critical" } else { "warn" })} {
                    strong { (w.title) }
                    @if !w.detail.is_empty() { span.detail { " — " (w.detail) } }
                    @if let Some(link) = &w.link { " " a href=(link) { "see" } }
                }
            }
        }
        section.tiles {
            div.tile {
                h2 { "Leader" }
                @match &c.leader {
                    Some(l) => { p.big { (l.node) } p.sub { "since " (time(Some(l.since))) } }
                    None => { p.big.bad { "none" } p.sub { "no controller runs" } }
                }
            }
            div.tile {
                h2 { "etcd" }
                @if members.is_empty() {
                    p.big.muted { "–" } p.sub { "no VoterSet report yet" }
                } @else {
                    p.big { (healthy) "/" (members.len()) " healthy" }
                    p.sub {
                        @match voters.and_then(|v| v.status.as_ref()) {
                            Some(s) if s.quorum => "quorum · ",
                            _ => "NO QUORUM · ",
                        }
                        (format!("{:?}", voters.and_then(|v| v.status.as_ref()).map_or(VoterSetPhase::default(), |s| s.phase)))
                    }
                }
            }
            div.tile {
                h2 { a href="/nodes" { "Nodes" } }
                p.big { (ready) "/" (c.nodes.len()) " ready" }
                (bar(percent(ready, c.nodes.len()), "wide-bar good", "nodes ready"))
            }
            div.tile {
                h2 { "GPUs" }
                p.big { (busy) "/" (gpus) " in use" }
                (bar(percent(busy, gpus), "wide-bar neutral", "GPUs held by jobs"))
                @if let Some(u) = c.gpu_utilisation() { p.sub { "mean utilisation " (format!("{u:.0}%")) } }
            }
            div.tile.jobs-tile {
                h2 { a href="/jobs" { "Jobs" } }
                ul.phases {
                    @for phase in JobPhase::ALL {
                        li { a href={"/jobs?phase=" (phase.as_str())} { (phase_badge(phase)) " " (count(c.count(phase) as u64)) } }
                    }
                }
            }
            div.tile {
                h2 { a href="/training" { "Training" } }
                p.big { (c.targets.len()) " target(s)" }
                p.sub { (c.targets.iter().filter_map(|t| t.status.as_ref()).map(|s| s.training_generation).sum::<u64>()) " runs so far" }
            }
        }
        section.charts {
            (gpu_chart(history).render())
            (jobs_chart(history).render())
        }
        section {
            h2 { a href="/events?type=Warning" { "Recent warnings" } }
            @if recent.is_empty() {
                p.muted { "No warning events in the last hour." }
            } @else {
                ul.feed {
                    @for e in recent {
                        li.warn {
                            (time(Some(e.spec.last_seen))) " "
                            strong { (e.spec.reason) } " "
                            span.muted { (e.spec.involved_object.kind) "/" (e.spec.involved_object.name) } " "
                            (e.spec.message)
                        }
                    }
                }
            }
        }
    })
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn gpu_chart(history: &History) -> Chart {
    let samples = history.cluster();
    Chart {
        id: "chart-gpus".into(),
        title: "GPUs in use (24 h)".into(),
        x: samples.iter().map(|s| s.at.timestamp()).collect(),
        series: vec![
            Series {
                label: "in use".into(),
                values: samples.iter().map(|s| Some(s.gpus_busy as f64)).collect(),
                color: 0,
                style: Style::Area,
            },
            Series {
                label: "total".into(),
                values: samples.iter().map(|s| Some(s.gpus as f64)).collect(),
                color: 3,
                style: Style::Dashed,
            },
        ],
        y_min: Some(0.0),
        y_max: None,
    }
}

fn jobs_chart(history: &History) -> Chart {
    let samples = history.cluster();
    Chart {
        id: "chart-jobs".into(),
        title: "Jobs running and pending (24 h)".into(),
        x: samples.iter().map(|s| s.at.timestamp()).collect(),
        series: vec![
            Series {
                label: "running".into(),
                values: samples.iter().map(|s| Some(s.running as f64)).collect(),
                color: 1,
                style: Style::Area,
            },
            Series {
                label: "pending".into(),
                values: samples.iter().map(|s| Some(s.pending as f64)).collect(),
                color: 2,
                style: Style::Line,
            },
        ],
        y_min: Some(0.0),
        y_max: None,
    }
}
