use super::*;
use crate::api::kinds::lookup;

#[test]
fn every_kind_has_as_many_cells_as_headers() {
    let empty = serde_json::json!({"metadata": {"name": "x"}});
    for k in &crate::api::kinds::KINDS {
        for wide in [false, true] {
            assert_eq!(
                headers(k, wide).len(),
                row(k, &empty, wide, At::now(), &Context::default()).len(),
                "{}",
                k.kind
            );
        }
    }
}

#[test]
fn mixed_gpus_are_counted_per_model_and_progress_shows_numbers() {
    let node = serde_json::json!({"metadata": {"name": "n"}, "status": {"capacity": {"gpus": [
        {"index": 0, "model": "H100"}, {"index": 1, "model": "H100"}, {"index": 2, "model": "RTX 4090"}]}}});
    assert_eq!(gpu_summary(&node), "2x H100,1x RTX 4090");
    let job = serde_json::json!({"status": {"progress": {"games": 120.0}}});
    assert_eq!(labels(&job, "/status/progress"), "games=120");
}

#[test]
fn job_without_status_is_pending() {
    let v = serde_json::json!({"metadata": {"name": "j"}, "spec": {"type": "selfplay"}});
    let r = row(
        lookup("jobs").unwrap(),
        &v,
        false,
        At::now(),
        &Context::default(),
    );
    assert_eq!(r[2], "Pending");
}

#[test]
fn a_jobs_gpus_column_counts_and_gpu_ids_name_them() {
    let v = serde_json::json!({"metadata": {"name": "j"},
        "spec": {"type": "selfplay", "resources": {"gpus": 1}},
        "status": {"phase": "Running", "gpus": [0]}});
    let jobs = lookup("jobs").unwrap();
    let r = row(jobs, &v, true, At::now(), &Context::default());
    let h = headers(jobs, true);
    let col = |name: &str| r[h.iter().position(|x| *x == name).unwrap()].clone();
    assert_eq!(col("GPUS"), "1", "GPU 0 is one GPU, not zero");
    assert_eq!(col("GPU-IDS"), "0");
}

#[test]
fn roles_say_what_the_node_is_now() {
    let nodes = lookup("nodes").unwrap();
    let v = serde_json::json!({"metadata": {"name": "a"}, "spec": {"roles": ["voter", "relay"]},
        "status": {"loadScore": 0.3793000000000001}});
    let ctx = Context {
        leader: Some("a".into()),
        voters: vec!["a".into()],
        learners: vec![],
    };
    let r = row(nodes, &v, true, At::now(), &ctx);
    assert_eq!(r[2], "leader,voter,relay");
    assert_eq!(r[8], "0.38", "LOAD without float noise");
    let r = row(nodes, &v, false, At::now(), &Context::default());
    assert_eq!(r[2], "voter,relay", "declared roles only");
}

#[test]
fn raw_rows_do_not_change_as_time_passes() {
    let v =
        serde_json::json!({"metadata": {"name": "j", "creationTimestamp": "2026-11-22T12:00:00Z"}});
    let jobs = lookup("jobs").unwrap();
    let ctx = Context::default();
    assert_eq!(
        row(jobs, &v, false, At::Raw, &ctx),
        row(jobs, &v, false, At::Raw, &ctx)
    );
    let t1 = At::Time("2026-11-22T12:00:05Z".parse().unwrap());
    let t2 = At::Time("2026-11-22T12:00:06Z".parse().unwrap());
    assert_ne!(
        row(jobs, &v, false, t1, &ctx),
        row(jobs, &v, false, t2, &ctx)
    );
}

#[test]
fn ages_are_short() {
    let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
    let t = |s: &str| Some(s.parse().unwrap());
    assert_eq!(age(t("2026-11-22T11:59:30Z"), now), "30s");
    assert_eq!(age(t("2026-11-22T11:00:00Z"), now), "60m");
    assert_eq!(age(t("2026-11-20T12:00:00Z"), now), "2d");
    assert_eq!(age(None, now), "-");
}
