use super::*;
use crate::api::manifest;
use crate::import::render;

fn fleet(text: &str) -> Fleet {
    convert("hosts.yaml", text, &ImportOptions::default()).unwrap()
}

fn problems(text: &str) -> Vec<Problem> {
    match convert("hosts.yaml", text, &ImportOptions::default()) {
        Err(ImportError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn node<'a>(f: &'a Fleet, name: &str) -> &'a ImportedNode {
    f.nodes
        .iter()
        .find(|n| n.node.metadata.name == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

const REALISTIC: &str = include_str!("../../../tests/fixtures/import/distributed_hosts.yaml");

#[test]
fn every_host_field_lands_in_the_node() {
    let f = fleet(
        "hosts:\n  box-1:\n    ssh_host: ubuntu@203.0.113.5\n    ssh_port: 2222\n    tailscale_ip: 100.64.0.5\n    \
         cpus: 64\n    memory_gb: 480\n    gpu: 8x RTX 4090\n    gpu_vram_gb: 24\n    role: nn_training\n    \
         status: ready\n    p2p_enabled: true\n    selfplay_enabled: false\n    training_enabled: true\n    \
         is_container: true\n    vast_instance_id: 42\n",
    );
    let n = &node(&f, "box-1").node;
    assert_eq!(
        n.spec.addresses,
        ["100.64.0.5", "203.0.113.5"],
        "tailscale first"
    );
    assert_eq!(n.spec.provider, "vast", "from vast_instance_id");
    assert_eq!(n.spec.gpus.len(), 1);
    let g = &n.spec.gpus[0];
    assert_eq!(
        (g.model.as_str(), g.count, g.memory_gb),
        ("RTX 4090", 8, Some(24.0))
    );
    assert!(!n.spec.nat_blocked && !n.spec.unschedulable);
    let labels: Vec<(&str, &str)> = n
        .metadata
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("container", "true"),
            ("gpu", "rtx-4090"),
            ("provider", "vast"),
            ("role", "nn-training"),
            ("selfplay", "false"),
            ("training", "true"),
        ]
    );
    let a = &n.metadata.annotations;
    assert_eq!(a["rift.dev/ssh-user"], "ubuntu");
    assert_eq!(a["rift.dev/ssh-port"], "2222");
    assert_eq!(a["rift.dev/declared-cpus"], "64");
    assert_eq!(a["rift.dev/declared-memory-gb"], "480");
    assert_eq!(a["rift.dev/vast-instance-id"], "42");
    assert_eq!(a[IMPORTED_FROM], "hosts.yaml: hosts.box-1");
    assert!(f.voter_set.is_none());
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
}

#[test]
fn retirement_like_and_p2p_disabled_hosts_are_left_out_with_the_status_as_written() {
    let f = fleet(
        "hosts:\n  a: {status: retired}\n  b: {status: destroyed}\n  c: {status: terminated}\n  \
         d: {p2p_enabled: false}\n  e: {status: Archived}\n  g: {status: ready}\n",
    );
    assert_eq!(
        f.left_out,
        [
            ("a".to_string(), "status: retired".to_string()),
            ("b".into(), "status: destroyed".into()),
            ("c".into(), "status: terminated".into()),
            ("d".into(), "p2p_enabled: false".into()),
            ("e".into(), "status: Archived".into()),
        ]
    );
    let names: Vec<&str> = f
        .nodes
        .iter()
        .map(|n| n.node.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["g"]);
    let text = render::stream(&f, "hosts.yaml");
    assert!(text.contains("#   a: status: retired\n"), "{text}");
    assert!(text.contains("#   d: p2p_enabled: false\n"), "{text}");
}

/// The old orchestrator treats `status` as an open string and gives work only to `ready`
/// hosts: every other status imports cordoned, keeps the old status, and is named in one
/// warning.
#[test]
fn any_other_status_imports_cordoned_with_the_old_status_and_one_warning() {
    let statuses = [
        "offline",
        "proxy_only",
        "pending_setup",
        "needs_setup",
        "needs_tailscale_auth",
        "ssh_key_rejected",
        "setup",
        "stopped",
        "unstable",
        "disabled",
        "maintenance",
        "something new",
    ];
    let mut text = String::from("hosts:\n  ok: {status: READY}\n");
    for (i, st) in statuses.iter().enumerate() {
        text += &format!("  h{i}: {{status: '{st}'}}\n");
    }
    let f = fleet(&text);
    assert!(f.left_out.is_empty(), "{:?}", f.left_out);
    assert!(!node(&f, "ok").node.spec.unschedulable);
    assert!(!node(&f, "ok")
        .node
        .metadata
        .annotations
        .contains_key(IMPORTED_STATUS));
    for (i, st) in statuses.iter().enumerate() {
        let n = &node(&f, &format!("h{i}")).node;
        assert!(n.spec.unschedulable, "{st}: cordoned");
        assert_eq!(n.metadata.annotations[IMPORTED_STATUS], *st);
    }
    let cordoned: Vec<&String> = f
        .warnings
        .iter()
        .filter(|w| w.contains("imported cordoned"))
        .collect();
    assert_eq!(cordoned.len(), 1, "one warning: {:?}", f.warnings);
    assert!(
        cordoned[0].starts_with("12 host(s) imported cordoned"),
        "{}",
        cordoned[0]
    );
    assert!(
        cordoned[0].contains("offline: h0; proxy_only: h1;"),
        "{}",
        cordoned[0]
    );
}
#[test]
fn voters_become_the_voter_set_with_voter_and_controller_roles() {
    let f = fleet("p2p_voters: [a, b, c]\nhosts:\n  a: {}\n  b: {}\n  c: {}\n  d: {}\n");
    assert_eq!(f.voter_set.as_ref().unwrap().spec.voters, ["a", "b", "c"]);
    assert_eq!(
        node(&f, "a").node.spec.roles,
        [NodeRole::Voter, NodeRole::Controller]
    );
    assert!(node(&f, "d").node.spec.roles.is_empty());
}

#[test]
fn a_voter_that_cannot_be_one_is_left_out_of_the_voter_set_with_a_warning_and_its_line() {
    let text = "p2p_voters:\n  - a\n  - ghost\n  - n\n  - r\n  - o\n  - a\nhosts:\n  a: {}\n  n:\n    nat_blocked: true\n  r:\n    status: retired\n  o:\n    status: offline\n";
    let f = fleet(text);
    assert_eq!(f.voter_set.as_ref().unwrap().spec.voters, ["a"]);
    assert_eq!(
        node(&f, "a").node.spec.roles,
        [NodeRole::Voter, NodeRole::Controller]
    );
    assert!(
        node(&f, "o").node.spec.roles.is_empty(),
        "not a voter: no voter role"
    );
    let voter_warnings: Vec<&String> = f
        .warnings
        .iter()
        .filter(|w| w.contains("left out of the VoterSet"))
        .collect();
    assert_eq!(voter_warnings.len(), 5, "{:?}", f.warnings);
    for (w, expected) in voter_warnings.iter().zip([
        "hosts.yaml:3: p2p_voters[1]: `ghost` left out of the VoterSet: it is not a host",
        "hosts.yaml:4: p2p_voters[2]: `n` left out of the VoterSet: it is NAT-blocked",
        "hosts.yaml:5: p2p_voters[3]: `r` left out of the VoterSet: it is left out (status: retired)",
        "hosts.yaml:6: p2p_voters[4]: `o` left out of the VoterSet: its status is `offline`",
        "p2p_voters[5]: `a` left out of the VoterSet: it is listed twice",
    ]) {
        assert!(w.contains(expected), "`{expected}` not in `{w}`");
    }
}

#[test]
fn when_no_listed_voter_remains_it_is_an_error() {
    let p = problems("p2p_voters: [ghost, r]\nhosts:\n  a: {}\n  r: {status: retired}\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].path.as_str(), p[0].line), ("p2p_voters", Some(1)));
    assert!(
        p[0].message.contains("no listed voter can be one"),
        "{}",
        p[0].message
    );
}
#[test]
fn nat_blocked_hosts_get_a_tunnel_through_their_named_relay() {
    let text = "hosts:\n  relay-1:\n    ssh_host: root@198.51.100.1\n    ssh_port: 2200\n    relay_capable: true\n  \
                relay-2:\n    tailscale_ip: 100.64.0.2\n  \
                vast-1:\n    nat_blocked: true\n    relay_primary: relay-1\n    relay_secondary: relay-2\n";
    let known = KnownHosts::parse(
        "keys",
        "198.51.100.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRealKeyOne\n",
    )
    .unwrap();
    let f = convert(
        "hosts.yaml",
        text,
        &ImportOptions {
            known_hosts: known,
            ..ImportOptions::default()
        },
    )
    .unwrap();
    let n = node(&f, "vast-1");
    assert!(n.node.spec.nat_blocked);
    let t = n.tunnel.as_ref().unwrap();
    assert_eq!(t.spec.relay, "relay-1");
    assert_eq!(t.spec.ssh_user, "rift", "never the old file's root login");
    assert_eq!(
        t.spec.host_keys["relay-1"],
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRealKeyOne"
    );
    assert_eq!(t.spec.host_keys["relay-2"], PLACEHOLDER_HOST_KEY);
    assert_eq!(t.spec.ports[0].local_port, DEFAULT_AGENT_PORT);
    assert!(t.validate().is_empty());
    assert!(n.tunnel_notes[0].contains("hostKeys.relay-2 is a PLACEHOLDER"));
    assert!(n.tunnel_notes[0].contains("ssh-keyscan -t ed25519 100.64.0.2"));
    assert_eq!(
        node(&f, "relay-2").node.spec.roles,
        [NodeRole::Relay],
        "named as a relay"
    );
    assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
    assert!(f.warnings[0].contains("relay-2") && !f.warnings[0].contains("relay-1,"));
}

#[test]
fn without_a_named_relay_the_tunnel_is_auto_over_every_relay() {
    let f = fleet(
        "hosts:\n  r1: {relay_capable: true}\n  r2: {relay_primary: true}\n  plain: {}\n  \
         v1: {nat_blocked: true}\n  v2: {nat_blocked: true}\n",
    );
    let t1 = node(&f, "v1").tunnel.as_ref().unwrap();
    assert_eq!(t1.spec.relay, AUTO_RELAY);
    assert_eq!(t1.spec.host_keys.keys().collect::<Vec<_>>(), ["r1", "r2"]);
    let t2 = node(&f, "v2").tunnel.as_ref().unwrap();
    assert_ne!(t1.spec.ports[0].remote_port, t2.spec.ports[0].remote_port);
    // Stable: the same name gets the same port in another import.
    let again = fleet("hosts:\n  r1: {relay_capable: true}\n  v2: {nat_blocked: true}\n");
    assert_eq!(
        node(&again, "v2").tunnel.as_ref().unwrap().spec.ports,
        t2.spec.ports
    );
}

#[test]
fn a_nat_blocked_host_with_no_relay_gets_no_tunnel_and_a_warning() {
    let f = fleet("hosts:\n  v1: {nat_blocked: true}\n");
    assert!(node(&f, "v1").tunnel.is_none());
    assert!(
        f.warnings[0].contains("no relay exists"),
        "{:?}",
        f.warnings
    );
}

#[test]
fn a_relay_reference_that_cannot_relay_is_ignored_with_a_warning_and_another_relay_used() {
    let f = fleet(
        "hosts:\n  relay-1: {relay_capable: true}\n  gone: {relay_capable: true, status: retired}\n  \
         v1:\n    nat_blocked: true\n    relay_primary: nowhere\n  v2:\n    nat_blocked: true\n    relay_primary: v1\n  \
         v3:\n    nat_blocked: true\n    relay_primary: gone\n    relay_secondary: relay-1\n",
    );
    let relay_of = |n: &str| node(&f, n).tunnel.as_ref().unwrap().spec.relay.clone();
    assert_eq!(relay_of("v1"), AUTO_RELAY);
    assert_eq!(relay_of("v2"), AUTO_RELAY);
    assert_eq!(relay_of("v3"), "relay-1", "the secondary takes over");
    let w = f.warnings.join("\n");
    assert!(
        w.contains(
            "hosts.yaml:6: hosts.v1.relay_primary: relay `nowhere` ignored: it is not a host"
        ),
        "{w}"
    );
    assert!(
        w.contains("relay `v1` ignored: it is NAT-blocked itself"),
        "{w}"
    );
    assert!(
        w.contains("relay `gone` ignored: it is left out (status: retired)"),
        "{w}"
    );
}
#[test]
fn unknown_fields_are_one_warning_and_extra_sections_one_note() {
    let f = fleet("hosts:\n  a: {owner: me, colour: red}\n  b: {ssh_key: ~/.ssh/x, ringrift_path: /x, owner: you}\n  \
                   c: {owner: x}\n  d: {owner: y}\nsync_routing: {}\nelo_sync: {}\n");
    assert_eq!(f.warnings.len(), 1);
    assert_eq!(
        f.warnings[0],
        "2 unknown host field(s) ignored: owner (4 hosts), colour (a)"
    );
    assert!(
        f.notes[0].contains("sync_routing, elo_sync"),
        "{:?}",
        f.notes
    );
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let e = convert(
        "hosts.yaml",
        "hosts:\n  a: {gpu: [unclosed\n",
        &ImportOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ImportError::Syntax { line: Some(_), .. }),
        "{msg}"
    );
    assert!(msg.starts_with("hosts.yaml:"), "{msg}");
}

#[test]
fn a_gpu_that_is_not_a_gpu_is_refused_with_its_path_and_line() {
    let text = "hosts:\n  ok:\n    gpu: H100\n  bad:\n    cpus: 8\n    gpu: \"banana\"\n";
    let p = problems(text);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].path.as_str(), p[0].line), ("hosts.bad.gpu", Some(6)));
    let msg = convert("hosts.yaml", text, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hosts.yaml:6: hosts.bad.gpu: `banana` is not a GPU model"),
        "{msg}"
    );
}

