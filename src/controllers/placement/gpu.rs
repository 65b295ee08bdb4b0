//! GPU model names: NVML says `NVIDIA H100 80GB HBM3`, manifests say `H100`.

/// The lowercase alphanumeric words of a name: `NVIDIA GeForce RTX-4090` → `nvidia geforce rtx
/// 4090`.
pub(super) fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `needle`'s words occur in `hay`, consecutively and whole.
pub(super) fn contains_words(hay: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a GPU named `gpu_name` (as NVML or a declaration names it) is a `model`: its words
/// contain the model's words, consecutively and whole, ignoring case and punctuation. `H100`
/// matches `NVIDIA H100 80GB HBM3` and `H100-SXM`, never `GH100` or `H1000`; `RTX 4090` matches
/// `NVIDIA GeForce RTX 4090`.
pub fn gpu_model_matches(model: &str, gpu_name: &str) -> bool {
    contains_words(&words(gpu_name), &words(model))
}
