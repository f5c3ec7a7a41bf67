//! Cluster mode's two threads, each with its own Redis connection ([`Link`]):
//!
//! - the **publisher** takes publishes from the shards (a bounded channel), sends as many as
//!   are waiting in one pipeline through the epoch script, and answers each shard through
//!   its inbox with the entry's id, or `503` and why;
//! - the **reader** follows the stream with `XREAD BLOCK`, and hands each entry to the hub,
//!   which encodes it once for this node and puts it in every shard's inbox.
//!
//! - the **replayer** serves a resume from before what this node kept, from Redis
//!   (`XRANGE`), until the stream reaches the node's own history, which finishes it; bounded
//!   per resume and shared between resumes (see [`super::replay`]).
//!
//! None ever blocks a shard. Both reconnect with backoff (one log line per try) and the
//! node stays up meanwhile: streams stay open, publishes and `/healthz` answer `503`. The
//! reader resumes after the last id it recorded, or from the start of the stream when
//! Redis's epoch changed (it lost its data; new ids may even be lower than old ones).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis::ConnectionInfo;
use tracing::{debug, info, warn};

use super::redis::{fresh_epoch, Link, LinkError, Publish, Timeouts};
use super::replay::{self, Limits, ReplayJob};
use crate::delivery::history::Cursor;
use crate::delivery::hub::{Accepted, Hub, Inbox, Ticket, Unavailable};
use crate::wire::event_id::EventId;
use crate::wire::params::DEFAULT_TOPIC;

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
/// the node's own history (and its `reset`), counted in `sse_edge_replay_refused_total`.
pub const REPLAY_QUEUE: usize = 1024;

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
    /// The replayer's figures.
    pub replay: replay::Figures,
}

/// The running cluster broker.
#[derive(Debug)]
pub struct Cluster {
    jobs: SyncSender<Job>,
    replays: SyncSender<ReplayJob>,
    /// Replaying streams that went away, for the replayer.
    overs: SyncSender<replay::Over>,
    state: Arc<State>,
    replay_stats: Arc<replay::Stats>,
}

impl Cluster {
    /// Starts the publisher, reader and replayer threads on the stream `key`, and waits (up
    /// to ten seconds) until the reader has read what Redis holds, so a whole-cluster restart
    /// replays from each node's memory rather than one Redis read per stream. An unreachable
    /// Redis does not hold start-up: the node starts degraded and keeps trying.
    pub fn start<C: Send + 'static>(
        hub: Arc<Hub<C>>,
        info: ConnectionInfo,
        key: String,
        maxlen: u64,
        limits: Limits,
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
        let (overs, over_queue) = mpsc::sync_channel(REPLAY_QUEUE);
        let replay_stats = Arc::new(replay::Stats::default());
        {
            let (hub, info, key) = (hub.clone(), info.clone(), key.clone());
            let stats = replay_stats.clone();
            thread::Builder::new()
                .name("redis-replayer".into())
                .spawn(move || {
                    let queues = (&replay_queue, &over_queue);
                    replay::replay_loop(&hub, &info, &key, queues, limits, &stats)
                })?;
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
            overs,
            state,
            replay_stats,
        })
    }

    /// The next part of a replay: from the node's history when it reaches back to the
    /// cursor, else from Redis on the replayer thread.
    pub fn replay<C>(
        &self,
        hub: &Hub<C>,
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
                TrySendError::Full(job) => {
                    self.replay_stats.refused();
                    job
                }
                TrySendError::Disconnected(job) => job,
            };
            hub.replay(job.from, job.ticket, &job.names, job.cursor, job.room);
        }
    }

    /// A stream that was replaying is gone: the replayer drops its claim on cached ranges
    /// (and a step of it still queued). Not told when that queue is full: the claim then
    /// lapses by itself.
    pub fn replay_over(&self, from: usize, ticket: Ticket) {
        let _ = self.overs.try_send((from, ticket));
    }

    /// Queues a publish for the publisher thread; answers `503` at once when Redis is
    /// unreachable or the queue is full.
    pub fn publish<C>(
        &self,
        hub: &Hub<C>,
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
            replay: self.replay_stats.figures(),
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
fn answer<C>(hub: &Hub<C>, job: &Job, outcome: Result<Accepted, Unavailable>) {
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
fn publish_loop<C>(
    hub: &Hub<C>,
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
fn tick_loop<C>(hub: &Hub<C>, info: &ConnectionInfo, key: &str, maxlen: u64, ticker: &Ticker) {
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
fn read_loop<C>(
    hub: &Hub<C>,
    info: &ConnectionInfo,
    key: &str,
    state: &State,
    warm: mpsc::Sender<()>,
) {
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