#[test]
fn every_wrongly_typed_field_is_reported_at_once() {
    let p = problems(
        "hosts:\n  a:\n    ssh_port: 99999\n    cpus: many\n    nat_blocked: maybe\n    status: [a, list]\n    memory_gb: -4\n  \
         B@d: {}\n",
    );
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "hosts.a.ssh_port",
            "hosts.a.cpus",
            "hosts.a.nat_blocked",
            "hosts.a.status",
            "hosts.a.memory_gb",
            "hosts.B@d",
        ]
    );
    assert!(p.iter().all(|p| p.line.is_some()), "{p:?}");
}

#[test]
fn host_names_are_made_node_names_and_clashes_refused() {
    let f = fleet("p2p_voters: [Mac_Studio.1]\nhosts:\n  Mac_Studio.1: {}\n");
    assert_eq!(f.nodes[0].node.metadata.name, "mac-studio-1");
    assert_eq!(f.voter_set.unwrap().spec.voters, ["mac-studio-1"]);
    let p = problems("hosts:\n  box_1: {}\n  box-1: {}\n");
    assert!(p[0].message.contains("as `box_1` does"), "{:?}", p);
}

#[test]
fn a_file_without_hosts_or_with_only_retired_ones_is_an_error() {
    assert_eq!(problems("p2p_voters: []\n")[0].path, "hosts");
    assert!(problems("hosts:\n  a: {status: retired}\n")[0]
        .message
        .contains("no host is left"));
}

