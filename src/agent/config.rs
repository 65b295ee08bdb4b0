//! Agent configuration: a YAML file (`--config`), overridden by `RIFT_*` environment variables
//! and flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::duration::HumanDuration;
use crate::api::node::DEFAULT_AGENT_PORT;
use crate::api::validation::dns1123_problem;

use super::http_server::HttpLimits;

/// The config file, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub name: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub lease_ttl: Option<HumanDuration>,
    /// TTL of the node's liveness lease (how fast a dead node shows NotReady).
    pub node_lease_ttl: Option<HumanDuration>,
    pub controllers: Option<bool>,
    /// This node's addresses, in the order peers should try them.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub provider: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub roles: Vec<crate::api::node::NodeRole>,
    #[serde(default)]
    pub nat_blocked: bool,
    /// GPUs NVML cannot see (Apple, AMD) or declared for tests.
    #[serde(default)]
    pub gpus: Vec<crate::api::node::GpuDeclaration>,
    /// Usage above which the node counts as overloaded (percent).
    #[serde(default)]
    pub thresholds: super::resources::Thresholds,
    /// Leader only: extra time beyond a job's `lostAfter` before it is moved off a lost node.
    pub reschedule_margin: Option<HumanDuration>,
    /// The local etcd member this node runs when the VoterSet makes it a voter.
    #[serde(default)]
    pub etcd: EtcdFileConfig,
    /// A plaintext cluster (no TLS, no identities): only for clusters not yet moved to TLS.
    pub insecure: Option<bool>,
    /// A controller's agent to join through (with the token in `RIFT_JOIN_TOKEN`).
    pub join: Option<String>,
    /// A file holding a token Prometheus may present (`Authorization: Bearer ...`) for
    /// `/metrics` instead of a client certificate.
    pub scrape_token_file: Option<PathBuf>,
    /// Limits of the agent's HTTP server.
    #[serde(default)]
    pub http: HttpFileConfig,
    /// The user jobs run as (a name or uid). Unset: the agent's own user.
    pub run_as: Option<String>,
    /// Where Jobs' `envFrom` files are (default `/etc/rift/secrets`).
    pub secrets_dir: Option<PathBuf>,
}

/// `http:` in the config file: every field optional (defaults in [`HttpLimits::default`]).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFileConfig {
    pub header_read_timeout: Option<HumanDuration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
    pub max_follow_streams: Option<usize>,
}

impl HttpFileConfig {
    fn resolve(self) -> Result<HttpLimits, ConfigError> {
        let d = HttpLimits::default();
        let limits = HttpLimits {
            header_read_timeout: self
                .header_read_timeout
                .map_or(d.header_read_timeout, HumanDuration::as_duration),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_peer: self
                .max_connections_per_peer
                .unwrap_or(d.max_connections_per_peer),
            max_follow_streams: self.max_follow_streams.unwrap_or(d.max_follow_streams),
        };
        let bad = |field: &str, why: &str| Err(ConfigError::Http(format!("http.{field}: {why}")));
        if limits.header_read_timeout < Duration::from_millis(100) {
            return bad("headerReadTimeout", "must be at least 100ms (default 10s)");
        }
        if limits.max_connections == 0 {
            return bad("maxConnections", "must be at least 1 (default 512)");
        }
        if limits.max_connections_per_peer == 0 {
            return bad("maxConnectionsPerPeer", "must be at least 1 (default 128)");
        }
        if limits.max_follow_streams == 0 {
            return bad("maxFollowStreams", "must be at least 1 (default 64)");
        }
        Ok(limits)
    }
}

/// `etcd:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdFileConfig {
    /// Offer to host a member (default true; NAT-blocked nodes never do).
    pub enabled: Option<bool>,
    /// The etcd binary: a path, or a name looked up on PATH (default `etcd`).
    pub binary: Option<PathBuf>,
    pub client_port: Option<u16>,
    pub peer_port: Option<u16>,
    /// Stop the member when the agent stops (default false: a restarted agent adopts it, so
    /// upgrading agents never bounces a voter).
    pub stop_with_agent: Option<bool>,
    /// A loopback-only port for the member's `/metrics` and `/health` (plain HTTP on
    /// 127.0.0.1; the client port is TLS with client certificates). None: no such listener.
    pub metrics_port: Option<u16>,
    /// Extra etcd flags, e.g. `[--heartbeat-interval, "250", --election-timeout, "2500"]` for
    /// voters far apart.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Go's garbage-collector target for the member (`GOGC`). Default 400: etcd collects a
    /// quarter as often as Go's 100, which on a busy control plane halves its CPU at about
    /// twice its memory (BENCHMARKS.md, issue 20); [`EtcdFileConfig::memory_limit_mib`] bounds
    /// that memory.
    pub gogc: Option<u32>,
    /// The member's soft memory limit in MiB (`GOMEMLIMIT`): near it Go collects more often
    /// whatever `gogc` says. Default: a quarter of the machine's memory. 0: no limit.
    pub memory_limit_mib: Option<u64>,
    /// Addresses etcd listens on. Default: those of the node's `addresses` that are on this
    /// machine (and 127.0.0.1 for clients). `[0.0.0.0]` listens everywhere.
    #[serde(default)]
    pub bind_addresses: Vec<String>,
}

