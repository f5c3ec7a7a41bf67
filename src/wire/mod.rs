//! The wire layer: formats spoken on the socket, as pure code with no sockets (HTTP/2 frames
//! and HPACK so far; HTTP/1.1, SSE encoding, CORS and parameters move here with the layers
//! issue). It uses nothing above it; the node and delivery use it.

pub mod h2;
