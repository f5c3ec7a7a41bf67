//! One reactor: a mio `Poll`, a listener, a slab of connections and one of the streams they
//! carry, and the loop that drives them.
//! This is the only file that calls `poll()`.
//!
//! # The OS contract
//!
//! mio is edge-triggered: an event says readiness *changed*, once. Every accept, read and
//! write therefore repeats until `WouldBlock`, or the edge is lost and the socket stalls. A
//! client's readiness is remembered in the client ([`Client::readable`], [`Client::writable`])
//! and cleared only by a `WouldBlock`, so work can stop early (backpressure) and resume later
//! without a new edge. Events may be spurious; every handler tolerates finding nothing to do.
//!
//! # One turn of the loop
//!
//! 1. `poll` with a timeout that is the nearest timer (ticker, keep-alive, request deadline,
//!    token expiry, accept back-off, the request cap's next look, a storm's end), or zero
//!    while clients are pending a flush, TLS handshakes wait for a turn, or the listener may
//!    hold connections.
//! 2. Go on with queued TLS handshakes while the turn's budget lasts (`shard/handshakes.rs`).
//!    Handle events: read and answer requests (`shard/api.rs`); notice closed streams. A
//!    wake-up means the inbox has something (or shutdown was asked). Then accept, at most
//!    256 a turn, reading each at once, and keep the request phase within its cap
//!    (`shard/accept.rs`).
//! 3. Fire due timers (`shard/timers.rs`).
//! 4. Drain the inbox, in order: events to fan out, answers to publishes, replay steps
//!    (`shard/fanout.rs`, `shard/streams.rs`). Always, so what this turn's own requests asked of the broker is
//!    answered in this turn.
//! 5. Flush every pending client once, with vectored writes, until empty or `WouldBlock`.
//!    Flushing just before sleeping lets all frames queued in this turn leave in one write.
//! 6. Free the slab slots of clients closed during the turn. Closing is deferred to here so a
//!    token never changes owner while events for it may still be in the batch.
//!
//! This file is the loop and what every room shares (queueing, flushing, closing); the rooms
//! beside it in `shard/` are `impl Shard` blocks for one idea each.
//!
//! # At capacity
//!
//! A connection that has sent a complete request is always answered: over
//! `--max-request-connections`, only one that has had a grace period and has nothing unread
//! in its socket is closed (`shard/accept.rs`, "In a storm").
//!
//! A new stream beyond `--max-clients` is *shed*: it gets `200`, the stream head, `: shed`
//! and a long jittered `retry:`, and is closed. A browser treats any other status as final
//! and never reconnects; a shed stream comes back later, or to another node. Out of file
//! descriptors, the shard frees a reserve descriptor to accept one waiting connection, sheds
//! it the same way, and takes the reserve back; only without a reserve does it pause.
//!
//! # Draining
//!
//! On shutdown the listener closes; requests already accepted are still read and answered
//! (with `Connection: close`; a new stream is shed with a short `retry:`), idle kept-alive
//! connections close, and each stream closes as soon as its queue is flushed, until none is
//! left or `--drain-timeout` passes.
//! The loop keeps sleeping in `poll` meanwhile: blocked streams wake it when writable.
//!
//! # Handing over
//!
//! In an upgrade (`SIGUSR2`) the steps come through the inbox like everything else
//! (`shard/handover.rs`): stop accepting and let requests in progress finish; detach every
//! plain stream and idle connection (out of epoll, marked `handed`: nothing is queued,
//! written or timed out for it); then forget them once the successor has them, or take them
//! back. In the successor, what was handed to a shard is installed before its first turn.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tracing::{debug, info, warn};

