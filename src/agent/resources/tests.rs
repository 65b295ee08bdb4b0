use std::time::{Duration, Instant};

use chrono::Utc;

use super::*;
use crate::api::meta::ConditionStatus;

fn decl(model: &str, count: u32, memory_gb: Option<f64>) -> GpuDeclaration {
    GpuDeclaration {
        model: model.into(),
        count,
        memory_gb,
    }
}

fn usage(cpu: f64, memory: f64, gpu_memory: f64, disk: f64) -> Usage {
    Usage {
        cpu_percent: cpu,
        memory_percent: memory,
        disk_percent: disk,
        disk_available_bytes: None,
        gpu_memory_percent: gpu_memory,
        gpu_util_percent: 0.0,
        gpus: vec![],
    }
}

// ---- parse_gpu_declaration ----

#[test]
fn parses_model_count_and_memory() {
    let ok = |s: &str| parse_gpu_declaration(s).unwrap();
    assert_eq!(ok("H100x8"), decl("H100", 8, None));
    assert_eq!(ok("RTX 4090x2"), decl("RTX 4090", 2, None));
    assert_eq!(ok("GH200"), decl("GH200", 1, None));
    assert_eq!(ok("A100x4:80"), decl("A100", 4, Some(80.0)));
    assert_eq!(ok("GH200:96"), decl("GH200", 1, Some(96.0)));
    assert_eq!(ok("M3 Max:36.5"), decl("M3 Max", 1, Some(36.5)));
    assert_eq!(ok("  H100x8  "), decl("H100", 8, None));
    assert_eq!(ok("H100x1024"), decl("H100", 1024, None));
}

#[test]
fn x_that_is_not_a_count_belongs_to_the_model() {
    let ok = |s: &str| parse_gpu_declaration(s).unwrap();
    assert_eq!(ok("Apple M3 Max"), decl("Apple M3 Max", 1, None));
    assert_eq!(
        ok("MI300X"),
        decl("MI300X", 1, None),
        "uppercase X is the model's"
    );
    assert_eq!(ok("MI300Xx8"), decl("MI300X", 8, None));
    assert_eq!(ok("R9 295X2"), decl("R9 295X2", 1, None));
    assert_eq!(
        ok("rtx 4090"),
        decl("rtx 4090", 1, None),
        "a space after x: no count"
    );
    assert_eq!(ok("Exynos"), decl("Exynos", 1, None));
}

#[test]
fn refuses_bad_declarations_with_clear_messages() {
    for (input, problem) in [
        ("", "empty"),
        ("   ", "empty"),
        ("x8", "model is missing"),
        (":80", "model is missing"),
        ("H100x0", "at least 1"),
        ("H100xfoo", "\"foo\" after 'x' is not a whole number"),
        ("H100x8a", "not a whole number"),
        ("H100x-1", "not a whole number"),
        ("H100x", "count after 'x' is missing"),
        ("H100x 8", "\" 8\" after 'x' is not a whole number"),
        ("H100x1025", "more than 1024"),
        ("H100x99999999999", "more than 1024"),
        ("H100x8:", "memory after ':' is missing"),
        ("H100x8:lots", "not a number of GB"),
        ("H100x8:0", "positive"),
        ("H100x8:-80", "positive"),
        ("H100x8:NaN", "positive"),
        ("H100x8:inf", "positive"),
    ] {
        let err = parse_gpu_declaration(input).expect_err(input).to_string();
        assert!(err.contains(problem), "{input:?}: {err}");
        assert!(
            err.contains(&format!("{input:?}")),
            "names the input: {err}"
        );
        assert!(
            err.contains("MODEL[xCOUNT][:MEMORY_GB]"),
            "shows the syntax: {err}"
        );
    }
}

#[test]
fn parsed_declarations_pass_node_validation() {
    // Whatever the parser accepts is a valid `spec.gpus` entry.
    for s in ["H100x8", "RTX 4090x2", "GH200", "A100x4:80", "Apple M3 Max"] {
        let d = parse_gpu_declaration(s).unwrap();
        assert!(!d.model.trim().is_empty() && d.count >= 1, "{s}");
    }
}

// ---- thresholds, load score, overloaded ----

#[test]
fn default_thresholds_are_the_documented_ones() {
    let t = Thresholds::default();
    assert_eq!(
        (t.cpu, t.memory, t.gpu_memory, t.disk),
        (90.0, 90.0, 95.0, 95.0)
    );
}

