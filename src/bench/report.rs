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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_nearest_rank_quantiles() {
        let s = Spread::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((s.count, s.p50, s.p99, s.max), (100, 51.0, 99.0, 100.0));
        assert_eq!(Spread::of(vec![]).p99, 0.0);
    }
}