use crate::auth::access::{Access, StreamGrant};
use crate::auth::jwt::Trust;
use crate::broker::Broker;
use crate::delivery::admission::{Admitted, Quota, Refusal};
use crate::delivery::data::DataHeaders;
use crate::delivery::hub::{Accepted, Delivery, Hub, Inbox, ReplayStep, Ticket, Unavailable};
use crate::delivery::outbox::Written;
use crate::delivery::stream::{Bounds, Offer, Stream};
use crate::delivery::topics::{Subs, Topics};
use crate::node::client::Awaiting;
use crate::node::client::{Client, Coarse, Phase, Protocol, ReadStatus, WriteStatus};
use crate::node::config::Config;
use crate::node::guard::{self, Contained};
use crate::node::metrics::{self, Counters, ShardStats, Stat};
use crate::node::tls::{self, Certificate};
use crate::wire::cors::Cors;
use crate::wire::http::{self, Rejection, Request, Route, Step};
use crate::wire::params::{self, DEFAULT_TOPIC};
use crate::wire::sse;

mod accept;
pub(crate) use api::pages;
mod api;
mod fanout;
mod handover;
pub(crate) use handover::Adopting;
use handover::Handing;
mod h2;
mod handshakes;
use handshakes::HandshakeQueue;
mod streams;
mod timers;

/// The listener's token; client tokens are slab keys, far below it.
const LISTENER: Token = Token(usize::MAX - 1);
/// The waker's token: the mailbox has deliveries, or shutdown was asked.
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

/// How long accepting pauses after running out of file descriptors (no new edge would come
/// for connections already waiting, so the timer is what resumes accepting).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a connection we half-closed may take to close its side.
const LINGER: Duration = Duration::from_secs(2);
/// A request connection stops reading new requests while this much output is queued, so a
/// pipelining client that never reads its responses cannot grow our memory.
const RESPONSE_BACKLOG: usize = 256 * 1024;
/// Bytes read per `read` call.
const SCRATCH: usize = 16 * 1024;
/// The allocator's threshold for mapping an allocation of its own (glibc's default).
const BIG: usize = 128 * 1024;
/// Events handled per `poll` call.
const EVENTS: usize = 1024;
/// An expired stream's `retry:` is 1–2 times this: time for the page to refresh its cookie.
const EXPIRED_RETRY_MS: u64 = 5_000;
/// The resolution of the shard's timer heaps (deadlines and token expiries are kept as u32
/// counts of it since the shard started: 13 years of uptime, in 4 bytes).
const TICK: Duration = Duration::from_millis(100);
/// Streams closed for token expiry per turn, at most; the rest go next turn, so a crowd of
/// tokens minted in one second cannot hold up delivery to everyone else.
const EXPIRIES_PER_TURN: usize = 512;
/// A shed stream's `retry:` is this many times `--retry-ms` (jittered): come back later.
const SHED_RETRY_FACTOR: u64 = 10;
/// How often the outboxes holding a queue behind their front frame are asked whether they
/// still need it ([`crate::delivery::outbox::Outbox::release_unused`]): one unused for a whole period is
/// freed, so what a burst or a replay needed is back within two periods after it drained
/// (half a second), and a stream that needs its queue at least four times a second keeps it
/// rather than allocating it again for each burst.
const RELEASE_PERIOD: Duration = Duration::from_millis(250);
/// Queues given back in one look from which the memory a burst freed is returned to the
/// kernel at once (a storm's replays): each queue is a kilobyte or more.
const TRIM_AFTER: usize = 256;
/// How often shard 0 looks for idle topics to forget, at most and at least.
const FORGET_PERIOD: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// The page served at `/`, compiled in.
static PAGE: &[u8] = include_bytes!("../../index.html");

/// What every shard of a node shares besides the hub.
pub(crate) struct Node {
    /// Shutdown was asked.
    pub stop: AtomicBool,
    /// Who may hold a stream.
    pub quota: Quota,
    /// Who may publish and who may hold a stream.
    pub access: Access,
    /// The CORS answers of streams and preflights.
    pub cors: Cors,
    /// The page's response, without and with keep-alive, built once.
    pub pages: [Bytes; 2],
    /// The JWT keys in use (reloaded on `SIGHUP`).
    pub keys: Vec<Arc<Trust>>,
    /// With `--tls-cert`: the certificate new connections get (reloaded on `SIGHUP`).
    pub tls: Option<Certificate>,
}

