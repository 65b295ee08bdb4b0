//! The pages: which paths exist, what their query means, and how each renders.
//!
//! Every page has a **live fragment**, rendered from one [`View`] and pushed again over
//! server-sent events whenever it changes, and may have **controls** (filter forms) and
//! **extras** (the log panel) around it that stay put, so a swap never eats what someone is
//! typing. Input that makes no sense (a bad label selector, an unknown phase, a page number
//! that is not a number) is answered with the page, a message saying what to type instead, and
//! status 400; nothing on the server changes either way (every page is read-only).

mod events;
mod job;
mod jobs;
mod layout;
mod nodes;
mod overview;
mod training;
mod tunnels;
mod voters;
pub mod widgets;

use axum::http::StatusCode;
use maud::{html, Markup};
use serde::{Deserialize, Serialize};

use super::source::{Source, View};
use crate::api::selector::LabelSelector;
use crate::api::validation::dns1123_problem;
use crate::api::JobPhase;

pub use layout::{document, not_found};
pub use training::{elo_curve, elo_gain};

/// Rows per page of the long lists (jobs, nodes, events).
pub const PER_PAGE: usize = 100;

/// A page of the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    Overview,
    Nodes,
    Jobs,
    Job(String),
    Training,
    Events,
    Voters,
    Tunnels,
}

/// The navigation bar: path and label.
pub const NAV: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/nodes", "Nodes"),
    ("/jobs", "Jobs"),
    ("/training", "Training"),
    ("/events", "Events"),
    ("/voters", "Voters"),
    ("/tunnels", "Tunnels"),
];

impl Page {
    /// The page at `path`, or `None` (a 404). A job name is taken only when it is a valid
    /// name, so what reaches a page is never a path or markup.
    pub fn from_path(path: &str) -> Option<Page> {
        if path.contains("//") {
            return None;
        }
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        Some(match path {
            "/" => Page::Overview,
            "/nodes" => Page::Nodes,
            "/jobs" => Page::Jobs,
            "/training" => Page::Training,
            "/events" => Page::Events,
            "/voters" => Page::Voters,
            "/tunnels" => Page::Tunnels,
            _ => {
                let name = path.strip_prefix("/jobs/")?;
                if dns1123_problem(name).is_some() {
                    return None;
                }
                Page::Job(name.to_string())
            }
        })
    }

    pub fn path(&self) -> String {
        match self {
            Page::Overview => "/".into(),
            Page::Nodes => "/nodes".into(),
            Page::Jobs => "/jobs".into(),
            Page::Job(name) => format!("/jobs/{name}"),
            Page::Training => "/training".into(),
            Page::Events => "/events".into(),
            Page::Voters => "/voters".into(),
            Page::Tunnels => "/tunnels".into(),
        }
    }

    pub fn title(&self) -> String {
        match self {
            Page::Job(name) => format!("Job {name}"),
            other => NAV
                .iter()
                .find(|(p, _)| *p == other.path())
                .map_or("rift", |(_, l)| l)
                .to_string(),
        }
    }

    /// The navigation entry this page belongs to.
    pub fn section(&self) -> &'static str {
        match self {
            Page::Job(_) => "/jobs",
            other => NAV
                .iter()
                .find(|(p, _)| *p == other.path())
                .map_or("/", |(p, _)| p),
        }
    }
}

/// Every query parameter any page reads; the others ignore what is not theirs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// A label selector (nodes, jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l: Option<String>,
    /// A job phase (jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Part of a name (jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// A node name (jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `Warning` or `Normal` (events).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// 1-based page number (long lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
}

impl Query {
    /// `?a=b&...` for this query with `page` replaced (or dropped with `None`); empty when
    /// nothing is set.
    pub fn with_page(&self, page: Option<usize>) -> String {
        let q = Query {
            page: page.map(|p| p.to_string()),
            ..self.clone()
        };
        q.encoded()
    }

    /// `?a=b&...`, or empty.
    pub fn encoded(&self) -> String {
        let s = serde_urlencoded::to_string(self).expect("queries encode");
        if s.is_empty() {
            s
        } else {
            format!("?{s}")
        }
    }

    /// The page number asked for (1 when none).
    pub fn page_number(&self) -> Result<usize, String> {
        match self
            .page
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            None => Ok(1),
            Some(p) => p
                .parse::<usize>()
                .map_err(|_| format!("page {p:?} is not a page number; pages count from 1")),
        }
    }

    /// The label selector asked for (everything when none).
    pub fn selector(&self) -> Result<LabelSelector, String> {
        match self.l.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            None => Ok(LabelSelector::everything()),
            Some(l) => l
                .parse()
                .map_err(|e: crate::api::selector::SelectorError| e.to_string()),
        }
    }

    /// The job phase asked for (any when none).
    pub fn job_phase(&self) -> Result<Option<JobPhase>, String> {
        match self
            .phase
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            None => Ok(None),
            Some(p) => JobPhase::ALL
                .into_iter()
                .find(|x| x.as_str().eq_ignore_ascii_case(p))
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "phase {p:?} is not a job phase; use one of {}",
                        JobPhase::ALL.map(|x| x.as_str()).join(", ")
                    )
                }),
        }
    }
}

/// A page's live fragment and the status it is served with.
pub struct Rendered {
    pub status: StatusCode,
    pub fragment: Markup,
}

impl Rendered {
    fn ok(fragment: Markup) -> Rendered {
        Rendered {
            status: StatusCode::OK,
            fragment,
        }
    }

    /// The page answered a question it could not make sense of: say what to ask instead.
    fn bad_input(problem: &str) -> Rendered {
        Rendered {
            status: StatusCode::BAD_REQUEST,
            fragment: html! { div.problem role="alert" { strong { "Cannot show this: " } (problem) } },
        }
    }
}

/// The live fragment of `page` for `query`, as of the source's newest view.
pub fn render(page: &Page, source: &Source, query: &Query) -> Rendered {
    let view = source.view();
    let body = match page {
        Page::Overview => overview::render(&view, &source.history()),
        Page::Nodes => nodes::render(&view, query),
        Page::Jobs => jobs::render(&view, query),
        Page::Job(name) => job::render(&view, name),
        Page::Training => training::render(&view, &source.history()),
        Page::Events => events::render(&view, query),
        Page::Voters => voters::render(&view),
        Page::Tunnels => tunnels::render(&view),
    };
    Rendered {
        status: body.status,
        fragment: html! { (layout::link_banner(&view)) (body.fragment) },
    }
}

/// Forms that stay put above the live fragment.
pub fn controls(page: &Page, query: &Query) -> Option<Markup> {
    match page {
        Page::Nodes => Some(nodes::controls(query)),
        Page::Jobs => Some(jobs::controls(query)),
        _ => None,
    }
}

/// What stays put below the live fragment.
pub fn extras(page: &Page) -> Option<Markup> {
    match page {
        Page::Job(name) => Some(job::log_panel(name)),
        _ => None,
    }
}

/// The view's cluster was never read (nothing to show but the banner).
fn unread(view: &View) -> bool {
    view.cluster.revision == 0
}

#[cfg(test)]
mod tests;
