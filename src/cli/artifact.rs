//! `rift artifact push FILE` and `rift artifact pull NAME -o FILE`: bytes into and out of the
//! cluster's artifact store, with their `Artifact` record in etcd.
//!
//! Push sends the bytes first and records the Artifact only once they are stored, so a record
//! never names missing bytes; pushing the same bytes again sends nothing and changes nothing.
//! Pull writes `FILE.partial`, verifies size and sha256, and only then renames it to `FILE`
//! (a damaged copy is retried, then refused; an interrupted pull continues where it stopped).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::artifact::{Artifact, ArtifactSpec, Digest};
use crate::api::artifact_store::{ArtifactStoreSpec, DEFAULT_STORE};
use crate::api::validation::FieldErrors;
use crate::api::Object;
use crate::artifacts::{self, TransferError};
use crate::cli::printer::human_bytes;
use crate::store::{Store, StoreError};

use super::CliError;

/// Tries of a pull whose bytes arrive damaged or whose store connection fails.
pub const PULL_TRIES: u32 = 3;

#[derive(Debug, clap::Args)]
pub struct ArtifactArgs {
    #[command(subcommand)]
    pub command: ArtifactCommand,
    /// Where the ArtifactStore's `credentialsFile` is looked up.
    #[arg(long, global = true, env = "RIFT_SECRETS_DIR", value_name = "DIR",
          default_value = crate::agent::jobs::env_files::DEFAULT_SECRETS_DIR)]
    pub secrets_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum ArtifactCommand {
    /// Upload FILE to the artifact store and record it as artifact `sha256-<digest>`.
    Push(PushArgs),
    /// Download an artifact's bytes to a file, verified against its sha256.
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The file to upload (it must not change while it is pushed).
    pub file: PathBuf,
    /// A label, KEY=VALUE (repeatable), e.g. `-l type=model -l board=hex8`.
    #[arg(short = 'l', long = "label", value_parser = super::agent::parse_label)]
    pub labels: Vec<(String, String)>,
    /// What the bytes are, e.g. npz or pt.
    #[arg(long)]
    pub format: Option<String>,
    /// A count of what is inside, NAME=N (repeatable), e.g. `--count games=5000`.
    #[arg(long = "count", value_parser = parse_count)]
    pub counts: Vec<(String, u64)>,
    /// An artifact this one was made from (repeatable).
    #[arg(long = "parent")]
    pub parents: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The artifact: `sha256-<hex>` (as `rift get artifacts` shows) or `sha256:<hex>`.
    pub name: String,
    /// Where to write it.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

fn parse_count(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=N"))?;
    let n = v.parse::<u64>().map_err(|_| {
        format!(
            "`{s}`: the count must be a whole number from 0 to {}",
            u64::MAX
        )
    })?;
    Ok((k.to_string(), n))
}

/// Why an artifact command failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactCmdError {
    #[error("this cluster has no ArtifactStore `{DEFAULT_STORE}`: apply one (`rift explain artifactstore`), e.g. url: s3://BUCKET with an endpoint and credentialsFile; `rift up` makes a local one")]
    NoStore,
    #[error(transparent)]
    Open(#[from] artifacts::OpenError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("the artifact's record would be invalid; nothing was pushed:\n{0}")]
    Invalid(FieldErrors),
    #[error("parent artifact {0} does not exist; push it first, or check the name with `rift get artifacts`")]
    NoParent(String),
    #[error("{0}")]
    BadName(#[from] crate::api::artifact::DigestError),
    #[error("gave up after {tries} tries: {last}")]
    GaveUp { tries: u32, last: TransferError },
}

pub async fn run(args: ArtifactArgs, store: &Store) -> Result<(), CliError> {
    let result = match args.command {
        ArtifactCommand::Push(push_args) => push(push_args, &args.secrets_dir, store).await,
        ArtifactCommand::Pull(pull_args) => pull(pull_args, &args.secrets_dir, store).await,
    };
    match result {
        Err(Failure::Cmd(e)) => Err(CliError::Artifact(Box::new(e))),
        Err(Failure::Store(e)) => Err(CliError::Store(e)),
        Ok(()) => Ok(()),
    }
}

enum Failure {
    Cmd(ArtifactCmdError),
    Store(StoreError),
}

impl<E: Into<ArtifactCmdError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Cmd(e.into())
    }
}

/// The cluster's artifact store, opened.
async fn open_store(store: &Store, secrets_dir: &Path) -> Result<artifacts::Store, Failure> {
    let spec = store
        .get::<ArtifactStoreSpec>(DEFAULT_STORE)
        .await
        .map_err(Failure::Store)?
        .ok_or(ArtifactCmdError::NoStore)?;
    Ok(artifacts::open(&spec.spec, secrets_dir)?)
}

