use serde_json::{json, Value};

use super::*;
use crate::api::selector::LabelSelector;
use crate::store::mirror::Mirror;

fn kv(key: &str, value: Value, rev: i64) -> KeyValue {
    KeyValue::json(key, value, rev)
}

fn job(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "rift/v1", "kind": "Job",
           "metadata": {"name": name, "uid": uid},
           "spec": {"command": ["selfplay"], "resources": {"gpus": 1}}})
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "rift/v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
}

/// A cluster with something of every case the composition handles: reports of the current
/// and an older epoch, a placement for another uid, a node without its alive key, a binding on
/// a node no Node names, a released stop order, and values that do not decode.
fn cluster() -> Vec<KeyValue> {
    let status = json!({"capacity": {"cpus": 64, "gpus": 8}, "agentVersion": "x"});
    let pool = json!({"apiVersion": "rift/v1", "kind": "Pool", "metadata": {"name": "p"},
        "spec": {"template": {"spec": {"command": ["selfplay"]}}, "replicas": 2}});
    vec![
        kv("/rift/v1/nodes/n1", node("n1"), 2),
        kv("/rift/v1/nodes/n2", node("n2"), 3),
        kv(
            "/rift/v1/nodes/n3",
            json!({"apiVersion": "rift/v1", "kind": "Node", "metadata": {"name": "n3"},
                   "spec": {"fromTheFuture": 1}}),
            4,
        ),
        kv("/rift/v1/agents/n1/status", status.clone(), 5),
        kv("/rift/v1/agents/n1/alive", json!("x"), 6),
        kv("/rift/v1/agents/n2/status", status, 7),
        kv("/rift/v1/agents/n9/alive", json!("x"), 8),
        kv("/rift/v1/jobs/a", job("a", "ua"), 10),
        kv("/rift/v1/jobs/b", job("b", "ub"), 11),
        kv("/rift/v1/jobs/c", job("c", "uc"), 12),
        kv(
            "/rift/v1/jobs/d",
            json!({"kind": "Job", "metadata": {"name": "d"}}),
            13,
        ),
        kv("/rift/v1/jobs/e", job("e", "ue-new"), 14),
        kv(
            "/rift/v1/placements/a",
            json!({"node": "n1", "gpus": [0], "epoch": 2, "uid": "ua"}),
            20,
        ),
        kv(
            "/rift/v1/placements/b",
            json!({"pending": "no room", "epoch": 0}),
            21,
        ),
        kv(
            "/rift/v1/placements/c",
            json!({"node": "n1", "gpus": [1], "epoch": 1, "uid": "uc"}),
            22,
        ),
        kv(
            "/rift/v1/placements/e",
            json!({"node": "n9", "gpus": [0], "epoch": 4, "uid": "ue-old"}),
            23,
        ),
        kv(
            "/rift/v1/bindings/n1/a",
            json!({"gpus": [0], "epoch": 2, "uid": "ua"}),
            20,
        ),
        kv(
            "/rift/v1/bindings/n1/c",
            json!({"gpus": [1], "epoch": 1, "uid": "uc",
                   "stop": {"reason": "drained"}}),
            24,
        ),
        kv(
            "/rift/v1/bindings/n9/e",
            json!({"gpus": [0], "epoch": 4, "uid": "ue-old"}),
            23,
        ),
        kv("/rift/v1/bindings/n1/x", json!([1, 2]), 25),
        kv(
            "/rift/v1/agents/n1/jobs/a",
            json!({"phase": "Running", "epoch": 2}),
            30,
        ),
        kv(
            "/rift/v1/agents/n1/jobs/c",
            json!({"phase": "Failed", "epoch": 1, "released": true}),
            31,
        ),
        kv(
            "/rift/v1/agents/n2/jobs/a",
            json!({"phase": "Succeeded", "epoch": 1}),
            32,
        ),
        kv("/rift/v1/pools/p", pool, 40),
        kv(
            "/rift/v1/status/pools/p",
            json!({"desired": 2, "running": 1}),
            41,
        ),
        kv("/rift/v1/events/x", json!({}), 42),
        kv(
            "/rift/v1/tunnels/t1",
            json!({"apiVersion": "rift/v1", "kind": "Tunnel", "metadata": {"name": "t1"},
                   "spec": {"node": "n1", "relay": "r1", "ports": [{"remotePort": 1, "localPort": 2}],
                            "sshUser": "rift", "identityFile": "/k"}}),
            43,
        ),
        kv(
            "/rift/v1/agents/n1/tunnels/t1",
            json!({"connected": true, "relay": "r1"}),
            44,
        ),
    ]
}