#[test]
fn providers_are_inferred_from_ids_names_addresses_and_gpus() {
    let f = fleet(
        "hosts:\n  lambda-gh200-a: {}\n  x1: {runpod_pod_id: abc}\n  x2: {ssh_host: ssh4.vast.ai}\n  \
         x3: {gpu: M3 Max (MPS)}\n  x4: {provider: Oracle}\n  x5: {}\n",
    );
    let got: Vec<&str> = f
        .nodes
        .iter()
        .map(|n| n.node.spec.provider.as_str())
        .collect();
    assert_eq!(got, ["lambda", "runpod", "vast", "mac", "oracle", ""]);
}

#[test]
fn the_realistic_fleet_converts_and_every_document_decodes_as_a_manifest() {
    let f = fleet(REALISTIC);
    assert!(f.nodes.len() >= 35, "{}", f.nodes.len());
    assert_eq!(
        f.voter_set.as_ref().unwrap().spec.voters,
        [
            "nebius-backbone-1",
            "nebius-h100-3",
            "hetzner-cpu1",
            "hetzner-cpu2",
            "vultr-a100-20gb"
        ]
    );
    let nat = f.nodes.iter().filter(|n| n.node.spec.nat_blocked).count();
    let tunnels = f.nodes.iter().filter(|n| n.tunnel.is_some()).count();
    assert_eq!(nat, tunnels, "every NAT-blocked host has a tunnel");
    assert!(tunnels >= 10);
    let docs = manifest::parse_str("import", &render::stream(&f, "x")).unwrap();
    assert_eq!(docs.len(), 1 + f.nodes.len() + tunnels);
    let split: usize = render::files(&f, "x")
        .iter()
        .map(|(_, text)| manifest::parse_str("file", text).unwrap().len())
        .sum();
    assert_eq!(split, docs.len(), "the files hold the same objects");
}
