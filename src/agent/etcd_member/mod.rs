//! The local etcd member: the agent starts and supervises this node's `etcd` process when the
//! cluster lists the node as a member (added by the voters controller), restarts it with
//! backoff when it dies, and stops it and clears its data when the node is removed.
//!
//! It also keeps the agent's own endpoints current: every voter's client URLs (in each
//! voter's address order) are added to the etcd client and saved in `<state>/endpoints.json`,
//! so an agent restarted after its configured endpoints were retired still finds the cluster.
//!
//! Guarantees: a member is only started for a node the member list names (or, with
//! `--bootstrap`, when nothing answers and there is no data); data is only cleared when a
//! cluster that answers no longer lists the node. An agent restart adopts the running member
//! instead of restarting it (unless `etcd.stopWithAgent`).

pub mod bind;
pub mod decide;
pub mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::event::Reason;
use crate::api::node::{LocalMemberState, NodeEtcd};
use crate::store::events::EventRecorder;
use crate::store::members::{self, Member};
use crate::store::{keys, Op, Store, StoreError};
use crate::tasks::CancellationToken;

use super::config::{AgentConfig, EtcdMemberConfig};
use decide::{decide, Action, Membership, Observation, StartMode};
use process::{MemberDir, MemberProcess, MemberSpec};

/// How often the supervisor looks.
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Restart delays after the member dies: doubling from 1 s, capped.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A member that ran this long resets the restart delay.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Consecutive passes a cluster must answer without this node before the agent acts on it.
const NOT_MEMBER_PASSES: u32 = 5;
/// How long a member list request may take before the cluster counts as unreachable.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// The saved endpoints file under the state directory.
pub fn endpoints_file(state_dir: &Path) -> PathBuf {
    state_dir.join("endpoints.json")
}

/// What `endpoints.json` holds: the voters' client URLs, and the configured endpoints they
/// were learned through.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedEndpoints {
    configured: Vec<String>,
    learned: Vec<String>,
}

/// Endpoints learned by an earlier run (voters' client URLs), if that run was configured with
/// the same endpoints (`configured`, normalized as [`crate::store::Access`] does): a state
/// directory reused against another cluster (or a test's) must not bring the old cluster's
/// members along.
pub fn saved_endpoints(state_dir: &Path, configured: &[String]) -> Vec<String> {
    let saved: SavedEndpoints =
        match crate::agent::jobs::layout::read_json(&endpoints_file(state_dir)) {
            Ok(Some(s)) => s,
            _ => return Vec::new(),
        };
    if saved.configured == configured {
        saved.learned
    } else {
        Vec::new()
    }
}

/// The hosts this node's etcd URLs use: its addresses, else the host of `--advertise`, else a
/// specific listen address. They are also the names on its etcd certificates.
pub fn hosts(config: &AgentConfig) -> Vec<String> {
    if !config.addresses.is_empty() {
        return config.addresses.clone();
    }
    if let Some(host) = config.advertise.as_deref().and_then(|a| a.rsplit_once(':')) {
        return vec![host.0.to_string()];
    }
    let specific = config.listen != "0.0.0.0" && config.listen != "::";
    if specific {
        vec![config.listen.clone()]
    } else {
        Vec::new()
    }
}

