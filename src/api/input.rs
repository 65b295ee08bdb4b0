//! Limits on what rift reads from people's files, checked before the YAML parser sees them:
//! bounded time and memory whatever the input.
//!
//! - **Size**: a command reads at most [`MAX_INPUT_BYTES`] in all (a file's size is checked
//!   before it is read; stdin is read only that far). etcd takes 1.5 MiB per transaction by
//!   default, so nothing larger could be applied all or nothing anyway.
//! - **Flow nesting**: YAML flow collections (`[...]`, `{...}`) may nest at most
//!   [`MAX_FLOW_DEPTH`] deep. The YAML scanner's work per token grows with the flow depth, so
//!   200 KB of `[[[[...` took minutes; a count of it beforehand takes milliseconds. The count
//!   uses libyaml's own scanner (the one `serde_norway` parses with), so it sees exactly the
//!   collections the parser would — a bracket inside a quoted string, a comment or a block
//!   scalar is not one — and it stops at the first collection too deep.
//!
//! Block nesting needs no check of its own: the parser's recursion limit ends it early and
//! cheaply. Syntax errors are left to the parser, which reports them with its own message.

use std::io::Read;
use std::mem::MaybeUninit;
use std::path::Path;

use unsafe_libyaml_norway as unsafe_yaml;

/// The most bytes one command reads from its input files and stdin together.
pub const MAX_INPUT_BYTES: u64 = 16 << 20;
/// The deepest nesting of YAML flow collections accepted.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Input refused before parsing.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{source_name}: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    /// `size`: the file's size, or (stdin) how far it was read.
    #[error("{source_name}: the input is larger than rift reads in one command ({} MiB); etcd takes at most 1.5 MiB per transaction by default, so apply it in smaller parts", MAX_INPUT_BYTES >> 20)]
    TooLarge { source_name: String, size: u64 },
    #[error("{source_name}: line {line} column {column}: flow collections ([...] and {{...}}) nest more than {} deep here; write the data as block YAML or flatten it", MAX_FLOW_DEPTH)]
    TooDeep {
        source_name: String,
        line: usize,
        column: usize,
    },
}

