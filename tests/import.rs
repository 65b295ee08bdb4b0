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
        count_lines(&out.stderr, "warning: 3 unknown field(s)"),
        1,
        "one warning"
    );
    assert!(out.stderr.contains(
        "hosts.vast-28810685.status_note, hosts.aws-cpu-1.owner, hosts.Mac_Mini_Office.tags"
    ));
    assert!(out
        .stderr
        .contains("ignored: sync_routing, auto_sync, elo_sync, board_configs"));
    let nodes = std::fs::read_to_string(out_dir.join("nodes.yaml")).unwrap();
    for left_out in [
        "#   lambda-gh200-g: status: retired",
        "#   runpod-old: status: destroyed",
        "#   vast-28799999: p2p_enabled: false",
        "#   aws-g5: status: destroyed",
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
fn stale_voters_are_refused_each_with_its_line() {
    let e = refused("malformed/voter-not-a-host.yaml");
    assert!(e.contains("has 3 problems"), "{e}");
    assert!(e.contains("voter-not-a-host.yaml:4: p2p_voters[1]: `lambda-gh200-old` is left out (status: retired)"), "{e}");
    assert!(
        e.contains("voter-not-a-host.yaml:5: p2p_voters[2]: `hetzner-cpu9` is not a host"),
        "{e}"
    );
    assert!(
        e.contains("voter-not-a-host.yaml:6: p2p_voters[3]: `vast-1` is NAT-blocked"),
        "{e}"
    );
}

#[test]
fn every_wrongly_typed_field_is_listed_with_its_line() {
    let e = refused("malformed/wrong-types.yaml");
    assert!(e.contains("has 7 problems"), "{e}");
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
