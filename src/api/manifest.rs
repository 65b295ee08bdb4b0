//! Reading manifests: files, directories and stdin of multi-document YAML, decoded into
//! validated objects, with errors that name the file, the document, the line and the field.
//!
//! Loading is all-or-nothing: any problem in any document fails the whole load, and every
//! problem found is reported, not just the first.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::input::{self, InputError, MAX_INPUT_BYTES};
use super::kinds::{self, KindInfo, ParseFailure};

/// The largest document rift accepts: etcd stores each object as one value.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The name used for standard input.
pub const STDIN: &str = "-";

/// One object decoded from a manifest, defaults filled in, ready to store.
#[derive(Debug, Clone)]
pub struct Document {
    pub origin: Origin,
    pub kind: &'static KindInfo,
    pub name: String,
    /// The normalized object as JSON, without `status` and server-set metadata.
    pub object: Value,
}

/// Where a document came from, for messages: `file.yaml: document 2 (Pool/selfplay)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// `Kind/name` once known.
    pub object: Option<String>,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if let Some((line, column)) = self.location {
            write!(f, ", line {line} column {column}")?;
        }
        Ok(())
    }
}

/// One problem with the input.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Too large, or nested too deep, to parse (see [`input`]).
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{path}: no .yaml, .yml or .json files in this directory")]
    NoFiles { path: String },
    #[error("{source_name}: the input is empty: no objects to work on")]
    Empty { source_name: String },
    #[error("{source_name}: document {document} (starting at line {line}) is {size} bytes; the limit is {} bytes (1 MiB), since etcd stores each object as one value", MAX_DOCUMENT_BYTES)]
    TooLarge {
        source_name: String,
        document: usize,
        line: usize,
        size: usize,
    },
    #[error("{origin}: YAML syntax error: {message}")]
    Syntax { origin: Origin, message: String },
    #[error("{origin}: {message}")]
    Envelope { origin: Origin, message: String },
    /// The document does not decode as its kind; `message` starts with the field path.
    #[error("{origin}: {message}")]
    Decode { origin: Origin, message: String },
    /// The document decodes but breaks a rule; `message` starts with the field path.
    #[error("{origin}: {message}")]
    Invalid { origin: Origin, message: String },
    #[error("{origin}: also defined at {first}; each object may appear once per apply")]
    Duplicate { origin: Origin, first: String },
}

/// Every problem found in a load, one per line when displayed.
#[derive(Debug)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

impl From<ManifestError> for ManifestErrors {
    fn from(e: ManifestError) -> Self {
        Self(vec![e])
    }
}

/// Loads every path (`-` for stdin; directories recursively, `.yaml`/`.yml`/`.json` files in
/// name order) and checks that no object appears twice.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestErrors> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    // What is left of the input budget, shared by every file.
    let mut budget = MAX_INPUT_BYTES;
    for path in paths {
        match read_sources(path, &mut budget) {
            Ok(mut s) => sources.append(&mut s),
            Err(e @ ManifestError::Input(InputError::TooLarge { .. })) => {
                // Nothing more can be read: the rest would only repeat this.
                errors.push(e);
                return Err(ManifestErrors(errors));
            }
            Err(e) => errors.push(e),
        }
    }
    match parse_sources(&sources) {
        Ok(docs) if errors.is_empty() => Ok(docs),
        Ok(_) => Err(ManifestErrors(errors)),
        Err(ManifestErrors(mut e)) => {
            errors.append(&mut e);
            Err(ManifestErrors(errors))
        }
    }
}

/// Decodes `(name, text)` sources and checks that no object appears twice among them.
pub fn parse_sources(sources: &[(String, String)]) -> Result<Vec<Document>, ManifestErrors> {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for (name, text) in sources {
        match parse_str(name, text) {
            Ok(mut d) => docs.append(&mut d),
            Err(ManifestErrors(mut e)) => errors.append(&mut e),
        }
    }
    check_duplicates(&docs, &mut errors);
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(ManifestErrors(errors))
    }
}

