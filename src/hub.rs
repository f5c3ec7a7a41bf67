//! The broker boundary: "an event was published" on one side, "this shard's subscribers get
//! a frame" on the other.
//!
//! [`Hub::publish`] assigns the event the next id of the node's one sequence, encodes it
//! **once** into a `Bytes`, and hands a clone of that frame to every other shard's mailbox
//! (a channel plus a `mio::Waker`). The publishing shard delivers its own copy itself, after
//! first emptying its mailbox, so every shard delivers events in id order.
//!
//! Id order across shards holds because ids are taken and mailboxes filled under one lock:
//! an event with a smaller id is already in every mailbox when a larger id is handed out.
//! The lock is taken once per event, never per client; with one shard it is uncontended.
//!
//! The hub also keeps the [`History`]. A stream that resumes from a `Last-Event-ID` walks it
//! in batches ([`Hub::replay_batch`]) while live events for it are skipped; the batch that
//! finds nothing more notes the last id handed out at that moment
//! ([`ReplayStep::Live`]): anything newer reaches the stream live through the mailbox,
//! anything older still in the mailbox is skipped, so the seam between replay and live has
//! neither a gap nor a duplicate.
//!
//! A cluster broker (events through Redis) replaces what happens under the lock; the shards
//! only ever see [`Delivery`] values arriving in their mailbox.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::Waker;

use crate::history::{Batch, Cursor, History};
use crate::sse;

/// One encoded event on its way to the shards.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's id.
    pub id: u64,
    /// The topic it was published to.
    pub topic: Arc<str>,
    /// The wire bytes, shared by every subscriber of every shard.
    pub frame: Bytes,
}

/// The node's publish side, shared by all shards.
#[derive(Debug)]
pub struct Hub {
    ledger: Mutex<Ledger>,
    mailboxes: Vec<Mailbox>,
}

#[derive(Debug)]
struct Mailbox {
    tx: Sender<Delivery>,
    waker: Arc<Waker>,
}

/// What is known node-wide, under the hub's lock.
#[derive(Debug)]
struct Ledger {
    /// The last id handed out.
    last_id: u64,
    /// How many events were encoded (the encode-once check).
    encoded: u64,
    /// Kept frames and topic bookkeeping.
    history: History,
}

/// A stream's start, as the hub sees it.
#[derive(Debug)]
pub struct Subscription {
    /// The shared topic names, in the order asked.
    pub names: Vec<Arc<str>>,
    /// A `reset` notice to send first, when the replay cannot start where asked.
    pub reset: Option<Bytes>,
    /// Where the replay stands, for a resuming stream; `None` goes live at once.
    pub replay: Option<Cursor>,
    /// The last id handed out when subscribing: later ids arrive live.
    pub skip_through: u64,
}

/// The next step of a replay.
#[derive(Debug)]
pub enum ReplayStep {
    /// More frames (and perhaps a `reset` first); ask again once they have drained.
    More(Batch),
    /// The last frames; the stream is live after this id.
    Live(Batch, u64),
}

/// The outcome of a publish.
#[derive(Debug)]
pub struct Published {
    /// The event, for the publishing shard to deliver locally.
    pub delivery: Delivery,
    /// Streams subscribed to the topic across the node when it was published.
    pub subscribers: usize,
}

