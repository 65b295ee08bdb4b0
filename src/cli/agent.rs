//! `rift agent`: the per-node process.

use std::path::PathBuf;

use crate::agent::config::{ConfigFile, Overrides};
use crate::agent::{self, AgentConfig};

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// This node's name (DNS-1123).
    #[arg(long, env = "RIFT_NAME")]
    pub name: Option<String>,
    /// YAML node config file; flags and RIFT_* variables override it. (RIFT_CONFIG is the
    /// operator's credentials; the node config's variable is RIFT_NODE_CONFIG.)
    #[arg(long, env = "RIFT_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where job state and logs, and the local etcd member's data, live (default
    /// /var/lib/rift).
    #[arg(long, env = "RIFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// HTTP port (default 8770).
    #[arg(long, env = "RIFT_PORT")]
    pub port: Option<u16>,
    /// Address to listen on (default 0.0.0.0).
    #[arg(long, env = "RIFT_LISTEN")]
    pub listen: Option<String>,
    /// host:port peers use to reach this agent (default: listen address and port when specific).
    #[arg(long, env = "RIFT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Lease TTL in seconds: how fast a dead leader is replaced (default 5).
    #[arg(long, env = "RIFT_LEASE_TTL")]
    pub lease_ttl: Option<u64>,
    /// TTL in seconds of the node's liveness lease: how fast a dead node shows NotReady
    /// (default 5).
    #[arg(long, env = "RIFT_NODE_LEASE_TTL")]
    pub node_lease_ttl: Option<u64>,
    /// Declare GPUs NVML cannot see, or for tests: MODEL[xCOUNT][:MEMORY_GB], e.g. `H100x8`,
    /// `"RTX 4090x2:24"`. Repeatable; replaces `gpus:` from the config file.
    #[arg(long = "gpus", value_name = "MODELxN", value_parser = crate::agent::resources::parse_gpu_declaration)]
    pub gpus: Vec<crate::api::node::GpuDeclaration>,
    /// Leader only: seconds beyond a job's lostAfter before it is moved off a lost node
    /// (default 10).
    #[arg(long, env = "RIFT_RESCHEDULE_MARGIN")]
    pub reschedule_margin: Option<u64>,
    /// Campaign for leadership and run the controllers while leading.
    #[arg(long, env = "RIFT_CONTROLLERS")]
    pub controllers: bool,
    /// This node's address, in the order peers should try them (e.g. tailscale first, then
    /// public). Repeatable; replaces `addresses:` from the config file.
    #[arg(long = "address", value_name = "HOST")]
    pub addresses: Vec<String>,
    /// A label for the Node when the agent registers it, KEY=VALUE. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Join a cluster through a controller's agent, `https://HOST:8770`, with --token (once:
    /// the node keeps its certificates in <state>/pki/). With --insecure and no token, the old
    /// form: etcd endpoints of a plaintext cluster (comma-separated), like --endpoints.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub join: Vec<String>,
    /// The join token `rift token create` printed (RIFT1...).
    #[arg(long, env = "RIFT_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Start a new one-member etcd cluster on this machine when there is no member data and no
    /// cluster answers (what `rift up` does). Without it an agent never creates a cluster.
    #[arg(long)]
    pub bootstrap: bool,
    /// The etcd binary for the local member (default: `etcd` on PATH).
    #[arg(long, env = "RIFT_ETCD_BINARY")]
    pub etcd_binary: Option<PathBuf>,
    /// Client port of the local etcd member (default 2379).
    #[arg(long)]
    pub etcd_client_port: Option<u16>,
    /// Peer port of the local etcd member (default 2380).
    #[arg(long)]
    pub etcd_peer_port: Option<u16>,
    /// A loopback-only port for the local member's /metrics and /health (default: none).
    #[arg(long)]
    pub etcd_metrics_port: Option<u16>,
    /// Run jobs as this user (a name or uid) instead of the agent's own; `runAs` in the config.
    #[arg(long, env = "RIFT_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Where Jobs' `envFrom` files are (default /etc/rift/secrets); `secretsDir` in the config.
    #[arg(long, env = "RIFT_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
}

/// `KEY=VALUE` for `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{s}`: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(
    args: AgentArgs,
    endpoints: Option<Vec<String>>,
    insecure: bool,
) -> Result<(), CliError> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let insecure = insecure || file.insecure.unwrap_or(false);
    let join_urls = if args.join.is_empty() {
        file.join.iter().cloned().collect()
    } else {
        args.join.clone()
    };
    let (endpoints, join) = match (join_urls.as_slice(), &args.token) {
        ([], None) => (endpoints, None),
        ([], Some(_)) => {
            return Err(CliError::Usage(
                "--token needs --join https://CONTROLLER:8770 (a controller's agent)".into(),
            ))
        }
        ([url], Some(token)) => (
            endpoints,
            Some(crate::agent::config::JoinConfig {
                url: url.clone(),
                token: token.clone(),
            }),
        ),
        (_, Some(_)) => {
            return Err(CliError::Usage(
                "--join takes one controller URL when joining with --token".into(),
            ))
        }
        (urls, None) if insecure => {
            let mut e = endpoints.unwrap_or_default();
            e.extend(urls.iter().cloned());
            (Some(e), None)
        }
        (_, None) => {
            return Err(CliError::Usage(
                "--join needs --token (from `rift token create` on the operator's machine); \
                 joining a plaintext cluster through its etcd endpoints needs --insecure"
                    .into(),
            ))
        }
    };
    let config = AgentConfig::resolve(
        file,
        Overrides {
            name: args.name,
            endpoints,
            state_dir: args.state_dir,
            port: args.port,
            listen: args.listen,
            advertise: args.advertise,
            lease_ttl_secs: args.lease_ttl,
            node_lease_ttl_secs: args.node_lease_ttl,
            controllers: args.controllers,
            gpus: args.gpus,
            reschedule_margin_secs: args.reschedule_margin,
            addresses: args.addresses,
            labels: args.labels,
            etcd_binary: args.etcd_binary,
            etcd_client_port: args.etcd_client_port,
            etcd_peer_port: args.etcd_peer_port,
            etcd_metrics_port: args.etcd_metrics_port,
            etcd_stop_with_agent: false,
            bootstrap: args.bootstrap,
            insecure,
            join,
            run_as: args.run_as,
            secrets_dir: args.secrets_dir,
        },
    )?;
    let shutdown = crate::tasks::shutdown_on_signals();
    Ok(agent::run(config, shutdown).await?)
}
