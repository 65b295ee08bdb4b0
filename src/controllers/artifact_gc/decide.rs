//! Garbage collection's decisions, pure: which artifacts are referenced, and what to do with
//! each artifact record (keep it, mark it for deletion, finish a deletion).
//!
//! Rules, in order (the first that applies decides):
//! 1. a record already marked for deletion (`deletionTimestamp`) is finished: bytes, then record.
//!    The mark is the commit point; a Job naming the artifact after it was marked fails its
//!    staging like a Job naming an unknown artifact;
//! 2. a record labelled [`KEEP`]` = "true"` is kept;
//! 3. a referenced artifact is kept (see [`referenced`]);
//! 4. an artifact unreferenced for at least `gcAfter` (as this leader measured it) is marked;
//! 5. anything else is kept, for now.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::api::job::JobSpec;
use crate::api::labels::KEEP;
use crate::api::training_target::TrainingTargetStatus;
use crate::api::{Artifact, Job, Pool, TrainingTarget};

/// Everything that can hold an artifact, as one load read it.
#[derive(Clone, Copy, Default)]
pub struct Referrers<'a> {
    pub jobs: &'a [Job],
    pub pools: &'a [Pool],
    pub targets: &'a [TrainingTarget],
}

/// True while a Job can still read its inputs: it has not finished (no status yet counts as
/// not finished).
fn is_live(job: &Job) -> bool {
    !job.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// The artifacts a TrainingTarget's status holds: its current model and the candidates of the
/// runs in its history window.
fn target_models(status: &TrainingTargetStatus) -> impl Iterator<Item = &str> {
    status
        .current_model
        .iter()
        .chain(status.history.iter().filter_map(|r| r.candidate.as_ref()))
        .map(String::as_str)
}

/// The artifacts a template names outright (stamped into every Job made from it).
fn template_inputs(spec: &JobSpec) -> impl Iterator<Item = &str> {
    spec.input_artifacts()
}

/// Every artifact name something still needs:
/// * the inputs of every live Job (not Succeeded or Failed);
/// * the artifacts a Pool's or TrainingTarget's Job templates name by digest;
/// * a TrainingTarget's `status.currentModel` and the candidates in its `status.history`.
///
/// A new holder is one more `.chain(..)` here (e.g. a Pool's current and previous model).
pub fn referenced<'a>(r: &Referrers<'a>) -> BTreeSet<&'a str> {
    let live_inputs = r
        .jobs
        .iter()
        .filter(|j| is_live(j))
        .flat_map(|j| j.spec.input_artifacts());
    let pool_templates = r
        .pools
        .iter()
        .flat_map(|p| template_inputs(&p.spec.template.spec));
    let target_templates = r.targets.iter().flat_map(|t| {
        template_inputs(&t.spec.training.spec).chain(
            t.spec
                .evaluation
                .iter()
                .flat_map(|e| template_inputs(&e.template.spec)),
        )
    });
    let target_models = r
        .targets
        .iter()
        .filter_map(|t| t.status.as_ref())
        .flat_map(target_models);
    // A Pool's current model, and its previous one while a rollout may still fall back to it.
    let pool_models = r
        .pools
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.current_model.iter().chain(&s.previous_model))
        .map(String::as_str);
    live_inputs
        .chain(pool_templates)
        .chain(target_templates)
        .chain(target_models)
        .chain(pool_models)
        .collect()
}

/// What to do with one artifact record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Set `deletionTimestamp` on the record as read at `expect` (the commit point).
    Mark { name: String, expect: i64 },
    /// Delete the bytes, then the record as read at `expect`.
    Finish { name: String, expect: i64 },
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Mark { name, .. } | Step::Finish { name, .. } => name,
        }
    }
}

/// True when an artifact is exempt from collection.
pub fn is_kept(a: &Artifact) -> bool {
    a.metadata.labels.get(KEEP).is_some_and(|v| v == "true")
}

