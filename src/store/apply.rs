//! `rift apply`: many objects written in one etcd transaction, all or nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::client::{KeyValue, Store};
use super::error::{Result, StoreError};
use super::keys;
use super::objects::Precondition;
use super::txn::Op;
use crate::api::kinds::KindInfo;

/// One object to apply (already validated and normalized).
#[derive(Clone, Debug)]
pub struct ApplyItem {
    pub kind: &'static KindInfo,
    pub name: String,
    pub object: Value,
}

/// What applying one object did (or, in a dry run, would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// Gets in one read transaction: etcd's default `--max-txn-ops` (128).
const READ_GROUP: usize = 128;

/// How many times a whole apply is re-read and retried when another writer got in between.
const MAX_ATTEMPTS: usize = 5;

/// The object to store when `desired` is applied over `existing` (its stored form), and what
/// that amounts to. Pure: the decision rules of apply, without I/O.
///
/// - new objects get a fresh uid, generation 1 and a creation time;
/// - existing objects keep uid and creation time; generation bumps only when `spec` changes;
/// - ownerReferences and finalizers set by controllers survive a manifest that omits them;
/// - an object identical to what is stored is `Unchanged` and is not written.
pub fn merge_for_apply(
    existing: Option<&Value>,
    desired: &Value,
    now: DateTime<Utc>,
) -> (Value, ApplyOutcome) {
    let mut merged = desired.clone();
    let Some(existing) = existing else {
        let meta = &mut merged["metadata"];
        meta["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
        meta["generation"] = Value::from(1);
        meta["creationTimestamp"] = serde_json::json!(now);
        return (merged, ApplyOutcome::Created);
    };
    let old_meta = &existing["metadata"];
    let generation = old_meta["generation"].as_i64().unwrap_or(1);
    let spec_changed = existing.get("spec") != desired.get("spec");
    {
        let meta = merged["metadata"]
            .as_object_mut()
            .expect("validated objects have metadata");
        for k in ["uid", "creationTimestamp", "deletionTimestamp"] {
            if let Some(v) = old_meta.get(k) {
                meta.insert(k.into(), v.clone());
            }
        }
        for k in ["ownerReferences", "finalizers"] {
            if !meta.contains_key(k) {
                if let Some(v) = old_meta.get(k) {
                    meta.insert(k.into(), v.clone());
                }
            }
        }
        meta.insert(
            "generation".into(),
            Value::from(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
    }
    if &merged == existing {
        (merged, ApplyOutcome::Unchanged)
    } else {
        (merged, ApplyOutcome::Configured)
    }
}

impl Store {
    /// Applies every item in one transaction: either all writes land or none does. Each write
    /// is conditioned on the object being as it was read, so a concurrent writer makes the
    /// whole apply re-read and decide again. With `dry_run`, decides and writes nothing.
    ///
    /// An apply larger than etcd takes in one request is refused whole
    /// ([`StoreError::TooLarge`], with its size), never split: split transactions could leave
    /// half of it written when a later one fails, or let another writer in between.
    pub async fn apply(&self, items: &[ApplyItem], dry_run: bool) -> Result<Vec<ApplyOutcome>> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.read_all(items).await?;
            let now = Utc::now();
            let mut outcomes = Vec::with_capacity(items.len());
            let mut compares = Vec::new();
            let mut puts = Vec::new();
            let mut bytes = 0;
            for (item, kv) in items.iter().zip(&current) {
                let existing = match kv {
                    Some(kv) => Some(serde_json::from_slice::<Value>(&kv.value).map_err(|e| {
                        StoreError::Decode {
                            key: kv.key.clone(),
                            reason: e.to_string(),
                        }
                    })?),
                    None => None,
                };
                let (merged, outcome) = merge_for_apply(existing.as_ref(), &item.object, now);
                outcomes.push(outcome);
                if outcome == ApplyOutcome::Unchanged {
                    continue;
                }
                let key = keys::object(item.kind.plural, &item.name);
                let pre = kv.as_ref().map_or(Precondition::Absent, |kv| {
                    Precondition::Revision(kv.mod_revision)
                });
                compares.extend(pre.compare(&key));
                let body = serde_json::to_vec(&merged).expect("JSON values serialize");
                // The key twice (compare and put), the value, and a little framing.
                bytes += 2 * key.len() + body.len() + 16;
                puts.push(Op::put(key, body));
            }
            if dry_run || puts.is_empty() {
                return Ok(outcomes);
            }
            let outcome = self
                .txn(compares, puts, vec![])
                .await
                .map_err(|e| match e {
                    StoreError::TooLarge { .. } => StoreError::TooLarge { bytes },
                    other => other,
                })?;
            if outcome.succeeded {
                return Ok(outcomes);
            }
            tracing::debug!("apply raced with another writer; reading again");
        }
        Err(StoreError::Conflict {
            key: "(several objects)".into(),
        })
    }

    /// The stored form of every item, read in transactions of up to [`READ_GROUP`] gets (one
    /// request per group instead of one per object).
    async fn read_all(&self, items: &[ApplyItem]) -> Result<Vec<Option<KeyValue>>> {
        let keys: Vec<String> = items
            .iter()
            .map(|i| keys::object(i.kind.plural, &i.name))
            .collect();
        let mut values = Vec::with_capacity(keys.len());
        for group in keys.chunks(READ_GROUP) {
            values.extend(self.get_many(group).await?.0);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-11-22T00:00:00Z".parse().unwrap()
    }

    fn pool(replicas: u32) -> Value {
        json!({"apiVersion": "rift/v1", "kind": "Pool", "metadata": {"name": "p"},
               "spec": {"replicas": replicas}})
    }

    #[test]
    fn new_object_gets_identity_and_generation_one() {
        let (v, o) = merge_for_apply(None, &pool(1), now());
        assert_eq!(o, ApplyOutcome::Created);
        assert_eq!(v["metadata"]["generation"], 1);
        assert!(v["metadata"]["uid"].is_string());
        assert_eq!(v["metadata"]["creationTimestamp"], json!(now()));
    }

    #[test]
    fn same_object_again_is_unchanged() {
        let (stored, _) = merge_for_apply(None, &pool(1), now());
        let (v, o) = merge_for_apply(Some(&stored), &pool(1), now());
        assert_eq!(o, ApplyOutcome::Unchanged);
        assert_eq!(v, stored);
    }

    #[test]
    fn spec_change_bumps_generation_and_keeps_identity() {
        let (stored, _) = merge_for_apply(None, &pool(1), now());
        let (v, o) = merge_for_apply(Some(&stored), &pool(2), now());
        assert_eq!(o, ApplyOutcome::Configured);
        assert_eq!(v["metadata"]["generation"], 2);
        assert_eq!(v["metadata"]["uid"], stored["metadata"]["uid"]);
    }

    #[test]
    fn label_change_configures_without_bumping_generation() {
        let (stored, _) = merge_for_apply(None, &pool(1), now());
        let mut labelled = pool(1);
        labelled["metadata"]["labels"] = json!({"tier": "a"});
        let (v, o) = merge_for_apply(Some(&stored), &labelled, now());
        assert_eq!(o, ApplyOutcome::Configured);
        assert_eq!(v["metadata"]["generation"], 1);
    }

    #[test]
    fn controller_owned_metadata_survives_reapply() {
        let (mut stored, _) = merge_for_apply(None, &pool(1), now());
        stored["metadata"]["ownerReferences"] =
            json!([{"kind": "Pool", "name": "x", "uid": "u", "controller": true}]);
        let (v, o) = merge_for_apply(Some(&stored), &pool(1), now());
        assert_eq!(o, ApplyOutcome::Unchanged);
        assert_eq!(v["metadata"]["ownerReferences"][0]["name"], "x");
    }
}
