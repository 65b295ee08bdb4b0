//! Counting a TrainingTarget's games. Pure.
//!
//! ## From artifacts (selfplay with a `games` output)
//! A game artifact is an Artifact with a `games` count whose labels the target's
//! `selfplaySelector` matches, made by no TrainingTarget's own Job. Pool members' outputs carry
//! the Pool template's labels (see [`crate::controllers::pools`]), so the selector that picks
//! the selfplay Jobs picks their shards too. Artifacts are counted by creation revision:
//! `status.gamesRevision` is the highest one counted, so each artifact is counted once
//! whatever the number of shards, with nothing kept per shard ([`count_artifact_games`]).
//! Two jobs writing identical bytes make one artifact, counted once. Caveats: an artifact
//! deleted and made again is new (a new creation revision); labels edited to match only
//! after an artifact was passed over do not make it count.
//!
//! ## From progress counters (selfplay without outputs)
//!
//! Each selfplay job reports a `games` counter that only grows within one run (one job uid,
//! binding epoch and attempt). The target keeps a ledger of the highest count seen per run, so
//! a restarted job (a new attempt starting from zero) adds to the total instead of replacing
//! it, and a deleted job's games stay counted ([`TrainingTargetStatus::ledger`]).
//!
//! [`TrainingTargetStatus::ledger`]: crate::api::training_target::TrainingTargetStatus::ledger

use std::collections::BTreeMap;

use crate::api::job::Job;
use crate::api::node::selector_matches;
use crate::api::training_target::{TrainingTargetSpec, TrainingTargetStatus};
use crate::controllers::cluster_view::StoredArtifact;

/// The count a game artifact carries.
pub const GAMES: &str = "games";

/// The game artifacts of `spec`'s selfplay among `artifacts`, in the order given.
pub fn game_artifacts<'a>(
    spec: &'a TrainingTargetSpec,
    artifacts: &'a [StoredArtifact],
) -> impl Iterator<Item = &'a StoredArtifact> + 'a {
    artifacts.iter().filter(|a| {
        let labels = &a.artifact.metadata.labels;
        a.artifact.spec.counts.contains_key(GAMES)
            && selector_matches(&spec.selfplay_selector, labels)
            && !labels.contains_key(crate::api::labels::TRAINING_TARGET)
    })
}

/// The artifacts created after revision `after`, given `artifacts` oldest first (as a
/// [`crate::controllers::cluster_view::Snapshot`] holds them): a binary search, so a pass
/// over a fleet's shards looks only at the new ones.
pub fn created_after(artifacts: &[StoredArtifact], after: i64) -> &[StoredArtifact] {
    &artifacts[artifacts.partition_point(|a| a.created_revision <= after)..]
}

/// Adds the games of artifacts created after `status.gamesRevision` to
/// `status.artifactGames` and moves the watermark to the newest one counted. `artifacts` is
/// oldest first.
pub fn count_artifact_games(
    spec: &TrainingTargetSpec,
    status: &mut TrainingTargetStatus,
    artifacts: &[StoredArtifact],
) {
    let new = created_after(artifacts, status.games_revision);
    for a in game_artifacts(spec, new) {
        status.artifact_games = status
            .artifact_games
            .saturating_add(a.artifact.spec.counts[GAMES]);
        status.games_revision = status.games_revision.max(a.created_revision);
    }
}

/// The names of the game artifacts created in `(after, through]`, oldest first, at most
/// `limit` of them (the newest, when there are more). `artifacts` is oldest first.
pub fn games_between(
    spec: &TrainingTargetSpec,
    artifacts: &[StoredArtifact],
    after: i64,
    through: i64,
    limit: usize,
) -> Vec<String> {
    let mut names: Vec<(i64, &str)> = game_artifacts(spec, created_after(artifacts, after))
        .filter(|a| a.created_revision <= through)
        .map(|a| (a.created_revision, a.artifact.name()))
        .collect();
    names.sort();
    let skip = names.len().saturating_sub(limit);
    names
        .into_iter()
        .skip(skip)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// A run key in the ledger: `<job>/<uid>/<epoch>/<attempt>`.
pub fn ledger_key(job: &Job) -> Option<String> {
    let s = job.status.as_ref()?;
    Some(format!(
        "{}/{}/{}/{}",
        job.name(),
        job.metadata.uid.as_deref().unwrap_or("-"),
        s.epoch?,
        s.attempts
    ))
}

/// Folds the selfplay jobs' current counters into `ledger` (highest value per run) and returns
/// the total. Counters never make the total go backwards.
pub fn count_games(ledger: &mut BTreeMap<String, u64>, selfplay: &[&Job]) -> u64 {
    for job in selfplay {
        let Some(key) = ledger_key(job) else { continue };
        let games = job
            .status
            .as_ref()
            .and_then(|s| s.progress.get("games"))
            .copied()
            .unwrap_or(0.0)
            .max(0.0) as u64;
        // A run that has reported nothing yet (not started, or no games) needs no entry.
        if games == 0 && !ledger.contains_key(&key) {
            continue;
        }
        let entry = ledger.entry(key).or_insert(0);
        *entry = (*entry).max(games);
    }
    ledger.values().sum()
}

/// The jobs whose progress counters count toward a target: those its `selfplaySelector`
/// matches that declare no outputs (a job with outputs is counted by its artifacts), never a
/// target's own training or evaluation jobs.
pub fn selfplay_jobs<'a>(spec: &TrainingTargetSpec, jobs: &'a [Job]) -> Vec<&'a Job> {
    jobs.iter()
        .filter(|j| j.spec.outputs.is_empty())
        .filter(|j| selector_matches(&spec.selfplay_selector, &j.metadata.labels))
        .filter(|j| {
            !j.metadata
                .labels
                .contains_key(crate::api::labels::TRAINING_TARGET)
        })
        .collect()
}
