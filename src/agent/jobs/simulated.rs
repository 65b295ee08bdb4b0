//! Simulated job processes for hollow nodes (`rift sim`): nothing is forked. An attempt is a
//! start time in memory; it writes the same records a `rift shim` would — the job record when
//! it starts, progress lines while it runs, the exit record when it ends — so the runner above
//! it (bindings, restart policy, reports) is the real one.
//!
//! How long an attempt runs and how it ends come from [`SimBehaviour`], overridable per Job by
//! its environment: `RIFT_SIM_DURATION` (e.g. `2s`, `0s` = until stopped) and
//! `RIFT_SIM_EXIT_CODE`.
//!
//! Caveats: simulated attempts live in the memory of the process running them; they do not
//! survive it (unlike shims), and the job record names pid 0 (no process exists).

use std::collections::HashMap;
use std::io;
use std::io::Write as _;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::layout::{
    write_json_volatile as write_json, EndReason, ExitRecord, JobDir, ProcRecord, RunSpec,
};
use super::process::JobProcesses;

/// Job environment variable overriding [`SimBehaviour::duration`].
pub const ENV_DURATION: &str = "RIFT_SIM_DURATION";
/// Job environment variable overriding [`SimBehaviour::exit_code`].
pub const ENV_EXIT_CODE: &str = "RIFT_SIM_EXIT_CODE";
/// The progress counter simulated attempts report.
pub const COUNTER: &str = "games";
/// The signal number recorded for an attempt stopped by the agent (SIGTERM).
const SIGTERM: i32 = 15;

/// What a simulated attempt does.
#[derive(Clone, Debug, PartialEq)]
pub struct SimBehaviour {
    /// How long it runs; zero runs until stopped.
    pub duration: Duration,
    /// The exit code it ends with.
    pub exit_code: i32,
    /// How often it writes a progress line; zero writes none.
    pub progress_every: Duration,
    /// How much the counter grows per second of running.
    pub counter_per_sec: f64,
}

impl Default for SimBehaviour {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            exit_code: 0,
            progress_every: Duration::from_secs(5),
            counter_per_sec: 10.0,
        }
    }
}

impl SimBehaviour {
    /// This behaviour with the overrides found in a job's environment (unparsable values are
    /// ignored, with a warning).
    pub fn for_job(&self, spec: &RunSpec) -> SimBehaviour {
        let mut b = self.clone();
        if let Some(v) = spec.env.get(ENV_DURATION) {
            match humantime::parse_duration(v) {
                Ok(d) => b.duration = d,
                Err(e) => tracing::warn!(job = spec.job, %e, "bad {ENV_DURATION}"),
            }
        }
        if let Some(v) = spec.env.get(ENV_EXIT_CODE) {
            match v.parse() {
                Ok(c) => b.exit_code = c,
                Err(e) => tracing::warn!(job = spec.job, %e, "bad {ENV_EXIT_CODE}"),
            }
        }
        b
    }
}

/// One running simulated attempt.
struct Attempt {
    n: u32,
    dir: JobDir,
    behaviour: SimBehaviour,
    started: Instant,
    last_progress: Instant,
    stop_requested: bool,
}

/// What [`Attempt::advance`] did.
#[derive(Debug, PartialEq)]
enum Step {
    Running,
    Ended,
}

impl Attempt {
    fn counter(&self, now: Instant) -> f64 {
        (now - self.started).as_secs_f64() * self.behaviour.counter_per_sec
    }

    fn write_progress(&self, now: Instant) {
        let line = format!("{{\"{COUNTER}\": {}}}\n", self.counter(now).floor());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.progress(self.n))
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(%e, "cannot write simulated progress");
        }
    }

    fn end(&self, exit_code: Option<i32>, signal: Option<i32>, reason: EndReason, msg: &str) {
        let rec = ExitRecord {
            exit_code,
            signal,
            finished_at: Utc::now(),
            reason,
            message: msg.to_string(),
        };
        if let Err(e) = write_json(&self.dir.exit_record(self.n), &rec) {
            tracing::warn!(%e, "cannot write a simulated exit record");
        }
    }

    /// Moves the attempt on to `now`: progress, and its end when due.
    fn advance(&mut self, now: Instant) -> Step {
        if self.stop_requested {
            self.end(
                None,
                Some(SIGTERM),
                EndReason::Stopped,
                "stopped by the agent",
            );
            return Step::Ended;
        }
        let b = &self.behaviour;
        let done = !b.duration.is_zero() && now - self.started >= b.duration;
        if !b.progress_every.is_zero() && (done || now - self.last_progress >= b.progress_every) {
            self.write_progress(now);
            self.last_progress = now;
        }
        if done {
            self.end(Some(b.exit_code), None, EndReason::Exited, "");
            return Step::Ended;
        }
        Step::Running
    }
}

/// The simulated process layer of one hollow node.
#[derive(Default)]
pub struct SimProcesses {
    behaviour: SimBehaviour,
    running: HashMap<String, Attempt>,
}

impl SimProcesses {
    pub fn new(behaviour: SimBehaviour) -> Self {
        Self {
            behaviour,
            running: HashMap::new(),
        }
    }

    /// How many simulated attempts are running.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

impl JobProcesses for SimProcesses {
    const DURABLE: bool = false;

