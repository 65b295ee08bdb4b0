//! Reading and writing resource objects: spec under `/rift/v1/<plural>/<name>`, status under
//! `/rift/v1/status/<plural>/<name>`, both as JSON.
//!
//! Objects are handled as JSON values here so the CLI can work on any kind by name; typed
//! wrappers ([`Store::get`], [`Store::list`], ...) convert at the edge.

use chrono::Utc;
use etcd_client::{Compare, CompareOp, PutOptions, TxnOp};
use serde_json::Value;

use super::client::{KeyValue, Store};
use super::error::{Result, StoreError};
use super::keys;
use crate::api::kinds::KindInfo;
use crate::api::selector::LabelSelector;
use crate::api::{Object, Spec};

/// What must hold for a write to go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist (create).
    Absent,
    /// The key must still be at this mod revision (compare-and-swap).
    Revision(i64),
    /// Unconditional.
    None,
}

impl Precondition {
    pub(crate) fn compare(self, key: &str) -> Option<Compare> {
        match self {
            Precondition::Absent => Some(Compare::version(key, CompareOp::Equal, 0)),
            Precondition::Revision(r) => Some(Compare::mod_revision(key, CompareOp::Equal, r)),
            Precondition::None => None,
        }
    }
}

/// What `delete` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Finalizers remain: `deletionTimestamp` was set and their owners finish the job.
    Terminating,
    NotFound,
}

fn decode(kv: &KeyValue) -> Result<Value> {
    serde_json::from_slice(&kv.value).map_err(|e| StoreError::Decode {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

/// The stored form of an object with its `resourceVersion` and `status` filled in.
fn compose(kv: &KeyValue, status: Option<Value>) -> Result<Value> {
    let mut obj = decode(kv)?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(kv.mod_revision.to_string()),
        );
    }
    if let (Some(status), Some(map)) = (status, obj.as_object_mut()) {
        map.insert("status".into(), status);
    }
    Ok(obj)
}

/// The form written to etcd: no status, no resourceVersion.
pub(crate) fn stored_form(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
    }
    obj
}

