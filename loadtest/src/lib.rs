//! # loadtest
//!
//! The capacity-planning load generator for sse-edge, and for any SSE server: it opens many
//! streams, publishes stamped messages, and reports delivery latency (HDR histograms, free
//! of coordinated omission), loss, and what the server paid per stream and per delivery.
//!
//! ## Architecture
//!
//! The parent process ([`run`]) plans the run and starts worker processes ([`worker`]): the
//! open-files limit is per process, so past ~19.8k streams more processes are the only way.
//! Each worker is one mio event loop ([`client`]) holding its streams; its parsing is pure
//! ([`response`] for the HTTP head and chunked bodies, [`sse`] for events, [`stamp`] for
//! the message body, [`meter`] for turning events into latencies and losses, with no I/O of
//! its own). The parent's commands come down a pipe ([`inbox`]); workers send progress and a
//! final report up another ([`wire`]): counters plus a V2-serialized HdrHistogram, merged by
//! adding ([`stats`]).
//!
//! `https://` URLs ([`url`]) go through rustls ([`tls`]): each stream's session sits between
//! its socket and the same parsing, driven non-blockingly by the worker's loop; the
//! publisher uses rustls's blocking stream. What to trust (`--cacert FILE` or `--insecure`)
//! travels to the workers in their plan, and each builds its own configuration from it.
//!
//! HTTP/2 (`h2c://` URLs, or `https://` with `--streams-per-connection`) carries many streams
//! on one connection: the worker's connections hold a small client-side state machine of the
//! loadtest's own ([`h2`], on sse-edge's frame layer and HPACK decoder), and each stream is
//! parsed and accounted exactly as an HTTP/1.1 one is. Publishing stays HTTP/1.1.
//!
//! ## The flow of one message
//!
//! 1. The [`publisher`] POSTs message *k* with its *scheduled* time `t0 + k/rate`
//!    (`CLOCK_MONOTONIC` µs, [`clock`], the same clock in every process), over one
//!    connection or, with `--publishers N`, on connection *k* mod *N*.
//! 2. The server fans it out; each worker reads it on each stream, parses the event, and
//!    records `now − scheduled` in its histogram; a jump in *k* is a loss (taken back if the
//!    message arrives a little late, as it may from several connections).
//! 3. After the last message and a bounded grace period, the parent sends `Stop`, merges,
//!    and reports ([`report`], [`plot`], [`sizing`]); the server's cost comes from /proc
//!    ([`probe`]).

#![deny(missing_docs)]

pub mod args;
pub mod board;
pub mod client;
pub mod clock;
pub mod fdlimit;
pub mod h2;
pub mod inbox;
pub mod meter;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod publisher;
pub mod report;
pub mod response;
pub mod run;
pub mod sizing;
pub mod slots;
pub mod sse;
pub mod stamp;
pub mod stats;
pub mod tls;
pub mod url;
pub mod wire;
pub mod worker;
