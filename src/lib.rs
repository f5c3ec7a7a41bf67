//! # sse-edge
//!
//! A Server-Sent Events fan-out edge: it holds very many idle browser streams and pushes each
//! published event to all of them, as fast as the kernel takes the bytes.
//!
//! ## Architecture
//!
//! A node runs one or more **shards** ([`node::shard`]). Each shard is a thread with its own
//! mio `Poll`, its own `SO_REUSEPORT` listener ([`node::listener`]), its own slab of
//! connections ([`node::client`]) and, beside it, a slab of the event streams they carry
//! ([`delivery::stream`]): the topic index and the fan-out address streams, and each stream
//! names its connection (over HTTP/1.1 a connection carries one). The kernel spreads new
//! connections over the listeners.
//! Shards share only the [`delivery::hub`], a small lock taken once per published event
//! (never per client), and the [`broker`]: the embedded one (ids from the node's counter), or
//! cluster mode, where a publisher thread appends to a Redis Stream and a reader thread brings
//! every node's events back into the hub, so every node of a cluster delivers one sequence.
//! `ARCHITECTURE.md` says the same in a page, with where HTTP/2 plugs in.
//!
//! ## Layers
//!
//! `src/` is five layers, one folder each. Imports run one way only: a layer uses the layers
//! its row names, and nothing else (within a layer, files use each other freely).
//! `tests/layers.rs` reads this table and fails on any `use`, inline `crate::` path, re-export
//! or `super::super::` that reaches a layer not in its row.
//!
//! | layer | what it holds | may use | used by |
//! |---|---|---|---|
//! | `node` | the process: server, the shard loop and its rooms, connections, listener, TLS, upgrade and hand-over, supervision; the flags (`config`) and the counters (`metrics`) | `broker`, `delivery`, `auth`, `wire` | the binary (`main.rs`) |
//! | `broker` | where an event gets its id and a replay reads from: embedded, or Redis | `delivery`, `wire` | `node` |
//! | `delivery` | the ledger of ids, shard inboxes, replay, history, topics, streams, outboxes, admission; knows no sockets | `wire` | `node`, `broker` |
//! | `auth` | who may publish or read: peer rules, grants, JWT, token minting | `wire` | `node` |
//! | `wire` | HTTP/1.1, SSE encoding, CORS, request parameters, event ids: pure, no sockets | — | every layer |
//!
//! Where the in-between things sit, and why:
//! - `config` is in `node`: only the node reads the flags; it hands lower layers plain values
//!   (sizes, limits, keys), so they are built and tested without a command line. It may check
//!   values with the parsers of the layers below (CIDRs, keys, origins, Redis URLs).
//! - `metrics` is in `node`: counters live per shard and are summed when scraped; lower layers
//!   return tallies (a fan-out's, a replay step's) and the node counts them.
//! - `broker` sits between the node and delivery: it feeds the hub (delivery) and is driven by
//!   the shards and the server (node).
//! - The hand-over's images of delivery state are delivery's own types
//!   ([`delivery::history::HistoryImage`], [`delivery::hub::Snapshot`]); the hand-over
//!   (`node/handover/wire.rs`) serialises them. The hub carries the hand-over's steps through
//!   the shards' inboxes as an opaque message of the node's type, so delivery never names
//!   the node.
//!
//! ## The flow of one broadcast
//!
//! The shard loop (`node/shard.rs`) reads and wakes; the data passes five rooms:
//!
//! 1. `node/shard/api.rs`: `POST /broadcast` is parsed incrementally (`wire/http/`) and judged
//!    at its head, before any body is read: may this peer publish (`auth/access.rs`), are its
//!    topic and event name valid (`wire/params.rs`); then its body (UTF-8). Parsing and
//!    judging run contained (`node/guard.rs`): a panic there costs one connection.
//! 2. `broker/mod.rs`: the event gets its id: the embedded broker's from the node's counter,
//!    at once; in cluster mode through Redis (`broker/cluster.rs`), whose reader brings it back.
//! 3. `delivery/hub/ledger.rs`: under the one lock it is recorded, encoded **once**
//!    (`wire/sse.rs`) into a `bytes::Bytes`, kept in `delivery/history.rs` (bounded per topic
//!    and node-wide, in bytes), and the publisher's answer and then a clone of the frame go
//!    into every shard's inbox (`delivery/hub/mailbox.rs`), so every shard sees events in id
//!    order.
//! 4. `node/shard/fanout.rs`: each shard takes it from its inbox and walks the topic's streams
//!    (`delivery/topics.rs`); `delivery/stream.rs` pushes a clone (a refcount bump) into each
//!    one's bounded queue (`delivery/outbox.rs`), or drops it for that stream alone and
//!    records the gap, announced before the next frame that fits.
//! 5. `node/client.rs`: before the shard sleeps again it flushes every connection it queued to
//!    (`write`, or `writev` for several frames, through `node/tls.rs` with TLS) until the
//!    queue is empty or the socket would block; a blocked one resumes on its next writable
//!    event. EOF or an error marks it closing; the end of the turn frees its slot.
//!
//! ## The flow of one resume
//!
//! A stream that comes back with `Last-Event-ID` (or `?lastEventId=`) gets what it missed,
//! then the live events, with no gap and no duplicate at the seam. The shard loop
//! (`node/shard.rs`) carries each step from the inbox; the data passes five rooms:
//!
//! 1. `node/shard/streams.rs`: `GET /stream` is judged at its head like any request (a token
//!    with `--subscribe-jwt`: `auth/access.rs`, `auth/jwt.rs`), admitted
//!    (`delivery/admission.rs`), and subscribed through the hub.
//! 2. `delivery/history.rs`: where its replay starts: a cursor after that id, and a `reset`
//!    notice first when the id is older than what is kept, unknown, or of another epoch.
//! 3. `broker/mod.rs`: the shard asks for one step, as large as the room in the stream's
//!    queue: the embedded broker from the node's history at once; cluster mode too when the
//!    history reaches back, else from Redis on the replayer thread (`broker/replay.rs`).
//! 4. `delivery/hub/replay.rs`: the step is computed under the hub's lock and put into the
//!    shard's inbox in its place among the live events (the ordering rule,
//!    `delivery/hub/ledger.rs`); a cluster resume ahead of this node's reader waits there.
//! 5. `delivery/stream.rs`: the stream queues the step's frames (`delivery/outbox.rs`; shared
//!    with the history, not copied) and skips live frames until its last step arrives; while
//!    more remain it asks again (3) once its queue has drained. Flushed as in a broadcast.
//!
//! ## Around the two flows
//!
//! With `--subscribe-jwt`, a stream's token comes from its header, cookie or URL
//! (`auth/access.rs`) and `auth/jwt.rs` checks it against the topics asked for;
//! `wire/cors.rs` picks its response head, built once per allowed origin. A token's expiry is
//! an entry in the shard's timer heap (`node/shard/timers.rs`), not a timer per stream.
//!
//! With `--tls-cert`, every byte in and out of a connection goes through its TLS session
//! (`node/tls.rs`, rustls's unbuffered API): records are decrypted in place, and frames are
//! encrypted only when the socket takes them, into a per-shard buffer, so the outbox is the
//! same shared-frame queue as in plain HTTP and an idle TLS stream keeps no buffer.
//!
//! An upgrade (`SIGUSR2`) starts the new binary with the listeners (`node/upgrade.rs`) and
//! `node/handover/` moves every plain stream to it, socket and state, in two phases: nothing
//! is written by the new process before the old one commits, and a failure before that leaves
//! the old one serving as if nothing happened. Counters live per shard as plain integers
//! (`node/metrics.rs`), summed when scraped. A panic outside request parsing, or a failed
//! event loop, ends the process (`node/guard.rs`) rather than leave a shard silently dead.

#![deny(missing_docs)]

pub mod auth;
pub mod broker;
pub mod delivery;
pub mod node;
pub mod wire;

pub use node::config::Config;
pub use node::server::{Control, Server, StartError};
