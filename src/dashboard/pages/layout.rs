//! The page around the fragments: head (stylesheets, deferred scripts, htmx's settings for a
//! strict Content-Security-Policy), navigation, the live region and the footer.

use maud::{html, Markup, DOCTYPE};

use super::{Page, NAV};
use crate::dashboard::assets;
use crate::dashboard::source::{Link, View};

/// htmx settings: no `<style>` of its own (the CSP allows no inline style), no eval, no
/// scripts from swapped content, no history snapshots (pages are live anyway).
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0,"selfRequestsOnly":true}"#;

/// A whole page. `live` is the address of the fragment's event stream (`None` for pages that
/// do not change, like the 404).
pub fn document(
    page: Option<&Page>,
    title: &str,
    view: &View,
    controls: Option<Markup>,
    fragment: Markup,
    live: Option<&str>,
    extras: Option<Markup>,
) -> Markup {
    let section = page.map_or("", Page::section);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                meta name="color-scheme" content="light dark";
                title { (title) " · rift" }
                link rel="icon" href=(assets::href("favicon.svg"));
                link rel="stylesheet" href=(assets::href("uPlot.min.css"));
                link rel="stylesheet" href=(assets::href("dashboard.css"));
                script defer src=(assets::href("htmx.min.js")) {}
                script defer src=(assets::href("htmx-ext-sse.min.js")) {}
                script defer src=(assets::href("uPlot.iife.min.js")) {}
                script defer src=(assets::href("dashboard.js")) {}
            }
            body {
                header.top {
                    a.brand href="/" { "rift" }
                    nav.tabs aria-label="pages" {
                        @for (path, label) in NAV {
                            @if path == section {
                                a href=(path) aria-current="page" { (label) }
                            } @else {
                                a href=(path) { (label) }
                            }
                        }
                    }
                    span #conn .conn title="live updates from the dashboard" { "live" }
                }
                main {
                    h1 { (title) }
                    @if let Some(c) = controls { (c) }
                    @if let Some(url) = live {
                        div #live hx-ext="sse" sse-connect=(url) sse-swap="main" { (fragment) }
                    } @else {
                        div #live { (fragment) }
                    }
                    @if let Some(x) = extras { (x) }
                }
                footer {
                    "rift " (env!("CARGO_PKG_VERSION")) " · read-only view of etcd at "
                    code { (view.endpoints) }
                }
            }
        }
    }
}

/// A banner when what is shown is not current: etcd unreachable, or not read yet.
pub fn link_banner(view: &View) -> Markup {
    match &view.link {
        Link::Live { .. } => html! {},
        Link::Connecting { since } => html! {
            div.banner.warn role="status" {
                strong { "Connecting to etcd" } " at " code { (view.endpoints) }
                " (since " (since.format("%H:%M:%S UTC")) "). This page fills in by itself."
            }
        },
        Link::Unreachable { since, error } => html! {
            div.banner.bad #etcd-unreachable role="alert" {
                strong { "etcd unreachable" } " at " code { (view.endpoints) }
                " since " (since.format("%H:%M:%S UTC")) ": " (error) ". "
                @if view.cluster.revision > 0 {
                    "Showing the cluster as of " (view.cluster.taken_at.format("%H:%M:%S UTC"))
                    "; this page catches up by itself once etcd answers."
                } @else {
                    "Nothing has been read yet; this page fills in by itself once etcd answers."
                }
            }
        },
    }
}

/// The fragment of a path that names no page.
pub fn not_found(path: &str) -> Markup {
    html! {
        div.problem role="alert" {
            p { "There is no page at " code { (path) } "." }
            p { "The pages are: "
                @for (i, (p, label)) in NAV.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href=(p) { (label) }
                }
                ". A job's page is " code { "/jobs/NAME" } "."
            }
        }
    }
}
