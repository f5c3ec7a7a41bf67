//! Delivery: an event from its id to every stream's queue. The hub (`hub`: the ledger of ids
//! and epochs, the shards' inboxes, replay), the kept events (`history`), each shard's topic
//! index (`topics`), a stream's state (`stream`), its bounded queue of shared frames
//! (`outbox`), and who may hold a stream (`admission`). Knows no sockets and no protocol: a
//! stream does not know what carries it.
//!
//! May use: `wire` (event ids, SSE encoding).
//! Used by: `node` (the shards) and `broker` (which feeds the hub).
//!
//! The images of its state that the hand-over carries (`history::HistoryImage`,
//! `hub::Snapshot`) are delivery's own types; the node serialises them.

pub mod admission;
pub mod data;
pub mod history;
pub mod hub;
pub mod outbox;
pub mod stream;
pub mod topics;
