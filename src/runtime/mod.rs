//! The controller runtime: reflector caches, a deduplicating work queue with per-key backoff,
//! and the reconcile loop.
