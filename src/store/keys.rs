//! The key layout in etcd (see docs/architecture.md, "Keys in etcd"). One writer role per key.

/// Everything rift stores lives under this prefix.
pub const ROOT: &str = "/rift/v1/";

/// `/rift/v1/<plural>/`: spec + metadata of every object of a kind.
pub fn objects_prefix(plural: &str) -> String {
    format!("{ROOT}{plural}/")
}

/// `/rift/v1/<plural>/<name>`
pub fn object(plural: &str, name: &str) -> String {
    format!("{ROOT}{plural}/{name}")
}

/// `/rift/v1/status/<plural>/`
pub fn status_prefix(plural: &str) -> String {
    format!("{ROOT}status/{plural}/")
}

/// `/rift/v1/status/<plural>/<name>`: written only by the owning controller.
pub fn status(plural: &str, name: &str) -> String {
    format!("{ROOT}status/{plural}/{name}")
}

/// `/rift/v1/placements/<job>`: the scheduler's decision for one job.
pub fn placement(job: &str) -> String {
    format!("{ROOT}placements/{job}")
}

pub const PLACEMENTS_PREFIX: &str = "/rift/v1/placements/";

/// `/rift/v1/bindings/<node>/`: what one node's agent must run.
pub fn bindings_prefix(node: &str) -> String {
    format!("{ROOT}bindings/{node}/")
}

pub fn binding(node: &str, job: &str) -> String {
    format!("{ROOT}bindings/{node}/{job}")
}

/// `/rift/v1/agents/<node>/`: everything a node's agent writes.
pub fn agent_prefix(node: &str) -> String {
    format!("{ROOT}agents/{node}/")
}

pub const AGENTS_PREFIX: &str = "/rift/v1/agents/";

pub fn agent_alive(node: &str) -> String {
    format!("{ROOT}agents/{node}/alive")
}

/// `/rift/v1/agents/<node>/node`: the Node the agent wants created (on its lease).
pub fn agent_node(node: &str) -> String {
    format!("{ROOT}agents/{node}/node")
}

pub fn agent_status(node: &str) -> String {
    format!("{ROOT}agents/{node}/status")
}

/// `/rift/v1/agents/<node>/etcd`: the node's local etcd member (URLs and state).
pub fn agent_etcd(node: &str) -> String {
    format!("{ROOT}agents/{node}/etcd")
}

pub fn agent_job(node: &str, job: &str) -> String {
    format!("{ROOT}agents/{node}/jobs/{job}")
}

/// `/rift/v1/agents/<node>/tunnels/<tunnel>`: a tunnel's status, written by the agent of the
/// node that runs it.
pub fn agent_tunnel(node: &str, tunnel: &str) -> String {
    format!("{ROOT}agents/{node}/tunnels/{tunnel}")
}

/// `/rift/v1/agents/<node>/outputs/`: the node's uploaded job outputs, each waiting for the
/// leader to record it as an Artifact.
pub fn agent_outputs_prefix(node: &str) -> String {
    format!("{ROOT}agents/{node}/outputs/")
}

/// `/rift/v1/agents/<node>/outputs/<job>.<64 hex>`: one uploaded output of one job.
pub fn agent_output(node: &str, job: &str, hex: &str) -> String {
    format!("{ROOT}agents/{node}/outputs/{job}.{hex}")
}

/// The node of an `agent_output` key, when `key` is one.
pub fn parse_agent_output(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(AGENTS_PREFIX)?;
    let (node, rest) = rest.split_once('/')?;
    let id = rest.strip_prefix("outputs/")?;
    (!node.is_empty() && !id.is_empty() && !id.contains('/')).then_some(node)
}

pub fn agent_event(node: &str, id: &str) -> String {
    format!("{ROOT}agents/{node}/events/{id}")
}

/// `/rift/v1/events/<id>`: events written by controllers.
pub fn event(id: &str) -> String {
    format!("{ROOT}events/{id}")
}

/// The leader record, attached to the leader's lease.
pub const LEADER: &str = "/rift/v1/leader";

/// The cluster's trust record (CA key, token HMAC key). Outside [`ROOT`] on purpose: node roles
/// read `/rift/v1/`, so only `root` can read this.
pub const TRUST: &str = "/rift/trust";

/// Join tokens (only an HMAC of each secret), outside [`ROOT`] for the same reason.
pub const TOKENS_PREFIX: &str = "/rift/tokens/";

/// `/rift/tokens/<id>`
pub fn token(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

/// The end of a prefix range: the key just past every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The last path segment: the object name of `/rift/v1/jobs/train-1`.
pub fn name_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_design() {
        assert_eq!(object("jobs", "a"), "/rift/v1/jobs/a");
        assert_eq!(status("pools", "p"), "/rift/v1/status/pools/p");
        assert_eq!(binding("n1", "j"), "/rift/v1/bindings/n1/j");
        assert_eq!(agent_job("n1", "j"), "/rift/v1/agents/n1/jobs/j");
        assert_eq!(name_of("/rift/v1/jobs/train-1"), "train-1");
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
