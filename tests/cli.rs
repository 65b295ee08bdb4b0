//! The `rift` binary as an operator uses it, against a real etcd.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::cli::{rift, rift_command, rift_stdin, KillOnDrop};
use support::etcd::EtcdCluster;

const EVERY_KIND: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/every-kind.yaml"
);

/// The etcd revision, read through etcdctl-free means: `rift` itself must not be trusted here.
fn revision(cluster: &EtcdCluster) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = cluster.client().await;
        c.get("/", None).await.unwrap().header().unwrap().revision()
    })
}

/// Every field of `written` is in `got` with the same value; `got` may have more (defaults).
fn assert_contains(got: &serde_json::Value, written: &serde_json::Value, path: &str) {
    match written.as_object() {
        Some(fields) => {
            for (k, v) in fields {
                assert_contains(&got[k], v, &format!("{path}.{k}"));
            }
        }
        None => assert_eq!(got, written, "{path}"),
    }
}

#[test]
fn apply_then_get_round_trips_every_kind() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let out = rift(&ep, &["apply", "-f", EVERY_KIND]);
    assert!(out.ok, "{}", out.stderr);
    for line in [
        "node/gh200-a created",
        "job/train-hex8 created",
        "pool/selfplay created",
        "trainingtarget/hex8-2p created",
        "voterset/default created",
        "tunnel/vast-1 created",
        "notifier/slack created",
    ] {
        assert!(
            out.stdout.contains(line),
            "`{line}` missing from:\n{}",
            out.stdout
        );
    }
    let docs: Vec<serde_json::Value> =
        serde_norway::Deserializer::from_str(&std::fs::read_to_string(EVERY_KIND).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        let got = rift(&ep, &["get", kind, name, "-o", "json"]);
        assert!(got.ok, "{kind}/{name}: {}", got.stderr);
        let got: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
        assert_eq!(got["metadata"]["generation"], 1, "{kind}");
        // Every field written comes back (defaults are added beside them).
        assert_contains(&got["spec"], &doc["spec"], &format!("{kind}/{name} spec"));
    }
    let table = rift(&ep, &["get", "nodes"]);
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(table.stdout.contains("1x GH200"), "{}", table.stdout);
}

#[test]
fn reapply_is_unchanged_and_writes_nothing() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    assert!(rift(&ep, &["apply", "-f", EVERY_KIND]).ok);
    let before = revision(&cluster);
    let again = rift(&ep, &["apply", "-f", EVERY_KIND]);
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(
        again.stdout.matches(" unchanged").count(),
        7,
        "{}",
        again.stdout
    );
    assert_eq!(revision(&cluster), before, "mod revision unchanged");
}

#[test]
fn spec_change_configures_and_bumps_generation() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    assert!(rift(&ep, &["apply", "-f", EVERY_KIND]).ok);
    let changed = std::fs::read_to_string(EVERY_KIND)
        .unwrap()
        .replace("replicas: 4", "replicas: 6");
    let out = rift_stdin(&ep, &["apply", "-f", "-"], &changed);
    assert!(
        out.stdout.contains("pool/selfplay configured"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("job/train-hex8 unchanged"),
        "{}",
        out.stdout
    );
    let pool: serde_json::Value =
        serde_json::from_str(&rift(&ep, &["get", "pool", "selfplay", "-o", "json"]).stdout)
            .unwrap();
    assert_eq!(pool["metadata"]["generation"], 2);
    assert_eq!(pool["spec"]["replicas"], 6);
}

#[test]
fn dry_run_validates_and_writes_nothing() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let before = revision(&cluster);
    let out = rift(&ep, &["apply", "--dry-run", "-f", EVERY_KIND]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("pool/selfplay created (dry run)"),
        "{}",
        out.stdout
    );
    assert_eq!(revision(&cluster), before);
}

const GOOD_JOB: &str =
    "apiVersion: rift/v1\nkind: Job\nmetadata:\n  name: good\nspec:\n  command: [\"true\"]\n";

