//! `ArtifactStore` (one object, `default`): where artifact bytes live, how they move, and how
//! much of a node's disk the artifact cache may use. Without one, `rift up` keeps artifacts in a
//! local directory under its state dir.
//!
//! Secrets never live here: `credentialsFile` names a file of `KEY=VALUE` lines on each node
//! (inside its secrets directory) holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{validate_labels, FieldErrors};

pub type ArtifactStore = Object<ArtifactStoreSpec>;

/// The one ArtifactStore's name.
pub const DEFAULT_STORE: &str = "default";
/// S3's smallest part (all but the last part of a multipart upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
pub const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactStoreSpec {
    /// `file:///var/lib/rift/artifacts` (one machine, or a shared mount) or
    /// `s3://BUCKET[/PREFIX]` (AWS S3, R2, Garage, MinIO: set `endpoint` for the latter three).
    pub url: String,
    /// The S3 endpoint, e.g. `https://<account>.r2.cloudflarestorage.com` or
    /// `http://10.0.0.5:3900`; absent for AWS itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A file of `KEY=VALUE` lines on each node (relative to its secrets directory) with
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Never the secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Bytes per part of a multipart upload, 5 MiB to 5 GiB.
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// Bandwidth limits for the nodes each selector matches: the first entry whose
    /// `nodeSelector` matches a node's labels applies to all its transfers (one token bucket per
    /// direction per node) and decides both directions (a direction it leaves out is
    /// unlimited); a node no entry matches is unlimited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bandwidth: Vec<BandwidthLimit>,
    #[serde(default)]
    pub cache: CacheWatermarks,
    /// How long an artifact must have gone unreferenced (no unfinished Job's input, not named by
    /// a Pool's or TrainingTarget's Job template, not a TrainingTarget's current model or in its
    /// history) before garbage collection deletes it, e.g. `24h`, `30m`. Artifacts labelled `rift.dev/keep: "true"` are never
    /// deleted.
    #[serde(default = "default_gc_after")]
    pub gc_after: HumanDuration,
}

fn default_part_size() -> u64 {
    DEFAULT_PART_SIZE
}

/// Unreferenced artifacts are kept a day by default.
pub const DEFAULT_GC_AFTER: HumanDuration = HumanDuration::from_secs(24 * 3600);

fn default_gc_after() -> HumanDuration {
    DEFAULT_GC_AFTER
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BandwidthLimit {
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_bytes_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_bytes_per_second: Option<u64>,
}

/// The node cache's disk watermarks, as percentages of the disk holding it: above `high`,
/// least-recently-used unpinned entries are evicted until usage is below `low`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheWatermarks {
    #[serde(default = "default_high")]
    pub high_percent: u8,
    #[serde(default = "default_low")]
    pub low_percent: u8,
}

fn default_high() -> u8 {
    85
}
fn default_low() -> u8 {
    75
}