async fn push(args: PushArgs, secrets_dir: &Path, store: &Store) -> Result<(), Failure> {
    let meta = std::fs::metadata(&args.file).map_err(|e| ArtifactCmdError::BadFile {
        path: args.file.clone(),
        reason: format!("{e}; name a file to push"),
    })?;
    if !meta.is_file() {
        return Err(ArtifactCmdError::BadFile {
            path: args.file.clone(),
            reason: "is not a regular file; push one file at a time".into(),
        }
        .into());
    }
    // Check everything that can be checked before a byte moves.
    let mut record = Object::new(
        Digest::from_bytes([0; 32]).artifact_name(),
        ArtifactSpec {
            digest: Digest::from_bytes([0; 32]).to_string(),
            size: meta.len(),
            format: args.format.clone(),
            producer: None,
            parents: args.parents.clone(),
            counts: args.counts.iter().cloned().collect::<BTreeMap<_, _>>(),
        },
    );
    record.metadata.labels = args.labels.iter().cloned().collect();
    let errors = record.validate();
    if !errors.is_empty() {
        return Err(ArtifactCmdError::Invalid(errors).into());
    }
    for parent in &args.parents {
        let found = store
            .get::<ArtifactSpec>(parent)
            .await
            .map_err(Failure::Store)?;
        if found.is_none() {
            return Err(ArtifactCmdError::NoParent(parent.clone()).into());
        }
    }
    let objects = open_store(store, secrets_dir).await?;
    let bar = Bar::new(format!("pushing {}", args.file.display()));
    let up = artifacts::upload(&objects, &args.file, &bar).await?;
    bar.done();
    record.metadata.name = up.digest.artifact_name();
    record.spec.digest = up.digest.to_string();
    record.spec.size = up.size;
    match store.create(&record).await {
        Ok(_) => println!(
            "artifact/{} created ({})",
            record.name(),
            human_bytes(up.size)
        ),
        Err(StoreError::AlreadyExists { .. }) => {
            println!(
                "artifact/{} unchanged (these bytes were pushed before)",
                record.name()
            )
        }
        Err(e) => return Err(Failure::Store(e)),
    }
    Ok(())
}

async fn pull(args: PullArgs, secrets_dir: &Path, store: &Store) -> Result<(), Failure> {
    let digest = Digest::parse(&args.name)?;
    let record: Option<Artifact> = store
        .get::<ArtifactSpec>(&digest.artifact_name())
        .await
        .map_err(Failure::Store)?;
    if record.is_none() {
        return Err(Failure::Store(StoreError::NotFound {
            kind: "Artifact".into(),
            name: digest.artifact_name(),
        }));
    }
    let objects = open_store(store, secrets_dir).await?;
    let bar = Bar::new(format!("pulling {}", args.output.display()));
    let partial = artifacts::transfer::partial_path(&args.output);
    if let Ok(meta) = std::fs::metadata(&partial) {
        bar.note(&format!(
            "resuming an interrupted pull: {} already in {}",
            human_bytes(meta.len()),
            partial.display()
        ));
    }
    let mut tries = 0;
    loop {
        tries += 1;
        match artifacts::download(&objects, &digest, &args.output, &bar).await {
            Ok(size) => {
                bar.done();
                println!("{} ({}) verified", args.output.display(), human_bytes(size));
                return Ok(());
            }
            Err(e) if e.is_retryable() && tries < PULL_TRIES => {
                bar.note(&format!(
                    "try {tries} of {PULL_TRIES} failed: {e}; trying again"
                ));
                tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
            }
            Err(e) if tries > 1 => return Err(ArtifactCmdError::GaveUp { tries, last: e }.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A progress line on stderr: redrawn in place on a terminal, a line per 10 % otherwise.
struct Bar {
    what: String,
    stage: Mutex<&'static str>,
    tty: bool,
    started: Mutex<Instant>,
    state: Mutex<(Instant, u64)>,
}

impl Bar {
    fn new(what: String) -> Self {
        let now = Instant::now();
        Self {
            what,
            stage: Mutex::new(""),
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            started: Mutex::new(now),
            state: Mutex::new((now - Duration::from_secs(1), u64::MAX)),
        }
    }

    fn note(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}{line}", if self.tty { "\n" } else { "" });
    }

    fn done(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

impl artifacts::Progress for Bar {
    fn stage(&self, name: &'static str) {
        *self.stage.lock().unwrap_or_else(|p| p.into_inner()) = name;
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        // The next report is printed whatever its percentage.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = (Instant::now() - Duration::from_secs(1), u64::MAX);
    }

    fn advanced(&self, done: u64, total: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let percent = (done.saturating_mul(100)).checked_div(total).unwrap_or(100);
        let now = Instant::now();
        let due = if self.tty {
            now - state.0 >= Duration::from_millis(100) || done == total
        } else {
            state.1 == u64::MAX || percent / 10 != state.1 / 10 && percent != state.1
        };
        if !due {
            return;
        }
        *state = (now, percent);
        let secs = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            .as_secs_f64()
            .max(0.001);
        let stage = *self.stage.lock().unwrap_or_else(|p| p.into_inner());
        let line = format!(
            "{}{}{stage}  {} / {}  {percent}%  {}/s",
            self.what,
            if stage.is_empty() { "" } else { ": " },
            human_bytes(done),
            human_bytes(total),
            human_bytes((done as f64 / secs) as u64)
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
}
