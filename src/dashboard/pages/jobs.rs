//! Jobs: phase, node, GPUs, age, attempts, progress and why-not, [`super::PER_PAGE`] at a
//! time, filtered by phase, name, node and labels; failed and pending jobs first.

use maud::{html, Markup};

use super::widgets::{count, pager, phase_badge, slice, time};
use super::{unread, Query, Rendered, PER_PAGE};
use crate::api::{Job, JobPhase};
use crate::dashboard::source::View;

pub fn controls(query: &Query) -> Markup {
    html! {
        form.filters method="get" action="/jobs" role="search" {
            @if let Some(p) = &query.phase { input type="hidden" name="phase" value=(p); }
            label for="q" { "Name" }
            input #q name="q" type="search" placeholder="part of a name" value=[query.q.as_deref()]
                autocomplete="off" spellcheck="false";
            label for="node" { "Node" }
            input #node name="node" type="search" placeholder="node" value=[query.node.as_deref()]
                autocomplete="off" spellcheck="false";
            label for="l" { "Labels" }
            input #l name="l" type="search" placeholder="e.g. board=hex8" value=[query.l.as_deref()]
                autocomplete="off" spellcheck="false";
            button type="submit" { "Filter" }
            @if query.q.is_some() || query.node.is_some() || query.l.is_some() {
                a href="/jobs" { "clear" }
            }
        }
    }
}

/// Failed and Pending first: they are the ones to look at.
fn rank(phase: JobPhase) -> u8 {
    match phase {
        JobPhase::Failed => 0,
        JobPhase::Pending => 1,
        JobPhase::Scheduled => 2,
        JobPhase::Running => 3,
        JobPhase::Succeeded => 4,
    }
}

fn phase_of(job: &Job) -> JobPhase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

pub fn render(view: &View, query: &Query) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let (selector, phase, page) = match (query.selector(), query.job_phase(), query.page_number()) {
        (Ok(s), Ok(p), Ok(n)) => (s, p, n),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Rendered::bad_input(&e),
    };
    let c = &view.cluster;
    let name_part = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let node = query
        .node
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let filtered: Vec<&Job> = c
        .jobs
        .iter()
        .filter(|j| name_part.is_none_or(|q| j.name().contains(q)))
        .filter(|j| {
            node.is_none_or(|n| j.status.as_ref().and_then(|s| s.node.as_deref()) == Some(n))
        })
        .filter(|j| selector.matches(&j.metadata.labels))
        .collect();
    let mut by_phase = [0usize; 5];
    for j in &filtered {
        by_phase[rank(phase_of(j)) as usize] += 1;
    }
    let mut shown: Vec<&Job> = filtered
        .iter()
        .copied()
        .filter(|j| phase.is_none_or(|p| phase_of(j) == p))
        .collect();
    // Jobs come in name order; a stable sort keeps it within each phase.
    shown.sort_by_key(|j| rank(phase_of(j)));
    let s = slice(shown.len(), page, PER_PAGE);
    let tab = |p: Option<JobPhase>| Query {
        phase: p.map(|p| p.as_str().to_string()),
        page: None,
        ..query.clone()
    };
    Rendered::ok(html! {
        nav.phase-tabs aria-label="phases" {
            a href={"/jobs" (tab(None).encoded())} aria-current=[phase.is_none().then_some("true")] {
                "All " span.n { (count(filtered.len() as u64)) }
            }
            @for p in [JobPhase::Failed, JobPhase::Pending, JobPhase::Scheduled, JobPhase::Running, JobPhase::Succeeded] {
                a href={"/jobs" (tab(Some(p)).encoded())} aria-current=[(phase == Some(p)).then_some("true")] {
                    (phase_badge(p)) " " span.n { (count(by_phase[rank(p) as usize] as u64)) }
                }
            }
        }
        (pager(s, |n| format!("/jobs{}", query.with_page(Some(n)))))
        div.scroll {
            table.jobs.stack {
                thead { tr {
                    th { "Job" } th { "Phase" } th { "Node" } th { "GPUs" } th.wide { "Age" }
                    th.wide { "Attempts" } th.wide { "Progress" } th { "Why" }
                } }
                tbody {
                    @for job in &shown[s.start..s.end] { (row(job)) }
                }
            }
        }
        @if s.pages > 1 { (pager(s, |n| format!("/jobs{}", query.with_page(Some(n))))) }
    })
}

fn row(job: &Job) -> Markup {
    let st = job.status.clone().unwrap_or_default();
    let why = match st.phase {
        JobPhase::Pending | JobPhase::Failed => [st.message.as_str(), st.reason.as_str()]
            .into_iter()
            .find(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| st.exit_code.map(|c| format!("exit code {c}"))),
        _ => None,
    };
    html! {
        tr id={"job-" (job.name())} {
            td.name data-label="Job" {
                a href={"/jobs/" (job.name())} { (job.name()) }
                span.muted.type { " " (format!("{:?}", job.spec.job_type).to_lowercase()) }
            }
            td data-label="Phase" { (phase_badge(st.phase)) }
            td data-label="Node" { @if let Some(n) = &st.node { (n) } @else { span.muted { "–" } } }
            td data-label="GPUs" { (gpu_list(&st.gpus, job.spec.resources.gpus)) }
            td.wide { (time(job.metadata.creation_timestamp)) }
            td.wide { (st.attempts) }
            td.wide {
                @for (k, v) in &st.progress { span.progress { (k) " " (format_figure(*v)) } " " }
            }
            td.why data-label="Why" { @if let Some(w) = why { (w) } }
        }
    }
}

/// The GPUs held, or how many are asked for while none are.
pub fn gpu_list(held: &[u32], wanted: u32) -> Markup {
    html! {
        @if !held.is_empty() {
            (held.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        } @else if wanted > 0 {
            span.muted { (wanted) " wanted" }
        } @else {
            span.muted { "–" }
        }
    }
}

/// A progress counter: whole numbers without decimals.
pub fn format_figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{}", count(v.abs() as u64))
    } else {
        format!("{v:.3}")
    }
}
