//! Replay: a resuming stream's kept events, in steps no larger than the room in its queue,
//! each computed under the lock and sent in its place among the events (the ordering rule,
//! `hub/ledger.rs`); and, in cluster mode, the resumes that wait for this node to read an id
//! another node handed out, answered when the reader gets there or given up after
//! [`CATCH_UP`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ledger::Ledger;
use super::{Hub, Inbox, Ticket, INBOX_EVENTS};
use crate::delivery::history::{Batch, Cursor, ReplayStart};
use crate::wire::event_id::EventId;

/// The next step of a replay.
#[derive(Debug)]
pub enum ReplayStep {
    /// More frames (and perhaps a `reset` first); ask again once they have drained.
    More(Batch),
    /// The last frames: the stream takes every event after this message.
    Live(Batch),
}

/// A replay step asked for after an id this node has not read yet.
#[derive(Debug)]
struct Waiting {
    from: usize,
    ticket: Ticket,
    names: Vec<Arc<str>>,
    cursor: Cursor,
    room: usize,
    /// When to stop waiting and call the id unknown.
    until: Instant,
}

/// The replays waiting for this node to catch up, in two orders, so that an appended entry
/// costs one look at the first waiter whatever their number: by the id each waits for (an
/// append takes only those it reached), and by arrival, which is deadline order since every
/// waiter waits the same [`CATCH_UP`].
#[derive(Debug, Default)]
pub(super) struct Waiters {
    /// By (the id waited for, arrival number).
    by_id: BTreeMap<(EventId, u64), Waiting>,
    /// Arrival number → the id waited for.
    by_arrival: BTreeMap<u64, EventId>,
    /// The next arrival number.
    arrivals: u64,
    /// Resumes answered at once (`reset`, unknown) because [`WAITING_MAX`] were waiting.
    pub(super) refused: u64,
    /// Waiters looked at by [`Hub::answer_waiting`] since start (what the tests count).
    pub(super) examined: u64,
}

impl Waiters {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn park(&mut self, w: Waiting) {
        let arrival = self.arrivals;
        self.arrivals += 1;
        self.by_arrival.insert(arrival, w.cursor.after());
        self.by_id.insert((w.cursor.after(), arrival), w);
    }

    /// The first waiter whose id is `last_id` or older: this node has read that far.
    fn pop_reached(&mut self, last_id: EventId) -> Option<Waiting> {
        let (&(id, arrival), _) = self.by_id.first_key_value()?;
        self.examined += 1;
        if id > last_id {
            return None;
        }
        self.by_arrival.remove(&arrival);
        self.by_id.remove(&(id, arrival))
    }

    /// The first waiter whose time is over at `now`.
    fn pop_expired(&mut self, now: Instant) -> Option<Waiting> {
        let (&arrival, &id) = self.by_arrival.first_key_value()?;
        self.examined += 1;
        if self
            .by_id
            .get(&(id, arrival))
            .is_some_and(|w| w.until > now)
        {
            return None;
        }
        self.by_arrival.remove(&arrival);
        self.by_id.remove(&(id, arrival))
    }
}

/// The most replays that may wait for this node to catch up (beyond it a resume is told
/// `reset`, unknown, at once, as one that waited in vain): as many as a shard's inbox holds
/// events ([`INBOX_EVENTS`]), since the append that reaches them answers each with one message
/// into an inbox.
pub const WAITING_MAX: usize = INBOX_EVENTS;

/// How long a replay waits for this node to read up to an id another node handed out.
pub const CATCH_UP: Duration = Duration::from_secs(2);

impl<C> Hub<C> {
    /// Where a resume from the id `requested` starts, on this node as it stands.
    pub(super) fn start_replay(
        ledger: &Ledger,
        names: &[Arc<str>],
        requested: &str,
    ) -> ReplayStart {
        // Only the cluster has nodes ahead of this one; it has an epoch.
        let ahead_ok = ledger.epoch.is_some();
        ledger.history.start_replay(
            names,
            requested,
            ledger.last_id,
            ledger.epoch.as_deref(),
            ahead_ok,
        )
    }

