//! `rift top nodes`: what each node is using now, as its agent last reported it: CPU, memory,
//! and every GPU's utilisation and memory.

use serde_json::Value;

use crate::api::kinds::lookup;
use crate::api::selector::LabelSelector;
use crate::store::Store;

use super::output::number_cell;
use super::printer;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// What to show: `nodes` (no).
    pub what: String,
    /// Only nodes whose labels match, e.g. `gpu=h100`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
}

fn percent(v: &Value, p: &str) -> String {
    v.pointer(p)
        .map(|x| format!("{}%", number_cell(x)))
        .unwrap_or_else(|| "-".into())
}

/// `0:97%/61% 1:3%/2%`: each GPU's utilisation / memory in use; `-` where not measured.
fn per_gpu(v: &Value) -> String {
    let Some(gpus) = v.pointer("/status/usage/gpus").and_then(Value::as_array) else {
        let declared = v
            .pointer("/status/capacity/gpus")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        return if declared > 0 {
            "not measured".into()
        } else {
            "-".into()
        };
    };
    gpus.iter()
        .map(|g| {
            let util = g
                .get("utilPercent")
                .map_or_else(|| "-".into(), |u| format!("{}%", number_cell(u)));
            format!(
                "{}:{util}/{}",
                number_cell(&g["index"]),
                percent(g, "/memoryPercent")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows `top nodes` prints. Pure, for tests.
pub fn rows(nodes: &[Value]) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|n| {
            let ready = n
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            let name = n["metadata"]["name"].as_str().unwrap_or("?").to_string();
            if !ready {
                return vec![
                    name,
                    "NotReady".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ];
            }
            vec![
                name,
                percent(n, "/status/usage/cpuPercent"),
                percent(n, "/status/usage/memoryPercent"),
                percent(n, "/status/usage/gpuUtilPercent"),
                percent(n, "/status/usage/gpuMemoryPercent"),
                per_gpu(n),
            ]
        })
        .collect()
}

pub async fn run(args: TopArgs, store: &Store) -> Result<(), CliError> {
    let kind = lookup(&args.what)
        .filter(|k| k.kind == "Node")
        .ok_or_else(|| {
            CliError::Usage(format!(
                "`rift top {}`: only `rift top nodes` exists",
                args.what
            ))
        })?;
    let selector: LabelSelector = match &args.selector {
        Some(s) => s.parse()?,
        None => LabelSelector::everything(),
    };
    let (nodes, _) = store.list_objects(kind, &selector).await?;
    if nodes.is_empty() {
        eprintln!("No nodes found.");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    printer::write_table(
        &mut out,
        Some(&[
            "NAME",
            "CPU",
            "MEMORY",
            "GPU",
            "GPU-MEMORY",
            "PER-GPU (UTIL/MEMORY)",
        ]),
        &rows(&nodes),
    )
    .map_err(|source| CliError::Io {
        path: "<stdout>".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_gpu_shows_its_utilisation_and_memory() {
        let ready = json!([{"type": "Ready", "status": "True"}]);
        let nodes = vec![
            json!({"metadata": {"name": "gh200-a"}, "status": {"conditions": ready,
                "usage": {"cpuPercent": 12.5, "memoryPercent": 40.0, "gpuUtilPercent": 50.0, "gpuMemoryPercent": 31.3,
                          "gpus": [{"index": 0, "utilPercent": 97.0, "memoryPercent": 61.0},
                                   {"index": 1, "memoryPercent": 1.5}]}}}),
            json!({"metadata": {"name": "laptop"}, "status": {"conditions": ready,
                "capacity": {"gpus": [{"index": 0, "model": "H100"}]}, "usage": {"cpuPercent": 3.0}}}),
            json!({"metadata": {"name": "gone"}}),
        ];
        let r = rows(&nodes);
        assert_eq!(
            r[0],
            [
                "gh200-a",
                "12.5%",
                "40%",
                "50%",
                "31.3%",
                "0:97%/61% 1:-/1.5%"
            ]
        );
        assert_eq!(r[1][5], "not measured", "declared GPUs have no figures");
        assert_eq!(r[2][1], "NotReady");
    }
}
