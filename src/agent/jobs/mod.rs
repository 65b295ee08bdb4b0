//! Running the jobs bound to this node: the state directory, the per-job shim, restart
//! decisions, and the loop that converges local processes to the bindings.

pub mod env_files;
pub mod exchange;
pub mod job_data;
pub mod launch;
pub mod layout;
pub mod local;
pub mod policy;
pub mod process;
pub mod procs;
pub mod run_as;
pub mod runner;
pub mod shim;
pub mod simulated;
