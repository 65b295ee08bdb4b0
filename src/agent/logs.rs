//! `GET /v1/jobs/{name}/logs`: a job's output, read from this node's state directory
//! (`<state>/jobs/<job>/attempts/<n>/output.log`, rotated once to `output.log.1`).
//!
//! Query parameters:
//!
//! - `attempt=N`: the attempt to show (default: the latest);
//! - `tail=N`: only its last N lines (default: all that is kept, the rotated file included). Only
//!   the end of the files is read: the start is found by scanning backwards from the end;
//! - `follow=true`: keep streaming what is written next.
//!
//! Following polls the log every [`POLL`]. A rotation is noticed by the file's identity: the old
//! file is read to its end, then the new one from its start. When a newer attempt appears, the
//! current one is read to its end, a line `--- attempt N ---` is sent and the newer attempt is
//! followed from its start. The stream ends:
//!
//! - when the followed attempt has its `exit.json`, everything it wrote has been sent (the log is
//!   read to its end once more after the exit record was seen), and no newer attempt has started
//!   by then: [`END_GRACE`] after that point when the job's restart policy starts no further
//!   attempt, or [`START_SLACK`] after the time the policy would start the next one
//!   ([`policy::decide`] on the same records the runner reads) — so `-f` on a job that is
//!   retried shows every attempt, and on one that is over ends within about a second;
//! - when the job's directory is removed (its binding left this node, or it was rebound at a
//!   new epoch and starts over);
//! - when the client goes away (the body is dropped), or the agent gets SIGTERM/SIGINT (a
//!   follower must not hold up the agent's graceful shutdown).
//!
//! At most [`AgentState::max_follow_streams`] logs are followed at once; one more is answered
//! `503 Service Unavailable` with a message saying so (a finished or dropped follower frees its
//! place at once).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::jobs::layout::{read_json, ExitRecord, JobDir, ProcRecord, RunSpec};
use super::jobs::policy::{self, AttemptState, Book, Next, Observed};
use super::AgentState;
use crate::tasks::CancellationToken;

/// How often a followed log is polled for new bytes, rotations and attempts.
pub const POLL: Duration = Duration::from_millis(200);
/// How long a follower waits for a newer attempt once the followed one is over and the restart
/// policy starts no further attempt.
pub const END_GRACE: Duration = Duration::from_secs(1);
/// How long past the time the restart policy would start the next attempt a follower waits for
/// it (the runner acts on a 500 ms tick, and the shim must create the attempt's directory).
pub const START_SLACK: Duration = Duration::from_secs(2);
/// The most bytes read (and sent) at once.
const CHUNK: usize = 64 * 1024;

/// The query of `GET /v1/jobs/{name}/logs`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub tail: Option<usize>,
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// The handler: 400 for a name that is no DNS-1123 label (so `..` or `a/b` cannot leave the
/// state directory), 404 for a job or attempt this node has no directory for, else 200 with the
/// log as a stream of bytes.
pub async fn job_logs(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    let dir = match state.state_dir.job(&name) {
        Ok(dir) => dir,
        Err(e) => {
            let body = format!("invalid job name {:?}: {}\n", e.name, e.problem);
            return (StatusCode::BAD_REQUEST, body).into_response();
        }
    };
    // Taken before any file is opened: an endless stream holds its place until it ends.
    let follow_permit = if query.follow {
        match state.follow_streams.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                state.metrics.follows_refused.inc();
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "5")],
                    format!(
                        "node {:?} is already streaming {} followed logs, its limit; stop one \
                         (e.g. another `rift logs -f`) or read without following\n",
                        state.node, state.max_follow_streams
                    ),
                )
                    .into_response();
            }
        }
    } else {
        None
    };
    let q = query.clone();
    let opened =
        tokio::task::spawn_blocking(move || LogReader::open(dir, q.attempt, q.tail, q.follow))
            .await;
    let reader = match opened {
        Ok(Ok(r)) => r,
        Ok(Err(OpenError::NoJob)) => {
            return (
                StatusCode::NOT_FOUND,
                format!("job {name:?} has no state on node {:?}\n", state.node),
            )
                .into_response()
        }
        Ok(Err(OpenError::NoAttempt { asked, last })) => {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "job {name:?} has no attempt {asked} on node {:?} (the latest is {last})\n",
                    state.node
                ),
            )
                .into_response()
        }
        Ok(Err(OpenError::Io(e))) => {
            tracing::warn!(job = %name, %e, "cannot read the job's log");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log of job {name:?}: {e}\n"),
            )
                .into_response();
        }
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log of job {name:?}: {e}\n"),
            )
                .into_response()
        }
    };
    let attempt = reader.attempt();
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (
                header::HeaderName::from_static("x-rift-attempt"),
                attempt.to_string(),
            ),
        ],
        Body::from_stream(stream(reader, name, follow_permit, state.shutdown.clone())),
    )
        .into_response()
}

