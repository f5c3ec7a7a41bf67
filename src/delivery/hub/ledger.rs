//! The ledger: the node's ids and epochs, under the hub's one lock.
//!
//! It records each event whose id is known (the embedded broker's next id, or a Redis
//! entry with its epoch), encodes it **once** and keeps it in the history, then hands the
//! frame to every shard's mailbox while still holding the lock.
//!
//! # The ordering rule
//!
//! Everything a shard learns arrives through its inbox, and every message about events is
//! sent under the hub's lock. So a shard sees events in id order, and a replay step computed
//! under the lock sits in the inbox exactly between the events it covers (before it) and the
//! ones it does not (after it): a resuming stream skips live events until its last replay
//! step arrives, then takes every event after it. No gap, no duplicate, for any broker.
//!
//! Enforced here: the [`Ledger`] lives inside the lock, so only [`Hub::lock`]'s guard reaches
//! it, and a message whose place among the events matters ([`Hub::post`], an event, a replay
//! step, a publish's answer, what a full inbox missed) takes `&Ledger` as the proof that its
//! sender holds the lock. Only [`Hub::answer`] sends without it, for what orders nothing.

use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::mailbox::Missed;
use super::replay::Waiters;
use super::{Accepted, Delivery, Hub, Inbox, Ticket, Unavailable};
use crate::delivery::history::History;
use crate::wire::event_id::EventId;
use crate::wire::sse;

/// What is known node-wide, under the hub's lock.
#[derive(Debug)]
pub(super) struct Ledger {
    /// The last id recorded.
    pub(super) last_id: EventId,
    /// The cluster's epoch, once known (None with the embedded broker).
    pub(super) epoch: Option<Arc<str>>,
    /// How many events were encoded (the encode-once check).
    pub(super) encoded: u64,
    /// Kept frames and topic bookkeeping.
    pub(super) history: History,
    /// Cluster mode: replays waiting for this node to catch up with an id another node
    /// handed out.
    pub(super) waiting: Waiters,
    /// Epochs started since start (the reader re-reads the stream after a change it did not
    /// see itself).
    pub(super) generation: u64,
    /// Per shard: what it was not sent while its inbox was full.
    pub(super) missed: Vec<Vec<Missed>>,
    /// Events not sent to a shard because its inbox was full, since start.
    pub(super) overruns: u64,
    /// Handing over: no event is recorded (the successor records them from here on).
    pub(super) frozen: bool,
    /// The demo ticker's last heartbeat number.
    pub(super) heartbeats: u64,
}

impl Ledger {
    /// An empty ledger over `history`, for `shards` mailboxes.
    pub(super) fn new(history: History, shards: usize) -> Ledger {
        Ledger {
            last_id: EventId::ZERO,
            epoch: None,
            encoded: 0,
            history,
            waiting: Waiters::default(),
            generation: 0,
            missed: vec![Vec::new(); shards],
            overruns: 0,
            frozen: false,
            heartbeats: 0,
        }
    }
}

impl<C> Hub<C> {
    /// The embedded broker's publish: the node's next id, recorded and delivered. The answer
    /// goes to shard `from`'s inbox when `ticket` is given (the ticker publishes without).
    pub fn publish_local(
        &self,
        from: usize,
        ticket: Option<Ticket>,
        topic: &str,
        event: Option<&str>,
        data: &str,
    ) {
        let mut ledger = self.lock();
        let next = ledger.last_id.next_local().filter(|_| !ledger.frozen);
        let Some(id) = next else {
            let reason = if ledger.frozen {
                "the node is handing over to its successor; publish again".to_owned()
            } else {
                "the node has handed out every id it can".to_owned()
            };
            drop(ledger);
            if let Some(ticket) = ticket {
                self.answer(
                    from,
                    Inbox::Published {
                        ticket,
                        outcome: Err(Unavailable { reason }),
                    },
                );
            }
            return;
        };
        self.append_locked(
            &mut ledger,
            id,
            None,
            topic,
            event,
            data,
            |hub, ledger, subscribers| {
                if let Some(ticket) = ticket {
                    // Sent before the event itself: the publisher's answer leaves in the same
                    // turn, ahead of the fan-out it causes.
                    let accepted = Accepted {
                        id,
                        epoch: None,
                        subscribers,
                    };
                    hub.post(
                        ledger,
                        from,
                        Inbox::Published {
                            ticket,
                            outcome: Ok(accepted),
                        },
                    );
                }
            },
        );
    }

