//! Finding the line of a key in block-style YAML text, for messages about values that parsed
//! but mean something wrong (`gpu: banana`, a voter that is not a host).
//!
//! Caveat: a heuristic over indentation, not a YAML parser. It finds keys written in block
//! style (`key:` on its own line, optionally quoted) and list items written as `- value`; in
//! flow style (`{a: 1}`, `[a, b]`) it answers with the line of the enclosing key. `None` when
//! it cannot tell; messages then carry the field path alone.

/// The 1-based line of `path` (`["hosts", "gpu-box", "gpu"]`).
pub fn key_line(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut parent: Option<usize> = None;
    let mut found = None;
    for seg in path {
        let (i, indent) = find_key(&lines, start, parent, seg)?;
        start = i + 1;
        parent = Some(indent);
        found = Some(i + 1);
    }
    found
}

/// The 1-based line of the list item `value` under the key `path`, or of the key itself when
/// the list is written inline.
pub fn item_line(text: &str, path: &[&str], value: &str) -> Option<usize> {
    let key = key_line(text, path)?;
    let lines: Vec<&str> = text.lines().collect();
    let key_indent = indent_of(lines[key - 1]);
    for (i, line) in lines.iter().enumerate().skip(key) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent_of(line) < key_indent || (indent_of(line) == key_indent && !t.starts_with('-')) {
            break;
        }
        if let Some(item) = t.strip_prefix('-') {
            if unquote(strip_comment(item)) == value {
                return Some(i + 1);
            }
        }
    }
    Some(key)
}

fn find_key(
    lines: &[&str],
    start: usize,
    parent: Option<usize>,
    key: &str,
) -> Option<(usize, usize)> {
    for (i, line) in lines.iter().enumerate().skip(start) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = indent_of(line);
        if parent.is_some_and(|p| indent <= p) {
            return None; // left the parent's block
        }
        if let Some((k, _)) = t.split_once(':') {
            if unquote(k) == key {
                return Some((i, indent));
            }
        }
    }
    None
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn strip_comment(s: &str) -> &str {
    s.split(" #").next().unwrap_or(s)
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
p2p_voters:
  - a
  - 'b'   # the second
hosts:
  a:
    gpu: H100
  b:
    ssh_host: x
    gpu: banana
other: {gpu: 1}
";

    #[test]
    fn nested_keys_are_found_inside_their_parent_only() {
        assert_eq!(key_line(TEXT, &["hosts", "b", "gpu"]), Some(9));
        assert_eq!(key_line(TEXT, &["hosts", "a", "gpu"]), Some(6));
        assert_eq!(key_line(TEXT, &["hosts", "a", "ssh_host"]), None);
        assert_eq!(key_line(TEXT, &["hosts", "c"]), None);
    }

    #[test]
    fn list_items_are_found_quoted_or_not() {
        assert_eq!(item_line(TEXT, &["p2p_voters"], "b"), Some(3));
        assert_eq!(item_line(TEXT, &["p2p_voters"], "zz"), Some(1));
        assert_eq!(item_line("v: [a, b]\n", &["v"], "b"), Some(1));
    }
}
