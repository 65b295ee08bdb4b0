//! An at-most-one-instance detector for real job processes: every instance of a job records
//! its start and stop in one shared log and holds a kernel lock on the job's lock file while it
//! lives.
//!
//! A job whose command comes from [`InstanceLog::command`] takes `flock` on
//! `<dir>/locks/<job>.lock` before it records `start`. The kernel releases that lock the moment
//! the process ends, however it ends (SIGKILL included), so a second instance that finds the
//! lock held is, without any timing judgement, running while another instance of the same job
//! is alive: it records `overlap` and then runs on as rift told it to (the detector never hides
//! what rift does). Every node of a test runs on this one machine, so one lock file sees all of
//! them.
//!
//! Log lines: `<event> <job> <pid> <unix ns> <detail>`, with event `start`, `stop` (detail
//! `term`, `int` or `done`) or `overlap` (detail: the attempt number rift gave). An instance
//! killed with SIGKILL has no `stop` line; [`InstanceReport::alive`] tells the living ones
//! from the dead by the process table.
//!
//! Caveats: the lock is held by the job's shell only (its `sleep` child closes it), so an
//! instance is exactly "the shell is alive". The log is appended with `O_APPEND` lines far
//! below `PIPE_BUF`, so lines never interleave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shell script every logged job runs; `$1` log, `$2` lock, `$3` job, `$4` seconds
/// (0: until stopped), `$5` seconds it lingers after SIGTERM/SIGINT before it exits (default 0).
/// With job `-` the name comes from `RIFT_JOB_NAME` and `$2` is the locks directory.
const SCRIPT: &str = r#"log="$1"; lock="$2"; job="$3"; secs="$4"; linger="${5:-0}"
if [ "$job" = - ]; then job="$RIFT_JOB_NAME"; lock="$lock/$job.lock"; fi
now() { date +%s%N; }
exec 9>>"$lock"
if ! flock -n 9; then echo "overlap $job $$ $(now) ${RIFT_ATTEMPT:-?}" >>"$log"; fi
echo "start $job $$ $(now) ${RIFT_ATTEMPT:-?}" >>"$log"
trap 'kill $child 2>/dev/null; [ "$linger" = 0 ] || sleep "$linger" 9>&-; echo "stop $job $$ $(now) term" >>"$log"; exit 143' TERM
trap 'kill $child 2>/dev/null; [ "$linger" = 0 ] || sleep "$linger" 9>&-; echo "stop $job $$ $(now) int" >>"$log"; exit 130' INT
if [ "$secs" = 0 ]; then sleep infinity 9>&- & else sleep "$secs" 9>&- & fi
child=$!
wait $child
echo "stop $job $$ $(now) done" >>"$log"
"#;

/// A shared instance log under one directory.
#[derive(Clone, Debug)]
pub struct InstanceLog {
    dir: PathBuf,
}

/// What an instance's log line says happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop(String),
    Overlap,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub event: Event,
    pub job: String,
    pub pid: u32,
    pub at_ns: u128,
    pub detail: String,
}

/// One instance of a job, from its `start` line to its `stop` line (if it wrote one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub job: String,
    pub pid: u32,
    pub started_ns: u128,
    pub stopped_ns: Option<u128>,
    /// `term`, `int` or `done`; `None` when it wrote no stop line (killed, or still running).
    pub stop: Option<String>,
}

/// Every instance the log recorded, and every overlap.
#[derive(Clone, Debug, Default)]
pub struct InstanceReport {
    pub instances: Vec<Instance>,
    /// `overlap` records: an instance started while another of its job held the lock.
    pub overlaps: Vec<Record>,
}

