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
//! A cluster broker (events through Redis) replaces what happens under the lock; the shards
//! only ever see [`Delivery`] values arriving in their mailbox.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mio::Waker;

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
#[derive(Debug, Default)]
struct Ledger {
    /// The last id handed out.
    last_id: u64,
    /// Topics with at least one subscriber on some shard.
    topics: HashMap<Arc<str>, Topic>,
    /// How many events were encoded (the encode-once check).
    encoded: u64,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subscribers: usize,
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
    /// A hub for shards whose wakers are given in shard order; returns each shard's mailbox.
    pub fn new(wakers: Vec<Arc<Waker>>) -> (Arc<Hub>, Vec<Receiver<Delivery>>) {
        let mut mailboxes = Vec::with_capacity(wakers.len());
        let mut inboxes = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = mpsc::channel();
            mailboxes.push(Mailbox { tx, waker });
            inboxes.push(rx);
        }
        let hub = Hub {
            ledger: Mutex::new(Ledger::default()),
            mailboxes,
        };
        (Arc::new(hub), inboxes)
    }

    /// Publishes an event from shard `from`: next id, one encoding, every other shard woken.
    ///
    /// The caller must drain its own mailbox before delivering the returned frame locally,
    /// or it may deliver this event before an earlier one from another shard.
    pub fn publish(&self, from: usize, topic: &str, event: Option<&str>, data: &str) -> Published {
        let mut ledger = self.lock();
        ledger.last_id += 1;
        ledger.encoded += 1;
        let id = ledger.last_id;
        let (name, subscribers) = match ledger.topics.get(topic) {
            Some(t) => (t.name.clone(), t.subscribers),
            None => (Arc::from(topic), 0),
        };
        let delivery = Delivery {
            id,
            topic: name,
            frame: sse::encode_event(id, event, data),
        };
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

    /// Counts one more stream on each of `topics`; returns the shared names to keep.
    pub fn subscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Vec<Arc<str>> {
        let mut ledger = self.lock();
        topics
            .into_iter()
            .map(|topic| {
                let entry = ledger
                    .topics
                    .entry(Arc::from(topic))
                    .or_insert_with_key(|k| Topic {
                        name: k.clone(),
                        subscribers: 0,
                    });
                entry.subscribers += 1;
                entry.name.clone()
            })
            .collect()
    }

    /// Counts one stream fewer on each of `topics`.
    pub fn unsubscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut ledger = self.lock();
        for topic in topics {
            if let Some(entry) = ledger.topics.get_mut(topic) {
                entry.subscribers -= 1;
                if entry.subscribers == 0 {
                    ledger.topics.remove(topic);
                }
            }
        }
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

    /// The last id handed out.
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
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
        let (hub, inboxes) = Hub::new(wakers);
        (hub, inboxes, polls)
    }

    #[test]
    fn ids_increase_across_topics_and_frames_are_encoded_once() {
        let (hub, inboxes, _polls) = hub(3);
        hub.subscribe(["a", "b"]);
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
        hub.subscribe(["t"]);
        hub.subscribe(["t", "u"]);
        assert_eq!(hub.publish(0, "t", None, "x").subscribers, 2);
        hub.unsubscribe(["t"]);
        assert_eq!(hub.publish(0, "t", None, "x").subscribers, 1);
        hub.unsubscribe(["t", "u"]);
        assert!(hub.lock().topics.is_empty());
    }

    #[test]
    fn topic_names_are_shared_not_copied() {
        let (hub, _inboxes, _polls) = hub(1);
        let names = hub.subscribe(["news"]);
        let p = hub.publish(0, "news", None, "x");
        assert!(Arc::ptr_eq(&names[0], &p.delivery.topic));
    }
}
