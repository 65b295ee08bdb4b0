//! What to do next with a job on this node, decided from what its attempts did: pure
//! functions ([`decide`], [`Book::count`]), unit-tested without processes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::{EndReason, ExitRecord, RunSpec};
use crate::api::job::{JobPhase, RestartPolicy};

/// The delay before the first restart; doubled for each further failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest delay between restarts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// An attempt that ran at least this long before it failed starts a fresh failure count: an
/// `Always` job that crashes once a week never exhausts its `backoffLimit`.
pub const HEALTHY_RUN: Duration = Duration::from_secs(600);

/// The restart bookkeeping of one job on this node, kept in the job's directory so that it
/// survives agent restarts and the pruning of old attempt folders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Book {
    /// The last attempt whose end has been counted (0: none).
    pub through: u32,
    /// Failed attempts in the current count: since the first attempt, or since the last one
    /// that ran for [`HEALTHY_RUN`] or more.
    pub failures: u32,
    /// When the first attempt started (`activeDeadlineSeconds` counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_started: Option<DateTime<Utc>>,
}

/// True for an end that counts against `backoffLimit`: any end but a success, or a stop
/// because the node lost its lease (not the job's fault; see [`decide`]).
pub fn counts_as_failure(rec: &ExitRecord) -> bool {
    !rec.succeeded() && rec.reason != EndReason::NodeLost
}

impl Book {
    /// The book once attempt `n` (started at `started`) ended as `rec`; unchanged when `n` was
    /// counted already. A failure after a run of [`HEALTHY_RUN`] or more starts a fresh count.
    pub fn count(&self, n: u32, started: Option<DateTime<Utc>>, rec: &ExitRecord) -> Book {
        if n <= self.through {
            return self.clone();
        }
        let ran_healthy = started.is_some_and(|s| {
            (rec.finished_at - s)
                .to_std()
                .is_ok_and(|ran| ran >= HEALTHY_RUN)
        });
        let before = if ran_healthy { 0 } else { self.failures };
        Book {
            through: n,
            failures: before.saturating_add(u32::from(counts_as_failure(rec))),
            first_started: self.first_started.or(started),
        }
    }

    /// The book once an attempt was seen started at `started`.
    pub fn started(&self, started: Option<DateTime<Utc>>) -> Book {
        Book {
            first_started: self.first_started.or(started),
            ..self.clone()
        }
    }
}

/// The last attempt as observed on this node.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptState {
    /// No attempt started yet.
    NotStarted,
    Running,
    Ended(ExitRecord),
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The number of the last attempt (0 when none).
    pub attempt: u32,
    pub state: AttemptState,
    /// Failed attempts in the current count ([`Book::failures`]), the last one included.
    pub failures: u32,
    /// When the first attempt started.
    pub first_started: Option<DateTime<Utc>>,
}

/// The next step for one job.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Start attempt `attempt` once `not_before` has passed.
    Start {
        attempt: u32,
        not_before: DateTime<Utc>,
    },
    /// The attempt runs; nothing to do.
    Wait,
    /// The attempt runs past `activeDeadlineSeconds`: stop it.
    Stop { reason: &'static str },
    /// The job is over.
    Done {
        phase: JobPhase,
        reason: String,
        message: String,
    },
}

/// The delay before restarting after `failures` failed attempts.
pub fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    (BACKOFF_BASE * factor).min(BACKOFF_CAP)
}

fn past_deadline(spec: &RunSpec, obs: &Observed, now: DateTime<Utc>) -> bool {
    match (spec.active_deadline_seconds, obs.first_started) {
        // A limit beyond what a clock can count is never reached.
        (Some(limit), Some(start)) => {
            i64::try_from(limit).is_ok_and(|limit| (now - start).num_seconds() >= limit)
        }
        _ => false,
    }
}