#[test]
fn thresholds_deserialize_with_defaults_for_missing_fields() {
    let t: Thresholds = serde_norway::from_str("cpu: 80\ngpuMemory: 99").unwrap();
    assert_eq!(
        t,
        Thresholds {
            cpu: 80.0,
            gpu_memory: 99.0,
            ..Thresholds::default()
        }
    );
    assert!(serde_norway::from_str::<Thresholds>("cpus: 80").is_err());
}

#[test]
fn exactly_at_a_threshold_is_not_overloaded_just_above_is() {
    let t = Thresholds::default();
    assert!(!overloaded(&usage(90.0, 90.0, 95.0, 95.0), &t));
    assert!(overloaded(&usage(90.1, 0.0, 0.0, 0.0), &t));
    assert!(overloaded(&usage(0.0, 90.1, 0.0, 0.0), &t));
    assert!(overloaded(&usage(0.0, 0.0, 95.1, 0.0), &t));
    assert!(overloaded(&usage(0.0, 0.0, 0.0, 95.1), &t));
    assert!(!overloaded(&usage(0.0, 0.0, 0.0, 0.0), &t));
}

#[test]
fn busy_gpus_and_nan_do_not_overload() {
    let t = Thresholds::default();
    let mut u = usage(0.0, 0.0, 0.0, 0.0);
    u.gpu_util_percent = 100.0;
    assert!(!overloaded(&u, &t), "GPU utilisation has no threshold");
    assert!(!overloaded(
        &usage(f64::NAN, f64::NAN, f64::NAN, f64::NAN),
        &t
    ));
}

#[test]
fn load_score_weights_and_bounds() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert_eq!(load_score(&usage(0.0, 0.0, 0.0, 0.0)), 0.0);
    assert!(close(load_score(&usage(100.0, 100.0, 100.0, 100.0)), 1.0));
    assert!(close(load_score(&usage(100.0, 0.0, 0.0, 0.0)), 0.3));
    assert!(close(load_score(&usage(0.0, 100.0, 0.0, 0.0)), 0.3));
    assert!(close(load_score(&usage(0.0, 0.0, 100.0, 0.0)), 0.3));
    assert!(close(load_score(&usage(0.0, 0.0, 0.0, 100.0)), 0.1));
    assert!(close(load_score(&usage(50.0, 50.0, 50.0, 50.0)), 0.5));
    // Out-of-range and NaN figures are clamped / ignored, so the score stays in [0, 1].
    assert!(close(load_score(&usage(500.0, 500.0, 500.0, 500.0)), 1.0));
    assert_eq!(load_score(&usage(-50.0, -1.0, -1.0, -1.0)), 0.0);
    assert!(close(load_score(&usage(f64::NAN, 100.0, 0.0, 0.0)), 0.3));
    let mut u = usage(0.0, 0.0, 0.0, 0.0);
    u.gpu_util_percent = 100.0;
    assert_eq!(load_score(&u), 0.0, "GPU utilisation is not in the score");
}

// ---- status_changed_meaningfully, should_write ----

fn status() -> NodeStatus {
    NodeStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: "AgentUp".into(),
            message: String::new(),
            last_transition_time: Some(Utc::now()),
        }],
        capacity: Capacity {
            cpus: 8,
            memory_bytes: 64 << 30,
            disk_bytes: 1 << 40,
            gpus: vec![],
        },
        usage: Usage {
            cpu_percent: 20.0,
            memory_percent: 30.0,
            disk_percent: 40.0,
            disk_available_bytes: Some(600 << 30),
            gpu_memory_percent: 50.0,
            gpu_util_percent: 60.0,
            gpus: vec![GpuUsage {
                index: 0,
                util_percent: Some(60.0),
                memory_percent: 50.0,
            }],
        },
        load_score: 0.3,
        overloaded: false,
        running_jobs: vec!["a".into(), "b".into()],
        agent_version: "0.1.0".into(),
        endpoint: Some("10.0.0.1:8770".into()),
        last_heartbeat: Some(Utc::now()),
        etcd: None,
    }
}

#[test]
fn the_same_status_is_not_a_change() {
    assert!(!status_changed_meaningfully(&status(), &status()));
}

#[test]
fn usage_must_move_at_least_five_points() {
    let fields: [fn(&mut Usage) -> &mut f64; 5] = [
        |u| &mut u.cpu_percent,
        |u| &mut u.memory_percent,
        |u| &mut u.disk_percent,
        |u| &mut u.gpu_memory_percent,
        |u| &mut u.gpu_util_percent,
    ];
    for (i, field) in fields.iter().enumerate() {
        for (delta, changed) in [
            (4.9, false),
            (-4.9, false),
            (5.0, true),
            (-5.0, true),
            (30.0, true),
        ] {
            let old = status();
            let mut new = status();
            *field(&mut new.usage) += delta;
            assert_eq!(
                status_changed_meaningfully(&old, &new),
                changed,
                "field {i}, {delta:+}"
            );
        }
    }
}

