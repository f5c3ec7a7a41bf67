//! The node's kept events: each topic's last frames for `Last-Event-ID` replay, under one
//! node-wide byte budget, and the replay cursor that walks them. Pure: the hub holds it under
//! its lock; no sockets, no clock reads (the caller passes `now`).
//!
//! # What memory it may hold
//!
//! Everything kept is charged to [`History::bytes`]: each frame's encoded length plus
//! [`FRAME_COST`] for its bookkeeping, each topic's name plus [`TOPIC_COST`]. Past the budget
//! the oldest frame of the node goes first, whatever its topic; a topic left with no frame and
//! no subscriber is forgotten at once, and one with no subscriber and no publish for the idle
//! period is forgotten by [`History::forget_idle`]. So a publisher inventing topic names, or a
//! body of newlines, costs at most the budget.
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use crate::event_id::EventId;
use crate::handover::wire::HistoryImage;
use crate::sse::{self, ResetReason};

/// Bookkeeping charged per kept frame besides its bytes: its slot in the topic's queue
/// (id + `Bytes`, 48 B), its slot in the node's age order (24 B), and the frame
/// allocation's own header (about 56 B).
pub const FRAME_COST: usize = 128;

/// Bookkeeping charged per topic besides its name: the map entry, the topic record, its
/// queue's first allocation and the name's allocation header.
pub const TOPIC_COST: usize = 384;

/// The per-topic record.
#[derive(Debug)]
struct Topic {
    name: Arc<str>,
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
    /// Bytes charged now, and the most allowed.
    bytes: usize,
    budget: usize,
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

impl History {
    /// An empty history keeping `per_topic` frames per topic within `budget` bytes, and
    /// topics unused for `idle` (see [`History::forget_idle`]).
    pub fn new(per_topic: usize, budget: usize) -> History {
        History {
            by_name: HashMap::new(),
            topics: Slab::new(),
            age: VecDeque::new(),
            frames: 0,
            per_topic,
            bytes: 0,
            budget,
            forgotten_through: EventId::ZERO,
            evicted: 0,
        }
    }

