//! Who may publish or read: the peer rules and token checks (`access`), JWT verification and
//! grants (`jwt`), token minting for `sse-edge token` (`mint`). Pure: a request head and the
//! configured trust in, a verdict out.
//!
//! May use: `wire` (request heads, parameters).
//! Used by: `node` (the shards judge each head; the binary mints).

pub mod access;
pub mod jwt;
pub mod mint;

#[cfg(test)]
mod proptests;
