//! Voters: the leader, the VoterSet (wanted voters, phase, why), the etcd members as the voters
//! controller last saw them, and what each node's agent does with its local member.

use maud::html;

use super::widgets::{badge, time};
use super::{unread, Rendered};
use crate::api::node::LocalMemberState;
use crate::api::voter_set::VoterSetPhase;
use crate::dashboard::source::View;

pub fn render(view: &View) -> Rendered {
    if unread(view) {
        return Rendered::ok(html! {});
    }
    let c = &view.cluster;
    let status = c.voter_set.as_ref().and_then(|v| v.status.clone());
    let with_etcd: Vec<_> = c
        .nodes
        .iter()
        .filter_map(|n| Some((n.name(), n.status.as_ref()?.etcd.as_ref()?)))
        .collect();
    Rendered::ok(html! {
        div.cards {
            section.card {
                h2 { "Leader" }
                @match &c.leader {
                    Some(l) => {
                        p.big { (l.node) }
                        p.sub { "since " (time(Some(l.since))) @if let Some(e) = &l.endpoint { " · " code { (e) } } }
                    }
                    None => { p.big.bad { "none" } p.sub { "no controller-eligible agent holds the lease" } }
                }
            }
            section.card {
                h2 { "VoterSet" }
                @match &c.voter_set {
                    None => { p.muted { "No VoterSet `default`: etcd membership is not managed." } }
                    Some(v) => {
                        p.big { (v.spec.voters.join(", ")) }
                        @if let Some(s) = &status {
                            p.sub {
                                @match s.phase {
                                    VoterSetPhase::Converged => (badge("ok", "Converged")),
                                    VoterSetPhase::Progressing => (badge("info", "Progressing")),
                                    VoterSetPhase::Blocked => (badge("bad", "Blocked")),
                                }
                                " "
                                @if s.quorum { (badge("ok", "quorum")) } @else { (badge("bad", "no quorum")) }
                                @if !s.message.is_empty() { " " (s.message) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "etcd members" }
        @if status.as_ref().is_none_or(|s| s.members.is_empty()) {
            p.muted { "No member report yet (the voters controller writes one while a leader runs)." }
        } @else {
            div.scroll {
                table.members {
                    thead { tr { th { "Member" } th { "ID" } th { "Role" } th { "Health" } th.wide { "Client URLs" } th.wide { "Peer URLs" } } }
                    tbody {
                        @for m in status.iter().flat_map(|s| s.members.iter()) {
                            tr {
                                td { strong { (m.name) } }
                                td.muted { code { (m.id) } }
                                td { @if m.learner { (badge("info", "learner")) } @else { (badge("muted", "voter")) } }
                                td { @if m.healthy { (badge("ok", "healthy")) } @else { (badge("bad", "unhealthy")) } }
                                td.wide { code { (m.client_urls.join(" ")) } }
                                td.wide { code { (m.peer_urls.join(" ")) } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Local members" }
        @if with_etcd.is_empty() { p.muted { "No node offers an etcd member." } }
        @else {
            div.scroll {
                table {
                    thead { tr { th { "Node" } th { "State" } th { "Restarts" } th { "Message" } th.wide { "Client URLs" } } }
                    tbody {
                        @for (node, e) in &with_etcd {
                            tr {
                                td { (node) }
                                td { @match e.state {
                                    LocalMemberState::Running => (badge("ok", "Running")),
                                    LocalMemberState::Idle => (badge("muted", "Idle")),
                                    LocalMemberState::Restarting => (badge("warn", "Restarting")),
                                    LocalMemberState::Failed => (badge("bad", "Failed")),
                                } }
                                td { (e.restarts) }
                                td.why { (e.message) }
                                td.wide { code { (e.client_urls.join(" ")) } }
                            }
                        }
                    }
                }
            }
        }
    })
}
