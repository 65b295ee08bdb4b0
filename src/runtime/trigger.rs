//! What makes a controller look at an object again: changes of the object itself, changes of
//! objects it owns, and arbitrary mapped sources, all turned into one kind of stream item.
//!
//! A source that falls behind a cache's change channel (it lagged) cannot know which changes
//! it missed, so it asks for everything to be looked at again ([`Trigger::All`]); that is
//! always safe because reconciles are idempotent and the queue deduplicates.

use futures::stream::{self, BoxStream, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use super::reflector::{Cache, Change};
use crate::api::meta::ObjectMeta;
use crate::api::Spec;

/// A request to reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The object of this name.
    Key(String),
    /// Every object in the controller's cache (a source lost track of what changed).
    All,
}

/// The names of the owners of kind `S` that `meta` names in its `ownerReferences`.
pub fn owners_of<S: Spec>(meta: &ObjectMeta) -> impl Iterator<Item = &str> {
    meta.owner_references
        .iter()
        .filter(|r| r.kind == S::KIND)
        .map(|r| r.name.as_str())
}

/// A cache's changes as a stream; `None` items stand for changes lost to lag. Ends only when
/// the cache's writer and every handle are gone.
fn changes<O: Spec>(rx: broadcast::Receiver<Change<O>>) -> impl Stream<Item = Option<Change<O>>> {
    stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(change) => Some((Some(change), rx)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind a cache's changes; looking at everything"
                );
                Some((None, rx))
            }
            Err(RecvError::Closed) => None,
        }
    })
}

/// Triggers from a cache's changes, each change mapped to names by `map`.
fn mapped<O, F, I>(cache: &Cache<O>, map: F) -> BoxStream<'static, Trigger>
where
    O: Spec,
    F: Fn(&Change<O>) -> I + Send + 'static,
    I: IntoIterator<Item = String>,
{
    changes(cache.subscribe())
        .flat_map(move |change| {
            let triggers: Vec<Trigger> = match change {
                Some(change) => map(&change).into_iter().map(Trigger::Key).collect(),
                None => vec![Trigger::All],
            };
            stream::iter(triggers)
        })
        .boxed()
}

/// Each changed object of the cache, by name.
pub fn on_changes<S: Spec>(cache: &Cache<S>) -> BoxStream<'static, Trigger> {
    mapped(cache, |change: &Change<S>| [change.name().to_string()])
}

/// The owners of kind `S` of each changed object of kind `O`, before and after the change
/// (so an owner hears of a child that was handed to another owner, or deleted).
pub fn on_owned_changes<S: Spec, O: Spec>(cache: &Cache<O>) -> BoxStream<'static, Trigger> {
    mapped(cache, |change: &Change<O>| {
        let mut owners: Vec<String> = change
            .objects()
            .flat_map(|o| owners_of::<S>(&o.metadata))
            .map(str::to_string)
            .collect();
        owners.sort();
        owners.dedup();
        owners
    })
}

/// The names `map` picks for each changed object of another kind (a Node change → the
/// Pending jobs that might fit on it).
pub fn on_mapped_changes<O, F, I>(cache: &Cache<O>, map: F) -> BoxStream<'static, Trigger>
where
    O: Spec,
    F: Fn(&Change<O>) -> I + Send + 'static,
    I: IntoIterator<Item = String>,
{
    mapped(cache, map)
}

/// Names from any stream.
pub fn on_keys(keys: impl Stream<Item = String> + Send + 'static) -> BoxStream<'static, Trigger> {
    keys.map(Trigger::Key).boxed()
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::runtime::reflector::Writer;
    use crate::runtime::testing::{part, PartSpec, WidgetSpec};

    fn ready_now(s: &mut BoxStream<'static, Trigger>) -> Vec<Trigger> {
        let mut out = Vec::new();
        while let Some(Some(t)) = s.next().now_or_never() {
            out.push(t);
        }
        out
    }

    fn key(k: &str) -> Trigger {
        Trigger::Key(k.into())
    }

    #[test]
    fn owners_of_names_only_owners_of_that_kind() {
        let mut p = part("p", &["w1", "w2"]);
        p.metadata.owner_references[1].kind = "Pool".into();
        assert_eq!(
            owners_of::<WidgetSpec>(&p.metadata).collect::<Vec<_>>(),
            ["w1"]
        );
    }

    #[tokio::test]
    async fn an_owned_change_names_the_owners_before_and_after() {
        let parts = Writer::<PartSpec>::default();
        let mut s = on_owned_changes::<WidgetSpec, PartSpec>(&parts.cache());
        parts.put(part("p", &["w1"]));
        assert_eq!(ready_now(&mut s), [key("w1")]);
        parts.put(part("p", &["w2"]));
        assert_eq!(
            ready_now(&mut s),
            [key("w1"), key("w2")],
            "old and new owner"
        );
        parts.delete("p");
        assert_eq!(ready_now(&mut s), [key("w2")]);
        parts.put(part("orphan", &[]));
        assert!(ready_now(&mut s).is_empty());
    }

    #[tokio::test]
    async fn a_lagging_source_asks_for_everything() {
        let parts = Writer::<PartSpec>::new(1);
        let mut s = on_owned_changes::<WidgetSpec, PartSpec>(&parts.cache());
        parts.put(part("p1", &["w1"]));
        parts.put(part("p2", &["w2"]));
        parts.put(part("p3", &["w3"]));
        assert_eq!(ready_now(&mut s), [Trigger::All, key("w3")]);
    }
}