/// `GOGC` for the etcd members rift runs (and the benchmarks' etcd), unless configured.
pub const ETCD_GOGC: u32 = 400;

/// A quarter of this machine's memory in MiB, or of its cgroup's memory limit when that is
/// lower (a container on a large host), at least [`ETCD_MEMORY_LIMIT_MIB`]'s lower end
/// (`None` when the memory cannot be read).
pub fn default_etcd_memory_limit_mib() -> Option<u64> {
    let system = sysinfo::System::new_with_specifics(
        sysinfo::RefreshKind::nothing()
            .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
    )
    .ok()?;
    let mut total = system.total_memory();
    if let Some(limits) = system.cgroup_limits() {
        if limits.total_memory > 0 && limits.total_memory < total {
            total = limits.total_memory;
        }
    }
    (total > 0).then(|| (total / 4 / (1 << 20)).max(*ETCD_MEMORY_LIMIT_MIB.start()))
}

/// The `etcd.memoryLimitMib` values taken (0 turns the limit off): below 128 MiB etcd would
/// collect garbage all the time; the top (1 PiB) keeps Go's byte count far from overflowing.
pub const ETCD_MEMORY_LIMIT_MIB: std::ops::RangeInclusive<u64> = 128..=(1 << 30);

/// The local etcd member's settings, resolved.
#[derive(Clone, Debug)]
pub struct EtcdMemberConfig {
    pub enabled: bool,
    pub binary: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: Option<u16>,
    pub stop_with_agent: bool,
    pub extra_args: Vec<String>,
    /// `GOGC` for the member.
    pub gogc: u32,
    /// `GOMEMLIMIT` for the member in MiB (`None`: none).
    pub memory_limit_mib: Option<u64>,
    /// Addresses to listen on, when given (else chosen from the node's addresses).
    pub bind_addresses: Vec<String>,
    /// Start a new one-member cluster when there is no data and no cluster answers.
    pub bootstrap: bool,
}

/// Problems with the agent's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "the node name is required: pass --name, set RIFT_NAME, or put `name:` in the config file"
    )]
    MissingName,
    #[error("node name: {0}")]
    BadName(String),
    #[error("lease TTL must be at least 1 second")]
    BadTtl,
    #[error("etcd.gogc: {0} is outside 25..=10000 (Go's garbage-collector target in percent: 100 is Go's default, 400 rift's; a tiny value makes etcd collect all the time)")]
    BadGogc(u32),
    #[error("etcd.memoryLimitMib: {0} is outside 128..=1073741824 (the member's soft memory limit in MiB; 0 turns it off): below 128 MiB etcd would collect garbage all the time, and far above any machine Go cannot count it in bytes")]
    BadMemoryLimit(u64),
    #[error("{0}")]
    Http(String),
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use crate::api::input;
        let limited = |e: input::InputError| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let text = input::read_file(path, input::MAX_INPUT_BYTES).map_err(|e| match e {
            input::InputError::Read { error, .. } => ConfigError::Read {
                path: path.display().to_string(),
                source: error,
            },
            other => limited(other),
        })?;
        input::check_flow_depth(&path.display().to_string(), &text).map_err(limited)?;
        serde_norway::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

/// The configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub endpoints: Vec<String>,
    /// Whether endpoints were given (flags, environment, config file); otherwise the ones a
    /// join saved, else the local default.
    pub endpoints_given: bool,
    /// A plaintext cluster: no TLS, no identity (`--insecure`).
    pub insecure: bool,
    /// `--join URL --token T`: join through a controller's agent when this node has no
    /// identity yet.
    pub join: Option<JoinConfig>,
    pub scrape_token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub port: u16,
    pub listen: String,
    /// `host:port` peers use to reach this agent.
    pub advertise: Option<String>,
    pub lease_ttl: Duration,
    pub node_lease_ttl: Duration,
    pub controllers: bool,
    pub addresses: Vec<String>,
    pub provider: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub roles: Vec<crate::api::node::NodeRole>,
    pub nat_blocked: bool,
    pub gpus: Vec<crate::api::node::GpuDeclaration>,
    pub thresholds: super::resources::Thresholds,
    pub reschedule_margin: Duration,
    pub etcd: EtcdMemberConfig,
    pub http: HttpLimits,
    /// The user jobs run as; `None`: the agent's own user.
    pub run_as: Option<String>,
    /// Where Jobs' `envFrom` files are.
    pub secrets_dir: PathBuf,
}

