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
//! The hub also keeps each topic's last `--history` frames. A stream that resumes from a
//! `Last-Event-ID` takes its replay under the same lock, and notes the last id handed out at
//! that moment ([`Subscription::skip_through`]): anything newer reaches it live through the
//! mailbox, anything older that is still in the mailbox is skipped, so the seam between
//! replay and live has neither a gap nor a duplicate.
//!
//! A cluster broker (events through Redis) replaces what happens under the lock; the shards
//! only ever see [`Delivery`] values arriving in their mailbox.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mio::Waker;

use crate::sse::{self, ResetReason};

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
    /// Topics that have subscribers or have been published to.
    topics: HashMap<Arc<str>, Topic>,
    /// How many events were encoded (the encode-once check).
    encoded: u64,
    /// Frames kept per topic (and at most replayed per stream).
    history: usize,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subscribers: usize,
    /// The last frames published here, oldest first.
    kept: VecDeque<(u64, Bytes)>,
    /// The newest id evicted from `kept` (0: none yet).
    evicted_through: u64,
}

impl Topic {
    fn new(name: Arc<str>) -> Topic {
        Topic {
            name,
            subscribers: 0,
            kept: VecDeque::new(),
            evicted_through: 0,
        }
    }
}

/// A stream's start, as the hub sees it.
#[derive(Debug)]
pub struct Subscription {
    /// The shared topic names, in the order asked.
    pub names: Vec<Arc<str>>,
    /// A `reset` notice to send before the replay, when the replay cannot start where asked.
    pub reset: Option<Bytes>,
    /// Kept frames after the requested id, in id order.
    pub replay: Vec<Bytes>,
    /// The last id handed out when the replay was taken: later ids arrive live.
    pub skip_through: u64,
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
    /// topic; returns each shard's mailbox.
    pub fn new(wakers: Vec<Arc<Waker>>, history: usize) -> (Arc<Hub>, Vec<Receiver<Delivery>>) {
        let mut mailboxes = Vec::with_capacity(wakers.len());
        let mut inboxes = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = mpsc::channel();
            mailboxes.push(Mailbox { tx, waker });
            inboxes.push(rx);
        }
        let hub = Hub {
            ledger: Mutex::new(Ledger {
                history,
                ..Ledger::default()
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
        let entry = match ledger.topics.get_mut(topic) {
            Some(t) => t,
            None => ledger
                .topics
                .entry(Arc::from(topic))
                .or_insert_with_key(|k| Topic::new(k.clone())),
        };
        let frame = sse::encode_event(id, event, data);
        entry.kept.push_back((id, frame.clone()));
        while entry.kept.len() > ledger.history {
            if let Some((old, _)) = entry.kept.pop_front() {
                entry.evicted_through = old;
            }
        }
        let subscribers = entry.subscribers;
        let delivery = Delivery {
            id,
            topic: entry.name.clone(),
            frame,
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

    /// Starts a stream on `topics`, resuming after `last_event_id` when given.
    ///
    /// An id that is not a number this node handed out gets a `reset` (unknown) and the whole
    /// kept history; an id older than what is kept gets a `reset` (expired) and what is kept.
    /// A replay is capped at `--history` frames (the newest), which also counts as expired.
    pub fn subscribe(&self, topics: &[String], last_event_id: Option<&str>) -> Subscription {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        let names: Vec<Arc<str>> = topics
            .iter()
            .map(|topic| {
                let entry = match ledger.topics.get_mut(topic.as_str()) {
                    Some(t) => t,
                    None => ledger
                        .topics
                        .entry(Arc::from(topic.as_str()))
                        .or_insert_with_key(|k| Topic::new(k.clone())),
                };
                entry.subscribers += 1;
                entry.name.clone()
            })
            .collect();
        let mut subscription = Subscription {
            names,
            reset: None,
            replay: Vec::new(),
            skip_through: ledger.last_id,
        };
        let Some(requested) = last_event_id else {
            return subscription;
        };
        let known = requested
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&id| id <= ledger.last_id);
        let after = known.unwrap_or(0);
        let mut expired = false;
        let mut frames: Vec<(u64, Bytes)> = Vec::new();
        for name in &subscription.names {
            let topic = &ledger.topics[name];
            expired |= topic.evicted_through > after;
            let start = topic.kept.partition_point(|(id, _)| *id <= after);
            frames.extend(topic.kept.range(start..).cloned());
        }
        if subscription.names.len() > 1 {
            frames.sort_unstable_by_key(|(id, _)| *id);
        }
        if frames.len() > ledger.history {
            frames.drain(..frames.len() - ledger.history);
            expired = true;
        }
        let oldest = frames.first().map(|(id, _)| *id).or_else(|| {
            subscription
                .names
                .iter()
                .filter_map(|n| ledger.topics[n].kept.front().map(|(id, _)| *id))
                .min()
        });
        let reason = match known {
            None => Some(ResetReason::Unknown),
            Some(_) if expired => Some(ResetReason::Expired),
            Some(_) => None,
        };
        subscription.reset = reason.map(|r| sse::encode_reset(r, requested, oldest));
        subscription.replay = frames.into_iter().map(|(_, frame)| frame).collect();
        subscription
    }

    /// Counts one stream fewer on each of `topics`.
    pub fn unsubscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut ledger = self.lock();
        for topic in topics {
            if let Some(entry) = ledger.topics.get_mut(topic) {
                entry.subscribers -= 1;
                // A topic only ever subscribed to leaves no trace; one that was published to
                // keeps its history (and its eviction mark) for streams that resume later.
                if entry.subscribers == 0 && entry.kept.is_empty() && entry.evicted_through == 0 {
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
        let (hub, inboxes) = Hub::new(wakers, 4);
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
        assert_eq!(
            hub.lock().topics.keys().map(|k| &**k).collect::<Vec<_>>(),
            vec!["t"]
        );
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn ids(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let text = std::str::from_utf8(f).unwrap();
                text[4..text.find('\n').unwrap()].parse().unwrap()
            })
            .collect()
    }

    fn reset_text(s: &Subscription) -> Option<String> {
        s.reset
            .as_ref()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
    }

    #[test]
    fn replay_after_an_id_is_exact_and_in_order_across_topics() {
        let (hub, _inboxes, _polls) = hub(1);
        for (i, topic) in ["a", "b", "a", "c", "b"].iter().enumerate() {
            hub.publish(0, topic, None, &format!("{i}"));
        }
        let s = hub.subscribe(&topics(&["a", "b"]), Some("1"));
        assert_eq!(ids(&s.replay), vec![2, 3, 5]);
        assert_eq!(s.reset, None);
        assert_eq!(s.skip_through, 5);
        let s = hub.subscribe(&topics(&["a"]), Some("5"));
        assert!(s.replay.is_empty() && s.reset.is_none());
    }

    #[test]
    fn an_id_older_than_the_history_gets_an_expired_reset() {
        let (hub, _inboxes, _polls) = hub(1); // keeps 4 per topic
        for i in 0..10 {
            hub.publish(0, "t", None, &format!("{i}"));
        }
        let s = hub.subscribe(&topics(&["t"]), Some("2"));
        assert_eq!(ids(&s.replay), vec![7, 8, 9, 10]);
        assert_eq!(
            reset_text(&s).unwrap(),
            "event: reset\ndata: {\"reason\":\"expired\",\"requested\":\"2\",\"oldest\":\"7\"}\n\n"
        );
        // Exactly at the edge of what is kept: nothing was lost, no reset.
        let s = hub.subscribe(&topics(&["t"]), Some("6"));
        assert_eq!(
            (ids(&s.replay), s.reset.is_none()),
            (vec![7, 8, 9, 10], true)
        );
    }

    #[test]
    fn unknown_ids_get_an_unknown_reset_and_everything_kept() {
        let (hub, _inboxes, _polls) = hub(1);
        hub.publish(0, "t", None, "x");
        for bad in ["abc", "99", "-1", ""] {
            let s = hub.subscribe(&topics(&["t"]), Some(bad));
            assert!(
                reset_text(&s).unwrap().contains("\"reason\":\"unknown\""),
                "{bad}"
            );
            assert_eq!(ids(&s.replay), vec![1]);
        }
        let s = hub.subscribe(&topics(&["empty"]), Some("nope"));
        assert!(reset_text(&s).unwrap().contains("\"oldest\":null"));
    }

    #[test]
    fn a_multi_topic_replay_is_capped_at_the_history_size() {
        let (hub, _inboxes, _polls) = hub(1);
        for i in 0..4 {
            hub.publish(0, "a", None, &format!("{i}"));
            hub.publish(0, "b", None, &format!("{i}"));
        }
        let s = hub.subscribe(&topics(&["a", "b"]), Some("0"));
        assert_eq!(ids(&s.replay), vec![5, 6, 7, 8]);
        assert!(reset_text(&s).unwrap().contains("expired"));
    }

    #[test]
    fn topic_names_are_shared_not_copied() {
        let (hub, _inboxes, _polls) = hub(1);
        let names = hub.subscribe(&topics(&["news"]), None).names;
        let p = hub.publish(0, "news", None, "x");
        assert!(Arc::ptr_eq(&names[0], &p.delivery.topic));
    }
}
