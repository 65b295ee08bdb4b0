//! The old orchestrator's free-text `gpu:` field (`8x RTX 4090`, `H100 PCIe`,
//! `M3 Max/Ultra (MPS)`, `none`) → a [`GpuDeclaration`].
//!
//! Guarantees: the result's model is non-empty and names a GPU family this module knows
//! (NVIDIA, AMD Instinct/Radeon, Apple M-series), the count is 1–64, and a size written in the
//! text (`A100 20GB`, `RTX 3090 (24GB)`) becomes `memoryGb`. Anything else — `banana`, `0x
//! H100` — is an error message meant to follow the field path.

use crate::api::node::GpuDeclaration;

/// The most GPUs one host line may declare.
pub const MAX_GPUS_PER_HOST: u32 = 64;

/// Words that on their own mark a GPU name.
const FAMILY_WORDS: &[&str] = &[
    "rtx", "gtx", "titan", "quadro", "tesla", "geforce", "radeon", "instinct", "mps", "gh200",
    "gb200",
];

/// Spellings of "no GPU" (compared lowercase, with `-`/`_` as spaces, parentheses removed).
const NO_GPU: &[&str] = &[
    "", "none", "no", "no gpu", "nogpu", "cpu", "cpu only", "cpuonly", "n/a", "na", "-", "false",
    "null", "0",
];

/// Parses a `gpu:` value. `Ok(None)` means the host has no GPU (`""`, `None`, `cpu only`, ...).
pub fn parse_gpu(text: &str) -> Result<Option<GpuDeclaration>, String> {
    let trimmed = text.trim();
    let (rest, groups) = strip_parentheses(trimmed);
    let spoken: String = rest
        .trim()
        .to_ascii_lowercase()
        .replace(['-', '_'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if NO_GPU.contains(&spoken.as_str()) {
        return Ok(None);
    }
    let mut memory_gb = None;
    let mut apple = false;
    for g in &groups {
        if let Some(gb) = size_in(g) {
            memory_gb = Some(gb);
        } else if g.eq_ignore_ascii_case("mps") {
            apple = true;
        }
    }
    let (model, count) = split_count(rest.trim())?;
    let model = model
        .trim()
        .trim_matches(|c: char| c == ',' || c == '-')
        .trim();
    if model.is_empty() {
        return Err(format!(
            "`{text}` names no GPU model (e.g. \"8x RTX 4090\")"
        ));
    }
    if count == 0 || count > MAX_GPUS_PER_HOST {
        return Err(format!(
            "`{text}`: the GPU count must be 1 to {MAX_GPUS_PER_HOST}"
        ));
    }
    if memory_gb.is_none() {
        memory_gb = size_in(model);
    }
    let words = words(model);
    if !apple && !words.iter().any(|w| is_family_word(w)) {
        return Err(format!(
            "`{text}` is not a GPU model rift knows; write e.g. \"8x RTX 4090\", \"H100 PCIe\", \
             \"A100 20GB\", \"M3 Max (MPS)\", or \"none\""
        ));
    }
    Ok(Some(GpuDeclaration {
        model: model.to_string(),
        count,
        memory_gb,
    }))
}

/// A label value for the GPU class: `H100 PCIe` → `h100-pcie`, `M3 Max/Ultra` → `m3-max-ultra`.
pub fn gpu_class(model: &str) -> String {
    let slug = words(model).join("-");
    let mut s: String = slug.chars().take(63).collect();
    while s.ends_with('-') {
        s.pop();
    }
    s
}

/// The text with every `( ... )` group removed, and the groups' contents.
fn strip_parentheses(text: &str) -> (String, Vec<String>) {
    let mut rest = String::new();
    let mut groups = Vec::new();
    let mut current: Option<String> = None;
    for c in text.chars() {
        match (c, current.as_mut()) {
            ('(', None) => current = Some(String::new()),
            (')', Some(g)) => {
                groups.push(g.trim().to_string());
                current = None;
            }
            (c, Some(g)) => g.push(c),
            (c, None) => rest.push(c),
        }
    }
    if let Some(g) = current {
        // An unclosed `(`: keep the text as written.
        rest.push('(');
        rest.push_str(&g);
    }
    (rest, groups)
}

/// `8x RTX 4090`, `8 x RTX 4090`, `RTX 4090 x8`, `RTX 4090 ×2` → (model, count); else count 1.
fn split_count(text: &str) -> Result<(&str, u32), String> {
    let is_x = |c: char| matches!(c, 'x' | 'X' | '×' | '*');
    // Leading count: digits, optional spaces, an `x`, then the model.
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 {
        let after = text[digits..].trim_start();
        if let Some(c) = after.chars().next().filter(|c| is_x(*c)) {
            let model = &after[c.len_utf8()..];
            if !model.trim().is_empty() {
                return Ok((model, parse_count(&text[..digits])?));
            }
        }
    }
    // Trailing count: the last word is `x8` or `×8`, or the last two are `x 8`.
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if let Some(last) = words.last() {
        let mut chars = last.chars();
        if chars.next().is_some_and(is_x) {
            let n = chars.as_str();
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && words.len() > 1 {
                let count = parse_count(n)?;
                let cut = text.rfind(last).unwrap_or(text.len());
                return Ok((&text[..cut], count));
            }
        }
        if words.len() > 2 && last.bytes().all(|b| b.is_ascii_digit()) {
            let n = words.pop().unwrap_or_default();
            if words
                .last()
                .is_some_and(|w| w.chars().count() == 1 && w.chars().all(is_x))
            {
                let x = words.pop().unwrap_or_default();
                let cut = text[..text.rfind(n).unwrap_or(0)]
                    .rfind(x)
                    .unwrap_or(text.len());
                return Ok((&text[..cut], parse_count(n)?));
            }
        }
    }
    Ok((text, 1))
}

fn parse_count(digits: &str) -> Result<u32, String> {
    digits
        .parse()
        .map_err(|_| format!("`{digits}` is not a GPU count"))
}

/// The first size in `text`: `24GB`, `96 GB`, `80gb HBM3`, `24GB each` → the number.
fn size_in(text: &str) -> Option<f64> {
    let lower = text.to_ascii_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '/' | '-' | '_'))
        .filter(|t| !t.is_empty())
        .collect();
    let number = |t: &str| {
        t.parse::<f64>()
            .ok()
            .filter(|gb| *gb > 0.0 && gb.is_finite())
    };
    tokens
        .iter()
        .enumerate()
        .find_map(|(i, t)| match t.strip_suffix("gb") {
            Some(n) if !n.is_empty() => number(n),
            Some(_) => None,
            None if tokens.get(i + 1) == Some(&"gb") => number(t),
            None => None,
        })
}

