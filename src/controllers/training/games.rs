//! Counting a TrainingTarget's games from its selfplay jobs' `games` counters. Pure.
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
use crate::api::training_target::TrainingTargetSpec;

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

/// The jobs whose games count toward a target: those its `selfplaySelector` matches, never a
/// target's own training or evaluation jobs.
pub fn selfplay_jobs<'a>(spec: &TrainingTargetSpec, jobs: &'a [Job]) -> Vec<&'a Job> {
    jobs.iter()
        .filter(|j| selector_matches(&spec.selfplay_selector, &j.metadata.labels))
        .filter(|j| {
            !j.metadata
                .labels
                .contains_key(crate::api::labels::TRAINING_TARGET)
        })
        .collect()
}
