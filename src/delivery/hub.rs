//! The hub: where an event that has its id becomes one frame in every shard's inbox, and
//! where a resuming stream gets its replay, in order with those events.
//!
//! It is shared by all shards and the broker's threads, and has three rooms:
//!
//! - `hub/ledger.rs`: the node's ids and epochs under the one lock, and the ordering rule
//!   that lock enforces. An event whose id is known (the embedded broker's counter,
//!   [`Hub::publish_local`], or a Redis entry, [`Hub::append_entry`]) is recorded there,
//!   encoded **once** into a `Bytes` and kept in the [`History`].
//! - `hub/mailbox.rs`: each shard's bounded inbox (a channel plus a `mio::Waker`), what a
//!   full one missed, and the answers to a shard (its publish got an id).
//! - `hub/replay.rs`: a stream's replay in steps no larger than the room in its queue, and
//!   the resumes that wait for this node to read an id another node handed out.
//!
//! This file holds what the shards and the broker see of it: the messages, a stream's start
//! and end ([`Hub::subscribe`], [`Hub::unsubscribe`]), and the hand-over's freeze and thaw.
//! The lock is taken once per event, never per client; with one shard it is uncontended.

mod ledger;
mod mailbox;
mod replay;

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::Receiver;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::Waker;

use crate::delivery::history::{Cursor, History, HistoryImage, TopicsFull};
use crate::wire::event_id::EventId;
use ledger::Ledger;
use mailbox::Mailbox;
pub use mailbox::{Missed, INBOX_EVENTS};
pub use replay::{ReplayStep, CATCH_UP, WAITING_MAX};

/// One encoded event on its way to the shards.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's id.
    pub id: EventId,
    /// The cluster's epoch the id belongs to (None with the embedded broker).
    pub epoch: Option<Arc<str>>,
    /// The topic it was published to.
    pub topic: Arc<str>,
    /// The wire bytes, shared by every subscriber of every shard.
    pub frame: Bytes,
    /// When this node accepted it (recorded it in the history): where the fan-out latency
    /// histograms start.
    pub accepted: Instant,
}

/// Which request an answer belongs to: a slab key in its shard (a publishing connection's,
/// or a replaying stream's) and the serial of the connection there (a key is reused once its
/// connection is gone; an answer for the old one is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The connection's slab key in its shard, or for a replay the stream's.
    pub key: usize,
    /// The connection's serial number in its shard.
    pub serial: u32,
}

/// A publish the broker accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event's id.
    pub id: EventId,
    /// The epoch of the id (None with the embedded broker).
    pub epoch: Option<Arc<str>>,
    /// Streams subscribed to the topic across this node when it was recorded.
    pub subscribers: usize,
}

/// Why a publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// One line for the 503 answer.
    pub reason: String,
}

/// What a shard receives.
#[derive(Debug)]
pub enum Inbox<C> {
    /// An event for this shard's subscribers.
    Event(Delivery),
    /// The answer to a publish this shard asked for.
    Published {
        /// The publishing connection.
        ticket: Ticket,
        /// The id given, or why none was.
        outcome: Result<Accepted, Unavailable>,
    },
    /// Events this shard was not sent while its inbox was full, per topic; sent before the
    /// first event after them.
    Missed(Vec<Missed>),
    /// A step of handing this process's connections over to its successor: the node's own
    /// message (`C`), which the hub only carries, in order with the events around it.
    Handover(C),
    /// The next part of a stream's replay.
    Replay {
        /// The stream.
        ticket: Ticket,
        /// Where the replay stands after this step.
        cursor: Cursor,
        /// The frames.
        step: ReplayStep,
    },
}

/// Where the node stands once it stopped recording events ([`Hub::freeze`]): delivery's image
/// of its ledger, which the hand-over serialises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The last id recorded.
    pub last_id: EventId,
    /// The cluster's epoch (None with the embedded broker).
    pub epoch: Option<String>,
    /// The embedded broker's kept events; cluster nodes read theirs from Redis.
    pub history: Option<HistoryImage>,
    /// The demo ticker's last heartbeat number.
    pub heartbeats: u64,
}

/// The node's ledger and inboxes, shared by all shards and the broker's threads.
#[derive(Debug)]
pub struct Hub<C> {
    ledger: Mutex<Ledger>,
    /// Signalled when a hand-over is called off and the ledger takes events again.
    thawed: Condvar,
    mailboxes: Vec<Mailbox<C>>,
}