/// The lowercase alphanumeric words of a name.
fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// `h100`, `a6000`, `l40s`, `mi300x`, `m3`, `4090`, `rtx`, ... : words that name a GPU family.
fn is_family_word(w: &str) -> bool {
    if FAMILY_WORDS.contains(&w) {
        return true;
    }
    if w.len() == 4 && w.bytes().all(|b| b.is_ascii_digit()) {
        return true; // 3090, 4090, 5090, 6000
    }
    let head = if w.starts_with("mi") || w.starts_with("gh") || w.starts_with("gb") {
        2
    } else if w.starts_with(['a', 'b', 'h', 'l', 'v', 't', 'p', 'k', 'm']) {
        1
    } else {
        return false;
    };
    let tail = &w[head..];
    let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
    (1..=4).contains(&digits)
        && tail[digits..].len() <= 2
        && tail[digits..].bytes().all(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(text: &str) -> GpuDeclaration {
        parse_gpu(text).unwrap().unwrap()
    }

    #[test]
    fn counts_are_read_before_or_after_the_model() {
        for (text, model, count) in [
            ("8x RTX 4090", "RTX 4090", 8),
            ("8 x RTX 4090", "RTX 4090", 8),
            ("2× H100", "H100", 2),
            ("RTX 4090 x2", "RTX 4090", 2),
            ("RTX 4090 x 4", "RTX 4090", 4),
            ("H100 PCIe", "H100 PCIe", 1),
            ("GH200", "GH200", 1),
            ("RTX 3060 Ti", "RTX 3060 Ti", 1),
        ] {
            let g = gpu(text);
            assert_eq!((g.model.as_str(), g.count), (model, count), "{text}");
        }
    }

    #[test]
    fn apple_and_sizes_are_understood() {
        let m = gpu("M3 Max/Ultra (MPS)");
        assert_eq!(
            (m.model.as_str(), m.count, m.memory_gb),
            ("M3 Max/Ultra", 1, None)
        );
        assert_eq!(gpu("Apple M2 (MPS)").model, "Apple M2");
        assert_eq!(gpu("A100 20GB").memory_gb, Some(20.0));
        let r = gpu("2x RTX 3090 (24GB)");
        assert_eq!(
            (r.model.as_str(), r.count, r.memory_gb),
            ("RTX 3090", 2, Some(24.0))
        );
    }

    /// The spellings found in real versions of the old hosts file.
    #[test]
    fn every_spelling_in_real_hosts_files_is_read() {
        for (text, model, count, memory) in [
            ("GH200 (96 GB)", "GH200", 1, Some(96.0)),
            ("H100 SXM5 (80 GB)", "H100 SXM5", 1, Some(80.0)),
            ("A100 SXM 80GB", "A100 SXM 80GB", 1, Some(80.0)),
            ("H100 PCIe", "H100 PCIe", 1, None),
            ("8x H100 80GB HBM3", "H100 80GB HBM3", 8, Some(80.0)),
            ("A100-SXM4-80GB", "A100-SXM4-80GB", 1, Some(80.0)),
            ("NVIDIA GH200 480GB", "NVIDIA GH200 480GB", 1, Some(480.0)),
            ("RTX 4090 (24 GB)", "RTX 4090", 1, Some(24.0)),
            ("8x RTX 4090 (24GB each)", "RTX 4090", 8, Some(24.0)),
            ("2x RTX 5090 (32GB)", "RTX 5090", 2, Some(32.0)),
            ("RTX A6000", "RTX A6000", 1, None),
            ("RTX 6000 Ada", "RTX 6000 Ada", 1, None),
            ("L40S", "L40S", 1, None),
            ("4x A40", "A40", 4, None),
            ("A10", "A10", 1, None),
            ("Tesla T4", "Tesla T4", 1, None),
            ("V100 (16 GB)", "V100", 1, Some(16.0)),
            ("RTX 3060 Ti", "RTX 3060 Ti", 1, None),
            ("GTX 1080 Ti", "GTX 1080 Ti", 1, None),
            ("MI300X", "MI300X", 1, None),
            ("H200", "H200", 1, None),
            ("B200 x8", "B200", 8, None),
            ("Apple M2 Ultra (MPS)", "Apple M2 Ultra", 1, None),
            ("M1 Pro (MPS)", "M1 Pro", 1, None),
        ] {
            let g = gpu(text);
            assert_eq!(
                (g.model.as_str(), g.count, g.memory_gb),
                (model, count, memory),
                "{text}"
            );
        }
    }

    #[test]
    fn no_gpu_spellings_mean_none() {
        for text in [
            "",
            "none",
            "None",
            " cpu ",
            "n/a",
            "CPU only",
            "cpu-only",
            "No GPU",
            "null",
            "0",
            "None (CPU)",
        ] {
            assert_eq!(parse_gpu(text), Ok(None), "{text}");
        }
    }

    #[test]
    fn words_that_are_not_gpus_are_refused_with_examples() {
        for bad in ["banana", "fast", "2x potato", "x8"] {
            let e = parse_gpu(bad).unwrap_err();
            assert!(
                e.contains("8x RTX 4090") || e.contains("names no GPU"),
                "{bad}: {e}"
            );
        }
        assert!(parse_gpu("0x H100").unwrap_err().contains("1 to 64"));
        assert!(parse_gpu("65x H100").unwrap_err().contains("1 to 64"));
    }

    #[test]
    fn gpu_classes_are_label_values() {
        assert_eq!(gpu_class("H100 PCIe"), "h100-pcie");
        assert_eq!(gpu_class("M3 Max/Ultra"), "m3-max-ultra");
        assert_eq!(gpu_class("RTX 4090"), "rtx-4090");
    }
}