    /// Records event `id` (with `epoch` in cluster mode) and hands its frame to every shard
    /// that has subscribers for it. Returns the topic's subscribers on this node.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append_locked(
        &self,
        ledger: &mut Ledger,
        id: EventId,
        epoch: Option<Arc<str>>,
        topic: &str,
        event: Option<&str>,
        data: &str,
        before_delivery: impl FnOnce(&Self, &Ledger, usize),
    ) -> usize {
        ledger.last_id = id;
        ledger.encoded += 1;
        let frame = sse::encode_event(id, epoch.as_deref(), event, data);
        let accepted = Instant::now();
        let (topic, subscribers) = ledger.history.record(topic, id, &frame, accepted);
        before_delivery(self, ledger, subscribers);
        if subscribers > 0 {
            let delivery = Delivery {
                id,
                epoch,
                topic,
                frame,
                accepted,
            };
            for shard in 0..self.mailboxes.len() {
                self.send_event(ledger, shard, &delivery);
            }
        }
        subscribers
    }

    /// Cluster mode: records an entry read from Redis, with Redis's id and epoch. An entry
    /// of a new epoch restarts the history (the old ids mean nothing next to the new ones);
    /// one already recorded (read again after a reconnect) is skipped. Returns whether the
    /// epoch changed (the reader then reads the new epoch's stream from its start).
    pub fn append_entry(
        &self,
        id: EventId,
        epoch: &str,
        topic: &str,
        event: Option<&str>,
        data: &str,
    ) -> bool {
        let mut guard = self.lock();
        // Handing over: the reader waits here; the successor reads on from Redis itself, and
        // if the hand-over is called off this process takes the entry after all.
        while guard.frozen {
            guard = self
                .thawed
                .wait(guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let ledger = &mut *guard;
        let restarted = ledger.epoch.as_deref() != Some(epoch);
        if restarted {
            Self::start_epoch(ledger, Some(epoch));
        }
        if id > ledger.last_id {
            let epoch = ledger.epoch.clone();
            self.append_locked(ledger, id, epoch, topic, event, data, |_, _, _| {});
            self.answer_waiting(ledger, Instant::now());
        }
        restarted
    }

    /// Cluster mode: the epoch Redis holds now (None: Redis lost it and no publish made a
    /// new one yet). A change restarts the history. Returns whether it changed.
    pub fn observe_epoch(&self, epoch: Option<&str>) -> bool {
        let mut ledger = self.lock();
        if ledger.epoch.as_deref() == epoch {
            return false;
        }
        Self::start_epoch(&mut ledger, epoch);
        true
    }

    pub(super) fn start_epoch(ledger: &mut Ledger, epoch: Option<&str>) {
        ledger.generation += 1;
        ledger.epoch = epoch.map(Arc::from);
        ledger.last_id = EventId::ZERO;
        ledger.history.restart();
    }

    /// How many epochs this node has started (see [`Hub::observe_epoch`]).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The last id recorded, and its epoch.
    pub fn last_id(&self) -> (EventId, Option<Arc<str>>) {
        let ledger = self.lock();
        (ledger.last_id, ledger.epoch.clone())
    }

    /// How many events have been encoded since start (one per event, whatever the fan-out).
    pub fn frames_encoded(&self) -> u64 {
        self.lock().encoded
    }

    /// Takes the one lock. What it guards, and why every ordered message is sent while
    /// holding it: the module's ordering rule.
    pub(super) fn lock(&self) -> MutexGuard<'_, Ledger> {
        // The ledger stays consistent across a panic in another shard (every update is a
        // few plain assignments), so a poisoned lock is still safe to use.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
