//! rift: a declarative control plane for GPU training clusters, built on etcd.
//!
//! Desired state is data in etcd ([`api`] types, stored through [`store`]); every actor is a
//! reconciler that converges what is toward what is wanted. The `rift` binary ([`cli`]) is the
//! operator's tool.

pub mod agent;
pub mod alloc;
pub mod api;
pub mod artifacts;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod controllers;
pub mod dashboard;
pub mod faults;
pub mod import;
pub mod join;
pub mod net;
pub mod pki;
pub mod sim;
pub mod store;
pub mod tasks;
