//! Turning a Job template's inputs into a stored Job's: each `selector` is resolved to the
//! names of the Artifacts it matches when the Job is created, so every stored Job names its
//! inputs by digest and can be run again on the same bytes (see [`crate::api::job_io`]). Pure.
//!
//! A selector that matches nothing is an error, not an empty input: the Job would fail to
//! stage. A selector matching more than [`MAX_PARENTS`] artifacts takes the newest ones.

use std::collections::BTreeMap;

use crate::api::artifact::MAX_PARENTS;
use crate::api::job_io::{JobInput, JobOutput};
use crate::api::node::selector_matches;
use crate::controllers::cluster_view::StoredArtifact;

/// Why a template's inputs cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "input `{input}`: no Artifact matches the selector {selector} (see `rift get artifacts -l \
         {selector}`); the Job is created once one exists"
    )]
    NoMatch { input: String, selector: String },
}

/// `inputs` with every selector replaced by the artifacts it matches among `artifacts` (oldest
/// first by creation revision, at most [`MAX_PARENTS`]: the newest), added after the names the
/// input lists itself.
pub fn resolve(
    inputs: &[JobInput],
    artifacts: &[StoredArtifact],
) -> Result<Vec<JobInput>, ResolveError> {
    inputs
        .iter()
        .map(|input| {
            if input.selector.is_empty() {
                return Ok(input.clone());
            }
            let mut matched: Vec<(i64, &str)> = artifacts
                .iter()
                .filter(|a| selector_matches(&input.selector, &a.artifact.metadata.labels))
                .map(|a| (a.created_revision, a.artifact.name()))
                .collect();
            if matched.is_empty() && input.artifacts.is_empty() {
                return Err(ResolveError::NoMatch {
                    input: input.name.clone(),
                    selector: selector_text(&input.selector),
                });
            }
            matched.sort();
            let mut names = input.artifacts.clone();
            let room = MAX_PARENTS.saturating_sub(names.len());
            let skip = matched.len().saturating_sub(room);
            for (_, name) in matched.into_iter().skip(skip) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
            Ok(JobInput::of(input.name.clone(), names))
        })
        .collect()
}

/// True when `stored` is what `template` resolves to: the same input names in the same order,
/// the same artifacts for inputs without a selector (a selector input may have resolved to
/// any artifacts).
pub fn resolved_from(stored: &[JobInput], template: &[JobInput]) -> bool {
    stored.len() == template.len()
        && stored.iter().zip(template).all(|(s, t)| {
            s.name == t.name && s.selector.is_empty() && (!t.selector.is_empty() || s == t)
        })
}

/// `outputs` with `labels` added to each output's own (the output's win): artifacts made from
/// a Job stamped out of a template carry the template's labels, so a selector over Job labels
/// (a TrainingTarget's `selfplaySelector`) selects their artifacts too.
pub fn label_outputs(outputs: &mut [JobOutput], labels: &BTreeMap<String, String>) {
    for output in outputs {
        for (k, v) in labels {
            output.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::artifact::ArtifactSpec;
    use crate::api::Object;

    pub(crate) fn art(n: u8, rev: i64, labels: &[(&str, &str)]) -> StoredArtifact {
        let hex = format!("{n:02x}").repeat(32);
        let mut a = Object::new(
            format!("sha256-{hex}"),
            ArtifactSpec {
                digest: format!("sha256:{hex}"),
                size: 1,
                format: None,
                producer: None,
                parents: vec![],
                counts: BTreeMap::new(),
            },
        );
        a.metadata.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StoredArtifact {
            artifact: a,
            created_revision: rev,
        }
    }

    fn selecting(name: &str, k: &str, v: &str) -> JobInput {
        JobInput {
            name: name.into(),
            artifacts: vec![],
            selector: [(k.to_string(), v.to_string())].into(),
        }
    }

    #[test]
    fn a_selector_becomes_the_names_it_matches_oldest_first() {
        let arts = [
            art(2, 20, &[("type", "book")]),
            art(1, 10, &[("type", "book")]),
            art(3, 30, &[("type", "model")]),
        ];
        let out = resolve(&[selecting("book", "type", "book")], &arts).unwrap();
        assert_eq!(
            out[0].artifacts,
            vec![arts[1].artifact.name(), arts[0].artifact.name()]
        );
        assert!(
            out[0].selector.is_empty(),
            "a stored Job never has a selector"
        );
        assert!(resolved_from(&out, &[selecting("book", "type", "book")]));
    }

    #[test]
    fn a_selector_matching_nothing_is_an_error_naming_the_input() {
        let err = resolve(&[selecting("book", "type", "book")], &[]).unwrap_err();
        assert!(err.to_string().contains("input `book`"), "{err}");
        assert!(err.to_string().contains("type=book"), "{err}");
    }

    #[test]
    fn named_inputs_pass_through_and_must_stay_the_same() {
        let named = JobInput::of("cfg", [art(9, 1, &[]).artifact.name().to_string()]);
        let out = resolve(std::slice::from_ref(&named), &[]).unwrap();
        assert_eq!(out, vec![named.clone()]);
        let other = JobInput::of("cfg", [art(8, 1, &[]).artifact.name().to_string()]);
        assert!(!resolved_from(&[other], &[named]));
    }

    #[test]
    fn template_labels_reach_outputs_without_overriding_their_own() {
        let mut outs = vec![JobOutput {
            name: "games".into(),
            labels: [("type".to_string(), "games".to_string())].into(),
            format: None,
        }];
        let labels = [
            ("board".to_string(), "hex8".to_string()),
            ("type".to_string(), "selfplay".to_string()),
        ]
        .into();
        label_outputs(&mut outs, &labels);
        assert_eq!(outs[0].labels["board"], "hex8");
        assert_eq!(outs[0].labels["type"], "games");
    }
}
