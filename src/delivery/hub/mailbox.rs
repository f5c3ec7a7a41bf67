//! The mailboxes to the shards: one bounded inbox per shard, and what a full one missed.
//!
//! A shard that falls [`INBOX_EVENTS`] behind (the broker publishes faster than it can fan
//! out) is sent no more events until it catches up; what it was not sent is recorded per
//! topic ([`Missed`]) and told to it before its next event, so its streams get `gap` notices
//! rather than an inbox that grows without bound. Events and other ordered messages are sent
//! under the ledger's lock (the ordering rule in `hub/ledger.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use mio::Waker;

use super::ledger::Ledger;
use super::{Delivery, Hub, Inbox};
use crate::wire::event_id::EventId;

/// One shard's inbox, as the hub holds it.
#[derive(Debug)]
pub(super) struct Mailbox<C> {
    /// The inbox's sending end.
    pub(super) tx: Sender<Inbox<C>>,
    /// Wakes the shard's poll.
    pub(super) waker: Arc<Waker>,
    /// Events in the inbox not yet taken by the shard.
    pub(super) queued: AtomicUsize,
}

/// Events one shard's inbox holds at most. A shard that falls this far behind (the broker
/// publishes faster than it can fan out) is not sent more until it catches up; it is told
/// what it missed per topic, and its streams get `gap` notices, rather than an inbox that
/// grows without bound.
pub const INBOX_EVENTS: usize = 65_536;

/// Events of one topic a shard was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// The topic.
    pub topic: Arc<str>,
    /// The first id not sent.
    pub from: EventId,
    /// The last id not sent.
    pub to: EventId,
    /// How many.
    pub count: u64,
}

impl<C> Hub<C> {
    /// Puts an event into shard `to`'s inbox, unless it is full: then the event is noted as
    /// missed for its topic, and the shard hears of it before its next event.
    pub(super) fn send_event(&self, ledger: &mut Ledger, to: usize, delivery: &Delivery) {
        let (Some(mailbox), Some(missed)) = (self.mailboxes.get(to), ledger.missed.get_mut(to))
        else {
            return;
        };
        if mailbox.queued.load(Ordering::Acquire) >= INBOX_EVENTS {
            ledger.overruns += 1;
            match missed.iter_mut().find(|m| m.topic == delivery.topic) {
                Some(m) => {
                    m.to = delivery.id;
                    m.count += 1;
                }
                None => missed.push(Missed {
                    topic: delivery.topic.clone(),
                    from: delivery.id,
                    to: delivery.id,
                    count: 1,
                }),
            }
            return;
        }
        if !missed.is_empty() {
            let missed = std::mem::take(missed);
            let _ = mailbox.tx.send(Inbox::Missed(missed));
        }
        mailbox.queued.fetch_add(1, Ordering::AcqRel);
        if mailbox.tx.send(Inbox::Event(delivery.clone())).is_ok() {
            let _ = mailbox.waker.wake();
        }
    }

    /// Shard `shard` took one event from its inbox.
    pub fn took_event(&self, shard: usize) {
        if let Some(mailbox) = self.mailboxes.get(shard) {
            mailbox.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Events not sent to a shard because its inbox was full, since start.
    pub fn overruns(&self) -> u64 {
        self.lock().overruns
    }

    /// Puts `message` into shard `to`'s inbox, in its place among the events: the caller
    /// holds the lock, and `_ledger` is the proof (the ordering rule, `hub/ledger.rs`).
    pub(super) fn post(&self, _ledger: &Ledger, to: usize, message: Inbox<C>) {
        self.send(to, message);
    }

    /// Puts `message` into shard `to`'s inbox and wakes it. A shard that has exited has
    /// dropped its receiver; nothing is owed to it.
    fn send(&self, to: usize, message: Inbox<C>) {
        if let Some(mailbox) = self.mailboxes.get(to) {
            if mailbox.tx.send(message).is_ok() {
                let _ = mailbox.waker.wake();
            }
        }
    }

    /// Sends an answer outside the lock (it orders nothing).
    pub fn answer(&self, to: usize, message: Inbox<C>) {
        self.send(to, message);
    }

    /// Wakes every shard (to notice a shutdown request).
    pub fn wake_all(&self) {
        for mailbox in &self.mailboxes {
            let _ = mailbox.waker.wake();
        }
    }

    /// Puts a hand-over step into every shard's inbox, made by `step` for each. Sent without
    /// the lock: the freeze before it fixed its place (nothing is recorded after it).
    pub fn tell_shards(&self, mut step: impl FnMut(usize) -> C) {
        for shard in 0..self.mailboxes.len() {
            self.send(shard, Inbox::Handover(step(shard)));
        }
    }
}
