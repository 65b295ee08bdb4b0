//! Field-level validation shared by every kind: names, labels, and an error list that names the
//! field path of each problem.

use std::fmt;

use super::meta::ObjectMeta;

/// The longest name a DNS-1123 label allows.
pub const MAX_NAME_LEN: usize = 63;

/// The longest duration any field accepts: 10 years. Every duration meets a clock somewhere;
/// longer ones mean nothing but an overflow waiting to happen.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Checks a duration field against [`MAX_DURATION`].
pub fn validate_duration(path: &str, d: std::time::Duration, errors: &mut FieldErrors) {
    if d > MAX_DURATION {
        errors.push(
            path,
            format!(
                "must be at most 10 years ({}s), got {}s",
                MAX_DURATION.as_secs(),
                d.as_secs()
            ),
        );
    }
}

/// Checks a number of seconds against [`MAX_DURATION`].
pub fn validate_seconds(path: &str, secs: u64, errors: &mut FieldErrors) {
    validate_duration(path, std::time::Duration::from_secs(secs), errors);
}

/// One problem with one field, e.g. `spec.replicas: must be at least 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was found.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// Why `name` is not a DNS-1123 label, or `None` when it is one.
pub fn dns1123_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_chars || !ends_ok(name.bytes().next()) || !ends_ok(name.bytes().last()) {
        return Some(format!(
            "`{name}` is not a valid name: use lowercase letters, digits and `-`, \
             starting and ending with a letter or digit (e.g. `gh200-a`)"
        ));
    }
    None
}

/// Checks `name` as a reference to another object (e.g. `spec.node`).
pub fn validate_name_ref(path: &str, name: &str, errors: &mut FieldErrors) {
    if let Some(problem) = dns1123_problem(name) {
        errors.push(path, problem);
    }
}

fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Some(format!("label key `{key}` has an invalid prefix"));
        }
    }
    if name.is_empty() || name.len() > 63 {
        return Some(format!("label key `{key}` must be 1-63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some(format!(
            "label key `{key}` may contain only letters, digits, `-`, `_` and `.`"
        ));
    }
    None
}

fn label_value_problem(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some(format!(
            "label value `{value}` must be at most 63 characters"
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some(format!(
            "label value `{value}` may contain only letters, digits, `-`, `_` and `.`"
        ));
    }
    None
}

/// Checks a label map (object labels, node selectors).
pub fn validate_labels<'a>(
    path: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    errors: &mut FieldErrors,
) {
    for (k, v) in labels {
        if let Some(p) = label_key_problem(k).or_else(|| label_value_problem(v)) {
            errors.push(format!("{path}.{k}"), p);
        }
    }
}

/// Checks the operator-settable parts of metadata.
/// Checks an object's labels (its name is checked by its kind: [`crate::api::Spec::name_problem`]).
pub fn validate_meta_labels(meta: &ObjectMeta, errors: &mut FieldErrors) {
    validate_labels("metadata.labels", &meta.labels, errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_accepts_plain_names() {
        for ok in ["a", "gh200-a", "node-1", "0abc", &"a".repeat(63)] {
            assert_eq!(dns1123_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn dns1123_rejects_bad_names() {
        for bad in [
            "",
            "Bad_Name",
            "../x",
            "-a",
            "a-",
            "a.b",
            "A",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(dns1123_problem(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_are_bounded_at_ten_years() {
        let mut errors = FieldErrors::default();
        validate_duration("a", MAX_DURATION, &mut errors);
        assert!(errors.is_empty());
        validate_seconds("spec.activeDeadlineSeconds", u64::MAX, &mut errors);
        assert_eq!(errors.0.len(), 1);
        assert!(errors.to_string().contains("at most 10 years"), "{errors}");
    }

    #[test]
    fn labels_are_checked_by_key_and_value() {
        let mut errors = FieldErrors::default();
        let labels = [
            ("gpu".to_string(), "h100".to_string()),
            ("rift.dev/class".to_string(), "big".to_string()),
            ("bad key".to_string(), "x".to_string()),
            ("k".to_string(), "bad value".to_string()),
        ];
        validate_labels(
            "metadata.labels",
            labels.iter().map(|(k, v)| (k, v)),
            &mut errors,
        );
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert_eq!(errors.0[0].path, "metadata.labels.bad key");
    }
}