/// What a shard needs from its server to run.
pub(crate) struct ShardParts {
    pub id: usize,
    pub poll: Poll,
    pub listener: TcpListener,
    pub inbox: Receiver<Inbox<crate::node::handover::Step>>,
    pub hub: Arc<Hub<crate::node::handover::Step>>,
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub stats: Arc<[ShardStats]>,
    pub node: Arc<Node>,
}

/// One reactor thread's state.
pub(crate) struct Shard {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<Inbox<crate::node::handover::Step>>,
    hub: Arc<Hub<crate::node::handover::Step>>,
    broker: Arc<Broker>,
    config: Arc<Config>,
    stats: Arc<[ShardStats]>,
    counters: Counters,
    node: Arc<Node>,
    clients: Slab<Client>,
    /// The streams the connections carry, addressed on their own: the topic index, the
    /// fan-out, replay steps and token expiries name streams by their key here.
    streams: Slab<Stream>,
    topics: Topics,
    /// The DATA frame headers of the delivery in course, for the HTTP/2 streams it reaches.
    data_headers: DataHeaders,
    /// Clients with output queued and not yet flushed this turn (slab keys, 4 bytes each:
    /// after a broadcast this list has held every stream).
    pending: Vec<u32>,
    /// Clients to free at the end of the turn.
    closing: Vec<usize>,
    /// When each event fanned out to a stream of this shard this turn was accepted, timed
    /// into the fan-out histograms once the turn's flush is over (`shard/fanout.rs`).
    fanned: Vec<Instant>,
    /// Clients whose outbox holds a queue behind its front frame, as (key, serial): asked
    /// every [`RELEASE_PERIOD`] to give it back once unused. Without storage of its own when
    /// no stream had a burst lately.
    queues: Vec<(u32, u32)>,
    /// When `queues` is next gone through (None while it is empty).
    next_release: Option<Instant>,
    /// Request and linger deadlines as (when, key), earliest first, "when" in [`TICK`]s
    /// since `started` rounded up; stale entries are skipped when due. 8 bytes a connection.
    deadlines: BinaryHeap<Reverse<(u32, u32)>>,
    /// Entries of `deadlines` its last compaction kept beyond one per request-phase
    /// connection (lingering connections, deadlines moved later), lowered as the heap
    /// shrinks: an estimate of the live entries that `requesting_now` does not count.
    deadlines_other: usize,
    /// When streams are closed because their token expires, as (when, stream key, serial of
    /// its connection), earliest first, "when" in [`TICK`]s since `started`: a 12-byte entry
    /// in this heap is all a token's expiry costs beyond the stream's own 4 bytes.
    expiries: BinaryHeap<Reverse<(u32, u32, u32)>>,
    /// When the shard started: the origin of `expiries`' times.
    started: Instant,
    /// Buffers for encrypting, shared by the shard's TLS connections (empty without TLS).
    tls_scratch: tls::Scratch,
    /// TLS handshake steps this turn may still run (`--tls-handshakes-per-turn`).
    handshakes_left: usize,
    /// TLS connections with handshake input waiting for a later turn's budget.
    handshakes: HandshakeQueue,
    /// Connections in the request phase, oldest first, as (key, serial, accepted at in
    /// [`TICK`]s since `started`, rounded up); entries of connections that left the phase are
    /// skipped when met and compacted in bulk.
    requesting: VecDeque<(u32, u32, u32)>,
    /// How many connections are in the request phase now (the live entries of `requesting`).
    requesting_now: usize,
    /// The most connections the request phase held during this turn.
    turn_peak: usize,
    /// When the request phase over its cap is looked at again (a young connection comes of
    /// age, or the last look's share was spent).
    next_cap_check: Option<Instant>,
    /// The listener's last accept did not hit `WouldBlock`: connections may be waiting, and
    /// no new edge will say so.
    listener_ready: bool,
    /// Connections this turn may still accept ([`accept::ACCEPTS_PER_TURN`] a turn).
    accepts_left: usize,
    /// The reconnect storm in course, if any.
    storm: Option<accept::Storm>,
    /// Serial of the last connection accepted (tells a reused slab key from its old owner).
    serial: u32,
    /// The address key each stream (by its key) was counted under, with --max-streams-per-ip
    /// only.
    addresses: HashMap<usize, u64>,
    /// When shard 0 next forgets idle topics.
    next_forget: Option<Instant>,
    /// Debug builds: deliveries of this topic panic (tests prove a panic ends the process).
    #[cfg(debug_assertions)]
    panic_topic: Option<String>,
    next_tick: Option<Instant>,
    next_keepalive: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Accepting has been failing since the last success (log the failure once, not per try).
    accept_failing: bool,
    /// A descriptor held back so that, out of descriptors, one connection can still be
    /// accepted and told to come back later.
    reserve: Option<File>,
    /// Set once shutdown began: when to give up flushing.
    drain_deadline: Option<Instant>,
    /// Where this shard is in handing its connections to the node's next process.
    handing: Option<Handing>,
    /// Connections handed over by the node's previous process, installed at the first turn.
    adopting: Adopting,
    /// The time at the start of this turn (one clock read per turn, not per client).
    now: Instant,
    scratch: Box<[u8]>,
    rng: u64,
}

