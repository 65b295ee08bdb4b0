//! A multipart upload that survives the process: the upload id and every completed part are
//! journaled durably, so a restarted uploader continues from the parts the store already has.
//!
//! Guarantees:
//! - **Journaled as parts complete.** The journal (`upload id`, part size, the file's digest and
//!   size, each finished part's ETag and size) is written to a temporary file, fsynced and
//!   renamed over the old one, then the directory is fsynced: after a crash it names the
//!   upload and only parts the store acknowledged.
//! - **Resumed only onto the same bytes and parts.** A journal for another digest, size, key or
//!   part size is dropped (its upload aborted, best effort) and the upload starts anew; the
//!   file is still hashed whole while it is read, so a changed file is refused
//!   ([`TransferError::Changed`]) whatever the journal says.
//! - **A forgotten upload starts over cleanly.** If the store no longer knows the upload (aborted
//!   by lifecycle rules or garbage collection: `404 NoSuchUpload`), or resuming it fails in any
//!   way past the client's retries (a store may refuse an unknown id by closing the connection
//!   mid-part), the old upload is aborted (best effort), the journal removed and the file sent
//!   again from the first byte under a new upload, once per call.
//! - **Flat memory.** At most [`UPLOAD_CONCURRENCY`] parts are held, read and in flight.
//!
//! Caveat: only stores with [`object_store::multipart::MultipartStore`] (S3 and the stores
//! speaking its protocol) resume; a local directory restarts from byte 0 (object_store keeps no
//! upload id for it).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use object_store::multipart::PartId;
use object_store::path::Path as Key;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use super::{local, remote, Progress, TransferError, IO_CHUNK, UPLOAD_CONCURRENCY};
use crate::api::artifact::Digest;
use crate::artifacts::location::{Multipart, Store};

/// What the journal holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Journal {
    key: String,
    upload_id: String,
    part_size: u64,
    digest: String,
    size: u64,
    /// Finished parts by index: the store's ETag and the part's length.
    parts: BTreeMap<usize, DonePart>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DonePart {
    etag: String,
    size: u64,
}

/// Why one pass failed: the store forgot the upload (start over), or anything else.
enum Failed {
    Forgotten,
    Other(TransferError),
}

impl From<TransferError> for Failed {
    fn from(e: TransferError) -> Self {
        Failed::Other(e)
    }
}

/// Sends `path` (of `digest`, `size`) under `key` through `mp`, journaling in `journal`;
/// returns how many bytes the store already had from an earlier, interrupted run.
pub(super) async fn send(
    store: &Store,
    mp: &Multipart,
    key: &Key,
    path: &Path,
    (digest, size): (Digest, u64),
    journal: &Path,
    progress: &dyn Progress,
) -> Result<u64, TransferError> {
    match pass(store, mp, key, path, (digest, size), journal, progress).await {
        Ok(resumed) => Ok(resumed),
        Err(Failed::Other(e)) => Err(e),
        Err(Failed::Forgotten) => {
            tracing::info!(key = %key, "the store forgot an interrupted upload, or refused to go on with it; sending the file again from the start");
            // Best effort: if the store still has it, its parts are not left behind.
            if let Ok(Some(old)) = read(journal).await {
                let _ = mp.parts.abort_multipart(&mp.key(key), &old.upload_id).await;
            }
            remove(journal).await?;
            match pass(store, mp, key, path, (digest, size), journal, progress).await {
                Ok(resumed) => Ok(resumed),
                Err(Failed::Other(e)) => Err(e),
                Err(Failed::Forgotten) => Err(TransferError::Store {
                    url: store.url.clone(),
                    key: key.to_string(),
                    source: object_store::Error::NotFound {
                        path: key.to_string(),
                        source: "the multipart upload vanished while it was sent".into(),
                    },
                    hint: "something aborts multipart uploads as soon as they start (a lifecycle rule?)",
                }),
            }
        }
    }
}

