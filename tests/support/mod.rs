#![allow(dead_code)]
//! Shared helpers for integration tests. Include with `mod support;`.

pub mod agent;
pub mod cli;
pub mod etcd;
/// Link faults (cut, partition, blackholed replies, delay): the library's proxy, shared with
/// `rift bench chaos`.
pub mod faults {
    pub use rift::faults::*;
}
pub mod http;
pub mod proc;
pub mod sshd;
pub mod voters;