#[test]
fn small_moves_do_not_add_up_against_the_same_old_status() {
    // The comparison is against the last *written* status: drifting 1 point a tick is written
    // once the total drift reaches 5.
    let old = status();
    let mut new = status();
    for tick in 1..=5 {
        new.usage.cpu_percent += 1.0;
        assert_eq!(
            status_changed_meaningfully(&old, &new),
            tick == 5,
            "tick {tick}"
        );
    }
}

#[test]
fn structural_changes_are_changes() {
    type Change = fn(&mut NodeStatus);
    let changes: Vec<(&str, Change)> = vec![
        ("cpus", |s| s.capacity.cpus += 1),
        ("memory", |s| s.capacity.memory_bytes -= 1),
        ("disk", |s| s.capacity.disk_bytes += 1),
        ("gpu", |s| {
            s.capacity.gpus.push(Gpu {
                index: 0,
                uuid: String::new(),
                model: "H100".into(),
                memory_bytes: 0,
            })
        }),
        ("overloaded", |s| s.overloaded = true),
        ("condition status", |s| {
            s.conditions[0].status = ConditionStatus::False
        }),
        ("condition reason", |s| {
            s.conditions[0].reason = "Other".into()
        }),
        ("condition message", |s| {
            s.conditions[0].message = "disk full".into()
        }),
        ("condition added", |s| {
            let mut c = s.conditions[0].clone();
            c.type_ = "Degraded".into();
            s.conditions.push(c);
        }),
        ("job added", |s| s.running_jobs.push("c".into())),
        ("job gone", |s| s.running_jobs.clear()),
        ("agent version", |s| s.agent_version = "0.2.0".into()),
        ("endpoint", |s| s.endpoint = None),
    ];
    for (what, change) in changes {
        let mut new = status();
        change(&mut new);
        assert!(status_changed_meaningfully(&status(), &new), "{what}");
    }
}

#[test]
fn timestamps_order_and_derived_figures_are_not_changes() {
    let mut new = status();
    new.last_heartbeat = Some(Utc::now() + chrono::Duration::seconds(60));
    new.conditions[0].last_transition_time = None;
    new.running_jobs.reverse();
    new.load_score = 0.9;
    new.usage.cpu_percent += 4.0;
    assert!(!status_changed_meaningfully(&status(), &new));
}

#[test]
fn nan_appearing_or_vanishing_is_a_change() {
    let mut new = status();
    new.usage.cpu_percent = f64::NAN;
    assert!(status_changed_meaningfully(&status(), &new));
    assert!(status_changed_meaningfully(&new, &status()));
}

#[test]
fn write_first_then_on_change_or_every_thirty_seconds() {
    let old = status();
    let same = status();
    let mut moved = status();
    moved.usage.memory_percent += 10.0;
    assert!(should_write(None, Duration::ZERO, &same));
    assert!(!should_write(Some(&old), Duration::from_secs(29), &same));
    assert!(should_write(Some(&old), Duration::from_secs(30), &same));
    assert!(should_write(Some(&old), Duration::from_secs(1), &moved));
}

// ---- compose ----

fn host() -> HostSample {
    HostSample {
        cpus: 16,
        cpu_percent: 12.345,
        memory_total: 100,
        memory_used: 25,
        disk: Some((1000, 250)),
    }
}

fn nvidia(index: u32, total: u64, used: u64, util: Option<u32>) -> GpuSample {
    GpuSample {
        index,
        uuid: format!("GPU-{index}"),
        model: "NVIDIA H100 80GB HBM3".into(),
        memory_total: total,
        memory_used: used,
        util_percent: util,
    }
}

#[test]
fn host_figures_become_capacity_and_percentages() {
    let o = compose(&host(), &NvmlSample::default(), &[]);
    assert_eq!(o.capacity.cpus, 16);
    assert_eq!(o.capacity.memory_bytes, 100);
    assert_eq!(o.capacity.disk_bytes, 1000);
    assert!(o.capacity.gpus.is_empty());
    assert_eq!(o.usage.cpu_percent, 12.3, "rounded to 0.1");
    assert_eq!(o.usage.memory_percent, 25.0);
    assert_eq!(o.usage.disk_percent, 75.0);
    assert_eq!(
        (o.usage.gpu_memory_percent, o.usage.gpu_util_percent),
        (0.0, 0.0)
    );
}

