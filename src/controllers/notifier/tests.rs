use chrono::TimeZone;

use serde_json::Value;

use super::delivery::{host_of, DISCORD_MAX_CHARS};
use super::*;
use crate::api::event::{EventSpec, EventType, ObjectRef};
use crate::api::notifier::{NotifierFormat, SecretRef};
use crate::api::Object;

fn event(reason: &str, count: u32) -> Event {
    let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    Object::new(
        format!("job.train-1.{reason}"),
        EventSpec {
            involved_object: ObjectRef {
                kind: "Job".into(),
                name: "train-1".into(),
                uid: String::new(),
            },
            reason: reason.into(),
            message: "exit code 1".into(),
            event_type: EventType::Warning,
            count,
            first_seen: t,
            last_seen: t,
            source: "agent/n1".into(),
        },
    )
}

fn spec(events: &[&str]) -> NotifierSpec {
    NotifierSpec {
        url: "http://127.0.0.1:1/hook".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        format: NotifierFormat::Json,
        secret: None,
        throttle_seconds: 60,
    }
}

#[test]
fn an_empty_filter_wants_everything() {
    assert!(wants(&spec(&[]), "job_failed"));
    assert!(wants(&spec(&["job_failed"]), "job_failed"));
    assert!(!wants(&spec(&["model_promoted"]), "job_failed"));
}

#[test]
fn text_names_type_reason_object_count_and_source() {
    assert_eq!(
        text(&event("job_failed", 3)),
        "Warning job_failed job/train-1: exit code 1 (3 times, agent/n1)"
    );
    let mut once = event("job_failed", 1);
    once.spec.source.clear();
    assert_eq!(text(&once), "Warning job_failed job/train-1: exit code 1");
}

#[test]
fn bodies_have_each_format_shape() {
    let ev = event("job_failed", 1);
    let json: Value = serde_json::from_slice(&body(NotifierFormat::Json, &ev)).unwrap();
    assert_eq!(json["kind"], "Event");
    assert_eq!(json["spec"]["reason"], "job_failed");
    assert_eq!(json["text"], text(&ev));
    let slack: Value = serde_json::from_slice(&body(NotifierFormat::Slack, &ev)).unwrap();
    assert_eq!(slack, serde_json::json!({ "text": text(&ev) }));
    let discord: Value = serde_json::from_slice(&body(NotifierFormat::Discord, &ev)).unwrap();
    assert_eq!(discord, serde_json::json!({ "content": text(&ev) }));
}

#[test]
fn discord_content_stays_within_its_limit() {
    let mut ev = event("job_failed", 1);
    ev.spec.message = "x".repeat(5000);
    let discord: Value = serde_json::from_slice(&body(NotifierFormat::Discord, &ev)).unwrap();
    let content = discord["content"].as_str().unwrap();
    assert_eq!(content.chars().count(), DISCORD_MAX_CHARS);
    assert!(content.ends_with('…'));
}

#[test]
fn signature_is_hmac_sha256_hex() {
    // RFC 4231 test case 2.
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[tokio::test]
async fn secrets_come_from_env_or_file_and_their_absence_is_explained() {
    let missing = SecretRef {
        env: Some("RIFT_TEST_SURELY_UNSET_SECRET".into()),
        file: None,
    };
    let err = read_secret(&missing).await.unwrap_err().to_string();
    assert!(err.contains("RIFT_TEST_SURELY_UNSET_SECRET"), "{err}");
    assert!(!DeliveryError::Secret(err).is_retryable());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cret\n").unwrap();
    let file = SecretRef {
        env: None,
        file: Some(path.to_string_lossy().into()),
    };
    assert_eq!(read_secret(&file).await.unwrap(), b"s3cret");
}

#[test]
fn only_transient_failures_are_retried() {
    let status = |status| DeliveryError::Status {
        host: "h".into(),
        status,
        detail: String::new(),
    };
    assert!(status(500).is_retryable());
    assert!(status(429).is_retryable());
    assert!(!status(404).is_retryable());
    assert!(!status(400).is_retryable());
}

#[test]
fn hosts_are_shown_without_the_credential_bearing_path() {
    assert_eq!(
        host_of("https://hooks.slack.com/services/T0/B0/XYZ"),
        "hooks.slack.com"
    );
    assert_eq!(host_of("http://127.0.0.1:8080/x?token=1"), "127.0.0.1:8080");
}

#[test]
fn new_occurrences_are_new_keys_higher_counts_or_a_new_first_seen() {
    let mut seen = Seen::default();
    assert!(seen.note("k", &event("r", 1)));
    assert!(!seen.note("k", &event("r", 1)));
    assert!(seen.note("k", &event("r", 2)));
    let mut again = event("r", 1);
    again.spec.first_seen += chrono::Duration::hours(2);
    assert!(seen.note("k", &again));
}

#[test]
fn the_throttle_admits_once_per_window() {
    let mut t = Throttle::default();
    let now = Instant::now();
    let w = Duration::from_secs(60);
    assert!(t.admit("a".into(), now, w));
    assert!(!t.admit("a".into(), now + Duration::from_secs(59), w));
    assert!(t.admit("b".into(), now, w));
    assert!(t.admit("a".into(), now + Duration::from_secs(60), w));
    assert!(t.admit("a".into(), now, Duration::ZERO));
    assert!(t.admit("a".into(), now, Duration::ZERO));
}
