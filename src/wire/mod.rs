//! Wire formats: HTTP/1.1 requests and response heads (`http/`), SSE encoding (`sse`), CORS
//! heads (`cors`), request parameters (`params`) and event ids (`event_id`). Pure: bytes in,
//! values or bytes out, no sockets, tested without a network.
//!
//! May use: no other layer (the standard library and parsing crates only).
//! Used by: every layer.
//!
//! HTTP/2's frame layer (frames, HPACK, the sans-IO connection) is `h2/`, beside `http/`; the
//! node does not speak it yet.

pub mod cors;
pub mod event_id;
pub mod h2;
pub mod http;
pub mod params;
pub mod sse;

#[cfg(test)]
mod proptests;
