//! The one cache fed by watches: every value under a prefix, named and decoded once per watch
//! event, kept in name order.
//!
//! Everything in rift that follows the cluster folds a [`super::Watcher`]'s events into a map
//! the same way (kube-runtime's `reflector::store::Writer::apply_watcher_event`): the scheduler's
//! typed view of Nodes, Jobs, Pools, placements and bindings (`controllers/cluster_view.rs`,
//! which the dashboard follows too, with the events and the leader record), a node's bindings
//! (the job runner), the Notifiers (the notifier) and a node's Tunnels. Each is a [`Keyed`] with its own `name` and `decode`
//! functions; what a reader does about a change it decides after [`Keyed::apply`] by looking at
//! the names that changed.
//!
//! Guarantees:
//! - After every event a watcher delivered has been applied, the cache holds exactly the keys
//!   under its prefix the watcher has seen (as of its last event) that name something, each
//!   decoded once, when it was put.
//! - **What cannot be read is never taken for deleted**: a value that does not decode is kept as
//!   [`Cached::Undecodable`] with the reason (and a warning), so a reader can leave what it
//!   governs untouched instead of treating it as gone.
//! - A listing (`Restarted`) replaces everything; the names it reports as changed are every
//!   name that was present before or after it.
//!
//! Caveat: a cache may trail etcd by the events not yet delivered, so writes based on it must
//! still be compare-and-swap (a stale read then costs a conflict, never a wrong write).

use std::collections::BTreeMap;

use super::{KeyValue, WatchEvent};

/// One cached value: decoded, or why it did not decode.
#[derive(Clone, Debug, PartialEq)]
pub enum Cached<T> {
    Ready(T),
    Undecodable(String),
}

impl<T> Cached<T> {
    pub fn ready(&self) -> Option<&T> {
        match self {
            Cached::Ready(v) => Some(v),
            Cached::Undecodable(_) => None,
        }
    }
}

/// Names the key below the prefix (`rest`, the key with the prefix stripped); `None` for a key
/// that names nothing this cache holds (it is ignored).
pub type NameFn = fn(&str) -> Option<&str>;
/// Decodes one value; `Err` says why it could not be read.
pub type DecodeFn<T> = fn(&KeyValue) -> Result<T, String>;

/// A watch-fed map from name to decoded value; see the module docs.
#[derive(Clone, Debug)]
pub struct Keyed<T> {
    prefix: String,
    name: NameFn,
    decode: DecodeFn<T>,
    items: BTreeMap<String, Cached<T>>,
    synced: bool,
}

