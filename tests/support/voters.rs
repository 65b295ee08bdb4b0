//! Clusters whose etcd members are run by rift agents, one "machine" per loopback address
//! (`127.0.0.1`, `.2`, ...), for the voter tests and the voter benchmark.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use serde_json::Value;

use super::agent::{eventually, TestAgent};
use super::cli::{rift, rift_stdin};
use super::proc::free_port;

/// An agent that may host an etcd member, with the URLs that member would use.
pub struct VoterNode {
    pub agent: TestAgent,
    pub ip: String,
    pub client_url: String,
}

impl VoterNode {
    /// `rift agent --controllers` on `ip` offering an etcd member on free ports; with
    /// `bootstrap` it creates a new cluster (and `endpoints` should be its own client URL).
    pub fn start(name: &str, ip: &str, endpoints: Option<&str>, bootstrap: bool) -> VoterNode {
        let extra: &[&str] = if bootstrap { &["--bootstrap"] } else { &[] };
        Self::start_with(name, ip, endpoints, extra)
    }

    /// As [`Self::start`], with `extra` agent flags.
    pub fn start_with(name: &str, ip: &str, endpoints: Option<&str>, extra: &[&str]) -> VoterNode {
        let client = free_port();
        let peer = std::iter::repeat_with(free_port)
            .find(|p| *p != client)
            .unwrap();
        let client_url = format!("https://{ip}:{client}");
        let endpoints = endpoints.unwrap_or(&client_url).to_string();
        let (client, peer) = (client.to_string(), peer.to_string());
        let mut args = vec![
            "--controllers",
            "--lease-ttl",
            "2",
            "--address",
            ip,
            "--etcd-client-port",
            &client,
            "--etcd-peer-port",
            &peer,
        ];
        args.extend_from_slice(extra);
        let agent = TestAgent::start_on(ip, name, &endpoints, &args);
        // Its member belongs to the same cluster: the same credentials reach it.
        if let Some(t) = super::trust::lookup(&endpoints) {
            super::trust::register(std::slice::from_ref(&client_url), &t);
        }
        VoterNode {
            agent,
            ip: ip.into(),
            client_url,
        }
    }

    /// The pid of its etcd member, from the record the agent keeps.
    pub fn etcd_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.agent.state.join("etcd/member.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }

    pub fn has_etcd_data(&self) -> bool {
        self.agent.state.join("etcd/data/member").is_dir()
    }
}

impl Drop for VoterNode {
    fn drop(&mut self) {
        super::trust::unregister(std::slice::from_ref(&self.client_url));
    }
}

/// Client options for `urls`: short timeouts, and root's certificate for a TLS test cluster.
fn options(urls: &[String]) -> Option<ConnectOptions> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(3));
    match super::trust::lookup(&urls.join(",")) {
        Some(t) => Some(options.with_tls(rift::store::access::etcd_tls(&t.admin()?))),
        None => Some(options),
    }
}

/// A client to exactly one member (no balancing), short timeouts.
pub async fn member_client(url: &str) -> Option<Client> {
    let options = options(&[url.to_string()])?;
    Client::connect([url], Some(options)).await.ok()
}

/// True when the member at `url` answers a status request.
pub async fn member_answers(url: &str) -> bool {
    match member_client(url).await {
        Some(mut c) => c.status().await.is_ok(),
        None => false,
    }
}