impl Shard {
    /// Sets up a shard; the listener is registered here, the waker already was.
    pub(crate) fn new(parts: ShardParts) -> io::Result<Shard> {
        let ShardParts {
            id,
            poll,
            mut listener,
            inbox,
            hub,
            broker,
            config,
            stats,
            node,
        } = parts;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let serves_tls = node.tls.is_some();
        // Only shard 0 runs the demo ticker, so a tick is one event however many shards.
        // One ticker per node, on shard 0; in cluster mode the cluster's ticker thread beats
        // once for every node instead (broker/cluster.rs).
        let next_tick = config
            .tick_period()
            .filter(|_| id == 0 && config.redis.is_none())
            .map(|p| now + p);
        let next_keepalive = config.keepalive_period().map(|p| now + p / 2);
        let next_forget = (id == 0).then(|| now + timers::forget_period(&config));
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Shard {
            id,
            poll,
            listener: Some(listener),
            inbox,
            hub,
            broker,
            config,
            stats,
            counters: Counters::default(),
            node,
            // The lists that grow with the streams start at the allocator's mmap threshold
            // (128 KiB): their memory is then mapped, untouched pages cost nothing, and
            // growing remaps it instead of leaving each outgrown copy behind in the heap.
            clients: Slab::with_capacity(BIG / std::mem::size_of::<Client>() + 1),
            streams: Slab::with_capacity(BIG / std::mem::size_of::<Stream>() + 1),
            topics: Topics::default(),
            data_headers: DataHeaders::default(),
            pending: Vec::with_capacity(BIG / 4),
            closing: Vec::new(),
            fanned: Vec::new(),
            queues: Vec::new(),
            next_release: None,
            deadlines: BinaryHeap::with_capacity(BIG / std::mem::size_of::<Reverse<(u32, u32)>>()),
            deadlines_other: 0,
            expiries: BinaryHeap::new(),
            started: now,
            tls_scratch: tls::Scratch::new(serves_tls),
            handshakes_left: 0, // set at the start of every turn
            handshakes: HandshakeQueue::default(),
            requesting: VecDeque::new(),
            requesting_now: 0,
            turn_peak: 0,
            next_cap_check: None,
            listener_ready: false,
            accepts_left: 0, // set at the start of every turn
            storm: None,
            addresses: HashMap::new(),
            serial: 0,
            next_forget,
            #[cfg(debug_assertions)]
            panic_topic: std::env::var("SSE_EDGE_TEST_PANIC_TOPIC").ok(),
            next_tick,
            next_keepalive,
            accept_paused_until: None,
            accept_failing: false,
            reserve: File::open("/dev/null").ok(),
            drain_deadline: None,
            handing: None,
            adopting: Adopting::default(),
            now,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            rng: (seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
        })
    }