    fn start(&mut self, dir: &JobDir, spec: &RunSpec, attempt: u32) -> io::Result<()> {
        let rec = ProcRecord {
            pid: 0,
            start_ticks: 0,
            started_at: Some(Utc::now()),
        };
        write_json(&dir.job_record(attempt), &rec)?;
        let now = Instant::now();
        self.running.insert(
            spec.job.clone(),
            Attempt {
                n: attempt,
                dir: dir.clone(),
                behaviour: self.behaviour.for_job(spec),
                started: now,
                last_progress: now,
                stop_requested: false,
            },
        );
        Ok(())
    }

    fn poll(&mut self) {
        let now = Instant::now();
        self.running.retain(|_, a| a.advance(now) == Step::Running);
    }

    fn is_running(&self, job: &str, _dir: &JobDir, attempt: u32) -> bool {
        self.running.get(job).is_some_and(|a| a.n == attempt)
    }

    fn stop(&mut self, job: &str, _dir: &JobDir, attempt: u32) {
        if let Some(a) = self.running.get_mut(job).filter(|a| a.n == attempt) {
            a.stop_requested = true;
        }
    }

    fn forget(&mut self, job: &str) {
        self.running.remove(job);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::agent::jobs::layout::{read_json, StateDir};
    use crate::api::job::{OnNodeLost, RestartPolicy};

    fn spec(job: &str, env: &[(&str, &str)]) -> RunSpec {
        RunSpec {
            job: job.into(),
            uid: String::new(),
            epoch: 1,
            command: vec!["selfplay".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            env_from: Vec::new(),
            workdir: None,
            gpus: vec![],
            restart_policy: RestartPolicy::Never,
            backoff_limit: 0,
            active_deadline_seconds: None,
            on_node_lost: OnNodeLost::Wait,
            lost_after_secs: 60,
            grace_secs: 10,
            inputs: Vec::new(),
            outputs: Vec::new(),
            labels: Default::default(),
        }
    }

    fn behaviour(secs: u64) -> SimBehaviour {
        SimBehaviour {
            duration: Duration::from_secs(secs),
            exit_code: 0,
            progress_every: Duration::from_secs(1),
            counter_per_sec: 10.0,
        }
    }

    fn started(procs: &mut SimProcesses, state: &StateDir, s: &RunSpec) -> JobDir {
        let dir = state.job(&s.job).unwrap();
        std::fs::create_dir_all(dir.attempt(1)).unwrap();
        procs.start(&dir, s, 1).unwrap();
        dir
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_runs_for_its_duration_reports_progress_and_exits() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let mut procs = SimProcesses::new(behaviour(3));
        let s = spec("sp", &[]);
        let dir = started(&mut procs, &state, &s);
        let rec: ProcRecord = read_json(&dir.job_record(1)).unwrap().unwrap();
        assert!(rec.started_at.is_some(), "the job record marks it started");
        assert!(procs.is_running("sp", &dir, 1));
        assert!(!procs.is_running("sp", &dir, 2), "only the started attempt");

        tokio::time::advance(Duration::from_millis(1500)).await;
        procs.poll();
        assert!(procs.is_running("sp", &dir, 1));
        assert_eq!(dir.read_progress(1)[COUNTER], 15.0);
        assert!(read_json::<ExitRecord>(&dir.exit_record(1))
            .unwrap()
            .is_none());

        tokio::time::advance(Duration::from_secs(2)).await;
        procs.poll();
        assert!(!procs.is_running("sp", &dir, 1));
        assert_eq!(procs.running(), 0);
        let exit: ExitRecord = read_json(&dir.exit_record(1)).unwrap().unwrap();
        assert!(exit.succeeded(), "{exit:?}");
        assert_eq!(
            dir.read_progress(1)[COUNTER],
            35.0,
            "a last line at the end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_jobs_environment_sets_duration_and_exit_code() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let mut procs = SimProcesses::new(behaviour(60));
        let s = spec("bad", &[(ENV_DURATION, "1s"), (ENV_EXIT_CODE, "3")]);
        let dir = started(&mut procs, &state, &s);
        tokio::time::advance(Duration::from_millis(1100)).await;
        procs.poll();
        let exit: ExitRecord = read_json(&dir.exit_record(1)).unwrap().unwrap();
        assert_eq!(exit.exit_code, Some(3));
        assert_eq!(exit.reason, EndReason::Exited);
        assert!(!exit.succeeded());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_attempt_ends_as_stopped_and_zero_duration_runs_until_then() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        let mut procs = SimProcesses::new(behaviour(0));
        let s = spec("forever", &[]);
        let dir = started(&mut procs, &state, &s);
        tokio::time::advance(Duration::from_secs(3600)).await;
        procs.poll();
        assert!(procs.is_running("forever", &dir, 1), "zero: until stopped");
        procs.stop("forever", &dir, 2);
        procs.poll();
        assert!(
            procs.is_running("forever", &dir, 1),
            "a stop for another attempt is ignored"
        );
        procs.stop("forever", &dir, 1);
        procs.poll();
        let exit: ExitRecord = read_json(&dir.exit_record(1)).unwrap().unwrap();
        assert_eq!(exit.reason, EndReason::Stopped);
        assert_eq!(exit.signal, Some(SIGTERM));
        assert!(!procs.is_running("forever", &dir, 1));
    }

    #[test]
    fn bad_overrides_keep_the_default() {
        let b = behaviour(7).for_job(&spec("x", &[(ENV_DURATION, "soon"), (ENV_EXIT_CODE, "x")]));
        assert_eq!(b, behaviour(7));
    }
}
