//! The node's kept events: each topic's last frames for `Last-Event-ID` replay, under one
//! node-wide byte budget, and the replay cursor that walks them; and the records of the topics
//! streams subscribe to, under a budget of their own. Pure: the hub holds it under its lock;
//! no sockets, no clock reads (the caller passes `now`).
//!
//! # What memory it may hold
//!
//! Two budgets, so that subscribers cannot spend what events need. The history's
//! ([`History::bytes`], `--history-bytes`) is spent on events: each kept frame's encoded length
//! plus [`FRAME_COST`] for its bookkeeping, and the record (name plus [`TOPIC_COST`]) of each
//! topic that keeps frames and has no subscriber, which goes with its last frame. Past the
//! budget the oldest frame of the node goes first, whatever its topic; a topic left with no
//! frame and no subscriber is forgotten at once, and one with no subscriber and no publish for
//! the idle period is forgotten by [`History::forget_idle`]. So a publisher inventing topic
//! names, or a body of newlines, costs at most the budget.
//!
//! The records of subscribed topics are charged to the topic budget ([`History::topic_bytes`],
//! `--topic-bytes`) instead: no eviction can free them while a stream carries them, so in the
//! history's budget enough of them (anonymous streams asking for unique names) would leave no
//! room for any event. A record moves to the topic budget with its topic's first subscriber and
//! back to the history's with its last (or is forgotten, when it keeps no frame). A stream whose
//! topics would need more room than the topic budget has left is refused as a whole
//! ([`TopicsFull`]; the shard sheds it); a topic that streams already carry costs nothing more
//! to join.
//!
//! # What a resume may miss
//!
//! Each topic remembers the newest id it evicted; the node remembers the newest id of any
//! topic it forgot (`forgotten_through`), and a topic created later starts from that mark.
//! A resume from before a mark is told `reset` (expired): the count of what it lost is
//! unknown, but it is never silence.
//!
//! # Replay in steps
//!
//! A resuming stream does not get its replay as one copy. [`History::start_replay`] decides
//! the `reset` notice and returns a [`Cursor`]; [`History::replay_batch`] then yields the
//! next frames after it, in id order across the stream's topics, up to a byte budget (the
//! room in the stream's queue). The shard asks for the next batch as the socket drains, so a
//! replay never holds more than `--client-buffer` of queue, and each batch is bounded work
//! (a binary search and a merge over at most 32 topics).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use crate::wire::event_id::EventId;
use crate::wire::sse::{self, ResetReason};

/// Bookkeeping charged per kept frame besides its bytes: its slot in the topic's queue
/// (id + `Bytes`, 48 B), its slot in the node's age order (24 B), and the frame
/// allocation's own header (about 56 B).
pub const FRAME_COST: usize = 128;

/// Bookkeeping charged per topic besides its name: the map entry, the topic record, its
/// queue's first allocation and the name's allocation header.
pub const TOPIC_COST: usize = 384;

/// Which budget a topic's record is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    /// The history's: the topic keeps frames and has no subscriber, and goes with its frames.
    History,
    /// The topic budget's: streams carry it (or, just imported, the streams handed over with
    /// it are about to subscribe again).
    Topics,
}

/// A subscription refused: the topic budget (`--topic-bytes`) has no room for the records of
/// the stream's topics that no stream carries yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicsFull;

/// What a topic's record is charged: its name and [`TOPIC_COST`].
fn record_cost(name: &str) -> usize {
    name.len().saturating_add(TOPIC_COST)
}

/// The per-topic record.
#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    /// The budget its record is charged to.
    charge: Charge,
    /// The last frames published here, oldest first.
    kept: VecDeque<(EventId, Bytes)>,
    /// The newest id evicted from `kept`, or the node's forgotten mark when created.
    evicted_through: EventId,
    /// Streams carrying this topic, node-wide.
    subscribers: usize,
    /// The last publish, or when the last subscriber left.
    last_used: Instant,
}

/// Every topic's kept frames, under one budget.
#[derive(Debug)]
pub struct History {
    by_name: HashMap<Arc<str>, usize>,
    topics: Slab<Topic>,
    /// Every kept frame as (id, topic slot), oldest first; entries whose frame already left
    /// (its topic's own cap evicted it) are skipped when met, and compacted away in bulk.
    age: VecDeque<(EventId, u32)>,
    /// Frames kept across all topics (the live entries of `age`).
    frames: usize,
    /// Frames kept per topic.
    per_topic: usize,
    /// Bytes charged to the history now (frames, and records of unsubscribed topics), and
    /// the most allowed.
    bytes: usize,
    budget: usize,
    /// Bytes charged to the topic budget now (records of subscribed topics), and the most
    /// allowed.
    topic_bytes: usize,
    topic_budget: usize,
    /// The newest id of any forgotten topic.
    forgotten_through: EventId,
    /// Frames evicted since start (by a topic's cap, the budget, or forgetting).
    evicted: u64,
}

/// Where a stream's replay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last id replayed (or the one resumed from).
    after: EventId,
    /// Evictions up to this id were already announced with a `reset`.
    announced: EventId,
    /// Entries of the cluster's stream this replay has walked in Redis so far, over all its
    /// steps: a resume may walk at most `--replay-scan` (see [`crate::broker::replay`]).
    scanned: u32,
}

/// The start of a resume.
#[derive(Debug)]
pub struct ReplayStart {
    /// A `reset` notice to send first, when the replay cannot start where asked.
    pub reset: Option<Bytes>,
    /// Where to go on from.
    pub cursor: Cursor,
}

/// The next part of a replay.
#[derive(Debug, Default)]
pub struct Batch {
    /// A `reset` notice to send first: frames after the cursor were evicted meanwhile.
    pub reset: Option<Bytes>,
    /// Frames in id order.
    pub frames: Vec<Bytes>,
    /// Nothing is left after these: the stream goes live after `through`.
    pub done: bool,
}

impl Cursor {
    /// A cursor handed over by the node's previous process: after `after`, with evictions
    /// up to `announced` already told.
    pub fn resume(after: EventId, announced: EventId) -> Cursor {
        Cursor {
            after,
            announced,
            scanned: 0,
        }
    }

    /// Evictions up to this id were already announced.
    pub fn announced(&self) -> EventId {
        self.announced
    }

