//! A watch-fed copy of every key under a prefix, as raw values, composing any kind the way
//! `rift get` does. Built for tests only: it is the oracle the typed view
//! (`controllers/cluster_view.rs`, which the scheduler and the dashboard follow) is checked
//! against. It is the one cache ([`super::cache::Keyed`]) over raw key-values.
//!
//! Guarantees: after [`Mirror::apply`] has been given every event a [`super::Watcher`]
//! delivered, the mirror holds exactly the keys the watcher has seen, as of its last event. It
//! may trail etcd by the events not yet delivered, so writes based on it must still be
//! compare-and-swap (a stale read then costs a conflict, never a wrong write).

use super::cache::Keyed;
use super::objects::{join_objects, ListNeeds, ListSources, Listed};
use super::{keys, KeyValue, WatchEvent};
use crate::api::object::{Object, Spec};
use crate::api::selector::LabelSelector;

#[derive(Debug)]
pub struct Mirror {
    kvs: Keyed<KeyValue>,
}

impl Default for Mirror {
    fn default() -> Self {
        Self::new()
    }
}

fn whole_key(rest: &str) -> Option<&str> {
    Some(rest)
}

fn raw(kv: &KeyValue) -> Result<KeyValue, String> {
    Ok(kv.clone())
}

impl Mirror {
    pub fn new() -> Self {
        Self {
            kvs: Keyed::new("", whole_key, raw),
        }
    }

    /// True once a full listing (the watcher's first `Restarted`) has been taken in.
    pub fn synced(&self) -> bool {
        self.kvs.synced()
    }

    /// Takes in one watch event.
    pub fn apply(&mut self, event: &WatchEvent) {
        self.kvs.apply(event);
    }

    /// Every key under `prefix`, in key order.
    pub fn prefix(&self, prefix: &str) -> Vec<KeyValue> {
        self.kvs.range(prefix).map(|(_, kv)| kv.clone()).collect()
    }

    /// One key, if present.
    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.kvs.ready(key)
    }

    /// The objects of `S` matching `selector`, with status, as [`super::Store::list`] would
    /// return them from etcd at the mirror's revision.
    pub fn list<S: Spec>(&self, selector: &LabelSelector) -> Vec<Object<S>> {
        self.list_checked(selector).objects
    }

    /// [`Mirror::list`], with the objects that do not decode set aside by name, as
    /// [`super::Store::list_checked`] does.
    pub fn list_checked<S: Spec>(&self, selector: &LabelSelector) -> Listed<S> {
        let kind = crate::api::kinds::by_kind(S::KIND).expect("every Spec is registered");
        let needs = ListNeeds::of(kind);
        let pick = |wanted: bool, prefix: &str| {
            if wanted {
                self.prefix(prefix)
            } else {
                Vec::new()
            }
        };
        let objects = self.prefix(&keys::objects_prefix(S::PLURAL));
        let stored = pick(needs.stored, &keys::status_prefix(S::PLURAL));
        let placements = pick(needs.placements, keys::PLACEMENTS_PREFIX);
        let agents = pick(needs.agents, keys::AGENTS_PREFIX);
        let sources = ListSources {
            objects: &objects,
            stored: &stored,
            placements: &placements,
            agents: &agents,
        };
        Listed::from_values(join_objects(kind, selector, &sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JobSpec;

    fn kv(key: &str, value: serde_json::Value, rev: i64) -> KeyValue {
        KeyValue::json(key, value, rev)
    }

    fn job(name: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "rift/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"command": ["true"]}
        })
    }

    #[test]
    fn a_mirror_follows_listings_puts_and_deletes() {
        let mut m = Mirror::new();
        assert!(!m.synced());
        m.apply(&WatchEvent::Restarted {
            items: vec![kv("/rift/v1/jobs/a", job("a"), 2)],
            revision: 2,
        });
        assert!(m.synced());
        m.apply(&WatchEvent::Put(kv("/rift/v1/jobs/b", job("b"), 3)));
        m.apply(&WatchEvent::Put(kv("/rift/v1/jobsx/c", job("c"), 4)));
        let names: Vec<String> = m
            .list::<JobSpec>(&LabelSelector::everything())
            .iter()
            .map(|j| j.name().to_string())
            .collect();
        assert_eq!(names, ["a", "b"], "only keys under jobs/, in order");
        m.apply(&WatchEvent::Delete {
            key: "/rift/v1/jobs/a".into(),
            mod_revision: 5,
            prev: None,
        });
        let jobs = m.list::<JobSpec>(&LabelSelector::everything());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].metadata.resource_version.as_deref(), Some("3"));
        m.apply(&WatchEvent::Restarted {
            items: vec![],
            revision: 9,
        });
        assert!(m.list::<JobSpec>(&LabelSelector::everything()).is_empty());
    }
}