async fn pass(
    store: &Store,
    mp: &Multipart,
    key: &Key,
    path: &Path,
    (digest, size): (Digest, u64),
    journal: &Path,
    progress: &dyn Progress,
) -> Result<u64, Failed> {
    let full = mp.key(key);
    let part_size = store.part_size.max(1) as u64;
    let wanted = |j: &Journal| {
        j.key == full.as_ref()
            && j.part_size == part_size
            && j.digest == digest.to_string()
            && j.size == size
    };
    let journaled = read(journal).await?;
    // An upload id from an earlier run: the store may have forgotten it since.
    let reused = journaled.as_ref().is_some_and(wanted);
    let mut j = match journaled {
        Some(j) if wanted(&j) => j,
        stale => {
            if let Some(old) = stale {
                let _ = mp.parts.abort_multipart(&full, &old.upload_id).await;
            }
            let id = mp
                .parts
                .create_multipart(&full)
                .await
                .map_err(remote(store, key))?;
            let fresh = Journal {
                key: full.to_string(),
                upload_id: id,
                part_size,
                digest: digest.to_string(),
                size,
                parts: BTreeMap::new(),
            };
            write(journal, &fresh).await?;
            fresh
        }
    };
    let resumed = stored(&j);
    if resumed > 0 {
        tracing::info!(key = %key, resumed, size, "resuming an interrupted upload from its journal");
    }

    let count = size.div_ceil(part_size) as usize;
    let mut file = tokio::fs::File::open(path).await.map_err(local(path))?;
    let mut hasher = Sha256::new();
    let mut in_flight = FuturesUnordered::new();
    progress.advanced(resumed, size);
    for idx in 0..count {
        let len = part_size.min(size - idx as u64 * part_size) as usize;
        let skip = j.parts.get(&idx).is_some_and(|p| p.size == len as u64);
        while !skip && in_flight.len() >= UPLOAD_CONCURRENCY {
            let finished = in_flight.next().await.expect("a part is in flight");
            record(store, key, journal, &mut j, reused, finished).await?;
            progress.advanced(stored(&j), size);
        }
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let end = (filled + IO_CHUNK).min(len);
            let n = file
                .read(&mut buf[filled..end])
                .await
                .map_err(local(path))?;
            if n == 0 {
                break; // shorter than hashed: the digest check below refuses it
            }
            if !skip {
                store.limits.upload.take(n as u64).await;
            }
            filled += n;
        }
        buf.truncate(filled);
        hasher.update(&buf);
        if skip {
            continue;
        }
        let (parts, full, id) = (mp.parts.clone(), full.clone(), j.upload_id.clone());
        in_flight.push(async move {
            let got = parts.put_part(&full, &id, idx, PutPayload::from(buf)).await;
            (idx, filled as u64, got)
        });
    }
    while let Some(finished) = in_flight.next().await {
        record(store, key, journal, &mut j, reused, finished).await?;
        progress.advanced(stored(&j), size);
    }
    // The file must still be the bytes that were hashed before (and name the key).
    let got = Digest::from_bytes(hasher.finalize().into());
    if got != digest || stored(&j) != size {
        let _ = mp.parts.abort_multipart(&full, &j.upload_id).await;
        remove(journal).await?;
        return Err(TransferError::Changed { path: path.into() }.into());
    }
    let parts = j
        .parts
        .values()
        .map(|p| PartId {
            content_id: p.etag.clone(),
        })
        .collect();
    match mp
        .parts
        .complete_multipart(&full, &j.upload_id, parts)
        .await
    {
        Ok(_) => {}
        Err(e) if forgotten(&e, reused) => return Err(Failed::Forgotten),
        Err(e) => return Err(remote(store, key)(e).into()),
    }
    remove(journal).await?;
    Ok(resumed)
}

/// Journals a finished part, or says why it failed.
async fn record(
    store: &Store,
    key: &Key,
    journal: &Path,
    j: &mut Journal,
    reused: bool,
    (idx, size, got): (usize, u64, object_store::Result<PartId>),
) -> Result<(), Failed> {
    match got {
        Ok(part) => {
            j.parts.insert(
                idx,
                DonePart {
                    etag: part.content_id,
                    size,
                },
            );
            write(journal, j).await?;
            Ok(())
        }
        Err(e) if forgotten(&e, reused) => Err(Failed::Forgotten),
        Err(e) => Err(remote(store, key)(e).into()),
    }
}

/// Whether the upload id may be unknown to the store: S3 `NoSuchUpload` (HTTP 404); or, for an
/// id from an earlier run (`reused`), any failure that outlasted the client's retries. A store
/// that no longer knows an id can answer before it has read the part and close the
/// connection (s3s-fs does, with a 403), and the client then sees only a broken pipe. If the
/// store itself is what fails (down, wrong credentials), the fresh upload tried next fails too
/// and says why.
fn forgotten(e: &object_store::Error, reused: bool) -> bool {
    if reused || matches!(e, object_store::Error::NotFound { .. }) {
        return true;
    }
    let text = format!("{e:?}");
    text.contains("NoSuchUpload") || text.contains("status: 404") || text.contains("404 Not Found")
}

/// Bytes of the parts the store acknowledged.
fn stored(j: &Journal) -> u64 {
    j.parts.values().map(|p| p.size).sum()
}

async fn read(journal: &Path) -> Result<Option<Journal>, TransferError> {
    match tokio::fs::read(journal).await {
        // An unreadable journal (torn by a crash before its rename, edited) only costs a
        // fresh upload.
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(local(journal)(e)),
    }
}

/// Writes the journal durably: temporary file, fsync, rename, fsync of the directory.
async fn write(journal: &Path, j: &Journal) -> Result<(), TransferError> {
    let (path, body) = (
        journal.to_path_buf(),
        serde_json::to_vec(j).expect("journals serialize"),
    );
    tokio::task::spawn_blocking(move || {
        let tmp = tmp_path(&path);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    })
    .await
    .expect("journal writes never panic")
    .map_err(local(journal))
}

fn tmp_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    journal.with_file_name(name)
}

async fn remove(journal: &Path) -> Result<(), TransferError> {
    match tokio::fs::remove_file(journal).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(local(journal)(e)),
        _ => Ok(()),
    }
}