fn check_duplicates(docs: &[Document], errors: &mut Vec<ManifestError>) {
    let mut seen: HashMap<(&str, &str), &Origin> = HashMap::new();
    for d in docs {
        if let Some(first) = seen.insert((d.kind.kind, &d.name), &d.origin) {
            errors.push(ManifestError::Duplicate {
                origin: d.origin.clone(),
                first: format!("{}: document {}", first.source, first.document),
            });
            seen.insert((d.kind.kind, &d.name), first);
        }
    }
}

/// `(name, text)` of every manifest file under `path`, taking their size from `budget`.
fn read_sources(path: &Path, budget: &mut u64) -> Result<Vec<(String, String)>, ManifestError> {
    let display = path.display().to_string();
    let take = |budget: &mut u64, text: String| {
        *budget -= text.len() as u64;
        text
    };
    if display == STDIN {
        let text = input::read_stdin(*budget)?;
        return Ok(vec![("<stdin>".into(), take(budget, text))]);
    }
    let meta = std::fs::metadata(path).map_err(|source| ManifestError::Read {
        path: display.clone(),
        source,
    })?;
    if !meta.is_dir() {
        let text = input::read_file(path, *budget)?;
        return Ok(vec![(display, take(budget, text))]);
    }
    let mut files = Vec::new();
    collect_manifest_files(path, &mut files).map_err(|source| ManifestError::Read {
        path: display.clone(),
        source,
    })?;
    if files.is_empty() {
        return Err(ManifestError::NoFiles { path: display });
    }
    files.sort();
    let mut sources = Vec::new();
    for f in files {
        let text = input::read_file(&f, *budget)?;
        sources.push((f.display().to_string(), take(budget, text)));
    }
    Ok(sources)
}

fn collect_manifest_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_manifest_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Decodes every document of one source. `source` names it in messages.
pub fn parse_str(source: &str, text: &str) -> Result<Vec<Document>, ManifestErrors> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut errors = Vec::new();
    check_sizes(source, text, &mut errors);
    if !errors.is_empty() {
        return Err(ManifestErrors(errors));
    }
    input::check_flow_depth(source, text).map_err(ManifestError::from)?;

    // First pass: each document as an untyped value, to find its kind and name (and any
    // syntax error). Second pass, in lockstep: the typed decode, whose errors carry lines.
    let mut heads = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let origin = Origin {
            source: source.to_string(),
            document: i + 1,
            object: None,
            location: None,
        };
        match serde_norway::Value::deserialize(de) {
            Ok(serde_norway::Value::Null) => heads.push(None),
            Ok(value) => match envelope(&value) {
                Ok((kind, name)) => heads.push(Some((kind, name))),
                Err(message) => {
                    errors.push(ManifestError::Envelope { origin, message });
                    heads.push(None);
                }
            },
            Err(e) => {
                errors.push(ManifestError::Syntax {
                    origin: Origin {
                        location: e.location().map(|l| (l.line(), l.column())),
                        ..origin
                    },
                    message: explain_syntax(kinds::strip_location(&e.to_string())),
                });
                return Err(ManifestErrors(errors));
            }
        }
    }
    if heads.iter().all(Option::is_none) && errors.is_empty() {
        return Err(ManifestError::Empty {
            source_name: source.to_string(),
        }
        .into());
    }

    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let Some(Some((kind, name))) = heads.get(i) else {
            continue;
        };
        let origin = Origin {
            source: source.to_string(),
            document: i + 1,
            object: Some(format!("{}/{}", kind.kind, name)),
            location: None,
        };
        match (kind.parse_yaml)(de) {
            Ok(mut object) => {
                strip_server_fields(&mut object);
                let size = serde_json::to_vec(&object).map_or(0, |b| b.len());
                if size > MAX_DOCUMENT_BYTES {
                    errors.push(ManifestError::Invalid {
                        origin,
                        message: format!(
                            "the object is {size} bytes as stored (after YAML aliases expand); the limit is 1 MiB"
                        ),
                    });
                    continue;
                }
                docs.push(Document {
                    origin,
                    kind,
                    name: name.clone(),
                    object,
                });
            }
            Err(ParseFailure::Decode(d)) => errors.push(ManifestError::Decode {
                origin: Origin {
                    location: d.location,
                    ..origin
                },
                message: if d.path.is_empty() {
                    d.message
                } else {
                    format!("{}: {}", d.path, d.message)
                },
            }),
            Err(ParseFailure::Invalid(fe)) => {
                errors.extend(fe.0.into_iter().map(|f| ManifestError::Invalid {
                    origin: origin.clone(),
                    message: f.to_string(),
                }))
            }
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// The kind and name of a document, or why it is not an object.
fn envelope(value: &serde_norway::Value) -> Result<(&'static KindInfo, String), String> {
    let Some(map) = value.as_mapping() else {
        return Err(format!(
            "expected an object (a mapping with apiVersion, kind, metadata and spec), got {}",
            describe_value(value)
        ));
    };
    let get_str = |k: &str| map.get(k).and_then(serde_norway::Value::as_str);
    let known = kinds::known_kinds();
    let kind_name = get_str("kind").ok_or_else(|| format!("missing `kind` (one of {known})"))?;
    let kind = kinds::by_kind(kind_name).ok_or_else(|| {
        let hint = kinds::lookup(kind_name)
            .map(|k| format!(" (did you mean `{}`?)", k.kind))
            .unwrap_or_default();
        format!("unknown kind `{kind_name}`{hint}; rift/v1 kinds are {known}")
    })?;
    match get_str("apiVersion") {
        Some(super::API_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "apiVersion: unknown apiVersion `{other}` for {}; this rift speaks `{}`",
                kind.kind,
                super::API_VERSION
            ))
        }
        None => return Err(format!("missing `apiVersion: {}`", super::API_VERSION)),
    }
    if !kind.appliable {
        return Err(format!(
            "{} objects are written by rift itself and cannot be applied",
            kind.kind
        ));
    }
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(serde_norway::Value::as_str)
        .ok_or_else(|| "metadata.name: missing; every object needs a name".to_string())?;
    Ok((kind, name.to_string()))
}

