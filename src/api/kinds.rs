//! The registry of kinds: names people type, typed parsing behind a `kind:` string, schemas.

use serde_json::Value;

use super::artifact::ArtifactSpec;
use super::artifact_store::ArtifactStoreSpec;
use super::event::EventSpec;
use super::job::JobSpec;
use super::node::NodeSpec;
use super::notifier::NotifierSpec;
use super::object::{Object, Spec};
use super::pool::PoolSpec;
use super::training_target::TrainingTargetSpec;
use super::tunnel::TunnelSpec;
use super::validation::FieldErrors;
use super::voter_set::VoterSetSpec;
use super::API_VERSION;

/// A typed deserialization failure: where it happened and what serde said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Field path, e.g. `spec.template.spec.command`; empty at the top level.
    pub path: String,
    pub message: String,
    /// 1-based line and column in the YAML source, when known.
    pub location: Option<(usize, usize)>,
}

/// Why one document could not become an object of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseFailure {
    Decode(DecodeError),
    Invalid(FieldErrors),
}

/// Everything rift knows about one kind, usable without naming its Rust type.
pub struct KindInfo {
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub appliable: bool,
    /// Decodes one YAML document as this kind, fills defaults and validates it; returns the
    /// normalized object as JSON.
    pub parse_yaml: fn(serde_norway::Deserializer<'_>) -> Result<Value, ParseFailure>,
    /// The same for a JSON value (stored objects, `-o json` round trips).
    pub parse_json: fn(Value) -> Result<Value, ParseFailure>,
    /// The JSON Schema of a whole object of this kind.
    pub schema: fn() -> Value,
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)
    }
}

impl KindInfo {
    const fn of<S: Spec>() -> Self {
        Self {
            kind: S::KIND,
            plural: S::PLURAL,
            singular: S::SINGULAR,
            short_names: S::SHORT_NAMES,
            appliable: S::APPLIABLE,
            parse_yaml: parse_yaml::<S>,
            parse_json: parse_json::<S>,
            schema: schema::<S>,
        }
    }

    /// True for every name that refers to this kind: `Node`, `node`, `nodes`, `no`.
    pub fn answers_to(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        lower == self.kind.to_ascii_lowercase()
            || lower == self.plural
            || lower == self.singular
            || self.short_names.contains(&lower.as_str())
    }
}

/// Every kind, in the order `rift crds` prints them.
pub static KINDS: [KindInfo; 10] = [
    KindInfo::of::<NodeSpec>(),
    KindInfo::of::<JobSpec>(),
    KindInfo::of::<PoolSpec>(),
    KindInfo::of::<TrainingTargetSpec>(),
    KindInfo::of::<VoterSetSpec>(),
    KindInfo::of::<TunnelSpec>(),
    KindInfo::of::<NotifierSpec>(),
    KindInfo::of::<EventSpec>(),
    KindInfo::of::<ArtifactSpec>(),
    KindInfo::of::<ArtifactStoreSpec>(),
];

/// The kind a user means by `name` (`Node`, `nodes`, `no`, ...).
pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.answers_to(name))
}

/// The kind whose `kind:` field is exactly `kind`.
pub fn by_kind(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// `Node, Job, Pool, ...` for messages.
pub fn known_kinds() -> String {
    KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", ")
}

fn finish<S: Spec>(obj: Object<S>) -> Result<Value, ParseFailure> {
    obj.validate()
        .into_result()
        .map_err(ParseFailure::Invalid)?;
    Ok(serde_json::to_value(&obj).expect("resource types always serialize"))
}

fn parse_yaml<S: Spec>(de: serde_norway::Deserializer<'_>) -> Result<Value, ParseFailure> {
    let obj: Object<S> = serde_path_to_error::deserialize(de).map_err(|e| {
        let location = e.inner().location().map(|l| (l.line(), l.column()));
        let path = path_string(e.path());
        let message = strip_path_prefix(&strip_location(&e.inner().to_string()), &path);
        ParseFailure::Decode(DecodeError {
            path,
            message,
            location,
        })
    })?;
    finish(obj)
}

fn parse_json<S: Spec>(value: Value) -> Result<Value, ParseFailure> {
    let obj: Object<S> = serde_path_to_error::deserialize(value).map_err(|e| {
        ParseFailure::Decode(DecodeError {
            path: path_string(e.path()),
            message: e.inner().to_string(),
            location: None,
        })
    })?;
    finish(obj)
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

/// serde_norway writes ` at line L column C` into its messages; rift reports the location
/// separately, so it is cut out.
pub(crate) fn strip_location(message: &str) -> String {
    let Some(start) = message.find(" at line ") else {
        return message.to_string();
    };
    let rest = &message[start + " at line ".len()..];
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let line_len = digits(rest);
    let after_line = &rest[line_len..];
    let Some(col) = after_line.strip_prefix(" column ") else {
        return message.to_string();
    };
    let end = start + " at line ".len() + line_len + " column ".len() + digits(col);
    format!("{}{}", &message[..start], &message[end..])
}

/// serde_norway starts messages with the parent path (`spec: unknown field`); the full path is
/// reported separately, so that prefix is cut out.
fn strip_path_prefix(message: &str, path: &str) -> String {
    match message.split_once(": ") {
        Some((head, tail)) if !head.contains(' ') && path.starts_with(head) => tail.to_string(),
        _ => message.to_string(),
    }
}

fn schema<S: Spec>() -> Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(Object<S>)).expect("schemas always serialize");
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("title".into(), Value::String(S::KIND.into()));
        obj.insert(
            "$id".into(),
            Value::String(format!("https://rift.dev/schemas/{}.json", S::SINGULAR)),
        );
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "apiVersion".into(),
                serde_json::json!({ "const": API_VERSION }),
            );
            props.insert("kind".into(), serde_json::json!({ "const": S::KIND }));
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_form_resolves() {
        for (name, kind) in [
            ("nodes", "Node"),
            ("node", "Node"),
            ("no", "Node"),
            ("Node", "Node"),
            ("jobs", "Job"),
            ("job", "Job"),
            ("pools", "Pool"),
            ("trainingtargets", "TrainingTarget"),
            ("tt", "TrainingTarget"),
            ("voterset", "VoterSet"),
            ("vs", "VoterSet"),
            ("tunnels", "Tunnel"),
            ("tun", "Tunnel"),
            ("notifiers", "Notifier"),
            ("events", "Event"),
            ("ev", "Event"),
        ] {
            assert_eq!(lookup(name).map(|k| k.kind), Some(kind), "{name}");
        }
        assert!(lookup("pods").is_none());
    }

    #[test]
    fn schemas_pin_api_version_and_kind() {
        for k in &KINDS {
            let s = (k.schema)();
            assert_eq!(s["properties"]["kind"]["const"], k.kind);
            assert_eq!(s["properties"]["apiVersion"]["const"], API_VERSION);
        }
    }
}
