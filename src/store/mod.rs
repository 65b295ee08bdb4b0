//! The typed etcd store: key layout, object reads and compare-and-swap writes, the
//! all-or-nothing apply, and the watcher.

pub mod access;
pub mod apply;
pub mod auth;
pub mod backoff;
pub mod cache;
pub mod client;
pub mod compose;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod keys;
pub mod leader;
pub mod lease;
pub mod members;
/// A raw watch-fed copy of every key: the oracle the typed view is tested against.
#[cfg(test)]
pub mod mirror;
pub mod objects;
pub mod txn;
pub mod watcher;

pub use access::Access;
pub use apply::{ApplyItem, ApplyOutcome};
pub use client::{Fence, KeyValue, Store};
pub use error::StoreError;
pub use objects::{DeleteOutcome, Precondition};
pub use txn::{Guard, Op};
pub use watcher::{WatchConfig, WatchEvent, Watcher};
