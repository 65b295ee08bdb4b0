//! `rift bench SCENARIO`: scale and latency benchmarks that start everything they need (etcd on
//! free ports in a temporary directory, real `rift agent` processes, hollow nodes in this
//! process or in `rift sim` children: [`hollow_procs`]), run, and print a table and one JSON
//! line. Build with `--release` for figures.
//!
//! Scenarios: [`schedule`], [`rollout`] (and [`rollout_real`]), [`failover`], [`detect`], [`idle`], [`etcd_limit`], and the fault
//! campaign [`chaos`].

pub mod chaos;
pub mod detect;
pub mod env;
pub mod etcd_limit;
pub mod failover;
pub mod hollow_procs;
pub mod idle;
pub mod observe;
pub mod report;
pub mod rollout;
pub mod rollout_real;
pub mod schedule;

use std::path::Path;
use std::time::Duration;

use crate::store::StoreError;

/// Why a benchmark could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setting up: {0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl BenchError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Settings every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// Leader and node lease TTL in seconds.
    pub lease_ttl: u64,
    /// Requests in flight when measuring etcd's limit.
    pub concurrency: usize,
    /// How long each etcd-limit measurement runs.
    pub limit_for: Duration,
    /// The most any wait in a scenario may take.
    pub timeout: Duration,
    /// etcd with TLS, client certificates and authentication, agents with identities (what a
    /// rift cluster runs); false: the old plaintext setup, as a baseline.
    pub tls: bool,
    /// `GOGC` for the etcd member the bench starts (rift's members' setting when `None`).
    pub etcd_gogc: Option<u32>,
}
