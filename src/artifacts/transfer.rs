//! Moving one artifact's bytes between a local file and the store, streaming both ways.
//!
//! Guarantees:
//! - **Verified.** An upload hashes the file first (the digest names the key), then hashes
//!   it again while the parts go out; if the two differ (the file changed under it) the
//!   multipart upload is aborted and nothing is stored under the key. A download hashes while it
//!   writes `<dest>.partial` and renames it to `dest` only when size and digest match; on a
//!   mismatch the partial file is deleted and [`TransferError::Corrupt`] says so, so damaged
//!   bytes are never found under `dest`.
//! - **Flat memory.** At most [`UPLOAD_CONCURRENCY`] parts of `part_size` are in flight on an
//!   upload; a download holds at most [`WRITE_QUEUE`] received chunks (the HTTP client's
//!   reads, tens of KiB each) plus an [`IO_CHUNK`] write buffer, and hashes and writes on one
//!   blocking thread while the next chunks arrive.
//! - **Resumable downloads.** A `<dest>.partial` left by a killed download is hashed and
//!   continued with a ranged read; one longer than the object is discarded.
//! - **Content addressed, so idempotent.** Bytes already present under their key with the
//!   right size are not sent again ([`Uploaded::already_present`]).
//!
//! - **Resumable uploads.** [`upload_journaled`] to a store with upload ids (S3) journals the
//!   upload id and each finished part; a rerun after a kill continues from the next part
//!   ([`resumable`]).
//! - **Bandwidth.** Every byte read for an upload and received by a download passes the
//!   store's [`crate::artifacts::bandwidth::Limits`] first.
//!
//! Caveats: an upload without a journal, or to a local directory, killed mid-way starts again
//! from the first part (the store's multipart upload is abandoned; S3 lifecycle rules or GC
//! clean it). Blocking file reads run on tokio's blocking pool through `tokio::fs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use super::location::Store;
use crate::api::artifact::Digest;

/// Bytes read from or written to a local file at once.
pub const IO_CHUNK: usize = 1024 * 1024;
/// Parts of one upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 2;

/// Told how far a transfer got: bytes done out of total.
pub trait Progress: Send + Sync {
    fn advanced(&self, done: u64, total: u64);
    /// A new stage starts (`hashing`, `uploading`); the next `advanced` counts from 0.
    fn stage(&self, _name: &'static str) {}
}

impl<F: Fn(u64, u64) + Send + Sync> Progress for F {
    fn advanced(&self, done: u64, total: u64) {
        self(done, total)
    }
}

/// No progress wanted.
pub fn quiet(_: u64, _: u64) {}

/// What an upload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub digest: Digest,
    pub size: u64,
    /// The store had these bytes already; nothing was sent.
    pub already_present: bool,
    /// Bytes an earlier, interrupted run of this upload had already stored (from its journal).
    pub resumed_bytes: u64,
}

/// Why a transfer failed. Nothing was left under the destination name.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact store {url}, {key}: {source}; {hint}")]
    Store {
        url: String,
        key: String,
        #[source]
        source: object_store::Error,
        hint: &'static str,
    },
    #[error("artifact store {url} has no bytes for {digest}; push them again, or check that this cluster uses the store they were pushed to")]
    NotFound { url: String, digest: Digest },
    #[error("the bytes read for {digest} hash to {got} ({size} bytes): the copy in the store or on the way is damaged; nothing was kept")]
    Corrupt {
        digest: Digest,
        got: Digest,
        size: u64,
    },
    #[error("artifact store {url} holds {actual} bytes for {digest}, more than the {expected} its record says; nothing was kept")]
    TooLong {
        url: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{path} changed while it was uploaded (it must be complete and closed before it is sealed); the upload was aborted")]
    Changed { path: PathBuf },
}

impl TransferError {
    /// Whether trying again may help (a damaged read, the store unreachable), as opposed to a
    /// missing object or a local problem that needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::Corrupt { .. } | TransferError::Changed { .. } => true,
            TransferError::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            _ => false,
        }
    }
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Local {
        path: path.into(),
        source,
    }
}

