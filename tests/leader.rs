//! Leader election with real `rift agent --controllers` processes on real etcd.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::agent::spawn_candidate;
use support::cli::KillOnDrop;
use support::etcd::EtcdCluster;
use support::http;
use support::proc::free_port;

const HEARTBEAT: &str = "/rift/v1/controllers/heartbeat";

struct Agents {
    names: Vec<String>,
    ports: Vec<u16>,
    procs: Vec<Option<KillOnDrop>>,
}

impl Agents {
    fn start(endpoints: &str, n: usize, ttl_secs: u64) -> Agents {
        let names: Vec<String> = (0..n).map(|i| format!("agent-{i}")).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let procs = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let child = spawn_candidate(name, endpoints, *port, ttl_secs);
                Some(KillOnDrop(child))
            })
            .collect();
        Agents {
            names,
            ports,
            procs,
        }
    }

    /// The roles the live agents report about themselves (`leader`/`follower`); agents that do
    /// not answer are left out.
    fn self_reported_leaders(&self) -> Vec<String> {
        self.names
            .iter()
            .zip(&self.ports)
            .zip(&self.procs)
            .filter(|(_, p)| p.is_some())
            .filter_map(|((name, port), _)| {
                let v = http::get_json(
                    &format!("127.0.0.1:{port}"),
                    "/status",
                    Duration::from_millis(500),
                )?;
                (v["role"] == "leader").then(|| name.clone())
            })
            .collect()
    }

    fn pid(&self, name: &str) -> Pid {
        let i = self.names.iter().position(|n| n == name).unwrap();
        Pid::from_raw(self.procs[i].as_ref().unwrap().0.id() as i32)
    }

    fn signal(&mut self, name: &str, sig: Signal) {
        kill(self.pid(name), sig).unwrap();
        if matches!(sig, Signal::SIGKILL | Signal::SIGTERM) {
            let i = self.names.iter().position(|n| n == name).unwrap();
            let mut p = self.procs[i].take().unwrap();
            let _ = p.0.wait();
        }
    }
}

/// `(leader node, create revision of the leader key)`, if any.
async fn leader(client: &mut etcd_client::Client) -> Option<(String, i64)> {
    let resp = client.get("/rift/v1/leader", None).await.ok()?;
    let kv = resp.kvs().first()?;
    let v: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
    Some((v["node"].as_str()?.to_string(), kv.create_revision()))
}