/// Reads a file as text if it fits in `budget` bytes (what is left of [`MAX_INPUT_BYTES`]);
/// a larger regular file is refused before any of it is read.
pub fn read_file(path: &Path, budget: u64) -> Result<String, InputError> {
    let name = path.display().to_string();
    let read_err = |error| InputError::Read {
        source_name: name.clone(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_file() && meta.len() > budget {
        return Err(InputError::TooLarge {
            source_name: name,
            size: meta.len(),
        });
    }
    read_capped(&name, file, budget)
}

/// Reads stdin as text, at most `budget` bytes.
pub fn read_stdin(budget: u64) -> Result<String, InputError> {
    read_capped("<stdin>", std::io::stdin().lock(), budget)
}

fn read_capped(name: &str, reader: impl Read, budget: u64) -> Result<String, InputError> {
    let mut bytes = Vec::new();
    reader
        .take(budget + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| InputError::Read {
            source_name: name.to_string(),
            error,
        })?;
    if bytes.len() as u64 > budget {
        return Err(InputError::TooLarge {
            source_name: name.to_string(),
            size: bytes.len() as u64,
        });
    }
    String::from_utf8(bytes).map_err(|e| InputError::Read {
        source_name: name.to_string(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// Refuses `text` if its YAML flow collections nest deeper than [`MAX_FLOW_DEPTH`].
pub fn check_flow_depth(source_name: &str, text: &str) -> Result<(), InputError> {
    match deepest_flow(text, MAX_FLOW_DEPTH) {
        Some((line, column)) => Err(InputError::TooDeep {
            source_name: source_name.to_string(),
            line,
            column,
        }),
        None => Ok(()),
    }
}

/// Where (1-based line and column) the first flow collection deeper than `limit` starts, if
/// one does. Stops there, and at the first syntax error.
fn deepest_flow(text: &str, limit: usize) -> Option<(usize, usize)> {
    // SAFETY: the parser lives in a Box (libyaml keeps a pointer to it as the reader's data),
    // is initialized before use and deleted once; its input is `text`, which outlives it; every
    // token is deleted after its type and mark are read.
    unsafe {
        let mut parser: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>> =
            Box::new(MaybeUninit::uninit());
        let p = parser.as_mut_ptr();
        if unsafe_yaml::yaml_parser_initialize(p).fail {
            return None; // out of memory: the parser proper will say so
        }
        unsafe_yaml::yaml_parser_set_encoding(p, unsafe_yaml::YAML_UTF8_ENCODING);
        unsafe_yaml::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as _);
        let mut depth = 0usize;
        let mut too_deep = None;
        loop {
            let mut token = MaybeUninit::<unsafe_yaml::yaml_token_t>::zeroed();
            let t = token.as_mut_ptr();
            if unsafe_yaml::yaml_parser_scan(p, t).fail {
                break;
            }
            let kind = (*t).type_;
            let mark = (*t).start_mark;
            unsafe_yaml::yaml_token_delete(t);
            match kind {
                unsafe_yaml::YAML_FLOW_SEQUENCE_START_TOKEN
                | unsafe_yaml::YAML_FLOW_MAPPING_START_TOKEN => {
                    depth += 1;
                    if depth > limit {
                        too_deep = Some((mark.line as usize + 1, mark.column as usize + 1));
                        break;
                    }
                }
                unsafe_yaml::YAML_FLOW_SEQUENCE_END_TOKEN
                | unsafe_yaml::YAML_FLOW_MAPPING_END_TOKEN => {
                    depth = depth.saturating_sub(1);
                }
                unsafe_yaml::YAML_STREAM_END_TOKEN | unsafe_yaml::YAML_NO_TOKEN => break,
                _ => {}
            }
        }
        unsafe_yaml::yaml_parser_delete(p);
        too_deep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn deep_flow_nesting_is_found_fast_where_it_starts() {
        let text = format!("a: 1\nb: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let started = Instant::now();
        assert_eq!(deepest_flow(&text, 64), Some((2, 4 + 64)));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let text = format!("c: {}x{}\n", "{a: ".repeat(70), "}".repeat(70));
        assert_eq!(deepest_flow(&text, 64), Some((1, 4 + 4 * 64)));
    }

    #[test]
    fn brackets_in_strings_comments_and_block_scalars_do_not_count() {
        let deep = "[".repeat(200);
        let text = format!(
            "a: \"{deep}\"\nb: '{deep}'\n# {deep}\nc: |\n  {deep}\n  '\nd: [[[x]]]\ne: it's {deep}\n"
        );
        assert_eq!(deepest_flow(&text, 64), None);
        // Siblings do not add up: only nesting counts.
        let wide = format!("f: [{}]\n", vec!["[1, {a: [2]}]"; 5000].join(", "));
        assert_eq!(deepest_flow(&wide, 4), None);
        assert_eq!(deepest_flow(&wide, 3), Some((1, 13)));
    }

    #[test]
    fn syntax_errors_are_left_to_the_parser() {
        assert_eq!(deepest_flow("a: [1, 2\nb: : :\n\"", 64), None);
    }

    #[test]
    fn oversized_files_are_refused_before_reading_and_stdin_like_input_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_INPUT_BYTES + 1).unwrap(); // sparse: nothing is read
        let err = read_file(&path, MAX_INPUT_BYTES).unwrap_err().to_string();
        assert!(
            err.contains("(16 MiB)") && err.contains("smaller parts"),
            "{err}"
        );
        let endless = std::io::repeat(b'a');
        assert!(matches!(
            read_capped("<stdin>", endless, 1000),
            Err(InputError::TooLarge { size: 1001, .. })
        ));
        assert_eq!(read_capped("x", &b"ok"[..], 2).unwrap(), "ok");
    }
}
