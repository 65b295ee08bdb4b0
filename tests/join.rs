//! Joining with tokens, the agent's HTTPS, certificate renewal, and moving a plaintext cluster
//! to TLS — with real etcd, real agents and the real `rift` binary.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rift::pki::dir::LeafFile;
use rift::pki::{inspect, NodeRole, PkiDir};
use support::agent::{eventually, kill_processes_mentioning, process_alive, TestAgent};
use support::cli::{rift, rift_bin, rift_command, rift_stdin, KillOnDrop};
use support::etcd::EtcdCluster;
use support::http;
use support::proc::free_port;

/// A cluster with a controller agent that serves joins.
struct Joinable {
    cluster: EtcdCluster,
    ctl: TestAgent,
}

impl Joinable {
    async fn start() -> Joinable {
        let cluster = EtcdCluster::single();
        let ctl = TestAgent::start(
            "ctl",
            &cluster.endpoints_csv(),
            &["--controllers", "--lease-ttl", "2"],
        );
        let addr = ctl.addr();
        eventually(
            Duration::from_secs(20),
            "the controller's HTTPS",
            || async { http::get(&addr, "/healthz", Duration::from_secs(2)) },
        )
        .await;
        Joinable { cluster, ctl }
    }

    fn url(&self) -> String {
        format!("https://{}", self.ctl.addr())
    }

    fn eps(&self) -> String {
        self.cluster.endpoints_csv()
    }

    fn token(&self, role: &str, ttl: &str) -> String {
        let out = rift(
            &self.eps(),
            &["token", "create", "--role", role, "--ttl", ttl],
        );
        assert!(out.ok, "{}", out.stderr);
        out.stdout.trim().to_string()
    }

