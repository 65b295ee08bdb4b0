//! Fault injection shared by the tests and `rift bench chaos`: the faults a fleet meets,
//! reproduced on one machine with real processes and real sockets.
//!
//! - [`proxy`]: a TCP link that can be cut, partitioned, blackholed or delayed at any moment.
//! - [`instances`]: job commands that record every start and stop in one log and detect, by a
//!   kernel lock, any instance running beside another of the same job.

pub mod instances;
pub mod proxy;

pub use instances::{InstanceLog, InstanceReport};
pub use proxy::{FaultProxy, LinkFault, ProxyStats};