impl AgentConfig {
    /// The Node spec this agent registers when no operator has applied one.
    pub fn node_spec(&self) -> crate::api::NodeSpec {
        crate::api::NodeSpec {
            addresses: self.addresses.clone(),
            provider: self.provider.clone(),
            roles: self.roles.clone(),
            nat_blocked: self.nat_blocked,
            unschedulable: false,
            gpus: self.gpus.clone(),
            agent_port: self.port,
        }
    }
}

/// Where and with what to join.
#[derive(Clone)]
pub struct JoinConfig {
    /// A controller's agent, `https://HOST:PORT`.
    pub url: String,
    /// `RIFT1...`.
    pub token: String,
}

impl std::fmt::Debug for JoinConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Values given on the command line or in the environment (they win over the file).
#[derive(Debug, Default)]
pub struct Overrides {
    pub name: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub state_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub lease_ttl_secs: Option<u64>,
    pub node_lease_ttl_secs: Option<u64>,
    pub controllers: bool,
    pub gpus: Vec<crate::api::node::GpuDeclaration>,
    pub reschedule_margin_secs: Option<u64>,
    /// Replace `addresses:` from the file.
    pub addresses: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub etcd_binary: Option<PathBuf>,
    pub etcd_client_port: Option<u16>,
    pub etcd_peer_port: Option<u16>,
    pub etcd_metrics_port: Option<u16>,
    pub etcd_stop_with_agent: bool,
    pub bootstrap: bool,
    pub insecure: bool,
    pub join: Option<JoinConfig>,
    pub run_as: Option<String>,
    pub secrets_dir: Option<PathBuf>,
}

