//! Reading and writing resource objects: spec under `/rift/v1/<plural>/<name>`, status under
//! `/rift/v1/status/<plural>/<name>`, both as JSON — except that a Job's and a Node's status is
//! composed on every read from the keys the scheduler and the node agents own (see
//! [`super::compose`]), and Events include those agents record under their own prefix.
//!
//! Objects are handled as JSON values here so the CLI can work on any kind by name; typed
//! wrappers ([`Store::get`], [`Store::list`], ...) convert at the edge.

use std::collections::HashMap;

use chrono::Utc;
use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
use serde_json::Value;

use super::client::{KeyValue, Store};
use super::compose::{agent_events, direct_child, StatusSources};
use super::error::{Result, StoreError};
use super::keys;
use super::txn::{Guard, Op};
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
    pub(crate) fn compare(self, key: &str) -> Option<Guard> {
        match self {
            Precondition::Absent => Some(Guard::absent(key)),
            Precondition::Revision(r) => Some(Guard::unchanged(key, r)),
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
    compose_with(kv, |_| status)
}

/// [`compose`] with the status worked out from the decoded object (a Job's status depends on
/// its uid).
fn compose_with(kv: &KeyValue, status: impl FnOnce(&Value) -> Option<Value>) -> Result<Value> {
    let mut obj = decode(kv)?;
    let status = status(&obj);
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

fn uid_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

/// An object exactly as stored at `kv`, with its `resourceVersion` and no status: for kinds
/// without status (Events) read straight from a watch.
pub(crate) fn object_from_kv(kv: &KeyValue) -> Result<Value> {
    compose(kv, None)
}

/// Where a kind's status comes from (docs/architecture.md, "Keys in etcd").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusFrom {
    /// `/rift/v1/status/<plural>/<name>`, written by the one controller that owns it.
    Stored,
    /// The placement plus the runtime report of the node it names.
    Job,
    /// The agent's `status` and `alive` keys.
    Node,
    /// The tunnel key and `alive` key of the agent of the node in `spec.node`.
    Tunnel,
}

fn status_from(kind: &KindInfo) -> StatusFrom {
    match kind.kind {
        "Job" => StatusFrom::Job,
        "Node" => StatusFrom::Node,
        "Tunnel" => StatusFrom::Tunnel,
        _ => StatusFrom::Stored,
    }
}

/// Events are also written by agents, under `/rift/v1/agents/<node>/events/<id>`.
fn has_agent_events(kind: &KindInfo) -> bool {
    kind.kind == "Event"
}

/// A stored status value, or `None` (with a warning) when it does not decode.
fn stored_status(kv: &KeyValue) -> Option<Value> {
    decode(kv)
        .inspect_err(|e| tracing::warn!(%e, "ignoring undecodable status"))
        .ok()
}

/// The node a stored Tunnel names in `spec.node`, when it is a usable key segment.
fn tunnel_node(kv: &KeyValue) -> Option<String> {
    let obj: Value = serde_json::from_slice(&kv.value).ok()?;
    obj.pointer("/spec/node")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_string)
}

/// A Tunnel's composed status from `sources`, which must hold its node's agent keys.
fn tunnel_status(sources: &StatusSources, kv: &KeyValue, name: &str) -> Option<Value> {
    let node = tunnel_node(kv)?;
    sources.tunnel_status(&node, name).map(|s| status_value(&s))
}

