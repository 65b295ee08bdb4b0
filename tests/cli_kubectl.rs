//! kubectl's habits in `rift`, as an operator types them: the real binary against a real etcd,
//! good input and bad. One cluster per test, shared by its cases.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use support::cli::{rift, rift_command, rift_stdin, Run};
use support::etcd::EtcdCluster;

const EVERY_KIND: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/every-kind.yaml"
);

fn ok(run: Run, what: &str) -> String {
    assert!(run.ok, "{what}: {}", run.stderr);
    run.stdout
}

fn refused(run: Run, what: &str, says: &str) {
    assert!(!run.ok, "{what} was accepted: {}", run.stdout);
    assert!(
        run.stderr.contains(says),
        "{what}: `{says}` not in: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
}

fn json(ep: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(rift(ep, &all), &all.join(" "))).unwrap()
}

#[test]
fn get_lists_names_paths_sorted_labelled_and_several_kinds() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    ok(rift(&ep, &["apply", "-f", EVERY_KIND]), "apply");
    let job = |name: &str, priority: i32| {
        format!("apiVersion: rift/v1\nkind: Job\nmetadata: {{name: {name}, labels: {{tier: t{priority}}}}}\nspec:\n  command: [\"true\"]\n  priority: {priority}\n")
    };
    ok(
        rift_stdin(
            &ep,
            &["apply", "-f", "-"],
            &format!("{}---\n{}", job("low", 1), job("high", 9)),
        ),
        "apply jobs",
    );

    assert_eq!(
        ok(rift(&ep, &["get", "jobs", "-o", "name"]), "-o name"),
        "job/high\njob/low\njob/train-hex8\n"
    );
    assert_eq!(
        ok(
            rift(
                &ep,
                &["get", "jobs", "-o", "jsonpath={.items[*].metadata.name}"]
            ),
            "jsonpath"
        ),
        "high low train-hex8\n"
    );
    assert_eq!(
        ok(
            rift(
                &ep,
                &[
                    "get",
                    "job",
                    "low",
                    "-o",
                    "jsonpath={.spec.priority}{\"/\"}{.metadata.labels.tier}"
                ]
            ),
            "jsonpath on one object"
        ),
        "1/t1\n"
    );
    let sorted = ok(
        rift(
            &ep,
            &["get", "jobs", "--sort-by", ".spec.priority", "-o", "name"],
        ),
        "sort-by",
    );
    assert_eq!(
        sorted, "job/train-hex8\njob/low\njob/high\n",
        "priority 0, 1, 9"
    );
    let labelled = ok(rift(&ep, &["get", "jobs", "--show-labels"]), "show-labels");
    assert!(
        labelled.lines().next().unwrap().ends_with("LABELS"),
        "{labelled}"
    );
    assert!(labelled.contains("tier=t9"), "{labelled}");

    let two_kinds = ok(rift(&ep, &["get", "jobs,nodes"]), "jobs,nodes");
    assert!(
        two_kinds.contains("job/low ") && two_kinds.contains("node/gh200-a "),
        "{two_kinds}"
    );
    let all = ok(rift(&ep, &["get", "all", "-o", "name"]), "all");
    for name in [
        "node/gh200-a",
        "job/low",
        "pool/selfplay",
        "trainingtarget/hex8-2p",
        "voterset/default",
        "tunnel/vast-1",
        "notifier/slack",
    ] {
        assert!(all.lines().any(|l| l == name), "{name} in: {all}");
    }
    let list = json(&ep, &["get", "job", "low", "high"]);
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Some names missing: what exists is printed, the rest named, and the command fails.
    let partly = rift(&ep, &["get", "job", "low", "nosuch", "-o", "name"]);
    assert!(!partly.ok);
    assert_eq!(partly.stdout, "job/low\n");
    assert!(
        partly.stderr.contains("job/nosuch not found"),
        "{}",
        partly.stderr
    );

    refused(
        rift(&ep, &["get", "pods"]),
        "unknown kind",
        "unknown resource type `pods`",
    );
    refused(
        rift(&ep, &["get", "jobs,pods"]),
        "unknown kind in a list",
        "unknown resource type `pods`",
    );
    refused(
        rift(&ep, &["get", "jobs", "-o", "jsonpath={.items["]),
        "bad jsonpath",
        "jsonpath `{.items[`",
    );
    refused(
        rift(&ep, &["get", "jobs", "-o", "xml"]),
        "bad format",
        "unknown output format `xml`",
    );
    refused(
        rift(&ep, &["get", "jobs", "--sort-by", "metadata.name"]),
        "bad sort path",
        "paths start with `.`",
    );
    refused(
        rift(&ep, &["get", "jobs", "-l", "=x"]),
        "bad selector",
        "=x",
    );
    refused(
        rift(&ep, &["get", "jobs,nodes", "low"]),
        "names with two kinds",
        "names go with one kind",
    );

    // Deleting what is not there says exactly that.
    let nosuch = rift(&ep, &["delete", "job", "nosuch"]);
    assert!(!nosuch.ok);
    assert_eq!(nosuch.stderr.trim(), "error: job/nosuch not found");
    let mixed = rift(&ep, &["delete", "job", "low", "nosuch"]);
    assert!(!mixed.ok && mixed.stdout.contains("job/low deleted"));
    assert!(
        mixed
            .stderr
            .contains("job/nosuch not found (1 other object(s) deleted)"),
        "{}",
        mixed.stderr
    );
}

