//! The replayer: serves a resume from before what this node kept, from Redis, on its own
//! thread with its own connection; bounded per resume and shared between resumes.
//!
//! A replay step walks the stream from its cursor until it has filled the stream's room with
//! its topics' events, or reached what the node's own history covers (which then finishes the
//! replay, its last step ordered with live events under the hub's lock). Two bounds make a
//! resume cost the same whatever the stream holds:
//!
//! - **A scan budget** (`--replay-scan`): one resume walks at most that many entries, over
//!   all its steps, an entry counting once per [`SCAN_UNIT`] of its size started (so also
//!   about that many KiB). The count travels in its [`Cursor`], so no stream keeps anything
//!   more for it once the replay is over. Spent before the node's history is reached, the
//!   history takes over from where the walk stopped, and its first step says `reset`
//!   (`expired`, with that id as `requested` and the oldest event kept after it as `oldest`):
//!   the same notice as when Redis itself no longer holds what follows a cursor. Counted in
//!   `sse_edge_replay_scan_limited_total`.
//! - **One cache** (`--replay-cache-bytes`) of the ranges read, for every resume. Ranges never
//!   overlap (a read ends where the next cached range starts), so resumes from nearby ids read
//!   each entry once. A resume *claims* its cursor from when its step is taken until it goes
//!   over to the history, its stream closes, or it has not asked for [`CLAIM_IDLE`]; a range
//!   is kept while some claim has not passed it, and for [`LINGER`] after it last served a
//!   resume: a storm's resumes come over one `retry:` period, each over in a moment, and the
//!   later ones read only what was appended since. Then it is given back.
//!   Reads are cut to the cache's free bytes in Redis ([`RANGE_SCRIPT`]), so the cache stays
//!   within its bound whatever the entries' sizes; when less than a quarter is free, the
//!   ranges furthest ahead go first (`sse_edge_replay_cache_evictions_total`).
//!
//! [`RANGE_SCRIPT`]: super::redis::RANGE_SCRIPT

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::ConnectionInfo;
use tracing::warn;

use super::redis::{Entry, Link, LinkError, Range, Timeouts};
use crate::delivery::history::{Batch, Cursor};
use crate::delivery::hub::{Hub, Inbox, ReplayStep, Ticket};
use crate::wire::event_id::EventId;
use crate::wire::sse;

/// Entries one read asks Redis for, at most.
pub const RANGE_COUNT: usize = 512;

/// What a cached entry costs besides its strings' bytes: the `Entry` itself (an id and four
/// `String`s, 112 B), its slot's share of the range's `Vec` and the strings' allocation
/// headers, rounded up. [`RANGE_SCRIPT`](super::redis::RANGE_SCRIPT) counts the same per
/// entry, plus the id's and field names' lengths, so what it lets through fits the budget it
/// was given.
pub const ENTRY_COST: usize = 128;

/// An entry's share of a resume's scan budget is one per this many bytes of its strings (at
/// least one): `--replay-scan N` bounds the entries a resume walks and, for big entries, the
/// bytes it reads to about N KiB.
pub const SCAN_UNIT: usize = 1024;

/// What a cached range costs besides its entries: its map node and record.
const RANGE_COST: usize = 128;

/// A range no resume needs any more stays this long after it last served one (within the
/// cache's bound; a read that needs the room takes it first). The resumes of a lost node or of
/// a deploy do not come at once but over one `retry:` period (½–1½ × `--retry-ms`, 1–3 s by
/// default; a browser's own default is 3 s), each done in a moment: without it every one of
/// them would read the same range again. Renewed by each resume it serves, so a storm spread
/// over a longer `--retry-ms` keeps it as long as resumes keep coming.
pub const LINGER: Duration = Duration::from_secs(10);

/// A claim not renewed for this long lapses: its stream stopped asking (it is gone, handed to
/// the next process, or reads too slowly to be worth keeping ranges for; its next step then
/// reads again).
pub const CLAIM_IDLE: Duration = Duration::from_secs(10);

/// Claims held at most (each about 100 B); beyond it a resume still replays, without keeping
/// ranges for its next steps. Every claim is a stream on this node, so `--max-clients` bounds
/// them first on most nodes.
pub const CLAIMS: usize = 65_536;

/// Below this many slots the claims and the round of steps keep their storage: what one
/// resume at a time needs is not worth allocating again for each (a storm's is given back).
const SMALL: usize = 64;