fn describe_exit(rec: &ExitRecord) -> String {
    match (rec.exit_code, rec.signal) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), None) => format!("exited with code {code}"),
        (None, None) if !rec.message.is_empty() => rec.message.clone(),
        (None, None) => "ended".into(),
    }
}

fn failed(reason: &str, message: String) -> Next {
    Next::Done {
        phase: JobPhase::Failed,
        reason: reason.into(),
        message,
    }
}

/// The next step for `spec` given what its attempts did.
///
/// - `Never`: one attempt; exit 0 → Succeeded, anything else → Failed.
/// - `OnFailure`: failures are retried after [`backoff`] until more than `backoffLimit`
///   attempts failed; exit 0 → Succeeded.
/// - `Always`: like `OnFailure`, and a successful exit starts the next attempt too (after
///   [`BACKOFF_BASE`]), without counting against `backoffLimit`.
/// - Start errors count as failures; `Rejected` (retrying cannot help) ends the job at once;
///   running past `activeDeadlineSeconds` stops it and fails it.
/// - `NodeLost` (the node lost its lease for `lostAfter` and the job was stopped so it could run
///   elsewhere) is not the job's failure: the next attempt may start at once, without backoff
///   and without counting against `backoffLimit` — the runner starts it only once the lease is
///   current again and the job is still bound here (otherwise it runs on its new node).
pub fn decide(spec: &RunSpec, obs: &Observed, now: DateTime<Utc>) -> Next {
    let rec = match &obs.state {
        AttemptState::NotStarted => {
            return Next::Start {
                attempt: 1,
                not_before: now,
            }
        }
        AttemptState::Running if past_deadline(spec, obs, now) => {
            return Next::Stop {
                reason: "DeadlineExceeded",
            }
        }
        AttemptState::Running => return Next::Wait,
        AttemptState::Ended(rec) => rec,
    };
    let deadline_message = || {
        format!(
            "ran longer than activeDeadlineSeconds ({}s)",
            spec.active_deadline_seconds.unwrap_or_default()
        )
    };
    match rec.reason {
        EndReason::Rejected => return failed("Rejected", rec.message.clone()),
        EndReason::NodeLost if !past_deadline(spec, obs, now) => {
            return Next::Start {
                attempt: obs.attempt.saturating_add(1),
                not_before: rec.finished_at,
            }
        }
        EndReason::NodeLost => {}
        EndReason::Stopped if past_deadline(spec, obs, now) => {
            return failed("DeadlineExceeded", deadline_message())
        }
        EndReason::Stopped => return failed("Stopped", rec.message.clone()),
        EndReason::Exited | EndReason::StartError => {}
    }
    if past_deadline(spec, obs, now) {
        return failed("DeadlineExceeded", deadline_message());
    }
    let next_after = |delay: Duration| Next::Start {
        attempt: obs.attempt.saturating_add(1),
        not_before: rec.finished_at + chrono::Duration::from_std(delay).unwrap_or_default(),
    };
    if rec.succeeded() {
        return match spec.restart_policy {
            RestartPolicy::Always => next_after(BACKOFF_BASE),
            _ => Next::Done {
                phase: JobPhase::Succeeded,
                reason: "Completed".into(),
                message: "exited with code 0".into(),
            },
        };
    }
    let what = if rec.reason == EndReason::StartError {
        rec.message.clone()
    } else {
        describe_exit(rec)
    };
    let reason = if rec.reason == EndReason::StartError {
        "StartError"
    } else {
        "Error"
    };
    match spec.restart_policy {
        RestartPolicy::Never => failed(reason, what),
        RestartPolicy::OnFailure | RestartPolicy::Always if obs.failures > spec.backoff_limit => {
            failed(
                "BackoffLimitExceeded",
                format!(
                    "{} attempts failed (backoffLimit {}); the last {what}",
                    obs.failures, spec.backoff_limit
                ),
            )
        }
        RestartPolicy::OnFailure | RestartPolicy::Always => next_after(backoff(obs.failures)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::job::OnNodeLost;

    fn spec(policy: RestartPolicy, limit: u32) -> RunSpec {
        RunSpec {
            job: "j".into(),
            uid: String::new(),
            epoch: 1,
            command: vec!["true".into()],
            env: Default::default(),
            env_from: Vec::new(),
            workdir: None,
            gpus: vec![],
            restart_policy: policy,
            backoff_limit: limit,
            active_deadline_seconds: None,
            on_node_lost: OnNodeLost::Wait,
            lost_after_secs: 60,
            grace_secs: 30,
            inputs: Vec::new(),
            outputs: Vec::new(),
            labels: Default::default(),
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn ended(code: i32, reason: EndReason, at: i64) -> AttemptState {
        AttemptState::Ended(ExitRecord {
            exit_code: Some(code),
            signal: None,
            finished_at: t(at),
            reason,
            message: "m".into(),
        })
    }

    fn obs(attempt: u32, state: AttemptState, failures: u32) -> Observed {
        Observed {
            attempt,
            state,
            failures,
            first_started: Some(t(0)),
        }
    }

    #[test]
    fn first_attempt_starts_now() {
        let o = Observed {
            attempt: 0,
            state: AttemptState::NotStarted,
            failures: 0,
            first_started: None,
        };
        assert_eq!(
            decide(&spec(RestartPolicy::Never, 3), &o, t(5)),
            Next::Start {
                attempt: 1,
                not_before: t(5)
            }
        );
    }

    #[test]
    fn never_succeeds_or_fails_after_one_attempt() {
        let s = spec(RestartPolicy::Never, 3);
        assert!(matches!(
            decide(&s, &obs(1, ended(0, EndReason::Exited, 1), 0), t(2)),
            Next::Done {
                phase: JobPhase::Succeeded,
                ..
            }
        ));
        match decide(&s, &obs(1, ended(3, EndReason::Exited, 1), 1), t(2)) {
            Next::Done {
                phase: JobPhase::Failed,
                reason,
                message,
            } => {
                assert_eq!(reason, "Error");
                assert_eq!(message, "exited with code 3");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn on_failure_retries_with_growing_backoff_until_the_limit() {
        let s = spec(RestartPolicy::OnFailure, 2);
        assert_eq!(
            decide(&s, &obs(1, ended(1, EndReason::Exited, 10), 1), t(10)),
            Next::Start {
                attempt: 2,
                not_before: t(11)
            }
        );
        assert_eq!(
            decide(&s, &obs(2, ended(1, EndReason::Exited, 20), 2), t(20)),
            Next::Start {
                attempt: 3,
                not_before: t(22)
            }
        );
        match decide(&s, &obs(3, ended(1, EndReason::Exited, 30), 3), t(30)) {
            Next::Done {
                phase: JobPhase::Failed,
                reason,
                ..
            } => assert_eq!(reason, "BackoffLimitExceeded"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&s, &obs(2, ended(0, EndReason::Exited, 40), 1), t(40)),
            Next::Done {
                phase: JobPhase::Succeeded,
                ..
            }
        ));
    }

    #[test]
    fn always_restarts_after_success_without_using_the_limit() {
        let s = spec(RestartPolicy::Always, 0);
        assert_eq!(
            decide(&s, &obs(5, ended(0, EndReason::Exited, 10), 0), t(10)),
            Next::Start {
                attempt: 6,
                not_before: t(11)
            }
        );
    }

    #[test]
    fn start_errors_count_as_failures_and_rejections_end_at_once() {
        let s = spec(RestartPolicy::OnFailure, 1);
        assert!(matches!(
            decide(&s, &obs(1, ended(0, EndReason::StartError, 1), 1), t(1)),
            Next::Start { attempt: 2, .. }
        ));
        assert!(matches!(
            decide(&s, &obs(1, ended(0, EndReason::Rejected, 1), 0), t(1)),
            Next::Done {
                phase: JobPhase::Failed,
                ..
            }
        ));
        match decide(
            &spec(RestartPolicy::Never, 0),
            &obs(1, ended(0, EndReason::StartError, 1), 1),
            t(1),
        ) {
            Next::Done {
                reason, message, ..
            } => assert_eq!((reason.as_str(), message.as_str()), ("StartError", "m")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_node_lost_stop_runs_again_at_once_and_is_no_failure() {
        for policy in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            let s = spec(policy, 0);
            assert_eq!(
                decide(&s, &obs(1, ended(0, EndReason::NodeLost, 1), 0), t(5)),
                Next::Start {
                    attempt: 2,
                    not_before: t(1)
                },
                "{policy:?}"
            );
        }
        let lost = ExitRecord {
            exit_code: None,
            signal: Some(15),
            finished_at: t(9),
            reason: EndReason::NodeLost,
            message: String::new(),
        };
        assert_eq!(Book::default().count(1, Some(t(0)), &lost).failures, 0);
    }

    fn exit_at(code: i32, at: i64) -> ExitRecord {
        ExitRecord {
            exit_code: Some(code),
            signal: None,
            finished_at: t(at),
            reason: EndReason::Exited,
            message: String::new(),
        }
    }

    #[test]
    fn a_failure_after_a_healthy_run_starts_a_fresh_count() {
        let healthy = HEALTHY_RUN.as_secs() as i64;
        let book = Book::default().count(1, Some(t(0)), &exit_at(1, 5)).count(
            2,
            Some(t(10)),
            &exit_at(1, 15),
        );
        assert_eq!(book.failures, 2, "two quick crashes count");
        let book = book.count(3, Some(t(20)), &exit_at(1, 20 + healthy));
        assert_eq!(book.failures, 1, "a crash after a healthy run starts over");
        assert_eq!(
            book.count(3, Some(t(0)), &exit_at(1, 1)),
            book,
            "counted once"
        );
        assert_eq!(book.first_started, Some(t(0)));
        let ok = book.count(4, Some(t(30)), &exit_at(0, 31));
        assert_eq!(ok.failures, 1, "a success does not count");
    }

    #[test]
    fn an_always_job_crashing_once_a_week_runs_forever() {
        let s = spec(RestartPolicy::Always, 1);
        let week = 7 * 24 * 3600;
        let mut book = Book::default();
        for n in 1..=20u32 {
            let start = i64::from(n) * week;
            let rec = exit_at(1, start + week - 60);
            book = book.count(n, Some(t(start)), &rec);
            let o = Observed {
                attempt: n,
                state: AttemptState::Ended(rec),
                failures: book.failures,
                first_started: book.first_started,
            };
            assert!(
                matches!(decide(&s, &o, t(start + week)), Next::Start { .. }),
                "crash {n} ended it"
            );
        }
    }

    #[test]
    fn deadline_stops_a_running_job_and_fails_it() {
        let mut s = spec(RestartPolicy::OnFailure, 5);
        s.active_deadline_seconds = Some(60);
        assert_eq!(
            decide(&s, &obs(1, AttemptState::Running, 0), t(59)),
            Next::Wait
        );
        assert_eq!(
            decide(&s, &obs(1, AttemptState::Running, 0), t(60)),
            Next::Stop {
                reason: "DeadlineExceeded"
            }
        );
        match decide(&s, &obs(1, ended(0, EndReason::Stopped, 61), 0), t(61)) {
            Next::Done { reason, .. } => assert_eq!(reason, "DeadlineExceeded"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deadline_beyond_any_clock_is_never_reached() {
        let mut s = spec(RestartPolicy::Never, 0);
        s.active_deadline_seconds = Some(u64::MAX);
        assert_eq!(
            decide(&s, &obs(1, AttemptState::Running, 0), t(60)),
            Next::Wait
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), BACKOFF_CAP);
    }
}
