//! The broker seam: where a published event gets its id, and where a replay reads from.
//!
//! The shards do not know which broker they talk to, and never wait on it: every answer (an
//! event to deliver, "your publish got id X" or "failed", the next part of a replay) arrives
//! in the shard's inbox ([`crate::delivery::hub::Inbox`]), for the embedded broker too, so there is one
//! ordering rule (`delivery/hub/ledger.rs`).
//!
//! May use: `delivery` (the hub it feeds, cursors and batches), `wire` (ids, names, SSE).
//! Used by: `node` (the shards publish and ask for replays; the server starts it).

pub mod cluster;
pub mod redis;
pub mod replay;

use std::sync::Arc;

use crate::delivery::history::Cursor;
use crate::delivery::hub::{Hub, Ticket};

/// How this node's events get their ids.
#[derive(Debug)]
pub enum Broker {
    /// The embedded broker: ids from the node's own counter, answers at once.
    Local,
    /// Cluster mode: ids from one Redis Stream shared by every node.
    Redis(cluster::Cluster),
}

impl Broker {
    /// Publishes an event from shard `from`; the answer comes to that shard's inbox when a
    /// `ticket` is given.
    pub fn publish<C>(
        &self,
        hub: &Hub<C>,
        from: usize,
        ticket: Option<Ticket>,
        topic: &str,
        event: Option<&str>,
        data: &str,
    ) {
        match self {
            Broker::Local => hub.publish_local(from, ticket, topic, event, data),
            Broker::Redis(cluster) => cluster.publish(hub, from, ticket, topic, event, data),
        }
    }

    /// Asks for the next part of a replay; it comes to shard `from`'s inbox.
    pub fn replay<C>(
        &self,
        hub: &Hub<C>,
        from: usize,
        ticket: Ticket,
        names: &[Arc<str>],
        cursor: Cursor,
        room: usize,
    ) {
        match self {
            Broker::Local => hub.replay(from, ticket, names, cursor, room),
            // From the node's history when it reaches back (an id ahead of it waits for the
            // reader), else from Redis.
            Broker::Redis(cluster) => cluster.replay(hub, from, ticket, names, cursor, room),
        }
    }

    /// A stream of shard `from` that was replaying is gone (the replayer gives back what it
    /// kept for it).
    pub fn replay_over(&self, from: usize, ticket: Ticket) {
        match self {
            Broker::Local => {}
            Broker::Redis(cluster) => cluster.replay_over(from, ticket),
        }
    }

    /// Whether publishing works now (`/healthz` answers 503 while it does not).
    pub fn healthy(&self) -> bool {
        match self {
            Broker::Local => true,
            Broker::Redis(cluster) => cluster.healthy(),
        }
    }

    /// The cluster broker's figures, in cluster mode.
    pub fn figures(&self) -> Option<cluster::Figures> {
        match self {
            Broker::Local => None,
            Broker::Redis(cluster) => Some(cluster.figures()),
        }
    }
}