fn status_value<T: serde::Serialize>(status: &T) -> Value {
    serde_json::to_value(status).expect("resource types serialize")
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

/// Typed objects of one kind as listed, and those that could not be decoded.
#[derive(Clone, Debug)]
pub struct Listed<S: Spec> {
    pub objects: Vec<Object<S>>,
    /// `(name, why)` of every object that exists but does not decode as this build's type.
    pub undecodable: Vec<(String, String)>,
}

impl<S: Spec> Listed<S> {
    /// Decodes `(key, value)` pairs, keeping what fails aside (with a warning).
    pub fn from_values(values: Vec<(String, Value)>) -> Self {
        let mut out = Listed {
            objects: Vec::with_capacity(values.len()),
            undecodable: Vec::new(),
        };
        for (key, v) in values {
            match to_typed(&key, v) {
                Ok(obj) => out.objects.push(obj),
                Err(e) => {
                    tracing::warn!(%e, "cannot decode a stored object; leaving it untouched");
                    out.undecodable
                        .push((keys::name_of(&key).to_string(), e.to_string()));
                }
            }
        }
        out
    }
}

/// The annotation `rift get` shows on an object this build cannot decode (set on the composed
/// output only, never stored).
pub const UNDECODABLE_ANNOTATION: &str = "rift.dev/undecodable";

/// Marks `obj` (a composed object of `kind`) with [`UNDECODABLE_ANNOTATION`] when it does not
/// decode as this build's type, so people see it instead of a silently missing object.
pub fn mark_if_undecodable(kind: &KindInfo, obj: &mut Value) {
    let Err(crate::api::kinds::ParseFailure::Decode(e)) = (kind.parse_json)(stored_form(obj))
    else {
        return;
    };
    let why = if e.path.is_empty() {
        e.message
    } else {
        format!("{}: {}", e.path, e.message)
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(
                UNDECODABLE_ANNOTATION.into(),
                Value::String(format!(
                    "this rift ({}) cannot read it ({why}); it was probably written by a newer version, and is left untouched",
                    env!("CARGO_PKG_VERSION")
                )),
            );
        }
    }
}