impl Hub {
    /// A hub for shards whose wakers are given in shard order, keeping `history` frames per
    /// topic within `history_bytes`; returns each shard's mailbox.
    pub fn new(
        wakers: Vec<Arc<Waker>>,
        history: usize,
        history_bytes: usize,
    ) -> (Arc<Hub>, Vec<Receiver<Delivery>>) {
        let mut mailboxes = Vec::with_capacity(wakers.len());
        let mut inboxes = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = mpsc::channel();
            mailboxes.push(Mailbox { tx, waker });
            inboxes.push(rx);
        }
        let hub = Hub {
            ledger: Mutex::new(Ledger {
                last_id: 0,
                encoded: 0,
                history: History::new(history, history_bytes),
            }),
            mailboxes,
        };
        (Arc::new(hub), inboxes)
    }

    /// Publishes an event from shard `from`: next id, one encoding, every other shard woken.
    ///
    /// The caller must drain its own mailbox before delivering the returned frame locally,
    /// or it may deliver this event before an earlier one from another shard.
    pub fn publish(&self, from: usize, topic: &str, event: Option<&str>, data: &str) -> Published {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        ledger.last_id += 1;
        ledger.encoded += 1;
        let id = ledger.last_id;
        let frame = sse::encode_event(id, event, data);
        let (topic, subscribers) = ledger.history.record(topic, id, &frame, Instant::now());
        let delivery = Delivery { id, topic, frame };
        if subscribers > 0 {
            for (shard, mailbox) in self.mailboxes.iter().enumerate() {
                if shard != from {
                    // A shard that has exited has dropped its receiver; nothing to deliver.
                    if mailbox.tx.send(delivery.clone()).is_ok() {
                        let _ = mailbox.waker.wake();
                    }
                }
            }
        }
        Published {
            delivery,
            subscribers,
        }
    }

    /// Starts a stream on `topics`, resuming after `last_event_id` when given.
    ///
    /// A resume gets a cursor for [`Hub::replay_batch`]; see [`History::start_replay`] for
    /// when it also gets a `reset` notice.
    pub fn subscribe(&self, topics: &[String], last_event_id: Option<&str>) -> Subscription {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        let names = ledger.history.subscribe(topics, Instant::now());
        let (reset, replay) = match last_event_id {
            Some(requested) => {
                let start = ledger
                    .history
                    .start_replay(&names, requested, ledger.last_id);
                (start.reset, Some(start.cursor))
            }
            None => (None, None),
        };
        Subscription {
            names,
            reset,
            replay,
            skip_through: ledger.last_id,
        }
    }

    /// The next frames of a replay over `names`, up to `room` bytes (at least one frame).
    pub fn replay_batch(&self, names: &[Arc<str>], cursor: &mut Cursor, room: usize) -> ReplayStep {
        let ledger = self.lock();
        let batch = ledger.history.replay_batch(names, cursor, room);
        if batch.done {
            ReplayStep::Live(batch, ledger.last_id)
        } else {
            ReplayStep::More(batch)
        }
    }

    /// Counts one stream fewer on each of `topics`.
    pub fn unsubscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        self.lock().history.unsubscribe(topics, Instant::now());
    }

    /// Forgets topics unused for `idle` (see [`History::forget_idle`]); returns how many.
    pub fn forget_idle(&self, idle: Duration) -> usize {
        self.lock().history.forget_idle(Instant::now(), idle)
    }

    /// Bytes the history is charged, and topics it knows.
    pub fn history_size(&self) -> (usize, usize) {
        let ledger = self.lock();
        (ledger.history.bytes(), ledger.history.topics())
    }

    /// Wakes every shard (to notice a shutdown request).
    pub fn wake_all(&self) {
        for mailbox in &self.mailboxes {
            let _ = mailbox.waker.wake();
        }
    }

    /// How many events have been encoded since start (one per publish, whatever the fan-out).
    pub fn frames_encoded(&self) -> u64 {
        self.lock().encoded
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // The ledger stays consistent across a panic in another shard (every update is a
        // few plain assignments), so a poisoned lock is still safe to use.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Poll, Token};

    fn hub(shards: usize) -> (Arc<Hub>, Vec<Receiver<Delivery>>, Vec<Poll>) {
        let polls: Vec<Poll> = (0..shards).map(|_| Poll::new().unwrap()).collect();
        let wakers = polls
            .iter()
            .map(|p| Arc::new(Waker::new(p.registry(), Token(0)).unwrap()))
            .collect();
        let (hub, inboxes) = Hub::new(wakers, 4, 1 << 20);
        (hub, inboxes, polls)
    }

    #[test]
    fn ids_increase_across_topics_and_frames_are_encoded_once() {
        let (hub, inboxes, _polls) = hub(3);
        hub.subscribe(&topics(&["a", "b"]), None);
        let first = hub.publish(0, "a", None, "x");
        let second = hub.publish(2, "b", Some("e"), "y");
        assert_eq!((first.delivery.id, second.delivery.id), (1, 2));
        assert_eq!(hub.frames_encoded(), 2);
        // Shard 1 got both, in order, sharing the publisher's allocation.
        let got: Vec<Delivery> = inboxes[1].try_iter().collect();
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(got[0].frame.as_ptr(), first.delivery.frame.as_ptr());
        // The publisher's own mailbox does not get its own event.
        assert_eq!(
            inboxes[0].try_iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            inboxes[2].try_iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn subscriber_counts_follow_subscribe_and_unsubscribe() {
        let (hub, _inboxes, _polls) = hub(1);
        assert_eq!(hub.publish(0, "t", None, "x").subscribers, 0);
        hub.subscribe(&topics(&["t"]), None);
        hub.subscribe(&topics(&["t", "u"]), None);
        assert_eq!(hub.publish(0, "t", None, "x").subscribers, 2);
        hub.unsubscribe(["t"]);
        assert_eq!(hub.publish(0, "t", None, "x").subscribers, 1);
        hub.unsubscribe(["t", "u"]);
        // "u" was never published to and leaves no trace; "t" keeps its history.
        assert_eq!(hub.history_size().1, 1);
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_resume_walks_the_history_then_goes_live_at_the_last_id() {
        let (hub, _inboxes, _polls) = hub(1);
        for i in 0..3 {
            hub.publish(0, "t", None, &format!("{i}"));
        }
        let s = hub.subscribe(&topics(&["t"]), Some("1"));
        assert!(s.reset.is_none());
        let mut cursor = s.replay.unwrap();
        let ReplayStep::More(first) = hub.replay_batch(&s.names, &mut cursor, 1) else {
            panic!("a one-byte room takes one frame, and there is more");
        };
        assert_eq!(first.frames.len(), 1);
        hub.publish(0, "t", None, "during");
        let ReplayStep::Live(rest, live_after) = hub.replay_batch(&s.names, &mut cursor, 1 << 20)
        else {
            panic!("the rest fits");
        };
        assert_eq!((rest.frames.len(), live_after), (2, 4));
    }

    #[test]
    fn topic_names_are_shared_not_copied() {
        let (hub, _inboxes, _polls) = hub(1);
        let names = hub.subscribe(&topics(&["news"]), None).names;
        let p = hub.publish(0, "news", None, "x");
        assert!(Arc::ptr_eq(&names[0], &p.delivery.topic));
    }
}