    /// The next part of a replay over `names` after `cursor`, up to `room` bytes (at least
    /// one frame), into shard `from`'s inbox, in order with the events (the ordering rule,
    /// `hub/ledger.rs`).
    pub fn replay(
        &self,
        from: usize,
        ticket: Ticket,
        names: &[Arc<str>],
        cursor: Cursor,
        room: usize,
    ) {
        let mut ledger = self.lock();
        if cursor.after() > ledger.last_id {
            // Another node handed this id out and this one has not read it yet: answer once
            // the reader gets there (or call it unknown after CATCH_UP).
            if ledger.waiting.len() >= WAITING_MAX {
                ledger.waiting.refused += 1;
                let mut cursor = cursor;
                let reset = ledger
                    .history
                    .give_up(names, &mut cursor, ledger.epoch.as_deref());
                self.send_replay_step(&ledger, from, ticket, names, cursor, room, Some(reset));
                return;
            }
            ledger.waiting.park(Waiting {
                from,
                ticket,
                names: names.to_vec(),
                cursor,
                room,
                until: Instant::now() + CATCH_UP,
            });
            return;
        }
        self.send_replay_step(&ledger, from, ticket, names, cursor, room, None);
    }

    /// Computes one replay step under the lock and sends it, `reset` first when given.
    #[allow(clippy::too_many_arguments)]
    fn send_replay_step(
        &self,
        ledger: &Ledger,
        from: usize,
        ticket: Ticket,
        names: &[Arc<str>],
        mut cursor: Cursor,
        room: usize,
        reset: Option<Bytes>,
    ) {
        let mut batch =
            ledger
                .history
                .replay_batch(names, &mut cursor, room, ledger.epoch.as_deref());
        if reset.is_some() {
            batch.reset = reset;
        }
        let step = if batch.done {
            ReplayStep::Live(batch)
        } else {
            ReplayStep::More(batch)
        };
        self.post(
            ledger,
            from,
            Inbox::Replay {
                ticket,
                cursor,
                step,
            },
        );
    }

    /// Answers the waiting replays this node has now caught up with, and gives up on those
    /// that waited past their time (`reset`, unknown, then everything kept). Looks at one
    /// waiter more than it answers in each order: nothing per waiter not yet due.
    pub(super) fn answer_waiting(&self, ledger: &mut Ledger, now: Instant) {
        while let Some(w) = ledger.waiting.pop_reached(ledger.last_id) {
            self.send_replay_step(ledger, w.from, w.ticket, &w.names, w.cursor, w.room, None);
        }
        while let Some(mut w) = ledger.waiting.pop_expired(now) {
            let reset = ledger
                .history
                .give_up(&w.names, &mut w.cursor, ledger.epoch.as_deref());
            self.send_replay_step(
                ledger,
                w.from,
                w.ticket,
                &w.names,
                w.cursor,
                w.room,
                Some(reset),
            );
        }
    }

    /// Cluster mode: gives up on waiting replays whose time is over (called by the reader
    /// at least once a second).
    pub fn expire_waiting(&self) {
        let mut guard = self.lock();
        self.answer_waiting(&mut guard, Instant::now());
    }

    /// Replays waiting for this node to catch up now, and those refused since start because
    /// [`WAITING_MAX`] were waiting.
    pub fn waiting(&self) -> (usize, u64) {
        let ledger = self.lock();
        (ledger.waiting.len(), ledger.waiting.refused)
    }

    #[cfg(test)]
    pub(super) fn waiters_examined(&self) -> u64 {
        self.lock().waiting.examined
    }

    #[cfg(test)]
    pub(super) fn expire_at(&self, now: Instant) {
        let mut guard = self.lock();
        self.answer_waiting(&mut guard, now);
    }
}
