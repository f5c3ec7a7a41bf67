//! The node: the process and everything that touches a socket or a thread. The server that
//! starts it (`server`), the shard loop and its rooms (`shard`, `shard/`), one connection
//! (`client`), listeners (`listener`), TLS (`tls`), the zero-disconnect upgrade and hand-over
//! (`upgrade`, `handover/`), supervision (`guard`, `notify`, `fdlimit`), the flags (`config`)
//! and the counters (`metrics`).
//!
//! May use: `broker`, `delivery`, `auth`, `wire`.
//! Used by: the binary (`src/main.rs`) only; nothing below imports it.
//!
//! HTTP/2 is a second arm of a connection's protocol (`client`, `h2`), beside HTTP/1.1, over
//! the same streams and the same fan-out.

pub mod client;
pub mod config;
pub mod fdlimit;
pub mod guard;
pub mod h2;
pub mod handover;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod shard;
pub mod tls;
pub mod upgrade;
