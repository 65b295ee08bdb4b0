mod support;

// Self-tests for the etcd test harness in `tests/support/etcd.rs`.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, WatchOptions};
use support::etcd::EtcdCluster;

async fn connect(cluster: &EtcdCluster, endpoint: &str) -> Client {
    cluster.client_at(&[endpoint.to_string()]).await
}

async fn get_value(client: &mut Client, key: &str, options: Option<GetOptions>) -> Option<Vec<u8>> {
    let resp = client.get(key, options).await.expect("get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

#[test]
fn single_member_is_usable_from_a_plain_test() {
    let cluster = EtcdCluster::single();
    assert_eq!(cluster.len(), 1);
    assert!(cluster.is_running(0));
    assert_eq!(cluster.endpoints(), vec![cluster.client_url(0)]);
    assert!(cluster.client_url(0).starts_with("https://127.0.0.1:"));
    assert_eq!(cluster.endpoints_csv(), cluster.client_url(0));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = cluster.client().await;
        client.put("k", "v", None).await.expect("put");
        assert_eq!(get_value(&mut client, "k", None).await, Some(b"v".to_vec()));
    });
}

#[tokio::test]
async fn single_put_get() {
    let cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    client.put("/rift/a", "1", None).await.expect("put");
    assert_eq!(
        get_value(&mut client, "/rift/a", None).await,
        Some(b"1".to_vec())
    );
    // Nothing leaked into the test's output; the log is in the temp dir.
    assert!(cluster.log_path(0).exists());
}

#[tokio::test]
async fn three_members_replicate() {
    let started = Instant::now();
    let cluster = EtcdCluster::three();
    eprintln!("three() came up in {:?}", started.elapsed());
    assert_eq!(cluster.len(), 3);
    let eps = cluster.endpoints();
    for (i, ep) in eps.iter().enumerate() {
        assert!(
            ep.starts_with(&format!("https://127.0.0.{}:", i + 1)),
            "{ep}"
        );
    }
    assert_eq!(cluster.endpoints_csv(), eps.join(","));

    let mut c0 = connect(&cluster, &eps[0]).await;
    c0.put("/rift/replicated", "yes", None).await.expect("put");
    // Default reads are linearizable, so member 2 must see the write.
    let mut c2 = connect(&cluster, &eps[2]).await;
    assert_eq!(
        get_value(&mut c2, "/rift/replicated", None).await,
        Some(b"yes".to_vec())
    );
}

