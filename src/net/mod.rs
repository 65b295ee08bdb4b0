//! Reaching other nodes: a node's addresses in the order to try them, each with a short connect
//! timeout, remembering the one that worked and falling back to the others when it stops
//! working, over TLS ([`dial`], [`tls`]); one GET to an agent read as a stream ([`agent_http`]).
//! Used by the CLI (`rift logs`), the dashboard (live log tail) and agents (peer probes).

pub mod agent_http;
pub mod dial;
pub mod tls;

pub use dial::{agent_addresses, DialError, Dialer};
pub use tls::{AgentStream, AgentTls};
