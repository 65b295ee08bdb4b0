//! A read-only, in-memory cache of one kind's objects, kept current by a
//! [`Watcher`] on `/rift/v1/<plural>/`.
//!
//! One [`Writer`] owns the map; any number of [`Cache`] handles read it. [`Reflector`] runs a
//! watcher into a writer.
//!
//! Guarantees:
//!
//! * After each (re)list the whole map is swapped in at once: a reader sees the old snapshot
//!   or the new one, never a mixture.
//! * [`Cache::ready`] resolves only once a complete list has been applied, so a controller
//!   never mistakes "not loaded yet" for "does not exist".
//! * Every change is in the map before it is announced to subscribers ([`Cache::subscribe`]),
//!   except the first list, which is not announced: read the whole cache once it is ready.
//! * `metadata.resourceVersion` of a cached object is its key's etcd mod revision.
//!
//! Caveats:
//!
//! * Only spec and metadata are cached: `status` lives under `/rift/v1/status/...` and is
//!   always `None` here.
//! * A value that does not decode as this build's type is skipped with a warning and the
//!   previous version (if any) stays cached, so a reader never takes an unreadable object for
//!   a deleted one (which could make a controller delete what it owns).
//! * Subscribers that fall more than the channel's capacity behind lose changes and are told
//!   so (`RecvError::Lagged`); they must then look at the whole cache again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};

use crate::api::{Object, Spec};
use crate::store::keys;
use crate::store::watcher::{WatchConfig, WatchEvent, Watcher};
use crate::store::{KeyValue, Store, StoreError};

/// How many unread changes a subscriber may fall behind before it lags.
pub const DEFAULT_CHANGE_CAPACITY: usize = 1024;

/// What can go wrong feeding a cache.
#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    #[error("the value stored at {key} is not a valid {kind}, so it is skipped: {reason}")]
    Decode {
        key: String,
        kind: &'static str,
        reason: String,
    },
    #[error("watching {prefix} failed (retrying): {source}")]
    Watch {
        prefix: String,
        #[source]
        source: StoreError,
    },
}

/// One change to the cache: the object before and after. At least one side is set; `new` is
/// `None` for a deletion, `old` is `None` for a creation.
#[derive(Debug)]
pub struct Change<S: Spec> {
    pub old: Option<Arc<Object<S>>>,
    pub new: Option<Arc<Object<S>>>,
}

impl<S: Spec> Clone for Change<S> {
    fn clone(&self) -> Self {
        Self {
            old: self.old.clone(),
            new: self.new.clone(),
        }
    }
}

impl<S: Spec> Change<S> {
    /// The changed object's name.
    pub fn name(&self) -> &str {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map_or("", |o| o.name())
    }

    /// Both versions present, newest first.
    pub fn objects(&self) -> impl Iterator<Item = &Arc<Object<S>>> {
        self.new.iter().chain(self.old.iter())
    }
}

struct Shared<S: Spec> {
    objects: RwLock<HashMap<String, Arc<Object<S>>>>,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<Change<S>>,
}

/// A read handle on the cache; cheap to clone.
pub struct Cache<S: Spec> {
    shared: Arc<Shared<S>>,
}

impl<S: Spec> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Spec> Cache<S> {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Object<S>>>> {
        self.shared
            .objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Object<S>>> {
        self.map().get(name).cloned()
    }

    /// Every cached object, in name order.
    pub fn list(&self) -> Vec<Arc<Object<S>>> {
        let mut all: Vec<_> = self.map().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Every cached name (in no particular order).
    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a complete list has been applied.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Resolves once a complete list has been applied (at once if it has been).
    pub async fn ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Changes from now on, each announced after it is in the cache.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<S>> {
        self.shared.changes.subscribe()
    }
}

/// The one writer of a cache.
pub struct Writer<S: Spec> {
    cache: Cache<S>,
    prefix: String,
}

impl<S: Spec> Default for Writer<S> {
    fn default() -> Self {
        Self::new(DEFAULT_CHANGE_CAPACITY)
    }
}

impl<S: Spec> Writer<S> {
    /// An empty, not yet ready cache whose subscribers may fall `capacity` changes behind.
    pub fn new(capacity: usize) -> Self {
        let (changes, _) = broadcast::channel(capacity.max(1));
        Self {
            cache: Cache {
                shared: Arc::new(Shared {
                    objects: RwLock::new(HashMap::new()),
                    ready: watch::Sender::new(false),
                    changes,
                }),
            },
            prefix: keys::objects_prefix(S::PLURAL),
        }
    }