    /// The last id replayed (or the one resumed from).
    pub fn after(&self) -> EventId {
        self.after
    }

    /// Moves past `id`, replayed from elsewhere (Redis) or not this stream's.
    pub fn advance(&mut self, id: EventId) {
        self.after = self.after.max(id);
    }

    /// Entries walked in Redis so far (see [`Cursor::count_scanned`]).
    pub fn scanned(&self) -> u32 {
        self.scanned
    }

    /// Counts `n` more entries walked in Redis.
    pub fn count_scanned(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.scanned = self.scanned.saturating_add(n);
    }
}

/// The history as the node's next process rebuilds it ([`History::image`],
/// [`History::import`]): delivery's own image of its state, which the hand-over
/// (`node/handover/wire.rs`) serialises, so that delivery never imports the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryImage {
    /// The newest id of any topic forgotten.
    pub forgotten_through: EventId,
    /// Each topic known: its name and the newest id it evicted.
    pub topics: Vec<(String, EventId)>,
    /// Kept frames in id order: id, index into `topics`, the encoded frame.
    pub frames: Vec<(EventId, u32, Bytes)>,
}

impl History {
    /// An empty history keeping `per_topic` frames per topic within `budget` bytes, and the
    /// records of subscribed topics within `topic_budget` bytes.
    pub fn new(per_topic: usize, budget: usize, topic_budget: usize) -> History {
        History {
            by_name: HashMap::new(),
            topics: Slab::new(),
            age: VecDeque::new(),
            frames: 0,
            per_topic,
            bytes: 0,
            budget,
            topic_bytes: 0,
            topic_budget,
            forgotten_through: EventId::ZERO,
            evicted: 0,
        }
    }

    /// Bytes charged to the history: kept frames, their bookkeeping, and the records of
    /// topics that keep frames and have no subscriber. At most the history's budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes charged to the topic budget: the records of subscribed topics. At most the
    /// topic budget.
    pub fn topic_bytes(&self) -> usize {
        self.topic_bytes
    }

