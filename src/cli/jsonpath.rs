//! kubectl's JSONPath templates for `-o jsonpath=...` and `--sort-by`: text with `{PATH}`
//! expressions, `{range PATH}...{end}` loops and `{"literal"}` strings, e.g.
//! `{range .items[*]}{.metadata.name}{"\t"}{.status.phase}{"\n"}{end}`.
//!
//! Paths are RFC 9535 JSONPath (through `serde_json_path`) written kubectl's way: a leading `.`
//! or `[` means "from the current value" (`$`), so `.status.conditions[?(@.type=="Ready")]
//! .status` works as in kubectl. Guarantees: a template is parsed once, up front, and a bad
//! one is an error naming what is wrong and where; evaluation never fails (a path that matches
//! nothing prints nothing, as kubectl does by default).

use serde_json::Value;
use serde_json_path::JsonPath;

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jsonpath `{template}`: {message}")]
pub struct TemplateError {
    template: String,
    message: String,
}

/// One piece of a template.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Path(JsonPath),
    Range(JsonPath, Vec<Piece>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl std::str::FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl Template {
    /// Parses a template. A template without any `{` is taken as one path (`.metadata.name`),
    /// as `--sort-by` is usually written.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let err = |message: String| TemplateError {
            template: source.to_string(),
            message,
        };
        let text = if source.contains('{') {
            source.to_string()
        } else {
            format!("{{{source}}}")
        };
        let mut stack: Vec<(Option<JsonPath>, Vec<Piece>)> = vec![(None, Vec::new())];
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                push(&mut stack, Piece::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                push(&mut stack, Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = closing_brace(after)
                .ok_or_else(|| err(format!("`{{` at byte {open} is never closed")))?;
            let action = after[..close].trim();
            rest = &after[close + 1..];
            if let Some(path) = action.strip_prefix("range ") {
                stack.push((Some(path_of(path.trim()).map_err(err)?), Vec::new()));
            } else if action == "end" {
                if stack.len() < 2 {
                    return Err(err("`{end}` without a `{range ...}`".into()));
                }
                let (path, body) = stack.pop().expect("checked above");
                push(
                    &mut stack,
                    Piece::Range(path.expect("only ranges are pushed"), body),
                );
            } else if let Some(literal) = string_literal(action) {
                push(&mut stack, Piece::Text(literal));
            } else if action.is_empty() {
                return Err(err("an empty `{}`".into()));
            } else {
                push(&mut stack, Piece::Path(path_of(action).map_err(err)?));
            }
        }
        if stack.len() > 1 {
            return Err(err("a `{range ...}` has no `{end}`".into()));
        }
        let (_, pieces) = stack.pop().expect("the root is always there");
        Ok(Template {
            source: source.to_string(),
            pieces,
        })
    }

    /// The template's output for `value`.
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        render(&self.pieces, value, &mut out);
        out
    }

    /// The first value the template's first path selects in `value` (for `--sort-by`).
    pub fn first(&self, value: &Value) -> Option<Value> {
        self.pieces.iter().find_map(|p| match p {
            Piece::Path(path) => path.query(value).first().cloned(),
            _ => None,
        })
    }
}

fn push(stack: &mut [(Option<JsonPath>, Vec<Piece>)], piece: Piece) {
    stack
        .last_mut()
        .expect("the root is always there")
        .1
        .push(piece);
}

/// The index of the `}` closing an action, skipping quoted strings.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
        escaped = false;
    }
    None
}

/// `"\t"` → a tab: a quoted literal with `\n`, `\t`, `\\`, `\"` escapes.
fn string_literal(action: &str) -> Option<String> {
    let quote = action.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = action.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Some(out)
}

/// A kubectl path (`.a.b`, `[0]`, `$.a`, `@.a`, `.`) as a JSONPath query.
fn path_of(action: &str) -> Result<JsonPath, String> {
    let query = match action {
        "." | "$" | "@" => "$".to_string(),
        a if a.starts_with('$') => a.to_string(),
        a if a.starts_with('@') => format!("${}", &a[1..]),
        a if a.starts_with('.') || a.starts_with('[') => format!("${a}"),
        a => {
            return Err(format!(
                "`{a}` is not a path; paths start with `.` (e.g. `{{.metadata.name}}`) and \
                 literals are quoted (e.g. `{{\"\\n\"}}`)"
            ))
        }
    };
    JsonPath::parse(&query).map_err(|e| format!("`{action}` is not a valid path: {e}"))
}

fn render(pieces: &[Piece], value: &Value, out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Path(path) => {
                let found: Vec<String> = path.query(value).all().into_iter().map(show).collect();
                out.push_str(&found.join(" "));
            }
            Piece::Range(path, body) => {
                for item in path.query(value).all() {
                    render(body, item, out);
                }
            }
        }
    }
}

/// A selected value as text: strings bare, anything else as compact JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"kind": "List", "items": [
            {"metadata": {"name": "a"}, "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}, {"type": "Degraded", "status": "False"}]}},
            {"metadata": {"name": "b"}, "status": {"phase": "Pending", "gpus": [0, 1]}}
        ]})
    }

    fn render_with(template: &str, v: &Value) -> String {
        Template::parse(template).unwrap().render(v)
    }

    #[test]
    fn kubectl_templates_render_as_kubectl_renders_them() {
        let l = list();
        assert_eq!(render_with("{.items[*].metadata.name}", &l), "a b");
        assert_eq!(
            render_with(
                "{range .items[*]}{.metadata.name}{\"\\t\"}{.status.phase}{\"\\n\"}{end}",
                &l
            ),
            "a\tRunning\nb\tPending\n"
        );
        assert_eq!(
            render_with(
                "{.items[0].status.conditions[?(@.type==\"Ready\")].status}",
                &l
            ),
            "True"
        );
        assert_eq!(render_with("{.items[1].status.gpus}", &l), "[0,1]");
        assert_eq!(
            render_with("name: {.items[-1].metadata.name}!", &l),
            "name: b!"
        );
        assert_eq!(
            render_with("{.items[5].nothing}", &l),
            "",
            "missing is empty"
        );
        assert_eq!(
            render_with(".kind", &l),
            "List",
            "a bare path, as --sort-by"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (bad, says) in [
            ("{.items[}", "is not a valid path"),
            ("{.metadata.name", "never closed"),
            ("{end}", "without a `{range"),
            ("{range .items[*]}{.x}", "has no `{end}`"),
            ("{metadata.name}", "paths start with `.`"),
            ("{}", "empty"),
        ] {
            let e = Template::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.starts_with(&format!("jsonpath `{bad}`")), "{e}");
        }
    }

    #[test]
    fn the_first_match_is_what_sorting_uses() {
        let t = Template::parse("{.status.phase}").unwrap();
        assert_eq!(t.first(&list()["items"][1]), Some(json!("Pending")));
        assert_eq!(t.first(&json!({})), None);
    }
}