#[test]
fn label_annotate_scale_explain_and_version_change_and_say_only_what_they_should() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    ok(rift(&ep, &["apply", "-f", EVERY_KIND]), "apply");
    let generation =
        |kind: &str, name: &str| json(&ep, &["get", kind, name])["metadata"]["generation"].clone();

    assert_eq!(
        ok(
            rift(&ep, &["label", "node", "gh200-a", "tier=a", "spot=yes"]),
            "label"
        )
        .trim(),
        "node/gh200-a labeled"
    );
    let node = json(&ep, &["get", "node", "gh200-a"]);
    assert_eq!(node["metadata"]["labels"]["tier"], "a");
    assert_eq!(node["metadata"]["generation"], 1, "labels are not spec");
    refused(
        rift(&ep, &["label", "node", "gh200-a", "tier=b"]),
        "relabel without --overwrite",
        "--overwrite",
    );
    ok(
        rift(
            &ep,
            &["label", "node", "gh200-a", "tier=b", "spot-", "--overwrite"],
        ),
        "overwrite and remove",
    );
    let labels = json(&ep, &["get", "node", "gh200-a"])["metadata"]["labels"].clone();
    assert_eq!(labels, serde_json::json!({"gpu": "gh200", "tier": "b"}));
    refused(
        rift(&ep, &["label", "node", "gh200-a", "tier"]),
        "bad label syntax",
        "KEY=VALUE",
    );
    refused(
        rift(&ep, &["label", "node", "gh200-a", "zone=not ok"]),
        "bad label value",
        "would be invalid, nothing was changed",
    );
    refused(
        rift(&ep, &["label", "node", "nosuch", "a=b"]),
        "missing object",
        "node/nosuch not found",
    );
    refused(
        rift(&ep, &["label", "pods", "x", "a=b"]),
        "unknown kind",
        "unknown resource type `pods`",
    );
    ok(
        rift(
            &ep,
            &["annotate", "job", "train-hex8", "note=rerun after the fix"],
        ),
        "annotate",
    );
    assert_eq!(
        json(&ep, &["get", "job", "train-hex8"])["metadata"]["annotations"]["note"],
        "rerun after the fix"
    );

    assert_eq!(
        ok(
            rift(&ep, &["scale", "pool", "selfplay", "--replicas", "7"]),
            "scale"
        )
        .trim(),
        "pool/selfplay scaled to 7"
    );
    assert_eq!(
        json(&ep, &["get", "pool", "selfplay"])["spec"]["replicas"],
        7
    );
    assert_eq!(generation("pool", "selfplay"), 2, "a spec change");
    refused(
        rift(&ep, &["scale", "job", "train-hex8", "--replicas", "2"]),
        "scaling a job",
        "only pools can be scaled",
    );
    refused(
        rift(&ep, &["scale", "pool", "selfplay", "--replicas", "-1"]),
        "negative replicas",
        "-1",
    );
    let per_gpu = "apiVersion: rift/v1\nkind: Pool\nmetadata: {name: every-gpu}\nspec:\n  perGpu: true\n  template:\n    spec:\n      command: [\"true\"]\n      resources: {gpus: 1}\n";
    ok(
        rift_stdin(&ep, &["apply", "-f", "-"], per_gpu),
        "apply perGpu pool",
    );
    refused(
        rift(&ep, &["scale", "pool", "every-gpu", "--replicas", "3"]),
        "scaling a perGpu pool",
        "perGpu: true",
    );
    assert!(
        json(&ep, &["get", "pool", "every-gpu"])["spec"]
            .get("replicas")
            .is_none(),
        "unchanged"
    );

    let explained = ok(rift(&ep, &["explain", "pool.spec.replicas"]), "explain");
    assert!(
        explained.contains("FIELD:    spec.replicas <integer>"),
        "{explained}"
    );
    let top = ok(rift(&ep, &["explain", "trainingtarget"]), "explain a kind");
    assert!(
        top.contains("KIND:     TrainingTarget") && top.contains("spec\t<TrainingTargetSpec>"),
        "{top}"
    );
    refused(
        rift(&ep, &["explain", "job.spec.replicas"]),
        "unknown field",
        "field `replicas` does not exist in Job.spec",
    );
    refused(
        rift(&ep, &["explain", "pods"]),
        "unknown kind",
        "unknown resource type `pods`",
    );

    let version = json(&ep, &["version"]);
    assert_eq!(version["client"], env!("CARGO_PKG_VERSION"));
    assert!(
        version["etcd"].as_str().unwrap().starts_with('3'),
        "{version}"
    );
    assert!(
        !version["clusterId"].as_str().unwrap().is_empty(),
        "{version}"
    );
    let offline = rift("http://127.0.0.1:1", &["version"]);
    assert!(!offline.ok, "an unreachable cluster is an error");
    assert!(
        offline
            .stdout
            .contains(concat!("Client:      rift ", env!("CARGO_PKG_VERSION"))),
        "{}",
        offline.stdout
    );
    assert!(ok(
        rift("http://127.0.0.1:1", &["version", "--client"]),
        "client only"
    )
    .contains("rift "));

    let top_nodes = ok(rift(&ep, &["top", "nodes"]), "top nodes");
    assert!(
        top_nodes.starts_with("NAME ") && top_nodes.contains("gh200-a "),
        "{top_nodes}"
    );
    refused(
        rift(&ep, &["top", "jobs"]),
        "top jobs",
        "only `rift top nodes`",
    );
}