/// How often lapsed claims are looked for (the look walks every claim).
const EXPIRY_PERIOD: Duration = Duration::from_secs(1);

/// The replayer's bounds (`--replay-scan`, `--replay-cache-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries one resume may walk, over all its steps.
    pub scan: u32,
    /// The cache's bound in bytes.
    pub cache_bytes: usize,
}

/// One replay step asked of the replayer.
#[derive(Debug)]
pub struct ReplayJob {
    /// The shard that asked.
    pub from: usize,
    /// The stream.
    pub ticket: Ticket,
    /// Its topics.
    pub names: Vec<Arc<str>>,
    /// Where it stands.
    pub cursor: Cursor,
    /// Bytes its queue can take.
    pub room: usize,
}

/// A stream that was replaying is gone (its shard and ticket): its claim ends, and a step of it
/// still queued is not served. These come on a channel of their own, so that streams closing
/// in a crowd never take the places of replay steps in theirs.
pub type Over = (usize, Ticket);

/// What `/metrics` reads of the replayer.
#[derive(Debug, Default)]
pub struct Stats {
    cache_bytes: AtomicU64,
    cache_peak: AtomicU64,
    cache_evictions: AtomicU64,
    scan_limited: AtomicU64,
    refused: AtomicU64,
}

/// The replayer's figures, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Bytes the cache holds now.
    pub cache_bytes: u64,
    /// The most it has held since start.
    pub cache_peak_bytes: u64,
    /// Ranges dropped to make room while a resume still needed them.
    pub cache_evictions: u64,
    /// Resumes whose scan budget ran out before the node's history (told `reset`).
    pub scan_limited: u64,
    /// Replay steps the replayer's queue had no room for (answered by the history).
    pub refused: u64,
}

