//! Cluster mode's two threads, each with its own Redis connection ([`Link`]):
//!
//! - the **publisher** takes publishes from the shards (a bounded channel), sends as many as
//!   are waiting in one pipeline through the epoch script, and answers each shard through
//!   its inbox with the entry's id, or `503` and why;
//! - the **reader** follows the stream with `XREAD BLOCK`, and hands each entry to the hub,
//!   which encodes it once for this node and puts it in every shard's inbox.
//!
//! - the **replayer** serves a resume from before what this node kept, from Redis
//!   (`XRANGE`), until the stream reaches the node's own history, which finishes it.
//!
//! None ever blocks a shard. Both reconnect with backoff (one log line per try) and the
//! node stays up meanwhile: streams stay open, publishes and `/healthz` answer `503`. The
//! reader resumes after the last id it recorded, or from the start of the stream when
//! Redis's epoch changed (it lost its data; new ids may even be lower than old ones).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::ConnectionInfo;
use tracing::{debug, info, warn};

use super::redis::{fresh_epoch, Link, LinkError, Publish, Read, Timeouts};
use crate::event_id::EventId;
use crate::history::{Batch, Cursor};
use crate::hub::{Accepted, Hub, Inbox, ReplayStep, Ticket, Unavailable};
use crate::params::DEFAULT_TOPIC;
use crate::sse;

/// Publishes waiting for the publisher thread, at most; beyond it a publish gets `503` at
/// once rather than a queue that grows while Redis is slow.
const QUEUE: usize = 4096;
/// Publishes sent in one pipeline, at most.
const BATCH: usize = 256;
/// How long one `XREAD` blocks, and so how often the reader looks at Redis's epoch and
/// expires replays waiting to catch up while no event comes.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries one `XREAD` returns, at most.
const READ_COUNT: usize = 1000;
/// Reconnect backoff: the first wait, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long start-up waits for the reader to have read what Redis holds (its history warm)
/// before the node serves streams.
const WARM_UP: Duration = Duration::from_secs(10);

/// Replays from Redis waiting for the replayer, at most; beyond it a replay goes on from
/// the node's own history (and its `reset`).
const REPLAY_QUEUE: usize = 1024;
/// Entries one `XRANGE` of a replay reads.
const RANGE_COUNT: usize = 512;

/// The demo heartbeat in cluster mode: one node of the cluster sends it (see
/// [`super::redis::TICK_SCRIPT`]).
#[derive(Debug, Clone)]
pub struct Ticker {
    /// How often.
    pub period: Duration,
    /// This node's name for the lease: the same for the process that takes over its
    /// listeners in an upgrade, so the heartbeat goes on without waiting for the lease.
    pub holder: String,
}

/// One replay step asked of Redis.
#[derive(Debug)]
struct ReplayJob {
    from: usize,
    ticket: Ticket,
    names: Vec<Arc<str>>,
    cursor: Cursor,
    room: usize,
}

/// One publish on its way to Redis.
#[derive(Debug)]
struct Job {
    from: usize,
    ticket: Option<Ticket>,
    topic: String,
    event: Option<String>,
    data: String,
}

/// What `/metrics` and `/healthz` read of the cluster threads.
#[derive(Debug, Default)]
pub struct State {
    publisher_up: AtomicBool,
    reader_up: AtomicBool,
    reconnects: AtomicU64,
    round_trips: AtomicU64,
    round_trip_ns: AtomicU64,
    lag_ms: AtomicU64,
    skipped: AtomicU64,
}

/// The cluster broker's figures, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Both connections to Redis work.
    pub up: bool,
    /// Connections re-established after one was lost.
    pub reconnects: u64,
    /// Publish pipelines sent, and their round trips added up in nanoseconds.
    pub round_trips: u64,
    /// See `round_trips`.
    pub round_trip_ns: u64,
    /// How far the reader is behind Redis's newest entry, in milliseconds of entry time.
    pub lag_ms: u64,
    /// Entries in the stream that were not sse-edge's (skipped).
    pub skipped: u64,
}

