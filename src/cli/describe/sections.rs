//! What `describe` says about each kind beyond the common header: the state in words and the
//! figures that matter, instead of the raw status.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{field, table};
use crate::api::training_target::{TrainingTargetSpec, TrainingTargetStatus};
use crate::cli::output::number_cell;
use crate::cli::printer::age;
use crate::controllers::training::{last_ended, trigger, Trigger};

fn at(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(n @ Value::Number(_)) => number_cell(n),
        Some(other) => other.to_string(),
    }
}

fn dash(x: String) -> String {
    if x.is_empty() {
        "-".into()
    } else {
        x
    }
}

fn when(v: &Value, p: &str, now: DateTime<Utc>) -> String {
    match v
        .pointer(p)
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
    {
        Some(t) => format!("{} ({} ago)", at(v, p), age(Some(t), now)),
        None => "-".into(),
    }
}

fn joined(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| number_cell(x), str::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn pairs(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, x)| {
                    format!(
                        "{k}={}",
                        x.as_str().map_or_else(|| number_cell(x), str::to_string)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn gib(bytes: &Value) -> String {
    bytes
        .as_f64()
        .map(|b| format!("{:.0} GiB", b / (1u64 << 30) as f64))
        .unwrap_or_else(|| "-".into())
}

/// A Job's inputs (`$RIFT_INPUTS/<name>/`: the artifacts) and outputs (`$RIFT_OUTPUTS/<name>/`:
/// labels and format), one line each; nothing when it has none.
fn job_io(v: &Value) -> String {
    let mut out = String::new();
    for input in v
        .pointer("/spec/inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let names: Vec<&str> = input["artifacts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out += &field(
            "Input",
            format!(
                "{}: {}",
                input["name"].as_str().unwrap_or("-"),
                names.join(", ")
            ),
        );
    }
    for output in v
        .pointer("/spec/outputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let labels = pairs(output, "/labels");
        let format = output["format"].as_str().unwrap_or("-");
        out += &field(
            "Output",
            format!(
                "{} (format {format}; labels {})",
                output["name"].as_str().unwrap_or("-"),
                if labels.is_empty() {
                    "-".to_string()
                } else {
                    labels
                }
            ),
        );
    }
    out
}

/// A Job: what it runs, where, how it went.
pub fn job(v: &Value, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    out += &field("Type", dash(at(v, "/spec/type")));
    let phase = v
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    let reason = at(v, "/status/reason");
    out += &field(
        "Phase",
        if reason.is_empty() {
            phase.to_string()
        } else {
            format!("{phase} ({reason})")
        },
    );
    let message = at(v, "/status/message");
    if !message.is_empty() {
        out += &field("Message", message);
    }
    out += &field("Node", dash(at(v, "/status/node")));
    let ids = joined(v, "/status/gpus");
    let gpus = at(v, "/spec/resources/gpus");
    out += &field(
        "GPUs",
        match (gpus.as_str(), ids.is_empty()) {
            ("" | "0", _) => "none".to_string(),
            (n, true) => n.to_string(),
            (n, false) => format!("{n} (GPU {ids})"),
        },
    );
    out += &field("Attempts", dash(at(v, "/status/attempts")));
    out += &field("Started", when(v, "/status/startTime", now));
    out += &field("Finished", when(v, "/status/finishTime", now));
    let exit = at(v, "/status/exitCode");
    if !exit.is_empty() {
        out += &field("Exit code", exit);
    }
    let progress = pairs(v, "/status/progress");
    if !progress.is_empty() {
        out += &field("Progress", progress);
    }
    out += &field(
        "Command",
        serde_json::to_string(&v["spec"]["command"]).unwrap_or_default(),
    );
    out += &job_io(v);
    out += &field("Priority", dash(at(v, "/spec/priority")));
    out += &field(
        "Restart",
        format!(
            "{} (backoff limit {})",
            at(v, "/spec/restartPolicy"),
            at(v, "/spec/backoffLimit")
        ),
    );
    out += &field(
        "On node lost",
        format!(
            "{} after {}",
            at(v, "/spec/onNodeLost"),
            at(v, "/spec/lostAfter")
        ),
    );
    out
}

/// A Node: readiness, what it is, what it has, how busy it is.
pub fn node(v: &Value) -> String {
    let mut out = String::new();
    out += &field("Provider", dash(at(v, "/spec/provider")));
    out += &field("Roles", dash(joined(v, "/spec/roles")));
    out += &field("Addresses", dash(joined(v, "/spec/addresses")));
    out += &field("Endpoint", dash(at(v, "/status/endpoint")));
    out += &field(
        "Schedulable",
        if v.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
            "no (cordoned)"
        } else {
            "yes"
        },
    );
    out += &field("Agent", dash(at(v, "/status/agentVersion")));
    out += &field(
        "Capacity",
        format!(
            "{} CPUs, {} memory, {} disk",
            dash(at(v, "/status/capacity/cpus")),
            gib(&v["status"]["capacity"]["memoryBytes"]),
            gib(&v["status"]["capacity"]["diskBytes"])
        ),
    );
    out += &field(
        "Usage",
        format!(
            "CPU {}%, memory {}%, disk {}%, GPU {}% (memory {}%); load {}{}",
            dash(at(v, "/status/usage/cpuPercent")),
            dash(at(v, "/status/usage/memoryPercent")),
            dash(at(v, "/status/usage/diskPercent")),
            dash(at(v, "/status/usage/gpuUtilPercent")),
            dash(at(v, "/status/usage/gpuMemoryPercent")),
            dash(at(v, "/status/loadScore")),
            if v.pointer("/status/overloaded") == Some(&Value::Bool(true)) {
                " (overloaded)"
            } else {
                ""
            }
        ),
    );
    let gpus: Vec<Vec<String>> = v
        .pointer("/status/capacity/gpus")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|g| {
                    vec![
                        at(g, "/index"),
                        at(g, "/model"),
                        gib(&g["memoryBytes"]),
                        dash(at(g, "/uuid")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if gpus.is_empty() {
        out += &field("GPUs", "none");
    } else {
        out += "GPUs:\n";
        out += &table(&["INDEX", "MODEL", "MEMORY", "UUID"], &gpus);
    }
    out += &field("Running jobs", dash(joined(v, "/status/runningJobs")));
    let conditions: Vec<Vec<String>> = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| {
                    vec![
                        at(c, "/type"),
                        at(c, "/status"),
                        dash(at(c, "/reason")),
                        dash(at(c, "/message")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !conditions.is_empty() {
        out += "Conditions:\n";
        out += &table(&["TYPE", "STATUS", "REASON", "MESSAGE"], &conditions);
    }
    out
}

/// A Pool: how it is sized and the jobs it owns.
pub fn pool(v: &Value, members: &[Value]) -> String {
    let mut out = String::new();
    let size = if v.pointer("/spec/perGpu") == Some(&Value::Bool(true)) {
        "one job per GPU of every matching node".to_string()
    } else {
        format!("{} replicas", dash(at(v, "/spec/replicas")))
    };
    out += &field("Size", size);
    out += &field("Selector", dash(pairs(v, "/spec/nodeSelector")));
    out += &field(
        "Jobs",
        format!(
            "{} desired, {} scheduled, {} running",
            dash(at(v, "/status/desired")),
            dash(at(v, "/status/scheduled")),
            dash(at(v, "/status/running"))
        ),
    );
    if let Some(from) = v.pointer("/spec/model/fromTrainingTarget") {
        out += &field(
            "Model",
            format!(
                "{} (from TrainingTarget {}, {}, maxUnavailable {})",
                dash(at(v, "/status/currentModel")),
                from.as_str().unwrap_or_default(),
                dash(at(v, "/spec/model/update")),
                dash(at(v, "/spec/model/maxUnavailable"))
            ),
        );
        if let Some(prev) = v.pointer("/status/previousModel").and_then(Value::as_str) {
            out += &field("Previous model", prev.to_string());
        }
        if let Some(r) = v.pointer("/status/rollout") {
            out += &field(
                "Rollout",
                format!(
                    "{}/{} members updated, started {}, {}",
                    dash(at(r, "/updated")),
                    dash(at(r, "/total")),
                    dash(at(r, "/startedAt")),
                    match r.pointer("/completedAt").and_then(Value::as_str) {
                        Some(t) => format!("completed {t}"),
                        None => "in progress".to_string(),
                    }
                ),
            );
        }
    }
    if let Some(msg) = v.pointer("/status/message").and_then(Value::as_str) {
        out += &field("Message", msg.to_string());
    }
    if !members.is_empty() {
        let rows: Vec<Vec<String>> = members
            .iter()
            .map(|j| {
                vec![
                    at(j, "/metadata/name"),
                    j.pointer("/status/phase")
                        .and_then(Value::as_str)
                        .unwrap_or("Pending")
                        .to_string(),
                    dash(at(j, "/status/node")),
                    dash(joined(j, "/status/gpus")),
                    dash(member_model(j)),
                    dash(pairs(j, "/status/progress")),
                ]
            })
            .collect();
        out += "Members:\n";
        out += &table(
            &["JOB", "PHASE", "NODE", "GPU-IDS", "MODEL", "PROGRESS"],
            &rows,
        );
        for j in members {
            if let Some(p) = j
                .pointer("/status/model/problem")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            {
                out += &format!("  {} keeps its model: {p}\n", at(j, "/metadata/name"));
            }
        }
    }
    out
}

/// The model a member holds (its node's report: a Reload may have swapped it since the Job was
/// made), else the first artifact of its `model` input; cut like `rift get pools` cuts it.
fn member_model(job: &Value) -> String {
    job.pointer("/status/model/held")
        .and_then(Value::as_str)
        .or_else(|| {
            job.pointer("/spec/inputs")
                .and_then(Value::as_array)
                .and_then(|inputs| inputs.iter().find(|i| i["name"] == "model"))
                .and_then(|i| i.pointer("/artifacts/0"))
                .and_then(Value::as_str)
        })
        .map(|m| m.chars().take("sha256-".len() + 12).collect())
        .unwrap_or_default()
}

/// `14 m left`, `40 s left`.
fn left(secs: i64) -> String {
    if secs >= 120 {
        format!("{} m left", (secs + 59) / 60)
    } else {
        format!("{secs} s left")
    }
}

/// What a TrainingTarget is doing now, in words.
pub fn training_state(
    spec: &TrainingTargetSpec,
    status: &TrainingTargetStatus,
    now: DateTime<Utc>,
) -> String {
    if let Some(job) = &status.active_job {
        return format!("running {job}");
    }
    if let Some(t) = last_ended(status) {
        let since = (now - t).num_seconds();
        if since < spec.cooldown_seconds as i64 {
            return format!(
                "cooling down, {}",
                left(spec.cooldown_seconds as i64 - since)
            );
        }
    }
    match trigger(spec, status, now) {
        Trigger::Train { .. } => "ready to train (the next scheduler pass starts it)".into(),
        Trigger::Wait { reason, .. } => format!("waiting: {reason}"),
    }
}

/// A TrainingTarget: its state in words, the games ledger per job, the runs so far.
pub fn training_target(v: &Value, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    out += &field(
        "Board",
        format!(
            "{}, {} players",
            at(v, "/spec/board"),
            at(v, "/spec/players")
        ),
    );
    out += &field("Selfplay", dash(pairs(v, "/spec/selfplaySelector")));
    let spec: Option<TrainingTargetSpec> = serde_json::from_value(v["spec"].clone()).ok();
    let status: TrainingTargetStatus =
        serde_json::from_value(v["status"].clone()).unwrap_or_default();
    if let Some(spec) = &spec {
        out += &field("State", training_state(spec, &status, now));
        let threshold = if status.training_generation == 0 {
            spec.first_training_games
        } else {
            spec.retrain_games
        };
        out += &field(
            "Games",
            format!(
                "{} new since the last training ({threshold} start one); {} in all",
                status.games_since_last_training, status.total_games
            ),
        );
        if status.games_revision > 0 {
            out += &field(
                "From shards",
                format!(
                    "{} games in game artifacts (counted through etcd revision {}; the last run \
                     took those through {})",
                    status.artifact_games, status.games_revision, status.trained_revision
                ),
            );
        }
        out += &field(
            "Cooldown",
            format!("{} s after each run", spec.cooldown_seconds),
        );
    }
    out += &field("Last trained", when(v, "/status/lastTrainedAt", now));
    out += &field("Model", dash(at(v, "/status/currentModel")));
    // Ledger keys are `<job>/<uid>/<epoch>/<attempt>`: games per job, all its runs together.
    let mut per_job: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for (key, games) in &status.ledger {
        let job = key.split('/').next().unwrap_or(key);
        let e = per_job.entry(job).or_default();
        e.0 += games;
        e.1 += 1;
    }
    if !per_job.is_empty() {
        let rows: Vec<Vec<String>> = per_job
            .iter()
            .map(|(j, (g, runs))| vec![j.to_string(), g.to_string(), runs.to_string()])
            .collect();
        out += "Games per job:\n";
        out += &table(&["JOB", "GAMES", "RUNS"], &rows);
    }
    if !status.history.is_empty() {
        let rows: Vec<Vec<String>> = status
            .history
            .iter()
            .map(|r| {
                vec![
                    r.generation.to_string(),
                    r.job.clone(),
                    r.candidate.clone().unwrap_or_else(|| "-".into()),
                    r.win_rate.map_or_else(|| "-".into(), |w| format!("{w:.2}")),
                    if r.promoted { "yes" } else { "no" }.into(),
                    age(r.finished_at, now),
                    dash(r.outcome.clone()),
                ]
            })
            .collect();
        out += "Runs:\n";
        out += &table(
            &[
                "GEN",
                "JOB",
                "CANDIDATE",
                "WIN-RATE",
                "PROMOTED",
                "FINISHED",
                "OUTCOME",
            ],
            &rows,
        );
    }
    let message = at(v, "/status/message");
    if !message.is_empty() {
        out += &field("Message", message);
    }
    out
}

/// An Artifact: what the bytes are, who made them, what they were made from (parents) and
/// what was made from them (`children`: the artifacts that list this one as a parent).
pub fn artifact(v: &Value, children: &[Value]) -> String {
    let mut out = String::new();
    out += &field("Digest", dash(at(v, "/spec/digest")));
    let size = v.pointer("/spec/size").and_then(Value::as_u64);
    out += &field(
        "Size",
        size.map_or("-".into(), |n| {
            format!("{} ({n} bytes)", crate::cli::printer::human_bytes(n))
        }),
    );
    out += &field("Format", dash(at(v, "/spec/format")));
    let producer = match at(v, "/spec/producer/job") {
        job if job.is_empty() => "pushed by hand (rift artifact push)".to_string(),
        job => format!(
            "job {job}, attempt {}, on node {}",
            at(v, "/spec/producer/attempt"),
            at(v, "/spec/producer/node")
        ),
    };
    out += &field("Producer", producer);
    if let Some(counts) = v.pointer("/spec/counts").and_then(Value::as_object) {
        let c: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
        out += &field("Counts", c.join(", "));
    }
    out += "Lineage:\n";
    let parents: Vec<String> = v
        .pointer("/spec/parents")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    out += &format!("  made from ({}):\n", parents.len());
    for p in &parents {
        out += &format!("    {p}\n");
    }
    out += &format!("  used by ({}):\n", children.len());
    for c in children {
        let labels = c
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        out += &format!("    {}  {labels}\n", at(c, "/metadata/name"));
    }
    out
}

/// The VoterSet: wanted voters and the real members.
pub fn voter_set(v: &Value) -> String {
    let mut out = String::new();
    out += &field("Voters", dash(joined(v, "/spec/voters")));
    out += &field("Phase", dash(at(v, "/status/phase")));
    out += &field("Quorum", dash(at(v, "/status/quorum")));
    let message = at(v, "/status/message");
    if !message.is_empty() {
        out += &field("Message", message);
    }
    let rows: Vec<Vec<String>> = v
        .pointer("/status/members")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    vec![
                        dash(at(m, "/name")),
                        at(m, "/id"),
                        if m["learner"] == true {
                            "learner"
                        } else {
                            "voter"
                        }
                        .into(),
                        if m["healthy"] == true {
                            "healthy"
                        } else {
                            "UNHEALTHY"
                        }
                        .into(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !rows.is_empty() {
        out += "Members:\n";
        out += &table(&["NAME", "ID", "ROLE", "HEALTH"], &rows);
    }
    out
}

/// Kinds without a summary: spec and status as YAML.
pub fn raw(v: &Value) -> String {
    let mut out = String::from("Spec:\n");
    out += &super::indent(&crate::cli::output::to_yaml(&v["spec"]), 2);
    out += "Status:\n";
    match v.get("status") {
        Some(st) if !st.is_null() => out += &super::indent(&crate::cli::output::to_yaml(st), 2),
        _ => out += "  <not reported yet>\n",
    }
    out
}

#[cfg(test)]
mod tests;