#[test]
fn unreadable_or_odd_host_figures_become_zero_or_clamped() {
    let h = HostSample {
        cpus: 1,
        cpu_percent: f64::NAN,
        memory_total: 0,
        memory_used: 5,
        disk: None,
    };
    let o = compose(&h, &NvmlSample::default(), &[]);
    assert_eq!(o.capacity.disk_bytes, 0);
    assert_eq!(o.usage, Usage::default());
    let h = HostSample {
        cpu_percent: 100.4,
        disk: Some((10, 20)), // more available than total: never negative
        ..host()
    };
    let o = compose(&h, &NvmlSample::default(), &[]);
    assert_eq!((o.usage.cpu_percent, o.usage.disk_percent), (100.0, 0.0));
}

#[test]
fn declared_gpus_alone_are_numbered_from_zero() {
    let declared = [decl("M3 Max", 1, Some(36.0)), decl("RTX 4090", 2, None)];
    let o = compose(&host(), &NvmlSample::default(), &declared);
    let gpus: Vec<_> = o
        .capacity
        .gpus
        .iter()
        .map(|g| (g.index, g.model.as_str(), g.memory_bytes, g.uuid.as_str()))
        .collect();
    assert_eq!(
        gpus,
        [
            (0, "M3 Max", 36 << 30, ""),
            (1, "RTX 4090", 0, ""),
            (2, "RTX 4090", 0, "")
        ]
    );
    assert_eq!(
        o.usage.gpu_memory_percent, 0.0,
        "declared GPUs have no usage"
    );
}

#[test]
fn declared_gpus_follow_nvml_ones_and_never_reuse_a_lost_gpus_index() {
    let nvml = NvmlSample {
        device_count: 3, // GPU 2 could not be read
        gpus: vec![nvidia(0, 80, 40, Some(100)), nvidia(1, 80, 0, Some(0))],
    };
    let o = compose(&host(), &nvml, &[decl("H100", 2, Some(80.0))]);
    let indices: Vec<_> = o.capacity.gpus.iter().map(|g| g.index).collect();
    assert_eq!(indices, [0, 1, 3, 4]);
    assert_eq!(o.capacity.gpus[0].uuid, "GPU-0");
    assert_eq!(o.capacity.gpus[0].memory_bytes, 80);
    assert_eq!(o.capacity.gpus[2].memory_bytes, 80 << 30);
    assert_eq!(
        o.usage.gpu_memory_percent, 25.0,
        "40 of 160 bytes across NVML GPUs"
    );
    assert_eq!(o.usage.gpu_util_percent, 50.0, "mean of 100 and 0");
    let per_gpu: Vec<_> = o
        .usage
        .gpus
        .iter()
        .map(|g| (g.index, g.util_percent, g.memory_percent))
        .collect();
    assert_eq!(
        per_gpu,
        [(0, Some(100.0), 50.0), (1, Some(0.0), 0.0)],
        "each NVML GPU measured on its own; declared ones not at all"
    );
}

#[test]
fn a_single_gpu_moving_five_points_or_appearing_is_a_change() {
    let mut moved = status();
    moved.usage.gpus[0].memory_percent += 4.9;
    assert!(!status_changed_meaningfully(&status(), &moved));
    moved.usage.gpus[0].memory_percent += 0.1;
    assert!(status_changed_meaningfully(&status(), &moved));
    let mut util = status();
    util.usage.gpus[0].util_percent = Some(65.0);
    assert!(status_changed_meaningfully(&status(), &util));
    let mut unread = status();
    unread.usage.gpus[0].util_percent = None;
    assert!(
        status_changed_meaningfully(&status(), &unread),
        "readable → not"
    );
    let mut more = status();
    more.usage.gpus.push(GpuUsage::default());
    assert!(status_changed_meaningfully(&status(), &more));
}

#[test]
fn gpus_without_utilisation_are_left_out_of_the_mean() {
    let nvml = NvmlSample {
        device_count: 2,
        gpus: vec![nvidia(0, 10, 10, Some(30)), nvidia(1, 10, 0, None)],
    };
    let o = compose(&host(), &nvml, &[]);
    assert_eq!(o.usage.gpu_util_percent, 30.0);
    assert_eq!(o.usage.gpu_memory_percent, 50.0);
}

#[test]
fn declared_gpus_are_capped() {
    let declared = [
        decl("A", MAX_DECLARED_GPUS, None),
        decl("B", u32::MAX, None),
    ];
    let o = compose(&host(), &NvmlSample::default(), &declared);
    assert_eq!(o.capacity.gpus.len(), MAX_DECLARED_GPUS as usize);
}

