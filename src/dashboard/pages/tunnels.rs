//! Tunnels: each NAT-blocked node's reverse tunnel, the relay in use, since when, restarts and
//! the last error.

use maud::html;

use super::widgets::{badge, time};
use super::{unread, Rendered};
use crate::dashboard::source::View;

pub fn render(view: &View) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let c = &view.cluster;
    let up = c
        .tunnels
        .iter()
        .filter(|t| t.status.as_ref().is_some_and(|s| s.connected))
        .count();
    Rendered::ok(html! {
        p.summary { (c.tunnels.len()) " tunnel(s), " (up) " up" }
        @if c.tunnels.is_empty() {
            p.muted { "No Tunnels: no node is NAT-blocked." }
        } @else {
            div.scroll {
                table.tunnels {
                    thead { tr { th { "Tunnel" } th { "Node" } th { "State" } th { "Relay" } th { "Since" } th.wide { "Restarts" } th { "Last error" } th.wide { "Endpoint" } } }
                    tbody {
                        @for t in &c.tunnels {
                            @let s = t.status.clone().unwrap_or_default();
                            tr class=(if s.connected { "" } else { "warn" }) {
                                td { strong { (t.name()) } }
                                td { (t.spec.node) }
                                td { @if s.connected { (badge("ok", "up")) } @else { (badge("bad", "down")) } }
                                td { (s.relay.as_deref().unwrap_or(&t.spec.relay)) }
                                td { (time(s.since)) }
                                td.wide { (s.restarts) }
                                td.why { (s.last_error) }
                                td.wide { @if let Some(e) = &s.endpoint { code { (e) } } }
                            }
                        }
                    }
                }
            }
        }
    })
}
