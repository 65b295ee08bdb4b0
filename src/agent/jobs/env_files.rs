//! A Job's `envFrom` files: secret environment variables kept on the node, read by the shim
//! when an attempt starts.
//!
//! Guarantees:
//! - Only files inside the node's secrets directory are read: a name relative to it, or an
//!   absolute path under it, without `..` — so a Job spec cannot make the shim (which runs as
//!   root) read the node's keys, etcd's data or other files into a job's environment. The check
//!   is on the path as written; a symlink the node's administrator put in the directory is
//!   followed.
//! - Values go only into the job's environment. No error message, log line or record names a
//!   value or quotes a line: problems are reported by file, line number and variable name.
//! - A file larger than [`MAX_ENV_FILE_BYTES`] is refused before it is read whole.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The largest `envFrom` file read.
pub const MAX_ENV_FILE_BYTES: u64 = 64 * 1024;

/// The default secrets directory (`secretsDir` in the node config).
pub const DEFAULT_SECRETS_DIR: &str = "/etc/rift/secrets";

/// Why the variables of an `envFrom` file cannot be used. Never holds a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvFileError {
    #[error("envFrom: {file} is outside this node's secrets directory {dir} (secretsDir in the node config); name a file in it, e.g. wandb.env")]
    Outside { file: String, dir: String },
    #[error("envFrom: cannot read {path}: {reason}; create it on this node (KEY=VALUE lines, mode 0600, owned by root)")]
    Read { path: String, reason: String },
    #[error(
        "envFrom: {path} is {size} bytes; the limit is {} bytes",
        MAX_ENV_FILE_BYTES
    )]
    TooLarge { path: String, size: u64 },
    #[error("envFrom: {path} line {line}: {why}")]
    Syntax {
        path: String,
        line: usize,
        why: &'static str,
    },
    #[error("envFrom: {path} line {line}: the name before `=` is not a valid variable name (letters, digits and `_`, not starting with a digit)")]
    BadName { path: String, line: usize },
}

/// Where `file` (as written in the Job) lives, if it is inside `secrets_dir`.
pub fn resolve(file: &str, secrets_dir: &Path) -> Result<PathBuf, EnvFileError> {
    let outside = || EnvFileError::Outside {
        file: file.to_string(),
        dir: secrets_dir.display().to_string(),
    };
    let given = Path::new(file);
    if file.is_empty() || given.components().any(|c| c == Component::ParentDir) {
        return Err(outside());
    }
    let path = secrets_dir.join(given);
    if !path.starts_with(secrets_dir) || path == secrets_dir {
        return Err(outside());
    }
    Ok(path)
}

/// Every variable of every file, in order (a later file wins for a repeated name).
pub fn read_all(
    files: &[String],
    secrets_dir: &Path,
) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut vars = Vec::new();
    for file in files {
        let path = resolve(file, secrets_dir)?;
        vars.extend(read_one(&path)?);
    }
    Ok(vars)
}

fn read_one(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let shown = path.display().to_string();
    let read_err = |e: std::io::Error| EnvFileError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(EnvFileError::Read {
            path: shown,
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_ENV_FILE_BYTES {
        return Err(EnvFileError::TooLarge {
            path: shown,
            size: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(EnvFileError::TooLarge {
            path: shown,
            size: bytes.len() as u64,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| EnvFileError::Read {
        path: shown.clone(),
        reason: "not UTF-8 text".into(),
    })?;
    parse(&text).map_err(|(line, problem)| match problem {
        LineProblem::Syntax(why) => EnvFileError::Syntax {
            path: shown.clone(),
            line,
            why,
        },
        LineProblem::BadName => EnvFileError::BadName {
            path: shown.clone(),
            line,
        },
    })
}

/// What is wrong with one line. Holds no part of the line: a malformed line may be a pasted
/// token, and its name part may be a piece of one.
#[derive(Debug, PartialEq, Eq)]
pub enum LineProblem {
    Syntax(&'static str),
    BadName,
}

/// Parses `KEY=VALUE` lines (`export ` allowed before the name; a value in matching single or
/// double quotes has them removed, nothing else is interpreted). Errors carry the 1-based line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, LineProblem)> {
    let mut vars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            return Err((i + 1, LineProblem::Syntax("expected KEY=VALUE")));
        };
        let name = name.trim_end();
        if !valid_name(name) {
            return Err((i + 1, LineProblem::BadName));
        }
        if value.contains('\0') {
            return Err((i + 1, LineProblem::Syntax("the value holds a NUL byte")));
        }
        vars.push((name.to_string(), unquote(value.trim()).to_string()));
    }
    Ok(vars)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_variables_with_quotes_exports_and_comments_handled() {
        let text =
            "# wandb\n\nWANDB_API_KEY=abc=def\nexport HF_TOKEN = \"hf x\"\nQUOTED='a b'\nEMPTY=\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                ("WANDB_API_KEY".to_string(), "abc=def".to_string()),
                ("HF_TOKEN".into(), "hf x".into()),
                ("QUOTED".into(), "a b".into()),
                ("EMPTY".into(), "".into()),
            ]
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number_without_their_value() {
        let (line, p) = parse("A=1\nsupersecretvalue\n").unwrap_err();
        assert_eq!((line, p), (2, LineProblem::Syntax("expected KEY=VALUE")));
        let (line, p) = parse("A=1\n\nab-cd==\n").unwrap_err();
        assert_eq!((line, p), (3, LineProblem::BadName));
    }

    #[test]
    fn only_files_inside_the_secrets_directory_are_read() {
        let dir = Path::new("/etc/rift/secrets");
        assert_eq!(
            resolve("wandb.env", dir).unwrap(),
            Path::new("/etc/rift/secrets/wandb.env")
        );
        assert_eq!(
            resolve("/etc/rift/secrets/team/a.env", dir).unwrap(),
            Path::new("/etc/rift/secrets/team/a.env")
        );
        for bad in [
            "/var/lib/rift/pki/node.key",
            "../../../var/lib/rift/jobs/x/run.json",
            "/etc/rift/secrets/../node.yaml",
            "/etc/rift/secrets",
            "",
        ] {
            assert!(
                matches!(resolve(bad, dir), Err(EnvFileError::Outside { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_oversized_and_malformed_files_fail_without_showing_values() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_all(&["none.env".into()], dir.path()).unwrap_err();
        assert!(err.to_string().contains("none.env"), "{err}");
        assert!(err.to_string().contains("create it on this node"), "{err}");

        std::fs::write(dir.path().join("big.env"), vec![b'#'; 70_000]).unwrap();
        let err = read_all(&["big.env".into()], dir.path()).unwrap_err();
        assert!(matches!(err, EnvFileError::TooLarge { size: 70_000, .. }));

        std::fs::write(dir.path().join("bad.env"), "TOKEN=hunter2\nhunter3\n").unwrap();
        let err = read_all(&["bad.env".into()], dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && !err.contains("hunter"), "{err}");

        std::fs::write(dir.path().join("a.env"), "A=1\nB=2\n").unwrap();
        std::fs::write(dir.path().join("b.env"), "B=3\n").unwrap();
        let vars = read_all(&["a.env".into(), "b.env".into()], dir.path()).unwrap();
        assert_eq!(vars.last().unwrap(), &("B".to_string(), "3".to_string()));
    }
}
