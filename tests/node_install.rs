//! `config/`: the install script is idempotent, the node config it writes loads, the example
//! config documents every field the agent reads, and the systemd unit keeps jobs alive.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rift::agent::config::{AgentConfig, ConfigFile, Overrides};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn install(root: &Path, args: &[&str]) -> Run {
    let out = Command::new("bash")
        .arg(repo("config/install-node.sh"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every path under `root` with its mode and contents.
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (mode, Vec::new()));
                walk(&p, root, out);
            } else {
                out.insert(rel, (mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn installing_twice_gives_the_same_tree_and_the_second_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let bin = support::cli::rift_bin();
    let example = repo("config/node.example.yaml");
    let args = ["--binary", bin, "--config", example.to_str().unwrap()];
    let first = install(root.path(), &args);
    assert!(first.ok, "{}", first.stderr);
    for line in [
        "installed  /usr/local/bin/rift",
        "installed  /etc/rift/node.yaml",
        "installed  /etc/systemd/system/rift-agent.service",
        "created    /var/lib/rift/",
        "skipped    systemctl",
    ] {
        assert!(
            first.stdout.contains(line),
            "`{line}` missing:\n{}",
            first.stdout
        );
    }
    let after_first = tree(root.path());
    assert_eq!(
        after_first.keys().cloned().collect::<Vec<_>>(),
        [
            "etc/",
            "etc/rift/",
            "etc/rift/node.yaml",
            "etc/rift/secrets/",
            "etc/systemd/",
            "etc/systemd/system/",
            "etc/systemd/system/rift-agent.service",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/rift",
            "var/",
            "var/lib/",
            "var/lib/rift/",
        ]
    );
    assert_eq!(after_first["usr/local/bin/rift"].0, 0o755);
    assert_eq!(
        after_first["var/lib/rift/"].0, 0o700,
        "the state is private"
    );
    assert_eq!(
        after_first["etc/rift/secrets/"].0, 0o700,
        "so are envFrom files"
    );
    assert_eq!(
        after_first["usr/local/bin/rift"].1,
        std::fs::read(bin).unwrap()
    );

    let second = install(root.path(), &args);
    assert!(second.ok, "{}", second.stderr);
    assert_eq!(
        tree(root.path()),
        after_first,
        "the second run changed the tree"
    );
    assert!(!second.stdout.contains("installed"), "{}", second.stdout);
    assert!(second.stdout.contains("unchanged  /usr/local/bin/rift"));
    assert!(second
        .stdout
        .contains("kept       /etc/rift/node.yaml (exists; --force to overwrite)"));
}

#[test]
fn a_new_binary_is_an_update_and_the_config_is_overwritten_only_with_force() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = support::cli::rift_bin();
    let args = [
        "--binary",
        bin,
        "--name",
        "box-1",
        "--endpoints",
        "http://10.0.0.1:2379",
    ];
    assert!(install(r, &args).ok);

    let newer = tempfile::tempdir().unwrap();
    let newer_bin = newer.path().join("rift");
    let mut bytes = std::fs::read(bin).unwrap();
    bytes.extend_from_slice(b"\0upgrade");
    std::fs::write(&newer_bin, &bytes).unwrap();
    std::fs::set_permissions(&newer_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let other = [
        "--binary",
        newer_bin.to_str().unwrap(),
        "--name",
        "box-2",
        "--endpoints",
        "http://10.0.0.9:2379",
    ];
    let upgrade = install(r, &other);
    assert!(
        upgrade.stdout.contains("updated  /usr/local/bin/rift"),
        "{}",
        upgrade.stdout
    );
    assert_eq!(std::fs::read(r.join("usr/local/bin/rift")).unwrap(), bytes);
    let conf = std::fs::read_to_string(r.join("etc/rift/node.yaml")).unwrap();
    assert!(conf.contains("name: box-1"), "kept without --force: {conf}");

    let mut forced = other.to_vec();
    forced.push("--force");
    let f = install(r, &forced);
    assert!(
        f.stdout.contains("updated  /etc/rift/node.yaml"),
        "{}",
        f.stdout
    );
    let conf = std::fs::read_to_string(r.join("etc/rift/node.yaml")).unwrap();
    assert!(conf.contains("name: box-2"), "{conf}");
}

#[test]
fn the_config_written_from_a_name_loads_as_the_agent_reads_it() {
    let root = tempfile::tempdir().unwrap();
    let out = install(
        root.path(),
        &[
            "--binary",
            support::cli::rift_bin(),
            "--name",
            "gh200-b",
            "--endpoints",
            "http://100.64.0.10:2379,http://100.64.0.11:2379",
            "--controllers",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    let file = ConfigFile::load(&root.path().join("etc/rift/node.yaml")).unwrap();
    let c = AgentConfig::resolve(file, Overrides::default()).unwrap();
    assert_eq!(c.name, "gh200-b");
    assert_eq!(
        c.run_as.as_deref(),
        Some("rift-job"),
        "new installs run jobs as rift-job"
    );
    assert_eq!(
        c.endpoints,
        ["http://100.64.0.10:2379", "http://100.64.0.11:2379"]
    );
    assert!(c.controllers);
}

#[test]
fn missing_or_bad_input_is_refused_before_anything_is_installed() {
    let bin = support::cli::rift_bin();
    for (args, says) in [
        (vec!["--binary", bin], "give --config FILE, or --name NAME"),
        (
            vec!["--binary", bin, "--name", "Bad_Name", "--endpoints", "x"],
            "lowercase",
        ),
        (
            vec!["--binary", bin, "--name", "ok"],
            "--name needs --endpoints",
        ),
        (
            vec!["--binary", "/nonexistent/rift", "--name", "ok"],
            "no rift binary",
        ),
        (vec!["--bogus"], "unknown option --bogus"),
    ] {
        let root = tempfile::tempdir().unwrap();
        let out = install(root.path(), &args);
        assert!(!out.ok, "{args:?} was accepted");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(tree(root.path()).is_empty(), "{args:?} installed something");
    }
}

/// The `pub` fields of `ConfigFile`, read from the source, camelCased as YAML spells them.
fn config_file_fields() -> Vec<String> {
    let src = std::fs::read_to_string(repo("src/agent/config.rs")).unwrap();
    let body = src
        .split("pub struct ConfigFile {")
        .nth(1)
        .unwrap()
        .split("\n}")
        .next()
        .unwrap();
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .map(|snake| {
            let mut out = String::new();
            let mut upper = false;
            for c in snake.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

#[test]
fn the_example_config_documents_every_field_the_agent_reads() {
    let example = std::fs::read_to_string(repo("config/node.example.yaml")).unwrap();
    let fields = config_file_fields();
    assert!(fields.len() >= 15, "parsed {fields:?}");
    for f in &fields {
        // The field, set or commented out, with a comment line right above it or on its line.
        let pos = example
            .lines()
            .position(|l| {
                let t = l.trim_start_matches(['#', ' ']);
                t.starts_with(&format!("{f}:"))
            })
            .unwrap_or_else(|| panic!("`{f}` is not in config/node.example.yaml"));
        let lines: Vec<&str> = example.lines().collect();
        let documented =
            lines[pos].contains(" # ") || (pos > 0 && lines[pos - 1].trim_start().starts_with('#'));
        assert!(documented, "`{f}` has no comment explaining it");
    }
}

#[test]
fn the_unit_runs_the_installed_agent_and_never_kills_jobs_on_restart() {
    let unit = std::fs::read_to_string(repo("config/rift-agent.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/rift agent --config /etc/rift/node.yaml",
        "KillMode=process",
        "UMask=0077",
        "StateDirectoryMode=0700",
        "Restart=always",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "`{line}` missing");
    }
}