/// The running cluster broker.
#[derive(Debug)]
pub struct Cluster {
    jobs: SyncSender<Job>,
    replays: SyncSender<ReplayJob>,
    state: Arc<State>,
}

impl Cluster {
    /// Starts the publisher and reader threads on the stream `key`, and waits (up to
    /// ten seconds) until the reader has read what Redis holds, so a whole-cluster restart
    /// replays from each node's memory rather than one Redis read per stream. An unreachable
    /// Redis does not hold start-up: the node starts degraded and keeps trying.
    pub fn start(
        hub: Arc<Hub>,
        info: ConnectionInfo,
        key: String,
        maxlen: u64,
        ticker: Option<Ticker>,
    ) -> std::io::Result<Cluster> {
        let state = Arc::new(State::default());
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let (warm_tx, warm_rx) = mpsc::channel();
        {
            let (hub, info, key, state) = (hub.clone(), info.clone(), key.clone(), state.clone());
            thread::Builder::new()
                .name("redis-publisher".into())
                .spawn(move || publish_loop(&hub, &info, &key, maxlen, &queue, &state))?;
        }
        let (replays, replay_queue) = mpsc::sync_channel(REPLAY_QUEUE);
        {
            let (hub, info, key) = (hub.clone(), info.clone(), key.clone());
            thread::Builder::new()
                .name("redis-replayer".into())
                .spawn(move || replay_loop(&hub, &info, &key, &replay_queue))?;
        }
        if let Some(ticker) = ticker {
            let (hub, info, key) = (hub.clone(), info.clone(), key.clone());
            thread::Builder::new()
                .name("redis-ticker".into())
                .spawn(move || tick_loop(&hub, &info, &key, maxlen, &ticker))?;
        }
        {
            let state = state.clone();
            thread::Builder::new()
                .name("redis-reader".into())
                .spawn(move || read_loop(&hub, &info, &key, &state, warm_tx))?;
        }
        let started = Instant::now();
        if warm_rx.recv_timeout(WARM_UP).is_err() {
            warn!("still reading Redis's stream after {WARM_UP:?}; serving meanwhile");
        } else {
            info!(elapsed = ?started.elapsed(), "read what Redis holds; serving");
        }
        Ok(Cluster {
            jobs,
            replays,
            state,
        })
    }

    /// The next part of a replay: from the node's history when it reaches back to the
    /// cursor, else from Redis on the replayer thread.
    pub fn replay(
        &self,
        hub: &Hub,
        from: usize,
        ticket: Ticket,
        names: &[Arc<str>],
        cursor: Cursor,
        room: usize,
    ) {
        if hub.history_covers(names, &cursor) {
            return hub.replay(from, ticket, names, cursor, room);
        }
        let job = ReplayJob {
            from,
            ticket,
            names: names.to_vec(),
            cursor,
            room,
        };
        if let Err(e) = self.replays.try_send(job) {
            // Busy or gone: the node's own history answers (with its `reset`).
            let job = match e {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            };
            hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
        }
    }