    /// Runs `rift agent --name NAME --join URL --token TOKEN` expecting it to fail; returns its
    /// stderr once it exits (within 20 s).
    fn failing_join(&self, name: &str, url: &str, token: &str, state: &Path) -> String {
        let mut child = rift_command(
            &self.eps(),
            &[
                "agent",
                "--name",
                name,
                "--listen",
                "127.0.0.1",
                "--port",
                &free_port().to_string(),
                "--join",
                url,
                "--token",
                token,
            ],
        )
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("a refused join did not end the agent within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    async fn admitted(&self, node: &str) -> Option<NodeRole> {
        let store = self.cluster.store().await;
        rift::store::auth::admitted(&store, node).await.unwrap()
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_node_joins_with_a_token_and_gets_a_workers_identity_and_its_node() {
    let j = Joinable::start().await;
    let token = j.token("worker", "1h");
    assert!(token.starts_with("RIFT1"), "{token}");
    let w = TestAgent::start(
        "w1",
        &j.eps(),
        &["--gpus", "H100x2", "--join", &j.url(), "--token", &token],
    );
    let store = j.cluster.store().await;
    let node = eventually(Duration::from_secs(30), "w1 Ready", || async {
        let n = store.get::<rift::api::NodeSpec>("w1").await.ok()??;
        n.status.as_ref()?.is_ready().then_some(n)
    })
    .await;
    assert_eq!(node.spec.agent_port, w.port, "the join created its Node");
    let pki = PkiDir::new(&w.state);
    let info =
        inspect::inspect(&std::fs::read_to_string(pki.cert(LeafFile::Node)).unwrap()).unwrap();
    assert_eq!(info.common_name, "node-w1");
    assert_eq!(info.dns_names, ["w1.node.rift"]);
    assert_eq!(mode(&pki.key(LeafFile::Node)), 0o600);
    assert_eq!(mode(pki.root()), 0o700);
    assert!(
        !pki.ca_key().exists(),
        "the CA's key stays with the controllers"
    );
    assert!(!pki.has_etcd_certs(), "a worker hosts no etcd member");
    assert_eq!(j.admitted("w1").await, Some(NodeRole::Worker));
    // The token is listed (never its secret) and still usable until it expires.
    let list = rift(&j.eps(), &["token", "list"]);
    let id = token.split("::").nth(1).unwrap().split('.').next().unwrap();
    assert!(
        list.stdout.contains(id) && list.stdout.contains("worker"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(token.split('.').next_back().unwrap()));
    // A second node cannot take an admitted node's name.
    let state = tempfile::tempdir().unwrap();
    let err = j.failing_join("w1", &j.url(), &token, state.path());
    assert!(err.contains("already has an identity"), "{err}");
}

#[tokio::test]
async fn a_join_with_the_wrong_ca_hash_fails_before_the_secret_is_sent() {
    let j = Joinable::start().await;
    let token = j.token("controller", "1h");
    // The token of another cluster: one hex digit of the CA hash differs.
    let digit = &token[5..6];
    let other = if digit == "0" { "1" } else { "0" };
    let foreign = format!("RIFT1{other}{}", &token[6..]);
    let state = tempfile::tempdir().unwrap();
    let err = j.failing_join("intruder", &j.url(), &foreign, state.path());
    assert!(err.contains("Nothing secret was sent"), "{err}");
    assert!(err.contains("is not the one the token names"), "{err}");
    // The controller never saw a join request (the secret was never sent), nothing was made.
    assert!(!j.ctl.log().contains("join request"), "{}", j.ctl.log());
    assert_eq!(j.admitted("intruder").await, None);
    assert!(!PkiDir::new(state.path()).has_identity());
}

#[tokio::test]
async fn expired_revoked_reused_and_truncated_tokens_are_refused_and_change_nothing() {
    let j = Joinable::start().await;
    let state = tempfile::tempdir().unwrap();

    let expired = j.token("worker", "1s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = j.failing_join("late", &j.url(), &expired, &state.path().join("a"));
    assert!(err.contains("expired"), "{err}");

    // Used once, then revoked: the next join with it is refused.
    let token = j.token("worker", "1h");
    let _first = TestAgent::start("first", &j.eps(), &["--join", &j.url(), "--token", &token]);
    eventually(Duration::from_secs(20), "first admitted", || async {
        j.admitted("first").await
    })
    .await;
    let id = token.split("::").nth(1).unwrap().split('.').next().unwrap();
    assert!(rift(&j.eps(), &["token", "revoke", id]).ok);
    let err = j.failing_join("second", &j.url(), &token, &state.path().join("b"));
    assert!(err.contains("unknown, revoked"), "{err}");
    let again = rift(&j.eps(), &["token", "revoke", id]);
    assert!(
        !again.ok && again.stderr.contains("not found"),
        "{}",
        again.stderr
    );

    let cut = &token[..token.len() - 5];
    let err = j.failing_join("third", &j.url(), cut, &state.path().join("c"));
    assert!(err.contains("cut short"), "{err}");

    for node in ["late", "second", "third"] {
        assert_eq!(j.admitted(node).await, None, "{node}");
    }
    let store = j.cluster.store().await;
    for node in ["late", "second", "third"] {
        assert!(store
            .get::<rift::api::NodeSpec>(node)
            .await
            .unwrap()
            .is_none());
    }
    // The old form without a token, on a TLS cluster: a clear refusal.
    let out = rift_command(&j.eps(), &["agent", "--name", "x", "--join", &j.eps()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--join needs --token"), "{stderr}");
}

#[tokio::test]
async fn logs_status_and_metrics_need_a_client_certificate_and_health_does_not() {
    let cluster = EtcdCluster::single();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("scrape-token");
    std::fs::write(&token_file, "s3cret-scrape\n").unwrap();
    let config = dir.path().join("node.yaml");
    std::fs::write(
        &config,
        format!("scrapeTokenFile: {}\n", token_file.display()),
    )
    .unwrap();
    let agent = TestAgent::start(
        "n1",
        &cluster.endpoints_csv(),
        &["--config", config.to_str().unwrap()],
    );
    let addr = agent.addr();
    let t = Duration::from_secs(3);
    eventually(Duration::from_secs(20), "the agent's HTTPS", || async {
        http::get(&addr, "/healthz", t)
    })
    .await;
    for open in ["/healthz", "/readyz"] {
        let (code, _) = http::get_anonymous(&addr, open, t).unwrap();
        assert!(code == 200 || code == 503, "{open}: {code}");
    }
    for closed in ["/status", "/metrics", "/v1/jobs/x/logs"] {
        let (code, body) = http::get_anonymous(&addr, closed, t).unwrap();
        assert_eq!(code, 401, "{closed}: {body}");
        assert!(body.contains("client certificate"), "{body}");
        let (code, _) = http::get(&addr, closed, t).unwrap();
        assert_ne!(code, 401, "{closed} with the operator's certificate");
    }
    let bearer = |token: &str| {
        let raw = support::http::exchange_anonymous(
            &addr,
            &format!("GET /metrics HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"),
            t,
        )
        .unwrap();
        raw.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    assert_eq!(bearer("s3cret-scrape"), 200);
    assert_eq!(bearer("guess"), 401);
    // Plain HTTP to the TLS port gets nothing.
    let plain = std::net::TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(t)).unwrap();
    use std::io::{Read, Write};
    let mut plain = plain;
    let _ = plain.write_all(b"GET /status HTTP/1.0\r\n\r\n");
    let mut got = String::new();
    let _ = plain.read_to_string(&mut got);
    assert!(!got.contains("node_id"), "{got}");
}

#[tokio::test]
async fn a_certificate_near_its_expiry_is_renewed_through_the_leader() {
    let j = Joinable::start().await;
    // A worker whose certificate has 30 days left (renewal starts at 90).
    let state = tempfile::tempdir().unwrap();
    let trust = j.cluster.trust().unwrap();
    trust
        .ca()
        .provision_node(
            state.path(),
            "w",
            NodeRole::Worker,
            &[],
            Duration::from_secs(30 * 86_400),
        )
        .unwrap();
    let _w = TestAgent::start_in("w", &j.eps(), state.path().to_path_buf(), &[]);
    let cert = PkiDir::new(state.path()).cert(LeafFile::Node);
    let days_left = || {
        let info = inspect::inspect(&std::fs::read_to_string(&cert).ok()?).ok()?;
        Some(info.remaining(chrono::Utc::now()).num_days())
    };
    assert!(days_left().unwrap() <= 30);
    eventually(Duration::from_secs(30), "node.crt renewed", || async {
        days_left().filter(|d| *d >= 364)
    })
    .await;
    let info = inspect::inspect(&std::fs::read_to_string(&cert).unwrap()).unwrap();
    assert_eq!(info.common_name, "node-w", "the same identity");
    let check = rift(
        "",
        &[
            "certs",
            "check",
            "--state-dir",
            &state.path().display().to_string(),
        ],
    );
    assert!(check.ok, "{}", check.stderr);
    assert!(check.stdout.contains("node-w"), "{}", check.stdout);
}

#[tokio::test]
async fn an_agent_with_another_nodes_certificate_stops_with_a_clear_error() {
    let cluster = EtcdCluster::single();
    let state = tempfile::tempdir().unwrap();
    cluster.trust().unwrap().admit(
        &cluster.endpoints_csv(),
        state.path(),
        "n1",
        NodeRole::Worker,
        "127.0.0.1",
    );
    let out = rift_command(&cluster.endpoints_csv(), &["agent", "--name", "n2"])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--port", &free_port().to_string(), "--listen", "127.0.0.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is the certificate of `node-n1`, not of node n2"),
        "{stderr}"
    );
    // No identity at all: how to join.
    let empty = tempfile::tempdir().unwrap();
    let out = rift_command(&cluster.endpoints_csv(), &["agent", "--name", "n3"])
        .arg("--state-dir")
        .arg(empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--join https://CONTROLLER:8770 --token"),
        "{stderr}"
    );
}

/// Playbook "Move a plaintext cluster to TLS" on one machine: a cluster made before TLS (an
/// agent with --insecure that bootstrapped its etcd member), with a job running; `rift up` on
/// its state directory moves it to TLS. Every object is kept and the job keeps its process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rift_up_on_a_plaintext_state_dir_moves_it_to_tls_keeping_objects_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (client, peer) = (free_port(), free_port());
    let plain = format!("http://127.0.0.1:{client}");
    let old = KillOnDrop(
        Command::new(rift_bin())
            .args(["agent", "--insecure", "--bootstrap", "--controllers"])
            .args([
                "--name",
                "local",
                "--listen",
                "127.0.0.1",
                "--address",
                "127.0.0.1",
            ])
            .args(["--port", &free_port().to_string()])
            .args(["--etcd-client-port", &client.to_string()])
            .args(["--etcd-peer-port", &peer.to_string()])
            .args([
                "--lease-ttl",
                "2",
                "--node-lease-ttl",
                "2",
                "--gpus",
                "H100x1",
            ])
            .arg("--state-dir")
            .arg(&state)
            .env("RIFT_ENDPOINTS", &plain)
            .env_remove("RIFT_NODE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let job = "apiVersion: rift/v1\nkind: Job\nmetadata: {name: long}\nspec:\n  command: [sleep, \"300\"]\n";
    eventually(
        Duration::from_secs(30),
        "the plaintext cluster answers",
        || async {
            rift_stdin(&plain, &["apply", "-f", "-"], job)
                .ok
                .then_some(())
        },
    )
    .await;
    let running = |ep: &str| {
        let out = rift(ep, &["get", "job", "long", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (v["status"]["phase"] == "Running").then(|| v["status"]["pid"].as_u64())?
    };
    let pid = eventually(Duration::from_secs(30), "the job Running", || async {
        running(&plain)
    })
    .await;
    // The old agent stops (its etcd member keeps running, as it does on an agent restart).
    let mut old = old;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = old.0.wait();

    let tls = format!("https://127.0.0.1:{client}");
    let trust = support::trust::Trust::new(&state.join("admin.conf"), &state.join("pki"));
    support::trust::register(std::slice::from_ref(&tls), &trust);
    let up = KillOnDrop(
        Command::new(rift_bin())
            .args(["up", "--port", &client.to_string()])
            .args(["--peer-port", &peer.to_string()])
            .args(["--agent-port", &free_port().to_string(), "--gpus", "H100x1"])
            .arg("--no-dashboard")
            .arg("--state-dir")
            .arg(&state)
            .env_remove("RIFT_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid_after = eventually(
        Duration::from_secs(60),
        "the job Running over TLS",
        || async { running(&tls) },
    )
    .await;
    assert_eq!(pid_after, pid, "the job kept its process");
    assert!(process_alive(pid as u32));
    let member = eventually(
        Duration::from_secs(30),
        "the member's peer URL moved to https",
        || async {
            let out = rift(&tls, &["get", "voterset", "default", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let m = v["status"]["members"][0].clone();
            let url = m["peerUrls"][0].as_str()?.to_string();
            url.starts_with("https://").then_some(m)
        },
    )
    .await;
    assert_eq!(member["name"], "local", "{member}");
    assert_eq!(member["healthy"], true, "{member}");
    // Plaintext is refused now, and authentication is on: a certificate of this CA that names
    // no user opens nothing.
    assert!(!rift(&plain, &["get", "jobs"]).ok);
    let nobody = trust
        .ca()
        .identity(&rift::pki::Leaf::EtcdPeer { hosts: vec![] })
        .unwrap();
    let err = rift::store::Store::connect(&rift::store::Access::tls(&[tls.as_str()], nobody))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, rift::store::StoreError::PermissionDenied { .. }),
        "{err}"
    );
    drop(up);
    kill_processes_mentioning(&state);
}