fn remote<'a>(
    store: &'a Store,
    key: &'a Key,
) -> impl FnOnce(object_store::Error) -> TransferError + 'a {
    move |source| TransferError::Store {
        url: store.url.clone(),
        key: key.to_string(),
        hint: hint(&source),
        source,
    }
}

/// What a person can do about a store error.
fn hint(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            "the store refused these credentials: check the ArtifactStore's credentialsFile (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the key's rights on the bucket"
        }
        object_store::Error::NotFound { .. } => "the object or the bucket does not exist",
        _ => "check that the store is up and reachable from here (the ArtifactStore's url and endpoint); transfers are retried",
    }
}

/// The sha256 and size of a file, read in [`IO_CHUNK`]s on the blocking pool.
pub async fn hash_file(path: &Path) -> Result<(Digest, u64), TransferError> {
    hash_file_with(path, &quiet).await
}

/// [`hash_file`], telling `progress` how far it got (about every 100 ms).
pub async fn hash_file_with(
    path: &Path,
    progress: &dyn Progress,
) -> Result<(Digest, u64), TransferError> {
    let total = tokio::fs::metadata(path).await.map_err(local(path))?.len();
    let done = Arc::new(AtomicU64::new(0));
    let (owned, counter) = (path.to_path_buf(), done.clone());
    let mut task = tokio::task::spawn_blocking(move || hash_prefix(&owned, u64::MAX, &counter));
    let joined = loop {
        tokio::select! {
            joined = &mut task => break joined,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                progress.advanced(done.load(Ordering::Relaxed).min(total), total);
            }
        }
    };
    let (hasher, n) = joined.expect("hashing never panics").map_err(local(path))?;
    progress.advanced(n, n);
    Ok((Digest::from_bytes(hasher.finalize().into()), n))
}

/// A hasher fed the first `limit` bytes of `path` (all of it for `u64::MAX`), and how many;
/// `done` follows the count.
fn hash_prefix(path: &Path, limit: u64, done: &AtomicU64) -> std::io::Result<(Sha256, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?.take(limit);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        done.store(total, Ordering::Relaxed);
    }
}

