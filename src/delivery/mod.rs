//! Delivery: the ledger of ids, shard inboxes, replay, history, topics, streams, outboxes,
//! admission.

pub mod admission;
pub mod history;
pub mod hub;
pub mod outbox;
pub mod stream;
pub mod topics;