impl InstanceLog {
    /// Uses (and creates) `dir` for the log and the lock files.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<InstanceLog> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("locks"))?;
        Ok(InstanceLog { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("instances.log")
    }

    fn lock(&self, job: &str) -> PathBuf {
        self.dir.join("locks").join(format!("{job}.lock"))
    }

    /// The argv of a job that records itself here and runs for `run_for` (forever when
    /// `None`), exiting 0; SIGTERM ends it at once with 143.
    pub fn command(&self, job: &str, run_for: Option<Duration>) -> Vec<String> {
        let secs = run_for.map_or(0.0, |d| d.as_secs_f64().max(0.001));
        vec![
            "sh".into(),
            "-c".into(),
            SCRIPT.into(),
            "rift-instance".into(),
            self.path().display().to_string(),
            self.lock(job).display().to_string(),
            job.into(),
            format!("{secs}"),
        ]
    }

    /// Like [`command`](Self::command), but SIGTERM or SIGINT ends the instance only `linger`
    /// later (a job saving a checkpoint on its way out); it holds its lock until then, and a
    /// SIGKILL meanwhile ends it without a stop line. For checking that nothing takes a job's
    /// place (its name, its GPU) before its old instance is really gone.
    pub fn lingering_command(
        &self,
        job: &str,
        run_for: Option<Duration>,
        linger: Duration,
    ) -> Vec<String> {
        let mut argv = self.command(job, run_for);
        argv.push(format!("{}", linger.as_secs_f64().max(0.001)));
        argv
    }

    /// Like [`command`](Self::command), for jobs whose name is not known when the command is
    /// written (a Pool's template): the instance takes its job's name from `RIFT_JOB_NAME`,
    /// which the agent sets for every job.
    pub fn command_named_by_env(&self, run_for: Option<Duration>) -> Vec<String> {
        let mut argv = self.command("-", run_for);
        argv[5] = self.dir.join("locks").display().to_string();
        argv
    }

    /// Every record so far, in log order; a line cut short by a crash mid-write is skipped.
    pub fn records(&self) -> std::io::Result<Vec<Record>> {
        let text = match std::fs::read_to_string(self.path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(text.lines().filter_map(parse_line).collect())
    }

    /// Instances and overlaps so far.
    pub fn report(&self) -> std::io::Result<InstanceReport> {
        Ok(InstanceReport::from_records(self.records()?))
    }
}

fn parse_line(line: &str) -> Option<Record> {
    let mut f = line.split(' ');
    let event = f.next()?;
    let job = f.next()?.to_string();
    let pid = f.next()?.parse().ok()?;
    let at_ns = f.next()?.parse().ok()?;
    let detail = f.next().unwrap_or_default().to_string();
    let event = match event {
        "start" => Event::Start,
        "stop" => Event::Stop(detail.clone()),
        "overlap" => Event::Overlap,
        _ => return None,
    };
    Some(Record {
        event,
        job,
        pid,
        at_ns,
        detail,
    })
}

impl InstanceReport {
    pub fn from_records(records: Vec<Record>) -> InstanceReport {
        let mut report = InstanceReport::default();
        // An instance is keyed by job and pid: a pid is never reused while its instance's
        // start line is the latest for that pair.
        let mut open: BTreeMap<(String, u32), usize> = BTreeMap::new();
        for r in records {
            match &r.event {
                Event::Start => {
                    open.insert((r.job.clone(), r.pid), report.instances.len());
                    report.instances.push(Instance {
                        job: r.job,
                        pid: r.pid,
                        started_ns: r.at_ns,
                        stopped_ns: None,
                        stop: None,
                    });
                }
                Event::Stop(how) => {
                    if let Some(i) = open.remove(&(r.job.clone(), r.pid)) {
                        report.instances[i].stopped_ns = Some(r.at_ns);
                        report.instances[i].stop = Some(how.clone());
                    }
                }
                Event::Overlap => report.overlaps.push(r),
            }
        }
        report
    }

    /// The instances of `job`, in start order.
    pub fn of(&self, job: &str) -> Vec<&Instance> {
        self.instances.iter().filter(|i| i.job == job).collect()
    }

    /// Instances of `job` whose process is alive now (no stop line, and the pid still runs
    /// this job's script).
    pub fn alive(&self, job: &str) -> Vec<&Instance> {
        self.of(job)
            .into_iter()
            .filter(|i| i.stopped_ns.is_none() && is_instance_process(i.pid, job))
            .collect()
    }

    /// How many times `job` started.
    pub fn starts(&self, job: &str) -> usize {
        self.of(job).len()
    }

    /// Panics with every overlap when any instance ran beside another of its job.
    pub fn assert_no_overlap(&self) {
        assert!(
            self.overlaps.is_empty(),
            "two instances of a job ran at once: {:#?}\ninstances: {:#?}",
            self.overlaps,
            self.instances
        );
    }
}

/// Whether `pid` is a live (not zombie) process running an instance script of `job`.
fn is_instance_process(pid: u32, job: &str) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    let zombie = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true);
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let named =
        args.contains(&job.as_bytes()) || (args.contains(&&b"-"[..]) && env_names_job(&proc, job));
    !zombie && args.contains(&&b"rift-instance"[..]) && named
}