async fn wait_for_leader_other_than(
    client: &mut etcd_client::Client,
    old: Option<&str>,
    within: Duration,
) -> (String, i64, Duration) {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some((node, rev)) = leader(client).await {
            if Some(node.as_str()) != old {
                return (node, rev, start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no new leader (other than {old:?}) within {within:?}");
}

#[tokio::test]
async fn exactly_one_leader_and_fast_failover_on_sigkill_and_sigterm() {
    let cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    let ttl = 2;
    let mut agents = Agents::start(&cluster.endpoints_csv(), 3, ttl);
    let (first, _, _) =
        wait_for_leader_other_than(&mut client, None, Duration::from_secs(20)).await;

    agents.signal(&first, Signal::SIGKILL);
    let (second, _, took) =
        wait_for_leader_other_than(&mut client, Some(&first), Duration::from_secs(ttl + 5)).await;
    assert!(
        took <= Duration::from_secs(ttl + 1),
        "SIGKILL failover took {took:?}"
    );

    agents.signal(&second, Signal::SIGTERM);
    let (third, _, took) =
        wait_for_leader_other_than(&mut client, Some(&second), Duration::from_secs(ttl + 5)).await;
    assert!(
        took <= Duration::from_secs(1),
        "SIGTERM failover took {took:?}"
    );
    assert_ne!(third, first);
}

#[tokio::test]
async fn a_paused_leader_is_fenced_out_and_steps_down() {
    let cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    let ttl = 2;
    let mut agents = Agents::start(&cluster.endpoints_csv(), 2, ttl);
    let (old, _, _) = wait_for_leader_other_than(&mut client, None, Duration::from_secs(20)).await;
    // Its heartbeat writes land while it leads.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beat = client.get(HEARTBEAT, None).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(beat.kvs()[0].value()).unwrap();
    assert_eq!(v["node"], old.as_str());

    agents.signal(&old, Signal::SIGSTOP);
    let (new, takeover_rev, _) =
        wait_for_leader_other_than(&mut client, Some(&old), Duration::from_secs(ttl + 10)).await;
    agents.signal(&old, Signal::SIGCONT);
    // Give the old leader time to try writing with its stale belief, and to step down.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every heartbeat written after the takeover comes from the new leader.
    let opts = etcd_client::WatchOptions::new().with_start_revision(takeover_rev);
    let mut stream = client.watch(HEARTBEAT, Some(opts)).await.unwrap();
    let now = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut writers = Vec::new();
    'outer: loop {
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("watch answers")
            .unwrap()
            .unwrap();
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
            writers.push(v["node"].as_str().unwrap().to_string());
            if kv.mod_revision() >= now {
                break 'outer;
            }
        }
        if writers.len() > 50 {
            break;
        }
    }
    assert!(!writers.is_empty());
    assert!(
        writers.iter().all(|w| *w == new),
        "a write of the deposed leader landed after the takeover: {writers:?}"
    );
    assert_eq!(
        leader(&mut client).await.unwrap().0,
        new,
        "no flapping back"
    );
}

#[tokio::test]
async fn leader_survives_an_etcd_member_restart_without_flapping() {
    let mut cluster = EtcdCluster::three();
    let mut client = cluster.client_at(&[cluster.client_url(1)]).await;
    let _agents = Agents::start(&cluster.endpoints_csv(), 3, 3);
    let (node, rev, _) =
        wait_for_leader_other_than(&mut client, None, Duration::from_secs(20)).await;
    for i in 0..3 {
        cluster.stop(i);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.start(i);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut client = cluster.client_at(&[cluster.client_url(1)]).await;
    assert_eq!(
        leader(&mut client).await,
        Some((node, rev)),
        "same leader, same term"
    );
}

#[tokio::test]
async fn at_every_observation_at_most_one_agent_believes_it_leads() {
    let cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    let mut agents = Agents::start(&cluster.endpoints_csv(), 3, 2);
    let (first, _, _) =
        wait_for_leader_other_than(&mut client, None, Duration::from_secs(20)).await;
    let observe = |agents: &Agents, rounds: usize| {
        let mut seen_one = 0;
        for _ in 0..rounds {
            let leaders = agents.self_reported_leaders();
            assert!(
                leaders.len() <= 1,
                "several agents believe they lead: {leaders:?}"
            );
            seen_one += leaders.len();
            std::thread::sleep(Duration::from_millis(50));
        }
        seen_one
    };
    assert!(observe(&agents, 20) > 0, "some agent reports leading");
    agents.signal(&first, Signal::SIGKILL);
    // Through the failover and after it.
    assert!(observe(&agents, 60) > 0, "a new leader reports leading");
}

#[tokio::test]
async fn a_leader_cut_off_from_etcd_stops_claiming_leadership_within_its_ttl() {
    let mut cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    let ttl = 2;
    let agents = Agents::start(&cluster.endpoints_csv(), 1, ttl);
    wait_for_leader_other_than(&mut client, None, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while agents.self_reported_leaders().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the agent never reported leading"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(0);
    let cut_at = Instant::now();
    while !agents.self_reported_leaders().is_empty() {
        assert!(
            cut_at.elapsed() < Duration::from_secs(ttl + 1),
            "still claims leadership {:?} after losing etcd",
            cut_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn status_keeps_the_old_orchestrators_fields() {
    let cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    let agents = Agents::start(&cluster.endpoints_csv(), 2, 2);
    let (leader_node, _, _) =
        wait_for_leader_other_than(&mut client, None, Duration::from_secs(20)).await;
    client
        .put("/rift/v1/votersets/default", r#"{"apiVersion":"rift/v1","kind":"VoterSet","metadata":{"name":"default"},"spec":{"voters":["agent-0","gone"]}}"#, None)
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", agents.ports[0]);
    // Each agent refreshes what it knows of the leader and its peers once a second.
    let v =
        support::agent::eventually(Duration::from_secs(10), "peers, voters, leader", || async {
            http::get_json(&addr, "/status", Duration::from_secs(1)).filter(|v| {
                v["alive_peers"] == 1
                    && v["voters_alive"] == 1
                    && v["leader_id"] == leader_node.as_str()
            })
        })
        .await;
    assert_eq!(v["node_id"], "agent-0");
    assert_eq!(v["leader_id"], leader_node.as_str());
    assert!(v["role"] == "leader" || v["role"] == "follower");
    assert_eq!(v["alive_peer_names"], serde_json::json!(["agent-1"]));
    assert_eq!(v["voters_alive_names"], serde_json::json!(["agent-0"]));
}
