//! One tunnel, kept up: choose the relay, start ssh, notice when its forwards are up, publish
//! status, and start it again (on the same relay, another of its addresses, or another relay)
//! with exponential backoff and jitter, capped at [`MAX_BACKOFF`].
//!
//! Guarantees:
//! - At most one ssh process per tunnel, and none once [`Supervisor::run`] returns (stopped on
//!   the stop signal, killed on drop).
//! - A run that stayed up for [`STABLE_AFTER`] starts the backoff over, so a tunnel that breaks
//!   after a healthy period comes back at once; failures in a row wait longer each time.
//! - Status is written only by this node's agent, to `/rift/v1/agents/<node>/tunnels/<name>`,
//!   and only when it changed; a write that fails (etcd away) is retried every few seconds.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;

use super::select::{choose_relay, pick_address, Candidate};
use super::ssh::{classify, explain, host_alias, write_known_hosts, Line, SshInvocation};
use crate::api::event::Reason;
use crate::api::selector::LabelSelector;
use crate::api::tunnel::TunnelStatus;
use crate::api::{NodeSpec, TunnelSpec};
use crate::net::dial::host_of;
use crate::store::backoff::ResettingBackoff;
use crate::store::events::EventRecorder;
use crate::store::Op;
use crate::store::{keys, Store};
use crate::tasks::CancellationToken;

/// The longest wait between two ssh starts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// The first wait after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// A run up at least this long counts as healthy: the backoff starts over after it.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often an unwritten status is tried again.
const REPUBLISH: Duration = Duration::from_secs(2);
/// How long ssh gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Messages of one ssh run kept for `lastError`.
const KEPT_MESSAGES: usize = 20;

/// Endpoints of this node's connected tunnels, by tunnel name: `relay-host:remote-port` of the
/// forward that leads to the agent's HTTP port.
pub type Endpoints = watch::Sender<BTreeMap<String, String>>;

/// Keeps one Tunnel up until told to stop.
pub struct Supervisor {
    pub node: String,
    pub name: String,
    pub spec: TunnelSpec,
    pub store: Store,
    /// `<state>/tunnels/<name>`: the pinned `known_hosts` lives here.
    pub dir: PathBuf,
    pub agent_port: u16,
    pub endpoints: Endpoints,
    pub events: EventRecorder,
}

/// What the supervisor knows between ssh runs.
struct Progress {
    status: TunnelStatus,
    published: Option<TunnelStatus>,
    /// Nodes as last listed (kept when etcd is away).
    nodes: Vec<Candidate>,
    relay: Option<String>,
    /// Consecutive failed runs on `relay`.
    failures: u32,
    /// The relay address that last carried the tunnel.
    good_address: Option<String>,
    starts: u32,
}

/// How an ssh run ended.
enum Ended {
    Exited {
        up_for: Option<Duration>,
        error: String,
    },
    Stopped,
}

