//! `rift import hosts` end to end: the real binary on fixture files, its output applied to a
//! real etcd with `rift apply --dry-run` and `rift apply`.

mod support;

use std::path::{Path, PathBuf};

use support::cli::{rift, rift_stdin};
use support::etcd::EtcdCluster;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// `rift import hosts ARGS` (no etcd needed).
fn import(args: &[&str]) -> support::cli::Run {
    let mut all = vec!["import", "hosts"];
    all.extend(args);
    rift("http://127.0.0.1:1", &all)
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn the_realistic_fleet_imports_passes_dry_run_and_applies() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("fleet");
    let out = import(&[
        &fixture("distributed_hosts.yaml"),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "", "with -o nothing goes to stdout");
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["nodes.yaml", "tunnels.yaml", "voterset.yaml"]);
    assert!(
        out.stderr
            .contains("imported 37 node(s) (3 cordoned), 15 tunnel(s), a VoterSet of 5 voter(s)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        count_lines(&out.stderr, "warning: 3 unknown host field(s)"),
        1,
        "one warning"
    );
    assert!(
        out.stderr.contains(
            "ignored: status_note (vast-28810685), owner (aws-cpu-1), tags (Mac_Mini_Office)"
        ),
        "{}",
        out.stderr
    );
    assert!(out
        .stderr
        .contains("ignored: sync_routing, auto_sync, elo_sync, board_configs"));
    let nodes = std::fs::read_to_string(out_dir.join("nodes.yaml")).unwrap();
    for left_out in [
        "#   lambda-gh200-g: status: retired",
        "#   runpod-old: status: destroyed",
        "#   vast-28799999: p2p_enabled: false",
        "#   aws-g5: status: terminated",
    ] {
        assert!(nodes.contains(left_out), "`{left_out}` missing");
    }

    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let dry = rift(
        &ep,
        &["apply", "--dry-run", "-f", out_dir.to_str().unwrap()],
    );
    assert!(dry.ok, "{}", dry.stderr);
    assert_eq!(count_lines(&dry.stdout, "created (dry run)"), 37 + 15 + 1);
    let listed = rift(&ep, &["get", "nodes", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        0,
        "a dry run writes nothing"
    );

    let applied = rift(&ep, &["apply", "-f", out_dir.to_str().unwrap()]);
    assert!(applied.ok, "{}", applied.stderr);
    assert_eq!(count_lines(&applied.stdout, " created"), 53);
    let vs = rift(&ep, &["get", "voterset", "default", "-o", "json"]);
    let vs: serde_json::Value = serde_json::from_str(&vs.stdout).unwrap();
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
    let vast = rift(&ep, &["get", "node", "vast-28810000", "-o", "json"]);
    let vast: serde_json::Value = serde_json::from_str(&vast.stdout).unwrap();
    assert_eq!(vast["spec"]["natBlocked"], true);
    assert_eq!(vast["spec"]["gpus"][0]["model"], "RTX 4090");
    assert_eq!(vast["spec"]["gpus"][0]["count"], 8);
    assert_eq!(
        vast["metadata"]["annotations"]["rift.dev/vast-instance-id"],
        "28810000"
    );
    let tunnels = rift(&ep, &["get", "tunnels", "-o", "json"]);
    let tunnels: serde_json::Value = serde_json::from_str(&tunnels.stdout).unwrap();
    assert_eq!(tunnels["items"].as_array().unwrap().len(), 15);

    // Importing again is a no-op for the cluster.
    let again = rift(&ep, &["apply", "-f", out_dir.to_str().unwrap()]);
    assert_eq!(
        count_lines(&again.stdout, " unchanged"),
        53,
        "{}",
        again.stdout
    );
}

#[test]
fn stdout_holds_the_same_objects_as_the_files_and_applies_from_stdin() {
    let out = import(&[&fixture("distributed_hosts.yaml")]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(count_lines(&out.stdout, "kind: Node"), 37);
    assert_eq!(count_lines(&out.stdout, "kind: Tunnel"), 15);
    assert_eq!(count_lines(&out.stdout, "kind: VoterSet"), 1);
    let cluster = EtcdCluster::single();
    let dry = rift_stdin(
        &cluster.endpoints_csv(),
        &["apply", "--dry-run", "-f", "-"],
        &out.stdout,
    );
    assert!(dry.ok, "{}", dry.stderr);
    assert_eq!(count_lines(&dry.stdout, "created (dry run)"), 53);
}

#[test]
fn relay_host_keys_from_ssh_keyscan_are_pinned_and_no_placeholder_remains() {
    let without = import(&[&fixture("distributed_hosts.yaml")]);
    assert!(without.stdout.contains("rift-import-placeholder"));
    assert_eq!(count_lines(&without.stderr, "no host key for relay(s)"), 1);
    assert!(without
        .stderr
        .contains("ssh-keyscan -t ed25519 100.64.2.1 100.64.2.2 100.64.1.1"));

    let with = import(&[
        &fixture("distributed_hosts.yaml"),
        "--known-hosts",
        &fixture("relays.keys"),
    ]);
    assert!(with.ok, "{}", with.stderr);
    assert!(
        !with.stdout.contains("placeholder"),
        "every relay has a key"
    );
    assert!(!with.stderr.contains("no host key"), "{}", with.stderr);
    let keys = std::fs::read_to_string(fixture("relays.keys")).unwrap();
    let hetzner1 = keys
        .lines()
        .find(|l| l.starts_with("100.64.2.1 "))
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1;
    assert!(with.stdout.contains(&format!("hetzner-cpu1: {hetzner1}")));
}

/// Runs an import of a malformed fixture into a fresh `-o` directory and returns stderr.
fn refused(name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out_dir: PathBuf = dir.path().join("out");
    let out = import(&[&fixture(name), "-o", out_dir.to_str().unwrap()]);
    assert!(!out.ok, "{name} was accepted:\n{}", out.stderr);
    assert!(!out_dir.exists(), "{name}: nothing may be written");
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out.stderr
}

#[test]
fn bad_yaml_is_refused_with_file_and_line() {
    let e = refused("malformed/bad-yaml.yaml");
    assert!(
        e.contains("malformed/bad-yaml.yaml:7: YAML syntax error"),
        "{e}"
    );
}

#[test]
fn a_banana_gpu_is_refused_with_file_line_and_field() {
    let e = refused("malformed/banana-gpu.yaml");
    assert!(
        e.contains("banana-gpu.yaml:9: hosts.vast-1.gpu: `banana` is not a GPU model"),
        "{e}"
    );
    assert!(e.contains("nothing was written"), "{e}");
}

#[test]
fn stale_voters_are_left_out_of_the_voter_set_each_with_a_warning_and_its_line() {
    let out = import(&[&fixture("stale-voters.yaml")]);
    assert!(out.ok, "{}", out.stderr);
    for warning in [
        "stale-voters.yaml:5: p2p_voters[1]: `lambda-gh200-old` left out of the VoterSet: it is left out (status: retired)",
        "stale-voters.yaml:6: p2p_voters[2]: `hetzner-cpu9` left out of the VoterSet: it is not a host",
        "stale-voters.yaml:7: p2p_voters[3]: `vast-1` left out of the VoterSet: it is NAT-blocked",
    ] {
        assert_eq!(count_lines(&out.stderr, warning), 1, "{warning}:\n{}", out.stderr);
    }
    assert!(
        out.stdout.contains(
            "kind: VoterSet\nmetadata:\n  name: default\nspec:\n  voters:\n  - hetzner-cpu1\n"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn a_voter_list_with_no_voter_left_is_refused() {
    let e = refused("malformed/no-voter-left.yaml");
    assert!(
        e.contains("no-voter-left.yaml:2: p2p_voters: no listed voter can be one"),
        "{e}"
    );
}

#[test]
fn every_wrongly_typed_field_is_listed_with_its_line() {
    let e = refused("malformed/wrong-types.yaml");
    assert!(e.contains("has 7 problems"), "{e}");
    assert!(e.contains("hosts.box-a.status: must be text"), "{e}");
    for (line, path) in [
        (3, "hosts.box-a.ssh_port"),
        (4, "hosts.box-a.cpus"),
        (5, "hosts.box-a.memory_gb"),
        (6, "hosts.box-a.selfplay_enabled"),
        (7, "hosts.box-a.status"),
        (9, "hosts.box-b.gpu"),
        (10, "hosts.box-b.tailscale_ip"),
    ] {
        assert!(
            e.contains(&format!("wrong-types.yaml:{line}: {path}:")),
            "{path}: {e}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_hosts_mapping_or_does_not_exist_is_refused() {
    let e = refused("malformed/not-a-mapping.yaml");
    assert!(
        e.contains("expected a mapping with a `hosts:` section"),
        "{e}"
    );
    let e = refused("no-such-file.yaml");
    assert!(e.contains("no-such-file.yaml: No such file"), "{e}");
}

#[test]
fn importing_again_into_the_same_directory_gives_the_same_files_and_drops_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("fleet");
    let o = out_dir.to_str().unwrap();
    assert!(import(&[&fixture("distributed_hosts.yaml"), "-o", o]).ok);
    let first = std::fs::read_to_string(out_dir.join("nodes.yaml")).unwrap();
    assert!(import(&[&fixture("distributed_hosts.yaml"), "-o", o]).ok);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("nodes.yaml")).unwrap(),
        first
    );

    // A later file without NAT-blocked hosts or voters: the old tunnels.yaml and voterset.yaml
    // (written by import) go; a file the operator added stays.
    std::fs::write(out_dir.join("extra.yaml"), "# mine\n").unwrap();
    let small = dir.path().join("small.yaml");
    std::fs::write(&small, "hosts:\n  box-1: {gpu: H100}\n").unwrap();
    let out = import(&[small.to_str().unwrap(), "-o", o]);
    assert!(out.ok, "{}", out.stderr);
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["extra.yaml", "nodes.yaml"]);
}

/// Every `(host, status)` of a hosts file, read independently of rift's importer.
fn hosts_of(path: &str) -> Vec<(String, serde_json::Value)> {
    let v: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, h)| (k.clone(), h.clone()))
        .collect()
}

/// Real versions of the old file, early (the template's shape) and late (40 hosts, ~50 fields,
/// statuses as an open string, GPUs as people typed them, stale voters): each imports, passes
/// `rift apply --dry-run`, applies, and every ready, p2p-enabled host is a schedulable Node;
/// any other status not retirement-like is a cordoned Node that keeps the old status.
#[test]
fn every_version_of_the_old_file_imports_and_its_ready_hosts_become_schedulable_nodes() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let retired = ["retired", "terminated", "archived", "destroyed"];
    for name in ["early-history.yaml", "late-history.yaml"] {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("fleet");
        let out = import(&[&fixture(name), "-o", out_dir.to_str().unwrap()]);
        assert!(out.ok, "{name}: {}", out.stderr);
        assert_eq!(
            count_lines(
                &out.stderr,
                "imported cordoned because their status is not `ready`"
            ),
            1,
            "{name}: one warning for every non-ready host:\n{}",
            out.stderr
        );
        let dry = rift(
            &ep,
            &["apply", "--dry-run", "-f", out_dir.to_str().unwrap()],
        );
        assert!(dry.ok, "{name}: {}", dry.stderr);
        let applied = rift(&ep, &["apply", "-f", out_dir.to_str().unwrap()]);
        assert!(applied.ok, "{name}: {}", applied.stderr);

        let listed = rift(&ep, &["get", "nodes", "-o", "json"]);
        let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
        let nodes: std::collections::HashMap<&str, &serde_json::Value> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["metadata"]["name"].as_str().unwrap(), n))
            .collect();
        for (host, h) in hosts_of(&fixture(name)) {
            let status = h["status"].as_str().unwrap_or("ready");
            let p2p = h["p2p_enabled"].as_bool().unwrap_or(true);
            let node = nodes.get(host.as_str());
            if !p2p || retired.contains(&status) {
                assert!(
                    out.stderr.contains(&format!("{host} (")),
                    "{name}: {host} is listed as left out"
                );
                continue;
            }
            let node = node.unwrap_or_else(|| panic!("{name}: {host} ({status}) is a Node"));
            let cordoned = node["spec"]["unschedulable"] == true;
            assert_eq!(cordoned, status != "ready", "{name}: {host} ({status})");
            if status != "ready" {
                assert_eq!(
                    node["metadata"]["annotations"]["rift.dev/imported-status"], status,
                    "{name}: {host}"
                );
            }
            let gpu = h["gpu"].as_str().unwrap_or("");
            let no_gpu = ["", "none", "None", "cpu only"].contains(&gpu);
            assert_eq!(
                node["spec"]["gpus"].as_array().is_none_or(Vec::is_empty),
                no_gpu,
                "{name}: {host} gpu `{gpu}`"
            );
        }
        // The next version replaces this one in the cluster (as an operator would).
        let deleted = rift(&ep, &["delete", "-f", out_dir.to_str().unwrap()]);
        assert!(deleted.ok, "{name}: {}", deleted.stderr);
    }
}

/// The late file's voter list names a retired, an offline, a NAT-blocked machine and one that
/// is not a host: each is left out with a warning; the rest are the VoterSet.
#[test]
fn a_late_file_with_stale_voters_keeps_the_voters_that_can_be() {
    let out = import(&[&fixture("late-history.yaml")]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        count_lines(&out.stderr, "left out of the VoterSet"),
        4,
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("voters:\n  - nebius-backbone-1\n  - hetzner-cpu1\n  - hetzner-cpu2\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("a VoterSet of 3 voter(s)"),
        "{}",
        out.stderr
    );
}
