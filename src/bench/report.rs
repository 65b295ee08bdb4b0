//! What a scenario prints: a table for people and one JSON line for tools.

use serde_json::{json, Map, Value};

/// The `p` quantile (0..=1) of an ascending slice (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50, p99 and max of a set of durations in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut ms: Vec<f64>) -> Spread {
        ms.sort_by(f64::total_cmp);
        Spread {
            count: ms.len(),
            p50: percentile(&ms, 0.5),
            p99: percentile(&ms, 0.99),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }

    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": round(self.p50), "p99_ms": round(self.p99), "max_ms": round(self.max)})
    }

    pub fn show(&self) -> String {
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
            self.p50, self.p99, self.max, self.count
        )
    }
}

/// Rounds to 0.1 for the JSON line.
pub fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// One scenario's results.
pub struct Report {
    scenario: String,
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        let mut json = Map::new();
        json.insert("scenario".into(), scenario.into());
        Report {
            scenario: scenario.to_string(),
            rows: Vec::new(),
            json,
        }
    }

    /// A row of the table and a field of the JSON line.
    pub fn add(&mut self, key: &str, shown: impl Into<String>, value: Value) {
        self.rows.push((key.to_string(), shown.into()));
        self.json.insert(key.to_string(), value);
    }

    /// The `load` row: the 1-minute load average when the run started, and the CPUs it shared.
    pub fn add_load(&mut self, load_at_start: f64) {
        self.add(
            "load",
            format!(
                "1-minute load average {load_at_start:.1} at the start, on {} CPUs",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            json!(round(load_at_start)),
        );
    }

    /// Marks the report with the transport it ran over (`tls` or `plaintext`).
    pub fn tagged(mut self, tls: bool) -> Report {
        let t = if tls { "tls" } else { "plaintext" };
        self.scenario = format!("{} ({t})", self.scenario);
        self.json.insert("transport".into(), t.into());
        self
    }

    /// A JSON field only.
    pub fn field(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_string(), value);
    }

    /// The JSON line's value.
    pub fn json(&self) -> Value {
        Value::Object(self.json.clone())
    }

    /// The table, then the JSON line.
    pub fn print(&self) {
        println!("== rift bench {} ==", self.scenario);
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.rows {
            println!("{k:<width$}  {v}");
        }
        println!("{}", Value::Object(self.json.clone()));
    }
}

/// Every number in `value`, by dotted path (`leader.cpu_percent`).
fn numbers(prefix: &str, value: &Value, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.push((prefix.to_string(), v));
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numbers(&path, v, out);
            }
        }
        _ => {}
    }
}

/// Median and min–max, over several runs, of every number the reports of one scenario carry
/// (`rift bench --repeat N`). Numbers missing from some runs are summarized over the runs that
/// have them (`n` says how many).
pub fn summary(reports: &[Report]) -> Report {
    let mut by_path: Vec<(String, Vec<f64>)> = Vec::new();
    for r in reports {
        let mut found = Vec::new();
        numbers("", &Value::Object(r.json.clone()), &mut found);
        for (path, v) in found {
            match by_path.iter_mut().find(|(p, _)| *p == path) {
                Some((_, vs)) => vs.push(v),
                None => by_path.push((path, vec![v])),
            }
        }
    }
    let scenario = reports
        .first()
        .map_or_else(String::new, |r| r.scenario.clone());
    let mut out = Report::new(&format!(
        "{scenario}: median (min-max) of {} runs",
        reports.len()
    ));
    out.json.insert("runs".into(), json!(reports.len()));
    for (path, mut vs) in by_path {
        vs.sort_by(f64::total_cmp);
        let median = if vs.len() % 2 == 1 {
            vs[vs.len() / 2]
        } else {
            (vs[vs.len() / 2 - 1] + vs[vs.len() / 2]) / 2.0
        };
        let (min, max) = (vs[0], vs[vs.len() - 1]);
        out.add(
            &path,
            format!("{median:.1} ({min:.1}-{max:.1}), n={}", vs.len()),
            json!({"median": round(median), "min": round(min), "max": round(max), "n": vs.len()}),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_nearest_rank_quantiles() {
        let s = Spread::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 51.0, 99.0, 100.0));
        assert_eq!(Spread::of(vec![]).p99, 0.0);
    }

    #[test]
    fn a_summary_gives_median_and_spread_of_every_number() {
        let runs: Vec<Report> = [3.0, 1.0, 2.0, 10.0, 4.0]
            .iter()
            .map(|v| {
                let mut r = Report::new("x");
                r.field("rate", json!(v));
                r.field("leader", json!({"cpu_percent": v * 2.0, "name": "l"}));
                r
            })
            .collect();
        let s = summary(&runs);
        assert_eq!(
            s.json["rate"],
            json!({"median": 3.0, "min": 1.0, "max": 10.0, "n": 5})
        );
        assert_eq!(s.json["leader.cpu_percent"]["median"], json!(6.0));
        assert_eq!(s.json["runs"], json!(5));
        assert!(s.json.get("leader.name").is_none(), "only numbers");
    }
}