/// Whether the process's environment says `RIFT_JOB_NAME=<job>`.
fn env_names_job(proc: &Path, job: &str) -> bool {
    let wanted = format!("RIFT_JOB_NAME={job}");
    std::fs::read(proc.join("environ"))
        .map(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    /// An instance in a process group of its own, so [`kill_group`] leaves nothing behind
    /// (its `sleep` child would otherwise outlive a killed shell and hold the test's stdout).
    fn spawn_argv(argv: &[String]) -> Child {
        use std::os::unix::process::CommandExt;
        Command::new(&argv[0])
            .args(&argv[1..])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn spawn(log: &InstanceLog, job: &str, run_for: Option<Duration>) -> Child {
        spawn_argv(&log.command(job, run_for))
    }

    /// SIGKILLs the instance's whole group and reaps the shell.
    fn kill_group(c: &mut Child) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        c.wait().unwrap();
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < until, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn one_instance_after_another_is_not_an_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::new(dir.path()).unwrap();
        for _ in 0..2 {
            assert!(spawn(&log, "a", Some(Duration::from_millis(50)))
                .wait()
                .unwrap()
                .success());
        }
        let r = log.report().unwrap();
        r.assert_no_overlap();
        assert_eq!(r.starts("a"), 2);
        assert!(r.of("a").iter().all(|i| i.stop.as_deref() == Some("done")));
    }

    #[test]
    fn a_second_instance_beside_a_living_one_is_recorded_as_an_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::new(dir.path()).unwrap();
        let mut first = spawn(&log, "a", None);
        wait_for("first start", || log.report().unwrap().starts("a") == 1);
        let mut second = spawn(&log, "a", None);
        wait_for("second start", || log.report().unwrap().starts("a") == 2);
        // Another job's instance is no overlap.
        let mut other = spawn(&log, "b", None);
        wait_for("other start", || log.report().unwrap().starts("b") == 1);
        let r = log.report().unwrap();
        assert_eq!(r.overlaps.len(), 1, "{r:?}");
        assert_eq!(r.overlaps[0].job, "a");
        assert_eq!(r.alive("a").len(), 2);
        for c in [&mut first, &mut second, &mut other] {
            kill_group(c);
        }
    }

    #[test]
    fn an_instance_named_by_its_environment_is_logged_locked_and_found_alive_under_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::new(dir.path()).unwrap();
        let argv = log.command_named_by_env(None);
        let spawn = || {
            use std::os::unix::process::CommandExt;
            Command::new(&argv[0])
                .args(&argv[1..])
                .env("RIFT_JOB_NAME", "pool-n-0")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut first = spawn();
        wait_for("start", || log.report().unwrap().starts("pool-n-0") == 1);
        assert_eq!(log.report().unwrap().alive("pool-n-0").len(), 1);
        let mut second = spawn();
        wait_for("second", || log.report().unwrap().starts("pool-n-0") == 2);
        assert_eq!(log.report().unwrap().overlaps.len(), 1);
        for c in [&mut first, &mut second] {
            kill_group(c);
        }
    }

    #[test]
    fn a_lingering_instance_holds_its_lock_until_it_really_exits() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::new(dir.path()).unwrap();
        let argv = log.lingering_command("a", None, Duration::from_millis(700));
        let mut first = spawn_argv(&argv);
        wait_for("start", || log.report().unwrap().starts("a") == 1);
        let asked = std::time::Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut second = spawn(&log, "a", None);
        wait_for("second start", || log.report().unwrap().starts("a") == 2);
        first.wait().unwrap();
        assert!(asked.elapsed() >= Duration::from_millis(600));
        let r = log.report().unwrap();
        assert_eq!(
            r.overlaps.len(),
            1,
            "the lingering instance still held the job"
        );
        assert_eq!(r.of("a")[0].stop.as_deref(), Some("term"));
        kill_group(&mut second);
    }

    #[test]
    fn a_sigkilled_instance_frees_the_lock_and_reads_as_dead() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::new(dir.path()).unwrap();
        let mut first = spawn(&log, "a", None);
        wait_for("start", || log.report().unwrap().starts("a") == 1);
        assert_eq!(log.report().unwrap().alive("a").len(), 1);
        kill_group(&mut first);
        let r = log.report().unwrap();
        assert!(r.alive("a").is_empty());
        assert_eq!(r.of("a")[0].stop, None);
        let mut second = spawn(&log, "a", None);
        wait_for("second start", || log.report().unwrap().starts("a") == 2);
        log.report().unwrap().assert_no_overlap();
        // SIGTERM is recorded as a stop.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(second.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        second.wait().unwrap();
        assert_eq!(
            log.report().unwrap().of("a")[1].stop.as_deref(),
            Some("term")
        );
    }
}
