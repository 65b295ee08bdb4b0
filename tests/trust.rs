//! Trust in etcd: who may connect, and what a node's identity may do (real etcd 3.4 with TLS
//! on both ports, client certificates and authentication; identities from the cluster CA).

mod support;

use std::time::Duration;

use etcd_client::{EventType, PutOptions, WatchOptions};
use rift::pki::dir::LeafFile;
use rift::pki::local::LocalTrust;
use rift::pki::{Leaf, NodeRole, PkiDir};
use rift::store::{keys, Access, Guard, Op, Store, StoreError};
use support::agent::{eventually, TestAgent};
use support::cli::{rift, rift_command};
use support::etcd::EtcdCluster;

/// The key the leader's heartbeat controller writes.
const HEARTBEAT: &str = "/rift/v1/controllers/heartbeat";

/// A store acting as node `node` (a worker), admitted into `cluster` as a join would.
async fn node_store(cluster: &EtcdCluster, node: &str, dir: &std::path::Path) -> Store {
    let trust = cluster.trust().unwrap();
    trust.admit(
        &cluster.endpoints_csv(),
        dir,
        node,
        NodeRole::Worker,
        "127.0.0.1",
    );
    let id = PkiDir::new(dir)
        .identity(LeafFile::Node)
        .unwrap()
        .expect("an identity");
    Store::connect(&Access::tls(&cluster.endpoints(), id))
        .await
        .unwrap()
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::PermissionDenied { .. }) => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// An etcd client error as the store classifies it.
fn etcd<T>(r: Result<T, etcd_client::Error>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::from_etcd(e, "test"))
}

async fn put(store: &Store, key: &str, value: &str) -> Result<(), StoreError> {
    let mut c = store.client();
    etcd(c.put(key, value, None).await).map(|_| ())
}

