//! The data plane's bytes: artifacts in an object store, addressed by sha256.
//!
//! - [`location`] opens the cluster's store (an `ArtifactStore`'s `file://` directory or
//!   `s3://` bucket, or `rift up`'s local default) as one [`object_store::ObjectStore`].
//! - [`transfer`] moves one file each way, streaming: sha256 is computed while the bytes pass,
//!   memory stays bounded by one part whatever the size, a download lands under its final name
//!   only after its digest matched, and an upload whose bytes changed under it is aborted.
//!
//! - [`bandwidth`] limits both directions with a token bucket per process (per node).
//!
//! Metadata (the `Artifact` objects) lives in etcd, see [`crate::api::artifact`].

pub mod bandwidth;
pub mod location;
pub mod transfer;

pub use location::{open, OpenError, Store};
pub use transfer::{
    download, hash_file, hash_file_with, upload, upload_journaled, Progress, TransferError,
    Uploaded,
};