/// Every bad input: a clear message naming where, a non-zero exit, and etcd untouched
/// (a valid document beside the bad one is not written either).
#[test]
fn bad_input_is_reported_precisely_and_changes_nothing() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let dir = tempfile::tempdir().unwrap();
    let big = format!(
        "{GOOD_JOB}---\n{}",
        GOOD_JOB.replace("good", "big").replace(
            "spec:\n",
            &format!("  annotations: {{a: '{}'}}\nspec:\n", "x".repeat(1_100_000))
        )
    );
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("malformed", format!("{GOOD_JOB}---\nkind: [Job\n"), vec!["malformed.yaml: document 2, line 9", "YAML syntax error"]),
        ("unknown-kind", format!("{GOOD_JOB}---\n{}", GOOD_JOB.replace("kind: Job", "kind: Pod")), vec!["document 2", "unknown kind `Pod`"]),
        ("unknown-api", GOOD_JOB.replace("rift/v1", "batch/v1"), vec!["document 1", "unknown apiVersion `batch/v1`"]),
        ("typo", format!("{GOOD_JOB}---\napiVersion: rift/v1\nkind: Pool\nmetadata: {{name: p}}\nspec:\n  replicsa: 2\n"),
            vec!["document 2 (Pool/p), line 12 column 3", "spec.replicsa: unknown field `replicsa`"]),
        ("wrong-type", GOOD_JOB.replace("spec:\n", "spec:\n  priority: high\n"), vec!["(Job/good), line 6", "spec.priority: invalid type: string \"high\""]),
        ("missing-field", GOOD_JOB.replace("  command: [\"true\"]\n", "  priority: 1\n"), vec!["(Job/good)", "missing field `command`"]),
        ("bad-name", GOOD_JOB.replace("name: good", "name: Bad_Name"), vec!["(Job/Bad_Name)", "metadata.name"]),
        ("dotdot-name", GOOD_JOB.replace("name: good", "name: ../x"), vec!["metadata.name", "not a valid name"]),
        ("long-name", GOOD_JOB.replace("name: good", &format!("name: {}", "a".repeat(64))), vec!["metadata.name", "at most 63"]),
        ("duplicate", format!("{GOOD_JOB}---\n{GOOD_JOB}"), vec!["document 2 (Job/good): also defined at"]),
        ("too-large", big, vec!["document 2", "1 MiB"]),
        ("empty", String::new(), vec!["empty.yaml: the input is empty"]),
    ];
    let before = revision(&cluster);
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let out = rift(&ep, &["apply", "-f", path.to_str().unwrap()]);
        assert!(!out.ok, "{name}: accepted");
        assert!(
            out.stderr.contains("nothing was changed"),
            "{name}: {}",
            out.stderr
        );
        for part in expected {
            assert!(
                out.stderr.contains(part),
                "{name}: `{part}` not in: {}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
        assert_eq!(revision(&cluster), before, "{name}: etcd was written");
    }
}

#[test]
fn unreachable_etcd_is_one_line_naming_the_endpoints() {
    let start = Instant::now();
    let out = rift("http://127.0.0.1:1,http://127.0.0.1:9", &["get", "jobs"]);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!out.ok);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("http://127.0.0.1:1,http://127.0.0.1:9"),
        "{}",
        out.stderr
    );
}

