//! Nodes: a row per node with its state, heartbeat age, load, each GPU (held by which job;
//! utilisation and memory where NVML measures them), running jobs and tunnel; filtered by a
//! label selector, [`super::PER_PAGE`] at a time.

use maud::{html, Markup};

use super::widgets::{badge, bar, meter, pager, slice, time};
use super::{unread, Query, Rendered, PER_PAGE};
use crate::api::node::NodeRole;
use crate::api::Node;
use crate::dashboard::cluster::{is_ready, Cluster};
use crate::dashboard::source::View;

/// Job names listed in a node's row before "+N".
const JOBS_SHOWN: usize = 3;

pub fn controls(query: &Query) -> Markup {
    html! {
        form.filters method="get" action="/nodes" role="search" {
            label for="l" { "Labels" }
            input #l name="l" type="search" placeholder="e.g. gpu=h100,!retired" value=[query.l.as_deref()]
                autocomplete="off" spellcheck="false";
            button type="submit" { "Filter" }
            @if query.l.is_some() { a href="/nodes" { "clear" } }
        }
    }
}

pub fn render(view: &View, query: &Query) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let selector = match query.selector() {
        Ok(s) => s,
        Err(e) => return Rendered::bad_input(&e),
    };
    let page = match query.page_number() {
        Ok(p) => p,
        Err(e) => return Rendered::bad_input(&e),
    };
    let c = &view.cluster;
    let matching: Vec<&Node> = c
        .nodes
        .iter()
        .filter(|n| selector.matches(&n.metadata.labels))
        .collect();
    let s = slice(matching.len(), page, PER_PAGE);
    let ready = matching.iter().filter(|n| is_ready(n)).count();
    Rendered::ok(html! {
        p.summary {
            (matching.len()) " node(s)"
            @if matching.len() != c.nodes.len() { " of " (c.nodes.len()) " match" }
            ", " (ready) " ready"
        }
        (pager(s, |n| format!("/nodes{}", query.with_page(Some(n)))))
        div.scroll {
            table.nodes.stack {
                thead { tr {
                    th { "Node" } th { "State" } th { "Heartbeat" } th { "Load" }
                    th { "GPUs" } th { "Jobs" } th.wide { "Tunnel" } th.wide { "Agent" }
                } }
                tbody {
                    @for node in &matching[s.start..s.end] { (row(c, node)) }
                }
            }
        }
        @if s.pages > 1 { (pager(s, |n| format!("/nodes{}", query.with_page(Some(n))))) }
    })
}

fn row(c: &Cluster, node: &Node) -> Markup {
    let status = node.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|k| k.type_ == "Ready");
    let placed = c.placed_on(node.name());
    let running: Vec<&str> = placed.iter().map(|p| p.job.as_str()).collect();
    html! {
        tr id={"node-" (node.name())} {
            td.name data-label="Node" {
                strong { (node.name()) }
                div.tags {
                    @if !node.spec.provider.is_empty() { span.muted { (node.spec.provider) } " " }
                    @for role in &node.spec.roles { (badge("info", role_name(role))) " " }
                    @if node.spec.unschedulable { (badge("warn", "cordoned")) " " }
                    @if node.spec.nat_blocked { (badge("muted", "NAT")) " " }
                    @for (k, v) in &node.metadata.labels { span.label { (k) "=" (v) } " " }
                }
            }
            td data-label="State" {
                @if is_ready(node) { (badge("ok", "Ready")) }
                @else {
                    span title=(ready.map_or(String::new(), |r| format!("{}: {}", r.reason, r.message))) {
                        (badge("bad", "NotReady"))
                    }
                }
                @if status.overloaded { " " (badge("warn", "overloaded")) }
            }
            td data-label="Heartbeat" { (time(status.last_heartbeat)) }
            td.load data-label="Load" {
                div.meters {
                    (meter("CPU", status.usage.cpu_percent))
                    (meter("MEM", status.usage.memory_percent))
                    (meter("DISK", status.usage.disk_percent))
                }
            }
            td data-label="GPUs" { (gpus(&status, placed)) }
            td.jobs data-label="Jobs" {
                (running.len())
                @for j in running.iter().take(JOBS_SHOWN) { " " a href={"/jobs/" (j)} { (j) } }
                @if running.len() > JOBS_SHOWN {
                    " " a href={"/jobs?node=" (node.name())} { "+" (running.len() - JOBS_SHOWN) }
                }
            }
            td.wide {
                @for t in c.tunnels_of(node.name()) {
                    @let ts = t.status.clone().unwrap_or_default();
                    @if ts.connected {
                        (badge("ok", &format!("up via {}", ts.relay.unwrap_or_default())))
                    } @else {
                        span title=(ts.last_error) { (badge("bad", "down")) }
                    }
                }
            }
            td.wide.muted { (status.agent_version) }
        }
    }
}

fn role_name(role: &NodeRole) -> &'static str {
    match role {
        NodeRole::Voter => "voter",
        NodeRole::Controller => "controller",
        NodeRole::Relay => "relay",
    }
}

/// One cell per GPU: held (by which job) or free, with utilisation and memory bars when NVML
/// measured it.
fn gpus(status: &crate::api::NodeStatus, placed: &[crate::dashboard::cluster::Placed]) -> Markup {
    html! {
        div.gpus {
            @for g in &status.capacity.gpus {
                @let holder = placed.iter().find(|p| p.gpus.contains(&g.index));
                @let usage = status.usage.gpus.iter().find(|u| u.index == g.index);
                @let title = gpu_title(g, holder.map(|p| p.job.as_str()), usage);
                span class={"gpu" (if holder.is_some() { " held" } else { "" })} title=(title) {
                    span.gpu-index { (g.index) }
                    @if let Some(u) = usage {
                        (bar(u.util_percent.unwrap_or(0.0), "util", &format!("GPU {} utilisation", g.index)))
                        (bar(u.memory_percent, "mem", &format!("GPU {} memory", g.index)))
                    }
                }
            }
            @if status.capacity.gpus.is_empty() { span.muted { "none" } }
        }
    }
}

fn gpu_title(
    g: &crate::api::node::Gpu,
    holder: Option<&str>,
    usage: Option<&crate::api::node::GpuUsage>,
) -> String {
    let mut t = format!("GPU {} · {}", g.index, g.model);
    match holder {
        Some(job) => t += &format!(" · held by {job}"),
        None => t += " · free",
    }
    if let Some(u) = usage {
        if let Some(util) = u.util_percent {
            t += &format!(" · util {util:.0}%");
        }
        t += &format!(" · memory {:.0}%", u.memory_percent);
    }
    t
}