impl Stats {
    /// A replay step found the replayer's queue full.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn figures(&self) -> Figures {
        Figures {
            cache_bytes: self.cache_bytes.load(Ordering::Relaxed),
            cache_peak_bytes: self.cache_peak.load(Ordering::Relaxed),
            cache_evictions: self.cache_evictions.load(Ordering::Relaxed),
            scan_limited: self.scan_limited.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn show(&self, cache: &RangeCache) {
        self.cache_bytes
            .store(cache.bytes as u64, Ordering::Relaxed);
        self.cache_peak.store(cache.peak as u64, Ordering::Relaxed);
        self.cache_evictions
            .store(cache.evictions, Ordering::Relaxed);
    }
}

/// Who holds a claim: a stream, by its shard and ticket.
type Claimant = (usize, Ticket);

/// Entries of the stream after `start` up to `last`, all of them (`start` is the key in
/// [`RangeCache::ranges`]).
#[derive(Debug)]
struct CachedRange {
    /// The well-formed entries, in order.
    entries: Vec<Entry>,
    /// Entries in it that were not sse-edge's.
    skipped: usize,
    /// The last id it covers (an entry's, or the end a read was bounded by).
    last: EventId,
    /// What it is charged.
    bytes: usize,
    /// When it was read or last served a resume ([`LINGER`]).
    used: Instant,
}

impl CachedRange {
    /// The range one read after `start` covers, or None when the stream has nothing after
    /// `start` at all. `until` and `count` are what the read was bounded by.
    fn new(
        range: Range,
        start: EventId,
        until: Option<EventId>,
        count: usize,
        now: Instant,
    ) -> Option<Self> {
        let Range { read, cut, .. } = range;
        let seen = read.entries.len().saturating_add(read.skipped);
        let last = match (read.last, until) {
            // Everything up to the bound came: the range reaches it, entries or not.
            (_, Some(until)) if !cut && seen < count => until,
            (Some(last), _) => last,
            (None, _) => return None,
        };
        if last <= start {
            return None; // cannot happen with a well-behaved Redis; never stall on it
        }
        let bytes = read
            .entries
            .iter()
            .map(entry_cost)
            .fold(RANGE_COST, usize::saturating_add);
        Some(CachedRange {
            entries: read.entries,
            skipped: read.skipped,
            last,
            bytes,
            used: now,
        })
    }
}

/// The bytes of an entry's strings.
fn payload(e: &Entry) -> usize {
    e.epoch
        .len()
        .saturating_add(e.topic.len())
        .saturating_add(e.event.as_ref().map_or(0, String::len))
        .saturating_add(e.data.len())
}

/// What a cached entry is charged.
fn entry_cost(e: &Entry) -> usize {
    ENTRY_COST.saturating_add(payload(e))
}

/// What walking an entry takes from a resume's scan budget: one per [`SCAN_UNIT`] started.
fn scan_units(e: &Entry) -> usize {
    payload(e).div_ceil(SCAN_UNIT).max(1)
}

/// The ranges read for resumes, shared by all of them, and the claims that keep them. Pure:
/// the replayer thread owns it; no I/O, no clock reads (the caller passes `now`).
#[derive(Debug)]
pub struct RangeCache {
    limit: usize,
    /// By the id each starts after; each covers `(start, last]`, none overlap.
    ranges: BTreeMap<EventId, CachedRange>,
    bytes: usize,
    peak: usize,
    evictions: u64,
    /// The epoch the cached entries belong to.
    epoch: Option<String>,
    /// Each claimant's cursor and when it last asked.
    claims: HashMap<Claimant, (EventId, Instant)>,
    /// The claims' cursors, counted (a multiset): the first one decides what may go.
    positions: BTreeMap<EventId, usize>,
}

impl RangeCache {
    /// An empty cache bounded by `limit` bytes.
    pub fn new(limit: usize) -> RangeCache {
        RangeCache {
            limit,
            ranges: BTreeMap::new(),
            bytes: 0,
            peak: 0,
            evictions: 0,
            epoch: None,
            claims: HashMap::new(),
            positions: BTreeMap::new(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether it holds nothing and no claim (the replayer may sleep until the next job).
    fn idle(&self) -> bool {
        self.ranges.is_empty() && self.claims.is_empty()
    }

    /// `who` is at `at` (and asked `now`).
    fn claim(&mut self, who: Claimant, at: EventId, now: Instant) {
        let full = self.claims.len() >= CLAIMS;
        match self.claims.get_mut(&who) {
            Some((old, seen)) => {
                let old = std::mem::replace(old, at);
                *seen = now;
                self.unposition(old);
            }
            None if full => return,
            None => {
                self.claims.insert(who, (at, now));
            }
        }
        *self.positions.entry(at).or_default() += 1;
    }

    /// `who` needs nothing more from the cache.
    fn release(&mut self, who: Claimant) {
        if let Some((at, _)) = self.claims.remove(&who) {
            self.unposition(at);
        }
        // A storm of resumes grew the claims to its size; once it is over they give the
        // memory back (a quarter full, to half: not again and again for each release).
        if self.claims.capacity() > SMALL && self.claims.len() < self.claims.capacity() / 4 {
            self.claims.shrink_to(self.claims.len() * 2);
        }
    }

    fn unposition(&mut self, at: EventId) {
        if let Some(n) = self.positions.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.positions.remove(&at);
            }
        }
    }

    /// Ends the claims not renewed for [`CLAIM_IDLE`] by `now`.
    fn expire(&mut self, now: Instant) {
        let lapsed: Vec<Claimant> = self
            .claims
            .iter()
            .filter(|(_, (_, seen))| now.saturating_duration_since(*seen) >= CLAIM_IDLE)
            .map(|(who, _)| *who)
            .collect();
        for who in lapsed {
            self.release(who);
        }
    }

    /// Gives back every range no claim still needs and that has not served a resume for
    /// [`LINGER`] by `now`. Walks every range: called once per [`EXPIRY_PERIOD`], not per step.
    fn trim(&mut self, now: Instant) {
        let first = self.positions.first_key_value().map(|(at, _)| *at);
        let mut freed = 0usize;
        self.ranges.retain(|_, range| {
            let needed = first.is_some_and(|first| range.last > first);
            let keep = needed || now.saturating_duration_since(range.used) < LINGER;
            if !keep {
                freed += range.bytes;
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Forgets every range when the cluster's epoch is not the one they were read in.
    fn follow_epoch(&mut self, epoch: Option<&str>) {
        if self.epoch.as_deref() != epoch {
            self.ranges.clear();
            self.bytes = 0;
            self.epoch = epoch.map(str::to_owned);
        }
    }

    /// The cached range holding what follows `at`.
    fn covering(&self, at: EventId) -> Option<&CachedRange> {
        let (_, range) = self.ranges.range(..=at).next_back()?;
        (range.last > at).then_some(range)
    }

    /// [`RangeCache::covering`], for a resume it serves `now`: it lingers from then on.
    fn serving(&mut self, at: EventId, now: Instant) -> Option<&CachedRange> {
        let (_, range) = self.ranges.range_mut(..=at).next_back()?;
        if range.last <= at {
            return None;
        }
        range.used = now;
        Some(range)
    }

    /// Where the first cached range after `at` starts: a read from `at` stops there.
    fn next_start(&self, at: EventId) -> Option<EventId> {
        self.ranges
            .range((Bound::Excluded(at), Bound::Unbounded))
            .next()
            .map(|(start, _)| *start)
    }

    /// Makes at least a quarter of the cache free, dropping first the ranges no claim needs
    /// (lingering, oldest first), then those furthest ahead; returns the free bytes, what the
    /// next read may take.
    fn make_room(&mut self) -> usize {
        let want = (self.limit / 4).max(1);
        let first = self.positions.first_key_value().map(|(at, _)| *at);
        while self.room() < want {
            // The passed ranges are the first ones: every claim is at or after their end.
            let Some(range) = self.ranges.first_entry() else {
                break;
            };
            if first.is_some_and(|first| range.get().last > first) {
                break;
            }
            self.bytes -= range.remove().bytes;
        }
        while self.room() < want {
            let Some((_, range)) = self.ranges.pop_last() else {
                break;
            };
            self.bytes -= range.bytes;
            self.evictions += 1;
        }
        self.room()
    }

    /// The bytes free now.
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.bytes)
    }

    /// Makes room for a read from `at` ([`RangeCache::make_room`]) and returns where it
    /// stops: the start of the first cached range after `at`, if any is left.
    fn next_start_after_room(&mut self, at: EventId) -> Option<EventId> {
        self.make_room();
        self.next_start(at)
    }

    fn insert(&mut self, start: EventId, range: CachedRange) {
        self.bytes = self.bytes.saturating_add(range.bytes);
        self.peak = self.peak.max(self.bytes);
        if let Some(old) = self.ranges.insert(start, range) {
            self.bytes -= old.bytes; // never: a read starts where nothing is cached
        }
    }
}

/// What became of one replay step.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// A step went to the stream; the resume goes on from Redis after this id.
    More(EventId),
    /// The node's history has the resume now, or will from the next step.
    Handed,
}

/// The replayer thread: serves replay steps from Redis through one [`RangeCache`], until the
/// shards are gone. `queues` are the steps asked for, and the streams gone meanwhile.
pub fn replay_loop<C>(
    hub: &Hub<C>,
    info: &ConnectionInfo,
    key: &str,
    (queue, overs): (&Receiver<ReplayJob>, &Receiver<Over>),
    limits: Limits,
    stats: &Stats,
) {
    let mut link: Option<Link> = None;
    let mut cache = RangeCache::new(limits.cache_bytes);
    let mut next_expiry = Instant::now() + EXPIRY_PERIOD;
    let mut round: VecDeque<ReplayJob> = VecDeque::new();
    loop {
        // Idle, nothing is kept: sleep until a step comes. Else wake now and then to let
        // claims lapse and give their ranges back once they no longer linger.
        let job = if cache.idle() {
            queue.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            queue.recv_timeout(EXPIRY_PERIOD)
        };
        match job {
            Ok(job) => take(&mut cache, &mut round, job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Every step waiting now claims its place before any range is given back.
        take_waiting(&mut cache, &mut round, queue, overs);
        if !round.is_empty() && link.is_none() {
            match Link::connect(info.clone(), key, Timeouts::default()) {
                Ok(conn) => link = Some(conn),
                Err(e) => warn!("replaying from Redis: cannot reach it ({e})"),
            }
        }
        while let Some(job) = round.pop_front() {
            let who = (job.from, job.ticket);
            let served = match link.as_mut() {
                // Without Redis the node's own history answers, with its `reset`.
                None => {
                    hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
                    Ok(Served::Handed)
                }
                Some(conn) => serve(hub, conn, &mut cache, limits, stats, job),
            };
            match served {
                Ok(Served::More(at)) => cache.claim(who, at, Instant::now()),
                Ok(Served::Handed) => cache.release(who),
                Err(e) => {
                    warn!("replaying from Redis failed: {e}");
                    cache.release(who);
                    if e.is_connection_lost() {
                        link = None;
                    }
                }
            }
            take_waiting(&mut cache, &mut round, queue, overs);
            stats.show(&cache);
        }
        if round.capacity() > SMALL {
            // A storm of resumes grew the round to its size; it is over, and so is that.
            round = VecDeque::new();
        }
        let now = Instant::now();
        if now >= next_expiry {
            cache.expire(now);
            cache.trim(now);
            next_expiry = now + EXPIRY_PERIOD;
        }
        stats.show(&cache);
    }
}

/// Takes a step into the round; it claims its cursor.
fn take(cache: &mut RangeCache, round: &mut VecDeque<ReplayJob>, job: ReplayJob) {
    cache.claim((job.from, job.ticket), job.cursor.after(), Instant::now());
    round.push_back(job);
}

/// Takes every step waiting, and ends the claims (and drops the steps) of streams gone.
fn take_waiting(
    cache: &mut RangeCache,
    round: &mut VecDeque<ReplayJob>,
    queue: &Receiver<ReplayJob>,
    overs: &Receiver<Over>,
) {
    while let Ok(job) = queue.try_recv() {
        take(cache, round, job);
    }
    while let Ok(who) = overs.try_recv() {
        cache.release(who);
        round.retain(|job| (job.from, job.ticket) != who);
    }
}

/// One replay step from Redis: the stream's entries after its cursor, up to its room, read
/// through the cache. When the cursor reaches what the node kept, the node's history takes
/// over (its last step is ordered with live events under the hub's lock). When Redis no
/// longer has what follows the cursor, or the resume's scan budget is spent, the history
/// answers too, and its first step says `reset` (expired). On an error the history has the
/// step too.
fn serve<C>(
    hub: &Hub<C>,
    link: &mut Link,
    cache: &mut RangeCache,
    limits: Limits,
    stats: &Stats,
    mut job: ReplayJob,
) -> Result<Served, LinkError> {
    let (_, epoch) = hub.last_id();
    cache.follow_epoch(epoch.as_deref());
    let handover = |job: ReplayJob| {
        hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
        Served::Handed
    };
    let mut batch = Batch::default();
    let mut used = 0usize;
    loop {
        let scanned = job.cursor.scanned();
        if scanned >= limits.scan {
            if !batch.frames.is_empty() {
                return Ok(send_more(hub, job, batch)); // the next step stops here
            }
            stats.scan_limited.fetch_add(1, Ordering::Relaxed);
            return Ok(handover(job));
        }
        let at = job.cursor.after();
        if cache.covering(at).is_none() {
            // What this step walked past may go first if the read needs the room.
            cache.claim((job.from, job.ticket), at, Instant::now());
            let until = cache.next_start_after_room(at);
            let left = usize::try_from(limits.scan - scanned).unwrap_or(usize::MAX);
            // No more entries than the budget has left, nor more bytes than it allows for
            // entries of a full scan unit each (big entries count several units).
            let want = left.min(RANGE_COUNT);
            let bytes = left.saturating_mul(SCAN_UNIT + ENTRY_COST);
            let room = cache.room().min(bytes);
            let range = match link.range_within(at, until, want, room, ENTRY_COST) {
                Ok(range) => range,
                Err(e) => {
                    handover(job);
                    return Err(e);
                }
            };
            // Redis trimmed past the cursor too: nothing here fills the gap. Its oldest entry
            // must be the cursor itself or older to prove nothing between is gone.
            if range.oldest.is_none_or(|oldest| oldest > at) {
                return Ok(handover(job));
            }
            let Some(read) = CachedRange::new(range, at, until, want, Instant::now()) else {
                break; // Redis has nothing newer: the history finishes the replay
            };
            cache.insert(at, read);
            stats.show(cache);
        }
        let Some(range) = cache.serving(at, Instant::now()) else {
            break;
        };
        let first = range.entries.partition_point(|e| e.id <= at);
        let mut whole = true;
        for entry in range.entries.get(first..).unwrap_or_default() {
            if job.cursor.scanned() >= limits.scan {
                whole = false;
                break;
            }
            if epoch.as_deref() != Some(entry.epoch.as_str()) {
                return Ok(handover(job)); // a new epoch meanwhile: the history knows what to say
            }
            if job.names.iter().any(|n| **n == *entry.topic) {
                let frame = sse::encode_event(
                    entry.id,
                    epoch.as_deref(),
                    entry.event.as_deref(),
                    &entry.data,
                );
                if used.saturating_add(frame.len()) > job.room && !batch.frames.is_empty() {
                    return Ok(send_more(hub, job, batch));
                }
                used = used.saturating_add(frame.len());
                batch.frames.push(frame);
            }
            job.cursor.advance(entry.id);
            job.cursor.count_scanned(scan_units(entry));
        }
        if whole {
            job.cursor.advance(range.last);
            job.cursor.count_scanned(range.skipped);
        }
        if hub.history_covers(&job.names, &job.cursor) {
            break;
        }
    }
    if batch.frames.is_empty() {
        Ok(handover(job))
    } else {
        // The history takes over after this step (or Redis has nothing newer, which the
        // history then has): its next step is the history's (`Cluster::replay` asks it
        // first), so the claim goes now, not CLAIM_IDLE later. Should the history have moved
        // on by then, the step comes back here and claims again.
        send_more(hub, job, batch);
        Ok(Served::Handed)
    }
}

/// Sends a replay step read from Redis; the stream asks again as it drains.
fn send_more<C>(hub: &Hub<C>, job: ReplayJob, batch: Batch) -> Served {
    let at = job.cursor.after();
    hub.answer(
        job.from,
        Inbox::Replay {
            ticket: job.ticket,
            cursor: job.cursor,
            step: ReplayStep::More(batch),
        },
    );
    Served::More(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::redis::Read;
    use proptest::prelude::*;

    /// One instant for a whole test (the cache takes the time from its caller).
    fn t0() -> Instant {
        static NOW: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *NOW.get_or_init(Instant::now)
    }

    fn id(n: u64) -> EventId {
        EventId::entry(n, 0)
    }

    fn entry(n: u64, data: usize) -> Entry {
        Entry {
            id: id(n),
            epoch: "ep".into(),
            topic: "t".into(),
            event: None,
            data: "x".repeat(data),
        }
    }

    /// What a read after `start` of the entries `ids` (each with `data` bytes) gives.
    fn read(ids: impl IntoIterator<Item = u64>, data: usize, cut: bool) -> Range {
        let entries: Vec<Entry> = ids.into_iter().map(|n| entry(n, data)).collect();
        Range {
            read: Read {
                last: entries.last().map(|e| e.id),
                entries,
                skipped: 0,
            },
            oldest: None,
            cut,
        }
    }

    fn who(key: usize) -> Claimant {
        (0, Ticket { key, serial: 1 })
    }

    fn starts(cache: &RangeCache) -> Vec<u64> {
        cache.ranges.keys().map(|k| k.ms()).collect()
    }

    #[test]
    fn a_read_reaches_its_end_only_when_it_came_whole() {
        // Fewer than asked and not cut: everything up to the end asked for came.
        let r = CachedRange::new(read(11..=12, 1, false), id(10), Some(id(20)), 5, t0()).unwrap();
        assert_eq!(r.last, id(20));
        // Nothing between the cursor and a cached range: an empty range bridges them.
        let r = CachedRange::new(read([], 1, false), id(10), Some(id(20)), 5, t0()).unwrap();
        assert_eq!((r.last, r.entries.len()), (id(20), 0));
        // As many as asked, or cut by bytes: only up to the last entry seen.
        let r = CachedRange::new(read(11..=15, 1, false), id(10), Some(id(20)), 5, t0()).unwrap();
        assert_eq!(r.last, id(15));
        let r = CachedRange::new(read(11..=12, 1, true), id(10), Some(id(20)), 5, t0()).unwrap();
        assert_eq!(r.last, id(12));
        // Open-ended: up to the last entry; nothing at all is the stream's end.
        let r = CachedRange::new(read(11..=12, 1, false), id(10), None, 5, t0()).unwrap();
        assert_eq!(r.last, id(12));
        assert!(CachedRange::new(read([], 1, false), id(10), None, 5, t0()).is_none());
        // Charged its entries' strings and bookkeeping.
        let r = CachedRange::new(read(11..=12, 100, false), id(10), None, 5, t0()).unwrap();
        assert_eq!(r.bytes, RANGE_COST + 2 * (ENTRY_COST + 2 + 1 + 100));
    }

    #[test]
    fn ranges_stay_while_a_claim_has_not_passed_them_and_go_when_none_needs_them() {
        let now = t0();
        let mut cache = RangeCache::new(1 << 20);
        for start in [0, 10, 20] {
            let r = CachedRange::new(
                read(start + 1..=start + 10, 10, false),
                id(start),
                None,
                10,
                t0(),
            );
            cache.insert(id(start), r.unwrap());
        }
        assert_eq!(cache.covering(id(0)).map(|r| r.last), Some(id(10)));
        assert_eq!(cache.covering(id(15)).map(|r| r.last), Some(id(20)));
        assert!(cache.covering(id(30)).is_none());
        assert_eq!(cache.next_start(id(5)), Some(id(10)));
        // Long after they were read (no lingering): one resume at 15 still needs (10, 20]
        // and (20, 30]; another behind it keeps (0, 10] too until it moves on.
        let later = now + LINGER;
        cache.claim(who(1), id(15), later);
        cache.claim(who(2), id(0), later);
        cache.trim(later);
        assert_eq!(starts(&cache), vec![0, 10, 20]);
        cache.claim(who(2), id(20), later);
        cache.trim(later);
        assert_eq!(starts(&cache), vec![10, 20]);
        cache.release(who(1));
        cache.trim(later);
        assert_eq!(starts(&cache), vec![20]);
        // No resume in progress: nothing kept.
        cache.release(who(2));
        cache.trim(later);
        assert_eq!((cache.ranges.len(), cache.bytes()), (0, 0));
        assert!(cache.idle());
    }

    #[test]
    fn a_range_no_resume_needs_lingers_for_the_next_resumes_unless_a_read_needs_its_room() {
        let now = t0();
        let mut cache = RangeCache::new(64 << 10);
        for start in [0, 10] {
            let r = CachedRange::new(
                read(start + 1..=start + 10, 1000, false),
                id(start),
                None,
                10,
                now,
            );
            cache.insert(id(start), r.unwrap());
        }
        // A resume went through both and is over: they stay for the storm's next resumes,
        // each of which renews the one it is served from.
        cache.claim(who(1), id(20), now);
        cache.release(who(1));
        cache.trim(now + LINGER / 2);
        assert_eq!(starts(&cache), vec![0, 10]);
        assert!(!cache.idle(), "the replayer must wake to give them back");
        assert!(cache.serving(id(12), now + LINGER / 2).is_some());
        cache.trim(now + LINGER);
        assert_eq!(starts(&cache), vec![10]);
        cache.trim(now + LINGER / 2 + LINGER);
        assert!(cache.idle() && cache.bytes() == 0);

        // A read that needs the room takes the lingering ranges' first, oldest first, and
        // that is no eviction (nobody needed them).
        for start in [0, 10, 20, 30, 40, 50] {
            let r = CachedRange::new(
                read(start + 1..=start + 10, 1000, false),
                id(start),
                None,
                10,
                now,
            );
            cache.insert(id(start), r.unwrap());
        }
        cache.claim(who(2), id(25), now);
        assert!(cache.room() < cache.limit / 4);
        cache.make_room();
        assert!(cache.room() >= cache.limit / 4);
        assert_eq!(cache.evictions, 0);
        assert_eq!(starts(&cache).first(), Some(&20), "{:?}", starts(&cache));
    }

    #[test]
    fn a_storm_of_claims_gives_its_storage_back_once_released() {
        let mut cache = RangeCache::new(1 << 20);
        let now = t0();
        for key in 0..10_000 {
            cache.claim(who(key), id(1), now);
        }
        assert!(cache.claims.capacity() >= 10_000);
        for key in 0..10_000 {
            cache.release(who(key));
        }
        assert!(cache.idle());
        assert!(
            cache.claims.capacity() <= SMALL,
            "{} slots kept",
            cache.claims.capacity()
        );
    }

    #[test]
    fn claims_lapse_when_not_renewed_and_are_capped() {
        let now = t0();
        let mut cache = RangeCache::new(1 << 20);
        cache.claim(who(1), id(1), now);
        cache.claim(who(2), id(1), now + CLAIM_IDLE / 2);
        cache.expire(now + CLAIM_IDLE);
        assert_eq!(cache.claims.len(), 1);
        assert_eq!(cache.positions.get(&id(1)), Some(&1));
        for key in 0..CLAIMS + 10 {
            cache.claim(who(key), id(5), now);
        }
        assert_eq!(cache.claims.len(), CLAIMS);
        let counted: usize = cache.positions.values().sum();
        assert_eq!(counted, CLAIMS);
    }

    #[test]
    fn an_epoch_change_forgets_every_range() {
        let mut cache = RangeCache::new(1 << 20);
        cache.follow_epoch(Some("a"));
        let r = CachedRange::new(read(1..=3, 10, false), id(0), None, 3, t0()).unwrap();
        cache.insert(id(0), r);
        cache.follow_epoch(Some("a"));
        assert_eq!(cache.ranges.len(), 1);
        cache.follow_epoch(Some("b"));
        assert_eq!((cache.ranges.len(), cache.bytes()), (0, 0));
    }

    #[test]
    fn a_stream_gone_ends_its_claim_and_its_waiting_step_is_not_served() {
        let (steps, queue) = std::sync::mpsc::sync_channel(8);
        let (gone, overs) = std::sync::mpsc::sync_channel(8);
        let mut cache = RangeCache::new(1 << 20);
        let mut round = VecDeque::new();
        for key in [1, 2] {
            let job = ReplayJob {
                from: 0,
                ticket: who(key).1,
                names: Vec::new(),
                cursor: Cursor::resume(id(5), id(5)),
                room: 1,
            };
            steps.send(job).unwrap();
        }
        gone.send(who(1)).unwrap();
        take_waiting(&mut cache, &mut round, &queue, &overs);
        let left: Vec<usize> = round.iter().map(|j| j.ticket.key).collect();
        assert_eq!(left, vec![2]);
        assert_eq!(cache.claims.len(), 1);
        assert!(cache.claims.contains_key(&who(2)));
    }

    proptest! {
        /// Whatever resumes claim and release and whatever sizes the entries have, a cache
        /// filled by reads no larger than the room it gives (as the script cuts them) stays
        /// within its bound, its ranges never overlap, and what no claim needs is gone
        /// after a trim once they no longer linger.
        #[test]
        fn the_cache_stays_within_its_bound_and_keeps_only_what_claims_need(
            ops in proptest::collection::vec((0u8..4, 0u64..200, 1usize..4000, 0usize..4), 1..200),
        ) {
            let limit = 64 << 10;
            let now = t0();
            let mut cache = RangeCache::new(limit);
            for (op, at, size, key) in ops {
                match op {
                    0 | 1 => {
                        let at = id(at * 10);
                        if cache.covering(at).is_some() {
                            continue;
                        }
                        let room = cache.make_room();
                        let until = cache.next_start(at);
                        // As many entries as fit the room (at least one), up to the end.
                        let cost = ENTRY_COST + 3 + size;
                        let fit = (room.saturating_sub(RANGE_COST) / cost).max(1) as u64;
                        let end = until.map_or(u64::MAX, |u| u.ms());
                        let last = (at.ms() + fit).min(end);
                        let got = read(at.ms() + 1..=last, size, last < end);
                        if let Some(range) = CachedRange::new(got, at, until, fit as usize, t0()) {
                            cache.insert(at, range);
                        }
                    }
                    2 => cache.claim(who(key), id(at * 10), now),
                    _ => cache.release(who(key)),
                }
                // Lingering ranges count against the bound too.
                let single = cache.ranges.len() == 1;
                prop_assert!(cache.bytes() <= limit || single, "{} > {limit}", cache.bytes());
                cache.trim(now + LINGER);
                let single = cache.ranges.len() == 1;
                prop_assert!(cache.bytes() <= limit || single, "{} > {limit}", cache.bytes());
                let sum: usize = cache.ranges.values().map(|r| r.bytes).sum();
                prop_assert_eq!(sum, cache.bytes());
                let mut end = None;
                for (start, range) in &cache.ranges {
                    prop_assert!(end.is_none_or(|end| end <= *start), "overlap at {}", start);
                    prop_assert!(range.last > *start);
                    end = Some(range.last);
                }
                let first = cache.positions.first_key_value().map(|(at, _)| *at);
                match first {
                    None => prop_assert!(cache.ranges.is_empty()),
                    Some(first) => prop_assert!(cache.ranges.values().all(|r| r.last > first)),
                }
            }
        }
    }
}