/// The member's URLs and command line, or why this node cannot host one.
pub fn member_spec(config: &AgentConfig) -> Result<MemberSpec, String> {
    let etcd: &EtcdMemberConfig = &config.etcd;
    if !etcd.enabled {
        return Err(if config.nat_blocked {
            "NAT-blocked nodes do not host etcd members".into()
        } else {
            "etcd.enabled is false in this node's config".into()
        });
    }
    let binary = process::find_binary(&etcd.binary).ok_or_else(|| {
        format!(
            "`{}` not found: install etcd (Debian: etcd-server) or set etcd.binary",
            etcd.binary.display()
        )
    })?;
    let tls = if config.insecure {
        None
    } else {
        let pki = crate::pki::PkiDir::new(&config.state_dir);
        if !pki.has_etcd_certs() {
            return Err(format!(
                "no etcd certificates in {} (etcd-server.crt, etcd-peer.crt): only controller \
                 nodes host etcd members; join this node with a controller token",
                pki.root().display()
            ));
        }
        Some(process::MemberTls::in_dir(&pki))
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let hosts = hosts(config);
    let Some(first) = hosts.first() else {
        return Err(
            "no address peers can reach this node's etcd at: set `addresses:` \
                    in the config or --address"
                .into(),
        );
    };
    let url = |host: &str, port: u16| {
        if host.contains(':') {
            format!("{scheme}://[{host}]:{port}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    };
    let client_urls: Vec<String> = hosts.iter().map(|h| url(h, etcd.client_port)).collect();
    let listen = bind::decide(&hosts, &etcd.bind_addresses, bind::is_local)?;
    if !listen.not_local.is_empty() {
        tracing::warn!(
            addresses = %listen.not_local.join(", "),
            "etcd does not listen on these node addresses: they are not on this machine \
             (a cloud's NAT?); if peers reach this node there, add the private address they \
             forward to in etcd.bindAddresses"
        );
    }
    let listen_client_urls = listen
        .client
        .iter()
        .map(|h| url(h, etcd.client_port))
        .collect();
    let listen_peer_urls = listen.peer.iter().map(|h| url(h, etcd.peer_port)).collect();
    Ok(MemberSpec {
        name: config.name.clone(),
        binary,
        dir: MemberDir::new(&config.state_dir),
        peer_url: url(first, etcd.peer_port),
        client_urls,
        listen_peer_urls,
        listen_client_urls,
        tls,
        metrics_url: etcd
            .metrics_port
            .filter(|p| *p != 0)
            .map(|p| format!("http://127.0.0.1:{p}")),
        extra_args: etcd.extra_args.clone(),
        gogc: etcd.gogc,
        memory_limit_mib: etcd.memory_limit_mib,
    })
}

/// Supervises the local member until `shutdown`.
pub struct Supervisor {
    node: String,
    store: Store,
    spec: Result<MemberSpec, String>,
    state_dir: PathBuf,
    bootstrap: bool,
    stop_with_agent: bool,
    events: EventRecorder,
    process: Option<MemberProcess>,
    report: NodeEtcd,
    written: Option<NodeEtcd>,
    restart_delay: Duration,
    not_before: Instant,
    learned: Vec<String>,
    /// The endpoints from the agent's configuration: always kept.
    configured: Vec<String>,
    /// The cluster this state directory belongs to, once known (`<state>/etcd/cluster.json`).
    cluster_id: Option<u64>,
    not_member_streak: u32,
}

impl Supervisor {
    /// `configured`: the configured endpoints, normalized (see [`saved_endpoints`]).
    pub fn new(config: &AgentConfig, store: Store, configured: Vec<String>) -> Self {
        let spec = member_spec(config);
        let process = spec
            .as_ref()
            .ok()
            .and_then(|s| MemberProcess::adopt(&s.dir));
        if let Some(p) = &process {
            tracing::info!(pid = p.record.pid, "adopted the running etcd member");
        }
        let report = match &spec {
            Ok(s) => NodeEtcd {
                peer_urls: vec![s.peer_url.clone()],
                client_urls: s.client_urls.clone(),
                ..NodeEtcd::default()
            },
            Err(why) => NodeEtcd {
                state: LocalMemberState::Failed,
                message: why.clone(),
                ..NodeEtcd::default()
            },
        };
        Supervisor {
            node: config.name.clone(),
            events: EventRecorder::agent(store.clone(), &config.name),
            store,
            spec,
            state_dir: config.state_dir.clone(),
            bootstrap: config.etcd.bootstrap,
            stop_with_agent: config.etcd.stop_with_agent,
            process,
            report,
            written: None,
            restart_delay: Duration::from_secs(1),
            not_before: Instant::now(),
            learned: saved_endpoints(&config.state_dir, &configured),
            configured,
            cluster_id: MemberDir::new(&config.state_dir).cluster_id(),
            not_member_streak: 0,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let list = members::list_within(&self.store, LIST_TIMEOUT).await;
            let cluster_id = list.as_ref().and_then(|l| l.cluster_id);
            let membership = match (&list, cluster_id) {
                (Some(list), Some(id)) => self.membership(&list.members, id),
                _ => Membership::Unknown,
            };
            // "Not a member" is acted on (stop, set the data aside) only when it holds for
            // several passes: one answer from a member that has not yet applied this node's
            // addition must not cost the data.
            self.not_member_streak = match membership {
                Membership::NotMember => self.not_member_streak + 1,
                _ => 0,
            };
            let settled =
                membership != Membership::NotMember || self.not_member_streak >= NOT_MEMBER_PASSES;
            if let (Ok(spec), true) = (self.spec.clone(), settled) {
                self.converge(&spec, &membership).await;
                if let (Membership::Member { .. }, Some(id), true) =
                    (&membership, cluster_id, self.process.is_some())
                {
                    self.remember_cluster(&spec, id);
                }
            }
            if let Some(list) = &list {
                if self.process.is_some() {
                    self.upgrade_peer_url(&list.members).await;
                }
                self.learn_endpoints(&list.members).await;
            }
            self.write_report().await;
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(p) = &mut self.process {
            if self.stop_with_agent {
                tracing::info!("stopping the local etcd member");
                p.stop(Duration::from_secs(10)).await;
            } else {
                tracing::info!(pid = p.record.pid, "leaving the etcd member running");
            }
        }
    }

    /// This node in the member list answered by cluster `cluster_id`, as [`decide`] needs it.
    /// A list from another cluster than the one this node joined is no information.
    fn membership(&self, members: &[Member], cluster_id: u64) -> Membership {
        let Ok(spec) = &self.spec else {
            return Membership::Unknown;
        };
        if self.cluster_id.is_some_and(|ours| ours != cluster_id) {
            tracing::warn!(
                cluster_id = format!("{cluster_id:x}"),
                "an etcd endpoint answers for another cluster; ignoring its member list"
            );
            return Membership::Unknown;
        }
        let ours = |urls: &[String]| urls.contains(&spec.peer_url);
        let mut cluster = Vec::new();
        let mut found = None;
        let mut started_voter = false;
        for m in members {
            if m.name == self.node || ours(&m.peer_urls) {
                found = Some(m.peer_urls.clone());
                started_voter = !m.name.is_empty() && !m.learner;
                continue;
            }
            if !m.name.is_empty() {
                for u in &m.peer_urls {
                    cluster.push((m.name.clone(), u.clone()));
                }
            }
        }
        // Registered over http:// while this agent now offers https:// (a plaintext cluster
        // moved to TLS): the same member; its peer URL is corrected by `upgrade_peer_url`.
        let upgraded = |urls: &[String]| {
            urls.iter()
                .any(|u| u.replacen("http://", "https://", 1) == spec.peer_url)
        };
        match found {
            Some(urls) if ours(&urls) || (spec.tls.is_some() && upgraded(&urls)) => {
                cluster.push((self.node.clone(), spec.peer_url.clone()));
                Membership::Member {
                    cluster,
                    started_voter,
                }
            }
            Some(urls) => Membership::Mismatch { registered: urls },
            None => Membership::NotMember,
        }
    }

    /// Records the cluster this state directory belongs to (once).
    fn remember_cluster(&mut self, spec: &MemberSpec, cluster_id: u64) {
        if self.cluster_id.is_some() {
            return;
        }
        match spec.dir.write_cluster_id(cluster_id) {
            Ok(()) => self.cluster_id = Some(cluster_id),
            Err(e) => tracing::warn!(%e, "cannot record the cluster id"),
        }
    }

    async fn converge(&mut self, spec: &MemberSpec, membership: &Membership) {
        // A member adopted from before this node moved to TLS: restart it with TLS (from its
        // data; the cluster keeps quorum as long as one voter restarts at a time).
        if spec.tls.is_some() {
            let stale = self
                .process
                .as_mut()
                .is_some_and(|p| p.is_running() && !p.runs_tls());
            if let Some(p) = self.process.as_mut().filter(|_| stale) {
                tracing::info!(pid = p.record.pid, "restarting the etcd member with TLS");
                p.stop(Duration::from_secs(10)).await;
                self.process = None;
                self.events.record(
                    "Node",
                    &self.node,
                    Reason::EtcdMemberTls,
                    "the etcd member was restarted with TLS".to_string(),
                );
            }
        }
        let running = self.process.as_mut().is_some_and(|p| p.is_running());
        if self.process.is_some() && !running {
            let ran = self
                .process
                .take()
                .and_then(|p| p.record.started_at)
                .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
                .unwrap_or_default();
            if ran >= STABLE_AFTER {
                self.restart_delay = Duration::from_secs(1);
            }
            self.report.restarts += 1;
            self.report.state = LocalMemberState::Restarting;
            self.report.message = format!(
                "etcd exited; restarting in {} s (log: {})",
                self.restart_delay.as_secs(),
                spec.dir.log().display()
            );
            self.events.record(
                "Node",
                &self.node,
                Reason::EtcdMemberDied,
                self.report.message.clone(),
            );
            self.not_before = Instant::now() + self.restart_delay;
            self.restart_delay = (self.restart_delay * 2).min(RESTART_MAX);
        }
        let observation = Observation {
            running,
            has_data: spec.dir.has_data(),
            ever_member: self.cluster_id.is_some(),
            bootstrap: self.bootstrap,
            membership: membership.clone(),
        };
        match decide(&observation) {
            Action::Keep => {
                if running {
                    self.set(LocalMemberState::Running, "");
                } else if self.report.state != LocalMemberState::Restarting {
                    self.set(LocalMemberState::Idle, "");
                }
            }
            Action::Start(mode) => {
                if Instant::now() < self.not_before {
                    return;
                }
                if mode != StartMode::FromData {
                    // What a failed earlier start left (no write-ahead log) is no member's
                    // data: remove it so etcd starts clean.
                    let dir = spec.dir.clone();
                    let cleared = tokio::task::spawn_blocking(move || dir.set_aside_partial())
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    if let Err(e) = cleared {
                        self.set(LocalMemberState::Failed, &format!("{e}"));
                        return;
                    }
                }
                match MemberProcess::spawn(spec, &mode) {
                    Ok(p) => {
                        tracing::info!(pid = p.record.pid, ?mode, "started the local etcd member");
                        self.process = Some(p);
                        self.set(LocalMemberState::Running, "");
                    }
                    Err(e) => {
                        self.not_before = Instant::now() + self.restart_delay;
                        self.restart_delay = (self.restart_delay * 2).min(RESTART_MAX);
                        let why = format!("cannot start etcd: {e}");
                        self.set(LocalMemberState::Failed, &why);
                    }
                }
            }
            Action::StopAndSetAside => {
                if let Some(p) = &mut self.process {
                    p.stop(Duration::from_secs(10)).await;
                }
                self.process = None;
                let dir = spec.dir.clone();
                let set_aside = tokio::task::spawn_blocking(move || dir.set_aside())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match set_aside {
                    Ok(kept) => {
                        self.events.record(
                            "Node",
                            &self.node,
                            Reason::EtcdMemberRemoved,
                            format!(
                                "removed from the etcd cluster: member stopped, its data moved \
                                 to {}",
                                kept.display()
                            ),
                        );
                        self.report.restarts = 0;
                        self.set(LocalMemberState::Idle, "");
                    }
                    Err(e) => self.set(
                        LocalMemberState::Failed,
                        &format!("cannot set {} aside: {e}", spec.dir.data().display()),
                    ),
                }
            }
            Action::Refuse(why) => self.set(LocalMemberState::Failed, &why),
        }
    }

    fn set(&mut self, state: LocalMemberState, message: &str) {
        self.report.state = state;
        self.report.message = message.to_string();
    }

    async fn write_report(&mut self) {
        if self.written.as_ref() == Some(&self.report) {
            return;
        }
        let body = serde_json::to_vec(&self.report).expect("reports serialize");
        let key = keys::agent_etcd(&self.node);
        let put = Op::put(key.as_str(), body);
        if self.store.txn(vec![], vec![put], vec![]).await.is_ok() {
            self.written = Some(self.report.clone());
        }
    }

    /// A member registered with `http://` peer URLs that now runs with TLS (the cluster moved to
    /// TLS, voter by voter): corrects its peer URL to `https://` so the other members reach it.
    /// Needs a controller's (root) identity; retried every pass until it holds.
    async fn upgrade_peer_url(&mut self, members: &[Member]) {
        let Ok(spec) = &self.spec else { return };
        if spec.tls.is_none() {
            return;
        }
        let Some(me) = members.iter().find(|m| m.name == self.node) else {
            return;
        };
        if me.peer_urls.iter().any(|u| u == &spec.peer_url)
            || !me.peer_urls.iter().any(|u| u.starts_with("http://"))
        {
            return;
        }
        let update = members::update_peer_urls(
            &self.store,
            me.id,
            vec![spec.peer_url.clone()],
            LIST_TIMEOUT,
        );
        match update.await {
            Ok(()) => tracing::info!(
                peer_url = %spec.peer_url,
                "the etcd member's peer URL moved to TLS"
            ),
            Err(StoreError::Timeout { .. }) => {
                tracing::warn!("moving the member's peer URL to https timed out")
            }
            Err(e) => tracing::warn!(%e, "cannot move the member's peer URL to https yet"),
        }
    }

    /// Makes every voter's client URLs (with the configured ones) the store's endpoints and saves
    /// them; drops the URLs of members that are gone at once.
    async fn learn_endpoints(&mut self, members: &[Member]) {
        // Only URLs this store can speak to: a member still on http:// while this agent is
        // on TLS (or the other way round, mid-upgrade) is no endpoint for it.
        let scheme = if self.store.access().is_tls() {
            "https://"
        } else {
            "http://"
        };
        let urls: Vec<String> = members
            .iter()
            .filter(|m| !m.learner)
            .flat_map(|m| m.client_urls.iter().cloned())
            .filter(|u| u.starts_with(scheme))
            .collect();
        if urls.is_empty() || urls == self.learned {
            return;
        }
        // Gone members leave the balance now (requests routed to them fail); new ones join
        // once the store's health task has seen them answer.
        let configured = &self.configured;
        for gone in self
            .learned
            .iter()
            .filter(|u| !urls.contains(u) && !configured.contains(u))
        {
            self.store.drop_endpoint(gone).await;
        }
        let mut wanted = self.configured.clone();
        wanted.extend(
            urls.iter()
                .filter(|u| !self.configured.contains(u))
                .cloned(),
        );
        self.store.set_endpoints(wanted);
        let path = endpoints_file(&self.state_dir);
        let saved = SavedEndpoints {
            configured: self.configured.clone(),
            learned: urls.clone(),
        };
        let saved = tokio::task::spawn_blocking(move || {
            crate::agent::jobs::layout::write_json(&path, &saved)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = saved {
            tracing::warn!(%e, "cannot save the learned endpoints");
        }
        tracing::info!(endpoints = %urls.join(","), "etcd endpoints learned from the member list");
        self.learned = urls;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::{ConfigFile, Overrides};

    #[test]
    fn an_agent_listening_everywhere_still_binds_etcd_only_to_its_own_addresses() {
        let config = AgentConfig::resolve(
            ConfigFile::default(),
            Overrides {
                name: Some("n1".into()),
                addresses: vec!["127.0.0.2".into(), "192.0.2.7".into()],
                etcd_binary: Some("sh".into()),
                // Plaintext: this is about addresses (a TLS member also needs its certificates).
                insecure: true,
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0", "the agent's own default");
        let spec = member_spec(&config).unwrap();
        assert_eq!(spec.listen_client_urls, ["http://127.0.0.2:2379"]);
        assert_eq!(spec.listen_peer_urls, ["http://127.0.0.2:2380"]);
        // Advertised as before: every address, in order.
        assert_eq!(
            spec.client_urls,
            ["http://127.0.0.2:2379", "http://192.0.2.7:2379"]
        );
    }
}
