//! `rift explain KIND[.FIELD...]`: what a kind or one of its fields is, from the same JSON
//! Schemas `rift crds` prints (generated from the Rust types), like `kubectl explain`.

use serde_json::Value;

use crate::api::kinds::KindInfo;
use crate::api::API_VERSION;

use super::error::resolve_kind;
use super::CliError;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A kind, or a field path below it: `job`, `job.spec`, `pool.spec.template.spec.resources`.
    #[arg(value_name = "KIND[.FIELD...]")]
    pub path: String,
    /// Also list the fields of the fields, all the way down.
    #[arg(long)]
    pub recursive: bool,
}

pub fn run(args: ExplainArgs) -> Result<(), CliError> {
    let mut parts = args.path.split('.');
    let kind = resolve_kind(parts.next().unwrap_or_default())?;
    let fields: Vec<&str> = parts.collect();
    print!("{}", explain(kind, &fields, args.recursive)?);
    Ok(())
}

/// The schema a `$ref` (or an `Option`'s `anyOf [X, null]`) stands for, resolved in `root`.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            match r
                .strip_prefix("#/$defs/")
                .and_then(|d| root["$defs"].get(d))
            {
                Some(def) => schema = def,
                None => return schema,
            }
        } else if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            // `Option<T>` is `anyOf [T, null]`: follow T; a real choice stays as it is.
            let mut real = any
                .iter()
                .filter(|s| s.get("type") != Some(&Value::from("null")));
            match (real.next(), real.next()) {
                (Some(s), None) => schema = s,
                _ => return schema,
            }
        } else {
            return schema;
        }
    }
    schema
}

/// `<string>`, `<[]Gpu>`, `<map[string]string>`, `<Resources>`, as kubectl writes types.
fn type_name(root: &Value, schema: &Value) -> String {
    let named = |s: &Value| -> Option<String> {
        let r = s.get("$ref").and_then(Value::as_str).or_else(|| {
            s.get("anyOf")?
                .as_array()?
                .iter()
                .find_map(|x| x.get("$ref").and_then(Value::as_str))
        })?;
        Some(r.rsplit('/').next().unwrap_or(r).to_string())
    };
    if let Some(n) = named(schema) {
        let target = resolve(root, schema);
        if target.get("properties").is_some() || target.get("anyOf").is_some() {
            return n;
        }
        return scalar(target).unwrap_or(n);
    }
    let s = resolve(root, schema);
    match scalar_type(s).as_deref() {
        Some("array") => format!(
            "[]{}",
            type_name(root, s.get("items").unwrap_or(&Value::Null))
        ),
        Some("object") => match s.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map[string]{}", type_name(root, v)),
            _ => "Object".into(),
        },
        Some(t) => t.to_string(),
        None => "Object".into(),
    }
}

fn scalar(s: &Value) -> Option<String> {
    match scalar_type(s).as_deref() {
        Some("object") | Some("array") | None => None,
        Some(t) => Some(t.to_string()),
    }
}

/// The schema's type, leaving out `null` (optional fields).
fn scalar_type(s: &Value) -> Option<String> {
    match s.get("type")? {
        Value::String(t) => Some(t.clone()),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .map(str::to_string),
        _ => None,
    }
}

