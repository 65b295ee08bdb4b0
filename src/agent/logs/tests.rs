use super::*;
use crate::agent::jobs::layout::{write_json, EndReason, StateDir};
use std::io::Write;

fn all(r: &mut LogReader) -> String {
    let mut out = Vec::new();
    loop {
        match r.step().unwrap() {
            Step::Data(d) => out.extend(d),
            Step::End => return String::from_utf8(out).unwrap(),
            Step::Idle => panic!("not following"),
        }
    }
}

/// Steps until idle or the end; true at the end.
fn drain(r: &mut LogReader, out: &mut String) -> bool {
    loop {
        match r.step().unwrap() {
            Step::Data(d) => out.push_str(&String::from_utf8(d).unwrap()),
            Step::Idle => return false,
            Step::End => return true,
        }
    }
}

fn append(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn exit(job: &JobDir, n: u32, code: i32) {
    let rec = ExitRecord {
        exit_code: Some(code),
        signal: None,
        finished_at: Utc::now(),
        reason: EndReason::Exited,
        message: String::new(),
    };
    write_json(&job.exit_record(n), &rec).unwrap();
}

fn numbered(from: u32, to: u32) -> String {
    (from..=to).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn tail_finds_line_starts_with_and_without_a_final_newline() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    for (text, n, want) in [
        ("a\nb\nc\n", 2, "b\nc\n"),
        ("a\nb\nc", 2, "b\nc"),
        ("a\nb\nc\n", 3, "a\nb\nc\n"),
        ("a\nb\nc\n", 9, "a\nb\nc\n"),
        ("a\nb\nc\n", 0, ""),
        ("", 2, ""),
        ("\n\n\n", 1, "\n"),
    ] {
        std::fs::write(&p, text).unwrap();
        let f = File::open(&p).unwrap();
        let (i, off) = tail_start(&[(&f, text.len() as u64)], n).unwrap();
        assert_eq!(i, 0);
        assert_eq!(&text[off as usize..], want, "{text:?} tail {n}");
    }
}

#[test]
fn a_tail_of_any_size_is_the_whole_log_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::write(&path, "a\nb\n").unwrap();
    let f = File::open(&path).unwrap();
    for n in [usize::MAX, usize::MAX - 1] {
        assert_eq!(tail_start(&[(&f, 4)], n).unwrap(), (0, 0));
    }
}

#[test]
fn tail_of_a_big_log_reads_only_its_end_and_spans_the_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let job = StateDir::new(dir.path()).job("j").unwrap();
    // 200k lines (~2.5 MB) rotated, then 3 lines live.
    append(&job.log(1).with_extension("log.1"), &numbered(1, 200_000));
    append(&job.log(1), &numbered(200_001, 200_003));
    let mut r = LogReader::open(job.clone(), None, Some(5), false).unwrap();
    assert_eq!(all(&mut r), numbered(199_999, 200_003));
    let mut r = LogReader::open(job.clone(), None, Some(2), false).unwrap();
    assert_eq!(all(&mut r), numbered(200_002, 200_003));
    let mut r = LogReader::open(job, None, None, false).unwrap();
    assert_eq!(all(&mut r), numbered(1, 200_003));
}

#[test]
fn tail_of_a_64_mib_log_reads_only_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("output.log");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    // 64 MiB without a newline (sparse), then 1000 short lines.
    f.set_len(64 << 20).unwrap();
    append(&path, &numbered(1, 1000));
    let f = File::open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    let (_, offset, scanned) = tail_scan(&[(&f, len)], 100).unwrap();
    assert_eq!(len - offset, numbered(901, 1000).len() as u64);
    assert!(scanned <= CHUNK as u64, "read {scanned} bytes");
}

#[test]
fn latest_attempt_by_default_and_unknown_jobs_or_attempts_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let job = state.job("j").unwrap();
    append(&job.log(1), "one\n");
    append(&job.log(2), "two\n");
    let mut r = LogReader::open(job.clone(), None, None, false).unwrap();
    assert_eq!((r.attempt(), all(&mut r).as_str()), (2, "two\n"));
    let mut r = LogReader::open(job.clone(), Some(1), None, false).unwrap();
    assert_eq!(all(&mut r), "one\n");
    assert!(matches!(
        LogReader::open(job, Some(7), None, false),
        Err(OpenError::NoAttempt { asked: 7, last: 2 })
    ));
    assert!(matches!(
        LogReader::open(state.job("nope").unwrap(), None, None, false),
        Err(OpenError::NoJob)
    ));
}

#[test]
fn follow_sees_appends_rotation_and_the_next_attempt_then_ends_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let job = StateDir::new(dir.path()).job("j").unwrap();
    std::fs::create_dir_all(job.path()).unwrap();
    let mut r = LogReader::open(job.clone(), None, None, true).unwrap();
    let mut out = String::new();
    assert!(!drain(&mut r, &mut out), "waits for the first attempt");

    append(&job.log(1), "a\n");
    assert!(!drain(&mut r, &mut out));
    assert_eq!(out, "a\n");

    // Rotation: the rest of the old file, then the new one from its start.
    append(&job.log(1), "b\n");
    std::fs::rename(job.log(1), job.log(1).with_extension("log.1")).unwrap();
    append(&job.log(1), "c");
    assert!(!drain(&mut r, &mut out));
    assert_eq!(out, "a\nb\nc");

    // A newer attempt: the separator starts on a line of its own.
    append(&job.log(1), "d");
    exit(&job, 1, 1);
    append(&job.log(2), "e\n");
    assert!(!drain(&mut r, &mut out));
    assert_eq!(out, "a\nb\ncd\n--- attempt 2 ---\ne\n");

    // Over: no run.json, so no policy starts another attempt; ends after END_GRACE.
    append(&job.log(2), "f\n");
    exit(&job, 2, 0);
    assert!(!drain(&mut r, &mut out));
    assert!(out.ends_with("e\nf\n"), "{out:?}");
    std::thread::sleep(END_GRACE + Duration::from_millis(50));
    assert!(drain(&mut r, &mut out));
}

#[test]
fn follow_ends_when_the_job_directory_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let job = StateDir::new(dir.path()).job("j").unwrap();
    append(&job.log(1), "x\n");
    let mut r = LogReader::open(job.clone(), None, Some(10), true).unwrap();
    let mut out = String::new();
    assert!(!drain(&mut r, &mut out));
    std::fs::remove_dir_all(job.path()).unwrap();
    assert!(drain(&mut r, &mut out));
    assert_eq!(out, "x\n");
}