/// The reader as a stream of chunks; file I/O runs on the blocking pool. `permit` (a follower's
/// place) is held until the stream ends or is dropped. A follower ends when `stop` (the
/// agent's shutdown) fires, since graceful HTTP shutdown waits for every response to finish.
fn stream(
    reader: LogReader,
    job: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stop: CancellationToken,
) -> impl futures::Stream<Item = Result<Vec<u8>, io::Error>> + Send + 'static {
    futures::stream::unfold(Some((reader, stop)), move |state| {
        let job = job.clone();
        let _held = &permit;
        async move {
            let (mut reader, stop) = state?;
            loop {
                if stop.is_cancelled() {
                    return None;
                }
                let stepped = tokio::task::spawn_blocking(move || {
                    let step = reader.step();
                    (reader, step)
                })
                .await;
                let (back, step) = match stepped {
                    Ok(v) => v,
                    Err(e) => return Some((Err(io::Error::other(e)), None)),
                };
                reader = back;
                match step {
                    Ok(Step::Data(bytes)) => return Some((Ok(bytes), Some((reader, stop)))),
                    Ok(Step::End) => return None,
                    Ok(Step::Idle) => {
                        tokio::select! {
                            _ = tokio::time::sleep(POLL) => {}
                            _ = stop.cancelled() => return None,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%job, %e, "cannot read the job's log");
                        let line = format!("--- error reading the log: {e} ---\n");
                        return Some((Ok(line.into_bytes()), None));
                    }
                }
            }
        }
    })
}

/// Why a log cannot be served.
#[derive(Debug)]
pub enum OpenError {
    /// The job has no directory on this node.
    NoJob,
    /// The asked attempt has no directory.
    NoAttempt {
        asked: u32,
        last: u32,
    },
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// What [`LogReader::step`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes to send.
    Data(Vec<u8>),
    /// Nothing new yet (following): poll again after [`POLL`].
    Idle,
    /// Everything was sent.
    End,
}

/// The file being read and where, with its identity to notice a rotation.
struct Live {
    file: File,
    pos: u64,
    id: (u64, u64),
}

