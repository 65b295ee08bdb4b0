//! Fault injection shared by the tests and `rift bench chaos`: the faults a fleet meets,
//! reproduced on one machine with real processes and real sockets.
//!
//! [`proxy`]: a TCP link that can be cut, partitioned, blackholed or delayed at any moment.

pub mod proxy;

pub use proxy::{FaultProxy, LinkFault, ProxyStats};
