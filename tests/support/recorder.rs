//! A stand-in for the leader's artifacts controller (built on another branch, issue 18): it
//! records Artifacts the way that controller does once an agent has uploaded a Job's output,
//! so the training and Pool controllers can be tested against real etcd and agents. Its
//! records carry that controller's labels (`rift.dev/job`, `rift.dev/output`, the Job's
//! `rift.dev/` labels, the output's own) and producer; the bytes are not stored. Once the agent
//! uploads outputs, tests whose jobs write `$RIFT_OUTPUTS/<output>/` need this no longer.

use std::collections::BTreeMap;
use std::time::Duration;

use rift::api::artifact::{Artifact, ArtifactSpec, Digest, Producer};
use rift::api::labels::{JOB, OUTPUT, POOL, STAGE, TRAINING_TARGET};
use rift::api::selector::LabelSelector;
use rift::api::{JobPhase, JobSpec, Object};
use rift::store::{Store, StoreError};

/// The Artifact the artifacts controller records for `output` of `job` (attempt 1 on `w1`):
/// its digest made from `seed`, labels the output's plus `rift.dev/job`, `rift.dev/output`
/// and the Job's `rift.dev/` labels.
pub fn recorded(
    seed: &str,
    job: &JobSpec,
    job_name: &str,
    job_labels: &BTreeMap<String, String>,
    output: &str,
    games: Option<u64>,
) -> Artifact {
    use sha2::Digest as _;
    let digest = Digest::from_bytes(sha2::Sha256::digest(seed.as_bytes()).into());
    let mut labels: BTreeMap<String, String> = job
        .outputs
        .iter()
        .find(|o| o.name == output)
        .map(|o| o.labels.clone())
        .unwrap_or_default();
    for key in [POOL, TRAINING_TARGET, "rift.dev/generation", STAGE] {
        if let Some(v) = job_labels.get(key) {
            labels.insert(key.into(), v.clone());
        }
    }
    labels.insert(JOB.into(), job_name.into());
    labels.insert(OUTPUT.into(), output.into());
    let mut a = Object::new(
        digest.artifact_name(),
        ArtifactSpec {
            digest: digest.to_string(),
            size: 1,
            format: None,
            producer: Some(Producer {
                job: job_name.into(),
                attempt: 1,
                node: "w1".into(),
            }),
            parents: job.input_artifacts().map(str::to_string).collect(),
            counts: games
                .map(|g| [("games".to_string(), g)].into())
                .unwrap_or_default(),
        },
    );
    a.metadata.labels = labels;
    a
}

pub async fn create_if_absent(store: &Store, a: &Artifact) {
    match store.create(a).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => panic!("recording {}: {e}", a.name()),
    }
}

/// Records (retrying failed writes) the `model` artifact of every succeeded Job that declares a `model` output, as the
/// artifacts controller would after the agent uploaded `$RIFT_OUTPUTS/model/model.pt`.
pub fn record_models(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok((jobs, _)) = store.list::<JobSpec>(&LabelSelector::default()).await {
                for j in jobs {
                    let done = j
                        .status
                        .as_ref()
                        .is_some_and(|s| s.phase == JobPhase::Succeeded);
                    if done && j.spec.outputs.iter().any(|o| o.name == "model") {
                        let a = recorded(
                            j.name(),
                            &j.spec,
                            j.name(),
                            &j.metadata.labels,
                            "model",
                            None,
                        );
                        // A failed write (etcd slow under load) is tried again next round,
                        // as the controller would; it must not end the recorder.
                        if let Err(e) = store.create(&a).await {
                            if !matches!(e, StoreError::AlreadyExists { .. }) {
                                eprintln!("recorder: {}: {e}; trying again", a.name());
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The name of the model artifact `job`'s `model` output is recorded as by [`record_models`].
pub fn model_name(job: &str) -> String {
    use sha2::Digest as _;
    Digest::from_bytes(sha2::Sha256::digest(job.as_bytes()).into()).artifact_name()
}
