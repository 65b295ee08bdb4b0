//! Opening the cluster's artifact store from an `ArtifactStore` spec.
//!
//! Credentials come from the spec's `credentialsFile` (`KEY=VALUE` lines: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`), never from etcd. No error message
//! quotes a value from that file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::ObjectStore;

use super::bandwidth::Limits;

use crate::api::artifact_store::{ArtifactStoreSpec, DEFAULT_PART_SIZE};

/// An opened store: where bytes go, and how they are cut into parts.
#[derive(Clone, Debug)]
pub struct Store {
    pub objects: Arc<dyn ObjectStore>,
    /// Bytes per multipart part (and the most one transfer holds in memory at once, times its
    /// concurrency).
    pub part_size: usize,
    /// What people see: `file:///...` or `s3://bucket/prefix`.
    pub url: String,
    /// The store's multipart API with upload ids, for uploads that resume after a restart;
    /// `None` for a local directory (its uploads restart from byte 0).
    pub multipart: Option<Multipart>,
    /// Bandwidth limits every transfer through this store honours (unlimited unless set;
    /// clones share them).
    pub limits: Limits,
}

/// A store's multipart API, and the prefix its keys live under (the `s3://BUCKET/PREFIX` part
/// that [`Store::objects`] adds by itself).
#[derive(Clone)]
pub struct Multipart {
    pub parts: Arc<dyn MultipartStore>,
    pub prefix: Key,
}

impl Multipart {
    /// The full key of `key` in the bucket.
    pub fn key(&self, key: &Key) -> Key {
        Key::from_iter(self.prefix.parts().chain(key.parts()))
    }
}

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("artifact store {url}: cannot create the directory {dir}: {source}; check the path and its permissions")]
    Directory {
        url: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact store {url}: cannot read its credentials file {path}: {reason}; create it (KEY=VALUE lines with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, mode 0600)")]
    Credentials {
        url: String,
        path: PathBuf,
        reason: String,
    },
    #[error("artifact store {url}: {reason}")]
    Config { url: String, reason: String },
}

/// A local directory as the store (`rift up`'s default, tests).
pub fn local(dir: &Path) -> Result<Store, OpenError> {
    let url = format!("file://{}", dir.display());
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
        url: url.clone(),
        dir: dir.into(),
        source,
    })?;
    let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| OpenError::Config {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    Ok(Store {
        objects: Arc::new(fs),
        part_size: DEFAULT_PART_SIZE as usize,
        url,
        multipart: None,
        limits: Limits::default(),
    })
}

/// Opens the store `spec` describes; `credentials_dir` is where a relative `credentialsFile`
/// is looked up (a node's secrets directory; the operator's working directory for the CLI).
pub fn open(spec: &ArtifactStoreSpec, credentials_dir: &Path) -> Result<Store, OpenError> {
    let url = spec.url.clone();
    let config = |reason: String| OpenError::Config {
        url: url.clone(),
        reason,
    };
    let mut store = match spec.url.split_once("://") {
        Some(("file", dir)) => local(Path::new(dir))?,
        Some(("s3", rest)) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(spec.region.clone().unwrap_or_else(|| "us-east-1".into()));
            if let Some(endpoint) = &spec.endpoint {
                b = b
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(file) = &spec.credentials_file {
                let path = credentials_dir.join(file);
                let creds = read_credentials(&path).map_err(|reason| OpenError::Credentials {
                    url: url.clone(),
                    path: path.clone(),
                    reason,
                })?;
                b = b
                    .with_access_key_id(creds.key_id)
                    .with_secret_access_key(creds.secret);
                if let Some(token) = creds.token {
                    b = b.with_token(token);
                }
            }
            let s3 = b.build().map_err(|e| config(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3.clone())
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3.clone(), prefix))
            };
            Store {
                objects,
                part_size: DEFAULT_PART_SIZE as usize,
                url: url.clone(),
                multipart: Some(Multipart {
                    parts: Arc::new(s3),
                    prefix: Key::from(prefix),
                }),
                limits: Limits::default(),
            }
        }
        _ => {
            return Err(config(
                "the URL must be file:///DIR or s3://BUCKET[/PREFIX]".into(),
            ))
        }
    };
    store.part_size = usize::try_from(spec.part_size)
        .map_err(|_| config("partSize is too large for this machine".into()))?;
    Ok(store)
}

struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// Reads `AWS_*` from a `KEY=VALUE` file; the error never contains a value.
fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > crate::agent::jobs::env_files::MAX_ENV_FILE_BYTES {
        return Err(format!(
            "it is {} bytes, more than a credentials file holds",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let pairs = crate::agent::jobs::env_files::parse(&text)
        .map_err(|(line, _)| format!("line {line} is not KEY=VALUE"))?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => Ok(Credentials {
            key_id,
            secret,
            token: get("AWS_SESSION_TOKEN"),
        }),
        _ => Err("it must set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()),
    }
}