/// The parser's message, with what its limits mean.
fn explain_syntax(message: String) -> String {
    match message.as_str() {
        "recursion limit exceeded" => {
            "the YAML nests more than 128 levels deep (recursion limit exceeded)".into()
        }
        "repetition limit exceeded" => {
            "YAML aliases expand to too much (repetition limit exceeded)".into()
        }
        _ => message,
    }
}

fn describe_value(value: &serde_norway::Value) -> &'static str {
    use serde_norway::Value::*;
    match value {
        Null => "nothing",
        Bool(_) => "a boolean",
        Number(_) => "a number",
        String(_) => "a string",
        Sequence(_) => "a list",
        Mapping(_) => "a mapping",
        Tagged(_) => "a tagged value",
    }
}

/// Server-set fields an operator cannot set: status and bookkeeping metadata.
fn strip_server_fields(object: &mut Value) {
    if let Some(obj) = object.as_object_mut() {
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "generation",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
            ] {
                meta.remove(k);
            }
        }
    }
}

/// Rejects any document (text between `---` lines) over [`MAX_DOCUMENT_BYTES`] before parsing.
fn check_sizes(source: &str, text: &str, errors: &mut Vec<ManifestError>) {
    let mut start_line = 1;
    let mut size = 0;
    let mut document = 1;
    let mut seen_content = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.starts_with("---") {
            if size > MAX_DOCUMENT_BYTES {
                break;
            }
            if seen_content {
                document += 1;
            }
            start_line = n + 1;
            size = 0;
            seen_content = false;
            continue;
        }
        size += line.len();
        seen_content |= !line.trim().is_empty() && !line.trim_start().starts_with('#');
    }
    if size > MAX_DOCUMENT_BYTES {
        errors.push(ManifestError::TooLarge {
            source_name: source.to_string(),
            document,
            line: start_line,
            size,
        });
    }
}

#[cfg(test)]
mod tests;
