//! # sse-edge
//!
//! A Server-Sent Events fan-out edge: it holds very many idle browser streams and pushes each
//! published event to all of them, as fast as the kernel takes the bytes.
//!
//! ## Architecture
//!
//! A node runs one or more **shards** ([`shard`]). Each shard is a thread with its own mio
//! `Poll`, its own `SO_REUSEPORT` listener ([`listener`]) and its own slab of clients
//! ([`client`]); the kernel spreads new connections over the listeners. Shards share only the
//! [`hub`], a small lock taken once per published event (never per client), and the
//! [`broker`]: the embedded one (ids from the node's counter), or cluster mode, where a
//! publisher thread appends to a Redis Stream and a reader thread brings every node's
//! events back into the hub, so every node of a cluster delivers one sequence.
//!
//! ## The flow of one broadcast
//!
//! 1. `POST /broadcast` arrives on some shard; [`http`] parses it incrementally and stops at
//!    the head, where [`access`] decides whether this peer may publish and [`params`]
//!    validates topic and event name, before any body is read; then the body (UTF-8).
//!    Parsing and judging run contained ([`guard`]): a panic there costs one connection.
//! 2. The shard hands it to the [`broker`], which gives it its id: the embedded broker from
//!    the node's counter, at once. The [`hub`] encodes the event **once** ([`sse`]) into a
//!    `bytes::Bytes`, keeps it in the [`history`] (bounded per topic and node-wide, in
//!    bytes), and puts the publisher's answer and then a clone of the frame into the shards'
//!    inboxes, under one lock, so every shard sees events in id order.
//! 3. Each shard drains its inbox and walks the topic's subscribers (`shard/fanout.rs`);
//!    [`stream::Stream::offer`] pushes a clone (a
//!    refcount bump) into each one's bounded [`outbox`], or drops it for that stream alone
//!    and records the gap, to be announced before the next frame that fits.
//! 4. Before the shard sleeps again it flushes every client it queued to (`write`, or
//!    `writev` for several frames) until the queue is empty or the socket would block; a
//!    blocked client resumes on its next writable event.
//! 5. EOF or an error marks a client closing; the end of the turn frees its slot.
//!
//! A stream request is judged from its head the same way: with `--subscribe-jwt`, [`access`]
//! finds its token (header, cookie, or URL) and [`jwt`] checks it against the topics asked
//! for; [`cors`] picks its response head, built once per allowed origin. A token's expiry is
//! an entry in the shard's timer heap (`shard/timers.rs`), not a timer per stream.
//!
//! With `--tls-cert`, every byte in and out of a connection goes through its [`tls`] session
//! (rustls's unbuffered API): records are decrypted in place, and frames are encrypted only
//! when the socket takes them, into a per-shard buffer, so the outbox is the same shared-frame
//! queue as in plain HTTP and an idle TLS stream keeps no buffer.
//!
//! A stream that resumes with `Last-Event-ID` walks the history in steps no larger than the
//! room in its queue; each step comes through the inbox like everything else, and the stream
//! skips live frames until its last step arrives, so the seam between replay and live has no
//! gap and no duplicate (the ordering rule in [`hub`]).
//! An upgrade (`SIGUSR2`) starts the new binary with the listeners ([`upgrade`]) and
//! [`handover`] moves every plain stream to it, socket and state, in two phases: nothing is
//! written by the new process before the old one commits, and a failure before that leaves
//! the old one serving as if nothing happened.
//! [`admission`] decides who may hold a stream. Counters live per shard as plain integers
//! ([`metrics`]), summed when scraped. A panic outside request parsing, or a failed event
//! loop, ends the process ([`guard`]) rather than leave a shard silently dead.

#![deny(missing_docs)]

pub mod access;
pub mod admission;
pub mod broker;
pub mod client;
pub mod config;
pub mod cors;
pub mod event_id;
pub mod fdlimit;
pub mod guard;
pub mod handover;
pub mod history;
pub mod http;
pub mod hub;
pub mod jwt;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod mint;
pub mod notify;
pub mod outbox;
pub mod params;
pub mod server;
pub mod shard;
pub mod sse;
pub mod stream;
pub mod tls;
pub mod topics;
pub mod upgrade;

pub use config::Config;
pub use server::{Control, Server, StartError};
