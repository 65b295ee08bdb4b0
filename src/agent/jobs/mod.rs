//! Running the jobs bound to this node: the state directory, the per-job shim, restart
//! decisions, and the loop that converges local processes to the bindings.

pub mod layout;
pub mod local;
pub mod policy;
pub mod process;
pub mod procs;
pub mod runner;
pub mod shim;
pub mod simulated;