impl Live {
    fn new(file: File, pos: u64) -> io::Result<Self> {
        let id = file_id(&file.metadata()?);
        Ok(Self { file, pos, id })
    }
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

fn open_if_exists(path: &std::path::Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one job's log: synchronous, one step at a time, so that a follower holds no thread
/// between polls.
pub struct LogReader {
    job: JobDir,
    follow: bool,
    /// The attempt being read; 0 while none has started (following waits for the first).
    attempt: u32,
    /// Bytes of the rotated file to send before `live`: (file, from, to).
    old: Option<(File, u64, u64)>,
    live: Option<Live>,
    /// The last byte sent ended a line (or nothing was sent).
    at_line_start: bool,
    /// The attempt's exit record was seen and the log read to its end after that.
    exit_seen: bool,
    /// Once the attempt is over and drained: when to end if no newer attempt starts.
    end_at: Option<Instant>,
}

impl LogReader {
    /// A reader of `attempt` (default: the latest) of the job in `job`, from its last `tail`
    /// lines (default: all kept).
    pub fn open(
        job: JobDir,
        attempt: Option<u32>,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<Self, OpenError> {
        if !job.path().is_dir() {
            return Err(OpenError::NoJob);
        }
        let attempt = match attempt {
            Some(n) if job.attempt(n).is_dir() => n,
            Some(asked) => {
                return Err(OpenError::NoAttempt {
                    asked,
                    last: job.last_attempt(),
                })
            }
            None => job.last_attempt(),
        };
        let mut r = LogReader {
            job,
            follow,
            attempt,
            old: None,
            live: None,
            at_line_start: true,
            exit_seen: false,
            end_at: None,
        };
        if attempt > 0 {
            r.open_attempt(tail)?;
        }
        Ok(r)
    }

    /// The attempt being read (0 when none has started yet).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Positions on the last `tail` lines of the current attempt's log and its rotated part.
    fn open_attempt(&mut self, tail: Option<usize>) -> io::Result<()> {
        let path = self.job.log(self.attempt);
        // The live file first: a rotation in between then at worst shows a part twice.
        let Some(main) = open_if_exists(&path)? else {
            return Ok(());
        };
        let main_meta = main.metadata()?;
        let rotated = open_if_exists(&path.with_extension("log.1"))?
            .map(|f| f.metadata().map(|m| (f, m)))
            .transpose()?
            .filter(|(_, m)| file_id(m) != file_id(&main_meta));
        let mut segments: Vec<(&File, u64)> = Vec::new();
        if let Some((f, m)) = &rotated {
            segments.push((f, m.len()));
        }
        segments.push((&main, main_meta.len()));
        let (index, offset) = match tail {
            None => (0, 0),
            Some(n) => tail_start(&segments, n)?,
        };
        let main_pos = if index + 1 == segments.len() {
            offset
        } else {
            0
        };
        if let Some((f, m)) = rotated {
            if index == 0 {
                self.old = Some((f, offset, m.len()));
            }
        }
        self.live = Some(Live::new(main, main_pos)?);
        Ok(())
    }

    /// Reads what is there next; see the module documentation for when a follower ends.
    pub fn step(&mut self) -> io::Result<Step> {
        loop {
            if let Some(data) = self.read_some()? {
                return Ok(self.data(data));
            }
            if !self.follow {
                return Ok(Step::End);
            }
            // The live file is read to its end: was it rotated, or has it appeared?
            let path = self.job.log(self.attempt);
            match &self.live {
                Some(live) => {
                    let rotated = std::fs::metadata(&path).is_ok_and(|m| file_id(&m) != live.id);
                    if rotated {
                        if let Some(f) = open_if_exists(&path)? {
                            // What reached the old file after our last read comes first.
                            let old = self.live.replace(Live::new(f, 0)?).expect("live");
                            self.old = Some((old.file, old.pos, u64::MAX));
                            continue;
                        }
                    }
                }
                None if self.attempt > 0 => {
                    if let Some(f) = open_if_exists(&path)? {
                        self.live = Some(Live::new(f, 0)?);
                        continue;
                    }
                }
                None => {}
            }
            if let Some(next) = self.next_attempt() {
                // Anything the old attempt wrote since the read above comes first.
                if let Some(data) = self.read_some()? {
                    return Ok(self.data(data));
                }
                let mut line = if self.at_line_start { "" } else { "\n" }.to_string();
                if self.attempt > 0 {
                    line.push_str(&format!("--- attempt {next} ---\n"));
                }
                self.attempt = next;
                self.old = None;
                self.live = None;
                self.exit_seen = false;
                self.end_at = None;
                if line.is_empty() {
                    continue;
                }
                return Ok(self.data(line.into_bytes()));
            }
            let gone = if self.attempt > 0 {
                !self.job.attempt(self.attempt).is_dir()
            } else {
                !self.job.path().is_dir()
            };
            if gone {
                return Ok(Step::End);
            }
            if self.attempt > 0 {
                if let Ok(Some(exit)) = read_json::<ExitRecord>(&self.job.exit_record(self.attempt))
                {
                    if !self.exit_seen {
                        // Everything the attempt wrote is in the log before its exit record:
                        // read to the end once more before deciding.
                        self.exit_seen = true;
                        continue;
                    }
                    let end_at = match self.end_at {
                        Some(at) => at,
                        None => *self.end_at.insert(self.expected_end(&exit)),
                    };
                    if Instant::now() >= end_at {
                        return Ok(Step::End);
                    }
                }
            }
            return Ok(Step::Idle);
        }
    }

    fn data(&mut self, data: Vec<u8>) -> Step {
        self.at_line_start = data.last() == Some(&b'\n');
        Step::Data(data)
    }

    /// Up to [`CHUNK`] bytes from the rotated part, then from the live file; `None` at the end.
    fn read_some(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let Some((file, from, to)) = &mut self.old {
            if *from < *to {
                let want = (*to - *from).min(CHUNK as u64) as usize;
                let mut buf = vec![0; want];
                let n = file.read_at(&mut buf, *from)?;
                if n > 0 {
                    buf.truncate(n);
                    *from += n as u64;
                    return Ok(Some(buf));
                }
            }
            self.old = None;
        }
        if let Some(live) = &mut self.live {
            let mut buf = vec![0; CHUNK];
            let n = live.file.read_at(&mut buf, live.pos)?;
            if n > 0 {
                buf.truncate(n);
                live.pos += n as u64;
                return Ok(Some(buf));
            }
        }
        Ok(None)
    }

    /// The lowest attempt above the current one, if one has started.
    fn next_attempt(&self) -> Option<u32> {
        std::fs::read_dir(self.job.path().join("attempts"))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|n| *n > self.attempt)
            .min()
    }

    /// When to end after attempt `self.attempt` ended with `exit`, unless a newer one starts:
    /// shortly after the restart policy would start it, or [`END_GRACE`] from now when it starts
    /// none.
    fn expected_end(&self, exit: &ExitRecord) -> Instant {
        let now = Instant::now();
        match next_start(&self.job, self.attempt, exit) {
            Some(due) => {
                let wait = (due - Utc::now()).to_std().unwrap_or_default();
                now + wait + START_SLACK
            }
            None => now + END_GRACE,
        }
    }
}

/// When the runner will start the attempt after `attempt`, which ended with `exit`, from the
/// same records it decides on; `None` when the policy starts no further attempt.
fn next_start(job: &JobDir, attempt: u32, exit: &ExitRecord) -> Option<chrono::DateTime<Utc>> {
    let spec: RunSpec = read_json(&job.run_spec()).ok().flatten()?;
    let started = read_json::<ProcRecord>(&job.job_record(attempt))
        .ok()
        .flatten()
        .and_then(|r| r.started_at);
    let book = read_json::<Book>(&job.book())
        .ok()
        .flatten()
        .unwrap_or_default()
        .count(attempt, started, exit);
    let observed = Observed {
        attempt,
        state: AttemptState::Ended(exit.clone()),
        failures: book.failures,
        first_started: book.first_started,
    };
    match policy::decide(&spec, &observed, Utc::now()) {
        Next::Start { not_before, .. } => Some(not_before),
        _ => None,
    }
}

/// Where the last `n` lines of the concatenation of `segments` (each a file and its length)
/// start: (segment index, offset). Scans backwards from the end in blocks, so only about the
/// bytes of those lines are read. A final newline ends the last line rather than starting an
/// empty one.
fn tail_start(segments: &[(&File, u64)], n: usize) -> io::Result<(usize, u64)> {
    tail_scan(segments, n).map(|(index, offset, _)| (index, offset))
}

/// [`tail_start`], and how many bytes it read.
fn tail_scan(segments: &[(&File, u64)], n: usize) -> io::Result<(usize, u64, u64)> {
    let last = segments.len() - 1;
    if n == 0 {
        return Ok((last, segments[last].1, 0));
    }
    let mut scanned = 0;
    let mut wanted: Option<usize> = None; // newlines still to find, once the last byte is known
    let mut buf = vec![0u8; CHUNK];
    for index in (0..segments.len()).rev() {
        let (file, len) = segments[index];
        let mut end = len;
        while end > 0 {
            let start = end.saturating_sub(CHUNK as u64);
            let block = &mut buf[..(end - start) as usize];
            file.read_exact_at(block, start)?;
            scanned += block.len() as u64;
            for i in (0..block.len()).rev() {
                // A trailing newline ends the last line; any count (usize::MAX included) is fine.
                let needed = wanted.get_or_insert(if block[i] == b'\n' {
                    n.saturating_add(1)
                } else {
                    n
                });
                if block[i] == b'\n' {
                    *needed -= 1;
                    if *needed == 0 {
                        return Ok((index, start + i as u64 + 1, scanned));
                    }
                }
            }
            end = start;
        }
    }
    Ok((0, 0, scanned))
}

#[cfg(test)]
mod tests;
