//! `-o FORMAT`: how objects are printed. `table` and `wide` for people (columns per kind, in
//! [`super::printer`]); `yaml`, `json`, `name` and `jsonpath=TEMPLATE` for programs.
//!
//! Numbers are tidied for every format ([`tidy_numbers`]): counters stored as floats print as
//! integers (`games: 240`, not `240.0`) and float noise is cut (`0.3793`, not
//! `0.3793000000000001`).

use serde_json::Value;

use super::jsonpath::Template;
use crate::api::kinds::KindInfo;
use crate::api::API_VERSION;

/// An output format.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
    /// `kind/name`, one per line.
    Name,
    /// A kubectl JSONPath template, applied to the object (one named object) or the `List`.
    JsonPath(Template),
}

/// The formats, for messages and help.
pub const FORMATS: &str = "table, wide, yaml, json, name, jsonpath=TEMPLATE";

impl Output {
    /// Parses `-o` (for clap): `table`, `wide`, `yaml`, `json`, `name`, `jsonpath=TEMPLATE`.
    pub fn parse(s: &str) -> Result<Output, String> {
        match s {
            "table" => Ok(Output::Table),
            "wide" => Ok(Output::Wide),
            "yaml" => Ok(Output::Yaml),
            "json" => Ok(Output::Json),
            "name" => Ok(Output::Name),
            _ => match s.strip_prefix("jsonpath=") {
                Some(t) => Template::parse(t)
                    .map(Output::JsonPath)
                    .map_err(|e| e.to_string()),
                None => Err(format!(
                    "unknown output format `{s}`; use one of: {FORMATS}"
                )),
            },
        }
    }

    /// True for `table` and `wide`.
    pub fn is_table(&self) -> bool {
        matches!(self, Output::Table | Output::Wide)
    }
}

/// `kind/name` of an object (`job/train`).
pub fn name_of(kind: &KindInfo, obj: &Value) -> String {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{}/{name}", kind.singular)
}

/// The `List` wrapper kubectl prints for several objects.
pub fn list_object(items: Vec<Value>) -> Value {
    serde_json::json!({ "apiVersion": API_VERSION, "kind": "List", "items": items })
}

pub fn to_yaml(v: &Value) -> String {
    let mut v = v.clone();
    tidy_numbers(&mut v);
    serde_norway::to_string(&v).expect("JSON values serialize as YAML")
}

/// Pretty JSON, as `get -o json` and `status -o json` print it.
pub fn to_json(v: &Value) -> String {
    let mut v = v.clone();
    tidy_numbers(&mut v);
    serde_json::to_string_pretty(&v).expect("JSON values serialize")
}

/// One line of JSON (watch streams).
pub fn to_json_line(v: &Value) -> String {
    let mut v = v.clone();
    tidy_numbers(&mut v);
    serde_json::to_string(&v).expect("JSON values serialize")
}

/// Floats that hold whole numbers become integers; other floats lose their noise (rounded to
/// nine decimals, which no counter or percentage rift stores needs more of).
pub fn tidy_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                *v = Value::from(f as i64);
            } else if f.is_finite() {
                let rounded: f64 = format!("{f:.9}").parse().unwrap_or(f);
                if let Some(n) = serde_json::Number::from_f64(rounded) {
                    *v = Value::Number(n);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_numbers),
        Value::Object(map) => map.values_mut().for_each(tidy_numbers),
        _ => {}
    }
}

/// A number for a table cell: whole numbers without `.0`, others with at most two decimals.
pub fn number_cell(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
        Some(f) => {
            let s = format!("{f:.2}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_parse_and_unknown_ones_list_the_known() {
        assert_eq!(Output::parse("wide"), Ok(Output::Wide));
        assert_eq!(Output::parse("name"), Ok(Output::Name));
        assert!(matches!(
            Output::parse("jsonpath={.metadata.name}"),
            Ok(Output::JsonPath(_))
        ));
        let e = Output::parse("xml").unwrap_err();
        assert!(
            e.contains("unknown output format `xml`") && e.contains("jsonpath="),
            "{e}"
        );
        let e = Output::parse("jsonpath={.a[").unwrap_err();
        assert!(e.contains("never closed"), "{e}");
    }

    #[test]
    fn float_noise_and_float_counters_are_tidied() {
        let mut v = json!({"load": 0.3793000000000001, "games": 240.0, "n": [1.5, 2.0], "s": "x"});
        tidy_numbers(&mut v);
        assert_eq!(
            v,
            json!({"load": 0.3793, "games": 240, "n": [1.5, 2], "s": "x"})
        );
        assert_eq!(to_yaml(&json!({"games": 240.0})), "games: 240\n");
        assert_eq!(number_cell(&json!(0.3793000000000001)), "0.38");
        assert_eq!(number_cell(&json!(2.0)), "2");
        assert_eq!(number_cell(&json!(1.5)), "1.5");
    }
}