/// The steps for `artifacts` (see the module rules). `unreferenced_for` is how long each
/// artifact has been seen unreferenced and not kept (absent: it is referenced or kept, or was
/// not seen before). Finishes come first, then marks; at most `limit` steps in all.
pub fn decide(
    artifacts: &[Artifact],
    referenced: &BTreeSet<&str>,
    unreferenced_for: &HashMap<String, Duration>,
    gc_after: Duration,
    limit: usize,
) -> Vec<Step> {
    let revision = |a: &Artifact| a.metadata.revision().unwrap_or_default();
    let finish = artifacts
        .iter()
        .filter(|a| a.metadata.deletion_timestamp.is_some())
        .map(|a| Step::Finish {
            name: a.metadata.name.clone(),
            expect: revision(a),
        });
    let mark = artifacts
        .iter()
        .filter(|a| a.metadata.deletion_timestamp.is_none())
        .filter(|a| !is_kept(a) && !referenced.contains(a.metadata.name.as_str()))
        .filter(|a| {
            unreferenced_for
                .get(&a.metadata.name)
                .is_some_and(|d| *d >= gc_after)
        })
        .map(|a| Step::Mark {
            name: a.metadata.name.clone(),
            expect: revision(a),
        });
    finish.chain(mark).take(limit).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::artifact::ArtifactSpec;
    use crate::api::job::{JobPhase, JobStatus, JobTemplate};
    use crate::api::job_io::JobInput;
    use crate::api::training_target::{TrainingRun, TrainingTargetSpec};
    use crate::api::Object;

    fn name(i: u8) -> String {
        format!("sha256-{}", format!("{i:02x}").repeat(32))
    }

    fn artifact(i: u8) -> Artifact {
        let mut a = Object::new(
            name(i),
            ArtifactSpec {
                digest: format!("sha256:{}", format!("{i:02x}").repeat(32)),
                size: 1,
                format: None,
                producer: None,
                parents: vec![],
                counts: BTreeMap::new(),
            },
        );
        a.metadata.resource_version = Some(format!("{}", 100 + u32::from(i)));
        a
    }

    fn job(jname: &str, inputs: &[String], phase: Option<JobPhase>) -> Job {
        let mut spec = JobSpec::with_command(["true"]);
        spec.inputs = vec![JobInput::of("in", inputs.iter().cloned())];
        let mut j = Object::new(jname, spec);
        j.status = phase.map(|phase| JobStatus {
            phase,
            ..JobStatus::default()
        });
        j
    }

    fn target(current: Option<String>, candidates: &[String]) -> TrainingTarget {
        let spec: TrainingTargetSpec = serde_json::from_value(serde_json::json!({
            "board": "hex8", "players": 2, "selfplaySelector": {"board": "hex8"},
            "training": {"spec": {"command": ["train"]}},
        }))
        .unwrap();
        let mut t = Object::new("hex8-2p", spec);
        t.status = Some(TrainingTargetStatus {
            current_model: current,
            history: candidates
                .iter()
                .enumerate()
                .map(|(g, c)| TrainingRun {
                    generation: g as u64 + 1,
                    job: format!("train-{g}"),
                    candidate: Some(c.clone()),
                    ..TrainingRun::default()
                })
                .collect(),
            ..TrainingTargetStatus::default()
        });
        t
    }

    #[test]
    fn live_job_inputs_and_training_models_are_referenced_finished_job_inputs_are_not() {
        let jobs = [
            job("pending", &[name(1)], None),
            job("running", &[name(2)], Some(JobPhase::Running)),
            job("done", &[name(3)], Some(JobPhase::Succeeded)),
            job("failed", &[name(4)], Some(JobPhase::Failed)),
        ];
        let targets = [target(Some(name(5)), &[name(6)])];
        let refs = referenced(&Referrers {
            jobs: &jobs,
            pools: &[],
            targets: &targets,
        });
        let want: BTreeSet<String> = [1, 2, 5, 6].map(name).into();
        let got: BTreeSet<String> = refs.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn artifacts_named_by_a_template_are_referenced() {
        let mut spec = JobSpec::with_command(["selfplay"]);
        spec.inputs = vec![JobInput::of("model", [name(7)])];
        let pool: Pool = Object::new(
            "selfplay",
            crate::api::pool::PoolSpec {
                template: JobTemplate {
                    metadata: Default::default(),
                    spec,
                },
                replicas: Some(1),
                per_gpu: false,
                node_selector: BTreeMap::new(),
                model: None,
            },
        );
        let mut pools = [pool];
        let refs = referenced(&Referrers {
            pools: &pools,
            ..Referrers::default()
        });
        assert!(refs.contains(name(7).as_str()));
        pools[0].spec.template.spec.inputs.clear();
        pools[0].status = Some(crate::api::pool::PoolStatus {
            current_model: Some(name(8)),
            previous_model: Some(name(9)),
            ..Default::default()
        });
        let refs = referenced(&Referrers {
            pools: &pools,
            ..Referrers::default()
        });
        assert!(
            !refs.contains(name(7).as_str()),
            "the template no longer names it"
        );
        assert!(refs.contains(name(8).as_str()) && refs.contains(name(9).as_str()));
    }

    fn unref(names: &[(u8, u64)]) -> HashMap<String, Duration> {
        names
            .iter()
            .map(|(i, s)| (name(*i), Duration::from_secs(*s)))
            .collect()
    }

    #[test]
    fn only_artifacts_unreferenced_for_the_whole_ttl_are_marked() {
        let arts = [artifact(1), artifact(2), artifact(3)];
        let refs: BTreeSet<&str> = BTreeSet::new();
        let steps = decide(
            &arts,
            &refs,
            &unref(&[(1, 3600), (2, 3599)]),
            Duration::from_secs(3600),
            100,
        );
        assert_eq!(
            steps,
            vec![Step::Mark {
                name: name(1),
                expect: 101
            }]
        );
    }

    #[test]
    fn a_referenced_or_kept_artifact_is_never_marked_however_long_it_was_unreferenced() {
        let mut kept = artifact(2);
        kept.metadata.labels.insert(KEEP.into(), "true".into());
        let arts = [artifact(1), kept];
        let n1 = name(1);
        let refs: BTreeSet<&str> = [n1.as_str()].into();
        // A stale clock entry (e.g. from before the reference appeared) changes nothing.
        let steps = decide(
            &arts,
            &refs,
            &unref(&[(1, 1 << 40), (2, 1 << 40)]),
            Duration::from_secs(1),
            100,
        );
        assert!(steps.is_empty(), "{steps:?}");
    }

    #[test]
    fn a_marked_record_is_finished_first_even_when_named_again() {
        let mut marked = artifact(3);
        marked.metadata.deletion_timestamp = Some(chrono::Utc::now());
        let arts = [artifact(1), artifact(2), marked];
        let n3 = name(3);
        let refs: BTreeSet<&str> = [n3.as_str()].into();
        let steps = decide(
            &arts,
            &refs,
            &unref(&[(1, 10), (2, 10)]),
            Duration::from_secs(1),
            2,
        );
        assert_eq!(
            steps,
            vec![
                Step::Finish {
                    name: name(3),
                    expect: 103
                },
                Step::Mark {
                    name: name(1),
                    expect: 101
                },
            ]
        );
    }
}