#[tokio::test]
async fn stop_keeps_quorum_and_start_catches_up() {
    let mut cluster = EtcdCluster::three();
    cluster.stop(1);
    assert!(!cluster.is_running(1));
    assert!(cluster.is_running(0) && cluster.is_running(2));

    // 2 of 3 members are a quorum: writes still succeed.
    let mut client = cluster.client().await;
    client
        .put("/rift/during-outage", "ok", None)
        .await
        .expect("put with one member down");
    drop(client);

    let started = Instant::now();
    cluster.start(1);
    eprintln!("start(1) took {:?}", started.elapsed());
    assert!(cluster.is_running(1));

    // The restarted member serves the key written while it was down, even for
    // a serializable (local) read once it has caught up.
    let mut c1 = connect(&cluster, &cluster.client_url(1)).await;
    assert_eq!(
        get_value(&mut c1, "/rift/during-outage", None).await,
        Some(b"ok".to_vec())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let local = get_value(
            &mut c1,
            "/rift/during-outage",
            Some(GetOptions::new().with_serializable()),
        )
        .await;
        if local.as_deref() == Some(b"ok".as_slice()) {
            break;
        }
        assert!(Instant::now() < deadline, "member 1 never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_and_restart_same_ports() {
    let mut cluster = EtcdCluster::three();
    let before = cluster.endpoints();
    cluster.kill(2);
    assert!(!cluster.is_running(2));
    cluster.start(2);
    assert!(cluster.is_running(2));
    assert_eq!(cluster.endpoints(), before);
    let mut client = cluster.client().await;
    client.put("k", "v", None).await.expect("put after restart");
}

#[tokio::test]
async fn whole_cluster_restart() {
    let mut cluster = EtcdCluster::three();
    let mut client = cluster.client().await;
    client.put("/rift/persisted", "1", None).await.expect("put");
    drop(client);
    for i in 0..3 {
        cluster.stop(i);
    }
    // Without a quorum the first restarts only wait for the port to listen;
    // the third one waits for health.
    for i in 0..3 {
        cluster.start(i);
    }
    let mut client = cluster.client().await;
    assert_eq!(
        get_value(&mut client, "/rift/persisted", None).await,
        Some(b"1".to_vec())
    );
}

#[tokio::test]
async fn compact_cancels_watch_from_old_revision() {
    let cluster = EtcdCluster::single();
    let mut client = cluster.client().await;
    let first = client
        .put("/rift/w", "1", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client.put("/rift/w", "2", None).await.expect("put");
    client.put("/rift/w", "3", None).await.expect("put");

    let compacted = cluster.compact().await;
    assert!(compacted > first, "compacted at {compacted}, first {first}");
    // Compacting again without writes is fine.
    assert_eq!(cluster.compact().await, compacted);

    let mut stream = client
        .watch(
            "/rift/w",
            Some(WatchOptions::new().with_start_revision(first)),
        )
        .await
        .expect("watch");
    // The first response acknowledges the watch (`created`); the compaction
    // notice follows.
    let resp = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let resp = stream
                .message()
                .await
                .expect("watch stream error")
                .expect("watch stream ended");
            if resp.compact_revision() > 0 || resp.canceled() {
                return resp;
            }
            assert!(resp.events().is_empty(), "unexpected events: {resp:?}");
        }
    })
    .await
    .expect("compaction notice in time");
    assert!(resp.canceled(), "{resp:?}");
    assert_eq!(resp.compact_revision(), compacted);
}

#[test]
fn drop_kills_members_even_on_panic() {
    let pids_file = std::env::temp_dir().join(format!("rift-harness-{}", std::process::id()));
    let endpoints = std::panic::catch_unwind(|| {
        let cluster = EtcdCluster::three();
        let eps = cluster.endpoints();
        std::fs::write(&pids_file, eps.join(",")).unwrap();
        panic!("boom");
    });
    assert!(endpoints.is_err());
    let eps = std::fs::read_to_string(&pids_file).unwrap();
    let _ = std::fs::remove_file(&pids_file);
    // Every member's client port is closed again.
    for ep in eps.split(',') {
        let addr = ep.trim_start_matches("https://");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still accepting connections after drop"
        );
    }
}

#[tokio::test]
async fn a_plaintext_cluster_is_there_for_tests_of_the_old_path() {
    let cluster = EtcdCluster::plaintext(1);
    assert!(cluster.client_url(0).starts_with("http://127.0.0.1:"));
    assert!(cluster.trust().is_none());
    let mut c = cluster.client().await;
    c.put("/rift/plain", "1", None).await.expect("put");
    let store = cluster.store().await;
    assert!(store.get_raw("/rift/plain").await.unwrap().is_some());
}

#[tokio::test]
async fn a_tls_cluster_refuses_clients_without_its_certificates() {
    let cluster = EtcdCluster::single();
    // Plain HTTP to the client port: no answer.
    let plain =
        rift::store::Access::insecure(&[cluster.client_url(0).replacen("https://", "http://", 1)]);
    assert!(rift::store::Store::connect(&plain).await.is_err());
    // TLS without a client certificate: refused in the handshake.
    let anonymous = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(
                    cluster.trust().unwrap().admin().unwrap().ca_pem,
                ))
                .domain_name("etcd.rift"),
        );
    let refused = async {
        let mut c = Client::connect([cluster.client_url(0)], Some(anonymous)).await?;
        c.get("/rift/v1/leader", None).await
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .map_or(true, |r| r.is_err()),
        "a client without a certificate was served"
    );
    // The operator's certificate works.
    let mut c = cluster.client().await;
    c.put("/rift/v1/x", "1", None).await.expect("root writes");
}
