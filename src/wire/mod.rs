//! Wire formats: HTTP/1.1 requests and heads, SSE encoding, CORS, request parameters, event ids.

pub mod cors;
pub mod event_id;
pub mod http;
pub mod params;
pub mod sse;

#[cfg(test)]
mod proptests;
