//! Running the real `rift` binary against a test cluster.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Path of the `rift` binary cargo built for these tests.
pub fn rift_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rift")
}

/// The outcome of one `rift` invocation.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A `rift` command pointed at `endpoints` through `RIFT_ENDPOINTS`, with the credentials of
/// the test cluster those endpoints belong to (`RIFT_CONFIG`; see [`super::trust`]), or
/// `RIFT_INSECURE=1` for `http://` endpoints of no registered cluster (a plaintext cluster).
pub fn rift_command(endpoints: &str, args: &[&str]) -> Command {
    let mut c = Command::new(rift_bin());
    c.args(args)
        .env("RIFT_ENDPOINTS", endpoints)
        .env_remove("RIFT_LOG")
        .env_remove("RIFT_CONFIG")
        .env_remove("RIFT_INSECURE")
        .env_remove("RIFT_NODE_CONFIG")
        .stdin(Stdio::null());
    match super::trust::lookup(endpoints) {
        Some(t) => {
            c.env("RIFT_CONFIG", &t.admin_conf);
        }
        None if endpoints.starts_with("http://") => {
            c.env("RIFT_INSECURE", "1");
        }
        None => {}
    }
    c
}

/// Runs `rift ARGS` to completion.
pub fn rift(endpoints: &str, args: &[&str]) -> Run {
    rift_command(endpoints, args)
        .output()
        .expect("the rift binary runs")
        .into()
}

/// Runs `rift ARGS` with `input` on stdin.
pub fn rift_stdin(endpoints: &str, args: &[&str], input: &str) -> Run {
    let mut child = rift_command(endpoints, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rift binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().into()
}

/// A child process killed and reaped when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