/// The name of a key directly below the prefix (`a`, not `a/b` nor empty).
pub fn direct_child(rest: &str) -> Option<&str> {
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// Decodes a JSON value of `T`.
pub fn json<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, String> {
    serde_json::from_slice(&kv.value).map_err(|e| e.to_string())
}

/// Decodes a stored object, with `metadata.resourceVersion` set to its key's mod revision.
pub fn object<S: crate::api::Spec>(kv: &KeyValue) -> Result<crate::api::Object<S>, String> {
    let mut obj: crate::api::Object<S> = json(kv)?;
    obj.metadata.resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

impl<T> Keyed<T> {
    /// An empty cache of the keys under `prefix`, named by `name` and read by `decode`.
    pub fn new(prefix: impl Into<String>, name: NameFn, decode: DecodeFn<T>) -> Self {
        Self {
            prefix: prefix.into(),
            name,
            decode,
            items: BTreeMap::new(),
            synced: false,
        }
    }

    /// True once a full listing (a watcher's first `Restarted`) has been taken in.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The name `key` has in this cache, if it is one of its keys.
    pub fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str()).and_then(self.name)
    }

    fn decoded(&self, kv: &KeyValue) -> Cached<T> {
        match (self.decode)(kv) {
            Ok(v) => Cached::Ready(v),
            Err(why) => {
                tracing::warn!(key = %kv.key, %why, "cannot decode a stored value; leaving what it governs untouched");
                Cached::Undecodable(why)
            }
        }
    }

    /// Takes in one watch event; returns the names whose entry may have changed (for a listing,
    /// every name present before or after it). Keys outside the prefix are ignored.
    pub fn apply(&mut self, event: &WatchEvent) -> Vec<String> {
        match event {
            WatchEvent::Restarted { items, .. } => {
                let mut fresh = BTreeMap::new();
                for kv in items {
                    if let Some(name) = self.name_of(&kv.key) {
                        fresh.insert(name.to_string(), self.decoded(kv));
                    }
                }
                let old = std::mem::replace(&mut self.items, fresh);
                self.synced = true;
                let mut changed: Vec<String> = old.into_keys().collect();
                changed.extend(
                    self.items
                        .keys()
                        .filter(|k| changed.binary_search(k).is_err())
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                changed
            }
            WatchEvent::Put(kv) => match self.name_of(&kv.key) {
                Some(name) => {
                    let value = self.decoded(kv);
                    self.items.insert(name.to_string(), value);
                    vec![name.to_string()]
                }
                None => Vec::new(),
            },
            WatchEvent::Delete { key, .. } => match self.name_of(key) {
                Some(name) => {
                    self.items.remove(name);
                    vec![name.to_string()]
                }
                None => Vec::new(),
            },
        }
    }

    /// The entry of `name`, decoded or not.
    pub fn get(&self, name: &str) -> Option<&Cached<T>> {
        self.items.get(name)
    }

    /// The decoded value of `name`.
    pub fn ready(&self, name: &str) -> Option<&T> {
        self.items.get(name).and_then(Cached::ready)
    }

    /// The decoded value of `name`, to update in place (a reader composing status into it).
    pub fn ready_mut(&mut self, name: &str) -> Option<&mut T> {
        match self.items.get_mut(name) {
            Some(Cached::Ready(v)) => Some(v),
            _ => None,
        }
    }

    /// Every entry in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Cached<T>)> {
        self.items.iter()
    }

    /// Every decoded value in name order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.items.values().filter_map(Cached::ready)
    }

    /// The entries whose name starts with `start`, in name order.
    pub fn range<'a>(&'a self, start: &'a str) -> impl Iterator<Item = (&'a String, &'a T)> {
        self.items
            .range(start.to_string()..)
            .take_while(move |(k, _)| k.starts_with(start))
            .filter_map(|(k, v)| Some((k, v.ready()?)))
    }

    /// `(name, why)` of every value that did not decode.
    pub fn undecodable(&self) -> impl Iterator<Item = (&String, &String)> {
        self.items.iter().filter_map(|(k, v)| match v {
            Cached::Undecodable(why) => Some((k, why)),
            Cached::Ready(_) => None,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        }
    }

    fn numbers() -> Keyed<u32> {
        Keyed::new("/p/", direct_child, json::<u32>)
    }

    #[test]
    fn a_cache_follows_listings_puts_and_deletes_under_its_prefix_only() {
        let mut c = numbers();
        assert!(!c.synced());
        let changed = c.apply(&WatchEvent::Restarted {
            items: vec![kv("/p/a", "1", 2), kv("/p/a/x", "9", 2), kv("/q/b", "2", 2)],
            revision: 2,
        });
        assert!(c.synced());
        assert_eq!(changed, ["a"]);
        assert_eq!(c.apply(&WatchEvent::Put(kv("/p/b", "3", 3))), ["b"]);
        assert!(c.apply(&WatchEvent::Put(kv("/px/c", "4", 4))).is_empty());
        assert_eq!(c.values().copied().collect::<Vec<_>>(), [1, 3]);
        c.apply(&WatchEvent::Delete {
            key: "/p/a".into(),
            mod_revision: 5,
            prev: None,
        });
        assert_eq!(c.ready("a"), None);
        let changed = c.apply(&WatchEvent::Restarted {
            items: vec![kv("/p/c", "7", 9)],
            revision: 9,
        });
        assert_eq!(changed, ["b", "c"], "what went and what came");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn an_undecodable_value_is_kept_with_its_reason_never_taken_for_deleted() {
        let mut c = numbers();
        c.apply(&WatchEvent::Restarted {
            items: vec![kv("/p/a", "1", 2)],
            revision: 2,
        });
        c.apply(&WatchEvent::Put(kv("/p/a", "{\"newer\": true}", 3)));
        assert!(matches!(c.get("a"), Some(Cached::Undecodable(_))));
        assert_eq!(c.ready("a"), None);
        assert_eq!(c.undecodable().count(), 1);
        c.apply(&WatchEvent::Put(kv("/p/a", "5", 4)));
        assert_eq!(c.ready("a"), Some(&5));
        assert_eq!(c.undecodable().count(), 0);
    }

    #[test]
    fn range_reads_the_names_under_a_start_in_order() {
        fn whole(rest: &str) -> Option<&str> {
            Some(rest)
        }
        let mut c: Keyed<u32> = Keyed::new("/b/", whole, json::<u32>);
        c.apply(&WatchEvent::Restarted {
            items: vec![
                kv("/b/n1/j2", "2", 1),
                kv("/b/n1/j1", "1", 1),
                kv("/b/n10/j", "3", 1),
                kv("/b/n2/j", "4", 1),
            ],
            revision: 1,
        });
        let got: Vec<u32> = c.range("n1/").map(|(_, v)| *v).collect();
        assert_eq!(got, [1, 2]);
    }
}
