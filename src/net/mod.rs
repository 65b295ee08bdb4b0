//! Reaching other nodes: a node's addresses in the order to try them, each with a short connect
//! timeout, remembering the one that worked and falling back to the others when it stops
//! working. Used by the CLI (`rift logs`) and by agents (peer probes).

pub mod dial;

pub use dial::{agent_addresses, DialError, Dialer};