/// A stream's start, as the hub sees it.
#[derive(Debug)]
pub struct Subscription {
    /// The shared topic names, in the order asked.
    pub names: Vec<Arc<str>>,
    /// A `reset` notice to send first, when the replay cannot start where asked.
    pub reset: Option<Bytes>,
    /// Where the replay starts, for a resuming stream; `None` goes live at once.
    pub replay: Option<Cursor>,
}

impl<C> Hub<C> {
    /// A hub for shards whose wakers are given in shard order, keeping `history` frames per
    /// topic within `history_bytes`, and the records of subscribed topics within
    /// `topic_bytes`; returns each shard's inbox.
    pub fn new(
        wakers: Vec<Arc<Waker>>,
        history: usize,
        history_bytes: usize,
        topic_bytes: usize,
    ) -> (Arc<Hub<C>>, Vec<Receiver<Inbox<C>>>) {
        let shards = wakers.len();
        let mut mailboxes = Vec::with_capacity(wakers.len());
        let mut inboxes = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = mpsc::channel();
            mailboxes.push(Mailbox {
                tx,
                waker,
                queued: AtomicUsize::new(0),
            });
            inboxes.push(rx);
        }
        let hub = Hub {
            ledger: Mutex::new(Ledger::new(
                History::new(history, history_bytes, topic_bytes),
                shards,
            )),
            thawed: Condvar::new(),
            mailboxes,
        };
        (Arc::new(hub), inboxes)
    }

    /// Starts a stream on `topics`, resuming after `last_event_id` when given.
    ///
    /// A resume gets a cursor for [`Hub::replay`]; see [`History::start_replay`] for when it
    /// also gets a `reset` notice. Refused when the topic budget has no room for the topics
    /// no stream carries yet (see [`History::subscribe`]): the caller sheds the stream.
    pub fn subscribe(
        &self,
        topics: &[String],
        last_event_id: Option<&str>,
    ) -> Result<Subscription, TopicsFull> {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        let names = ledger.history.subscribe(topics, Instant::now())?;
        let (reset, replay) = match last_event_id {
            Some(requested) => {
                let start = Self::start_replay(ledger, &names, requested);
                (start.reset, Some(start.cursor))
            }
            None => (None, None),
        };
        Ok(Subscription {
            names,
            reset,
            replay,
        })
    }

    /// Stops recording events for a hand-over and returns where the node stands (with the
    /// kept events when `with_history`: the embedded broker's successor has no other source).
    /// Events recorded before this are all in the inboxes already, ahead of any later step.
    pub fn freeze(&self, with_history: bool) -> Snapshot {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        ledger.frozen = true;
        // What a full inbox made a shard miss is told now, not with a next event that will
        // not come: its streams' gap records travel with them.
        for to in 0..ledger.missed.len() {
            let missed = ledger.missed.get_mut(to).map(std::mem::take);
            if let Some(missed) = missed.filter(|m| !m.is_empty()) {
                self.post(ledger, to, Inbox::Missed(missed));
            }
        }
        Snapshot {
            last_id: ledger.last_id,
            epoch: ledger.epoch.as_deref().map(str::to_owned),
            history: with_history.then(|| ledger.history.image()),
            heartbeats: ledger.heartbeats,
        }
    }

    /// Whether a hand-over stopped this node recording events (its successor records them).
    pub fn frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Records events again: a hand-over was called off.
    pub fn thaw(&self) {
        self.lock().frozen = false;
        self.thawed.notify_all();
    }

    /// In the successor, before any shard runs: the embedded broker's ids go on after the
    /// old process's last one (its history came before, [`Hub::import_history`]). A cluster
    /// node reads both from Redis.
    /// `last_id` is the old process's last id when it sent its history (the embedded
    /// broker), None otherwise; `heartbeats` its demo ticker's last number.
    pub fn take_over(&self, last_id: Option<EventId>, heartbeats: u64) {
        let mut ledger = self.lock();
        if let Some(last_id) = last_id {
            ledger.last_id = ledger.last_id.max(last_id);
        }
        ledger.heartbeats = ledger.heartbeats.max(heartbeats);
    }

    /// The demo ticker's next heartbeat number, counted per node (not per shard) so that it
    /// goes on across an upgrade ([`Hub::freeze`] hands it over).
    pub fn next_heartbeat(&self) -> u64 {
        let mut ledger = self.lock();
        ledger.heartbeats = ledger.heartbeats.saturating_add(1);
        ledger.heartbeats
    }

    /// In the successor, before any shard runs: one part of the old process's history, kept
    /// under this process's own caps (the oldest frames go first past `--history-bytes`, so
    /// what is taken in never costs more than the budget).
    ///
    /// Parts come before the streams, so no topic is known yet to be held by one: topics with
    /// frames go to the history's budget and frameless ones are forgotten with their marks
    /// kept node-wide (a resume from before such a mark is told `reset`, never silence); each
    /// adopted stream's subscription charges its topics to the topic budget again.
    pub fn import_history(&self, part: HistoryImage) {
        self.lock()
            .history
            .import(part, &HashSet::new(), Instant::now());
    }

    /// A stream handed over by the node's previous process: subscribed to `topics`, it has
    /// everything up to `cursor` (from `epoch`). It goes live at once when that is the last
    /// id here; otherwise it replays from there (in cluster mode, perhaps waiting for this
    /// node to read that far). An id of another epoch gets `reset`, as a resume would.
    /// Refused, as [`Hub::subscribe`] is, when the topic budget has no room for it.
    pub fn resume(
        &self,
        topics: &[String],
        cursor: Cursor,
        epoch: Option<&str>,
    ) -> Result<Subscription, TopicsFull> {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        let names = ledger.history.subscribe(topics, Instant::now())?;
        if ledger.epoch.as_deref() != epoch {
            // As a resume with that id would be: `reset`, since it is of another epoch.
            let requested = cursor.after().wire(epoch).to_string();
            let start = Self::start_replay(ledger, &names, &requested);
            return Ok(Subscription {
                names,
                reset: start.reset,
                replay: Some(start.cursor),
            });
        }
        let live = cursor.after() == ledger.last_id && ledger.history.covers(&names, &cursor);
        Ok(Subscription {
            names,
            reset: None,
            replay: (!live).then_some(cursor),
        })
    }

    /// Whether this node's history reaches back to `cursor` for `names`.
    pub fn history_covers(&self, names: &[Arc<str>], cursor: &Cursor) -> bool {
        self.lock().history.covers(names, cursor)
    }

    /// Streams on this node subscribed to `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.lock().history.subscribers(topic)
    }

    /// Counts one stream fewer on each of `topics`.
    pub fn unsubscribe<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        self.lock().history.unsubscribe(topics, Instant::now());
    }

    /// Forgets topics unused for `idle` (see [`History::forget_idle`]); returns how many.
    pub fn forget_idle(&self, idle: Duration) -> usize {
        self.lock().history.forget_idle(Instant::now(), idle)
    }

    /// Bytes the history is charged, topics it knows, and bytes the topic budget is charged.
    pub fn history_size(&self) -> (usize, usize, usize) {
        let ledger = self.lock();
        (
            ledger.history.bytes(),
            ledger.history.topics(),
            ledger.history.topic_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The node's hand-over steps are opaque to the hub: its tests send none.
    type Hub = super::Hub<()>;
    type Inbox = super::Inbox<()>;
    use mio::{Poll, Token};

    fn hub(shards: usize) -> (Arc<Hub>, Vec<Receiver<Inbox>>, Vec<Poll>) {
        let polls: Vec<Poll> = (0..shards).map(|_| Poll::new().unwrap()).collect();
        let wakers = polls
            .iter()
            .map(|p| Arc::new(Waker::new(p.registry(), Token(0)).unwrap()))
            .collect();
        let (hub, inboxes) = Hub::new(wakers, 4, 1 << 20, 1 << 20);
        (hub, inboxes, polls)
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const TICKET: Ticket = Ticket { key: 7, serial: 1 };

    /// What an inbox holds, as short strings: `E<id>`, `P<id>/<subscribers>`, `R<frames>`
    /// or `L<frames>` (a replay step, live after it).
    fn drain(inbox: &Receiver<Inbox>) -> Vec<String> {
        inbox
            .try_iter()
            .map(|m| match m {
                Inbox::Event(d) => format!("E{}", d.id.seq()),
                Inbox::Published { outcome, .. } => {
                    let a = outcome.unwrap();
                    format!("P{}/{}", a.id.seq(), a.subscribers)
                }
                Inbox::Missed(m) => format!("M{}", m.len()),
                Inbox::Handover(_) => "H".to_owned(),
                Inbox::Replay { step, .. } => match step {
                    ReplayStep::More(b) => format!("R{}", b.frames.len()),
                    ReplayStep::Live(b) => format!("L{}", b.frames.len()),
                },
            })
            .collect()
    }

    #[test]
    fn ids_increase_across_topics_and_frames_are_encoded_once() {
        let (hub, inboxes, _polls) = hub(3);
        hub.subscribe(&topics(&["a", "b"]), None).unwrap();
        hub.publish_local(0, Some(TICKET), "a", None, "x");
        hub.publish_local(2, None, "b", Some("e"), "y");
        assert_eq!(hub.frames_encoded(), 2);
        // The publisher's answer comes first in its own inbox, then the event: one order.
        assert_eq!(drain(&inboxes[0]), vec!["P1/1", "E1", "E2"]);
        assert_eq!(drain(&inboxes[1]), vec!["E1", "E2"]);
        assert_eq!(drain(&inboxes[2]), vec!["E1", "E2"]);
    }

    #[test]
    fn a_frozen_hub_refuses_local_publishes_and_its_successor_goes_on_from_its_last_id() {
        let (old, inboxes, _polls) = hub(1);
        old.subscribe(&topics(&["t"]), None).unwrap();
        old.publish_local(0, None, "t", None, "one");
        old.publish_local(0, None, "t", None, "two");
        let state = old.freeze(true);
        assert_eq!(state.last_id, EventId::local(2));
        old.publish_local(0, Some(TICKET), "t", None, "refused");
        let refused = inboxes[0].try_iter().last();
        assert!(
            matches!(&refused, Some(Inbox::Published { outcome: Err(u), .. }) if u.reason.contains("handing over")),
            "{refused:?}"
        );
        let (new, new_inboxes, _new_polls) = hub(1);
        let history = state.history.expect("the embedded broker's history");
        new.import_history(history.clone());
        new.take_over(Some(state.last_id), 0);
        // A live stream at the last id takes what comes next; one behind replays.
        let live = new
            .resume(
                &topics(&["t"]),
                Cursor::resume(EventId::local(2), EventId::local(2)),
                None,
            )
            .unwrap();
        assert!(live.replay.is_none() && live.reset.is_none());
        let behind = new
            .resume(
                &topics(&["t"]),
                Cursor::resume(EventId::local(1), EventId::local(1)),
                None,
            )
            .unwrap();
        let cursor = behind.replay.expect("a replay from 1");
        new.replay(0, TICKET, &behind.names, cursor, 1 << 20);
        new.publish_local(0, Some(TICKET), "t", None, "three");
        assert_eq!(drain(&new_inboxes[0]), vec!["L1", "P3/2", "E3"]);
    }

    #[test]
    fn a_frozen_hub_holds_the_cluster_reader_until_thawed() {
        let (hub, inboxes, _polls) = hub(1);
        hub.subscribe(&topics(&["t"]), None).unwrap();
        hub.append_entry(EventId::entry(5, 0), "ep", "t", None, "before");
        let state = hub.freeze(false);
        assert!(state.history.is_none());
        assert_eq!(state.epoch.as_deref(), Some("ep"));
        let reader = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                hub.append_entry(EventId::entry(6, 0), "ep", "t", None, "held")
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            drain(&inboxes[0]),
            vec!["E0"],
            "only the entry before the freeze"
        );
        hub.thaw();
        reader.join().unwrap();
        assert_eq!(drain(&inboxes[0]), vec!["E0"]);
        assert_eq!(hub.last_id().0, EventId::entry(6, 0));
    }

    #[test]
    fn every_shard_gets_the_same_frame_not_a_copy() {
        let (hub, inboxes, _polls) = hub(2);
        hub.subscribe(&topics(&["t"]), None).unwrap();
        hub.publish_local(0, None, "t", None, "x");
        let frames: Vec<Bytes> = inboxes
            .iter()
            .map(|i| match i.try_recv().unwrap() {
                Inbox::Event(d) => d.frame,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(frames[0].as_ptr(), frames[1].as_ptr());
    }

    #[test]
    fn a_topic_nobody_reads_is_kept_but_sent_to_no_shard() {
        let (hub, inboxes, _polls) = hub(2);
        hub.publish_local(1, Some(TICKET), "t", None, "x");
        assert_eq!(drain(&inboxes[1]), vec!["P1/0"]);
        assert!(drain(&inboxes[0]).is_empty());
        assert_eq!(hub.history_size().1, 1);
    }

    #[test]
    fn a_replay_step_sits_in_the_inbox_between_the_events_it_covers_and_the_rest() {
        let (hub, inboxes, _polls) = hub(1);
        hub.subscribe(&topics(&["t"]), None).unwrap();
        for i in 0..3 {
            hub.publish_local(0, None, "t", None, &format!("{i}"));
        }
        let s = hub.subscribe(&topics(&["t"]), Some("1")).unwrap();
        assert!(s.reset.is_none());
        let cursor = s.replay.unwrap();
        hub.replay(0, TICKET, &s.names, cursor, 1 << 20);
        hub.publish_local(0, None, "t", None, "after");
        // Events 1-3 were sent before the step (the stream skips them: 2 and 3 are in the
        // step), event 4 after it (the stream takes it live).
        assert_eq!(drain(&inboxes[0]), vec!["E1", "E2", "E3", "L2", "E4"]);
    }

    #[test]
    fn a_small_room_makes_a_replay_go_in_steps() {
        let (hub, inboxes, _polls) = hub(1);
        for i in 0..3 {
            hub.publish_local(0, None, "t", None, &format!("{i}"));
        }
        let s = hub.subscribe(&topics(&["t"]), Some("0")).unwrap();
        let cursor = s.replay.unwrap();
        hub.replay(0, TICKET, &s.names, cursor, 1);
        let Inbox::Replay { cursor, step, .. } = inboxes[0].try_recv().unwrap() else {
            panic!("a replay step");
        };
        assert!(matches!(step, ReplayStep::More(ref b) if b.frames.len() == 1));
        hub.replay(0, TICKET, &s.names, cursor, 1 << 20);
        assert_eq!(drain(&inboxes[0]), vec!["L2"]);
    }

    #[test]
    fn subscriber_counts_follow_subscribe_and_unsubscribe() {
        let (hub, inboxes, _polls) = hub(1);
        hub.subscribe(&topics(&["t"]), None).unwrap();
        hub.subscribe(&topics(&["t", "u"]), None).unwrap();
        hub.publish_local(0, Some(TICKET), "t", None, "x");
        hub.unsubscribe(["t"]);
        hub.publish_local(0, Some(TICKET), "t", None, "x");
        assert_eq!(drain(&inboxes[0]), vec!["P1/2", "E1", "P2/1", "E2"]);
        hub.unsubscribe(["t", "u"]);
        // "u" was never published to and leaves no trace; "t" keeps its history.
        assert_eq!(hub.history_size().1, 1);
    }

    #[test]
    fn streams_the_topic_budget_has_no_room_for_are_refused_fresh_or_handed_over() {
        let polls = [Poll::new().unwrap()];
        let wakers = vec![Arc::new(Waker::new(polls[0].registry(), Token(0)).unwrap())];
        // Room for one record of a one-letter name.
        let (hub, _inboxes) =
            Hub::new(wakers, 4, 1 << 20, 1 + crate::delivery::history::TOPIC_COST);
        hub.subscribe(&topics(&["a"]), None).unwrap();
        assert!(hub.subscribe(&topics(&["b"]), Some("0")).is_err());
        let cursor = Cursor::resume(EventId::ZERO, EventId::ZERO);
        assert!(hub.resume(&topics(&["b"]), cursor.clone(), None).is_err());
        // Refused, they took nothing; a topic already carried is free to join.
        assert_eq!(
            hub.history_size(),
            (0, 1, 1 + crate::delivery::history::TOPIC_COST)
        );
        assert!(hub.resume(&topics(&["a"]), cursor, None).is_ok());
        assert_eq!(hub.subscribers("a"), 2);
    }

    #[test]
    fn a_shard_whose_inbox_is_full_is_told_what_it_missed_before_its_next_event() {
        let (hub, inboxes, _polls) = hub(1);
        hub.subscribe(&topics(&["t"]), None).unwrap();
        for i in 0..INBOX_EVENTS + 2 {
            hub.publish_local(0, None, "t", None, &format!("{i}"));
        }
        assert_eq!(hub.overruns(), 2);
        let mut events = 0;
        while let Ok(message) = inboxes[0].try_recv() {
            assert!(matches!(message, Inbox::Event(_)));
            hub.took_event(0);
            events += 1;
        }
        assert_eq!(events, INBOX_EVENTS);
        hub.publish_local(0, None, "t", None, "after");
        let first = INBOX_EVENTS as u64 + 1;
        match inboxes[0].try_recv().unwrap() {
            Inbox::Missed(missed) => assert_eq!(
                (missed[0].from.seq(), missed[0].to.seq(), missed[0].count),
                (first, first + 1, 2)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(drain(&inboxes[0]), vec![format!("E{}", first + 2)]);
    }

    /// The replay steps in an inbox, as (the stream's key, its `reset` notice if any), events
    /// left out.
    fn replay_steps(inbox: &Receiver<Inbox>) -> Vec<(usize, Option<String>)> {
        inbox
            .try_iter()
            .filter_map(|m| match m {
                Inbox::Replay { ticket, step, .. } => {
                    let (ReplayStep::More(b) | ReplayStep::Live(b)) = step;
                    let reset = b.reset.map(|r| String::from_utf8_lossy(&r).into_owned());
                    Some((ticket.key, reset))
                }
                _ => None,
            })
            .collect()
    }

    /// A hub, its inboxes and polls, and one stream's topic names.
    type ClusterHub = (Arc<Hub>, Vec<Receiver<Inbox>>, Vec<Poll>, Vec<Arc<str>>);

    /// A cluster hub at entry `1-0` of epoch `ep`, and its stream's names.
    fn cluster_hub() -> ClusterHub {
        let (hub, inboxes, polls) = hub(1);
        let names = hub.subscribe(&topics(&["t"]), None).unwrap().names;
        hub.append_entry(EventId::entry(1, 0), "ep", "t", None, "first");
        drain(&inboxes[0]);
        (hub, inboxes, polls, names)
    }

    /// Parks a resume of `names` from entry `ms-0`, which this hub has not read yet.
    fn park(hub: &Hub, key: usize, names: &[Arc<str>], ms: u64) {
        let id = EventId::entry(ms, 0);
        let ticket = Ticket { key, serial: 1 };
        hub.replay(0, ticket, names, Cursor::resume(id, id), 1 << 20);
    }

    #[test]
    fn appends_look_only_at_waiters_now_due_and_the_rest_wait_for_their_id_or_deadline() {
        let (hub, inboxes, _polls, names) = cluster_hub();
        // Resumes from ids another node handed out, far ahead of this one.
        let parked = 1000;
        for key in 0..parked {
            park(&hub, key, &names, 1_000 + key as u64);
        }
        let before = hub.waiters_examined();
        let appends = 100;
        for ms in 2..2 + appends {
            hub.append_entry(EventId::entry(ms, 0), "ep", "t", None, "x");
        }
        let examined = hub.waiters_examined() - before;
        // One look at the first waiter in each of the two orders per append, whatever their
        // number.
        assert!(
            examined <= 2 * appends,
            "{appends} appends looked at {examined} waiters; none was due"
        );
        assert!(replay_steps(&inboxes[0]).is_empty());
        // The first one's id arrives: that one is answered, from its id on (no reset).
        hub.append_entry(EventId::entry(1_000, 0), "ep", "t", None, "due");
        assert_eq!(replay_steps(&inboxes[0]), vec![(0, None)]);
        // The others are told `reset` (unknown) once their time is over, not before.
        hub.expire_at(Instant::now());
        assert!(replay_steps(&inboxes[0]).is_empty());
        hub.expire_at(Instant::now() + CATCH_UP);
        let expired = replay_steps(&inboxes[0]);
        assert_eq!(expired.len(), parked - 1);
        for (key, reset) in expired {
            let reset = reset.unwrap_or_else(|| panic!("waiter {key} got no reset"));
            assert!(reset.contains("\"reason\":\"unknown\""), "{reset}");
        }
    }

    #[test]
    fn at_most_waiting_max_resumes_wait_and_the_next_is_told_unknown_at_once() {
        let (hub, inboxes, _polls, names) = cluster_hub();
        for key in 0..WAITING_MAX {
            park(&hub, key, &names, 1_000);
        }
        assert!(replay_steps(&inboxes[0]).is_empty());
        park(&hub, WAITING_MAX, &names, 1_000);
        let refused = replay_steps(&inboxes[0]);
        assert_eq!(refused.len(), 1, "the one over the cap is answered at once");
        let (key, reset) = &refused[0];
        assert_eq!(*key, WAITING_MAX);
        assert!(
            reset
                .as_deref()
                .is_some_and(|r| r.contains("\"reason\":\"unknown\"")),
            "{reset:?}"
        );
        assert_eq!(hub.waiting(), (WAITING_MAX, 1));
    }
}
