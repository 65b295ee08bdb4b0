use super::*;

fn load(text: &str) -> Result<Vec<Document>, String> {
    parse_sources(&[("m.yaml".to_string(), text.to_string())]).map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    match load(text) {
        Ok(d) => panic!("accepted bad input: {d:?}"),
        Err(e) => e,
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "`{p}` not in: {message}");
    }
}

const POOL: &str = "apiVersion: rift/v1
kind: Pool
metadata:
  name: selfplay
spec:
  replicas: 2
  template:
    spec:
      command: [python3, selfplay.py]
";

#[test]
fn valid_pool_gets_defaults_filled_in() {
    let docs = load(POOL).unwrap();
    assert_eq!(docs.len(), 1);
    let job = &docs[0].object["spec"]["template"]["spec"];
    assert_eq!(job["restartPolicy"], "Never");
    assert_eq!(job["backoffLimit"], 3);
    assert_eq!(job["onNodeLost"], "wait");
    assert_eq!(job["lostAfter"], "1m");
}

#[test]
fn syntax_error_names_document_line_and_column() {
    let text = format!("{POOL}---\na: [1, 2\n");
    assert_mentions(
        &error(&text),
        &["m.yaml: document 2, line 12 column 1", "YAML syntax error"],
    );
}

#[test]
fn unknown_kind_lists_known_kinds_and_suggests() {
    let e = error("apiVersion: rift/v1\nkind: Pod\nmetadata: {name: a}\nspec: {}\n");
    assert_mentions(&e, &["document 1", "unknown kind `Pod`", "Node, Job, Pool"]);
    let e = error("apiVersion: rift/v1\nkind: nodes\nmetadata: {name: a}\nspec: {}\n");
    assert_mentions(&e, &["did you mean `Node`?"]);
}

#[test]
fn unknown_api_version_is_rejected() {
    let e = error("apiVersion: apps/v1\nkind: Node\nmetadata: {name: a}\nspec: {}\n");
    assert_mentions(&e, &["apiVersion", "`apps/v1`", "rift/v1"]);
}

#[test]
fn typo_field_names_path_and_line() {
    let e = error(&POOL.replace("replicas", "replicsa"));
    assert_mentions(
        &e,
        &[
            "document 1 (Pool/selfplay), line 6 column 3",
            "spec.replicsa: unknown field `replicsa`",
        ],
    );
}

#[test]
fn wrong_type_names_path() {
    let e = error(&POOL.replace("replicas: 2", "replicas: two"));
    assert_mentions(&e, &["spec.replicas: invalid type: string \"two\""]);
}

#[test]
fn missing_required_field_names_path() {
    let e = error(&POOL.replace("command: [python3, selfplay.py]", "env: {}"));
    assert_mentions(&e, &["spec.template.spec: missing field `command`"]);
}

#[test]
fn invalid_names_are_rejected() {
    for bad in ["Bad_Name", "../x", &"a".repeat(64)] {
        let e = error(&POOL.replace("name: selfplay", &format!("name: '{bad}'")));
        assert_mentions(&e, &["metadata.name"]);
    }
}

#[test]
fn duplicate_objects_in_one_apply_are_rejected() {
    let e = error(&format!("{POOL}---\n{POOL}"));
    assert_mentions(
        &e,
        &["document 2 (Pool/selfplay): also defined at m.yaml: document 1"],
    );
}

#[test]
fn empty_input_is_rejected() {
    for text in ["", "\n\n", "# only a comment\n---\n"] {
        assert_mentions(&error(text), &["m.yaml: the input is empty"]);
    }
}

#[test]
fn oversized_document_is_rejected_before_parsing() {
    let big = format!(
        "{POOL}---\n{}",
        POOL.replace(
            "spec:\n  replicas",
            &format!(
                "  annotations: {{a: '{}'}}\nspec:\n  replicas",
                "x".repeat(MAX_DOCUMENT_BYTES)
            )
        )
    );
    assert_mentions(&error(&big), &["document 2 (starting at line 10)", "1 MiB"]);
}

#[test]
fn semantic_rules_report_every_problem() {
    let text = "apiVersion: rift/v1
kind: Pool
metadata: {name: p}
spec:
  perGpu: true
  replicas: 3
  template:
    spec:
      command: []
";
    let e = error(text);
    assert_mentions(
        &e,
        &[
            "spec.replicas: set either",
            "spec.template.spec.command: must name",
        ],
    );
}

#[test]
fn non_object_documents_and_events_are_rejected() {
    assert_mentions(&error("- a\n- b\n"), &["expected an object", "got a list"]);
    assert_mentions(
        &error("apiVersion: rift/v1\nkind: Event\nmetadata: {name: a}\nspec: {}\n"),
        &["cannot be applied"],
    );
    assert_mentions(
        &error("kind: Node\nmetadata: {name: a}\nspec: {}\n"),
        &["missing `apiVersion"],
    );
    assert_mentions(
        &error("apiVersion: rift/v1\nkind: Node\nmetadata: {}\nspec: {}\n"),
        &["metadata.name: missing"],
    );
}

#[test]
fn duplicate_yaml_keys_are_a_syntax_error() {
    let e = error("apiVersion: rift/v1\nkind: Node\nmetadata: {name: a}\nspec: {}\nspec: {}\n");
    assert_mentions(&e, &["duplicate entry with key \"spec\""]);
}

#[test]
fn server_fields_and_status_are_dropped() {
    let text = "apiVersion: rift/v1
kind: Node
metadata:
  name: a
  uid: forged
  generation: 7
spec: {}
status:
  overloaded: true
";
    let docs = load(text).unwrap();
    assert!(docs[0].object.get("status").is_none());
    assert!(docs[0].object["metadata"].get("uid").is_none());
    assert!(docs[0].object["metadata"].get("generation").is_none());
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let docs = load(&format!("\u{feff}{POOL}")).unwrap();
    assert_eq!(docs.len(), 1);
}

#[test]
fn alias_expansion_cannot_smuggle_an_oversized_object() {
    let chunk = "x".repeat(60_000);
    let mut text = format!("apiVersion: rift/v1\nkind: Job\nmetadata:\n  name: j\n  annotations:\n    a0: &big '{chunk}'\n");
    for i in 1..30 {
        text += &format!("    a{i}: *big\n");
    }
    text += "spec:\n  command: [\"true\"]\n";
    let e = error(&text);
    assert_mentions(&e, &["(Job/j)", "after YAML aliases expand", "1 MiB"]);
}
