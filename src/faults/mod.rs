//! Fault injection shared by the tests and `rift bench chaos`: the faults a fleet meets,
//! reproduced on one machine with real processes and real sockets, and the checker that says
//! whether rift kept its promises through them.
//!
//! - [`proxy`]: a TCP link that can be cut, partitioned, blackholed or delayed at any moment.
//! - [`procs`]: rift's processes (agents, shims, etcd members) found in the process table,
//!   stopped (SIGSTOP), continued and killed.
//! - [`netns`]: a node in a network namespace of its own, whose one link can be cut, where the
//!   machine allows it.
//! - [`instances`]: job commands that record every start and stop in one log and detect, by a
//!   kernel lock, any instance running beside another of the same job.
//! - [`reports`]: a watch that flags two nodes reporting one job Running at once.
//! - [`invariants`]: the whole-run checker: overlaps, lost jobs, stuck jobs, restarts, kills.

pub mod instances;
pub mod invariants;
pub mod netns;
pub mod procs;
pub mod proxy;
pub mod reports;

pub use instances::{InstanceLog, InstanceReport};
pub use invariants::{converge, judge, Convergence, Expect, Snapshot, Tracked, Verdict, Violation};
pub use procs::Paused;
pub use proxy::{FaultProxy, LinkFault, ProxyStats};
pub use reports::ReportWatch;
