//! Transfers against a real local-directory store (the same `object_store` code paths as S3's
//! multipart and ranged reads go through the trait; tests/artifacts.rs runs them against a
//! real S3 server).

use super::*;
use crate::artifacts::location;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn store(dir: &Path) -> Store {
    let mut s = location::local(&dir.join("store")).unwrap();
    s.part_size = 5 * 1024 * 1024;
    s
}

fn stored_file(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("store").join(d.cas_key())
}

#[tokio::test]
async fn an_upload_lands_under_its_digest_and_downloads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let src = dir.path().join("shard.npz");
    let bytes = pattern(12 * 1024 * 1024 + 7, 1); // three parts, the last one short
    std::fs::write(&src, &bytes).unwrap();
    let up = upload(&s, &src, &quiet).await.unwrap();
    assert!(!up.already_present);
    assert_eq!(up.size, bytes.len() as u64);
    let expected = Digest::from_bytes(Sha256::digest(&bytes).into());
    assert_eq!(up.digest, expected);
    assert_eq!(
        std::fs::read(stored_file(dir.path(), &expected)).unwrap(),
        bytes
    );

    let dest = dir.path().join("out.npz");
    let got = download(&s, &expected, &dest, &quiet).await.unwrap();
    assert_eq!(got, bytes.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!partial_path(&dest).exists());
}

#[tokio::test]
async fn identical_bytes_are_stored_once_and_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, pattern(4096, 9)).unwrap();
    std::fs::write(&b, pattern(4096, 9)).unwrap();
    let first = upload(&s, &a, &quiet).await.unwrap();
    let second = upload(&s, &b, &quiet).await.unwrap();
    assert_eq!(first.digest, second.digest);
    assert!(second.already_present);
}

#[tokio::test]
async fn a_flipped_byte_in_the_store_is_detected_and_never_lands_under_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let src = dir.path().join("model.pt");
    std::fs::write(&src, pattern(3 * 1024 * 1024, 4)).unwrap();
    let up = upload(&s, &src, &quiet).await.unwrap();
    let stored = stored_file(dir.path(), &up.digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1_000_000] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let dest = dir.path().join("model-copy.pt");
    let err = download(&s, &up.digest, &dest, &quiet).await.unwrap_err();
    assert!(matches!(err, TransferError::Corrupt { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(
        !dest.exists(),
        "damaged bytes must never appear under the name"
    );
    assert!(!partial_path(&dest).exists());
}

#[tokio::test]
async fn a_killed_download_resumes_from_its_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let src = dir.path().join("games.npz");
    let bytes = pattern(2 * 1024 * 1024 + 3, 7);
    std::fs::write(&src, &bytes).unwrap();
    let up = upload(&s, &src, &quiet).await.unwrap();
    let dest = dir.path().join("in").join("games.npz");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    // What a download killed after 1 MiB leaves behind.
    std::fs::write(partial_path(&dest), &bytes[..1024 * 1024]).unwrap();
    let first_report = std::sync::Mutex::new(None);
    let progress = |done: u64, _total: u64| {
        first_report.lock().unwrap().get_or_insert(done);
    };
    download(&s, &up.digest, &dest, &progress).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(
        *first_report.lock().unwrap(),
        Some(1024 * 1024),
        "continued from the partial file"
    );

    // A damaged partial file (a flipped byte in the prefix) is caught at the end.
    let dest2 = dir.path().join("in").join("games2.npz");
    let mut damaged = bytes[..1024].to_vec();
    damaged[10] ^= 0xff;
    std::fs::write(partial_path(&dest2), &damaged).unwrap();
    let err = download(&s, &up.digest, &dest2, &quiet).await.unwrap_err();
    assert!(matches!(err, TransferError::Corrupt { .. }), "{err}");
    assert!(!dest2.exists());
    // The retry starts clean and succeeds.
    download(&s, &up.digest, &dest2, &quiet).await.unwrap();
    assert_eq!(std::fs::read(&dest2).unwrap(), bytes);
}

#[tokio::test]
async fn missing_bytes_say_so_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = Digest::from_bytes([7; 32]);
    let dest = dir.path().join("x");
    let err = download(&s, &d, &dest, &quiet).await.unwrap_err();
    assert!(matches!(err, TransferError::NotFound { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(!dest.exists() && !partial_path(&dest).exists());
}