    /// A read handle.
    pub fn cache(&self) -> Cache<S> {
        self.cache.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Object<S>>>> {
        self.cache
            .shared
            .objects
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn announce(&self, change: Change<S>) {
        // No subscriber is fine.
        let _ = self.cache.shared.changes.send(change);
    }

    /// Replaces the whole map with `objects` at once, marks the cache ready, and announces
    /// each object that appeared, changed or disappeared, except on the first list (which
    /// only makes the cache ready: a consumer looks at the whole cache once it is ready, and
    /// announcing every object of a large list would only make subscribers lag).
    pub fn replace(&self, objects: impl IntoIterator<Item = Object<S>>) {
        let first = !self.cache.is_ready();
        let new: HashMap<String, Arc<Object<S>>> = objects
            .into_iter()
            .map(|o| (o.name().to_string(), Arc::new(o)))
            .collect();
        let mut changes = Vec::new();
        {
            let mut map = self.write();
            for (name, obj) in &new {
                match map.get(name) {
                    Some(old) if **old == **obj => {}
                    old => changes.push(Change {
                        old: old.cloned(),
                        new: Some(obj.clone()),
                    }),
                }
            }
            for (name, old) in map.iter() {
                if !new.contains_key(name) {
                    changes.push(Change {
                        old: Some(old.clone()),
                        new: None,
                    });
                }
            }
            *map = new;
        }
        self.cache.shared.ready.send_replace(true);
        if !first {
            changes.into_iter().for_each(|c| self.announce(c));
        }
    }

    /// Adds or replaces one object.
    pub fn put(&self, obj: Object<S>) {
        let obj = Arc::new(obj);
        let old = self.write().insert(obj.name().to_string(), obj.clone());
        self.announce(Change {
            old,
            new: Some(obj),
        });
    }

    /// Removes one object; a name not in the cache changes nothing.
    pub fn delete(&self, name: &str) {
        let old = self.write().remove(name);
        if old.is_some() {
            self.announce(Change { old, new: None });
        }
    }

    fn name_of<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(&self.prefix)
            .unwrap_or_else(|| keys::name_of(key))
    }

    /// Decodes one stored spec value, with `resourceVersion` set to its mod revision and the
    /// name taken from its key.
    pub fn decode(&self, kv: &KeyValue) -> Result<Object<S>, ReflectorError> {
        let mut obj: Object<S> =
            serde_json::from_slice(&kv.value).map_err(|e| ReflectorError::Decode {
                key: kv.key.clone(),
                kind: S::KIND,
                reason: e.to_string(),
            })?;
        obj.metadata.name = self.name_of(&kv.key).to_string();
        obj.metadata.resource_version = Some(kv.mod_revision.to_string());
        obj.status = None;
        Ok(obj)
    }

    fn decoded(&self, kv: &KeyValue) -> Option<Object<S>> {
        self.decode(kv)
            .inspect_err(|e| tracing::warn!(error = %e, "skipping undecodable object"))
            .ok()
    }

    /// Applies one watch event: a snapshot replaces everything, a put updates, a delete
    /// removes. Undecodable values are skipped with a warning.
    pub fn apply(&self, event: &WatchEvent) {
        match event {
            WatchEvent::Restarted { items, .. } => {
                self.replace(items.iter().filter_map(|kv| self.decoded(kv)));
            }
            WatchEvent::Put(kv) => {
                if let Some(obj) = self.decoded(kv) {
                    self.put(obj);
                }
            }
            WatchEvent::Delete { key, .. } => self.delete(self.name_of(key)),
        }
    }
}

/// Feeds a cache from a watcher on the kind's object prefix.
pub struct Reflector<S: Spec> {
    watcher: Watcher,
    writer: Writer<S>,
}

impl<S: Spec> Reflector<S> {
    pub fn new(store: Store, config: WatchConfig) -> Self {
        Self::with_writer(store, config, Writer::default())
    }

    /// A reflector that feeds `writer` (to choose its change capacity).
    pub fn with_writer(store: Store, config: WatchConfig, writer: Writer<S>) -> Self {
        let watcher = Watcher::new(store, keys::objects_prefix(S::PLURAL), config);
        Self { watcher, writer }
    }

    pub fn cache(&self) -> Cache<S> {
        self.writer.cache()
    }

    /// Applies watch events until `shutdown` resolves. Watch errors are logged and retried
    /// (the watcher backs off); this only returns on shutdown.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                event = self.watcher.next() => match event {
                    Ok(event) => self.writer.apply(&event),
                    Err(source) => {
                        let err = ReflectorError::Watch {
                            prefix: keys::objects_prefix(S::PLURAL),
                            source,
                        };
                        tracing::warn!(error = %err, "watch failed");
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests;
