//! Property tests of manifest decoding (`rift::api::manifest::parse_str`): no input panics it —
//! arbitrary text, YAML made of YAML's own punctuation, rift manifests with hostile values in
//! every field, and the demo manifests with random bytes changed — and every refusal names
//! the source. What it accepts is stable: the normalized object read back gives itself.

use proptest::prelude::*;
use rift::api::manifest::parse_str;

const SOURCE: &str = "fuzz.yaml";

/// Characters that mean something to YAML, and a few that do not.
const YAML_CHARS: &[char] = &[
    '{', '}', '[', ']', ':', '-', ' ', ' ', '\n', '\n', '\'', '"', '&', '*', '!', '|', '>', '#',
    '%', '@', '`', ',', '?', '~', '\t', '\\', 'a', 'k', '1', '0', '.', 'e', 'x', '\u{feff}', 'é',
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(YAML_CHARS), 0..300)
        .prop_map(|cs| cs.into_iter().collect())
}

/// Values that have broken parsers and the code behind them: huge and negative numbers,
/// durations past any clock, odd types, names that are paths.
const HOSTILE: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-9223372036854775808",
    "1e309",
    ".nan",
    "-.inf",
    "0",
    "0x10",
    "\"18446744073709551615s\"",
    "\"9999999999999999999h\"",
    "\"1.5e300s\"",
    "\"-5s\"",
    "\"\"",
    "\"..\"",
    "\"../../etc\"",
    "\"a/b\"",
    "null",
    "~",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: d}}}",
    "true",
    "\"\\u0000\"",
    "!!binary aGVsbG8=",
    "&x 1",
    "*x",
];

const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.labels.k",
    "spec.command",
    "spec.command[0]",
    "spec.priority",
    "spec.backoffLimit",
    "spec.activeDeadlineSeconds",
    "spec.lostAfter",
    "spec.terminationGracePeriod",
    "spec.ttlAfterFinished",
    "spec.onNodeLost",
    "spec.restartPolicy",
    "spec.resources.gpus",
    "spec.resources.cpus",
    "spec.resources.memoryGb",
    "spec.resources.minGpuPower",
    "spec.nodeSelector.k",
    "spec.env.K",
    "spec.replicas",
    "spec.voters",
    "apiVersion",
    "kind",
];

const KINDS: &[&str] = &[
    "Job",
    "Pool",
    "Node",
    "VoterSet",
    "TrainingTarget",
    "Tunnel",
    "Notifier",
    "Nope",
];

/// A rift-shaped document with one hostile value put at one field path.
fn hostile_document() -> impl Strategy<Value = String> {
    (
        prop::sample::select(KINDS),
        prop::sample::select(FIELDS),
        prop::sample::select(HOSTILE),
    )
        .prop_map(|(kind, field, value)| {
            // A valid spec of the kind, so that harmless values are accepted and read back.
            let spec = match kind {
                "Job" => serde_json::json!({"command": ["sleep", "1"]}),
                "Pool" => {
                    serde_json::json!({"template": {"spec": {"command": ["a"]}}, "replicas": 1})
                }
                "VoterSet" => serde_json::json!({"voters": ["a"]}),
                _ => serde_json::json!({}),
            };
            let mut doc = serde_json::json!({
                "apiVersion": "rift/v1",
                "kind": kind,
                "metadata": {"name": "x"},
                "spec": spec,
            });
            let hole = "@@HOLE@@";
            set(&mut doc, field, serde_json::Value::String(hole.into()));
            serde_json::to_string(&doc)
                .expect("JSON serializes")
                .replace(&format!("\"{hole}\""), value)
        })
}

/// Puts `v` at a dotted path (`a.b[0]`), making objects on the way.
fn set(doc: &mut serde_json::Value, path: &str, v: serde_json::Value) {
    let mut at = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        if !at.is_object() {
            *at = serde_json::json!({});
        }
        let last = i == parts.len() - 1;
        let slot = at
            .as_object_mut()
            .expect("made an object")
            .entry(key)
            .or_insert(serde_json::Value::Null);
        match index {
            Some(n) => {
                if !slot.is_array() {
                    *slot = serde_json::json!([]);
                }
                let arr = slot.as_array_mut().expect("made an array");
                while arr.len() <= n {
                    arr.push(serde_json::Value::Null);
                }
                if last {
                    arr[n] = v;
                    return;
                }
                at = &mut arr[n];
            }
            None if last => {
                *slot = v;
                return;
            }
            None => at = slot,
        }
    }
}

/// The demo manifests, each with a few random bytes replaced, inserted or removed.
fn mutated_demo() -> impl Strategy<Value = String> {
    let demo: Vec<String> = ["jobs.yaml", "selfplay-pool.yaml", "training.yaml"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("manifests/demo")
                    .join(f),
            )
            .expect("the demo manifests exist")
        })
        .collect();
    (
        prop::sample::select(demo),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
    )
        .prop_map(|(text, edits)| {
            let mut bytes = text.into_bytes();
            for (at, op, b) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = b,
                    1 => bytes.insert(i, b),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

/// Decoding never panics; a refusal names the source; an acceptance reads back as itself.
fn decodes_sanely(text: &str) -> Result<(), TestCaseError> {
    match parse_str(SOURCE, text) {
        Err(e) => {
            let message = e.to_string();
            prop_assert!(!e.0.is_empty(), "an error with no problem in it");
            prop_assert!(
                message.contains(SOURCE),
                "the error does not name the source: {message}"
            );
        }
        Ok(docs) => {
            for d in docs {
                let again = serde_json::to_string(&d.object).expect("JSON serializes");
                let back = parse_str(SOURCE, &again).map_err(|e| {
                    TestCaseError::fail(format!("accepted, then refused: {e}\n{again}"))
                })?;
                prop_assert_eq!(back.len(), 1);
                prop_assert_eq!(&back[0].object, &d.object);
            }
        }
    }
    Ok(())
}

proptest! {
    // Failures are reported with their shrunk input; none is written into the tree.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics_the_decoder(text in any::<String>()) {
        decodes_sanely(&text)?;
    }

    #[test]
    fn yaml_punctuation_soup_never_panics_the_decoder(text in yamlish()) {
        decodes_sanely(&text)?;
    }

    #[test]
    fn a_hostile_value_in_any_field_is_refused_or_read_back_unchanged(text in hostile_document()) {
        decodes_sanely(&text)?;
    }

    #[test]
    fn a_damaged_demo_manifest_never_panics_the_decoder(text in mutated_demo()) {
        decodes_sanely(&text)?;
    }
}

#[test]
fn an_alias_bomb_is_refused_without_expanding_it() {
    // Nine levels of nine aliases: 387 million strings if expanded.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 9].join(", ")
        ));
    }
    let started = std::time::Instant::now();
    let result = parse_str(SOURCE, &text);
    assert!(result.is_err(), "not a rift object");
    // Generous: expanding it would take minutes and gigabytes.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn harmless_values_are_accepted_so_the_read_back_property_is_exercised() {
    let job = r#"{"apiVersion":"rift/v1","kind":"Job","metadata":{"name":"x"},"spec":{"command":["sleep","1"],"priority":0}}"#;
    let docs = parse_str(SOURCE, job).expect("a valid Job");
    assert_eq!(docs.len(), 1);
    let back = parse_str(SOURCE, &serde_json::to_string(&docs[0].object).unwrap()).unwrap();
    assert_eq!(back[0].object, docs[0].object);
}