impl Default for CacheWatermarks {
    fn default() -> Self {
        Self {
            high_percent: default_high(),
            low_percent: default_low(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactStoreStatus {}

impl Spec for ArtifactStoreSpec {
    type Status = ArtifactStoreStatus;
    const KIND: &'static str = "ArtifactStore";
    const PLURAL: &'static str = "artifactstores";
    const SINGULAR: &'static str = "artifactstore";
    const SHORT_NAMES: &'static [&'static str] = &["as"];

    fn name_problem(name: &str) -> Option<String> {
        (name != DEFAULT_STORE).then(|| {
            format!(
                "the cluster has one ArtifactStore and it is named `{DEFAULT_STORE}`, got `{}`",
                name.chars().take(100).collect::<String>()
            )
        })
    }

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        match self.url.split_once("://") {
            Some(("file", path)) if path.starts_with('/') && !path.contains("/../") => {}
            Some(("file", _)) => errors.push(
                "spec.url",
                "a file URL names an absolute directory, e.g. file:///var/lib/rift/artifacts",
            ),
            Some(("s3", rest)) => {
                let bucket = rest.split('/').next().unwrap_or_default();
                let ok = (3..=63).contains(&bucket.len())
                    && bucket.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    });
                if !ok {
                    errors.push(
                        "spec.url",
                        "an s3 URL names a bucket (3-63 lowercase letters, digits, `-`, `.`): s3://BUCKET[/PREFIX]",
                    );
                }
            }
            _ => errors.push("spec.url", "must be file:///DIR or s3://BUCKET[/PREFIX]"),
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() > 2048 {
                errors.push("spec.endpoint", "must be an http:// or https:// URL");
            }
            if !self.url.starts_with("s3://") {
                errors.push("spec.endpoint", "only an s3:// store has an endpoint");
            }
        }
        if let Some(f) = &self.credentials_file {
            if f.is_empty() || f.split('/').any(|c| c == "..") {
                errors.push(
                    "spec.credentialsFile",
                    "must name a file in each node's secrets directory, e.g. artifacts.env",
                );
            }
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            errors.push(
                "spec.partSize",
                format!(
                    "must be between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} (5 GiB) bytes, got {}",
                    self.part_size
                ),
            );
        }
        for (i, limit) in self.bandwidth.iter().enumerate() {
            validate_labels(
                &format!("spec.bandwidth[{i}].nodeSelector"),
                &limit.node_selector,
                errors,
            );
            for (field, v) in [
                ("uploadBytesPerSecond", limit.upload_bytes_per_second),
                ("downloadBytesPerSecond", limit.download_bytes_per_second),
            ] {
                if v == Some(0) {
                    errors.push(
                        format!("spec.bandwidth[{i}].{field}"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                }
            }
        }
        if self.gc_after.as_duration() < std::time::Duration::from_secs(1) {
            errors.push(
                "spec.gcAfter",
                "must be at least 1s (e.g. 24h); label artifacts rift.dev/keep=true to keep them for good",
            );
        }
        super::validation::validate_duration("spec.gcAfter", self.gc_after.as_duration(), errors);
        let c = &self.cache;
        if !(c.low_percent < c.high_percent && c.high_percent <= 99) {
            errors.push(
                "spec.cache",
                format!(
                    "needs lowPercent < highPercent ≤ 99, got low {} and high {}",
                    c.low_percent, c.high_percent
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: serde_json::Value) -> Result<ArtifactStore, String> {
        let obj = serde_json::json!({
            "apiVersion": "rift/v1", "kind": "ArtifactStore",
            "metadata": {"name": "default"}, "spec": spec,
        });
        let store: ArtifactStore = serde_json::from_value(obj).map_err(|e| e.to_string())?;
        let errors = store.validate();
        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors.to_string())
        }
    }

    #[test]
    fn a_local_directory_and_an_s3_bucket_are_accepted_with_defaults() {
        let local = parse(serde_json::json!({"url": "file:///var/lib/rift/artifacts"})).unwrap();
        assert_eq!(local.spec.part_size, DEFAULT_PART_SIZE);
        assert_eq!(local.spec.cache, CacheWatermarks::default());
        assert_eq!(local.spec.gc_after, DEFAULT_GC_AFTER);
        parse(serde_json::json!({
            "url": "s3://rift-artifacts/fleet", "endpoint": "http://10.0.0.5:3900",
            "credentialsFile": "garage.env",
            "bandwidth": [{"nodeSelector": {"provider": "vast"}, "uploadBytesPerSecond": 10_000_000}]
        }))
        .unwrap();
    }

    #[test]
    fn bad_stores_are_refused_with_the_field_and_what_to_write() {
        for (spec, field) in [
            (
                serde_json::json!({"url": "file://relative/dir"}),
                "spec.url",
            ),
            (serde_json::json!({"url": "ftp://host/x"}), "spec.url"),
            (serde_json::json!({"url": "s3://UPPER"}), "spec.url"),
            (
                serde_json::json!({"url": "file:///x", "endpoint": "http://h"}),
                "spec.endpoint",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "endpoint": "h:9000"}),
                "spec.endpoint",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "credentialsFile": "../../etc/shadow"}),
                "spec.credentialsFile",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "partSize": 1024}),
                "spec.partSize",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "partSize": u64::MAX}),
                "spec.partSize",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "cache": {"highPercent": 50, "lowPercent": 60}}),
                "spec.cache",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "cache": {"highPercent": 100, "lowPercent": 60}}),
                "spec.cache",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "gcAfter": "0s"}),
                "spec.gcAfter",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "gcAfter": "1000000h"}),
                "spec.gcAfter",
            ),
            (
                serde_json::json!({"url": "s3://bucket", "bandwidth": [{"downloadBytesPerSecond": 0}]}),
                "spec.bandwidth[0].downloadBytesPerSecond",
            ),
        ] {
            let err = parse(spec.clone()).expect_err(&spec.to_string());
            assert!(err.contains(field), "{spec}: {err}");
        }
        let mut other = parse(serde_json::json!({"url": "s3://bucket"})).unwrap();
        other.metadata.name = "second".into();
        assert!(other.validate().to_string().contains("named `default`"));
    }
}
