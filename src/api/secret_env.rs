//! Spotting secrets about to be stored in etcd: a Job's `env` (and every Job template's) is
//! readable by every node, so variables whose names look like secrets belong in `envFrom`
//! files on the nodes. Applying them is still allowed; `rift apply` warns.

use serde_json::Value;

/// Name parts that mark a secret (matched case-insensitively anywhere in the name).
pub const SECRET_WORDS: [&str; 4] = ["TOKEN", "KEY", "SECRET", "PASSWORD"];

/// The secret word in `name`, if it has one.
pub fn secret_word(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().copied().find(|w| upper.contains(w))
}

/// One env entry that looks like a secret: its field path (`spec.env.HF_TOKEN`,
/// `spec.template.spec.env.WANDB_API_KEY`) and the word that gave it away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretLikeEnv {
    pub path: String,
    pub word: &'static str,
}

/// Every `env` entry with a non-empty value and a secret-looking name in any Job spec inside
/// `object` (its own `spec`, or a template's `...spec`), in document order.
pub fn find(object: &Value) -> Vec<SecretLikeEnv> {
    let mut found = Vec::new();
    if let Some(spec) = object.get("spec") {
        walk(spec, "spec", &mut found);
    }
    found
}

fn walk(value: &Value, path: &str, found: &mut Vec<SecretLikeEnv>) {
    let Some(map) = value.as_object() else {
        return;
    };
    // A Job spec is `spec` itself or any `...spec` inside it (templates of Pools and
    // TrainingTargets: `spec.template.spec`, `spec.evaluation.template.spec`).
    if path == "spec" || path.ends_with(".spec") {
        if let Some(env) = map.get("env").and_then(Value::as_object) {
            for (name, value) in env {
                let set = value.as_str().is_some_and(|v| !v.is_empty());
                if let (true, Some(word)) = (set, secret_word(name)) {
                    found.push(SecretLikeEnv {
                        path: format!("{path}.env.{name}"),
                        word,
                    });
                }
            }
        }
    }
    for (key, child) in map {
        if key != "env" {
            walk(child, &format!("{path}.{key}"), found);
        }
    }
}

/// The warning for one entry of a document from `origin`.
pub fn warning(origin: &str, entry: &SecretLikeEnv) -> String {
    format!(
        "{origin}: {} looks like a secret (its name contains {}): every node can read Job specs \
         in etcd. Put it in a file in the nodes' secrets directory (/etc/rift/secrets) and use \
         `envFrom: [{{file: NAME.env}}]` instead; applying anyway",
        entry.path, entry.word
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_names_are_found_in_jobs_and_templates() {
        let job = json!({"spec": {"env": {"HF_TOKEN": "hf_x", "wandb_api_key": "k",
            "DB_PASSWORD": "p", "MY_SECRET": "s", "BOARD": "hex8", "EMPTY_TOKEN": ""}}});
        let paths: Vec<String> = find(&job).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "spec.env.DB_PASSWORD",
                "spec.env.HF_TOKEN",
                "spec.env.MY_SECRET",
                "spec.env.wandb_api_key"
            ]
        );
        let pool = json!({"spec": {"template": {"spec": {"env": {"HF_TOKEN": "x"}}}}});
        let found = find(&pool);
        assert_eq!(found[0].path, "spec.template.spec.env.HF_TOKEN");
        assert_eq!(found[0].word, "TOKEN");
        let tt = json!({"spec": {"training": {"spec": {"env": {"A_KEY": "1"}}},
            "evaluation": {"template": {"spec": {"env": {"B_TOKEN": "2"}}}}}});
        let paths: Vec<String> = find(&tt).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "spec.evaluation.template.spec.env.B_TOKEN",
                "spec.training.spec.env.A_KEY"
            ]
        );
        assert!(find(&json!({"spec": {"voters": ["a"]}})).is_empty());
    }

    #[test]
    fn the_warning_names_the_field_and_the_way_out() {
        let w = warning(
            "job.yaml: document 1 (Job/train)",
            &SecretLikeEnv {
                path: "spec.env.HF_TOKEN".into(),
                word: "TOKEN",
            },
        );
        assert!(
            w.contains("spec.env.HF_TOKEN") && w.contains("envFrom"),
            "{w}"
        );
    }
}