pub(crate) fn to_typed<S: Spec>(key: &str, value: Value) -> Result<Object<S>> {
    serde_json::from_value(value).map_err(|e| StoreError::Decode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl Store {
    /// Reads several keys at one revision: one transaction of gets (without the leader fence:
    /// reading needs no proof of leadership). Returns the values in order and that revision.
    /// At most etcd's `--max-txn-ops` keys (128 by default) in one call; the answer may be as
    /// large as their values together (up to the listing limit, not gRPC's default 4 MiB).
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<(Vec<Option<KeyValue>>, i64)> {
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let mut kv = self.kv_for_large_answers();
        let resp = self.call(kv.txn(Txn::new().and_then(ops))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let values = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(KeyValue::from_etcd),
                _ => None,
            })
            .collect();
        Ok((values, revision))
    }

    /// Reads one key as it was at `revision`.
    async fn get_at(&self, key: &str, revision: i64) -> Result<Option<KeyValue>> {
        let mut client = self.client();
        let opts = GetOptions::new().with_revision(revision);
        let resp = self.call(client.get(key, Some(opts))).await?;
        Ok(resp.kvs().first().map(KeyValue::from_etcd))
    }

    /// One object of `kind` with its status, or `None`.
    pub async fn get_object(&self, kind: &KindInfo, name: &str) -> Result<Option<Value>> {
        Ok(self.get_object_keyed(kind, name).await?.0.map(|(_, v)| v))
    }

    /// One object of `kind` with its status, and the key it is stored at, with the revision
    /// everything was read at: the object and every key its status is composed from are read
    /// at that one revision.
    pub async fn get_object_keyed(
        &self,
        kind: &KindInfo,
        name: &str,
    ) -> Result<(Option<(String, Value)>, i64)> {
        let key = keys::object(kind.plural, name);
        if name.is_empty() || name.contains('/') {
            return Ok((None, self.revision().await?));
        }
        let source = status_from(kind);
        let mut wanted = vec![key.clone()];
        match source {
            StatusFrom::Stored => wanted.push(keys::status(kind.plural, name)),
            StatusFrom::Job => wanted.push(keys::placement(name)),
            StatusFrom::Node => {
                wanted.push(keys::agent_status(name));
                wanted.push(keys::agent_alive(name));
                wanted.push(keys::agent_etcd(name));
            }
            StatusFrom::Tunnel => {}
        }
        let (mut got, rev) = self.get_many(&wanted).await?;
        let Some(kv) = got[0].take() else {
            if has_agent_events(kind) {
                return Ok((self.agent_event(name, rev).await?, rev));
            }
            return Ok((None, rev));
        };
        let status = match source {
            StatusFrom::Stored => got[1].as_ref().and_then(stored_status),
            StatusFrom::Job => {
                let mut sources = StatusSources::from_kvs(got[1..].iter().flatten());
                let node = sources
                    .placement(name)
                    .and_then(|p| p.node.clone())
                    .filter(|n| !n.is_empty() && !n.contains('/'));
                if let Some(node) = node {
                    if let Some(report) = self.get_at(&keys::agent_job(&node, name), rev).await? {
                        sources.add(&report);
                    }
                }
                let obj = compose_with(&kv, |obj| {
                    Some(status_value(&sources.job_status_for(name, uid_of(obj))))
                })?;
                return Ok((Some((key, obj)), rev));
            }
            StatusFrom::Node => {
                let sources = StatusSources::from_kvs(got[1..].iter().flatten());
                Some(status_value(&sources.node_status(name)))
            }
            StatusFrom::Tunnel => match tunnel_node(&kv) {
                Some(node) => {
                    let mut sources = StatusSources::default();
                    for k in [keys::agent_tunnel(&node, name), keys::agent_alive(&node)] {
                        if let Some(found) = self.get_at(&k, rev).await? {
                            sources.add(&found);
                        }
                    }
                    tunnel_status(&sources, &kv, name)
                }
                None => None,
            },
        };
        Ok((Some((key, compose(&kv, status)?)), rev))
    }

    /// An agent event with id `id` (any node's), as of `revision`.
    async fn agent_event(&self, id: &str, revision: i64) -> Result<Option<(String, Value)>> {
        let (agent_kvs, _) = self.list_raw(keys::AGENTS_PREFIX, Some(revision)).await?;
        let found = agent_events(&agent_kvs).find(|kv| keys::name_of(&kv.key) == id);
        match found {
            Some(kv) => Ok(Some((kv.key.clone(), compose(kv, None)?))),
            None => Ok(None),
        }
    }

    /// Every object of `kind` matching `selector`, with status, read at one revision; returns
    /// the objects in name order and that revision.
    pub async fn list_objects(
        &self,
        kind: &KindInfo,
        selector: &LabelSelector,
    ) -> Result<(Vec<Value>, i64)> {
        let (items, rev) = self.list_objects_keyed(kind, selector).await?;
        Ok((items.into_iter().map(|(_, v)| v).collect(), rev))
    }

    /// [`Store::list_objects`] with the key each object is stored at.
    ///
    /// Each prefix involved is listed once, at one revision, and joined in memory: objects,
    /// and their stored statuses, or for Jobs the placements and agent keys, for Nodes the
    /// agent keys; Events include every agent's events. Values that do not decode are skipped
    /// with a warning, and keys below a further `/` are no objects.
    pub async fn list_objects_keyed(
        &self,
        kind: &KindInfo,
        selector: &LabelSelector,
    ) -> Result<(Vec<(String, Value)>, i64)> {
        let prefix = keys::objects_prefix(kind.plural);
        let (kvs, rev) = self.list_raw(&prefix, None).await?;
        let needs = ListNeeds::of(kind);
        let stored = if needs.stored {
            self.list_raw(&keys::status_prefix(kind.plural), Some(rev))
                .await?
                .0
        } else {
            vec![]
        };
        let placements = if needs.placements {
            self.list_raw(keys::PLACEMENTS_PREFIX, Some(rev)).await?.0
        } else {
            vec![]
        };
        let agents = if needs.agents {
            self.list_raw(keys::AGENTS_PREFIX, Some(rev)).await?.0
        } else {
            vec![]
        };
        let sources = ListSources {
            objects: &kvs,
            stored: &stored,
            placements: &placements,
            agents: &agents,
        };
        Ok((join_objects(kind, selector, &sources), rev))
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
                vec![Op::put(key.as_str(), body)],
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
        let put = match lease {
            Some(l) => Op::put_on_lease(key.as_str(), body, l),
            None => Op::put(key.as_str(), body),
        };
        let outcome = self.txn(vec![], vec![put], vec![]).await?;
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
            let guard = vec![Guard::unchanged(key.as_str(), kv.mod_revision)];
            let (ops, outcome) = if has_finalizers {
                if obj["metadata"].get("deletionTimestamp").is_some() {
                    return Ok(DeleteOutcome::Terminating);
                }
                obj["metadata"]["deletionTimestamp"] = serde_json::json!(Utc::now());
                let body = serde_json::to_vec(&obj).expect("JSON values serialize");
                (
                    vec![Op::put(key.as_str(), body)],
                    DeleteOutcome::Terminating,
                )
            } else {
                let mut ops = vec![
                    Op::delete(key.as_str()),
                    Op::delete(keys::status(kind.plural, name)),
                ];
                if kind.kind == "Node" {
                    // The agent's announcement lives on its lease, which outlives a killed
                    // agent by up to a TTL: gone with the Node, or the leader adopts it back.
                    // A live agent announces again when it next registers.
                    ops.push(Op::delete(keys::agent_node(name)));
                }
                (ops, DeleteOutcome::Deleted)
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
    /// longer decode as this build's type are skipped with a warning; callers that must not
    /// mistake such an object for a deleted one use [`Store::list_checked`].
    pub async fn list<S: Spec>(&self, selector: &LabelSelector) -> Result<(Vec<Object<S>>, i64)> {
        let (listed, rev) = self.list_checked::<S>(selector).await?;
        Ok((listed.objects, rev))
    }

    /// Typed objects matching `selector`, with the names of those that exist but do not decode
    /// as this build's type (e.g. written by a newer version), and the revision.
    pub async fn list_checked<S: Spec>(
        &self,
        selector: &LabelSelector,
    ) -> Result<(Listed<S>, i64)> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        let (values, rev) = self.list_objects_keyed(kind, selector).await?;
        Ok((Listed::from_values(values), rev))
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

/// Which prefixes besides the objects' own a list of `kind` needs.
pub struct ListNeeds {
    pub stored: bool,
    pub placements: bool,
    pub agents: bool,
}

impl ListNeeds {
    pub fn of(kind: &KindInfo) -> Self {
        let source = status_from(kind);
        ListNeeds {
            stored: source == StatusFrom::Stored,
            placements: source == StatusFrom::Job,
            agents: source != StatusFrom::Stored || has_agent_events(kind),
        }
    }
}

/// The keys a list of one kind is joined from, all read at one revision: the objects, and as
/// [`ListNeeds`] says, stored statuses, placements and agent keys.
pub struct ListSources<'a> {
    pub objects: &'a [KeyValue],
    pub stored: &'a [KeyValue],
    pub placements: &'a [KeyValue],
    pub agents: &'a [KeyValue],
}

/// Joins the objects of `kind` with their status, in name order, keeping those `selector`
/// matches. Pure: the same join whether the keys came from etcd or from a watch-fed copy. Values that do not decode are skipped with a warning, and keys
/// below a further `/` are no objects.
pub fn join_objects(
    kind: &KindInfo,
    selector: &LabelSelector,
    src: &ListSources<'_>,
) -> Vec<(String, Value)> {
    let prefix = keys::objects_prefix(kind.plural);
    let source = status_from(kind);
    let (kvs, stored, placements, agents) = (src.objects, src.stored, src.placements, src.agents);
    let status_prefix = keys::status_prefix(kind.plural);
    let stored_by_name: HashMap<&str, &KeyValue> = stored
        .iter()
        .filter_map(|kv| Some((direct_child(&status_prefix, &kv.key)?, kv)))
        .collect();
    let sources = match source {
        StatusFrom::Stored => StatusSources::default(),
        _ => StatusSources::from_kvs(placements.iter().chain(agents)),
    };

    let mut candidates: Vec<(&str, &KeyValue)> = kvs
        .iter()
        .filter_map(|kv| Some((direct_child(&prefix, &kv.key)?, kv)))
        .collect();
    if has_agent_events(kind) {
        candidates.extend(agent_events(agents).map(|kv| (keys::name_of(&kv.key), kv)));
        candidates.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
    }
    let mut out = Vec::with_capacity(candidates.len());
    for (name, kv) in candidates {
        let status = |obj: &Value| match source {
            StatusFrom::Stored => stored_by_name.get(name).and_then(|s| stored_status(s)),
            StatusFrom::Job => Some(status_value(&sources.job_status_for(name, uid_of(obj)))),
            StatusFrom::Node => Some(status_value(&sources.node_status(name))),
            StatusFrom::Tunnel => tunnel_status(&sources, kv, name),
        };
        let obj = match compose_with(kv, status) {
            Ok(obj) => obj,
            Err(e) => {
                tracing::warn!(%e, "skipping undecodable object");
                continue;
            }
        };
        if selector.matches(&labels_of(&obj)) {
            out.push((kv.key.clone(), obj));
        }
    }
    out
}
