//! A Job's data: the artifacts staged into its directory before it starts (`inputs`) and the
//! files it writes that become artifacts (`outputs`).
//!
//! Inputs are read-only copies of immutable artifacts, placed at
//! `$RIFT_INPUTS/<input name>/<artifact name>` before the process starts; a Job that names an
//! artifact the store does not hold never starts. Outputs are directories under
//! `$RIFT_OUTPUTS/<output name>/`: a file becomes an artifact once it is sealed (renamed into that
//! directory, or present there when the process exits); files whose names start with `.` or end
//! in `.tmp` are still being written and are never taken. A Job is `Succeeded` only once its
//! outputs are uploaded.
//!
//! Counts (`games: 500`) come from an optional sidecar `<file>.counts.json` (`{"games": 500}`)
//! written before the file is sealed; a sidecar is metadata, never an artifact of its own.
//!
//! The agent uploads each sealed file and reports it under its own keys as an
//! [`OutputReport`] (`/rift/v1/agents/<node>/outputs/<job>.<hex>`); the leader records it as the
//! Artifact `sha256-<hex>` (identical bytes from two jobs make one Artifact, the first report's).
//!
//! A stored Job names its inputs by digest only, so every Job can be run again on the same bytes.
//! A `selector` is for Job templates: the controller that stamps the Job out resolves it to the
//! matching artifact names when it creates the Job.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::artifact::{ArtifactSpec, MAX_PARENTS};
use super::object::Spec;
use super::validation::{dns1123_problem, validate_labels, FieldErrors};

/// The most inputs or outputs one Job may declare.
pub const MAX_IO_ENTRIES: usize = 64;

/// One input: artifacts staged read-only into `$RIFT_INPUTS/<name>/`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobInput {
    /// The directory under `$RIFT_INPUTS`; a DNS label such as `games` or `model`.
    pub name: String,
    /// Artifact names (`sha256-<64 hex>`), each staged as a file of that name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Job templates only: Artifact labels that must all match. The controller creating the Job
    /// replaces this with the names of the matching artifacts, so a stored Job never has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One output: sealed files in `$RIFT_OUTPUTS/<name>/` become artifacts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobOutput {
    /// The directory under `$RIFT_OUTPUTS`; a DNS label such as `games` or `model`.
    pub name: String,
    /// Labels put on every artifact made from this output (e.g. `type: games`), besides the
    /// ones rift adds (the producing Job's Pool or TrainingTarget).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What the files are, e.g. `npz` or `pt` (the Artifact's `spec.format`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// How far a Job's input staging got (in its status while its phase is `Scheduled` with reason
/// `Staging`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StagingProgress {
    /// Bytes of the inputs on the node (cached or downloaded) so far.
    pub done_bytes: u64,
    /// Bytes of all its inputs.
    pub total_bytes: u64,
    /// The download rate so far.
    pub bytes_per_second: u64,
}

impl StagingProgress {
    /// Whole percent done (0 while the total is not known yet).
    pub fn percent(&self) -> u64 {
        if self.total_bytes == 0 {
            0
        } else {
            (u128::from(self.done_bytes.min(self.total_bytes)) * 100 / u128::from(self.total_bytes))
                as u64
        }
    }
}

/// One sealed output file, uploaded: what a node's agent reports so that the leader records it
/// as an Artifact. The node is the key's, never the value's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputReport {
    pub job: String,
    #[serde(default)]
    pub uid: String,
    pub attempt: u32,
    pub output: String,
    /// `sha256:<64 hex>` of the uploaded bytes.
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The output's labels plus `rift.dev/job`, `rift.dev/output` and the Job's inherited ones.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The Job's input artifacts.
    #[serde(default)]
    pub parents: Vec<String>,
    /// From the sidecar `<file>.counts.json`, when there was one.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
}

impl JobInput {
    /// An input of the named artifacts.
    pub fn of(name: impl Into<String>, artifacts: impl IntoIterator<Item = String>) -> Self {
        Self {
            name: name.into(),
            artifacts: artifacts.into_iter().collect(),
            selector: BTreeMap::new(),
        }
    }
}