    /// Queues a publish for the publisher thread; answers `503` at once when Redis is
    /// unreachable or the queue is full.
    pub fn publish(
        &self,
        hub: &Hub,
        from: usize,
        ticket: Option<Ticket>,
        topic: &str,
        event: Option<&str>,
        data: &str,
    ) {
        let refuse = |reason: &str| {
            if let Some(ticket) = ticket {
                hub.answer(
                    from,
                    Inbox::Published {
                        ticket,
                        outcome: Err(Unavailable {
                            reason: reason.to_owned(),
                        }),
                    },
                );
            }
        };
        if !self.state.publisher_up.load(Ordering::Relaxed) {
            return refuse("the cluster broker (Redis) is unreachable; retry later");
        }
        let job = Job {
            from,
            ticket,
            topic: topic.to_owned(),
            event: event.map(str::to_owned),
            data: data.to_owned(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => refuse("the cluster broker is busy; retry later"),
            Err(TrySendError::Disconnected(_)) => refuse("the cluster broker has stopped"),
        }
    }

    /// Whether both connections to Redis work.
    pub fn healthy(&self) -> bool {
        self.state.publisher_up.load(Ordering::Relaxed)
            && self.state.reader_up.load(Ordering::Relaxed)
    }

    /// The figures `/metrics` shows.
    pub fn figures(&self) -> Figures {
        let s = &self.state;
        Figures {
            up: self.healthy(),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            round_trips: s.round_trips.load(Ordering::Relaxed),
            round_trip_ns: s.round_trip_ns.load(Ordering::Relaxed),
            lag_ms: s.lag_ms.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
        }
    }
}

/// Waits that double from [`BACKOFF`]'s first to its longest.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF.0)
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(BACKOFF.1);
        wait
    }
}

/// Answers one publish.
fn answer(hub: &Hub, job: &Job, outcome: Result<Accepted, Unavailable>) {
    if let Some(ticket) = job.ticket {
        hub.answer(job.from, Inbox::Published { ticket, outcome });
    }
}

fn unavailable(e: &LinkError) -> Unavailable {
    Unavailable {
        reason: format!("the cluster broker (Redis) failed: {e}"),
    }
}

