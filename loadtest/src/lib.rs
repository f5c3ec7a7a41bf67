//! # loadtest
//!
//! The capacity-planning load generator for sse-edge, and for any SSE server. This first
//! part holds its pure cores: parsing what a server sends, stamping what the publisher
//! sends, and counters and histograms that cross process boundaries.

#![deny(missing_docs)]

pub mod clock;
pub mod fdlimit;
pub mod response;
pub mod slots;
pub mod sse;
pub mod stamp;
pub mod stats;
pub mod url;
pub mod wire;