fn listed(items: &[KeyValue]) -> ClusterView {
    let mut v = ClusterView::new();
    v.apply(&WatchEvent::Restarted {
        items: items.to_vec(),
        revision: 50,
    });
    v
}

#[test]
fn the_view_composes_what_the_store_composes() {
    let items = cluster();
    let snap = listed(&items).snapshot();
    let mut mirror = Mirror::new();
    mirror.apply(&WatchEvent::Restarted {
        items: items.clone(),
        revision: 50,
    });
    let all = LabelSelector::everything();
    assert_eq!(snap.nodes, mirror.list::<NodeSpec>(&all));
    assert_eq!(snap.jobs, mirror.list::<JobSpec>(&all));
    assert_eq!(snap.pools, mirror.list::<PoolSpec>(&all));
    let view = listed(&items);
    let tunnels: Vec<Tunnel> = view.tunnels().cloned().collect();
    assert_eq!(tunnels, mirror.list::<TunnelSpec>(&all));
    assert!(tunnels[0].status.as_ref().unwrap().connected);
    let phase = |n: &str| {
        let j = snap.jobs.iter().find(|j| j.name() == n).unwrap();
        j.status.as_ref().unwrap().reason.clone()
            + &format!("{:?}", j.status.as_ref().unwrap().phase)
    };
    assert_eq!(
        phase("a"),
        "Running",
        "the report of the placed node and epoch"
    );
    assert_eq!(phase("e"), "ReplacingPending", "a placement of another uid");
    assert_eq!(snap.pools[0].status.as_ref().unwrap().running, 1);

    let names = |v: &HashSet<String>| {
        let mut v: Vec<String> = v.iter().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(names(&snap.undecodable.nodes), ["n3"]);
    assert_eq!(names(&snap.undecodable.jobs), ["d"]);
    assert_eq!(names(&snap.undecodable.bound_jobs), ["x"]);
    assert_eq!(names(&snap.alive), ["n1", "n9"], "n2 has no alive key");
    assert!(snap.released.contains(&("n1".into(), "c".into(), 1)));
    assert_eq!(snap.bindings.len(), 3);
    assert_eq!(snap.placements.len(), 4);
    assert_eq!(snap.placements["a"].1, 20);
}

#[test]
fn events_one_by_one_give_the_same_view_as_one_listing() {
    let items = cluster();
    let whole = listed(&items).snapshot();
    // Start empty, then every key put in reverse order (status before its object, reports
    // before their placements), with a detour: a Job deleted and put back.
    let mut v = listed(&[]);
    for kv in items.iter().rev() {
        v.apply(&WatchEvent::Put(kv.clone()));
    }
    v.apply(&WatchEvent::Delete {
        key: "/rift/v1/jobs/a".into(),
        mod_revision: 60,
        prev: None,
    });
    v.apply(&WatchEvent::Put(items[7].clone()));
    let one_by_one = v.snapshot();
    assert_eq!(one_by_one.nodes, whole.nodes);
    assert_eq!(one_by_one.jobs, whole.jobs);
    assert_eq!(one_by_one.pools, whole.pools);
    assert_eq!(one_by_one.placements, whole.placements);
    assert_eq!(one_by_one.bindings, whole.bindings);
    assert_eq!(one_by_one.alive, whole.alive);
    assert_eq!(one_by_one.released, whole.released);
    assert_eq!(one_by_one.undecodable, whole.undecodable);
    let tunnels = |v: &ClusterView| v.tunnels().cloned().collect::<Vec<_>>();
    assert_eq!(tunnels(&v), tunnels(&listed(&items)));

    // A deleted alive key makes its node NotReady; a deleted placement makes its Job Pending.
    v.apply(&WatchEvent::Delete {
        key: "/rift/v1/agents/n1/alive".into(),
        mod_revision: 61,
        prev: None,
    });
    v.apply(&WatchEvent::Delete {
        key: "/rift/v1/placements/a".into(),
        mod_revision: 62,
        prev: None,
    });
    let s = v.snapshot();
    assert!(!s.alive.contains("n1"));
    let a = s.jobs.iter().find(|j| j.name() == "a").unwrap();
    assert_eq!(
        a.status.as_ref().unwrap().phase,
        crate::api::JobPhase::Pending
    );
}

#[test]
fn only_changes_that_can_alter_a_decision_start_a_pass() {
    let mut v = listed(&cluster());
    let put = |v: &mut ClusterView, key: &str, value: Value| {
        v.apply(&WatchEvent::Put(kv(key, value, 70)))
    };
    for key in [
        "/rift/v1/jobs/j",
        "/rift/v1/pools/q",
        "/rift/v1/nodes/n",
        "/rift/v1/placements/j",
        "/rift/v1/bindings/n/j",
        "/rift/v1/agents/n/alive",
    ] {
        assert!(put(&mut v, key, json!({})), "{key}");
    }
    for key in [
        "/rift/v1/events/e",
        "/rift/v1/status/pools/p",
        "/rift/v1/controllers/heartbeat",
        "/rift/v1/leader",
        "/rift/v1/agents/n/status",
        "/rift/v1/agents/n/events/e",
        "/rift/v1/agents/n/etcd",
        "/rift/v1/agents/n/tunnels/t",
        "/elsewhere/x",
    ] {
        assert!(!put(&mut v, key, json!({})), "{key}");
    }
    // A node status report decides when it changes what placement reads, not its usage alone.
    let status = "/rift/v1/agents/n1/status";
    assert!(
        put(&mut v, status, json!({"overloaded": true})),
        "overloaded decides"
    );
    assert!(
        !put(
            &mut v,
            status,
            json!({"overloaded": true, "usage": {"cpuPercent": 50.0}})
        ),
        "usage alone does not"
    );
    // Runtime reports: Running changes only what people see; finishing or a release decide.
    let report = "/rift/v1/agents/n1/jobs/b";
    assert!(!put(
        &mut v,
        report,
        json!({"phase": "Running", "epoch": 1})
    ));
    assert!(!put(
        &mut v,
        report,
        json!({"phase": "Running", "epoch": 1, "attempts": 2})
    ));
    assert!(put(&mut v, report, json!({"phase": "Failed", "epoch": 1})));
    assert!(put(
        &mut v,
        report,
        json!({"phase": "Failed", "epoch": 1, "released": true})
    ));
    assert!(
        v.apply(&WatchEvent::Delete {
            key: report.into(),
            mod_revision: 71,
            prev: None
        }),
        "a finished report going away"
    );
    assert!(!put(
        &mut v,
        report,
        json!({"phase": "Running", "epoch": 2})
    ));
    assert!(!v.apply(&WatchEvent::Delete {
        key: report.into(),
        mod_revision: 72,
        prev: None
    }));
}

#[test]
fn a_pool_members_running_or_model_report_starts_a_pass() {
    let mut v = listed(&cluster());
    let mut member = job("m", "um");
    member["metadata"]["ownerReferences"] =
        json!([{"kind": "Pool", "name": "p", "uid": "up", "controller": true}]);
    v.apply(&WatchEvent::Put(kv("/rift/v1/jobs/m", member, 80)));
    let put = |v: &mut ClusterView, value: Value| {
        v.apply(&WatchEvent::Put(kv("/rift/v1/agents/n1/jobs/m", value, 81)))
    };
    // The rollout's budget counts Running members; its prefetch gate reads the model.
    assert!(put(&mut v, json!({"phase": "Scheduled", "epoch": 1})));
    assert!(put(&mut v, json!({"phase": "Running", "epoch": 1})));
    assert!(put(
        &mut v,
        json!({"phase": "Running", "epoch": 1, "model": {"prefetched": "sha256-aa"}})
    ));
    // What the rollout does not read changes nothing.
    assert!(!put(
        &mut v,
        json!({"phase": "Running", "epoch": 1, "model": {"prefetched": "sha256-aa"},
               "progress": {"games": 3.0}})
    ));
    // Nor does why a model is missing (its text changes with each retry of a failing fetch).
    assert!(!put(
        &mut v,
        json!({"phase": "Running", "epoch": 1,
               "model": {"prefetched": "sha256-aa", "problem": "store down (try 4)"}})
    ));
}
