//! One reactor: a mio `Poll`, a listener, a slab of clients, and the loop that drives them.
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
//!    accept back-off), or zero while clients are pending a flush.
//! 2. Handle events: accept until `WouldBlock`; read requests; notice closed streams; a
//!    wake-up means the mailbox has events from other shards (or shutdown was asked).
//! 3. Fire due timers.
//! 4. Flush every pending client once, with vectored writes, until empty or `WouldBlock`.
//!    Flushing just before sleeping lets all frames queued in this turn leave in one write.
//! 5. Free the slab slots of clients closed during the turn. Closing is deferred to here so a
//!    token never changes owner while events for it may still be in the batch.
//!
//! # At capacity
//!
//! A new stream beyond `--max-clients` is *shed*: it gets `200`, the stream head, `: shed`
//! and a long jittered `retry:`, and is closed. A browser treats any other status as final
//! and never reconnects; a shed stream comes back later, or to another node. Out of file
//! descriptors, the shard frees a reserve descriptor to accept one waiting connection, sheds
//! it the same way, and takes the reserve back; only without a reserve does it pause.
//!
//! # Draining
//!
//! On shutdown the listener closes, request connections close once answered, and each stream
//! closes as soon as its queue is flushed, until none is left or `--drain-timeout` passes.
//! The loop keeps sleeping in `poll` meanwhile: blocked streams wake it when writable.

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

use crate::access::PublishAccess;
use crate::admission::{Admitted, Quota, Refusal};
use crate::broker::Broker;
use crate::client::Awaiting;
use crate::client::{Client, Phase, ReadStatus, WriteStatus};
use crate::config::Config;
use crate::guard::{self, Contained};
use crate::http::{self, Rejection, Request, Route, Step};
use crate::hub::{Accepted, Delivery, Hub, Inbox, ReplayStep, Ticket, Unavailable};
use crate::metrics::{self, Counters, ShardStats, Stat};
use crate::outbox::{Push, Written};
use crate::params::{self, DEFAULT_TOPIC};
use crate::sse;
use crate::stream::{Offer, Stream};

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
/// Events handled per `poll` call.
const EVENTS: usize = 1024;
/// A shed stream's `retry:` is this many times `--retry-ms` (jittered): come back later.
const SHED_RETRY_FACTOR: u64 = 10;
/// How often shard 0 looks for idle topics to forget, at most and at least.
const FORGET_PERIOD: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// The page served at `/`, compiled in.
static PAGE: &[u8] = include_bytes!("../index.html");

/// What every shard of a node shares besides the hub.
pub(crate) struct Node {
    /// Shutdown was asked.
    pub stop: AtomicBool,
    /// Who may hold a stream.
    pub quota: Quota,
    /// Who may publish.
    pub access: PublishAccess,
}

/// What a shard needs from its server to run.
pub(crate) struct ShardParts {
    pub id: usize,
    pub poll: Poll,
    pub listener: TcpListener,
    pub inbox: Receiver<Inbox>,
    pub hub: Arc<Hub>,
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub stats: Arc<[ShardStats]>,
    pub node: Arc<Node>,
}

/// The topics this shard's streams carry, each with its local subscriber list.
#[derive(Default)]
struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    list: Slab<LocalTopic>,
}

struct LocalTopic {
    name: Arc<str>,
    /// Slab keys of the subscribed clients.
    subscribers: Slab<usize>,
}

