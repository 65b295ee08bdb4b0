//! Events: what happened to which object, newest first, warnings highlighted; `?type=Warning`
//! shows only warnings. Events expire from etcd after about an hour.

use maud::html;

use super::widgets::{badge, pager, slice, time};
use super::{unread, Query, Rendered, PER_PAGE};
use crate::api::event::EventType;
use crate::api::Event;
use crate::dashboard::source::View;

pub fn render(view: &View, query: &Query) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let wanted = match query
        .event_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        None => None,
        Some(t) if t.eq_ignore_ascii_case("warning") => Some(EventType::Warning),
        Some(t) if t.eq_ignore_ascii_case("normal") => Some(EventType::Normal),
        Some(t) => {
            return Rendered::bad_input(&format!(
                "type {t:?} is not an event type; use Warning or Normal"
            ))
        }
    };
    let page = match query.page_number() {
        Ok(p) => p,
        Err(e) => return Rendered::bad_input(&e),
    };
    let shown: Vec<&Event> = view
        .cluster
        .events
        .iter()
        .filter(|e| wanted.is_none_or(|w| e.spec.event_type == w))
        .collect();
    let s = slice(shown.len(), page, PER_PAGE);
    Rendered::ok(html! {
        nav.phase-tabs aria-label="event types" {
            a href="/events" aria-current=[wanted.is_none().then_some("true")] { "All" }
            a href="/events?type=Warning" aria-current=[(wanted == Some(EventType::Warning)).then_some("true")] { "Warnings" }
            a href="/events?type=Normal" aria-current=[(wanted == Some(EventType::Normal)).then_some("true")] { "Normal" }
        }
        (pager(s, |n| format!("/events{}", query.with_page(Some(n)))))
        div.scroll {
            table.events.stack {
                thead { tr { th { "Last seen" } th { "Type" } th { "Reason" } th { "Object" } th { "Message" } th.wide { "Count" } th.wide { "Source" } } }
                tbody {
                    @for e in &shown[s.start..s.end] {
                        @let warn = e.spec.event_type == EventType::Warning;
                        tr class=(if warn { "warn" } else { "" }) {
                            td data-label="Seen" { (time(Some(e.spec.last_seen))) }
                            td data-label="Type" { @if warn { (badge("warn", "Warning")) } @else { (badge("muted", "Normal")) } }
                            td data-label="Reason" { (e.spec.reason) }
                            td data-label="Object" {
                                @if e.spec.involved_object.kind == "Job" {
                                    a href={"/jobs/" (e.spec.involved_object.name)} { "Job/" (e.spec.involved_object.name) }
                                } @else {
                                    (e.spec.involved_object.kind) "/" (e.spec.involved_object.name)
                                }
                            }
                            td.why data-label="Message" { (e.spec.message) }
                            td.wide { (e.spec.count) }
                            td.wide.muted { (e.spec.source) }
                        }
                    }
                }
            }
        }
    })
}