/// A script used as `$EDITOR`: each run does the next step of `steps` (shell snippets with
/// `$1` as the file), counting runs in `counter`.
fn editor(dir: &Path, steps: &[&str]) -> String {
    let counter = dir.join("runs");
    let mut script = format!("#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > '{c}'\ncase $n in\n", c = counter.display());
    for (i, step) in steps.iter().enumerate() {
        script += &format!("  {}) {step} ;;\n", i + 1);
    }
    script += "esac\n";
    let path = dir.join(format!("editor-{}.sh", steps.len()));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn edit(ep: &str, editor: &str, args: &[&str]) -> Run {
    let mut all = vec!["edit"];
    all.extend(args);
    rift_command(ep, &all)
        .env("RIFT_EDITOR", editor)
        .output()
        .unwrap()
        .into()
}

#[test]
fn edit_validates_merges_a_concurrent_change_and_reopens_on_bad_input_or_a_real_conflict() {
    let cluster = EtcdCluster::single();
    let ep = cluster.endpoints_csv();
    ok(rift(&ep, &["apply", "-f", EVERY_KIND]), "apply");
    let pool = || json(&ep, &["get", "pool", "selfplay"]);

    // A plain edit.
    let dir = tempfile::tempdir().unwrap();
    let e = editor(dir.path(), &[r#"sed -i 's/replicas: 4/replicas: 5/' "$1""#]);
    assert_eq!(
        ok(edit(&ep, &e, &["pool", "selfplay"]), "edit").trim(),
        "pool/selfplay edited"
    );
    assert_eq!(pool()["spec"]["replicas"], 5);

    // Unchanged: cancelled, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let e = editor(dir.path(), &["true"]);
    assert!(ok(edit(&ep, &e, &["pool", "selfplay"]), "no change")
        .contains("edit cancelled, no changes made"));
    assert_eq!(pool()["metadata"]["generation"], 2);

    // Invalid input reopens the editor with the reason on top; the fix then applies.
    let dir = tempfile::tempdir().unwrap();
    let e = editor(
        dir.path(),
        &[
            r#"sed -i 's/replicas: 5/replicsa: 6/' "$1""#,
            &format!(
                r#"grep -q 'unknown field' "$1" && cp "$1" '{}' && sed -i 's/replicsa: 6/replicas: 6/' "$1""#,
                dir.path().join("seen").display()
            ),
        ],
    );
    let run = edit(&ep, &e, &["pool", "selfplay"]);
    assert!(
        run.stderr.contains("reopening the editor"),
        "{}",
        run.stderr
    );
    assert_eq!(ok(run, "edit after a fix").trim(), "pool/selfplay edited");
    let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
    assert!(
        seen.starts_with("# The edit is not valid:"),
        "the reason on top: {seen}"
    );
    assert_eq!(pool()["spec"]["replicas"], 6);

    // Invalid input left as it is: cancelled with an error, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let e = editor(
        dir.path(),
        &[r#"sed -i 's/replicas: 6/replicas: many/' "$1""#, "true"],
    );
    refused(
        edit(&ep, &e, &["pool", "selfplay"]),
        "invalid edit left as it is",
        "no valid changes were saved",
    );
    assert_eq!(pool()["spec"]["replicas"], 6);

    // Someone else labels the pool while it is open: both changes land.
    let dir = tempfile::tempdir().unwrap();
    let other = format!(
        r#"RIFT_ENDPOINTS='{ep}' '{bin}' label pool selfplay by=other >/dev/null && sed -i 's/replicas: 6/replicas: 8/' "$1""#,
        bin = support::cli::rift_bin()
    );
    let e = editor(dir.path(), &[&other]);
    assert_eq!(
        ok(edit(&ep, &e, &["pool", "selfplay"]), "merged edit").trim(),
        "pool/selfplay edited"
    );
    let p = pool();
    assert_eq!(
        (
            p["spec"]["replicas"].clone(),
            p["metadata"]["labels"]["by"].clone()
        ),
        (serde_json::json!(8), serde_json::json!("other"))
    );

    // Someone else changes the same field: the editor reopens on the current object, and
    // leaving it as it is cancels; their value stays.
    let dir = tempfile::tempdir().unwrap();
    let other = format!(
        r#"RIFT_ENDPOINTS='{ep}' '{bin}' scale pool selfplay --replicas 9 >/dev/null && sed -i 's/replicas: 8/replicas: 10/' "$1""#,
        bin = support::cli::rift_bin()
    );
    let e = editor(
        dir.path(),
        &[
            &other,
            &format!(r#"cp "$1" '{}'"#, dir.path().join("seen").display()),
        ],
    );
    refused(
        edit(&ep, &e, &["pool", "selfplay"]),
        "a real conflict left alone",
        "no valid changes were saved",
    );
    let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
    assert!(
        seen.contains("in the same field(s) as you: spec.replicas"),
        "{seen}"
    );
    assert!(seen.contains("replicas: 9"), "the current object: {seen}");
    assert_eq!(pool()["spec"]["replicas"], 9);

    refused(
        edit(&ep, "true", &["pool", "nosuch"]),
        "a missing object",
        "pool/nosuch not found",
    );
    refused(
        edit(&ep, "true", &["pods", "x"]),
        "an unknown kind",
        "unknown resource type `pods`",
    );
    let dir = tempfile::tempdir().unwrap();
    let e = editor(
        dir.path(),
        &[r#"sed -i 's/name: selfplay/name: other/' "$1""#, "true"],
    );
    refused(
        edit(&ep, &e, &["pool", "selfplay"]),
        "a renamed object",
        "no valid changes were saved",
    );
}