    /// Bytes charged for what is kept (frames, their bookkeeping, topics).
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// The topic's record, created if new.
    fn topic(&mut self, name: &str, now: Instant) -> usize {
        if let Some(&slot) = self.by_name.get(name) {
            return slot;
        }
        let name: Arc<str> = Arc::from(name);
        self.bytes += name.len() + TOPIC_COST;
        let slot = self.topics.insert(Topic {
            name: name.clone(),
            kept: VecDeque::new(),
            evicted_through: self.forgotten_through,
            subscribers: 0,
            last_used: now,
        });
        self.by_name.insert(name, slot);
        slot
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
                return; // only subscribed topics' names are left; streams bound those
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
        self.bytes -= t.name.len() + TOPIC_COST;
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
    pub fn import(&mut self, image: HistoryImage, now: Instant) {
        self.forgotten_through = self.forgotten_through.max(image.forgotten_through);
        for (name, evicted) in &image.topics {
            let slot = self.topic(name, now);
            let t = &mut self.topics[slot];
            t.evicted_through = t.evicted_through.max(*evicted);
        }
        for (id, topic, frame) in image.frames {
            if let Some((name, _)) = image.topics.get(topic as usize) {
                self.record(name, id, &frame, now);
            }
        }
    }

    /// Counts one more stream on each of `names`; returns their shared names, in order.
    pub fn subscribe(&mut self, names: &[String], now: Instant) -> Vec<Arc<str>> {
        let shared = names
            .iter()
            .map(|name| {
                let slot = self.topic(name, now);
                let t = &mut self.topics[slot];
                t.subscribers += 1;
                t.name.clone()
            })
            .collect();
        // New topic names count against the budget too.
        self.enforce_budget();
        shared
    }

    /// Counts one stream fewer on each of `names`.
    pub fn unsubscribe<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, now: Instant) {
        for name in names {
            let Some(&slot) = self.by_name.get(name) else {
                continue;
            };
            let t = &mut self.topics[slot];
            t.subscribers = t.subscribers.saturating_sub(1);
            if t.subscribers == 0 {
                t.last_used = now;
                self.forget_if_unused(slot);
            }
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
        let mut old = History::new(2, 1 << 20);
        old.subscribe(&["a".into(), "b".into()], now);
        for id in 1..=5u64 {
            let topic = if id % 2 == 0 { "a" } else { "b" };
            old.record(topic, EventId::local(id), &frame(id, 20), now);
        }
        let mut new = History::new(2, 1 << 20);
        new.import(old.image(), now);
        assert_eq!((new.frames, new.bytes), (old.frames, old.bytes));
        let names = new.subscribe(&["a".into(), "b".into()], now);
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
        h.subscribe(&list, Instant::now())
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
        let mut h = History::new(8, 1 << 20);
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
        let mut h = History::new(100, 1 << 20);
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
        let mut h = History::new(4, 1 << 20);
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
        let mut h = History::new(4, 1 << 20);
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
        let mut h = History::new(1000, 3 * cost + 2 * (1 + TOPIC_COST));
        let now = Instant::now();
        let n = names(&mut h, &["a"]);
        h.record("a", EventId::local(1), &frame(1, 100), now);
        h.record("b", EventId::local(2), &frame(2, 100), now);
        h.record("a", EventId::local(3), &frame(3, 100), now);
        assert!(h.bytes() <= 3 * cost + 2 * (1 + TOPIC_COST));
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
        let mut h = History::new(1024, budget);
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
        let mut h = History::new(2, 1 << 30);
        for id in 1..=100_000 {
            h.record("t", EventId::local(id), &frame(id, 20), Instant::now());
        }
        assert!(h.age.len() <= 2 * h.frames + 1024);
        assert_eq!(h.frames, 2);
    }

    #[test]
    fn eviction_during_a_replay_is_announced_once_and_the_replay_goes_on() {
        let mut h = History::new(4, 1 << 20);
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
        let mut h = History::new(4, 1 << 20);
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        names(&mut h, &["kept"]);
        h.record("kept", EventId::local(1), &frame(1, 30), t0);
        h.record("gone", EventId::local(2), &frame(2, 30), t0);
        assert_eq!(h.forget_idle(t0 + idle / 2, idle), 0);
        assert_eq!(h.forget_idle(t0 + idle, idle), 1);
        assert_eq!(h.topics(), 1);
        let charged = h.bytes();
        assert_eq!(charged, 4 + TOPIC_COST + 30 + FRAME_COST);
        // Leaving starts its idle clock; it keeps its frames until then.
        h.unsubscribe(["kept"], t0 + idle);
        assert_eq!(
            h.forget_idle(t0 + idle * 2 - Duration::from_secs(1), idle),
            0
        );
        assert_eq!(h.forget_idle(t0 + idle * 2, idle), 1);
        assert_eq!((h.topics(), h.bytes()), (0, 0));
    }

    #[test]
    fn a_topic_only_subscribed_to_leaves_no_trace() {
        let mut h = History::new(4, 1 << 20);
        names(&mut h, &["x", "y"]);
        h.unsubscribe(["x", "y"], Instant::now());
        assert_eq!((h.topics(), h.bytes()), (0, 0));
    }

    #[test]
    fn no_history_keeps_nothing_but_remembers_what_it_dropped() {
        let mut h = History::new(0, 1 << 20);
        let n = names(&mut h, &["t"]);
        h.record("t", EventId::local(1), &frame(1, 30), Instant::now());
        let start = h.start_replay(&n, "0", EventId::local(1), None, false);
        assert!(text(&start.reset).contains("expired"));
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
        let mut h = History::new(4, 1 << 20);
        let names = h.subscribe(&["a".to_owned()], Instant::now());
        for id in 1..=6 {
            h.record("a", EventId::entry(id, 0), &frame(id), Instant::now());
            h.record("b", EventId::entry(id, 1), &frame(id), Instant::now());
        }
        h.restart();
        assert_eq!(h.topics(), 1, "a has a subscriber, b is gone");
        assert_eq!(h.bytes(), 1 + TOPIC_COST);
        let start = h.start_replay(&names, "0-0", EventId::ZERO, Some("e"), true);
        assert!(start.reset.is_some(), "an id without the epoch is unknown");
    }

    #[test]
    fn an_id_ahead_of_this_node_waits_instead_of_being_unknown() {
        let h = History::new(4, 1 << 20);
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