/// The publisher thread: connect, then send what waits in pipelines until the shards are
/// gone. While Redis is unreachable every publish that still reaches it gets `503`.
fn publish_loop(
    hub: &Hub,
    info: &ConnectionInfo,
    key: &str,
    maxlen: u64,
    queue: &Receiver<Job>,
    state: &State,
) {
    let mut link: Option<Link> = None;
    let mut backoff = Backoff::new();
    let mut connected_before = false;
    loop {
        let Some(conn) = link.as_mut() else {
            match Link::connect(info.clone(), key, Timeouts::default()) {
                Ok(conn) => {
                    link = Some(conn);
                    state.publisher_up.store(true, Ordering::Relaxed);
                    if std::mem::replace(&mut connected_before, true) {
                        state.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    backoff = Backoff::new();
                    info!("publisher connected to Redis");
                }
                Err(e) => {
                    state.publisher_up.store(false, Ordering::Relaxed);
                    let wait = backoff.next();
                    warn!("publisher cannot reach Redis ({e}); retrying in {wait:?}");
                    // Whatever was queued before the loss is answered now, not after the wait.
                    let until = Instant::now() + wait;
                    loop {
                        match queue.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(job) => answer(hub, &job, Err(unavailable(&e))),
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
            }
            continue;
        };
        let Ok(first) = queue.recv() else {
            return; // every shard is gone
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let jobs: Vec<Publish<'_>> = batch
            .iter()
            .map(|j| Publish {
                topic: &j.topic,
                event: j.event.as_deref(),
                data: &j.data,
            })
            .collect();
        let sent = Instant::now();
        match conn.publish(&jobs, maxlen, &fresh_epoch()) {
            Ok(appended) => {
                let rtt = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                state.round_trips.fetch_add(1, Ordering::Relaxed);
                state.round_trip_ns.fetch_add(rtt, Ordering::Relaxed);
                // A new epoch is known to this node before its publisher hears the answer,
                // so a resume from an old id right after is told reset, not replayed as if
                // nothing happened (the reader may not have read the new entry yet).
                if let Some(first) = appended.first() {
                    hub.observe_epoch(Some(&first.epoch));
                }
                for (job, appended) in batch.iter().zip(appended) {
                    let accepted = Accepted {
                        id: appended.id,
                        epoch: Some(Arc::from(appended.epoch.as_str())),
                        subscribers: hub.subscribers(&job.topic),
                    };
                    answer(hub, job, Ok(accepted));
                }
            }
            Err(e) => {
                warn!("publishing to Redis failed: {e}");
                for job in &batch {
                    answer(hub, job, Err(unavailable(&e)));
                }
                if e.is_connection_lost() {
                    link = None;
                    state.publisher_up.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The ticker thread: every period, the cluster's next heartbeat if this node holds (or
/// takes) the lease. Its beat comes back through the reader like any entry. Silent while a
/// hand-over has frozen the hub (the successor ticks on) and while Redis is unreachable.
fn tick_loop(hub: &Hub, info: &ConnectionInfo, key: &str, maxlen: u64, ticker: &Ticker) {
    // Longer than two periods: a live holder renews it in time even when one beat is late,
    // and a lost holder is replaced within about two beats.
    let lease = ticker.period * 2 + Duration::from_secs(1);
    let mut link: Option<Link> = None;
    let mut next = Instant::now() + ticker.period;
    loop {
        thread::sleep(next.saturating_duration_since(Instant::now()));
        // One beat per period, never a burst to catch up after a long stall.
        next = (next + ticker.period).max(Instant::now() + ticker.period / 2);
        if hub.frozen() {
            continue;
        }
        if link.is_none() {
            match Link::connect(info.clone(), key, Timeouts::default()) {
                Ok(conn) => link = Some(conn),
                Err(e) => {
                    debug!("heartbeat: cannot reach Redis ({e})");
                    continue;
                }
            }
        }
        let Some(conn) = link.as_mut() else {
            continue;
        };
        match conn.tick(&ticker.holder, lease, DEFAULT_TOPIC, maxlen, &fresh_epoch()) {
            Ok(Some((_, appended))) => {
                hub.observe_epoch(Some(&appended.epoch));
            }
            Ok(None) => {} // another node beats for the cluster
            Err(e) => {
                warn!("heartbeat: {e}");
                if e.is_connection_lost() {
                    link = None;
                }
            }
        }
    }
}

/// The reader thread: follow the stream into the hub, for the node's whole life.
fn read_loop(hub: &Hub, info: &ConnectionInfo, key: &str, state: &State, warm: mpsc::Sender<()>) {
    let mut warm = Some(warm);
    let mut link: Option<Link> = None;
    let mut after = EventId::ZERO;
    let mut backoff = Backoff::new();
    let mut connected_before = false;
    let mut generation = hub.generation();
    loop {
        if hub.generation() != generation {
            // The publisher saw a new epoch first: read the new stream from its start.
            generation = hub.generation();
            after = EventId::ZERO;
        }
        let Some(conn) = link.as_mut() else {
            let io = Timeouts::default();
            let connected = Link::connect(info.clone(), key, io).and_then(|mut conn| {
                let epoch = conn.epoch()?;
                Ok((conn, epoch))
            });
            match connected {
                Ok((conn, epoch)) => {
                    // The same epoch: go on after what this node recorded. Another (or
                    // none: Redis lost its data): start over from the stream's beginning.
                    if hub.observe_epoch(epoch.as_deref()) {
                        after = EventId::ZERO;
                    } else {
                        after = hub.last_id().0;
                    }
                    link = Some(conn);
                    state.reader_up.store(true, Ordering::Relaxed);
                    if std::mem::replace(&mut connected_before, true) {
                        state.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    backoff = Backoff::new();
                    info!(after = %after, "reader connected to Redis");
                }
                Err(e) => {
                    state.reader_up.store(false, Ordering::Relaxed);
                    if let Some(warm) = warm.take() {
                        let _ = warm.send(()); // nothing to warm from: serve degraded
                    }
                    let wait = backoff.next();
                    warn!("reader cannot reach Redis ({e}); retrying in {wait:?}");
                    hub.expire_waiting();
                    thread::sleep(wait);
                }
            }
            continue;
        };
        // While warming up, read what is there without waiting for more.
        let block = if warm.is_some() {
            Duration::from_millis(1)
        } else {
            BLOCK
        };
        match conn.read(after, block, READ_COUNT) {
            Ok(read) => {
                // An entry of another epoch than the node's: ask Redis which one is current.
                // Entries of a lost epoch still in flight (read just before Redis lost its
                // data) are dropped, so the node never flips back to the old epoch.
                let (_, ours) = hub.last_id();
                let differs = read
                    .entries
                    .iter()
                    .any(|e| Some(e.epoch.as_str()) != ours.as_deref());
                let current = if differs {
                    match conn.epoch() {
                        Ok(current) => current,
                        Err(e) => {
                            warn!("reading Redis's epoch failed: {e}");
                            if e.is_connection_lost() {
                                link = None;
                                state.reader_up.store(false, Ordering::Relaxed);
                            }
                            continue;
                        }
                    }
                } else {
                    ours.map(|e| e.to_string())
                };
                let mut restarted = false;
                for e in &read.entries {
                    if Some(e.epoch.as_str()) != current.as_deref() {
                        continue;
                    }
                    restarted |=
                        hub.append_entry(e.id, &e.epoch, &e.topic, e.event.as_deref(), &e.data);
                }
                state
                    .skipped
                    .fetch_add(read.skipped as u64, Ordering::Relaxed);
                let seen = read.entries.len() + read.skipped;
                if restarted {
                    // A new epoch's first entries may sort below where this node was.
                    after = EventId::ZERO;
                    continue;
                }
                if let Some(last) = read.last {
                    after = last;
                }
                if seen < READ_COUNT {
                    if let Some(warm) = warm.take() {
                        let _ = warm.send(());
                    }
                }
                if seen == 0 {
                    // Idle: did Redis lose its data meanwhile (FLUSHALL keeps connections)?
                    match conn.epoch() {
                        Ok(epoch) if hub.observe_epoch(epoch.as_deref()) => {
                            warn!("Redis's epoch changed; reading its stream from the start");
                            after = EventId::ZERO;
                        }
                        Ok(_) => {}
                        Err(e) => warn!("reading Redis's epoch failed: {e}"),
                    }
                    state.lag_ms.store(0, Ordering::Relaxed);
                } else if seen == READ_COUNT {
                    if let Ok(Some(newest)) = conn.last_generated() {
                        let lag = newest.ms().saturating_sub(after.ms());
                        state.lag_ms.store(lag, Ordering::Relaxed);
                    }
                } else {
                    state.lag_ms.store(0, Ordering::Relaxed);
                }
                hub.expire_waiting();
            }
            Err(e) => {
                warn!("reading Redis's stream failed: {e}");
                if e.is_connection_lost() {
                    link = None;
                    state.reader_up.store(false, Ordering::Relaxed);
                } else {
                    thread::sleep(backoff.next());
                }
            }
        }
    }
}

/// The replayer thread: serves replay steps from Redis. The jobs waiting together are served
/// in one round that reads each range once: a thousand tabs resuming from the same id after a
/// deploy cost one `XRANGE` per step, not a thousand.
fn replay_loop(hub: &Hub, info: &ConnectionInfo, key: &str, queue: &Receiver<ReplayJob>) {
    let mut link: Option<Link> = None;
    while let Ok(job) = queue.recv() {
        let mut round = vec![job];
        while let Ok(job) = queue.try_recv() {
            round.push(job);
        }
        if link.is_none() {
            match Link::connect(info.clone(), key, Timeouts::default()) {
                Ok(conn) => link = Some(conn),
                Err(e) => warn!("replaying from Redis: cannot reach it ({e})"),
            }
        }
        let Some(conn) = link.as_mut() else {
            // Without Redis the node's own history answers, with its `reset`.
            for job in round {
                hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
            }
            continue;
        };
        let mut ranges = Ranges {
            conn,
            read: HashMap::new(),
            oldest: None,
        };
        let mut lost = false;
        for job in round {
            if lost {
                hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
                continue;
            }
            if let Err(e) = replay_from_redis(hub, &mut ranges, job) {
                warn!("replaying from Redis failed: {e}");
                lost = e.is_connection_lost();
            }
        }
        if lost {
            link = None;
        }
    }
}

/// The ranges read in one round of the replayer, each read once.
struct Ranges<'a> {
    conn: &'a mut Link,
    read: HashMap<EventId, Arc<Read>>,
    /// The stream's oldest entry, once asked.
    oldest: Option<Option<EventId>>,
}

impl Ranges<'_> {
    /// The entries after `after` (up to [`RANGE_COUNT`]).
    fn after(&mut self, after: EventId) -> Result<Arc<Read>, LinkError> {
        if let Some(read) = self.read.get(&after) {
            return Ok(read.clone());
        }
        let read = Arc::new(self.conn.range(after, RANGE_COUNT)?);
        self.read.insert(after, read.clone());
        Ok(read)
    }

    /// The id of the oldest entry Redis holds.
    fn oldest(&mut self) -> Result<Option<EventId>, LinkError> {
        if let Some(oldest) = self.oldest {
            return Ok(oldest);
        }
        let oldest = self.conn.range(EventId::ZERO, 1)?.last;
        self.oldest = Some(oldest);
        Ok(oldest)
    }
}

/// One replay step from Redis: the stream's entries after its cursor, up to its room. When
/// the cursor reaches what the node kept, the node's history takes over (its last step is
/// ordered with live events under the hub's lock). When Redis no longer has what follows
/// the cursor either, the history answers too, and its first step says `reset` (expired).
fn replay_from_redis(
    hub: &Hub,
    ranges: &mut Ranges<'_>,
    mut job: ReplayJob,
) -> Result<(), LinkError> {
    let (_, epoch) = hub.last_id();
    let handover =
        |job: ReplayJob| hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
    // Redis trimmed past the cursor too: nothing here fills the gap.
    // Its oldest entry must be the cursor itself or older to prove nothing between is gone.
    let oldest = match ranges.oldest() {
        Ok(oldest) => oldest,
        Err(e) => {
            handover(job);
            return Err(e);
        }
    };
    if oldest.is_none_or(|oldest| oldest > job.cursor.after()) {
        handover(job);
        return Ok(());
    }
    let mut batch = Batch::default();
    let mut used = 0usize;
    loop {
        let read = match ranges.after(job.cursor.after()) {
            Ok(read) => read,
            Err(e) => {
                handover(job);
                return Err(e);
            }
        };
        if read.last.is_none() {
            break; // Redis has nothing newer: the history finishes the replay
        }
        for entry in &read.entries {
            if epoch.as_deref() != Some(entry.epoch.as_str()) {
                handover(job); // a new epoch meanwhile: the history knows what to say
                return Ok(());
            }
            if job.names.iter().any(|n| **n == *entry.topic) {
                let frame = sse::encode_event(
                    entry.id,
                    epoch.as_deref(),
                    entry.event.as_deref(),
                    &entry.data,
                );
                if used.saturating_add(frame.len()) > job.room && !batch.frames.is_empty() {
                    return send_more(hub, job, batch);
                }
                used = used.saturating_add(frame.len());
                batch.frames.push(frame);
            }
            job.cursor.advance(entry.id);
        }
        if let Some(last) = read.last {
            job.cursor.advance(last);
        }
        if hub.history_covers(&job.names, &job.cursor) {
            break;
        }
    }
    if batch.frames.is_empty() {
        handover(job);
        Ok(())
    } else {
        send_more(hub, job, batch)
    }
}

/// Sends a replay step read from Redis; the stream asks again as it drains.
fn send_more(hub: &Hub, job: ReplayJob, batch: Batch) -> Result<(), LinkError> {
    hub.answer(
        job.from,
        Inbox::Replay {
            ticket: job.ticket,
            cursor: job.cursor,
            step: ReplayStep::More(batch),
        },
    );
    Ok(())
}