/// Uploads `path` under its digest's key ([`Digest::cas_key`]) unless those bytes are there.
/// Killed mid-way, it starts over next time; see [`upload_journaled`].
pub async fn upload(
    store: &Store,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Uploaded, TransferError> {
    upload_journaled(store, path, None, progress).await
}

/// [`upload`], journaling the multipart upload in `journal` (when given and the store has
/// upload ids) so that a later call after a kill continues from the parts already stored. The
/// journal is removed once the upload completes or is refused; a failure that may pass (the
/// store unreachable) keeps it, and the store keeps the parts.
pub async fn upload_journaled(
    store: &Store,
    path: &Path,
    journal: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Uploaded, TransferError> {
    progress.stage("hashing");
    let (digest, size) = hash_file_with(path, progress).await?;
    let key = Key::from(digest.cas_key());
    match store.objects.head(&key).await {
        Ok(meta) if meta.size == size => {
            progress.advanced(size, size);
            return Ok(Uploaded {
                digest,
                size,
                already_present: true,
                resumed_bytes: 0,
            });
        }
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(remote(store, &key)(e)),
    }
    if let (Some(mp), Some(journal)) = (&store.multipart, journal) {
        progress.stage("uploading");
        let resumed_bytes =
            resumable::send(store, mp, &key, path, (digest, size), journal, progress).await?;
        return Ok(Uploaded {
            digest,
            size,
            already_present: false,
            resumed_bytes,
        });
    }
    let upload = store
        .objects
        .put_multipart(&key)
        .await
        .map_err(remote(store, &key))?;
    progress.stage("uploading");
    let mut writer = WriteMultipart::new_with_chunk_size(upload, store.part_size);
    let sent = send_file(store, &key, path, size, &mut writer, progress).await;
    match sent {
        Ok(got) if got == (digest, size) => {
            writer.finish().await.map_err(remote(store, &key))?;
            Ok(Uploaded {
                digest,
                size,
                already_present: false,
                resumed_bytes: 0,
            })
        }
        Ok(_) => {
            let _ = writer.abort().await;
            Err(TransferError::Changed { path: path.into() })
        }
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// Feeds `path` into `writer`, hashing as it goes; returns what it sent.
async fn send_file(
    store: &Store,
    key: &Key,
    path: &Path,
    size: u64,
    writer: &mut WriteMultipart,
    progress: &dyn Progress,
) -> Result<(Digest, u64), TransferError> {
    let mut file = tokio::fs::File::open(path).await.map_err(local(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(local(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        store.limits.upload.take(n as u64).await;
        writer
            .wait_for_capacity(UPLOAD_CONCURRENCY)
            .await
            .map_err(remote(store, key))?;
        writer.write(&buf[..n]);
        sent += n as u64;
        progress.advanced(sent.min(size), size);
    }
    Ok((Digest::from_bytes(hasher.finalize().into()), sent))
}

/// The name a download is written under until it is verified.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Downloads the bytes of `digest` to `dest` (replacing it), continuing a `<dest>.partial`
/// left by an earlier try. Returns the size. See the module docs for what is guaranteed.
pub async fn download(
    store: &Store,
    digest: &Digest,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<u64, TransferError> {
    let key = Key::from(digest.cas_key());
    let size = match store.objects.head(&key).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(TransferError::NotFound {
                url: store.url.clone(),
                digest: *digest,
            })
        }
        Err(e) => return Err(remote(store, &key)(e)),
    };
    let partial = partial_path(dest);
    let have = tokio::fs::metadata(&partial).await.map_or(0, |m| m.len());
    let (hasher, have) = if have > 0 && have <= size {
        let p = partial.clone();
        tokio::task::spawn_blocking(move || hash_prefix(&p, have, &AtomicU64::new(0)))
            .await
            .expect("hashing never panics")
            .map_err(local(&partial))?
    } else {
        (Sha256::new(), 0)
    };
    // Received chunks go to one blocking thread that hashes and writes them, so receiving
    // overlaps hashing and disk writes; the channel bounds what waits in memory.
    let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
    let writer = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || write_chunks(&partial, have, hasher, rx))
    };
    let mut done = have;
    progress.advanced(done, size);
    let received = async {
        if have >= size {
            return Ok(());
        }
        let opts = GetOptions {
            range: (have > 0).then_some(GetRange::Offset(have)),
            ..GetOptions::default()
        };
        let mut stream = store
            .objects
            .get_opts(&key, opts)
            .await
            .map_err(remote(store, &key))?
            .into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(remote(store, &key))?;
            done += chunk.len() as u64;
            if done > size {
                return Err(TransferError::TooLong {
                    url: store.url.clone(),
                    digest: *digest,
                    expected: size,
                    actual: done,
                });
            }
            store.limits.download.take(chunk.len() as u64).await;
            if tx.send(chunk).await.is_err() {
                break; // the writer failed: its error is reported below
            }
            progress.advanced(done, size);
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer.await.expect("the writer never panics");
    if let Err(e) = received {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    let hasher = written.map_err(local(&partial))?;
    let got = Digest::from_bytes(hasher.finalize().into());
    if got != *digest || done != size {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(TransferError::Corrupt {
            digest: *digest,
            got,
            size: done,
        });
    }
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(local(dest))?;
    Ok(size)
}

/// Chunks a download may hold in memory between receiving and writing.
pub const WRITE_QUEUE: usize = 64;

/// Appends the chunks from `rx` to `partial` (created, or continued after `have` bytes),
/// feeding `hasher`; flushes and fsyncs at the end. Runs on the blocking pool.
fn write_chunks<B: AsRef<[u8]>>(
    partial: &Path,
    have: u64,
    mut hasher: Sha256,
    mut rx: tokio::sync::mpsc::Receiver<B>,
) -> std::io::Result<Sha256> {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(have == 0)
        .append(have > 0)
        .open(partial)?;
    let mut out = std::io::BufWriter::with_capacity(IO_CHUNK, file);
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(chunk.as_ref());
        out.write_all(chunk.as_ref())?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(hasher)
}

/// Whether the store holds bytes for `digest` (of any size).
pub async fn exists(store: &Store, digest: &Digest) -> Result<bool, TransferError> {
    let key = Key::from(digest.cas_key());
    match store.objects.head(&key).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(remote(store, &key)(e)),
    }
}

mod resumable;
#[cfg(test)]
mod tests;