impl Supervisor {
    /// Runs until `stop` turns true (or its sender is dropped).
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = ResettingBackoff::new(MIN_BACKOFF, MAX_BACKOFF, STABLE_AFTER * 3);
        let mut p = Progress {
            status: TunnelStatus::default(),
            published: None,
            nodes: Vec::new(),
            relay: None,
            failures: 0,
            good_address: None,
            starts: 0,
        };
        loop {
            if stop.is_cancelled() {
                break;
            }
            self.refresh_nodes(&mut p).await;
            let ended = match choose_relay(&self.spec, &p.nodes, p.relay.as_deref(), p.failures) {
                Err(e) => {
                    p.status.connected = false;
                    p.status.endpoint = None;
                    p.status.last_error = e.to_string();
                    Ended::Exited {
                        up_for: None,
                        error: e.to_string(),
                    }
                }
                Ok(choice) => {
                    if p.relay.as_deref() != Some(choice.relay.as_str()) {
                        if let Some(old) = &p.relay {
                            let msg = format!(
                                "moving from relay {old} to {} after {} failures in a row",
                                choice.relay, p.failures
                            );
                            tracing::info!(tunnel = %self.name, "{msg}");
                            self.events
                                .record("Tunnel", &self.name, Reason::RelaySwitched, msg);
                        }
                        p.relay = Some(choice.relay.clone());
                        p.failures = 0;
                        p.good_address = None;
                    }
                    let address =
                        pick_address(&choice.addresses, p.good_address.as_deref(), p.failures);
                    self.run_ssh(&mut p, &choice.relay, &choice.host_key, &address, &stop)
                        .await
                }
            };
            match ended {
                Ended::Stopped => break,
                Ended::Exited { up_for, error } => {
                    match up_for {
                        Some(t) if t >= STABLE_AFTER => backoff.reset(),
                        Some(_) => {}
                        None => p.failures += 1,
                    }
                    if up_for.is_some() {
                        p.failures = 0;
                        self.events
                            .record("Tunnel", &self.name, Reason::TunnelDown, &error);
                    }
                    let delay = backoff.next_delay().min(MAX_BACKOFF);
                    tracing::info!(tunnel = %self.name, %error, ?delay, "tunnel down; starting ssh again after the delay");
                    if self.wait(&mut p, delay, &stop).await {
                        break;
                    }
                }
            }
        }
        self.endpoints.send_modify(|m| {
            m.remove(&self.name);
        });
    }

    /// Lists Nodes for relay selection; keeps the last list when etcd does not answer.
    async fn refresh_nodes(&self, p: &mut Progress) {
        match self
            .store
            .list::<NodeSpec>(&LabelSelector::everything())
            .await
        {
            Ok((nodes, _)) => p.nodes = nodes.iter().map(Candidate::from).collect(),
            Err(e) => tracing::debug!(%e, "cannot list nodes; using the last list"),
        }
    }

    /// Waits `delay` (publishing status meanwhile); true when told to stop.
    async fn wait(&self, p: &mut Progress, delay: Duration, stop: &CancellationToken) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.publish(p).await;
            let next = if p.published.as_ref() == Some(&p.status) {
                until
            } else {
                until.min(Instant::now() + REPUBLISH)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    if Instant::now() >= until {
                        return false;
                    }
                }
                _ = stop.cancelled() => return true,
            }
        }
    }

    /// Writes the status when it differs from what was last written.
    async fn publish(&self, p: &mut Progress) {
        if p.published.as_ref() == Some(&p.status) {
            return;
        }
        let body = serde_json::to_vec(&p.status).expect("statuses serialize");
        let key = keys::agent_tunnel(&self.node, &self.name);
        match self
            .store
            .txn(vec![], vec![Op::put(key.as_str(), body)], vec![])
            .await
        {
            Ok(_) => p.published = Some(p.status.clone()),
            Err(e) => tracing::debug!(%e, tunnel = %self.name, "tunnel status not written yet"),
        }
    }

    /// The forward that leads to the agent's HTTP port, else the first one.
    fn advertised_remote_port(&self) -> Option<u16> {
        self.spec
            .ports
            .iter()
            .find(|f| f.local_port == self.agent_port)
            .or(self.spec.ports.first())
            .map(|f| f.remote_port)
    }

    /// One ssh run through `relay` at `address`, until ssh exits or `stop`.
    async fn run_ssh(
        &self,
        p: &mut Progress,
        relay: &str,
        host_key: &str,
        address: &str,
        stop: &CancellationToken,
    ) -> Ended {
        let host = host_of(address).to_string();
        let mut child = match self.start_ssh(p, relay, host_key, &host).await {
            Ok(c) => c,
            Err(error) => {
                p.status.last_error = error.clone();
                return Ended::Exited {
                    up_for: None,
                    error,
                };
            }
        };
        tracing::info!(tunnel = %self.name, %relay, %address, pid = child.id(), "ssh started");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut messages: VecDeque<String> = VecDeque::new();
        let mut up_since: Option<Instant> = None;
        let mut republish = tokio::time::interval(REPUBLISH);
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match classify(&line) {
                        Line::ForwardsUp if up_since.is_none() => {
                            up_since = Some(Instant::now());
                            self.forwards_up(p, relay, address, &host).await;
                        }
                        Line::Message(m) => {
                            if messages.len() == KEPT_MESSAGES {
                                messages.pop_front();
                            }
                            messages.push_back(m);
                        }
                        _ => {}
                    },
                    // stderr closed: ssh is exiting.
                    Ok(None) | Err(_) => break,
                },
                _ = republish.tick() => self.publish(p).await,
                _ = stop.cancelled() => {
                    stop_child(&mut child).await;
                    return Ended::Stopped;
                }
            }
        }
        let exit = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("cannot wait for ssh: {e}"),
            Err(_) => {
                stop_child(&mut child).await;
                "ssh closed its stderr but did not exit; killed".into()
            }
        };
        let messages: Vec<String> = messages.into();
        let error = explain(&messages, &exit);
        self.endpoints.send_modify(|m| {
            m.remove(&self.name);
        });
        p.status.connected = false;
        p.status.endpoint = None;
        p.status.last_error = error.clone();
        self.publish(p).await;
        Ended::Exited {
            up_for: up_since.map(|t| t.elapsed()),
            error,
        }
    }

    /// Writes the relay's pinned host key and starts ssh through it to `host`; the error, for
    /// the status, when either fails.
    async fn start_ssh(
        &self,
        p: &mut Progress,
        relay: &str,
        host_key: &str,
        host: &str,
    ) -> Result<Child, String> {
        let alias = host_alias(relay);
        let known_hosts = self.dir.join("known_hosts");
        p.status.relay = Some(relay.to_string());
        // Off the async workers: the write ends with an fsync.
        let written = {
            let (path, alias, key) = (known_hosts.clone(), alias.clone(), host_key.to_string());
            tokio::task::spawn_blocking(move || write_known_hosts(&path, &alias, &key))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        if let Err(e) = written {
            return Err(format!("cannot write {}: {e}", known_hosts.display()));
        }
        let invocation = SshInvocation {
            alias,
            host: host.to_string(),
            port: self.spec.ssh_port,
            user: self.spec.ssh_user.clone(),
            identity_file: self.spec.identity_file.clone().into(),
            known_hosts,
            forwards: self.spec.ports.clone(),
        };
        if p.starts > 0 {
            p.status.restarts = p.status.restarts.saturating_add(1);
        }
        p.starts += 1;
        invocation
            .spawn()
            .map_err(|e| format!("cannot start ssh: {e}"))
    }

    /// ssh reported its forwards up: the tunnel is connected (its endpoint published, an
    /// event recorded, the status written).
    async fn forwards_up(&self, p: &mut Progress, relay: &str, address: &str, host: &str) {
        p.failures = 0;
        p.good_address = Some(address.to_string());
        let endpoint = self
            .advertised_remote_port()
            .map(|port| format!("{}:{port}", bracket(host)));
        p.status.connected = true;
        p.status.since = Some(Utc::now());
        p.status.endpoint = endpoint.clone();
        if self
            .spec
            .ports
            .iter()
            .any(|f| f.local_port == self.agent_port)
        {
            if let Some(ep) = endpoint {
                self.endpoints.send_modify(|m| {
                    m.insert(self.name.clone(), ep);
                });
            }
        }
        tracing::info!(tunnel = %self.name, %relay, %address, "tunnel up");
        self.events.record(
            "Tunnel",
            &self.name,
            Reason::TunnelUp,
            format!("connected through relay {relay} at {address}"),
        );
        self.publish(p).await;
    }
}

/// An IPv6 host in brackets, for `host:port`.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]; always reaped.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
