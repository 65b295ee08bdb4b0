//! What the shim prepares before it starts a job's process, in one place: the user it runs
//! as ([`super::run_as`]), the variables of its `envFrom` files ([`super::env_files`]), and
//! where it writes its progress and result ([`super::exchange`] when it runs as another user;
//! the state directory otherwise, with both files created private first), and its data:
//! `RIFT_INPUTS` (staged by the agent before the attempt) and `RIFT_OUTPUTS` (each declared
//! output's directory created here, and both opened to the job's user when it runs as another
//! one, [`super::job_data`]).
//!
//! The shim calls [`Launch::prepare`] once at start (an error is the attempt's start error),
//! [`Launch::configure`] on the command just before spawning it, [`Launch::sync_due`] on every
//! turn of its loop and [`Launch::finish`] before it writes the exit record.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use super::env_files;
use super::exchange::Exchange;
use super::job_data;
use super::layout::{JobDir, RunSpec};
use super::run_as::{self, RunAs};
use super::shim::ShimOptions;

/// One attempt's launch settings.
pub struct Launch {
    /// The user to switch to; `None` when the job runs as the shim's own user.
    switch_to: Option<RunAs>,
    secret_env: Vec<(String, String)>,
    exchange: Option<Exchange>,
    progress_file: PathBuf,
    result_file: PathBuf,
    workdir: Option<String>,
    /// `RIFT_INPUTS` and `RIFT_OUTPUTS` (the job directory's `inputs/` and `outputs/`).
    inputs_dir: PathBuf,
    outputs_dir: PathBuf,
}

impl Launch {
    /// Resolves the user, reads the `envFrom` files and makes the progress and result files'
    /// place. The error is the attempt's start error, for people (it never holds a secret).
    pub fn prepare(
        job: &JobDir,
        attempt: u32,
        spec: &RunSpec,
        options: &ShimOptions,
    ) -> Result<Launch, String> {
        let run_as = options
            .run_as
            .as_deref()
            .map(RunAs::resolve_usable)
            .transpose()
            .map_err(|e| e.to_string())?;
        let switch_to = run_as.filter(|u| !u.is_current());
        let secret_env =
            env_files::read_all(&spec.env_from, &options.secrets_dir).map_err(|e| e.to_string())?;
        let exchange = match &switch_to {
            Some(user) => Some(Exchange::create(job, attempt, user).map_err(|e| {
                format!("cannot make a directory for the job's progress and result files: {e}")
            })?),
            None => {
                // Created here, private, so a job that appends or truncates keeps that mode.
                for path in [job.progress(attempt), job.result()] {
                    let _ = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path);
                }
                None
            }
        };
        // Each declared output's directory exists before the process starts, so a job can
        // rename its files into place without creating it.
        for output in &spec.outputs {
            let dir = job.outputs().join(&output.name);
            std::fs::create_dir_all(&dir).map_err(|e| {
                format!("cannot create the output directory {}: {e}", dir.display())
            })?;
        }
        if let Some(user) = &switch_to {
            job_data::open_to(job, spec, user).map_err(|e| {
                format!(
                    "cannot open the job's inputs and outputs to user {}: {e}",
                    user.name
                )
            })?;
        }
        let (progress_file, result_file) = match &exchange {
            Some(x) => (x.progress_file(), x.result_file()),
            None => (job.progress(attempt), job.result()),
        };
        Ok(Launch {
            switch_to,
            secret_env,
            exchange,
            progress_file,
            result_file,
            workdir: spec.workdir.clone(),
            inputs_dir: job.inputs(),
            outputs_dir: job.outputs(),
        })
    }

    /// Sets up `cmd` (its program, arguments and the Job's own `env` already set): the
    /// `envFrom` variables for names it does not set itself, the progress and result files,
    /// the user and the working directory.
    pub fn configure(&self, cmd: &mut Command) {
        let set: HashSet<OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for (name, value) in &self.secret_env {
            if !set.contains(&OsString::from(name)) {
                cmd.env(name, value);
            }
        }
        cmd.env("RIFT_PROGRESS_FILE", &self.progress_file)
            .env("RIFT_RESULT_FILE", &self.result_file)
            .env("RIFT_INPUTS", &self.inputs_dir)
            .env("RIFT_OUTPUTS", &self.outputs_dir);
        run_as::prepare(cmd, self.switch_to.as_ref(), self.workdir.as_deref());
    }

    /// The start error when spawning `program` failed with `e`.
    pub fn start_error(&self, program: &str, e: &std::io::Error) -> String {
        match (&self.switch_to, &self.workdir) {
            (Some(u), Some(w)) => {
                format!(
                    "cannot start `{program}` as user {} in workdir `{w}`: {e}",
                    u.name
                )
            }
            (Some(u), None) => format!("cannot start `{program}` as user {}: {e}", u.name),
            (None, _) => format!("cannot start `{program}`: {e}"),
        }
    }

    /// Copies the job's progress and result in, when due (see [`Exchange::sync_due`]).
    pub fn sync_due(&mut self) {
        if let Some(x) = &mut self.exchange {
            x.sync_due();
        }
    }

    /// Copies the job's last progress and result in and removes its private directory.
    pub fn finish(&mut self) {
        if let Some(mut x) = self.exchange.take() {
            x.sync();
        }
    }
}
