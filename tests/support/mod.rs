#![allow(dead_code)]
//! Shared helpers for integration tests. Include with `mod support;`.

pub mod agent;
pub mod browser;
pub mod cli;
pub mod cluster;
pub mod dashboard;
pub mod etcd;
pub mod fs;
pub mod http;
pub mod jobs;
pub mod proc;
pub mod promtool;
pub mod relay;
pub mod s3;
pub mod sshd;
pub mod trust;
pub mod voters;