#[test]
fn apply_fills_the_resource_fields_and_leaves_the_rest() {
    let mut s = status();
    let o = Observed {
        capacity: Capacity {
            cpus: 2,
            ..Capacity::default()
        },
        usage: usage(95.0, 0.0, 0.0, 0.0),
        load_average: None,
    };
    o.apply(&mut s, &Thresholds::default());
    assert_eq!(s.capacity.cpus, 2);
    assert_eq!(s.usage.cpu_percent, 95.0);
    assert!(s.overloaded);
    assert!((s.load_score - 0.285).abs() < 1e-12);
    assert_eq!(s.running_jobs, status().running_jobs);
}

// ---- the real machine ----

#[test]
fn the_probe_can_move_to_a_blocking_thread() {
    fn send<T: Send + 'static>() {}
    send::<ResourceProbe>();
}

#[test]
fn probes_this_machine() {
    let nvml_loads = Nvml::init().is_ok();
    let mut probe = ResourceProbe::new().unwrap();
    assert_eq!(probe.has_nvml(), nvml_loads);
    let dir = tempfile::tempdir().unwrap();
    // The state directory need not exist yet: its nearest existing ancestor is used.
    let path = dir.path().join("not/yet/there");
    let first = probe.probe(&[], &path);
    std::thread::sleep(Duration::from_millis(250));
    let o = probe.probe(&[decl("H100", 2, Some(80.0))], &path);
    for o in [&first, &o] {
        assert!(o.capacity.cpus > 0, "{o:?}");
        assert!(o.capacity.memory_bytes > 0, "{o:?}");
        assert!(o.capacity.disk_bytes > 0, "{o:?}");
        assert!(o.usage.memory_percent > 0.0 && o.usage.memory_percent <= 100.0);
        assert!(o.usage.disk_percent > 0.0 && o.usage.disk_percent <= 100.0);
        assert!((0.0..=100.0).contains(&o.usage.cpu_percent));
    }
    assert!(o.load_average.is_some());
    let nvml_gpus = o
        .capacity
        .gpus
        .iter()
        .filter(|g| !g.uuid.is_empty())
        .count();
    let declared: Vec<_> = o.capacity.gpus[nvml_gpus..].iter().collect();
    assert_eq!(declared.len(), 2);
    assert!(declared
        .iter()
        .all(|g| g.model == "H100" && g.memory_bytes == 80 << 30));
    if !nvml_loads {
        // This machine: no NVIDIA library, so no NVML GPUs and the declared ones start at 0.
        assert_eq!(nvml_gpus, 0);
        assert_eq!(declared[0].index, 0);
        assert_eq!(o.usage.gpu_memory_percent, 0.0);
    } else {
        eprintln!("NVML GPUs: {:#?}", &o.capacity.gpus[..nvml_gpus]);
        eprintln!("usage: {:?}", o.usage);
    }
}

#[test]
fn the_disk_follows_the_probed_path() {
    let mut probe = ResourceProbe::new().unwrap();
    let root = probe.probe(&[], Path::new("/"));
    let tmp = probe.probe(&[], &std::env::temp_dir());
    assert!(root.capacity.disk_bytes > 0 && tmp.capacity.disk_bytes > 0);
    assert!(probe
        .disk_for
        .as_ref()
        .is_some_and(|(p, _)| p == &std::env::temp_dir()));
}

/// `cargo test --lib [--release] agent::resources::tests::probe_cost -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand"]
fn probe_cost() {
    let started = Instant::now();
    let mut probe = ResourceProbe::new().unwrap();
    let new = started.elapsed();
    let path = std::env::temp_dir();
    let declared = [decl("H100", 8, Some(80.0))];
    probe.probe(&declared, &path);
    // Back to back: sysinfo skips re-reading /proc/stat within 200 ms, so this is the floor.
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(probe.probe(&declared, &path));
    }
    let tight = started.elapsed() / n;
    // As the agent calls it (a tick apart): every call re-reads CPU times too.
    let (mut spaced, m) = (Duration::ZERO, 20);
    for _ in 0..m {
        std::thread::sleep(Duration::from_millis(250));
        let started = Instant::now();
        std::hint::black_box(probe.probe(&declared, &path));
        spaced += started.elapsed();
    }
    eprintln!(
        "ResourceProbe::new(): {new:?}; probe(): {:?} per call a tick apart ({m} calls), \
         {tight:?} back to back ({n} calls)",
        spaced / m
    );
    eprintln!(
        "Nvml::init(): {:?}",
        Nvml::init().err().map(|e| e.to_string())
    );
    eprintln!("{:#?}", probe.probe(&[], &path));
}
