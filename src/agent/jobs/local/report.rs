//! The runtime report of a tracked job: its phase, reason and message as the policy decides.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::super::layout::EndReason;
use super::super::policy::{decide, AttemptState, Next, Observed};
use super::attempt::Tracked;
use crate::api::job::JobPhase;
use crate::api::placement::RuntimeReport;

/// The report of a tracked job from what its last attempt did.
pub(super) fn build_report(t: &Tracked, obs: &Observed, now: DateTime<Utc>) -> RuntimeReport {
    let attempt = obs.attempt;
    let mut r = RuntimeReport {
        epoch: t.spec.epoch,
        attempts: attempt,
        gpus: t.spec.gpus.clone(),
        progress: if attempt > 0 {
            t.dir.read_progress(attempt)
        } else {
            BTreeMap::new()
        },
        start_time: t.job_record.and_then(|p| p.started_at),
        ..RuntimeReport::default()
    };
    match (&obs.state, decide(&t.spec, obs, now)) {
        (AttemptState::NotStarted, _) => r.phase = JobPhase::Scheduled,
        (AttemptState::Running, _) => match t.job_record {
            Some(p) => {
                r.phase = JobPhase::Running;
                r.pid = Some(p.pid);
            }
            None => {
                r.phase = JobPhase::Scheduled;
                r.reason = "Starting".into();
            }
        },
        (
            AttemptState::Ended(rec),
            Next::Done {
                phase,
                reason,
                message,
            },
        ) => {
            r.phase = phase;
            r.reason = reason;
            r.message = message;
            r.exit_code = rec.exit_code;
            r.signal = rec.signal;
            r.finish_time = Some(rec.finished_at);
            r.result = t.dir.read_result();
        }
        (AttemptState::Ended(rec), Next::Start { not_before, .. }) => {
            r.phase = JobPhase::Scheduled;
            r.reason = if rec.reason == EndReason::NodeLost {
                "NodeLost".into()
            } else {
                "BackOff".into()
            };
            r.message = format!(
                "attempt {attempt} ended ({}); next attempt at {}",
                rec.exit_code
                    .map_or_else(|| rec.message.clone(), |c| format!("exit code {c}")),
                not_before.format("%H:%M:%S")
            );
            r.exit_code = rec.exit_code;
            r.signal = rec.signal;
        }
        (AttemptState::Ended(_), _) => r.phase = JobPhase::Scheduled,
    }
    r
}