    /// Topics known: subscribed to, or with kept frames.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Streams subscribed to `topic` on this node.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.by_name
            .get(topic)
            .map_or(0, |&slot| self.topics[slot].subscribers)
    }

    /// Frames evicted or forgotten since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The topic's record, created if new (charged to the history: a publish made it).
    fn topic(&mut self, name: &str, now: Instant) -> usize {
        match self.by_name.get(name) {
            Some(&slot) => slot,
            None => self.create(name, now, Charge::History),
        }
    }

    /// The account a charge is kept in.
    fn account(&mut self, charge: Charge) -> &mut usize {
        match charge {
            Charge::History => &mut self.bytes,
            Charge::Topics => &mut self.topic_bytes,
        }
    }

    /// Whether the topic budget has room for `more` bytes.
    fn topic_room(&self, more: usize) -> bool {
        self.topic_bytes
            .checked_add(more)
            .is_some_and(|n| n <= self.topic_budget)
    }

    /// A new record for `name`, charged to `charge` (the caller checked for room).
    fn create(&mut self, name: &str, now: Instant, charge: Charge) -> usize {
        let name: Arc<str> = Arc::from(name);
        *self.account(charge) += record_cost(&name);
        let slot = self.topics.insert(Topic {
            name: name.clone(),
            charge,
            kept: VecDeque::new(),
            evicted_through: self.forgotten_through,
            subscribers: 0,
            last_used: now,
        });
        self.by_name.insert(name, slot);
        slot
    }

    /// Moves topic `slot`'s record to the `to` charge (the caller checked for room).
    fn recharge(&mut self, slot: usize, to: Charge) {
        let Some(t) = self.topics.get_mut(slot) else {
            return;
        };
        let from = std::mem::replace(&mut t.charge, to);
        if from != to {
            let cost = record_cost(&t.name);
            *self.account(from) -= cost;
            *self.account(to) += cost;
        }
    }

    /// Keeps event `id`'s `frame` in `topic`; returns the topic's shared name and its
    /// subscribers. Evicts what the per-topic cap and the budget no longer allow.
    pub fn record(
        &mut self,
        topic: &str,
        id: EventId,
        frame: &Bytes,
        now: Instant,
    ) -> (Arc<str>, usize) {
        let slot = self.topic(topic, now);
        let per_topic = self.per_topic;
        let t = &mut self.topics[slot];
        t.last_used = now;
        let shared = (t.name.clone(), t.subscribers);
        if per_topic == 0 {
            t.evicted_through = id;
            self.evicted += 1;
            // Nothing kept: an unsubscribed topic would be a record with no frame to evict.
            self.forget_if_unused(slot);
        } else {
            t.kept.push_back((id, frame.clone()));
            self.bytes += frame.len() + FRAME_COST;
            self.frames += 1;
            self.age.push_back((id, slot as u32));
            if t.kept.len() > per_topic {
                self.evict_front(slot);
            }
        }
        self.enforce_budget();
        self.compact_age();
        // A topic with no subscriber whose only frame the budget just took is gone; the
        // caller still gets its name for this one delivery.
        shared
    }

    /// Removes the oldest frame of topic `slot`.
    fn evict_front(&mut self, slot: usize) {
        let t = &mut self.topics[slot];
        if let Some((id, frame)) = t.kept.pop_front() {
            t.evicted_through = t.evicted_through.max(id);
            self.bytes -= frame.len() + FRAME_COST;
            self.frames -= 1;
            self.evicted += 1;
        }
    }

    /// Evicts the node's oldest frames until the charge is within the budget, forgetting
    /// topics left with nothing.
    fn enforce_budget(&mut self) {
        while self.bytes > self.budget {
            let Some((id, slot)) = self.age.pop_front() else {
                return; // no frame left; every record charged here goes with its last frame
            };
            let slot = slot as usize;
            let live = self
                .topics
                .get(slot)
                .is_some_and(|t| t.kept.front().is_some_and(|(front, _)| *front == id));
            if !live {
                continue; // already evicted by its topic's cap
            }
            self.evict_front(slot);
            self.forget_if_unused(slot);
        }
    }

    /// Drops `age` entries of frames already gone once they outnumber the live ones, so a
    /// topic's own cap cannot grow the age order without bound.
    fn compact_age(&mut self) {
        if self.age.len() > 2 * self.frames + 1024 {
            let topics = &self.topics;
            self.age.retain(|&(id, slot)| {
                topics
                    .get(slot as usize)
                    .is_some_and(|t| t.kept.front().is_some_and(|(front, _)| *front <= id))
            });
        }
    }

    /// Forgets topic `slot` if it has no frame and no subscriber.
    fn forget_if_unused(&mut self, slot: usize) {
        if self
            .topics
            .get(slot)
            .is_some_and(|t| t.kept.is_empty() && t.subscribers == 0)
        {
            self.forget(slot);
        }
    }

    fn forget(&mut self, slot: usize) {
        let t = self.topics.remove(slot);
        let newest = t.kept.back().map_or(t.evicted_through, |(id, _)| *id);
        self.forgotten_through = self.forgotten_through.max(newest);
        for (_, frame) in &t.kept {
            self.bytes -= frame.len() + FRAME_COST;
            self.frames -= 1;
            self.evicted += 1;
        }
        *self.account(t.charge) -= record_cost(&t.name);
        self.by_name.remove(&t.name);
    }

    /// Drops every kept frame and every eviction mark, keeping the topics and their
    /// subscribers: the cluster's events started a new epoch, and ids of the old one mean
    /// nothing next to the new ones (a resume with one is told `reset`, unknown).
    pub fn restart(&mut self) {
        for (_, t) in self.topics.iter_mut() {
            for (_, frame) in t.kept.drain(..) {
                self.bytes -= frame.len() + FRAME_COST;
                self.evicted += 1;
            }
            t.evicted_through = EventId::ZERO;
        }
        self.frames = 0;
        self.age.clear();
        self.forgotten_through = EventId::ZERO;
        let forgettable: Vec<usize> = self
            .topics
            .iter()
            .filter(|(_, t)| t.subscribers == 0)
            .map(|(slot, _)| slot)
            .collect();
        for slot in forgettable {
            self.forget(slot);
        }
        self.forgotten_through = EventId::ZERO;
    }

    /// Everything kept, for the node's next process ([`History::import`]).
    pub fn image(&self) -> HistoryImage {
        let mut index = HashMap::with_capacity(self.topics.len());
        let mut topics = Vec::with_capacity(self.topics.len());
        for (slot, t) in &self.topics {
            index.insert(slot, topics.len() as u32);
            topics.push((t.name.to_string(), t.evicted_through));
        }
        let mut frames: Vec<(EventId, u32, Bytes)> = Vec::with_capacity(self.frames);
        for (slot, t) in &self.topics {
            let i = index.get(&slot).copied().unwrap_or_default();
            frames.extend(t.kept.iter().map(|(id, frame)| (*id, i, frame.clone())));
        }
        frames.sort_unstable_by_key(|(id, _, _)| *id);
        HistoryImage {
            forgotten_through: self.forgotten_through,
            topics,
            frames,
        }
    }

    /// Takes over what the node's previous process kept (into an empty history). This
    /// process's own caps apply: a smaller `--history` keeps fewer.
    ///
    /// The topics `held` by the streams handed over with the image are charged to the topic
    /// budget while it has room, ready for those streams to subscribe again (in the history's
    /// budget they would evict frames meanwhile); one that none takes up after all is
    /// forgotten like any idle topic ([`History::forget_idle`]), or with its last frame. The
    /// other topics go to the history's budget with their frames, or are forgotten (their
    /// marks kept in the node's) when they have none.
    pub fn import(&mut self, image: HistoryImage, held: &HashSet<&str>, now: Instant) {
        self.forgotten_through = self.forgotten_through.max(image.forgotten_through);
        let mut beyond = Vec::new();
        for (name, evicted) in &image.topics {
            let slot = match self.by_name.get(name.as_str()) {
                Some(&slot) => slot,
                None if held.contains(name.as_str()) && self.topic_room(record_cost(name)) => {
                    self.create(name, now, Charge::Topics)
                }
                None => {
                    beyond.push((name.as_str(), *evicted));
                    continue;
                }
            };
            let t = &mut self.topics[slot];
            t.evicted_through = t.evicted_through.max(*evicted);
        }
        for (id, topic, frame) in image.frames {
            if let Some((name, _)) = image.topics.get(topic as usize) {
                self.record(name, id, &frame, now);
            }
        }
        for (name, evicted) in beyond {
            match self.by_name.get(name) {
                Some(&slot) => {
                    let t = &mut self.topics[slot];
                    t.evicted_through = t.evicted_through.max(evicted);
                }
                None => self.forgotten_through = self.forgotten_through.max(evicted),
            }
        }
    }

    /// Counts one more stream on each of `names`; returns their shared names, in order.
    ///
    /// Refused as a whole, changing nothing, when the records of the topics no stream carries
    /// yet do not fit the topic budget: the caller sheds the stream.
    pub fn subscribe(
        &mut self,
        names: &[String],
        now: Instant,
    ) -> Result<Vec<Arc<str>>, TopicsFull> {
        let mut needed: usize = 0;
        for (i, name) in names.iter().enumerate() {
            let carried = self
                .by_name
                .get(name.as_str())
                .is_some_and(|&slot| self.topics[slot].charge == Charge::Topics);
            if !carried && !names.iter().take(i).any(|earlier| earlier == name) {
                needed = needed.saturating_add(record_cost(name));
            }
        }
        if !self.topic_room(needed) {
            return Err(TopicsFull);
        }
        let shared = names
            .iter()
            .map(|name| {
                let slot = match self.by_name.get(name.as_str()) {
                    Some(&slot) => slot,
                    None => self.create(name, now, Charge::Topics),
                };
                // Its record leaves the history's budget, if it was there: nothing can evict
                // it while a stream carries it.
                self.recharge(slot, Charge::Topics);
                let t = &mut self.topics[slot];
                t.subscribers += 1;
                t.name.clone()
            })
            .collect();
        Ok(shared)
    }

    /// Counts one stream fewer on each of `names`. A topic left without subscribers is
    /// forgotten if it keeps no frame; otherwise its record goes back to the history's budget,
    /// evictable with its frames.
    pub fn unsubscribe<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, now: Instant) {
        let mut recharged = false;
        for name in names {
            let Some(&slot) = self.by_name.get(name) else {
                continue;
            };
            let t = &mut self.topics[slot];
            t.subscribers = t.subscribers.saturating_sub(1);
            if t.subscribers == 0 {
                t.last_used = now;
                if t.kept.is_empty() {
                    self.forget(slot);
                } else {
                    self.recharge(slot, Charge::History);
                    recharged = true;
                }
            }
        }
        if recharged {
            self.enforce_budget();
        }
    }

    /// Forgets every topic with no subscriber and no publish for `idle`; returns how many.
    ///
    /// Walks all topics: call it every few seconds, not per event (the budget bounds how
    /// many topics there can be).
    pub fn forget_idle(&mut self, now: Instant, idle: Duration) -> usize {
        let stale: Vec<usize> = self
            .topics
            .iter()
            .filter(|(_, t)| {
                t.subscribers == 0 && now.saturating_duration_since(t.last_used) >= idle
            })
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &stale {
            self.forget(slot);
        }
        stale.len()
    }

    /// Starts a resume of `names` after `requested` (a `Last-Event-ID`), given the last id
    /// handed out. The stream must already be subscribed to `names`.
    ///
    /// An id that does not parse (or, with `ahead_ok` false, is newer than `last_id`) is
    /// unknown: `reset` (unknown) and all that is kept. An id older than what some topic
    /// evicted: `reset` (expired) and what is kept. In cluster mode (`ahead_ok`) an id newer
    /// than `last_id` was handed out by a node ahead of this one: the cursor starts there and
    /// the replay waits for this node to catch up.
    pub fn start_replay(
        &self,
        names: &[Arc<str>],
        requested: &str,
        last_id: EventId,
        epoch: Option<&str>,
        ahead_ok: bool,
    ) -> ReplayStart {
        let known = EventId::parse_wire(requested, epoch).filter(|&id| ahead_ok || id <= last_id);
        let after = known.unwrap_or(EventId::ZERO);
        let evicted = self.evicted_through(names);
        let reason = match known {
            None => Some(ResetReason::Unknown),
            // In cluster mode Redis may still hold what this node evicted: the first step
            // that finds it gone says so (nothing is announced yet).
            Some(_) if evicted > after && ahead_ok => {
                return ReplayStart {
                    reset: None,
                    cursor: Cursor {
                        after,
                        announced: after,
                        scanned: 0,
                    },
                }
            }
            Some(_) if evicted > after => Some(ResetReason::Expired),
            Some(_) => None,
        };
        ReplayStart {
            reset: reason
                .map(|r| sse::encode_reset(r, requested, self.oldest(names, after), epoch)),
            cursor: Cursor {
                after,
                announced: evicted,
                scanned: 0,
            },
        }
    }

    /// Whether what `names` kept reaches back to `cursor` (or its loss was announced).
    pub fn covers(&self, names: &[Arc<str>], cursor: &Cursor) -> bool {
        self.evicted_through(names) <= cursor.after.max(cursor.announced)
    }

    /// Gives up on a cursor that waited for ids this node never saw: `reset` (unknown), and
    /// the replay starts again from everything kept.
    pub fn give_up(&self, names: &[Arc<str>], cursor: &mut Cursor, epoch: Option<&str>) -> Bytes {
        let requested = cursor.after.wire(epoch).to_string();
        cursor.after = EventId::ZERO;
        cursor.announced = self.evicted_through(names);
        sse::encode_reset(
            ResetReason::Unknown,
            &requested,
            self.oldest(names, EventId::ZERO),
            epoch,
        )
    }

    /// The newest id evicted (or forgotten) from any of `names`.
    fn evicted_through(&self, names: &[Arc<str>]) -> EventId {
        names
            .iter()
            .map(|n| {
                self.by_name
                    .get(n)
                    .map_or(self.forgotten_through, |&s| self.topics[s].evicted_through)
            })
            .max()
            .unwrap_or(EventId::ZERO)
    }

    /// The oldest id kept after `after` in any of `names`.
    fn oldest(&self, names: &[Arc<str>], after: EventId) -> Option<EventId> {
        names
            .iter()
            .filter_map(|n| self.by_name.get(n))
            .filter_map(|&s| {
                let kept = &self.topics[s].kept;
                let at = kept.partition_point(|(id, _)| *id <= after);
                kept.get(at).map(|(id, _)| *id)
            })
            .min()
    }

    /// The next frames after `cursor` over `names`, in id order, up to `room` bytes (always
    /// at least one frame when `room` is 0 and the caller's queue is empty: pass `room` of
    /// at least one byte for that). Advances the cursor.
    pub fn replay_batch(
        &self,
        names: &[Arc<str>],
        cursor: &mut Cursor,
        room: usize,
        epoch: Option<&str>,
    ) -> Batch {
        let mut batch = Batch::default();
        let evicted = self.evicted_through(names);
        if evicted > cursor.after.max(cursor.announced) {
            // Frames after the cursor left while the stream was draining the previous batch.
            batch.reset = Some(sse::encode_reset(
                ResetReason::Expired,
                &cursor.after.wire(epoch).to_string(),
                self.oldest(names, cursor.after),
                epoch,
            ));
            cursor.announced = evicted;
        }
        // One position per topic, then a merge: at most 32 topics per stream.
        let mut heads: Vec<(&VecDeque<(EventId, Bytes)>, usize)> = names
            .iter()
            .filter_map(|n| self.by_name.get(n))
            .map(|&s| {
                let kept = &self.topics[s].kept;
                (kept, kept.partition_point(|(id, _)| *id <= cursor.after))
            })
            .collect();
        let mut used = batch.reset.as_ref().map_or(0, Bytes::len);
        loop {
            let next = heads
                .iter_mut()
                .filter_map(|(kept, at)| kept.get(*at).map(|entry| (entry, at)))
                .min_by_key(|((id, _), _)| *id);
            let Some(((id, frame), at)) = next else {
                batch.done = true;
                return batch;
            };
            let fits = used.checked_add(frame.len()).is_some_and(|n| n <= room);
            if !fits && !batch.frames.is_empty() {
                return batch;
            }
            if !fits && used > 0 {
                return batch; // the reset notice alone fills this step
            }
            used = used.saturating_add(frame.len());
            batch.frames.push(frame.clone());
            cursor.after = *id;
            *at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, len: usize) -> Bytes {
        let mut f = format!("id: {id}\ndata: ").into_bytes();
        f.resize(len.max(f.len() + 2) - 2, b'x');
        f.extend_from_slice(b"\n\n");
        Bytes::from(f)
    }

    #[test]
    fn an_imported_history_replays_and_resets_as_the_original_did() {
        let now = Instant::now();
        let mut old = History::new(2, 1 << 20, 1 << 20);
        old.subscribe(&["a".into(), "b".into()], now).unwrap();
        for id in 1..=5u64 {
            let topic = if id % 2 == 0 { "a" } else { "b" };
            old.record(topic, EventId::local(id), &frame(id, 20), now);
        }
        let mut new = History::new(2, 1 << 20, 1 << 20);
        new.import(old.image(), &HashSet::from(["a", "b"]), now);
        // The subscribed topics' records wait in the topic budget for their streams.
        let charged = |h: &History| (h.frames, h.bytes, h.topic_bytes);
        assert_eq!(charged(&new), charged(&old));
        let names = new.subscribe(&["a".into(), "b".into()], now).unwrap();
        assert_eq!(charged(&new), charged(&old));
        for after in 0..=5 {
            let (mut c1, mut c2) = (
                Cursor::resume(EventId::local(after), EventId::ZERO),
                Cursor::resume(EventId::local(after), EventId::ZERO),
            );
            let b1 = old.replay_batch(&names, &mut c1, 1 << 20, None);
            let b2 = new.replay_batch(&names, &mut c2, 1 << 20, None);
            assert_eq!(
                (b1.frames, b1.reset, c1),
                (b2.frames, b2.reset, c2),
                "after {after}"
            );
        }
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

    fn names(h: &mut History, list: &[&str]) -> Vec<Arc<str>> {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        h.subscribe(&list, Instant::now()).unwrap()
    }

    fn all(h: &History, names: &[Arc<str>], cursor: &mut Cursor) -> Vec<u64> {
        let batch = h.replay_batch(names, cursor, usize::MAX, None);
        assert!(batch.done);
        ids(&batch.frames)
    }

    fn text(b: &Option<Bytes>) -> String {
        String::from_utf8(b.as_ref().expect("a notice").to_vec()).unwrap()
    }

    #[test]
    fn replay_merges_topics_in_id_order_after_the_cursor() {
        let mut h = History::new(8, 1 << 20, 1 << 20);
        let now = Instant::now();
        let n = names(&mut h, &["a", "b"]);
        for (id, t) in [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")] {
            h.record(t, EventId::local(id), &frame(id, 30), now);
        }
        let start = h.start_replay(&n, "1", EventId::local(5), None, false);
        assert!(start.reset.is_none());
        let mut c = start.cursor;
        assert_eq!(all(&h, &n, &mut c), vec![2, 4, 5]);
        assert_eq!(all(&h, &n, &mut c), Vec::<u64>::new());
    }

    #[test]
    fn batches_fit_the_room_and_always_make_progress() {
        let mut h = History::new(100, 1 << 20, 1 << 20);
        let n = names(&mut h, &["t"]);
        for id in 1..=10 {
            h.record("t", EventId::local(id), &frame(id, 100), Instant::now());
        }
        let mut c = h
            .start_replay(&n, "0", EventId::local(10), None, false)
            .cursor;
        let b = h.replay_batch(&n, &mut c, 250, None);
        assert_eq!((ids(&b.frames), b.done), (vec![1, 2], false));
        // A frame larger than the room still goes alone, or the replay would stall.
        let b = h.replay_batch(&n, &mut c, 10, None);
        assert_eq!((ids(&b.frames), b.done), (vec![3], false));
        let b = h.replay_batch(&n, &mut c, usize::MAX, None);
        assert_eq!((ids(&b.frames), b.done), ((4..=10).collect(), true));
    }

    #[test]
    fn an_id_older_than_the_per_topic_cap_is_an_expired_reset() {
        let mut h = History::new(4, 1 << 20, 1 << 20);
        let n = names(&mut h, &["t"]);
        for id in 1..=10 {
            h.record("t", EventId::local(id), &frame(id, 30), Instant::now());
        }
        let start = h.start_replay(&n, "2", EventId::local(10), None, false);
        assert_eq!(
            text(&start.reset),
            "event: reset\ndata: {\"reason\":\"expired\",\"requested\":\"2\",\"oldest\":\"7\"}\n\n"
        );
        let mut c = start.cursor;
        assert_eq!(all(&h, &n, &mut c), vec![7, 8, 9, 10]);
        // Exactly at the edge of what is kept: nothing was lost.
        let start = h.start_replay(&n, "6", EventId::local(10), None, false);
        assert!(start.reset.is_none());
    }

    #[test]
    fn unknown_ids_get_an_unknown_reset_and_everything_kept() {
        let mut h = History::new(4, 1 << 20, 1 << 20);
        let n = names(&mut h, &["t"]);
        h.record("t", EventId::local(1), &frame(1, 30), Instant::now());
        for bad in ["abc", "99", "-1", ""] {
            let start = h.start_replay(&n, bad, EventId::local(1), None, false);
            assert!(
                text(&start.reset).contains("\"reason\":\"unknown\""),
                "{bad}"
            );
            let mut c = start.cursor;
            assert_eq!(all(&h, &n, &mut c), vec![1]);
        }
        let empty = names(&mut h, &["empty"]);
        assert!(text(
            &h.start_replay(&empty, "x", EventId::local(1), None, false)
                .reset
        )
        .contains("\"oldest\":null"));
    }

    #[test]
    fn the_budget_evicts_the_oldest_frames_of_the_node_first() {
        let cost = 100 + FRAME_COST;
        // Three frames and b's record: a's is charged to the topic budget (it has a stream).
        let budget = 3 * cost + (1 + TOPIC_COST);
        let mut h = History::new(1000, budget, 1 << 20);
        let now = Instant::now();
        let n = names(&mut h, &["a"]);
        h.record("a", EventId::local(1), &frame(1, 100), now);
        h.record("b", EventId::local(2), &frame(2, 100), now);
        h.record("a", EventId::local(3), &frame(3, 100), now);
        assert_eq!(h.bytes(), budget);
        h.record("a", EventId::local(4), &frame(4, 100), now);
        // 1 went first: the oldest of the node.
        assert_eq!(h.topics(), 2);
        h.record("a", EventId::local(5), &frame(5, 100), now);
        // Then 2, whose topic "b" had no subscriber and nothing left: forgotten.
        assert_eq!(h.topics(), 1);
        let start = h.start_replay(&n, "0", EventId::local(5), None, false);
        assert!(text(&start.reset).contains("expired"));
        let mut c = start.cursor;
        assert_eq!(all(&h, &n, &mut c), vec![3, 4, 5]);
        // "b" was forgotten with id 2 in it: a resume on it from before 2 is told.
        let b = names(&mut h, &["b"]);
        assert!(text(
            &h.start_replay(&b, "1", EventId::local(5), None, false)
                .reset
        )
        .contains("expired"));
        assert!(h
            .start_replay(&b, "2", EventId::local(5), None, false)
            .reset
            .is_none());
    }

    #[test]
    fn many_distinct_topics_stay_within_the_budget() {
        let budget = 64 << 10;
        let mut h = History::new(1024, budget, 1 << 20);
        for id in 1..=20_000u64 {
            h.record(
                &format!("topic-{id}"),
                EventId::local(id),
                &frame(id, 200),
                Instant::now(),
            );
            assert!(h.bytes() <= budget, "{} > {budget} at {id}", h.bytes());
        }
        assert!(h.topics() < budget / TOPIC_COST);
        assert!(h.evicted() > 19_000);
    }

    #[test]
    fn a_topic_cap_cannot_grow_the_age_order_without_bound() {
        let mut h = History::new(2, 1 << 30, 1 << 20);
        for id in 1..=100_000 {
            h.record("t", EventId::local(id), &frame(id, 20), Instant::now());
        }
        assert!(h.age.len() <= 2 * h.frames + 1024);
        assert_eq!(h.frames, 2);
    }

    #[test]
    fn eviction_during_a_replay_is_announced_once_and_the_replay_goes_on() {
        let mut h = History::new(4, 1 << 20, 1 << 20);
        let n = names(&mut h, &["t"]);
        for id in 1..=4 {
            h.record("t", EventId::local(id), &frame(id, 30), Instant::now());
        }
        let mut c = h
            .start_replay(&n, "0", EventId::local(4), None, false)
            .cursor;
        let b = h.replay_batch(&n, &mut c, 40, None);
        assert_eq!(ids(&b.frames), vec![1]);
        for id in 5..=8 {
            h.record("t", EventId::local(id), &frame(id, 30), Instant::now());
        }
        let b = h.replay_batch(&n, &mut c, usize::MAX, None);
        let reset = text(&b.reset);
        assert!(
            reset.contains("\"reason\":\"expired\",\"requested\":\"1\",\"oldest\":\"5\""),
            "{reset}"
        );
        assert_eq!((ids(&b.frames), b.done), (vec![5, 6, 7, 8], true));
        let b = h.replay_batch(&n, &mut c, usize::MAX, None);
        assert!(b.reset.is_none() && b.frames.is_empty() && b.done);
    }

    #[test]
    fn idle_topics_are_forgotten_unless_subscribed() {
        let mut h = History::new(4, 1 << 20, 1 << 20);
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        names(&mut h, &["kept"]);
        h.record("kept", EventId::local(1), &frame(1, 30), t0);
        h.record("gone", EventId::local(2), &frame(2, 30), t0);
        assert_eq!(h.forget_idle(t0 + idle / 2, idle), 0);
        assert_eq!(h.forget_idle(t0 + idle, idle), 1);
        assert_eq!(h.topics(), 1);
        assert_eq!(
            (h.bytes(), h.topic_bytes()),
            (30 + FRAME_COST, 4 + TOPIC_COST)
        );
        // Leaving starts its idle clock; it keeps its frames until then, its record charged
        // to the history with them.
        h.unsubscribe(["kept"], t0 + idle);
        assert_eq!(
            (h.bytes(), h.topic_bytes()),
            (4 + TOPIC_COST + 30 + FRAME_COST, 0)
        );
        assert_eq!(
            h.forget_idle(t0 + idle * 2 - Duration::from_secs(1), idle),
            0
        );
        assert_eq!(h.forget_idle(t0 + idle * 2, idle), 1);
        assert_eq!((h.topics(), h.bytes()), (0, 0));
    }

    #[test]
    fn a_topic_only_subscribed_to_leaves_no_trace() {
        let mut h = History::new(4, 1 << 20, 1 << 20);
        names(&mut h, &["x", "y"]);
        assert_eq!(h.topic_bytes(), 2 * (1 + TOPIC_COST));
        h.unsubscribe(["x", "y"], Instant::now());
        assert_eq!((h.topics(), h.bytes(), h.topic_bytes()), (0, 0, 0));
    }

    #[test]
    fn no_history_keeps_nothing_but_remembers_what_it_dropped() {
        let mut h = History::new(0, 1 << 20, 1 << 20);
        let n = names(&mut h, &["t"]);
        h.record("t", EventId::local(1), &frame(1, 30), Instant::now());
        let start = h.start_replay(&n, "0", EventId::local(1), None, false);
        assert!(text(&start.reset).contains("expired"));
    }

    #[test]
    fn no_history_forgets_an_unsubscribed_topic_at_once() {
        // A record with no frame to evict could otherwise pile up in the history's budget.
        let mut h = History::new(0, 64 << 10, 1 << 20);
        for id in 1..=1000u64 {
            h.record(
                &format!("t{id}"),
                EventId::local(id),
                &frame(id, 30),
                Instant::now(),
            );
        }
        assert_eq!((h.topics(), h.bytes()), (0, 0));
        assert_charges(&h);
    }

    /// Recomputes both charges from what is kept: they must equal the running sums, stay
    /// within their budgets, and put each record where its subscribers say.
    fn assert_charges(h: &History) {
        let (mut history, mut topics, mut frames) = (0, 0, 0);
        for (_, t) in &h.topics {
            frames += t.kept.len();
            history += t
                .kept
                .iter()
                .map(|(_, f)| f.len() + FRAME_COST)
                .sum::<usize>();
            match t.charge {
                Charge::History => {
                    history += record_cost(&t.name);
                    assert!(t.subscribers == 0 && !t.kept.is_empty(), "{t:?}");
                }
                Charge::Topics => {
                    topics += record_cost(&t.name);
                    assert!(t.subscribers > 0, "{t:?}");
                }
            }
        }
        assert_eq!(
            (h.bytes, h.topic_bytes, h.frames),
            (history, topics, frames)
        );
        assert!(h.bytes <= h.budget, "{} > {}", h.bytes, h.budget);
        assert!(
            h.topic_bytes <= h.topic_budget,
            "{} > {}",
            h.topic_bytes,
            h.topic_budget
        );
    }

    /// 32 unique names of 128 characters, as one hostile stream asks for.
    fn longest_topics(stream: usize) -> Vec<String> {
        (0..32)
            .map(|i| format!("{stream:05}-{i:02}-{}", "x".repeat(119)))
            .collect()
    }

    #[test]
    fn subscribers_cannot_evict_a_frame_nor_push_the_history_over_its_budget() {
        let (budget, topic_budget) = (64 << 10, 256 << 10);
        let mut h = History::new(1024, budget, topic_budget);
        let now = Instant::now();
        let watched = names(&mut h, &["default"]);
        h.record("default", EventId::local(1), &frame(1, 200), now);
        h.record("default", EventId::local(2), &frame(2, 200), now);
        let (mut admitted, mut refused) = (0, 0);
        for stream in 0..64 {
            let topics = longest_topics(stream);
            assert_eq!(topics[0].len(), 128);
            match h.subscribe(&topics, now) {
                Ok(_) => admitted += 1,
                Err(TopicsFull) => refused += 1,
            }
            assert!(h.bytes() <= budget, "{} > {budget}", h.bytes());
            assert_eq!((h.evicted(), h.frames), (0, 2));
            assert_charges(&h);
        }
        // 16 KiB of records per stream: the topic budget takes 15 of them besides "default".
        assert_eq!((admitted, refused), (15, 49));
        let start = h.start_replay(&watched, "1", EventId::local(2), None, false);
        assert!(start.reset.is_none());
        let mut cursor = start.cursor;
        assert_eq!(all(&h, &watched, &mut cursor), vec![2]);
    }

    #[test]
    fn a_stream_beyond_the_topic_budget_is_refused_whole_and_carried_topics_are_free() {
        let cost = record_cost("a");
        let mut h = History::new(16, 1 << 20, 3 * cost);
        let now = Instant::now();
        names(&mut h, &["a", "b"]);
        // "p" keeps a frame and has no subscriber: its record is the history's.
        h.record("p", EventId::local(1), &frame(1, 30), now);
        let before = (h.bytes(), h.topic_bytes(), h.topics());
        // "c" would fit, "c" and "d" do not: nothing of the stream is taken.
        let c_and_d = ["c".to_owned(), "d".to_owned()];
        assert_eq!(h.subscribe(&c_and_d, now), Err(TopicsFull));
        assert_eq!((h.bytes(), h.topic_bytes(), h.topics()), before);
        // A name asked for twice needs its record once.
        let twice = ["c".to_owned(), "c".to_owned()];
        assert!(h.subscribe(&twice, now).is_ok());
        h.unsubscribe(["c"], now);
        assert_eq!((h.topic_bytes(), h.subscribers("c")), (3 * cost, 1));
        // Full: topics streams carry are free to join; a new one, or one only published to,
        // is not.
        assert!(h.subscribe(&["a".to_owned(), "c".to_owned()], now).is_ok());
        assert_eq!(h.subscribe(&["e".to_owned()], now), Err(TopicsFull));
        assert_eq!(h.subscribe(&["p".to_owned()], now), Err(TopicsFull));
        assert_charges(&h);
        // Room again once the streams on "b" left.
        h.unsubscribe(["b"], now);
        assert!(h.subscribe(&["p".to_owned()], now).is_ok());
        assert_eq!(h.bytes(), 30 + FRAME_COST, "p's record left the history");
        assert_charges(&h);
    }

    #[test]
    fn a_topic_record_moves_between_the_charges_with_its_subscribers() {
        let now = Instant::now();
        let (record, kept) = (record_cost("t"), 30 + FRAME_COST);
        let mut h = History::new(16, 1 << 20, 1 << 20);
        h.record("t", EventId::local(1), &frame(1, 30), now);
        assert_eq!((h.bytes(), h.topic_bytes()), (record + kept, 0));
        names(&mut h, &["t"]);
        names(&mut h, &["t"]);
        assert_eq!((h.bytes(), h.topic_bytes()), (kept, record));
        h.unsubscribe(["t"], now);
        assert_eq!(
            (h.bytes(), h.topic_bytes()),
            (kept, record),
            "one stream is left"
        );
        h.unsubscribe(["t"], now);
        assert_eq!((h.bytes(), h.topic_bytes()), (record + kept, 0));
        assert_charges(&h);

        // Back in the history's budget, the record is evictable with the frames: here the
        // move itself passes the budget, and t's frame, the oldest, goes and t with it.
        let budget = record_cost("u") + 2 * kept;
        let mut h = History::new(16, budget, 1 << 20);
        let t = names(&mut h, &["t"]);
        h.record("t", EventId::local(1), &frame(1, 30), now);
        h.record("u", EventId::local(2), &frame(2, 30), now);
        assert_eq!(h.bytes(), budget);
        h.unsubscribe(["t"], now);
        assert_eq!((h.topics(), h.bytes()), (1, record_cost("u") + kept));
        assert_charges(&h);
        let start = h.start_replay(&t, "0", EventId::local(2), None, false);
        assert!(text(&start.reset).contains("expired"));
    }

    #[test]
    fn an_import_keeps_the_handed_over_streams_topics_ready_within_the_topic_budget() {
        let now = Instant::now();
        let mut old = History::new(4, 1 << 20, 1 << 20);
        let streams = ["held".to_owned(), "quiet".to_owned()];
        old.subscribe(&streams, now).unwrap();
        old.record("held", EventId::local(1), &frame(1, 30), now);
        old.record("loose", EventId::local(2), &frame(2, 30), now);
        // This process's topic budget has room for one of the two records.
        let mut new = History::new(4, 1 << 20, 64 << 10);
        new.topic_budget = record_cost("held");
        new.import(old.image(), &HashSet::from(["held", "quiet"]), now);
        // "held" waits in the topic budget; "loose" is the history's, with its frame; "quiet"
        // has neither room nor a frame: forgotten.
        assert_eq!(
            (new.topics(), new.topic_bytes(), new.bytes()),
            (
                2,
                record_cost("held"),
                record_cost("loose") + 2 * (30 + FRAME_COST)
            )
        );
        assert!(new.subscribe(&["held".to_owned()], now).is_ok());
        assert_eq!(new.subscribe(&["quiet".to_owned()], now), Err(TopicsFull));
        assert_charges(&new);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 6] = ["a", "bb", "ccc", "dddddddd", "e-e-e-e-e-e-e-e", "f"];
        const PER_TOPIC: usize = 3;
        const BUDGET: usize = 3000;
        /// About four records.
        const TOPIC_BUDGET: usize = 1600;

        #[derive(Debug, Clone)]
        enum Op {
            Subscribe(Vec<usize>),
            Unsubscribe(usize),
            Record(usize, usize),
            ForgetIdle,
            Restart,
            HandOver,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => proptest::collection::vec(0..NAMES.len(), 1..4).prop_map(Op::Subscribe),
                2 => any::<usize>().prop_map(Op::Unsubscribe),
                4 => (0..NAMES.len(), 0..900usize).prop_map(|(t, len)| Op::Record(t, len)),
                1 => Just(Op::ForgetIdle),
                1 => Just(Op::Restart),
                1 => Just(Op::HandOver),
            ]
        }

        proptest! {
            #[test]
            fn both_charges_stay_true_and_within_their_budgets(
                ops in proptest::collection::vec(op(), 1..100)
            ) {
                let now = Instant::now();
                let later = now + Duration::from_secs(10);
                let mut h = History::new(PER_TOPIC, BUDGET, TOPIC_BUDGET);
                let mut streams: Vec<Vec<String>> = Vec::new();
                let mut last = 0u64;
                for op in ops {
                    match op {
                        Op::Subscribe(picks) => {
                            let list: Vec<String> =
                                picks.iter().map(|&i| NAMES[i].to_owned()).collect();
                            let before = (h.bytes, h.topic_bytes, h.topics.len());
                            match h.subscribe(&list, now) {
                                Ok(_) => streams.push(list),
                                Err(TopicsFull) => prop_assert_eq!(
                                    before,
                                    (h.bytes, h.topic_bytes, h.topics.len())
                                ),
                            }
                        }
                        Op::Unsubscribe(pick) if !streams.is_empty() => {
                            let list = streams.swap_remove(pick % streams.len());
                            h.unsubscribe(list.iter().map(String::as_str), now);
                        }
                        Op::Unsubscribe(_) => {}
                        Op::Record(topic, len) => {
                            last += 1;
                            h.record(NAMES[topic], EventId::local(last), &frame(last, len), now);
                        }
                        Op::ForgetIdle => {
                            h.forget_idle(later, Duration::from_secs(1));
                        }
                        Op::Restart => h.restart(),
                        Op::HandOver => {
                            // The successor takes the image, then every stream subscribes
                            // again: the same budgets have room for all of them.
                            let held: HashSet<&str> =
                                streams.iter().flatten().map(String::as_str).collect();
                            let mut next = History::new(PER_TOPIC, BUDGET, TOPIC_BUDGET);
                            next.import(h.image(), &held, now);
                            for list in &streams {
                                prop_assert!(next.subscribe(list, now).is_ok());
                            }
                            h = next;
                        }
                    }
                    assert_charges(&h);
                    for name in NAMES {
                        let carried: usize = streams
                            .iter()
                            .map(|list| list.iter().filter(|n| *n == name).count())
                            .sum();
                        prop_assert_eq!(h.subscribers(name), carried);
                    }
                }
                // Once every stream left, nothing is charged to the topic budget, and
                // forgetting the idle rest leaves nothing at all.
                for list in streams.drain(..) {
                    h.unsubscribe(list.iter().map(String::as_str), now);
                }
                assert_charges(&h);
                prop_assert_eq!(h.topic_bytes(), 0);
                h.forget_idle(later, Duration::from_secs(1));
                prop_assert_eq!((h.bytes(), h.topics(), h.frames), (0, 0, 0));
            }
        }
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    fn frame(id: u64) -> Bytes {
        Bytes::from(format!("id: {id}\ndata: x\n\n"))
    }

    #[test]
    fn a_restart_forgets_frames_and_marks_but_keeps_subscribed_topics() {
        let mut h = History::new(4, 1 << 20, 1 << 20);
        let names = h.subscribe(&["a".to_owned()], Instant::now()).unwrap();
        for id in 1..=6 {
            h.record("a", EventId::entry(id, 0), &frame(id), Instant::now());
            h.record("b", EventId::entry(id, 1), &frame(id), Instant::now());
        }
        h.restart();
        assert_eq!(h.topics(), 1, "a has a subscriber, b is gone");
        assert_eq!((h.bytes(), h.topic_bytes()), (0, 1 + TOPIC_COST));
        let start = h.start_replay(&names, "0-0", EventId::ZERO, Some("e"), true);
        assert!(start.reset.is_some(), "an id without the epoch is unknown");
    }

    #[test]
    fn an_id_ahead_of_this_node_waits_instead_of_being_unknown() {
        let h = History::new(4, 1 << 20, 1 << 20);
        let names: Vec<Arc<str>> = vec![Arc::from("t")];
        let start = h.start_replay(&names, "e-9-0", EventId::entry(5, 0), Some("e"), true);
        assert!(start.reset.is_none());
        assert_eq!(start.cursor.after(), EventId::entry(9, 0));
        let mut cursor = start.cursor;
        let reset = h.give_up(&names, &mut cursor, Some("e"));
        assert!(String::from_utf8_lossy(&reset)
            .contains("\"reason\":\"unknown\",\"requested\":\"e-9-0\""));
        assert_eq!(cursor.after(), EventId::ZERO);
        let local = h.start_replay(&names, "9", EventId::local(5), None, false);
        assert!(
            local.reset.is_some(),
            "the embedded broker has no one ahead of it"
        );
    }
}
