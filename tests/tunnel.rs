//! Tunnels with real parts: real etcd, real agents, a real OpenSSH server on loopback as the
//! relay (tests/support/sshd.rs), the real `ssh` client started by the agent. Distinct "hosts"
//! are distinct 127.0.0.x addresses.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::Client;
use rift::api::node::NodeRole;
use rift::api::tunnel::{PortForward, TunnelStatus};
use rift::api::{JobPhase, JobSpec, NodeSpec, Object, TunnelSpec};
use rift::store::Store;
use support::agent::{eventually, TestAgent};
use support::cli::{rift, rift_command};
use support::etcd::EtcdCluster;
use support::jobs::bind;
use support::proc::free_port;
use support::sshd::{current_user, ssh_clients_mentioning, ClientKey, Sshd};

/// An address on which nothing listens: connecting is refused at once.
const REFUSING_HOST: &str = "127.0.0.5";

/// An address that behaves like an unroutable host: connecting hangs until the caller's
/// timeout. A listener whose accept queue is full (backlog 0, filled and never accepted) drops
/// further SYNs, as a firewall or a dead route would; kept alive as long as the value is.
struct Blackhole {
    addr: String,
    _listener: tokio::net::TcpListener,
    _held: Vec<std::net::TcpStream>,
}

fn blackhole() -> Blackhole {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.7:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let held: Vec<std::net::TcpStream> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "the blackhole accepted a connection"
    );
    Blackhole {
        addr: addr.to_string(),
        _listener: listener,
        _held: held,
    }
}

async fn http(addr: &str, path: &str) -> Option<(u16, String)> {
    http_through(addr, addr, path).await
}

/// `GET path` sent to `addr` (a relay's forwarded port), for the agent listening at `agent`
/// (whose name and cluster credentials the TLS connection uses).
async fn http_through(addr: &str, agent: &str, path: &str) -> Option<(u16, String)> {
    let (addr, agent, path) = (addr.to_string(), agent.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        support::http::get_through(&addr, &agent, &path, Duration::from_secs(2))
    })
    .await
    .unwrap()
}

async fn create_node(store: &Store, name: &str, addresses: &[&str], relay: bool, port: u16) {
    let spec = NodeSpec {
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        roles: if relay { vec![NodeRole::Relay] } else { vec![] },
        nat_blocked: !relay,
        agent_port: port,
        ..NodeSpec::default()
    };
    store.create(&Object::new(name, spec)).await.unwrap();
}

/// Points the Node's `agentPort` at where its test agent really listens.
async fn set_agent_port(store: &Store, name: &str, port: u16) {
    let mut node = store.get::<NodeSpec>(name).await.unwrap().unwrap();
    node.spec.agent_port = port;
    store.update(&node).await.unwrap();
}

fn tunnel_spec(
    node: &str,
    relay: &str,
    key: &ClientKey,
    ssh_port: u16,
    ports: &[(u16, u16)],
) -> TunnelSpec {
    TunnelSpec {
        node: node.into(),
        relay: relay.into(),
        ports: ports
            .iter()
            .map(|&(remote_port, local_port)| PortForward {
                remote_port,
                local_port,
            })
            .collect(),
        ssh_user: current_user(),
        ssh_port,
        identity_file: key.path.display().to_string(),
        host_key: None,
        host_keys: BTreeMap::new(),
        switch_after_failures: 3,
    }
}

async fn tunnel_status(store: &Store, name: &str) -> Option<TunnelStatus> {
    store.get::<TunnelSpec>(name).await.ok()??.status
}

/// Waits until the tunnel reports connected through `relay`, and returns its status.
async fn wait_connected(store: &Store, name: &str, relay: &str, within: u64) -> TunnelStatus {
    eventually(
        Duration::from_secs(within),
        &format!("tunnel {name} connected through {relay}"),
        || async move {
            tunnel_status(store, name)
                .await
                .filter(|s| s.connected && s.relay.as_deref() == Some(relay))
        },
    )
    .await
}

/// Waits until the agent named `node` answers `/status` at `addr` (through the relay).
async fn wait_agent_through(addr: &str, agent: &TestAgent, within: u64) {
    let node = &agent.name;
    let agent = agent.addr();
    eventually(
        Duration::from_secs(within),
        &format!("agent {node} reachable at {addr}"),
        || async {
            let (code, body) = http_through(addr, &agent, "/status").await?;
            (code == 200 && body.contains(&format!("\"node_id\":\"{node}\""))).then_some(())
        },
    )
    .await;
}