/// One reactor thread's state.
pub(crate) struct Shard {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<Inbox>,
    hub: Arc<Hub>,
    broker: Arc<Broker>,
    config: Arc<Config>,
    stats: Arc<[ShardStats]>,
    counters: Counters,
    node: Arc<Node>,
    clients: Slab<Client>,
    topics: Topics,
    /// Clients with output queued and not yet flushed this turn.
    pending: Vec<usize>,
    /// Clients to free at the end of the turn.
    closing: Vec<usize>,
    /// Request and linger deadlines, earliest first; stale entries are skipped when due.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Connections in the request phase, oldest first, as (key, serial); entries of
    /// connections that left the phase are skipped when met and compacted in bulk.
    requesting: VecDeque<(usize, u32)>,
    /// How many connections are in the request phase now (the live entries of `requesting`).
    requesting_now: usize,
    /// Serial of the last connection accepted (tells a reused slab key from its old owner).
    serial: u32,
    /// The address key each stream was counted under, with --max-streams-per-ip only.
    addresses: HashMap<usize, u64>,
    /// When shard 0 next forgets idle topics.
    next_forget: Option<Instant>,
    /// Debug builds: deliveries of this topic panic (tests prove a panic ends the process).
    #[cfg(debug_assertions)]
    panic_topic: Option<String>,
    next_tick: Option<Instant>,
    ticks: u64,
    next_keepalive: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Accepting has been failing since the last success (log the failure once, not per try).
    accept_failing: bool,
    /// A descriptor held back so that, out of descriptors, one connection can still be
    /// accepted and told to come back later.
    reserve: Option<File>,
    /// Set once shutdown began: when to give up flushing.
    drain_deadline: Option<Instant>,
    /// The time at the start of this turn (one clock read per turn, not per client).
    now: Instant,
    scratch: Box<[u8]>,
    rng: u64,
    stream_head: Bytes,
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
        // Only shard 0 runs the demo ticker, so a tick is one event however many shards.
        let next_tick = config.tick_period().filter(|_| id == 0).map(|p| now + p);
        let next_keepalive = config.keepalive_period().map(|p| now + p / 2);
        let next_forget = (id == 0).then(|| now + forget_period(&config));
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
            clients: Slab::with_capacity(1024),
            topics: Topics::default(),
            pending: Vec::with_capacity(1024),
            closing: Vec::new(),
            deadlines: BinaryHeap::new(),
            requesting: VecDeque::new(),
            requesting_now: 0,
            addresses: HashMap::new(),
            serial: 0,
            next_forget,
            #[cfg(debug_assertions)]
            panic_topic: std::env::var("SSE_EDGE_TEST_PANIC_TOPIC").ok(),
            next_tick,
            ticks: 0,
            next_keepalive,
            accept_paused_until: None,
            accept_failing: false,
            reserve: File::open("/dev/null").ok(),
            drain_deadline: None,
            now,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            rng: (seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            stream_head: Bytes::from_static(http::STREAM_HEAD),
        })
    }

    /// Runs the loop until shutdown is asked and the drain is over.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => woken = true,
                    Token(key) => self.on_client_event(key, event),
                }
            }
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
            self.flush_pending();
            if self.drain_deadline.is_some() {
                self.close_drained();
            }
            self.sweep_closing();
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
        info!(
            shard = self.id,
            clients = self.clients.len(),
            "draining for up to {timeout:?}"
        );
    }

    /// Closes every connection that has nothing left to send, or all of them once the drain
    /// deadline has passed.
    fn close_drained(&mut self) {
        let expired = self.drain_deadline.is_some_and(|d| self.now >= d);
        let done: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.closing && (expired || c.outbox.is_empty()))
            .map(|(key, _)| key)
            .collect();
        if expired && !done.is_empty() {
            warn!(
                shard = self.id,
                left = done.len(),
                "drain timeout: closing with output unsent"
            );
        }
        for key in done {
            self.close(key);
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.pending.is_empty() {
            return Some(Duration::ZERO);
        }
        [
            self.next_tick,
            self.next_keepalive,
            self.accept_paused_until,
            self.drain_deadline,
            self.next_forget,
            self.deadlines.peek().map(|Reverse((t, _))| *t),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    // ----- accepting ---------------------------------------------------------------------

    /// Accepts until `WouldBlock`, unless paused after running out of descriptors.
    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    self.accept_failing = false;
                    self.admit(socket, peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The peer gave up between SYN and accept: nothing to do.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    self.counters.add(Stat::AcceptErrors, 1);
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        warn!(shard = self.id, error = %e, "accept failed; shedding or pausing until it works again (counted in sse_edge_accept_errors_total)");
                    }
                    if out_of_descriptors(&e) && self.shed_with_reserve() {
                        continue;
                    }
                    // Accepting again at once would fail again at once, and spin. Pause; the
                    // timer resumes (no new edge would come for connections already waiting).
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Out of descriptors: gives up the reserve to accept one waiting connection and shed it.
    /// Returns false when there was no reserve or the accept failed anyway.
    fn shed_with_reserve(&mut self) -> bool {
        if self.reserve.take().is_none() {
            return false;
        }
        let accepted = self.listener.as_ref().map(TcpListener::accept);
        let shed = match accepted {
            Some(Ok((socket, _))) => {
                self.shed_unadmitted(socket);
                true
            }
            _ => false,
        };
        self.reserve = File::open("/dev/null").ok();
        shed
    }

    /// Answers a connection there is no room to keep, from the one read it gets: a stream
    /// request is shed (so the browser comes back), anything else gets 503, silence gets
    /// closed (an `EventSource` retries after a network error too).
    fn shed_unadmitted(&mut self, mut socket: TcpStream) {
        let n = socket.read(&mut self.scratch).unwrap_or(0);
        let response = if self.scratch[..n].starts_with(b"GET /stream") {
            self.counters.add(Stat::Shed, 1);
            let retry = self.jitter(self.config.retry_ms * SHED_RETRY_FACTOR);
            [http::STREAM_HEAD, &sse::encode_shed(retry)].concat()
        } else if n > 0 {
            self.counters.reject(503);
            http::error_response(503, "server at capacity; retry later", false, "").to_vec()
        } else {
            Vec::new()
        };
        // One non-blocking write into an empty socket buffer; a few hundred bytes fit.
        let _ = socket.write(&response);
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        // Each frame is a complete message; do not let Nagle hold it back.
        let _ = socket.set_nodelay(true);
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(shard = self.id, %peer, error = %e, "cannot register connection");
            return;
        }
        let deadline = Instant::now() + self.config.header_timeout();
        self.serial = self.serial.wrapping_add(1);
        entry.insert(Client::new(socket, deadline, self.serial));
        self.deadlines.push(Reverse((deadline, key)));
        self.counters.add(Stat::Connections, 1);
        if self.requesting_now >= self.config.max_request_connections {
            self.evict_a_request_connection();
        }
        self.requesting.push_back((key, self.serial));
        self.requesting_now += 1;
        // Drop entries of connections that moved on, once they outnumber the live ones.
        if self.requesting.len() > 2 * self.requesting_now + 64 {
            let requesting = std::mem::take(&mut self.requesting);
            self.requesting = requesting
                .into_iter()
                .filter(|&(key, serial)| self.is_requesting(key, serial))
                .collect();
        }
        debug!(shard = self.id, %peer, key, "connection accepted");
    }

    /// Whether `key` with `serial` is still a connection in the request phase.
    fn is_requesting(&self, key: usize, serial: u32) -> bool {
        self.clients.get(key).is_some_and(|c| {
            c.serial == serial && !c.closing && matches!(c.phase, Phase::Request(_))
        })
    }

    /// At the cap of request-phase connections: closes the oldest idle one (nothing
    /// buffered, nothing to send), else the oldest, so silent connections cannot lock new
    /// clients out. Each has had the longest to finish its request.
    fn evict_a_request_connection(&mut self) {
        let mut oldest = None;
        let mut victim = None;
        for &(key, serial) in &self.requesting {
            if !self.is_requesting(key, serial) {
                continue;
            }
            oldest.get_or_insert(key);
            let client = &self.clients[key];
            if client.outbox.is_empty() && client.is_idle_request() {
                victim = Some(key);
                break;
            }
        }
        if let Some(key) = victim.or(oldest) {
            self.counters.add(Stat::RequestEvictions, 1);
            debug!(
                shard = self.id,
                key, "request connections at the cap; closing the oldest idle one"
            );
            self.close(key);
        }
    }

    /// Bookkeeping for a connection leaving the request phase (it became a stream, it is
    /// lingering after its last answer, or it is closing).
    fn left_request_phase(&mut self) {
        self.requesting_now = self.requesting_now.saturating_sub(1);
    }

    // ----- reading -----------------------------------------------------------------------

    fn on_client_event(&mut self, key: usize, event: &Event) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.closing {
            return;
        }
        if event.is_writable() {
            client.writable = true;
            if !client.outbox.is_empty() {
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
            Phase::Stream(_) | Phase::Linger { .. } => {
                if client.discard_input(&mut self.scratch) == ReadStatus::Closed {
                    self.close(key);
                }
            }
        }
    }

    /// Parses and answers requests from `key` until its input runs out, it becomes a
    /// stream, it must close, or its unread responses reach [`RESPONSE_BACKLOG`].
    ///
    /// The parser is fed only when it needs more, so a connection holds at most one partial
    /// head or one body. Parsing and judging are pure and run contained: a panic there closes
    /// this connection only ([`Shard::parse_panicked`]).
    fn serve_requests(&mut self, key: usize) {
        if self.drain_deadline.is_some() {
            return; // draining: answer nothing new; close_drained closes the connection
        }
        let max_body = self.config.max_body;
        loop {
            let client = &mut self.clients[key];
            if client.closing || client.close_after_flush {
                return;
            }
            if client.outbox.queued_bytes() >= RESPONSE_BACKLOG {
                return; // resumed by flush_pending once the peer reads
            }
            let Phase::Request(state) = &mut client.phase else {
                return;
            };
            if state.awaiting.is_some() {
                return; // resumed by on_published
            }
            let step = match guard::contain(|| state.parser.advance(max_body)) {
                Ok(step) => step,
                Err(panic) => return self.parse_panicked(key, panic),
            };
            match step {
                Ok(Step::NeedMore) => {
                    if !client.readable {
                        return;
                    }
                    match client.read_request_bytes(&mut self.scratch) {
                        ReadStatus::Data => {}
                        ReadStatus::WouldBlock => return,
                        // A client may half-close right after its last request: what is
                        // already answered still goes out, then the connection closes.
                        ReadStatus::Closed if !client.outbox.is_empty() => {
                            client.close_after_flush = true;
                            return;
                        }
                        ReadStatus::Closed => return self.close(key),
                    }
                }
                Ok(Step::Head) => self.judge_head(key),
                Ok(Step::Request(request)) => self.dispatch(key, request),
                Err(rejection) => return self.reject(key, rejection),
            }
        }
    }

    /// Judges the head `key`'s parser stopped at, before its body is read: 401, 403, 404,
    /// 405 and bad names are answered now and the body, if any, is read and dropped; an
    /// accepted head gets `100 Continue` when its client waits for one.
    fn judge_head(&mut self, key: usize) {
        let client = &mut self.clients[key];
        let Phase::Request(state) = &mut client.phase else {
            return;
        };
        let (socket, access) = (&client.socket, &self.node.access);
        let judged = guard::contain(|| {
            let head = state.parser.head()?;
            let route = http::route(head.method, &head.path);
            let peer = match route {
                // One system call, only for the route that needs it.
                Route::Broadcast => socket.peer_addr().ok().map(|a| a.ip()),
                _ => None,
            };
            let verdict = params::check_head(route, head, access, peer);
            // A client waiting for `100 Continue` may never send the body of a refused
            // request, so the position of its next request is unknown: close then.
            let keep_alive = head.keep_alive && !(head.expects_continue && head.has_body());
            Some((route, verdict, keep_alive))
        });
        let (route, verdict, keep_alive) = match judged {
            Err(panic) => return self.parse_panicked(key, panic),
            Ok(None) => return,
            Ok(Some(judged)) => judged,
        };
        let (status, reason, extra) = match (route, verdict) {
            (Route::WrongMethod(allow), _) => (
                405,
                format!("method not allowed here; allowed: {allow}"),
                format!("Allow: {allow}\r\n"),
            ),
            (Route::NotFound, _) => (404, "no such path".to_owned(), String::new()),
            (_, Err(r)) if r.status == 401 => (
                401,
                r.reason.to_owned(),
                "WWW-Authenticate: Bearer\r\n".to_owned(),
            ),
            (_, Err(r)) => (r.status, r.reason.to_owned(), String::new()),
            (_, Ok(())) => {
                if state.parser.accept_head() {
                    self.queue(key, Bytes::from_static(http::CONTINUE));
                }
                return;
            }
        };
        state.parser.skip_body();
        self.counters.reject(status);
        debug!(
            shard = self.id,
            key, status, reason, "request refused from its head"
        );
        let response = http::error_response(status, &reason, keep_alive, &extra);
        self.respond(key, response, keep_alive);
    }

    /// Closes a connection whose request made the parser or judge panic, and says so once,
    /// with the request's shape and never its bytes.
    fn parse_panicked(&mut self, key: usize, panic: Contained) {
        self.counters.add(Stat::ParsePanics, 1);
        if let Phase::Request(state) = &self.clients[key].phase {
            let shape = state.parser.shape();
            warn!(
                shard = self.id,
                key,
                method = ?shape.method,
                path_len = shape.path_len,
                headers = shape.headers,
                buffered = shape.buffered,
                at = panic.location.as_deref().unwrap_or("?"),
                "parsing a request panicked; its connection is closed (sse_edge_parse_panics_total)"
            );
        }
        self.close(key);
    }

    /// Answers one complete request.
    fn dispatch(&mut self, key: usize, request: Request) {
        let keep_alive = request.head.keep_alive;
        match http::route(request.head.method, &request.head.path) {
            Route::Stream => self.start_stream(key, request),
            Route::Broadcast => self.publish_request(key, request),
            Route::Page => self.respond(key, Self::page(keep_alive), keep_alive),
            Route::Health => self.respond(
                key,
                http::response(200, "text/plain; charset=utf-8", b"ok\n", keep_alive, ""),
                keep_alive,
            ),
            Route::Metrics => {
                // Include this turn's counts of the shard that answers.
                self.stats[self.id].store(&self.counters);
                let (history_bytes, history_topics) = self.hub.history_size();
                let figures = metrics::NodeFigures {
                    events_encoded: self.hub.frames_encoded(),
                    history_bytes: history_bytes as u64,
                    history_topics: history_topics as u64,
                };
                let body = metrics::render(&self.stats, figures);
                self.respond(
                    key,
                    http::response(
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        body.as_bytes(),
                        keep_alive,
                        "",
                    ),
                    keep_alive,
                );
            }
            Route::Preflight => self.respond(
                key,
                http::response(
                    204,
                    "text/plain",
                    b"",
                    keep_alive,
                    "Access-Control-Allow-Origin: *\r\n\
                     Access-Control-Allow-Methods: GET, OPTIONS\r\n\
                     Access-Control-Allow-Headers: Last-Event-ID, Cache-Control\r\n\
                     Access-Control-Max-Age: 86400\r\n\
                     Allow: GET, POST, OPTIONS\r\n",
                ),
                keep_alive,
            ),
            Route::WrongMethod(allow) => {
                self.counters.reject(405);
                let response = http::error_response(
                    405,
                    &format!("method not allowed here; allowed: {allow}"),
                    keep_alive,
                    &format!("Allow: {allow}\r\n"),
                );
                self.respond(key, response, keep_alive);
            }
            Route::NotFound => {
                self.counters.reject(404);
                let response = http::error_response(404, "no such path", keep_alive, "");
                self.respond(key, response, keep_alive);
            }
        }
    }

    /// The page's response, built once per keep-alive variant and shared by every answer (a
    /// clone is a reference-count bump, not a copy of the page).
    fn page(keep_alive: bool) -> Bytes {
        static PAGES: std::sync::OnceLock<[Bytes; 2]> = std::sync::OnceLock::new();
        let pages = PAGES.get_or_init(|| {
            [false, true].map(|keep_alive| {
                http::response(
                    200,
                    "text/html; charset=utf-8",
                    PAGE,
                    keep_alive,
                    // The page's own CSP (a meta tag) pins its script; framing can only be
                    // forbidden by a header.
                    "Cache-Control: no-cache\r\n\
                     Content-Security-Policy: frame-ancestors 'none'\r\n\
                     X-Content-Type-Options: nosniff\r\n\
                     Referrer-Policy: no-referrer\r\n",
                )
            })
        });
        pages[usize::from(keep_alive)].clone()
    }

    /// Queues a response; without keep-alive the connection closes once it is written.
    fn respond(&mut self, key: usize, response: Bytes, keep_alive: bool) {
        if !keep_alive {
            self.clients[key].close_after_flush = true;
        }
        self.queue(key, response);
    }

    /// Answers a request that cannot be served, then ends the connection.
    ///
    /// For framing errors: after one, where the next request starts is unknown.
    fn reject(&mut self, key: usize, rejection: Rejection) {
        self.counters.reject(rejection.status);
        debug!(
            shard = self.id,
            key,
            status = rejection.status,
            reason = rejection.reason,
            "request rejected"
        );
        let response = http::error_response(rejection.status, rejection.reason, false, "");
        self.respond(key, response, false);
    }

    // ----- publishing --------------------------------------------------------------------

    /// Publishes a complete request whose head was judged allowed ([`Shard::judge_head`]).
    fn publish_request(&mut self, key: usize, request: Request) {
        let keep_alive = request.head.keep_alive;
        let publish = guard::contain(|| params::parse_publish(request, SystemTime::now()));
        let publish = match publish {
            Err(panic) => return self.parse_panicked(key, panic),
            Ok(Ok(p)) => p,
            Ok(Err(rejection)) => {
                // The body was read whole: the connection can serve the next request.
                self.counters.reject(rejection.status);
                let response =
                    http::error_response(rejection.status, rejection.reason, keep_alive, "");
                return self.respond(key, response, keep_alive);
            }
        };
        let client = &mut self.clients[key];
        let Phase::Request(state) = &mut client.phase else {
            return;
        };
        // No further request on this connection is read until the broker answers, so the
        // answers leave in the order the requests came.
        state.awaiting = Some(Awaiting {
            topic: publish.topic.clone(),
            keep_alive,
        });
        let ticket = Ticket {
            key,
            serial: client.serial,
        };
        self.counters.add(Stat::EventsPublished, 1);
        self.broker.publish(
            &self.hub,
            self.id,
            Some(ticket),
            &publish.topic,
            publish.event.as_deref(),
            &publish.data,
        );
    }

    /// The broker's answer to a publish: the `200` with its id, or `503` and why.
    fn on_published(&mut self, ticket: Ticket, outcome: Result<Accepted, Unavailable>) {
        let Some(client) = self.clients.get_mut(ticket.key) else {
            return;
        };
        if client.serial != ticket.serial || client.closing {
            return; // the publisher left; its event (if any) still went out
        }
        let Phase::Request(state) = &mut client.phase else {
            return;
        };
        let Some(Awaiting { topic, keep_alive }) = state.awaiting.take() else {
            return;
        };
        let response = match outcome {
            Ok(accepted) => {
                let body = format!(
                    "{{\"id\":\"{}\",\"topic\":\"{topic}\",\"clients\":{}}}\n",
                    accepted.id.wire(accepted.epoch.as_deref()),
                    accepted.subscribers
                );
                http::response(200, "application/json", body.as_bytes(), keep_alive, "")
            }
            Err(unavailable) => {
                self.counters.reject(503);
                http::error_response(503, &unavailable.reason, keep_alive, "")
            }
        };
        self.respond(ticket.key, response, keep_alive);
        // Requests pipelined behind the publish waited for this answer.
        self.serve_requests(ticket.key);
    }

    /// Publishes an event of the demo ticker (nobody waits for its answer).
    fn publish_tick(&mut self, text: &str) {
        self.counters.add(Stat::EventsPublished, 1);
        self.broker
            .publish(&self.hub, self.id, None, DEFAULT_TOPIC, None, text);
    }

    /// Handles what the broker and the other shards sent, in order.
    fn drain_inbox(&mut self) {
        while let Ok(message) = self.inbox.try_recv() {
            match message {
                Inbox::Event(delivery) => self.deliver(&delivery),
                Inbox::Published { ticket, outcome } => self.on_published(ticket, outcome),
                Inbox::Replay {
                    ticket,
                    cursor,
                    step,
                } => self.on_replay(ticket, cursor, step),
            }
        }
    }

    /// The fan-out: one refcount bump and one queue push per subscriber, no allocation
    /// (a stream that starts losing frames allocates its gap record, once).
    fn deliver(&mut self, delivery: &Delivery) {
        let Some(&t) = self.topics.by_name.get(&delivery.topic) else {
            return;
        };
        #[cfg(debug_assertions)]
        if self.panic_topic.as_deref() == Some(&*delivery.topic) {
            panic!(
                "SSE_EDGE_TEST_PANIC_TOPIC: injected panic in shard {}",
                self.id
            );
        }
        let limit = self.config.client_buffer;
        let slow_after = self.config.slow_client_period();
        let Shard {
            topics,
            clients,
            pending,
            closing,
            counters,
            now,
            ..
        } = self;
        let (mut queued, mut bytes, mut dropped, mut notices, mut too_slow, mut peak) =
            (0, 0, 0, 0, 0, 0);
        for (_, &key) in topics.list[t as usize].subscribers.iter() {
            let client = &mut clients[key];
            let Phase::Stream(stream) = &mut client.phase else {
                continue;
            };
            if client.closing {
                continue;
            }
            let frame = &delivery.frame;
            match stream.offer(
                &mut client.outbox,
                delivery.id,
                delivery.epoch.as_deref(),
                frame,
                limit,
                *now,
                slow_after,
            ) {
                Offer::Queued(n) => {
                    queued += 1;
                    bytes += n;
                    notices += usize::from(n > frame.len());
                    peak = peak.max(client.outbox.queued_bytes());
                    if !client.pending {
                        client.pending = true;
                        pending.push(key);
                    }
                }
                Offer::Dropped => dropped += 1,
                Offer::TooSlow => {
                    dropped += 1;
                    too_slow += 1;
                    client.closing = true;
                    closing.push(key);
                }
                Offer::Skipped => {}
            }
        }
        counters.add(Stat::FramesQueued, queued);
        counters.add(Stat::FramesDropped, dropped);
        counters.add(Stat::GapNotices, notices as u64);
        counters.add(Stat::SlowDisconnects, too_slow);
        counters.add(Stat::QueuedBytes, bytes as u64);
        counters.raise(Stat::QueuePeakBytes, peak as u64);
        if too_slow > 0 {
            debug!(
                shard = self.id,
                too_slow, "disconnected streams that kept losing frames"
            );
        }
    }

    // ----- streams -----------------------------------------------------------------------

    fn start_stream(&mut self, key: usize, request: Request) {
        let subscribe = match params::parse_subscribe(&request) {
            Ok(s) => s,
            Err(rejection) => return self.reject(key, rejection),
        };
        let peer = match self.clients[key].socket.peer_addr() {
            Ok(peer) => peer.ip(),
            Err(_) => return self.close(key),
        };
        let admitted = match self.node.quota.admit(peer) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.shed(key, refusal),
        };
        if self.config.send_buffer > 0 {
            // A stream's traffic is small frames; a client that stops reading would otherwise
            // let autotuning park megabytes of ours in its socket before --client-buffer binds.
            let socket = socket2::SockRef::from(&self.clients[key].socket);
            if let Err(e) = socket.set_send_buffer_size(self.config.send_buffer) {
                debug!(shard = self.id, key, error = %e, "cannot size the send buffer");
            }
        }
        let subscription = self
            .hub
            .subscribe(&subscribe.topics, subscribe.last_event_id.as_deref());
        let mut subs = Vec::with_capacity(subscription.names.len());
        for name in subscription.names {
            let t = match self.topics.by_name.get(&name) {
                Some(&t) => t,
                None => {
                    let t = self.topics.list.insert(LocalTopic {
                        name: name.clone(),
                        subscribers: Slab::new(),
                    }) as u32;
                    self.topics.by_name.insert(name, t);
                    t
                }
            };
            let slot = self.topics.list[t as usize].subscribers.insert(key) as u32;
            subs.push((t, slot));
        }
        let retry = self.jitter(self.config.retry_ms);
        let replaying = subscription.replay.is_some();
        let stream = Stream::new(subs.into_boxed_slice(), subscription.replay);
        if let Some(address) = admitted.address {
            // Kept beside the stream, not in it: a stream pays for the per-address quota
            // only when the quota is on.
            self.addresses.insert(key, address);
        }
        self.clients[key].phase = Phase::Stream(stream);
        self.left_request_phase();
        self.queue(key, self.stream_head.clone());
        self.queue(key, sse::encode_preamble(retry));
        if let Some(reset) = subscription.reset {
            self.counters.add(Stat::ResetNotices, 1);
            self.queue(key, reset);
        }
        if replaying {
            self.continue_replay(key);
        }
        self.counters.add(Stat::Streams, 1);
        self.counters.add(Stat::StreamsOpened, 1);
        debug!(shard = self.id, key, topics = ?subscribe.topics, "stream opened");
    }

    /// Asks the broker for the next part of `key`'s replay: as much as fits the room left in
    /// its queue (at least one frame). It arrives in the inbox ([`Shard::on_replay`]).
    fn continue_replay(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.closing {
            return;
        }
        let Phase::Stream(stream) = &mut client.phase else {
            return;
        };
        let Some(replay) = stream.replay.as_deref_mut() else {
            return;
        };
        if std::mem::replace(&mut replay.asked, true) {
            return; // one step at a time
        }
        let names: Vec<Arc<str>> = stream
            .subs
            .iter()
            .map(|&(t, _)| self.topics.list[t as usize].name.clone())
            .collect();
        let room = self
            .config
            .client_buffer
            .saturating_sub(client.outbox.queued_bytes())
            .max(1);
        let ticket = Ticket {
            key,
            serial: client.serial,
        };
        let cursor = replay.cursor.clone();
        self.broker
            .replay(&self.hub, self.id, ticket, &names, cursor, room);
    }

    /// A replay step arrived: queue it, and go live after the last one. Replayed frames are
    /// shared with the history: the queue holds references, not copies.
    fn on_replay(&mut self, ticket: Ticket, cursor: crate::history::Cursor, step: ReplayStep) {
        let Some(client) = self.clients.get_mut(ticket.key) else {
            return;
        };
        if client.serial != ticket.serial || client.closing {
            return;
        }
        let Phase::Stream(stream) = &mut client.phase else {
            return;
        };
        let batch = match step {
            ReplayStep::More(batch) => {
                if let Some(replay) = stream.replay.as_deref_mut() {
                    replay.cursor = cursor;
                    replay.asked = false;
                }
                batch
            }
            // Every event after this message in the inbox is the stream's, live.
            ReplayStep::Live(batch) => {
                stream.replay = None;
                batch
            }
        };
        let more = stream.replay.is_some();
        if let Some(reset) = batch.reset {
            self.counters.add(Stat::ResetNotices, 1);
            self.queue(ticket.key, reset);
        }
        self.counters.add(Stat::Replayed, batch.frames.len() as u64);
        for frame in batch.frames {
            self.queue(ticket.key, frame);
        }
        if more && self.clients[ticket.key].outbox.queued_bytes() < self.config.client_buffer / 2 {
            self.continue_replay(ticket.key);
        }
    }

    /// Answers a stream request beyond capacity: stream head, `: shed`, a long jittered
    /// `retry:`, then close.
    fn shed(&mut self, key: usize, refusal: Refusal) {
        self.counters.add(Stat::Shed, 1);
        let retry = self.jitter(self.config.retry_ms * SHED_RETRY_FACTOR);
        self.queue(key, self.stream_head.clone());
        self.queue(key, sse::encode_shed(retry));
        self.clients[key].close_after_flush = true;
        debug!(shard = self.id, key, ?refusal, "stream shed");
    }

    /// A `retry:` around `base` for one stream: uniform in [base/2, base*3/2), so that the
    /// clients of a restarted node come back spread over a whole period.
    fn jitter(&mut self, base: u64) -> u64 {
        // xorshift64: cheap, and quality is irrelevant here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        base / 2 + self.rng % base.max(1)
    }

    // ----- timers ------------------------------------------------------------------------

    fn fire_timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        while let Some(&Reverse((due, key))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            self.expire(key, now);
        }
        if let (Some(at), Some(period)) = (self.next_tick, self.config.tick_period()) {
            if at <= now {
                self.ticks += 1;
                let text = format!("Auto heartbeat #{}", self.ticks);
                self.publish_tick(&text);
                self.next_tick = Some(next_after(at, period, now));
            }
        }
        if self.next_forget.is_some_and(|at| at <= now) {
            let forgotten = self.hub.forget_idle(self.config.topic_idle_period());
            if forgotten > 0 {
                debug!(forgotten, "forgot idle topics");
            }
            self.next_forget = Some(now + forget_period(&self.config));
        }
        if let (Some(at), Some(period)) = (self.next_keepalive, self.config.keepalive_period()) {
            if at <= now {
                self.send_keepalives();
                // Checking every half period bounds the silence on a stream by one period.
                self.next_keepalive = Some(next_after(at, period / 2, now));
            }
        }
    }

    /// Closes `key` if its current deadline has passed; re-arms it if it moved later.
    fn expire(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        match client.deadline() {
            Some(deadline) if deadline <= now => {
                if matches!(client.phase, Phase::Request(_)) {
                    self.counters.add(Stat::HeaderTimeouts, 1);
                    debug!(
                        shard = self.id,
                        key, "request not complete in time; closing"
                    );
                }
                self.close(key);
            }
            Some(deadline) => self.deadlines.push(Reverse((deadline, key))),
            None => {}
        }
    }

    /// Queues a keep-alive comment to every stream that had nothing queued since the last check.
    fn send_keepalives(&mut self) {
        let frame = Bytes::from_static(sse::KEEPALIVE);
        let limit = self.config.client_buffer;
        let mut sent = 0;
        for (key, client) in self.clients.iter_mut() {
            let Phase::Stream(stream) = &mut client.phase else {
                continue;
            };
            if std::mem::replace(&mut stream.active, false) || client.closing {
                continue;
            }
            if client.outbox.push_bounded(frame.clone(), limit) == Push::Queued {
                sent += 1;
                self.counters.add(Stat::QueuedBytes, frame.len() as u64);
                if !client.pending {
                    client.pending = true;
                    self.pending.push(key);
                }
            }
        }
        self.counters.add(Stat::KeepalivesSent, sent);
    }

    // ----- writing -----------------------------------------------------------------------

    /// Queues bytes that must not be dropped (responses, stream heads) and marks `key` pending.
    fn queue(&mut self, key: usize, bytes: Bytes) {
        self.counters.add(Stat::QueuedBytes, bytes.len() as u64);
        self.clients[key].outbox.push(bytes);
        self.mark_pending(key);
    }

    fn mark_pending(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if !client.pending {
            client.pending = true;
            self.pending.push(key);
        }
    }

    /// Flushes every pending client once. A client that would block waits for its next
    /// writable event; one that drained its output may read further requests.
    fn flush_pending(&mut self) {
        let header_timeout = self.config.header_timeout();
        let mut pending = std::mem::take(&mut self.pending);
        let mut resume = Vec::new();
        let mut replays = Vec::new();
        for key in pending.drain(..) {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.pending = false;
            if client.closing {
                continue;
            }
            if client.writable {
                let written = match client.flush() {
                    WriteStatus::Drained(w) => {
                        if client.close_after_flush {
                            let deadline = Instant::now() + LINGER;
                            if matches!(client.phase, Phase::Request(_)) {
                                self.requesting_now = self.requesting_now.saturating_sub(1);
                            }
                            client.start_linger(deadline);
                            self.deadlines.push(Reverse((deadline, key)));
                            // The peer may have closed already; its EOF edge may be spent.
                            if client.discard_input(&mut self.scratch) == ReadStatus::Closed {
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
                self.counters.add(Stat::BytesWritten, written.bytes as u64);
                self.counters
                    .add(Stat::FramesWritten, written.frames as u64);
                self.counters.sub(Stat::QueuedBytes, written.bytes as u64);
            }
            let client = &mut self.clients[key];
            if let Phase::Stream(stream) = &mut client.phase {
                if client.outbox.is_empty() {
                    stream.on_drained(self.now);
                }
                // A replay goes on once half the queue's room is free again, so it never
                // holds more than --client-buffer and the socket always has the next part.
                if stream.replay.as_ref().is_some_and(|r| !r.asked)
                    && !client.closing
                    && client.outbox.queued_bytes() < self.config.client_buffer / 2
                {
                    replays.push(key);
                }
            }
            // A request connection stops reading while RESPONSE_BACKLOG bytes wait for its
            // peer; whenever it is below that again, it may go on (finding nothing is cheap).
            // Its deadline moves on only once everything it was sent is out: a client that
            // pipelines requests and never reads keeps output queued, and so meets
            // --header-timeout however many requests it trickles in.
            let client = &mut self.clients[key];
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
            self.serve_requests(key);
        }
        for key in replays {
            self.continue_replay(key);
        }
    }

    // ----- closing -----------------------------------------------------------------------

    /// Marks `key` for removal at the end of the turn.
    fn close(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.closing {
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
            if let Phase::Stream(stream) = client.phase {
                let mut left = Vec::with_capacity(stream.subs.len());
                for &(t, slot) in stream.subs.iter() {
                    let topic = &mut self.topics.list[t as usize];
                    topic.subscribers.remove(slot as usize);
                    left.push(topic.name.clone());
                    if topic.subscribers.is_empty() {
                        let topic = self.topics.list.remove(t as usize);
                        self.topics.by_name.remove(&topic.name);
                    }
                }
                self.hub.unsubscribe(left.iter().map(|n| &**n));
                self.node.quota.release(Admitted {
                    address: self.addresses.remove(&key),
                });
                self.counters.sub(Stat::Streams, 1);
                self.counters.add(Stat::StreamsClosed, 1);
                debug!(shard = self.id, key, "stream closed");
            } else {
                debug!(shard = self.id, key, "connection closed");
            }
        }
    }
}

/// Whether an accept error means the process or system is out of file descriptors.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// How often idle topics are looked for: a quarter of `--topic-idle`, within
/// [`FORGET_PERIOD`], so a topic outlives its idle period by at most a quarter of it (or a
/// minute).
fn forget_period(config: &Config) -> Duration {
    (config.topic_idle_period() / 4).clamp(FORGET_PERIOD.0, FORGET_PERIOD.1)
}

/// The next firing of a periodic timer that was due at `at`; skips missed periods.
fn next_after(at: Instant, period: Duration, now: Instant) -> Instant {
    let next = at + period;
    if next > now {
        next
    } else {
        now + period
    }
}