/// Checks `inputs` and `outputs` under `prefix` (e.g. `spec`); `template` allows input selectors.
pub fn validate_io(
    prefix: &str,
    inputs: &[JobInput],
    outputs: &[JobOutput],
    template: bool,
    errors: &mut FieldErrors,
) {
    for (field, count) in [("inputs", inputs.len()), ("outputs", outputs.len())] {
        if count > MAX_IO_ENTRIES {
            errors.push(
                format!("{prefix}.{field}"),
                format!("at most {MAX_IO_ENTRIES} entries, got {count}"),
            );
            return;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in inputs.iter().enumerate() {
        let at = format!("{prefix}.inputs[{i}]");
        name_problem(&at, &input.name, &mut seen, errors);
        if input.artifacts.len() > MAX_PARENTS {
            errors.push(
                format!("{at}.artifacts"),
                format!(
                    "at most {MAX_PARENTS} artifacts, got {}",
                    input.artifacts.len()
                ),
            );
            continue;
        }
        for (j, name) in input.artifacts.iter().enumerate() {
            if let Some(problem) = ArtifactSpec::name_problem(name) {
                errors.push(format!("{at}.artifacts[{j}]"), problem);
            }
        }
        if !input.selector.is_empty() && !template {
            errors.push(
                format!("{at}.selector"),
                "only Job templates (Pools, TrainingTargets) resolve selectors: name the \
                 artifacts in `artifacts` (see `rift get artifacts -l KEY=VALUE`)",
            );
        }
        validate_labels(&format!("{at}.selector"), &input.selector, errors);
        if input.artifacts.is_empty() && input.selector.is_empty() {
            errors.push(
                format!("{at}.artifacts"),
                "name at least one artifact (or, in a template, a selector)",
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, output) in outputs.iter().enumerate() {
        let at = format!("{prefix}.outputs[{i}]");
        name_problem(&at, &output.name, &mut seen, errors);
        validate_labels(&format!("{at}.labels"), &output.labels, errors);
        if let Some(f) = &output.format {
            if f.is_empty() || f.len() > 63 || f.chars().any(char::is_control) {
                errors.push(
                    format!("{at}.format"),
                    "must be 1-63 printable characters, e.g. npz",
                );
            }
        }
    }
}

fn name_problem(
    at: &str,
    name: &str,
    seen: &mut std::collections::BTreeSet<String>,
    errors: &mut FieldErrors,
) {
    if let Some(problem) = dns1123_problem(name) {
        errors.push(format!("{at}.name"), problem);
    } else if !seen.insert(name.to_owned()) {
        errors.push(format!("{at}.name"), format!("`{name}` is declared twice"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ART: &str = "sha256-9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn check(inputs: &[JobInput], outputs: &[JobOutput], template: bool) -> String {
        let mut errors = FieldErrors::default();
        validate_io("spec", inputs, outputs, template, &mut errors);
        errors.to_string()
    }

    #[test]
    fn inputs_name_artifacts_by_digest_and_each_directory_once() {
        assert_eq!(
            check(&[JobInput::of("games", [ART.into()])], &[], false),
            ""
        );
        let bad = check(&[JobInput::of("games", ["latest.npz".into()])], &[], false);
        assert!(bad.contains("spec.inputs[0].artifacts[0]"), "{bad}");
        let twice = [
            JobInput::of("m", [ART.into()]),
            JobInput::of("m", [ART.into()]),
        ];
        assert!(check(&twice, &[], false).contains("declared twice"));
        let escape = check(&[JobInput::of("../etc", [ART.into()])], &[], false);
        assert!(escape.contains("spec.inputs[0].name"), "{escape}");
        assert!(check(&[JobInput::of("empty", [])], &[], false).contains("at least one"));
    }

    #[test]
    fn selectors_are_for_templates_only() {
        let input = JobInput {
            name: "games".into(),
            artifacts: vec![],
            selector: [("type".to_string(), "games".to_string())].into(),
        };
        assert_eq!(check(std::slice::from_ref(&input), &[], true), "");
        assert!(check(&[input], &[], false).contains("spec.inputs[0].selector"));
    }

    #[test]
    fn outputs_are_directory_names_not_paths() {
        let out = |name: &str| JobOutput {
            name: name.into(),
            ..JobOutput::default()
        };
        assert_eq!(check(&[], &[out("model")], false), "");
        for bad in ["/etc", "../up", "a/b", ""] {
            assert!(
                check(&[], &[out(bad)], false).contains("spec.outputs[0].name"),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn huge_lists_are_refused_without_checking_each_entry() {
        let many = vec![JobInput::of("x", [ART.into()]); MAX_IO_ENTRIES + 1];
        assert!(check(&many, &[], false).contains("at most 64"));
    }
}
