//! `promtool check metrics` (from Prometheus; `scripts/install-deps.sh` installs it), the
//! reference linter for the Prometheus text format.

use std::io::Write;
use std::process::{Command, Stdio};

/// The promtool binary: `RIFT_TEST_PROMTOOL`, else `promtool` on the PATH.
pub fn promtool_bin() -> String {
    std::env::var("RIFT_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// Runs `promtool check metrics` on `text`; `Err` with what it said when it finds a problem.
pub fn check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool_bin())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install it with scripts/install-deps.sh",
                promtool_bin()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
