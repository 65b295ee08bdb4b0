//! `Artifact`: one immutable blob in the cluster's object store, named by its content
//! (`sha256-<64 hex>`), with where it came from. The bytes live in the store under
//! [`Digest::cas_key`]; etcd holds only this record.
//!
//! The spec never changes once written (the digest names the bytes; the producer and counts
//! describe them); labels (`type`, `board`, `players`, `model`) may be edited.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{dns1123_problem, FieldErrors};

pub type Artifact = Object<ArtifactSpec>;

/// A sha256 digest: 32 bytes, written `sha256:<64 lowercase hex>` in specs and
/// `sha256-<64 hex>` as an object name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a sha256 digest: expected `sha256:` or `sha256-` then 64 lowercase hex digits")]
pub struct DigestError {
    input: String,
}

impl Digest {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The Artifact's object name: `sha256-<hex>`.
    pub fn artifact_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }

    /// Where the bytes live in the store: `cas/sha256/<first 2 hex>/<64 hex>`.
    pub fn cas_key(&self) -> String {
        let hex = self.hex();
        format!("cas/sha256/{}/{hex}", &hex[..2])
    }

    /// Parses `sha256:<hex>`, `sha256-<hex>` (an Artifact name) or a bare 64-hex string.
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let err = || DigestError {
            input: input.chars().take(100).collect(),
        };
        let hex = input
            .strip_prefix("sha256:")
            .or_else(|| input.strip_prefix("sha256-"))
            .unwrap_or(input);
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactSpec {
    /// `sha256:<64 hex>` of the bytes; the object's name is `sha256-<the same hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// What the bytes are, e.g. `npz`, `pt`, `jsonl`; free text for people and jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The job attempt that wrote it; absent for `rift artifact push`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<Producer>,
    /// Artifact names this one was made from (e.g. a model's training games).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// Counts of what is inside, e.g. `games: 5000`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

/// Who made an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Producer {
    pub job: String,
    #[serde(default)]
    pub attempt: u32,
    pub node: String,
}

/// Nothing is observed about an artifact beyond its spec today.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactStatus {}

/// The most parents one artifact may name.
pub const MAX_PARENTS: usize = 10_000;

impl Spec for ArtifactSpec {
    type Status = ArtifactStatus;
    const KIND: &'static str = "Artifact";
    const PLURAL: &'static str = "artifacts";
    const SINGULAR: &'static str = "artifact";
    const SHORT_NAMES: &'static [&'static str] = &["art"];

    fn name_problem(name: &str) -> Option<String> {
        match Digest::parse(name) {
            Ok(d) if name == d.artifact_name() => None,
            _ => Some(format!(
                "an Artifact is named by its content, `sha256-<64 lowercase hex>`, got `{}`",
                name.chars().take(100).collect::<String>()
            )),
        }
    }

    fn validate(&self, meta: &ObjectMeta, errors: &mut FieldErrors) {
        match Digest::parse(&self.digest) {
            Ok(d) if self.digest.starts_with("sha256:") => {
                if d.artifact_name() != meta.name {
                    errors.push(
                        "spec.digest",
                        format!(
                            "names different bytes than the object's name `{}`: the name must be `{}`",
                            meta.name,
                            d.artifact_name()
                        ),
                    );
                }
            }
            Ok(_) | Err(_) => errors.push(
                "spec.digest",
                "must be `sha256:` followed by 64 lowercase hex digits",
            ),
        }
        if let Some(p) = &self.producer {
            for (field, value) in [("job", &p.job), ("node", &p.node)] {
                if let Some(problem) = dns1123_problem(value) {
                    errors.push(format!("spec.producer.{field}"), problem);
                }
            }
        }
        if self.parents.len() > MAX_PARENTS {
            errors.push(
                "spec.parents",
                format!("at most {MAX_PARENTS} parents, got {}", self.parents.len()),
            );
        }
        for (i, parent) in self.parents.iter().enumerate().take(MAX_PARENTS) {
            if let Some(problem) = Self::name_problem(parent) {
                errors.push(format!("spec.parents[{i}]"), problem);
            }
        }
        if let Some(f) = &self.format {
            if f.is_empty() || f.len() > 63 || f.chars().any(char::is_control) {
                errors.push("spec.format", "must be 1-63 printable characters, e.g. npz");
            }
        }
        for key in self.counts.keys() {
            if key.is_empty() || key.len() > 63 || key.chars().any(char::is_control) {
                errors.push(
                    format!("spec.counts.{}", key.chars().take(63).collect::<String>()),
                    "count names are 1-63 printable characters, e.g. games",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_digest_round_trips_through_every_spelling() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(Digest::parse(&format!("sha256-{HEX}")).unwrap(), d);
        assert_eq!(Digest::parse(HEX).unwrap(), d);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d.artifact_name(), format!("sha256-{HEX}"));
        assert_eq!(d.cas_key(), format!("cas/sha256/9f/{HEX}"));
    }

    #[test]
    fn bad_digests_are_refused_without_echoing_huge_input() {
        for bad in [
            "",
            "sha256:",
            &format!("sha256:{}", &HEX[..63]),
            &format!("sha256:{HEX}0"),
            &format!("sha256:{}", HEX.to_uppercase()),
            &format!("md5:{HEX}"),
            &format!("sha256:{}g", &HEX[..63]),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        let huge = "x".repeat(1_000_000);
        assert!(Digest::parse(&huge).unwrap_err().to_string().len() < 300);
    }

    fn artifact(name: &str, digest: &str) -> Artifact {
        Object::new(
            name,
            ArtifactSpec {
                digest: digest.into(),
                size: 4,
                format: Some("npz".into()),
                producer: None,
                parents: vec![],
                counts: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn an_artifact_is_valid_only_under_its_own_digest() {
        let good = artifact(&format!("sha256-{HEX}"), &format!("sha256:{HEX}"));
        assert!(good.validate().is_empty(), "{}", good.validate());
        let other = format!("sha256:{}", "0".repeat(64));
        let errors = artifact(&format!("sha256-{HEX}"), &other).validate();
        assert!(errors.to_string().contains("spec.digest"), "{errors}");
        let errors = artifact("my-model", &format!("sha256:{HEX}")).validate();
        assert!(errors.to_string().contains("metadata.name"), "{errors}");
    }
}
