//! The controller runtime: reflector caches, a deduplicating work queue with per-key backoff,
//! and the reconcile loop (docs/architecture.md, "Control flow"), in the manner of kube-runtime.
//!
//! * [`reflector`]: a read-only cache of one kind, fed by a
//!   [`Watcher`](crate::store::watcher::Watcher), swapped in whole after each (re)list.
//! * [`queue`]: keys deduplicated, never handed out twice at once, delayed requeues, per-key
//!   failure backoff.
//! * [`trigger`]: what makes a key due: its own changes, its owned objects' changes, mapped
//!   sources.
//! * [`controller`]: runs `reconcile(obj, ctx) -> Result<Action, E>` over the queue with a
//!   concurrency cap, and stops gracefully.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rift::api::{JobSpec, Object};
//! use rift::runtime::controller::{Action, Controller, ControllerConfig};
//! use rift::runtime::reflector::Reflector;
//! use rift::store::{Store, WatchConfig};
//!
//! # async fn example(store: Store, stop: tokio::sync::watch::Receiver<bool>) {
//! let jobs = Reflector::<JobSpec>::new(store.clone(), WatchConfig::default());
//! let cache = jobs.cache();
//! let mut stop_reflector = stop.clone();
//! tokio::spawn(jobs.run(async move {
//!     let _ = stop_reflector.wait_for(|s| *s).await;
//! }));
//! let mut stop_controller = stop;
//! Controller::new(cache, ControllerConfig::default())
//!     .shutdown_on(async move {
//!         let _ = stop_controller.wait_for(|s| *s).await;
//!     })
//!     .run(
//!         |job: Arc<Object<JobSpec>>, store: Arc<Store>| async move {
//!             // Load, decide in a pure function, write with compare-and-swap.
//!             let _ = (job, store);
//!             Ok::<_, rift::store::StoreError>(Action::AwaitChange)
//!         },
//!         Arc::new(store),
//!     )
//!     .await;
//! # }
//! ```

pub mod controller;
pub mod queue;
pub mod reflector;
pub mod trigger;

#[cfg(test)]
mod testing;