#[tokio::test]
async fn a_node_identity_writes_only_under_its_own_prefix() {
    let cluster = EtcdCluster::single();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = node_store(&cluster, "n1", d1.path()).await;
    let n2 = node_store(&cluster, "n2", d2.path()).await;
    let root = cluster.store().await;

    // n2 registers as its agent does: a lease, and its alive key on it.
    let lease2 = rift::agent::registration::register(&n2, "n2", Duration::from_secs(60), false)
        .await
        .unwrap()
        .id;

    // n1 may: renew its own lease, write its own keys, watch everything, and run a
    // transaction that compares the leader key.
    let lease1 = rift::agent::registration::register(&n1, "n1", Duration::from_secs(60), false)
        .await
        .unwrap()
        .id;
    let mut c1 = n1.client();
    let (mut keeper, mut stream) = c1.lease_keep_alive(lease1).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = stream.message().await.unwrap().unwrap();
    assert!(renewed.ttl() > 0, "n1 renewed its lease");
    put(&n1, &keys::agent_status("n1"), "{}").await.unwrap();
    let mut events = c1
        .watch(keys::ROOT, Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    put(&root, &keys::object("jobs", "seen"), "{}")
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let resp = events.message().await.unwrap().unwrap();
            if resp.events().iter().any(|e| {
                e.event_type() == EventType::Put
                    && e.kv()
                        .is_some_and(|kv| kv.key() == keys::object("jobs", "seen").as_bytes())
            }) {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "n1 watches /rift/v1/");
    let compared = n1
        .txn(
            vec![Guard::created_at(keys::LEADER, 0)],
            vec![Op::put(keys::agent_job("n1", "j"), "{}")],
            vec![],
        )
        .await
        .unwrap();
    assert!(compared.succeeded, "no leader yet: the compare holds");

    // n1 may not: another node's keys, jobs, bindings (its own included: the scheduler
    // writes them), the leader key, the trust record and tokens, membership, other leases.
    denied(
        "agents/n2",
        put(&n1, &keys::agent_alive("n2"), "forged").await,
    );
    denied("jobs", put(&n1, &keys::object("jobs", "evil"), "{}").await);
    denied("nodes", put(&n1, &keys::object("nodes", "n1"), "{}").await);
    denied(
        "bindings",
        put(&n1, &keys::binding("n1", "evil"), "{}").await,
    );
    denied("placements", put(&n1, &keys::placement("evil"), "{}").await);
    denied("leader", put(&n1, keys::LEADER, "{}").await);
    denied(
        "a transaction that mixes its own key with a job",
        n1.txn(
            vec![],
            vec![
                Op::put(keys::agent_job("n1", "k"), "{}"),
                Op::put(keys::object("jobs", "evil"), "{}"),
            ],
            vec![],
        )
        .await,
    );
    denied("reading the trust record", n1.get_raw(keys::TRUST).await);
    denied(
        "reading tokens",
        n1.list_raw(keys::TOKENS_PREFIX, None).await,
    );
    let mut c = n1.client();
    denied(
        "deleting n2's alive key",
        etcd(c.delete(keys::agent_alive("n2"), None).await),
    );
    let mut c = n1.client();
    denied(
        "member add",
        etcd(c.member_add(["https://127.0.0.9:2380"], None).await),
    );
    let mut c = n1.client();
    denied("revoking n2's lease", etcd(c.lease_revoke(lease2).await));

    // Nothing n1 tried landed; n2 is still alive.
    assert!(root
        .get_raw(&keys::agent_alive("n2"))
        .await
        .unwrap()
        .is_some());
    assert!(
        root.list_raw(&keys::objects_prefix("jobs"), None)
            .await
            .unwrap()
            .0
            .len()
            == 1
    );
    assert!(root.get_raw(keys::LEADER).await.unwrap().is_none());
    assert!(root
        .get_raw(&keys::binding("n1", "evil"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_node_identity_cannot_forge_or_remove_the_leader_key() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let _leader = TestAgent::start("ctl", &eps, &["--controllers", "--lease-ttl", "2"]);
    let root = cluster.store().await;
    let heartbeat = || async {
        let kv = root.get_raw(HEARTBEAT).await.ok()??;
        let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
        v["seq"].as_u64()
    };
    let before = eventually(Duration::from_secs(20), "the leader's heartbeat", heartbeat).await;
    let dir = tempfile::tempdir().unwrap();
    let n1 = node_store(&cluster, "n1", dir.path()).await;
    let leader = root.get_raw(keys::LEADER).await.unwrap().unwrap();
    denied(
        "overwrite the leader key",
        put(&n1, keys::LEADER, r#"{"node":"n1"}"#).await,
    );
    let mut c = n1.client();
    denied(
        "delete the leader key",
        etcd(c.delete(keys::LEADER, None).await),
    );
    let mut c = n1.client();
    denied(
        "revoke the leader's lease",
        etcd(c.lease_revoke(leader.lease).await),
    );
    denied("write the heartbeat", put(&n1, HEARTBEAT, "{}").await);
    let after = root.get_raw(keys::LEADER).await.unwrap().unwrap();
    assert_eq!(
        after.create_revision, leader.create_revision,
        "the same leader"
    );
    eventually(
        Duration::from_secs(10),
        "the leader's heartbeat goes on",
        || async { heartbeat().await.filter(|s| *s > before + 2) },
    )
    .await;
}

#[tokio::test]
async fn an_outsider_cannot_create_a_job_by_any_path() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let job =
        "apiVersion: rift/v1\nkind: Job\nmetadata: {name: evil}\nspec: {command: [sh, -c, id]}\n";
    let dir = tempfile::tempdir().unwrap();

    // Plain HTTP to the client port.
    let plain = cluster.client_url(0).replacen("https://", "http://", 1);
    let out = support::cli::rift_stdin(&plain, &["apply", "-f", "-"], job);
    assert!(!out.ok);

    // A certificate of another CA, even one named root.
    let foreign = LocalTrust::create(&dir.path().join("foreign")).unwrap();
    let forged = Access::tls(&cluster.endpoints(), foreign.admin().unwrap());
    let err = Store::connect(&forged).await.err().expect("refused");
    assert!(matches!(err, StoreError::Credentials(_)), "{err}");

    // A client certificate of this CA whose name is no etcd user (etcd's peer certificate).
    let ca = cluster.trust().unwrap().ca();
    let server = ca
        .identity(&Leaf::EtcdPeer {
            hosts: vec!["127.0.0.1".into()],
        })
        .unwrap();
    let err = Store::connect(&Access::tls(&cluster.endpoints(), server))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");

    // A worker's identity, through the CLI (its credentials as RIFT_CONFIG).
    let worker_dir = dir.path().join("w");
    let n = node_store(&cluster, "w", &worker_dir).await;
    drop(n);
    let id = PkiDir::new(&worker_dir)
        .identity(LeafFile::Node)
        .unwrap()
        .unwrap();
    let conf = dir.path().join("worker.conf");
    rift::pki::credentials::Credentials {
        endpoints: cluster.endpoints(),
        ca: id.ca_pem,
        cert: id.cert_pem,
        key: id.key_pem,
    }
    .save(&conf)
    .unwrap();
    let mut cmd = rift_command(&eps, &["apply", "-f", "-"]);
    cmd.env("RIFT_CONFIG", &conf)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("permission denied"), "{stderr}");

    // An agent's HTTP: nothing there creates objects.
    let agent = TestAgent::start("n1", &eps, &[]);
    let addr = agent.addr();
    eventually(Duration::from_secs(20), "the agent's HTTP", || async {
        support::http::get(&addr, "/healthz", Duration::from_secs(2))
    })
    .await;
    for request in [
        "POST /v1/jobs/evil HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
        "POST /v1/join HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
        "PUT /rift/v1/jobs/evil HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
    ] {
        let answer = support::http::exchange(&addr, request, Duration::from_secs(5)).unwrap();
        let code: u16 = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!((400..500).contains(&code), "{request}: {answer}");
    }

    let root = cluster.store().await;
    assert!(root
        .list_raw(&keys::objects_prefix("jobs"), None)
        .await
        .unwrap()
        .0
        .is_empty());
}

#[tokio::test]
async fn a_member_with_a_foreign_ca_cannot_join_the_peers() {
    let cluster = EtcdCluster::single();
    let dir = tempfile::tempdir().unwrap();
    let foreign = LocalTrust::create(&dir.path().join("foreign")).unwrap();
    let ip = "127.0.0.2";
    let (client, peer) = (support::proc::free_port(), support::proc::free_port());
    let peer_url = format!("https://{ip}:{peer}");
    // Added as root (as the voters controller would), then started with certificates of
    // another CA: the peers refuse it, so it never catches up.
    let mut root = cluster.client().await;
    let added = root
        .member_add(
            [peer_url.as_str()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let id = added.member().unwrap().id();
    let tls = foreign.member("intruder", &[ip.to_string()]).unwrap();
    let members: Vec<String> = added
        .member_list()
        .iter()
        .map(|m| {
            let name = if m.id() == id { "intruder" } else { m.name() };
            format!("{name}={}", m.peer_urls()[0])
        })
        .collect();
    let log = std::fs::File::create(dir.path().join("intruder.log")).unwrap();
    let mut intruder = support::cli::KillOnDrop(
        std::process::Command::new("etcd")
            .args(["--name", "intruder", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("https://{ip}:{client}")])
            .args(["--advertise-client-urls", &format!("https://{ip}:{client}")])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &members.join(",")])
            .args(["--initial-cluster-state", "existing"])
            .args(tls.args())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let list = root.member_list().await.unwrap();
    let m = list.members().iter().find(|m| m.id() == id).unwrap();
    assert!(
        m.name().is_empty(),
        "the intruder never started as a member (it has no name in the list)"
    );
    let log = std::fs::read_to_string(dir.path().join("intruder.log")).unwrap();
    assert!(
        log.contains("certificate") || log.contains("tls"),
        "the intruder's log shows the refusal: {log}"
    );
    let _ = intruder.0.kill();
    // The cluster still answers, its data intact.
    root.put("/rift/v1/after", "1", None).await.unwrap();
}

#[tokio::test]
async fn an_expired_certificate_is_refused_with_a_message_that_says_so() {
    let cluster = EtcdCluster::single();
    let dir = tempfile::tempdir().unwrap();
    let trust = cluster.trust().unwrap();
    trust
        .ca()
        .provision_node(
            dir.path(),
            "old",
            NodeRole::Worker,
            &[],
            Duration::from_secs(1),
        )
        .unwrap();
    trust.admit(
        &cluster.endpoints_csv(),
        dir.path(),
        "old",
        NodeRole::Worker,
        "127.0.0.1",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = PkiDir::new(dir.path())
        .identity(LeafFile::Node)
        .unwrap()
        .unwrap();
    let err = Store::connect(&Access::tls(&cluster.endpoints(), id))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::Credentials(_)), "{err}");
    let check = rift(
        "",
        &[
            "certs",
            "check",
            "--state-dir",
            &dir.path().display().to_string(),
        ],
    );
    assert!(!check.ok);
    assert!(check.stdout.contains("EXPIRED"), "{}", check.stdout);
    assert!(check.stderr.contains("expired"), "{}", check.stderr);
}

#[test]
fn rift_config_missing_unreadable_or_wrong_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.conf");
    std::fs::write(&garbage, "endpoints: [https://127.0.0.1:1]\nca: nope\n").unwrap();
    for (path, says) in [
        (dir.path().join("absent.conf"), "does not exist"),
        // A directory cannot be read as a file (as root, a 0000 file still can be).
        (dir.path().to_path_buf(), "cannot be read"),
        (garbage, "should hold `endpoints`, `ca`, `cert` and `key`"),
    ] {
        let out = rift_command("", &["get", "nodes"])
            .env("RIFT_CONFIG", &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says), "{}: {stderr}", path.display());
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    // Without RIFT_CONFIG and no ~/.config/rift/config: how to get credentials.
    let out = rift_command("", &["get", "nodes"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("export RIFT_CONFIG="), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[tokio::test]
async fn a_node_announces_its_node_and_the_leader_creates_it() {
    let cluster = EtcdCluster::single();
    let eps = cluster.endpoints_csv();
    let dir = tempfile::tempdir().unwrap();
    let n = node_store(&cluster, "late", dir.path()).await;
    // The worker cannot create its Node itself...
    let spec = rift::api::NodeSpec {
        agent_port: 9999,
        ..Default::default()
    };
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("gpu".to_string(), "h100".to_string());
    denied(
        "creating its own Node",
        rift::agent::registration::ensure_node(&n, "late", &spec, &labels).await,
    );
    // ...so it announces it on its lease; the leader creates it.
    let lease = rift::agent::registration::register(&n, "late", Duration::from_secs(60), false)
        .await
        .unwrap()
        .id;
    let body = serde_json::json!({"spec": spec, "labels": labels}).to_string();
    let mut c = n.client();
    c.put(
        keys::agent_node("late"),
        body,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let _leader = TestAgent::start("ctl", &eps, &["--controllers", "--lease-ttl", "2"]);
    let root = cluster.store().await;
    let node = eventually(Duration::from_secs(20), "Node late created", || async {
        root.get::<rift::api::NodeSpec>("late").await.ok()?
    })
    .await;
    assert_eq!(node.spec.agent_port, 9999);
    assert_eq!(
        node.metadata.labels.get("gpu").map(String::as_str),
        Some("h100")
    );
}