async fn run_job_on(store: &Store, client: &mut Client, job: &str, node: &str, script: &str) {
    let spec = JobSpec::with_command(["sh", "-c", script]);
    store.create(&Object::new(job, spec)).await.unwrap();
    bind(client, job, node).await;
    eventually(Duration::from_secs(30), "job succeeded", || async move {
        let j = store.get::<JobSpec>(job).await.ok()??;
        (j.status?.phase == JobPhase::Succeeded).then_some(())
    })
    .await;
}

/// The one ssh client the agent runs for its tunnels (by its state directory).
async fn one_ssh(agent: &TestAgent) -> i32 {
    eventually(Duration::from_secs(20), "one ssh client", || async {
        match ssh_clients_mentioning(&agent.state).as_slice() {
            [pid] => Some(*pid),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn tunnel_comes_up_and_the_agent_is_reachable_through_the_relay_and_cleans_up() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let key = ClientKey::new();
    let ssh_port = free_port();
    let relay = Sshd::start("127.0.0.2", ssh_port, &key);
    create_node(&store, "relay-1", &["127.0.0.2"], true, 1).await;
    // The NAT node: its own addresses reach nothing, so only the relay can carry traffic.
    create_node(&store, "vast-1", &[REFUSING_HOST], false, 1).await;
    let unreachable = format!("{REFUSING_HOST}:{}", free_port());
    let mut agent = TestAgent::start("vast-1", &eps, &["--advertise", &unreachable]);
    set_agent_port(&store, "vast-1", agent.port).await;

    let remote = free_port();
    let mut spec = tunnel_spec("vast-1", "relay-1", &key, ssh_port, &[(remote, agent.port)]);
    spec.host_key = Some(relay.host_key.clone());
    store.create(&Object::new("vast-1", spec)).await.unwrap();

    let endpoint = format!("127.0.0.2:{remote}");
    let st = wait_connected(&store, "vast-1", "relay-1", 30).await;
    assert_eq!(st.endpoint.as_deref(), Some(endpoint.as_str()));
    assert!(st.since.is_some());
    wait_agent_through(&endpoint, &agent, 10).await;
    // The tunnel key is used where it is: no copy of it in the agent's state.
    let private = std::fs::read_to_string(&key.path).unwrap();
    let body = private.lines().nth(1).unwrap();
    assert_eq!(
        support::fs::files_containing(&agent.state, body),
        Vec::<std::path::PathBuf>::new()
    );

    // The Node advertises the relay endpoint, and `rift logs` reaches the agent through it.
    eventually(
        Duration::from_secs(15),
        "node endpoint via relay",
        || async {
            let n = store.get::<NodeSpec>("vast-1").await.ok()??;
            (n.status?.endpoint.as_deref() == Some(endpoint.as_str())).then_some(())
        },
    )
    .await;
    run_job_on(
        &store,
        &mut client,
        "hello",
        "vast-1",
        "echo through the relay",
    )
    .await;
    let r = rift(&eps, &["logs", "hello"]);
    assert!(r.ok, "{}\nagent log:\n{}", r.stderr, agent.log());
    assert_eq!(r.stdout, "through the relay\n");

    // People see it.
    let r = rift(&eps, &["get", "tunnels", "-o", "wide"]);
    assert!(r.ok, "{}", r.stderr);
    let row = r.stdout.lines().find(|l| l.starts_with("vast-1")).unwrap();
    for part in ["relay-1", "true", &endpoint] {
        assert!(row.contains(part), "`{part}` not in {row}");
    }
    let r = rift(&eps, &["describe", "tunnel", "vast-1"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("connected: true"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("endpoint: {endpoint}")),
        "{}",
        r.stdout
    );

    // The agent dies without a chance to clean up: its ssh dies with it, and the status
    // no longer claims a connection.
    let ssh = one_ssh(&agent).await;
    agent.kill();
    eventually(
        Duration::from_secs(5),
        "ssh gone with its agent",
        || async { (!support::agent::process_alive(ssh as u32)).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(15), "tunnel shown down", || async {
        let s = tunnel_status(&store, "vast-1").await?;
        (!s.connected && s.last_error.contains("no agent is running")).then_some(())
    })
    .await;

    // Back with the agent; then deleting the Tunnel stops ssh and removes its status.
    agent.restart();
    wait_connected(&store, "vast-1", "relay-1", 30).await;
    wait_agent_through(&endpoint, &agent, 10).await;
    let r = rift(&eps, &["delete", "tunnel", "vast-1"]);
    assert!(r.ok, "{}", r.stderr);
    eventually(
        Duration::from_secs(10),
        "ssh stopped after delete",
        || async {
            ssh_clients_mentioning(&agent.state)
                .is_empty()
                .then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(10), "status key removed", || {
        let mut c = client.clone();
        async move {
            let r = c
                .get("/rift/v1/agents/vast-1/tunnels/vast-1", None)
                .await
                .ok()?;
            r.kvs().is_empty().then_some(())
        }
    })
    .await;
    assert!(
        http_through(&endpoint, &agent.addr(), "/healthz")
            .await
            .is_none(),
        "the forward is gone"
    );
    drop(relay);
}

#[tokio::test]
async fn a_killed_ssh_comes_back_and_a_relay_down_for_10s_is_reconnected() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let key = ClientKey::new();
    let ssh_port = free_port();
    let mut relay = Sshd::start("127.0.0.2", ssh_port, &key);
    create_node(&store, "relay-1", &["127.0.0.2"], true, 1).await;
    let agent = TestAgent::start("vast-2", &eps, &[]);
    let remote = free_port();
    let mut spec = tunnel_spec("vast-2", "relay-1", &key, ssh_port, &[(remote, agent.port)]);
    spec.host_key = Some(relay.host_key.clone());
    store.create(&Object::new("t2", spec)).await.unwrap();
    let endpoint = format!("127.0.0.2:{remote}");
    wait_connected(&store, "t2", "relay-1", 30).await;
    wait_agent_through(&endpoint, &agent, 10).await;
    // Stay up long enough to count as a healthy run.
    tokio::time::sleep(Duration::from_secs(11)).await;

    // Kill ssh: back within 20 s.
    let ssh = one_ssh(&agent).await;
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ssh),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_agent_through(&endpoint, &agent, 20).await;
    let st = wait_connected(&store, "t2", "relay-1", 5).await;
    assert!(st.restarts >= 1, "{st:?}");
    assert!(killed.elapsed() < Duration::from_secs(20));
    assert_ne!(one_ssh(&agent).await, ssh, "a new ssh process");

    // The relay goes away for 10 s and comes back: the tunnel reconnects by itself.
    relay.stop();
    eventually(Duration::from_secs(15), "tunnel down", || async {
        let s = tunnel_status(&store, "t2").await?;
        (!s.connected && !s.last_error.is_empty()).then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    relay.start_again();
    // Worst case: an attempt just failed and the capped backoff (15 s) runs first.
    wait_connected(&store, "t2", "relay-1", 30).await;
    wait_agent_through(&endpoint, &agent, 10).await;
}

#[tokio::test]
async fn a_wrong_host_key_pin_is_refused_as_a_mismatch_without_a_retry_storm() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let key = ClientKey::new();
    let ssh_port = free_port();
    let relay = Sshd::start("127.0.0.2", ssh_port, &key);
    create_node(&store, "relay-1", &["127.0.0.2"], true, 1).await;
    let agent = TestAgent::start("vast-3", &eps, &[]);
    let remote = free_port();
    let mut spec = tunnel_spec("vast-3", "relay-1", &key, ssh_port, &[(remote, agent.port)]);
    // Another server's key: what a man in the middle would present.
    let other = tempfile::tempdir().unwrap();
    spec.host_key = Some(support::sshd::keygen(&other.path().join("k")));
    store.create(&Object::new("t3", spec)).await.unwrap();

    let started = Instant::now();
    let st = eventually(
        Duration::from_secs(20),
        "host key mismatch reported",
        || async {
            tunnel_status(&store, "t3")
                .await
                .filter(|s| s.last_error.contains("host key mismatch"))
        },
    )
    .await;
    assert!(!st.connected);
    assert_eq!(st.endpoint, None);
    // Watch the retries for 20 s more: exponential backoff allows a handful, not a storm.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let window = started.elapsed();
    let st = tunnel_status(&store, "t3").await.unwrap();
    let attempts = relay.connections();
    assert!(!st.connected, "{st:?}");
    assert!(st.last_error.contains("host key mismatch"), "{st:?}");
    assert!(
        (2..=9).contains(&attempts),
        "{attempts} connections to the relay in {window:?} (restarts {})",
        st.restarts
    );
    assert!(
        st.restarts as usize + 1 >= attempts.saturating_sub(1),
        "{st:?} vs {attempts}"
    );
    assert!(
        http_through(&format!("127.0.0.2:{remote}"), &agent.addr(), "/healthz")
            .await
            .is_none()
    );
    assert!(
        !relay.log().contains("Accepted publickey"),
        "ssh must stop before authenticating to an unpinned server:\n{}",
        relay.log()
    );
}

#[tokio::test]
async fn auto_relay_moves_to_another_relay_when_the_first_ones_sshd_stays_down() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let key = ClientKey::new();
    let ssh_port = free_port();
    // relay-a's sshd runs only long enough to read its host key: it stays down.
    let mut down = Sshd::start("127.0.0.3", ssh_port, &key);
    down.stop();
    create_node(&store, "relay-a", &["127.0.0.3"], true, 1).await;
    create_node(&store, "relay-b", &["127.0.0.4"], true, 1).await;
    let _relay_a_agent = TestAgent::start("relay-a", &eps, &[]);
    let agent = TestAgent::start("vast-4", &eps, &[]);
    let remote = free_port();
    let mut spec = tunnel_spec("vast-4", "auto", &key, ssh_port, &[(remote, agent.port)]);
    spec.switch_after_failures = 2;
    spec.host_keys
        .insert("relay-a".into(), down.host_key.clone());
    // relay-b's key is pinned before relay-b exists; it comes up later.
    let up = Sshd::start("127.0.0.4", ssh_port, &key);
    spec.host_keys.insert("relay-b".into(), up.host_key.clone());
    store.create(&Object::new("t4", spec)).await.unwrap();

    // The only Ready relay is relay-a: it is tried and fails.
    eventually(
        Duration::from_secs(30),
        "relay-a tried and failing",
        || async {
            tunnel_status(&store, "t4").await.filter(|s| {
                s.relay.as_deref() == Some("relay-a") && !s.connected && !s.last_error.is_empty()
            })
        },
    )
    .await;
    let _relay_b_agent = TestAgent::start("relay-b", &eps, &[]);
    let st = wait_connected(&store, "t4", "relay-b", 60).await;
    assert_eq!(
        st.endpoint.as_deref(),
        Some(&*format!("127.0.0.4:{remote}"))
    );
    wait_agent_through(&format!("127.0.0.4:{remote}"), &agent, 10).await;
    let r = rift(&eps, &["describe", "tunnel", "t4"]);
    assert!(r.stdout.contains("RelaySwitched"), "{}", r.stdout);
}

#[tokio::test]
async fn addresses_fall_back_in_order_for_rift_logs_peers_and_etcd_endpoints() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let store = cluster.store().await;
    let mut client = cluster.client().await;
    let hole = blackhole();
    // etcd endpoints: a hanging and a refusing one before the real one.
    let closed = free_port();
    let bad_first = format!("https://{},https://127.0.0.1:{closed},{eps}", hole.addr);

    // Node x: its endpoint and first address refuse, its second hangs, its third works.
    create_node(
        &store,
        "x",
        &[REFUSING_HOST, &hole.addr, "127.0.0.1"],
        false,
        1,
    )
    .await;
    let refusing = format!("{REFUSING_HOST}:{}", free_port());
    let x = TestAgent::start("x", &bad_first, &["--advertise", &refusing]);
    set_agent_port(&store, "x", x.port).await;
    let y = TestAgent::start("y", &bad_first, &[]);
    let good = format!("127.0.0.1:{}", x.port);

    // Agent peers: y reaches x at the working address and reports it.
    let y_addr = y.addr();
    eventually(Duration::from_secs(30), "y reaches x", || {
        let y_addr = y_addr.clone();
        let good = good.clone();
        async move {
            let (_, body) = http(&y_addr, "/status").await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["reachable_peers"]["x"] == good).then_some(())
        }
    })
    .await;

    // The CLI: `rift logs` falls through to the working address, and etcd's first endpoints
    // do not stall it.
    run_job_on(&store, &mut client, "fallback", "x", "echo found you").await;
    let started = Instant::now();
    let out = rift_command(&bad_first, &["logs", "fallback"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        x.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "found you\n");
    assert!(took < Duration::from_secs(15), "rift logs took {took:?}");
    let started = Instant::now();
    let r = rift(&bad_first, &["get", "nodes"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "rift get took {:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(20), "both agents Ready", || async {
        let (nodes, _) = store
            .list::<NodeSpec>(&rift::api::selector::LabelSelector::everything())
            .await
            .ok()?;
        nodes
            .iter()
            .all(|n| n.status.as_ref().is_some_and(|s| s.is_ready()))
            .then_some(())
    })
    .await;
}
