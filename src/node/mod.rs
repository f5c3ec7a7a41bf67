//! The node: the process, its shards and their loop, connections, listeners, TLS, upgrade and
//! hand-over, supervision, configuration and metrics.

pub mod client;
pub mod config;
pub mod fdlimit;
pub mod guard;
pub mod handover;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod shard;
pub mod tls;
pub mod upgrade;