/// `key`'s value as `url`'s member has it locally (a serializable read).
pub async fn local_read(url: &str, key: &str) -> Option<String> {
    let mut c = member_client(url).await?;
    let resp = c
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .ok()?;
    resp.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// Applies the VoterSet `default` with `voters`.
pub fn apply_voters(endpoints: &str, voters: &[&str]) {
    let manifest = format!(
        "apiVersion: rift/v1\nkind: VoterSet\nmetadata: {{name: default}}\nspec: {{voters: [{}]}}\n",
        voters.join(", ")
    );
    let run = rift_stdin(endpoints, &["apply", "-f", "-"], &manifest);
    assert!(run.ok, "apply VoterSet: {}", run.stderr);
}

/// The VoterSet as JSON (with its status), if it exists.
pub fn voter_set(endpoints: &str) -> Option<Value> {
    let run = rift(endpoints, &["get", "voterset", "default", "-o", "json"]);
    run.ok
        .then(|| serde_json::from_str(&run.stdout).ok())
        .flatten()
}

/// Waits until the VoterSet is Converged with exactly `names` as healthy voting members.
pub async fn wait_converged(endpoints: &str, names: &[&str], within: Duration) -> Value {
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(within, &format!("voters converge to {want:?}"), || {
        let want = want.clone();
        async move {
            let vs = voter_set(endpoints)?;
            let status = &vs["status"];
            let members = status["members"].as_array()?;
            let mut got: Vec<String> = members
                .iter()
                .filter(|m| m["learner"] != true && m["healthy"] == true)
                .map(|m| m["name"].as_str().unwrap_or_default().to_string())
                .collect();
            got.sort();
            (status["phase"] == "Converged" && members.len() == want.len() && got == want)
                .then_some(vs)
        }
    })
    .await
}

/// Waits until `node` is Ready and its agent offers an etcd member.
pub async fn wait_node_offers_etcd(endpoints: &str, node: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("node {node} is Ready and offers an etcd member"),
        || async move {
            let run = rift(endpoints, &["get", "node", node, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
            let ready = v["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let offers = v["status"]["etcd"]["peerUrls"].as_array()?.len() == 1;
            (ready && offers).then_some(())
        },
    )
    .await;
}

/// Watches the cluster from outside, as a client would: a linearizable read every 200 ms.
/// Quorum counts as lost when no read succeeds for longer than [`QUORUM_LOSS_AFTER`] (a
/// leader election, e.g. after the leader's own member is removed, is shorter).
pub struct QuorumObserver {
    stop: Arc<AtomicBool>,
    pub observations: Arc<AtomicUsize>,
    pub violations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// How long without a successful linearizable read counts as quorum lost.
pub const QUORUM_LOSS_AFTER: Duration = Duration::from_secs(5);

impl QuorumObserver {
    pub fn start(endpoints: Vec<String>) -> QuorumObserver {
        let stop = Arc::new(AtomicBool::new(false));
        let observations = Arc::new(AtomicUsize::new(0));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (s, o, v) = (stop.clone(), observations.clone(), violations.clone());
        let task = tokio::spawn(async move {
            let Some(mut client) = member_client_any(&endpoints).await else {
                v.lock().unwrap().push("cannot connect".into());
                return;
            };
            let mut last_ok = std::time::Instant::now();
            while !s.load(Ordering::Relaxed) {
                let read =
                    tokio::time::timeout(Duration::from_secs(2), client.get("/quorum-probe", None));
                if matches!(read.await, Ok(Ok(_))) {
                    last_ok = std::time::Instant::now();
                    o.fetch_add(1, Ordering::Relaxed);
                } else if last_ok.elapsed() > QUORUM_LOSS_AFTER {
                    v.lock()
                        .unwrap()
                        .push(format!("no linearizable read for {:?}", last_ok.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        QuorumObserver {
            stop,
            observations,
            violations,
            task,
        }
    }

    /// Stops observing; returns (successful observations, violations).
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let v = self.violations.lock().unwrap().clone();
        (self.observations.load(Ordering::Relaxed), v)
    }
}

/// One voter test at a time in a process: each runs up to four etcd members and four agents
/// with controllers, which is all a 2-core machine should carry.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn member_client_any(endpoints: &[String]) -> Option<Client> {
    Client::connect(endpoints, Some(options(endpoints)?))
        .await
        .ok()
}

/// Joins b (127.0.0.2) and c (127.0.0.3) through `a` and grows the VoterSet to `[a, b, c]`,
/// waiting until it has converged.
pub async fn grow_to_three(a: &VoterNode, within: Duration) -> (VoterNode, VoterNode) {
    let b = VoterNode::start("b", "127.0.0.2", Some(&a.client_url), false);
    let c = VoterNode::start("c", "127.0.0.3", Some(&a.client_url), false);
    wait_node_offers_etcd(&a.client_url, "b").await;
    wait_node_offers_etcd(&a.client_url, "c").await;
    apply_voters(&a.client_url, &["a", "b", "c"]);
    wait_converged(&a.client_url, &["a", "b", "c"], within).await;
    (b, c)
}

/// Starts `a` (bootstrapping on 127.0.0.1) and waits until its one-member cluster answers and
/// the VoterSet names it.
pub async fn bootstrap_one(name: &str) -> VoterNode {
    let a = VoterNode::start(name, "127.0.0.1", None, true);
    let url = a.client_url.clone();
    eventually(
        Duration::from_secs(30),
        "the bootstrapped member answers",
        || {
            let url = url.clone();
            async move { member_answers(&url).await.then_some(()) }
        },
    )
    .await;
    apply_voters(&url, &[name]);
    wait_converged(&url, &[name], Duration::from_secs(30)).await;
    a
}
