//! `manifests/ringrift/`, the real fleet's desired state: it passes `rift apply --dry-run`
//! against a real etcd, and its objects refer to each other consistently (what a dry run
//! cannot see: voters and relays are reachable Nodes with the right roles, every Pool selects
//! some Node, every board configuration is trained and fed).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rift::api::manifest::{load_paths, Document};
use serde_json::Value;
use support::cli::rift;
use support::etcd::EtcdCluster;

fn fleet_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/ringrift")
}

fn by_kind(docs: &[Document]) -> BTreeMap<&str, Vec<&Value>> {
    let mut m: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for d in docs {
        m.entry(d.kind.kind).or_default().push(&d.object);
    }
    m
}

fn labels(v: &Value, at: &str) -> BTreeMap<String, String> {
    v.pointer(at)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_ringrift_fleet_passes_dry_run_and_applies() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let dir = fleet_dir();
    let dry = rift(&ep, &["apply", "--dry-run", "-f", dir.to_str().unwrap()]);
    assert!(dry.ok, "{}", dry.stderr);
    let count = |kind: &str| {
        dry.stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{kind}/")))
            .count()
    };
    assert_eq!(count("voterset"), 1);
    assert_eq!(count("trainingtarget"), 12);
    assert_eq!(count("notifier"), 1);
    assert!(count("node") >= 20, "{}", dry.stdout);
    assert!(count("tunnel") >= 5 && count("pool") >= 8, "{}", dry.stdout);
    let applied = rift(&ep, &["apply", "-f", dir.to_str().unwrap()]);
    assert!(applied.ok, "{}", applied.stderr);
    let vs = rift(&ep, &["get", "voterset", "default", "-o", "json"]);
    let vs: Value = serde_json::from_str(&vs.stdout).unwrap();
    assert_eq!(
        vs["spec"]["voters"],
        serde_json::json!([
            "nebius-backbone-1",
            "nebius-h100-3",
            "hetzner-cpu1",
            "hetzner-cpu2",
            "vultr-a100-20gb"
        ])
    );
}

#[test]
fn the_ringrift_fleet_refers_to_itself_consistently() {
    let docs = load_paths(&[fleet_dir()]).unwrap();
    let kinds = by_kind(&docs);
    let nodes: BTreeMap<&str, &Value> = kinds["Node"]
        .iter()
        .map(|n| (n["metadata"]["name"].as_str().unwrap(), *n))
        .collect();
    let roles = |n: &Value| -> BTreeSet<String> {
        n["spec"]["roles"]
            .as_array()
            .map(|r| r.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    for provider in ["nebius", "hetzner", "vultr", "runpod", "vast", "mac"] {
        assert!(
            nodes.values().any(|n| n["spec"]["provider"] == provider),
            "no {provider} node"
        );
    }

    for v in kinds["VoterSet"][0]["spec"]["voters"].as_array().unwrap() {
        let n = nodes[v.as_str().unwrap()];
        assert!(roles(n).contains("voter"), "{v} lacks the voter role");
        assert_eq!(n["spec"]["natBlocked"], false, "{v} is NAT-blocked");
    }

    let placeholder = "AAAAC3NzaC1lZDI1NTE5AAAAIFJFUExBQ0UtTUUtd2l0aC1zc2gta2V5c2Nhbi1rZXkh";
    let mut tunnelled = BTreeSet::new();
    for t in &kinds["Tunnel"] {
        let node = t["spec"]["node"].as_str().unwrap();
        assert_eq!(nodes[node]["spec"]["natBlocked"], true, "{node}");
        tunnelled.insert(node);
        for (relay, key) in t["spec"]["hostKeys"].as_object().unwrap() {
            assert!(roles(nodes[relay.as_str()]).contains("relay"), "{relay}");
            let key = key.as_str().unwrap();
            // A placeholder must say which relay's key replaces it.
            if key.contains(placeholder) {
                assert!(
                    key.ends_with(&format!("rift-placeholder-{relay}")),
                    "{node}: {key}"
                );
            }
        }
    }
    let nat: BTreeSet<&str> = nodes
        .iter()
        .filter(|(_, n)| n["spec"]["natBlocked"] == true)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(nat, tunnelled, "every NAT-blocked node has a Tunnel");

    let mut fed = BTreeSet::new();
    for p in &kinds["Pool"] {
        let sel = labels(p, "/spec/nodeSelector");
        let name = p["metadata"]["name"].as_str().unwrap();
        let matching: Vec<&Value> = nodes
            .values()
            .copied()
            .filter(|n| selects(&sel, &labels(n, "/metadata/labels")))
            .collect();
        assert!(!matching.is_empty(), "pool {name} selects no node");
        assert!(
            matching.iter().all(|n| n["spec"]["gpus"].is_array()),
            "pool {name} selects a node without GPUs"
        );
        let l = labels(p, "/spec/template/metadata/labels");
        fed.insert((l["board"].clone(), l["players"].clone()));
    }
    let mut trained = BTreeSet::new();
    for tt in &kinds["TrainingTarget"] {
        let sel = labels(tt, "/spec/selfplaySelector");
        trained.insert((sel["board"].clone(), sel["players"].clone()));
    }
    let all: BTreeSet<(String, String)> = ["hex8", "square8", "square19", "hexagonal"]
        .iter()
        .flat_map(|b| ["2", "3", "4"].map(|p| (b.to_string(), p.to_string())))
        .collect();
    assert_eq!(trained, all, "a TrainingTarget per board configuration");
    assert_eq!(fed, all, "selfplay for every board configuration");

    // Each Pool writes game shards and plays with the model of the TrainingTarget its games
    // feed (the target's selfplaySelector selects the shards' labels: the template's).
    for p in &kinds["Pool"] {
        let name = p["metadata"]["name"].as_str().unwrap();
        let from = p["spec"]["model"]["fromTrainingTarget"].as_str();
        let target = kinds["TrainingTarget"]
            .iter()
            .find(|t| Some(t["metadata"]["name"].as_str().unwrap()) == from)
            .unwrap_or_else(|| panic!("pool {name} takes its model from no TrainingTarget"));
        let shard_labels = labels(p, "/spec/template/metadata/labels");
        assert!(
            selects(&labels(target, "/spec/selfplaySelector"), &shard_labels),
            "pool {name} plays with {from:?}'s model but feeds another target"
        );
        assert_eq!(
            p["spec"]["template"]["spec"]["outputs"][0]["name"], "games",
            "{name}"
        );
    }
    for t in &kinds["TrainingTarget"] {
        assert_eq!(
            t["spec"]["training"]["spec"]["outputs"][0]["name"], "model",
            "{}",
            t["metadata"]["name"]
        );
    }
}