    /// Runs the loop until shutdown is asked and the drain is over.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        self.adopt_all();
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            self.handshakes_left = self.config.tls_handshakes_per_turn;
            self.accepts_left = accept::ACCEPTS_PER_TURN;
            self.turn_peak = self.requesting_now;
            self.resume_handshakes();
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.listener_ready = true,
                    WAKER => woken = true,
                    Token(key) => self.on_client_event(key, event),
                }
            }
            // After the reads of connections accepted earlier, never thousands before them.
            self.accept_some();
            if woken && self.drain_deadline.is_none() && self.node.stop.load(Ordering::Acquire) {
                self.begin_drain();
            }
            self.fire_timers(self.now);
            // Always, not only when woken: what this turn's own publishes and replays put in
            // the inbox is answered in this same turn (the wake they also caused only makes
            // the next poll return at once).
            self.drain_inbox();
            // Mirror before flushing too: a client that sees a response (or an event) can
            // then also see it counted, whichever shard answers its scrape.
            self.stats[self.id].store(&self.counters);
            let first_write = self.flush_pending();
            self.record_fanout(first_write);
            self.check_settled();
            if self.drain_deadline.is_some() {
                self.close_drained();
            }
            self.sweep_closing();
            self.end_turn_accepting();
            self.compact_requesting();
            self.stats[self.id].store(&self.counters);
            if self.drain_deadline.is_some() && self.clients.is_empty() {
                info!(shard = self.id, "shard stopped");
                return Ok(());
            }
        }
    }

    /// Stops accepting and starts the drain.
    fn begin_drain(&mut self) {
        self.listener = None;
        self.accept_paused_until = None;
        let timeout = Duration::from_secs(self.config.drain_timeout);
        self.drain_deadline = Some(self.now + timeout);
        // Connections just handed to a successor are not this process's to drain.
        let clients = self.clients.iter().filter(|(_, c)| !c.handed).count();
        info!(shard = self.id, clients, "draining for up to {timeout:?}");
        self.go_away_all();
    }

    /// Closes every connection that has nothing left to send, or all of them once the drain
    /// deadline has passed.
    fn close_drained(&mut self) {
        let expired = self.drain_deadline.is_some_and(|d| self.now >= d);
        let done: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                !c.closing && !c.handed && (expired || !(c.wants_flush() || owed_an_answer(c)))
            })
            .map(|(key, _)| key)
            .collect();
        let unsent = done
            .iter()
            .filter(|&&key| self.clients[key].wants_flush())
            .count();
        if expired && unsent > 0 {
            warn!(
                shard = self.id,
                unsent, "drain timeout: closing with output unsent"
            );
        }
        for key in done {
            self.clients[key].close_notify();
            self.close(key);
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        // Work left for the next turn: come back at once (each of these shrinks as it is
        // done, so this is no spin).
        if !self.pending.is_empty()
            || !self.handshakes.is_empty()
            || (self.listener_ready && self.may_accept())
        {
            return Some(Duration::ZERO);
        }
        [
            self.next_tick,
            self.next_keepalive,
            self.accept_paused_until,
            self.next_cap_check,
            self.storm_end(),
            self.drain_deadline,
            match &self.handing {
                Some(Handing::Settling { until, .. }) => Some(*until),
                _ => None,
            },
            self.next_forget,
            self.next_release,
            self.deadlines
                .peek()
                .map(|&Reverse((ticks, _))| self.started + TICK * ticks),
            self.expiries
                .peek()
                .map(|&Reverse((ticks, _, _))| self.started + TICK * ticks),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    fn on_client_event(&mut self, key: usize, event: &Event) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.closing || client.handed {
            return;
        }
        if event.is_writable() {
            client.writable = true;
            if client.wants_flush() {
                self.mark_pending(key);
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.clients[key].readable = true;
            self.on_readable(key);
        }
    }

    fn on_readable(&mut self, key: usize) {
        let client = &mut self.clients[key];
        match client.phase {
            Phase::Request(_) => self.serve_requests(key),
            Phase::Streaming(Protocol::Http2(_)) => self.serve_h2(key),
            Phase::Streaming(_) | Phase::Linger { .. } => {
                if client.discard_input(&mut self.scratch) == ReadStatus::Closed {
                    self.close(key);
                }
            }
        }
    }

    /// Handles what the broker and the other shards sent, in order.
    fn drain_inbox(&mut self) {
        while let Ok(message) = self.inbox.try_recv() {
            match message {
                Inbox::Event(delivery) => {
                    self.hub.took_event(self.id);
                    self.deliver(&delivery);
                }
                Inbox::Missed(missed) => self.missed(&missed),
                Inbox::Published { ticket, outcome } => self.on_published(ticket, outcome),
                Inbox::Handover(step) => self.on_handover(step),
                Inbox::Replay {
                    ticket,
                    cursor,
                    step,
                } => self.on_replay(ticket, cursor, step),
            }
        }
    }

    // ----- writing -----------------------------------------------------------------------

    /// Queues bytes that must not be dropped (responses, stream heads) and marks `key` pending.
    fn queue(&mut self, key: usize, bytes: Bytes) {
        self.counters.add(Stat::QueuedBytes, bytes.len() as u64);
        self.clients[key].outbox.push(bytes);
        self.mark_pending(key);
    }

    /// Queues bytes of stream `stream` that must not be dropped (its notices, replayed
    /// frames) onto its connection `conn`, and marks `conn` pending.
    fn queue_for(&mut self, stream: usize, conn: usize, bytes: Bytes) {
        if let Some(mut lane) = self.clients[conn].lane(stream, &mut self.data_headers) {
            lane.push(bytes);
            let pushed = lane.pushed();
            self.counters.add(Stat::QueuedBytes, pushed as u64);
            self.mark_pending(conn);
        }
    }

    fn mark_pending(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if !client.pending {
            client.pending = true;
            self.pending.push(key as u32);
        }
    }

    /// Flushes every pending client once. A client that would block waits for its next
    /// writable event; one that drained its output may read further requests. Returns when
    /// the first write to a stream ended, if events were fanned out this turn (the clock is
    /// read once, not per client).
    fn flush_pending(&mut self) -> Option<Instant> {
        let mut first_write = None;
        let timing = !self.fanned.is_empty();
        let header_timeout = self.config.header_timeout();
        let mut pending = std::mem::take(&mut self.pending);
        let mut resume = Vec::new();
        let mut replays = Vec::new();
        for key in pending.drain(..) {
            let key = key as usize;
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.pending = false;
            if client.closing || client.handed {
                continue;
            }
            if client.writable {
                let written = match client.flush(&mut self.tls_scratch) {
                    WriteStatus::Drained(w) => {
                        if client.close_after_flush {
                            let deadline = Instant::now() + LINGER;
                            if matches!(client.phase, Phase::Request(_)) {
                                self.requesting_now = self.requesting_now.saturating_sub(1);
                            }
                            client.start_linger(deadline);
                            // The peer may have closed already; its EOF edge may be spent.
                            let gone =
                                client.discard_input(&mut self.scratch) == ReadStatus::Closed;
                            self.set_deadline(key, deadline);
                            if gone {
                                self.close(key);
                            }
                        }
                        w
                    }
                    WriteStatus::Blocked(w) => w,
                    WriteStatus::Failed => {
                        self.close(key);
                        Written::default()
                    }
                };
                if timing && first_write.is_none() && written.bytes > 0 {
                    let streaming = self
                        .clients
                        .get(key)
                        .is_some_and(|c| matches!(c.phase, Phase::Streaming(_)));
                    if streaming {
                        first_write = Some(Instant::now());
                    }
                }
                self.counters.add(Stat::BytesWritten, written.bytes as u64);
                self.counters
                    .add(Stat::FramesWritten, written.frames as u64);
                self.counters.sub(Stat::QueuedBytes, written.bytes as u64);
            }
            let client = &mut self.clients[key];
            if client.outbox.holds_queue() && !client.queue_listed && !client.closing {
                // A burst allocated a queue behind the front: it goes back once unused.
                client.queue_listed = true;
                self.queues.push((key as u32, client.serial));
                self.next_release.get_or_insert(self.now + RELEASE_PERIOD);
            }
            if let Phase::Streaming(_) = client.phase {
                let closing = client.closing;
                let mut i = 0;
                while let Some(s) = match &client.phase {
                    Phase::Streaming(protocol) => protocol.stream_at(i),
                    _ => None,
                } {
                    i += 1;
                    let (Some(stream), Some(lane)) = (
                        self.streams.get_mut(s),
                        client.lane(s, &mut self.data_headers),
                    ) else {
                        continue;
                    };
                    let waiting = lane.queued();
                    if waiting == 0 {
                        stream.on_drained(self.now);
                    }
                    // A replay goes on once half its queue's room is free again, so it never
                    // holds more than --client-buffer and the socket always has the next part.
                    if stream.replay().is_some_and(|r| !r.asked)
                        && !closing
                        && waiting < self.config.client_buffer / 2
                    {
                        replays.push(s);
                    }
                }
            }
            // A request connection stops reading while RESPONSE_BACKLOG bytes wait for its
            // peer; whenever it is below that again, it may go on (finding nothing is cheap).
            // Its deadline moves on only once everything it was sent is out: a client that
            // pipelines requests and never reads keeps output queued, and so meets
            // --header-timeout however many requests it trickles in.
            let client = &mut self.clients[key];
            if !client.closing
                && !client.close_after_flush
                && client.readable
                && client.phase_is_h2()
                && client.outbox.queued_bytes() < RESPONSE_BACKLOG
            {
                resume.push(key);
            }
            if let (false, false, Phase::Request(state)) =
                (client.closing, client.close_after_flush, &mut client.phase)
            {
                if client.outbox.is_empty() {
                    state.deadline = self.now + header_timeout;
                }
                if client.outbox.queued_bytes() < RESPONSE_BACKLOG {
                    resume.push(key);
                }
            }
        }
        // Keep the list's capacity; anything queued while resuming goes out next turn.
        pending.append(&mut self.pending);
        self.pending = pending;
        for key in resume {
            if self.clients.get(key).is_some_and(Client::phase_is_h2) {
                self.serve_h2(key);
            } else {
                self.serve_requests(key);
            }
        }
        for stream in replays {
            self.continue_replay(stream);
        }
        first_write
    }

    /// Gives back the queues behind front frames that no frame used since the last time
    /// ([`RELEASE_PERIOD`]), and forgets clients that are gone. The list's own storage goes
    /// once it is empty: a storm filled it once, and it stays empty until the next burst.
    fn release_unused_queues(&mut self) {
        let Shard {
            queues, clients, ..
        } = self;
        let listed = queues.len();
        queues.retain(|&(key, serial)| {
            let Some(client) = clients.get_mut(key as usize).filter(|c| c.serial == serial) else {
                return false; // closed: its queue went with it
            };
            let held = client.outbox.release_unused();
            client.queue_listed = held;
            held
        });
        if listed - queues.len() >= TRIM_AFTER {
            give_back_freed_memory();
        }
        if queues.is_empty() {
            *queues = Vec::new();
            self.next_release = None;
        } else {
            if queues.len() < queues.capacity() / 4 {
                queues.shrink_to(queues.len() * 2);
            }
            self.next_release = Some(self.now + RELEASE_PERIOD);
        }
    }

    /// Makes room for one more stream, as [`Shard::room_for_a_client`] does for connections.
    fn room_for_a_stream(&mut self) {
        if self.streams.len() == self.streams.capacity() {
            let step = (self.streams.capacity() / 8).max(BIG / std::mem::size_of::<Stream>());
            self.streams.reserve_exact(step);
        }
    }

    /// Makes room for one more client. The slab grows by an eighth (at least 128 KiB, the
    /// size it starts at), not by doubling: after a storm it holds at most an eighth more
    /// slots than it has ever had clients, where doubling would leave up to twice as many,
    /// every one of them a whole `Client` of memory. The slab is above the allocator's
    /// mapping threshold, so growing remaps it rather than copying it.
    fn room_for_a_client(&mut self) {
        if self.clients.len() == self.clients.capacity() {
            let step = (self.clients.capacity() / 8).max(BIG / std::mem::size_of::<Client>());
            self.clients.reserve_exact(step);
        }
    }

    // ----- closing -----------------------------------------------------------------------

    /// Marks `key` for removal at the end of the turn.
    fn close(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.closing {
                if client.handshaking() {
                    self.counters.add(Stat::TlsHandshakeFailures, 1);
                }
                client.closing = true;
                self.closing.push(key);
                if matches!(client.phase, Phase::Request(_)) {
                    self.left_request_phase();
                }
            }
        }
    }

    /// Frees closed clients: leaves their topics, drops their sockets (which also removes
    /// them from epoll), and gives back any bytes they still had queued.
    fn sweep_closing(&mut self) {
        for key in std::mem::take(&mut self.closing) {
            let client = self.clients.remove(key);
            self.counters
                .sub(Stat::QueuedBytes, client.outbox.queued_bytes() as u64);
            self.counters.sub(Stat::Connections, 1);
            match &client.phase {
                Phase::Streaming(protocol) => {
                    for s in protocol.streams() {
                        let serial = client.serial_of(s).unwrap_or(client.serial);
                        if let Some(stream) = self.streams.try_remove(s) {
                            self.stream_ended(s, serial, stream);
                        }
                    }
                }
                _ => debug!(shard = self.id, key, "connection closed"),
            }
        }
    }

    /// Stream `key` is over and out of the slab (its connection closes, or it is told its
    /// token expired; `serial` is its connection's): it leaves its topics and gives back its
    /// place in the quotas, and what a replay kept for it.
    fn stream_ended(&mut self, key: usize, serial: u32, stream: Stream) {
        if stream.replay().is_some() {
            self.broker.replay_over(self.id, Ticket { key, serial });
        }
        let mut left: Vec<Arc<str>> = Vec::new();
        for membership in stream.topics() {
            let gone = self.topics.leave(membership, key);
            left.extend(gone.name);
            // The topic's last subscriber took the freed slot: tell it where it sits now.
            if let Some((other, old, new)) = gone.moved {
                if let Some(s) = self.streams.get_mut(other) {
                    s.relocate(old, new);
                }
            }
        }
        self.hub.unsubscribe(left.iter().map(|n| &**n));
        self.node.quota.release(Admitted {
            address: self.addresses.remove(&key),
        });
        self.counters.sub(Stat::Streams, 1);
        self.counters.add(Stat::StreamsClosed, 1);
        debug!(shard = self.id, key, "stream closed");
    }
}

/// Whether a draining node still owes `client` an answer: a connection that has not sent its
/// first request yet (its client is about to: an upgrade's old process must not refuse it),
/// or one in the middle of a request. Idle kept-alive connections are owed nothing.
fn owed_an_answer(client: &Client) -> bool {
    match &client.phase {
        Phase::Request(state) => {
            !state.answered
                || state.parser.buffered() > 0
                || state.parser.head().is_some()
                || state.awaiting.is_some()
        }
        Phase::Streaming(Protocol::Http2(h2)) => h2.owes_answers(),
        Phase::Streaming(_) | Phase::Linger { .. } => false,
    }
}

/// Returns the allocator's free memory to the kernel. glibc keeps what a storm's replays freed
/// in its arenas (it trims only the top of the main heap by itself), so the node's RSS would
/// stay at the storm's peak while its live memory is back to what idle streams cost.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