fn labels_of(obj: &Value) -> std::collections::BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn to_typed<S: Spec>(key: &str, value: Value) -> Result<Object<S>> {
    serde_json::from_value(value).map_err(|e| StoreError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl Store {
    /// One object of `kind` with its status, or `None`.
    pub async fn get_object(&self, kind: &KindInfo, name: &str) -> Result<Option<Value>> {
        let Some(kv) = self.get_raw(&keys::object(kind.plural, name)).await? else {
            return Ok(None);
        };
        let status = match self.get_raw(&keys::status(kind.plural, name)).await? {
            Some(s) => Some(decode(&s)?),
            None => None,
        };
        compose(&kv, status).map(Some)
    }

    /// Every object of `kind` matching `selector`, with status, read at one revision; returns
    /// the objects in name order and that revision.
    pub async fn list_objects(
        &self,
        kind: &KindInfo,
        selector: &LabelSelector,
    ) -> Result<(Vec<Value>, i64)> {
        let (kvs, rev) = self
            .list_raw(&keys::objects_prefix(kind.plural), None)
            .await?;
        let (statuses, _) = self
            .list_raw(&keys::status_prefix(kind.plural), Some(rev))
            .await?;
        let mut status_by_name: std::collections::HashMap<&str, &KeyValue> = statuses
            .iter()
            .map(|kv| (keys::name_of(&kv.key), kv))
            .collect();
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let status = match status_by_name.remove(keys::name_of(&kv.key)) {
                Some(s) => Some(decode(s)?),
                None => None,
            };
            let obj = compose(kv, status)?;
            if selector.matches(&labels_of(&obj)) {
                out.push(obj);
            }
        }
        Ok((out, rev))
    }

    /// Writes the spec/metadata of an object under `precondition`; returns the new revision.
    /// Fails with [`StoreError::Conflict`] (or `AlreadyExists` for [`Precondition::Absent`]).
    pub async fn put_object(
        &self,
        kind: &KindInfo,
        obj: &Value,
        precondition: Precondition,
    ) -> Result<i64> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let key = keys::object(kind.plural, name);
        let body = serde_json::to_vec(&stored_form(obj)).expect("JSON values serialize");
        let outcome = self
            .txn(
                precondition.compare(&key).into_iter().collect(),
                vec![TxnOp::put(key.as_str(), body, None)],
                vec![],
            )
            .await?;
        if outcome.succeeded {
            Ok(outcome.revision)
        } else if precondition == Precondition::Absent {
            Err(StoreError::AlreadyExists {
                kind: kind.kind.into(),
                name: name.into(),
            })
        } else {
            Err(StoreError::Conflict { key })
        }
    }

    /// Writes the status of an object (the owning controller's key); unconditional, since one
    /// writer owns it. Leased when `lease` is given.
    pub async fn put_status_value(
        &self,
        kind: &KindInfo,
        name: &str,
        status: &Value,
        lease: Option<i64>,
    ) -> Result<i64> {
        let key = keys::status(kind.plural, name);
        let body = serde_json::to_vec(status).expect("JSON values serialize");
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let outcome = self
            .txn(vec![], vec![TxnOp::put(key.as_str(), body, opts)], vec![])
            .await?;
        Ok(outcome.revision)
    }

    /// Deletes an object and its status, or marks it terminating while finalizers remain.
    pub async fn delete_object(&self, kind: &KindInfo, name: &str) -> Result<DeleteOutcome> {
        let key = keys::object(kind.plural, name);
        for _ in 0..5 {
            let Some(kv) = self.get_raw(&key).await? else {
                return Ok(DeleteOutcome::NotFound);
            };
            let mut obj = decode(&kv)?;
            let has_finalizers = obj["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            let guard = vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision,
            )];
            let (ops, outcome) = if has_finalizers {
                if obj["metadata"].get("deletionTimestamp").is_some() {
                    return Ok(DeleteOutcome::Terminating);
                }
                obj["metadata"]["deletionTimestamp"] = serde_json::json!(Utc::now());
                let body = serde_json::to_vec(&obj).expect("JSON values serialize");
                (
                    vec![TxnOp::put(key.as_str(), body, None)],
                    DeleteOutcome::Terminating,
                )
            } else {
                (
                    vec![
                        TxnOp::delete(key.as_str(), None),
                        TxnOp::delete(keys::status(kind.plural, name), None),
                    ],
                    DeleteOutcome::Deleted,
                )
            };
            if self.txn(guard, ops, vec![]).await?.succeeded {
                return Ok(outcome);
            }
        }
        Err(StoreError::Conflict { key })
    }

    /// A typed object with its status.
    pub async fn get<S: Spec>(&self, name: &str) -> Result<Option<Object<S>>> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        match self.get_object(kind, name).await? {
            Some(v) => to_typed(&keys::object(S::PLURAL, name), v).map(Some),
            None => Ok(None),
        }
    }

    /// Typed objects matching `selector`, and the revision they were read at. Objects that no
    /// longer decode as this build's type are skipped with a warning.
    pub async fn list<S: Spec>(&self, selector: &LabelSelector) -> Result<(Vec<Object<S>>, i64)> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        let (values, rev) = self.list_objects(kind, selector).await?;
        let objs = values
            .into_iter()
            .filter_map(|v| {
                let name = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                to_typed(&keys::object(S::PLURAL, &name), v)
                    .inspect_err(|e| tracing::warn!(%e, "skipping undecodable object"))
                    .ok()
            })
            .collect();
        Ok((objs, rev))
    }

    /// Creates `obj` if no object of that name exists; fills uid, generation 1 and
    /// creationTimestamp. Returns the object as stored.
    pub async fn create<S: Spec>(&self, obj: &Object<S>) -> Result<Object<S>> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        let mut obj = obj.clone();
        obj.status = None;
        obj.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
        obj.metadata.generation = Some(1);
        obj.metadata.creation_timestamp = Some(Utc::now());
        let value = serde_json::to_value(&obj).expect("resource types serialize");
        let rev = self.put_object(kind, &value, Precondition::Absent).await?;
        obj.metadata.resource_version = Some(rev.to_string());
        Ok(obj)
    }

    /// Replaces `obj` if it is unchanged since it was read (its `resourceVersion`); bumps
    /// `generation` when `spec` changed. Fails with [`StoreError::Conflict`] otherwise.
    pub async fn update<S: Spec>(&self, obj: &Object<S>) -> Result<Object<S>> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        let key = keys::object(S::PLURAL, obj.name());
        let Some(rev) = obj.metadata.revision() else {
            return Err(StoreError::Conflict { key });
        };
        let current = self.get_raw(&key).await?.ok_or(StoreError::NotFound {
            kind: S::KIND.into(),
            name: obj.name().into(),
        })?;
        if current.mod_revision != rev {
            return Err(StoreError::Conflict { key });
        }
        let stored: Object<S> = to_typed(&key, decode(&current)?)?;
        let mut obj = obj.clone();
        obj.status = None;
        obj.metadata.uid = stored.metadata.uid.clone();
        obj.metadata.creation_timestamp = stored.metadata.creation_timestamp;
        let generation = stored.metadata.generation.unwrap_or(1);
        obj.metadata.generation = Some(if obj.spec != stored.spec {
            generation + 1
        } else {
            generation
        });
        let value = serde_json::to_value(&obj).expect("resource types serialize");
        let new_rev = self
            .put_object(kind, &value, Precondition::Revision(rev))
            .await?;
        obj.metadata.resource_version = Some(new_rev.to_string());
        Ok(obj)
    }

    /// Writes the status of a typed object.
    pub async fn put_status<S: Spec>(&self, name: &str, status: &S::Status) -> Result<i64> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        let value = serde_json::to_value(status).expect("resource types serialize");
        self.put_status_value(kind, name, &value, None).await
    }
}
