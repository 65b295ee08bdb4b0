//! One job: its status, what it asks for, its recent events, and below them the live tail of
//! its output streamed from the agent of its node (the panel stays put while the status above
//! it is swapped, so the log is never cut).

use maud::{html, Markup};

use super::jobs::{format_figure, gpu_list};
use super::widgets::{badge, phase_badge, time};
use super::{unread, Rendered};
use crate::dashboard::source::View;
use axum::http::StatusCode;

pub fn render(view: &View, name: &str) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let c = &view.cluster;
    let Some(job) = c.job(name) else {
        return Rendered {
            status: StatusCode::NOT_FOUND,
            fragment: html! {
                div.problem role="alert" {
                    "There is no job " code { (name) } " (yet): this page shows it as soon as it is created. "
                    a href="/jobs" { "All jobs" }
                }
            },
        };
    };
    let st = job.status.clone().unwrap_or_default();
    let spec = &job.spec;
    let events: Vec<_> = c
        .events
        .iter()
        .filter(|e| e.spec.involved_object.kind == "Job" && e.spec.involved_object.name == name)
        .collect();
    Rendered::ok(html! {
        div.job-head { (phase_badge(st.phase)) " " span.muted { (format!("{:?}", spec.job_type).to_lowercase()) " job" } }
        div.cards {
            section.card {
                h2 { "Status" }
                dl {
                    dt { "Node" } dd { @if let Some(n) = &st.node { (n) } @else { span.muted { "not placed" } } }
                    dt { "GPUs" } dd { (gpu_list(&st.gpus, spec.resources.gpus)) }
                    dt { "Attempts" } dd { (st.attempts) }
                    dt { "Started" } dd { (time(st.start_time)) }
                    dt { "Finished" } dd { (time(st.finish_time)) }
                    @if let Some(code) = st.exit_code { dt { "Exit code" } dd { (code) } }
                    @if let Some(sig) = st.signal { dt { "Signal" } dd { (sig) } }
                    @if !st.reason.is_empty() { dt { "Reason" } dd { (st.reason) } }
                    @if !st.message.is_empty() { dt { "Message" } dd.why { (st.message) } }
                    @for (k, v) in &st.progress { dt { (k) } dd { (format_figure(*v)) } }
                }
            }
            section.card {
                h2 { "Spec" }
                dl {
                    dt { "Command" } dd { code.command { (shell_words(&spec.command)) } }
                    dt { "Resources" } dd {
                        (spec.resources.gpus) " GPU(s)"
                        @if !spec.resources.gpu_models.is_empty() { " of " (spec.resources.gpu_models.join(" / ")) }
                        @if let Some(c) = spec.resources.cpus { ", " (c) " CPUs" }
                        @if let Some(m) = spec.resources.memory_gb { ", " (m) " GB memory" }
                    }
                    dt { "Priority" } dd { (spec.priority) }
                    dt { "Restart" } dd { (format!("{:?}", spec.restart_policy)) ", backoff limit " (spec.backoff_limit) }
                    dt { "Node lost" } dd { (format!("{:?}", spec.on_node_lost).to_lowercase()) }
                    @if !spec.node_selector.is_empty() {
                        dt { "Node selector" } dd { @for (k, v) in &spec.node_selector { span.label { (k) "=" (v) } " " } }
                    }
                    dt { "Labels" } dd { @for (k, v) in &job.metadata.labels { span.label { (k) "=" (v) } " " } }
                    dt { "Created" } dd { (time(job.metadata.creation_timestamp)) }
                }
            }
        }
        section {
            h2 { "Events" }
            @if events.is_empty() { p.muted { "None in the last hour." } }
            @else {
                ul.feed {
                    @for e in events {
                        li class=(if e.spec.event_type == crate::api::event::EventType::Warning { "warn" } else { "" }) {
                            (time(Some(e.spec.last_seen))) " " strong { (e.spec.reason) } " " (e.spec.message)
                            @if e.spec.count > 1 { " " (badge("muted", &format!("×{}", e.spec.count))) }
                        }
                    }
                }
            }
        }
    })
}

/// The output panel: its own event stream, appended to and closed when the output ends.
pub fn log_panel(name: &str) -> Markup {
    html! {
        section.log-panel {
            h2 { "Output " span.muted { "(live from the agent of its node)" } }
            div hx-ext="sse" sse-connect={"/jobs/" (name) "/log"} sse-close="end" {
                pre #log sse-swap="log,end" hx-swap="beforeend" {}
            }
        }
    }
}

/// The command as a shell would need it typed (arguments with spaces or quotes quoted).
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