#[test]
fn endpoints_flag_works_before_and_after_the_subcommand() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    for args in [
        vec!["--endpoints", &ep, "get", "jobs"],
        vec!["get", "jobs", "--endpoints", &ep],
    ] {
        let out = rift_command("127.0.0.1:1", &args)
            .env("RIFT_CONFIG", cluster.admin_conf())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn names_plural_singular_and_short_all_work_and_lists_are_json_lists() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    assert!(rift(&ep, &["apply", "-f", EVERY_KIND]).ok);
    for kind in [
        "nodes",
        "node",
        "no",
        "jobs",
        "job",
        "pools",
        "trainingtargets",
        "tt",
        "voterset",
        "vs",
        "tunnels",
        "tun",
        "notifiers",
        "events",
        "ev",
    ] {
        let out = rift(&ep, &["get", kind, "-o", "json"]);
        assert!(out.ok, "{kind}: {}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["kind"], "List", "{kind}");
        assert_eq!(v["apiVersion"], "rift/v1", "{kind}");
    }
    let selected = rift(&ep, &["get", "nodes", "-l", "gpu=gh200", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&selected.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let none = rift(&ep, &["get", "nodes", "-l", "gpu=h100", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&none.stdout).unwrap();
    assert!(v["items"].as_array().unwrap().is_empty());
}

#[test]
fn describe_and_delete_by_name_and_by_file() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    assert!(rift(&ep, &["apply", "-f", EVERY_KIND]).ok);
    let d = rift(&ep, &["describe", "pool", "selfplay"]);
    assert!(
        d.ok && d.stdout.contains("Name:         selfplay")
            && d.stdout.contains("Size:         4 replicas"),
        "{}",
        d.stdout
    );

    let del = rift(&ep, &["delete", "pool", "selfplay"]);
    assert!(
        del.ok && del.stdout.contains("pool/selfplay deleted"),
        "{}",
        del.stdout
    );
    let missing = rift(&ep, &["get", "pool", "selfplay"]);
    assert!(!missing.ok && missing.stderr.contains("pool/selfplay not found"));

    let by_file = rift(&ep, &["delete", "-f", EVERY_KIND, "--ignore-not-found"]);
    assert!(by_file.ok, "{}", by_file.stderr);
    assert!(by_file.stdout.contains("node/gh200-a deleted"));
    let left = rift(&ep, &["get", "jobs", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&left.stdout).unwrap();
    assert!(v["items"].as_array().unwrap().is_empty());
}

#[test]
fn delete_takes_what_get_prints_and_a_label_selector_and_refuses_mixed_forms() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let jobs: String = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            let team = if *n == "d" { "blue" } else { "red" };
            format!("apiVersion: rift/v1\nkind: Job\nmetadata: {{name: {n}, labels: {{team: {team}}}}}\nspec: {{command: [\"true\"]}}\n---\n")
        })
        .collect();
    assert!(rift_stdin(&ep, &["apply", "-f", "-"], &jobs).ok);
    let names = |sel: &str| {
        let out = rift(&ep, &["get", "jobs", "-l", sel, "-o", "name"]);
        out.stdout.lines().map(str::to_string).collect::<Vec<_>>()
    };

    // Bad input first: each is refused before anything is deleted.
    for bad in [
        vec!["delete", "jobs", "a", "-l", "team=red"],
        vec!["delete", "job/a", "-l", "team=red"],
        vec!["delete", "jobs", "job/a"],
        vec!["delete", "job/"],
        vec!["delete", "widget/a"],
        vec!["delete", "jobs", "-l", "team in (red"],
        vec!["delete", "jobs"],
    ] {
        let out = rift(&ep, &bad);
        assert!(!out.ok, "{bad:?} was accepted");
        assert!(!out.stderr.trim().is_empty(), "{bad:?} said nothing");
        assert_eq!(names("team").len(), 4, "{bad:?} deleted something");
    }

    // `rift get -o name` output is what `rift delete` takes.
    let first = names("team=red")[0].clone();
    assert_eq!(first, "job/a");
    let out = rift(&ep, &["delete", &first]);
    assert!(
        out.ok && out.stdout.contains("job/a deleted"),
        "{}",
        out.stderr
    );
    // A selector deletes what it matches, and nothing else.
    let out = rift(&ep, &["delete", "jobs", "-l", "team=red"]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.matches(" deleted").count(), 2, "{}", out.stdout);
    assert_eq!(names("team"), vec!["job/d".to_string()]);
    let out = rift(&ep, &["delete", "jobs", "-l", "team=red"]);
    assert!(
        out.ok && out.stdout.contains("no jobs match"),
        "{}",
        out.stdout
    );
}

#[test]
fn get_watch_prints_a_change_made_by_another_process() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    let mut watch = KillOnDrop(
        rift_command(&ep, &["get", "jobs", "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = watch.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The header comes first: the watch is established once it is printed.
    let header = rx.recv_timeout(Duration::from_secs(10)).expect("a header");
    assert!(header.starts_with("NAME"), "{header}");
    let out = rift_stdin(&ep, &["apply", "-f", "-"], GOOD_JOB);
    assert!(out.ok, "{}", out.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.starts_with("good ") {
                return;
            }
            seen.push(line);
        }
    }
    panic!("the watch never printed job `good`; saw {seen:?}");
}

#[test]
fn checked_in_schemas_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let out = tempfile::tempdir().unwrap();
    let gen = rift(
        "127.0.0.1:1",
        &["crds", "--output-dir", out.path().to_str().unwrap()],
    );
    assert!(gen.ok, "{}", gen.stderr);
    let mut checked = 0;
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert_eq!(
            committed,
            std::fs::read_to_string(&path).unwrap(),
            "crds/{} is stale: run `cargo run -- crds --output-dir crds`",
            name.to_string_lossy()
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        2 * rift::api::kinds::KINDS.len(),
        "two files per kind"
    );
}