fn description(schema: &Value, resolved: &Value) -> String {
    schema
        .get("description")
        .or_else(|| resolved.get("description"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The explanation of `kind` and the field `path` below it. Pure, for tests.
pub fn explain(kind: &KindInfo, path: &[&str], recursive: bool) -> Result<String, CliError> {
    let root = (kind.schema)();
    let mut schema = &root;
    let mut walked = vec![kind.kind.to_string()];
    for field in path {
        let here = resolve(&root, schema);
        let here = match scalar_type(here).as_deref() {
            Some("array") => resolve(&root, here.get("items").unwrap_or(&Value::Null)),
            _ => here,
        };
        let props = here.get("properties").and_then(Value::as_object);
        match props.and_then(|p| p.get(*field)) {
            Some(next) => schema = next,
            None => {
                let known: Vec<&str> = props
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return Err(CliError::Usage(format!(
                    "field `{field}` does not exist in {}{}",
                    walked.join("."),
                    if known.is_empty() {
                        " (it has no fields)".to_string()
                    } else {
                        format!("; its fields: {}", known.join(", "))
                    }
                )));
            }
        }
        walked.push(field.to_string());
    }
    let resolved = resolve(&root, schema);
    let mut out = format!("KIND:     {}\nVERSION:  {API_VERSION}\n", kind.kind);
    if !path.is_empty() {
        out += &format!(
            "\nFIELD:    {} <{}>\n",
            path.join("."),
            type_name(&root, schema)
        );
    }
    let text = description(schema, resolved);
    out += "\nDESCRIPTION:\n";
    out += &indent(if text.is_empty() { "<empty>" } else { &text }, 4);
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        let v: Vec<String> = values
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect();
        out += &format!("\nVALUES:   {}\n", v.join(", "));
    }
    let fields = fields_of(&root, resolved);
    if !fields.is_empty() {
        out += "\nFIELDS:\n";
        list_fields(&root, resolved, recursive, 1, &mut out);
    }
    Ok(out)
}

/// The schema whose fields a value of `schema` has (an array's items).
fn fields_of<'a>(root: &'a Value, schema: &'a Value) -> Vec<(&'a String, &'a Value)> {
    let s = match scalar_type(schema).as_deref() {
        Some("array") => resolve(root, schema.get("items").unwrap_or(&Value::Null)),
        _ => schema,
    };
    let mut f: Vec<(&String, &Value)> = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    f.sort_by_key(|(k, _)| k.as_str());
    f
}

fn list_fields(root: &Value, schema: &Value, recursive: bool, depth: usize, out: &mut String) {
    let s = match scalar_type(schema).as_deref() {
        Some("array") => resolve(root, schema.get("items").unwrap_or(&Value::Null)),
        _ => schema,
    };
    let required: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in fields_of(root, s) {
        let resolved = resolve(root, field);
        let pad = "  ".repeat(depth);
        let req = if required.contains(&name.as_str()) {
            " -required-"
        } else {
            ""
        };
        out.push_str(&format!("{pad}{name}\t<{}>{req}\n", type_name(root, field)));
        if recursive {
            if depth < 12 {
                list_fields(root, resolved, true, depth + 1, out);
            }
        } else {
            let first = description(field, resolved)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            if !first.is_empty() {
                out.push_str(&format!("{pad}  {first}\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::lookup;

    #[test]
    fn a_kind_lists_its_top_fields_and_a_path_explains_one_field() {
        let job = lookup("job").unwrap();
        let top = explain(job, &[], false).unwrap();
        assert!(top.contains("KIND:     Job\nVERSION:  rift/v1"), "{top}");
        assert!(top.contains("spec\t<JobSpec>"), "{top}");
        let lost = explain(job, &["spec", "lostAfter"], false).unwrap();
        assert!(
            lost.contains("FIELD:    spec.lostAfter <Duration>"),
            "{lost}"
        );
        assert!(lost.contains("unreachable"), "{lost}");
        let env = explain(job, &["spec", "env"], false).unwrap();
        assert!(env.contains("<map[string]string>"), "{env}");
        let pool = lookup("pool").unwrap();
        let deep = explain(pool, &["spec", "template", "spec", "resources"], false).unwrap();
        assert!(deep.contains("gpus\t<integer>"), "{deep}");
        let node = lookup("node").unwrap();
        let gpus = explain(node, &["spec", "gpus"], false).unwrap();
        assert!(
            gpus.contains("<[]GpuDeclaration>") && gpus.contains("model\t<string> -required-"),
            "{gpus}"
        );
    }

    #[test]
    fn an_unknown_field_names_the_fields_there_are() {
        let e = explain(lookup("job").unwrap(), &["spec", "replicas"], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `replicas` does not exist in Job.spec; its fields: "),
            "{e}"
        );
        assert!(e.contains("command"), "{e}");
    }
}
