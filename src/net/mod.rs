//! Reaching other nodes: a node's addresses in the order to try them, each with a short connect
//! timeout, remembering the one that worked and falling back to the others when it stops
//! working, over TLS ([`tls`]). Used by the CLI (`rift logs`) and by agents (peer probes).

pub mod dial;
pub mod tls;

pub use dial::{agent_addresses, DialError, Dialer};
pub use tls::{AgentStream, AgentTls};