impl AgentConfig {
    pub fn resolve(file: ConfigFile, o: Overrides) -> Result<Self, ConfigError> {
        let name = o.name.or(file.name).ok_or(ConfigError::MissingName)?;
        if let Some(p) = dns1123_problem(&name) {
            return Err(ConfigError::BadName(p));
        }
        let lease_ttl = o
            .lease_ttl_secs
            .map(Duration::from_secs)
            .or(file.lease_ttl.map(HumanDuration::as_duration))
            .unwrap_or(Duration::from_secs(5));
        if lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::BadTtl);
        }
        let gogc = file.etcd.gogc.unwrap_or(ETCD_GOGC);
        if !(25..=10_000).contains(&gogc) {
            return Err(ConfigError::BadGogc(gogc));
        }
        if let Some(mib) = file.etcd.memory_limit_mib {
            if mib != 0 && !ETCD_MEMORY_LIMIT_MIB.contains(&mib) {
                return Err(ConfigError::BadMemoryLimit(mib));
            }
        }
        let port = o.port.or(file.port).unwrap_or(DEFAULT_AGENT_PORT);
        let listen = o.listen.or(file.listen).unwrap_or_else(|| "0.0.0.0".into());
        let advertise = o.advertise.or(file.advertise).or_else(|| {
            let unspecified = listen == "0.0.0.0" || listen == "::";
            (!unspecified).then(|| format!("{listen}:{port}"))
        });
        let (endpoints, endpoints_given) = match o.endpoints {
            Some(e) if !e.is_empty() => (e, true),
            _ if !file.endpoints.is_empty() => (file.endpoints, true),
            _ => (
                vec![crate::store::client::DEFAULT_ENDPOINT.to_string()],
                false,
            ),
        };
        let http = file.http.resolve()?;
        Ok(AgentConfig {
            http,
            run_as: o.run_as.or(file.run_as).filter(|u| !u.is_empty()),
            secrets_dir: o.secrets_dir.or(file.secrets_dir).unwrap_or_else(|| {
                PathBuf::from(crate::agent::jobs::env_files::DEFAULT_SECRETS_DIR)
            }),
            state_dir: o
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/rift")),
            name,
            endpoints,
            endpoints_given,
            insecure: o.insecure || file.insecure.unwrap_or(false),
            join: o.join,
            scrape_token_file: file.scrape_token_file,
            port,
            listen,
            advertise,
            lease_ttl,
            node_lease_ttl: o
                .node_lease_ttl_secs
                .map(Duration::from_secs)
                .or(file.node_lease_ttl.map(HumanDuration::as_duration))
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_secs(1)),
            controllers: o.controllers || file.controllers.unwrap_or(false),
            addresses: if o.addresses.is_empty() {
                file.addresses
            } else {
                o.addresses
            },
            provider: file.provider.unwrap_or_default(),
            labels: {
                let mut labels = file.labels;
                labels.extend(o.labels);
                labels
            },
            roles: file.roles,
            nat_blocked: file.nat_blocked,
            etcd: EtcdMemberConfig {
                enabled: file.etcd.enabled.unwrap_or(true) && !file.nat_blocked,
                binary: o
                    .etcd_binary
                    .or(file.etcd.binary)
                    .unwrap_or_else(|| PathBuf::from("etcd")),
                client_port: o.etcd_client_port.or(file.etcd.client_port).unwrap_or(2379),
                peer_port: o.etcd_peer_port.or(file.etcd.peer_port).unwrap_or(2380),
                metrics_port: o.etcd_metrics_port.or(file.etcd.metrics_port),
                stop_with_agent: o.etcd_stop_with_agent
                    || file.etcd.stop_with_agent.unwrap_or(false),
                extra_args: file.etcd.extra_args,
                gogc,
                memory_limit_mib: match file.etcd.memory_limit_mib {
                    Some(0) => None,
                    Some(mib) => Some(mib),
                    None => default_etcd_memory_limit_mib(),
                },
                bind_addresses: file.etcd.bind_addresses,
                bootstrap: o.bootstrap,
            },
            gpus: if o.gpus.is_empty() { file.gpus } else { o.gpus },
            thresholds: file.thresholds,
            reschedule_margin: o
                .reschedule_margin_secs
                .map(Duration::from_secs)
                .or(file.reschedule_margin.map(HumanDuration::as_duration))
                .unwrap_or(Duration::from_secs(10)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: ConfigFile = serde_norway::from_str(
            "name: from-file\nport: 9000\nleaseTtl: 3s\ncontrollers: true\n",
        )
        .unwrap();
        let c = AgentConfig::resolve(
            file,
            Overrides {
                name: Some("from-flag".into()),
                listen: Some("127.0.0.1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.port, 9000);
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert!(c.controllers);
        assert_eq!(c.advertise.as_deref(), Some("127.0.0.1:9000"));
    }

    #[test]
    fn the_etcd_member_gets_gogc_400_and_a_memory_limit_unless_configured() {
        let resolve = |yaml: &str| {
            let file: ConfigFile = serde_norway::from_str(yaml).unwrap();
            AgentConfig::resolve(file, Overrides::default())
                .unwrap()
                .etcd
        };
        let defaults = resolve("name: a\n");
        assert_eq!(defaults.gogc, ETCD_GOGC);
        assert_eq!(defaults.memory_limit_mib, default_etcd_memory_limit_mib());
        assert!(defaults.memory_limit_mib.is_some_and(|m| m > 0));
        let set = resolve("name: a\netcd:\n  gogc: 100\n  memoryLimitMib: 0\n");
        assert_eq!((set.gogc, set.memory_limit_mib), (100, None));
        for bad in [0, 24, 10_001] {
            let file: ConfigFile =
                serde_norway::from_str(&format!("name: a\netcd:\n  gogc: {bad}\n")).unwrap();
            let err = AgentConfig::resolve(file, Overrides::default()).unwrap_err();
            assert!(matches!(err, ConfigError::BadGogc(g) if g == bad), "{err}");
        }
        for bad in [1, 127, (1 << 30) + 1, u64::MAX] {
            let file: ConfigFile =
                serde_norway::from_str(&format!("name: a\netcd:\n  memoryLimitMib: {bad}\n"))
                    .unwrap();
            let err = AgentConfig::resolve(file, Overrides::default()).unwrap_err();
            assert!(
                matches!(err, ConfigError::BadMemoryLimit(m) if m == bad),
                "{err}"
            );
        }
        let set = resolve("name: a\netcd:\n  memoryLimitMib: 128\n");
        assert_eq!(set.memory_limit_mib, Some(128));
    }

    #[test]
    fn a_name_is_required_and_must_be_valid() {
        let err = AgentConfig::resolve(ConfigFile::default(), Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingName));
        let bad = Overrides {
            name: Some("Bad_Name".into()),
            ..Default::default()
        };
        assert!(matches!(
            AgentConfig::resolve(ConfigFile::default(), bad),
            Err(ConfigError::BadName(_))
        ));
    }

    #[test]
    fn unknown_config_fields_are_rejected() {
        assert!(serde_norway::from_str::<ConfigFile>("nmae: x\n").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node.example.yaml");
        let file = ConfigFile::load(&path).unwrap();
        let c = AgentConfig::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.name, "gh200-a");
        assert_eq!(c.endpoints.len(), 3);
        assert_eq!(c.node_lease_ttl, Duration::from_secs(5));
        assert!(c.controllers);
        assert_eq!(c.node_spec().addresses, ["100.64.0.20", "203.0.113.20"]);
    }
}
