//! One worker's subscribers: a mio event loop holding thousands of SSE streams.
//!
//! # The OS contract
//!
//! mio is edge-triggered: a readiness event is reported once, so every read repeats until
//! `WouldBlock`, or the stream stalls. A slow reader is the one exception on purpose: it
//! leaves its bytes in the kernel, and remembers that it was readable so that `Drain` can
//! read it later without a new edge.
//!
//! # One stream
//!
//! `connect()` (non-blocking, optionally from a chosen source address) → writable: send the
//! `GET` → read the response head (status must be 200) → feed the body, de-chunked when the
//! server chunks, to the [`sse`](crate::sse) parser → each event becomes a delivery: its
//! latency goes into the histogram, its sequence number into the loss accounting.
//!
//! # One `https://` stream
//!
//! The same, with a rustls [`ClientConnection`] between the socket and the parsing: once
//! `connect()` is done the request goes into the session's writer (rustls holds it until the
//! handshake is done), and from then on every edge drives the session through
//! [`tls::read`] (send what it queued, read and decrypt, hand over plaintext). The plaintext is
//! parsed exactly as a plain stream's bytes are. The handshake happens inside the stream's
//! connect deadline and the run's connect time, as it does for a browser; a failed one is a
//! connect error of kind `tls`. A TLS stream stays registered for writable edges too: the
//! session may need to send at any time (handshake, alerts), and a writable edge is rare once
//! the socket has room. A plain stream pays nothing of this: one empty `Option`.
//!
//! # HTTP/2: many streams on one connection
//!
//! With `h2c://` URLs, or `https://` ones and `--streams-per-connection N`, streams share
//! connections: a stream opens on the connection of its URL that still has room (fewer than
//! N streams, no GOAWAY, under the server's SETTINGS_MAX_CONCURRENT_STREAMS), or on a new one.
//! A `Conn` owns the socket (and the TLS session, whose ALPN must have chosen `h2`) and an
//! [`h2::Client`]; its streams are `Sub`s like any other, whose link names their connection
//! and stream id, so a stream's life, parsing, deadlines and accounting are the same over
//! both protocols. Opening a stream only queues its HEADERS; what connections queued is
//! written once per turn (several streams' HEADERS in one write), and on writable edges.
//! A stream the server ends, resets or leaves unprocessed under a GOAWAY ends like a stream
//! whose connection closed (with `--reconnect` it comes back, on a live connection or a new
//! one); a connection that ends takes its streams with it.
//!
//! # One turn of the loop
//!
//! 1. `poll` until the next timer: progress report, ramp slot, connect deadline.
//! 2. Read the parent's commands, then handle stream events. An event may still be read
//!    before the command the parent sent ahead of its POST (a later socket in the same turn
//!    can hold newer bytes than the pipe did); the meter then reads the pipe again first.
//! 3. Expire connect deadlines, start new connections (and, with `--reconnect`, those whose
//!    backoff is over), report progress when due.
//!
//! # `--reconnect`: one stream as an `EventSource`
//!
//! A stream is what a browser's `EventSource` is: it outlives its connections. Its `Life`
//! (the parser's last event ID, the loss accounting, the last `retry:`) moves from the
//! connection that ended to a sleeping slot, and a timer in this loop's timeout (a binary
//! heap of due times: no thread per stream, no busy loop) brings it back: a new connection to
//! the next URL of the list, with `Last-Event-ID`. How long it sleeps is what browsers do:
//! Chromium (`EventSource::ScheduleReconnect`, blink) waits exactly the last `retry:` the
//! stream got, 3000 ms when none, and Firefox (`EventSource::SetReconnectionTimeout`) a
//! one-shot timer of its reconnection time the same way (its default 5000 ms, a `retry:`
//! clamped to at least 500 ms); neither adds jitter of its own: the spread of a storm comes
//! from the server's `retry:` alone (sse-edge jitters it per stream), so the loadtest adds
//! none either, and takes Chromium's default. Unlike a browser it also comes back after a
//! non-200 answer (a browser gives up for good there): a 503 from a proxy is then counted and
//! retried, not a client lost.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Event;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use socket2::{Domain, Socket, Type};

use crate::clock::now_us;
use crate::h2;
use crate::inbox::Inbox;
use crate::meter::{Acct, Meter};
use crate::response::{parse_head, Dechunker, HeadParse};
use crate::slots::Slots;
use crate::sse::{Item, Parser};
use crate::stats::{self, new_latency, Counters, Failure, Latency};
use crate::tls::{self, Got};
use crate::url::{self as urls, Scheme, Url};
use crate::wire::{self, Command, Plan, Report, StormTally};

/// The parent's command pipe; stream tokens are slab keys, far below it.
const STDIN: Token = Token(usize::MAX - 1);
/// HTTP/2 connections' tokens are this plus their slab key: above any stream's key (a worker
/// holds at most a million streams), below `STDIN`.
const CONN_BASE: usize = 1 << 40;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Longest sleep, so a missed timer computation costs at most this.
const MAX_WAIT_US: u64 = 100_000;
/// Readiness events handled per `poll`.
const EVENTS: usize = 1024;
/// The wait before a reconnection when the server sent no `retry:`: Chromium's
/// `kDefaultReconnectDelay`.
pub const DEFAULT_RETRY_MS: u64 = 3_000;
/// Longest `Last-Event-ID` sent back: the server's id, not ours, and a request head must stay
/// well under a server's head limit (sse-edge: 8 KiB); a longer one is left out (the stream
/// then resumes from nothing, and its accounting shows what it missed).
pub const MAX_LAST_EVENT_ID: usize = 1024;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `connect()` in progress, then the request being written (`written` bytes so far; a
    /// TLS stream leaves this phase as soon as it is connected).
    Connecting { written: usize },
    /// Request sent (TLS: handed to the session, the handshake maybe still going), response
    /// head not complete.
    Head,
    /// Head was 200: reading events.
    Streaming,
}

/// How the body is framed.
enum Body {
    /// Raw bytes until the connection ends.
    Plain,
    /// `Transfer-Encoding: chunked`.
    Chunked(Dechunker),
}

/// What a stream keeps across its connections, as an `EventSource` does.
struct Life {
    /// Global index of the stream.
    index: u64,
    /// The URL (in the `--url` list) of the current connection, or of the next one.
    target: usize,
    /// Holds the last event ID across connections.
    parser: Parser,
    acct: Acct,
    /// Some connection of it had a 200 head.
    established: bool,
    /// Its first connection has neither had its head nor failed yet.
    first_open: bool,
    /// When it last ended, while it has had no head since (µs; 0: it has not ended).
    ended_us: u64,
    /// When its first head arrived (µs).
    head_us: u64,
}

/// What carries a stream.
enum Link {
    /// Its own connection (HTTP/1.1).
    Tcp(TcpStream),
    /// A stream of an HTTP/2 connection.
    H2 {
        /// The connection's key in `Worker::conns`.
        conn: usize,
        /// The stream id.
        id: u32,
    },
}

impl Link {
    /// The stream's own socket (HTTP/1.1 only).
    fn tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            Link::Tcp(stream) => Some(stream),
            Link::H2 { .. } => None,
        }
    }
}

/// One HTTP/2 connection and the streams it carries.
struct Conn {
    stream: TcpStream,
    /// The TLS session of an `https://` connection.
    tls: Option<Box<ClientConnection>>,
    h2: h2::Client,
    /// Its URL in the `--url` list.
    target: usize,
    /// `connect()` is done.
    connected: bool,
    /// TLS: the handshake is done and its ALPN was checked.
    alpn_checked: bool,
    /// Stream id → key in `Worker::subs`.
    ids: HashMap<u32, usize>,
    /// Already in `Worker::dirty`.
    dirty: bool,
}

/// What an HTTP/2 connection said, owned, so the worker can act on it with all of itself.
enum H2Ev {
    Head {
        status: u16,
        end_stream: bool,
    },
    /// Bytes `start..end` of `Worker::h2_data`.
    Data {
        start: usize,
        end: usize,
        end_stream: bool,
    },
    Reset,
    GoAway {
        last_stream: u32,
    },
}

/// One stream with a connection.
struct Sub {
    link: Link,
    /// The TLS session of an `https://` stream (boxed: a plain stream pays one pointer).
    tls: Option<Box<ClientConnection>>,
    /// Tells a connect deadline apart from a later stream in the same slab slot.
    serial: u64,
    phase: Phase,
    /// Response head bytes until it is complete.
    head: Vec<u8>,
    body: Body,
    /// This connection's own request (one carrying `Last-Event-ID`); `None`: its URL's.
    request: Option<Box<[u8]>>,
    life: Life,
}

/// Whether the stream with global index `i` is a slow reader: spreads `fraction` evenly.
pub fn is_slow(i: u64, fraction: f64) -> bool {
    ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

/// What an `https://` stream needs to start its session.
struct TlsTarget {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// One URL of the `--url` list, ready to connect to.
struct Target {
    url: Url,
    /// `Some` for an `https://` URL.
    tls: Option<TlsTarget>,
    /// The request head without its closing blank line, so a `Last-Event-ID` can follow.
    head: String,
    /// The whole request without `Last-Event-ID`.
    request: Vec<u8>,
    /// HTTP/2: the request's HPACK block without `last-event-id`.
    h2_block: Vec<u8>,
}

impl Target {
    /// The request for a connection whose stream last saw `last_id`; `None`: the plain one.
    fn request_after(&self, last_id: &str) -> Option<Box<[u8]>> {
        if last_id.is_empty() || last_id.len() > MAX_LAST_EVENT_ID {
            return None;
        }
        // The parser splits lines at CR and LF and drops ids with NUL, so `last_id` cannot
        // end the header line early.
        Some(
            format!("{}Last-Event-ID: {last_id}\r\n\r\n", self.head)
                .into_bytes()
                .into(),
        )
    }

    /// The HTTP/2 request block for a stream whose last event was `last_id`.
    fn h2_block_after(&self, last_id: &str) -> Cow<'_, [u8]> {
        if last_id.is_empty() || last_id.len() > MAX_LAST_EVENT_ID {
            return Cow::Borrowed(&self.h2_block);
        }
        let mut block = self.h2_block.clone();
        h2::add_last_event_id(&mut block, last_id);
        Cow::Owned(block)
    }
}

/// The `--header` lines as HTTP/2 fields: names in lower case, connection-specific ones left
/// out (RFC 9113 §8.2.2).
fn h2_fields(headers: &str) -> Vec<(String, String)> {
    let mut fields = vec![
        ("accept".to_owned(), "text/event-stream".to_owned()),
        ("cache-control".to_owned(), "no-cache".to_owned()),
        ("user-agent".to_owned(), "sse-edge-loadtest".to_owned()),
    ];
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if !h2::is_connection_specific(&name) {
                fields.push((name, value.trim().to_owned()));
            }
        }
    }
    fields
}

/// One worker process's event loop.
pub struct Worker {
    plan: Plan,
    /// The `--url` list; a stream starts on one (spread in turn) and reconnects to the next.
    targets: Vec<Target>,
    /// Why the first stream that failed in TLS failed, for the report.
    tls_error: Option<String>,
    poll: Poll,
    subs: Slots<Sub>,
    /// HTTP/2 connections.
    conns: Slots<Conn>,
    /// Per URL, the HTTP/2 connection new streams fill first.
    filling: Vec<Option<usize>>,
    /// Per URL, HTTP/2 connections that had room when one of their streams ended (stale
    /// entries are checked on use).
    with_room: Vec<Vec<usize>>,
    /// HTTP/2 connections with output queued this turn.
    dirty: Vec<usize>,
    /// What the HTTP/2 connection being read said (reused).
    h2_events: Vec<(u32, H2Ev)>,
    /// The DATA bytes of `h2_events` (reused).
    h2_data: Vec<u8>,
    /// Streams between two connections (`--reconnect`).
    sleeping: Slots<Life>,
    /// When each sleeping stream reconnects: `(at_us, key in sleeping)`, soonest first.
    wakeups: BinaryHeap<Reverse<(u64, usize)>>,
    /// Streams whose first connection has neither had its head nor failed.
    first_open: usize,
    /// From a stream's end to its next head, µs (`--reconnect`).
    reconnect_us: Latency,
    /// How the streams were served (`--storm`).
    storm: StormTally,
    scratch: Box<[u8]>,
    meter: Meter,
    /// The parent's commands: the pipe, and what was read from it for the loop.
    commands: Commands,
    /// Streams started so far.
    started: u64,
    /// Streams between `connect()` and their head.
    in_flight: usize,
    serial: u64,
    /// Connect deadlines in start order (so in deadline order): `(at_us, key, serial)`.
    deadlines: VecDeque<(u64, usize, u64)>,
    ramp_start_us: u64,
    draining: bool,
    /// `Stop` arrived: numbers `0..end` were given out, these among them never published.
    stop: Option<Ended>,
    /// The parent is gone: finish at once.
    orphaned: bool,
    /// The accounts of streams that ended after being established.
    ended: Vec<Acct>,
    next_report_us: u64,
}

impl Worker {
    /// Sets up the loop for `plan`.
    pub fn new(plan: Plan) -> io::Result<Worker> {
        let mut tls_config = None;
        let mut targets = Vec::new();
        for text in urls::split_list(&plan.url) {
            let url = Url::parse(text).map_err(io::Error::other)?;
            let tls = match url.scheme {
                Scheme::Http | Scheme::H2c => None,
                Scheme::Https => {
                    let trust = plan.tls.as_ref().ok_or_else(|| {
                        io::Error::other("an https:// URL needs --cacert FILE or --insecure")
                    })?;
                    // One configuration (and so one ticket store) for every URL of the list.
                    let config = match &tls_config {
                        Some(config) => Arc::clone(config),
                        None => {
                            let mut config = tls::client_config(trust, plan.tls_resume)
                                .map_err(io::Error::other)?;
                            if plan.streams_per_connection.is_some() {
                                // HTTP/2 only: a server that cannot speak it fails the run.
                                // http/1.1 offered too, so a server without h2 still
                                // finishes its handshake and the run can say what it chose.
                                let mut with_alpn = (*config).clone();
                                with_alpn.alpn_protocols =
                                    vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                                config = Arc::new(with_alpn);
                            }
                            tls_config = Some(Arc::clone(&config));
                            config
                        }
                    };
                    Some(TlsTarget {
                        config,
                        name: url.server_name().map_err(io::Error::other)?,
                    })
                }
            };
            let head = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: sse-edge-loadtest\r\n{}",
                url.target, url.host_header, plan.headers
            );
            let request = format!("{head}\r\n").into_bytes();
            let h2_block = h2::request_block(
                url.scheme.h2_scheme(),
                &url.host_header,
                &url.target,
                &h2_fields(&plan.headers),
            );
            targets.push(Target {
                url,
                tls,
                head,
                request,
                h2_block,
            });
        }
        if targets.is_empty() {
            return Err(io::Error::other("no --url given"));
        }
        let now = now_us();
        let counters = Counters {
            requested: plan.connections,
            ..Counters::default()
        };
        let meter = Meter::new(plan.mode, counters);
        Ok(Worker {
            meter: if plan.reconnect {
                meter.covering_notices()
            } else {
                meter
            },
            commands: Commands {
                inbox: Inbox::new(io::stdin().as_raw_fd()),
                deferred: Vec::new(),
            },
            next_report_us: now + plan.progress_ms * 1000,
            subs: Slots::with_capacity(plan.connections as usize),
            conns: Slots::with_capacity(0),
            filling: vec![None; targets.len()],
            with_room: vec![Vec::new(); targets.len()],
            dirty: Vec::new(),
            h2_events: Vec::new(),
            h2_data: Vec::new(),
            plan,
            targets,
            tls_error: None,
            sleeping: Slots::with_capacity(0),
            wakeups: BinaryHeap::new(),
            first_open: 0,
            reconnect_us: new_latency(),
            storm: StormTally::default(),
            poll: Poll::new()?,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            started: 0,
            in_flight: 0,
            serial: 0,
            deadlines: VecDeque::new(),
            ramp_start_us: now,
            draining: false,
            stop: None,
            orphaned: false,
            ended: Vec::new(),
        })
    }

    /// Runs until `Stop`, the parent's exit or the plan's deadline; writes reports to `out`.
    pub fn run(mut self, out: &mut impl Write) -> io::Result<()> {
        let stdin = io::stdin().as_raw_fd();
        set_nonblocking(stdin)?;
        self.poll
            .registry()
            .register(&mut SourceFd(&stdin), STDIN, Interest::READABLE)?;
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let now = now_us();
            if self.stop.is_some() || self.orphaned || now >= self.plan.deadline_us {
                break;
            }
            let wait = self.next_wake(now).saturating_sub(now).min(MAX_WAIT_US);
            match self
                .poll
                .poll(&mut events, Some(Duration::from_micros(wait)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if events.iter().any(|e| e.token() == STDIN) {
                self.commands.refresh(&mut self.meter);
            }
            for event in events.iter() {
                if event.token() != STDIN {
                    self.on_event(event.token().0, event);
                }
            }
            self.orphaned |= self.commands.inbox.closed();
            for command in std::mem::take(&mut self.commands.deferred) {
                self.on_command(command);
            }
            let now = now_us();
            self.expire(now);
            self.start_connections(now);
            self.wake(now);
            self.flush_dirty();
            if now >= self.next_report_us {
                self.next_report_us = now + self.plan.progress_ms * 1000;
                let report = self.report(false);
                let histogram = stats::encode(&self.meter.interval);
                self.meter.interval.reset();
                if wire::write_frame(out, &report, &histogram).is_err() {
                    self.orphaned = true;
                }
            }
        }
        self.finish();
        let mut report = self.report(true);
        if self.plan.reconnect && !self.reconnect_us.is_empty() {
            report.reconnect_us = stats::encode(&self.reconnect_us);
        }
        if self.plan.storm {
            report.storm = Some(Box::new(self.storm.clone()));
        }
        match wire::write_frame(out, &report, &stats::encode(&self.meter.total)) {
            // Nobody is left to read it.
            Err(_) if self.orphaned => Ok(()),
            other => other,
        }
    }

    fn report(&self, is_final: bool) -> Report {
        Report {
            is_final,
            connect_done: self.started == self.plan.connections && self.first_open == 0,
            counters: self.meter.counters.clone(),
            completion_us: if is_final {
                self.meter.completion.clone()
            } else {
                Vec::new()
            },
            tls_error: self.tls_error.clone(),
            ..Report::default()
        }
    }

    /// The next time something is due, in µs.
    fn next_wake(&self, now: u64) -> u64 {
        let mut at = self.next_report_us.min(self.plan.deadline_us);
        if let Some(&(deadline, _, _)) = self.deadlines.front() {
            at = at.min(deadline);
        }
        if let Some(Reverse((wake, _))) = self.wakeups.peek() {
            at = at.min(*wake);
        }
        if self.plan.ramp_per_sec > 0.0
            && self.started < self.plan.connections
            && self.in_flight < self.plan.max_in_flight
        {
            let slot =
                self.ramp_start_us + (self.started as f64 * 1e6 / self.plan.ramp_per_sec) as u64;
            at = at.min(slot);
        }
        at.max(now)
    }

    /// Acts on a loop-level command (`Commands::refresh` gave the measuring ones to the meter).
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Start | Command::Sent { .. } => {}
            Command::Blip => {
                // The network blinked: every connection ends at once, as the browsers see it.
                let keys: Vec<usize> = self.subs.iter().map(|(key, _)| key).collect();
                for key in keys {
                    self.end(key, None);
                }
                let conns: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
                for ckey in conns {
                    self.drop_conn(ckey, Some(Failure::Closed));
                }
            }
            Command::Drain => {
                self.draining = true;
                let slow: Vec<usize> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| s.life.acct.slow && s.phase == Phase::Streaming)
                    .map(|(key, _)| key)
                    .collect();
                for key in slow {
                    self.read_any(key);
                }
            }
            Command::Stop { published, skipped } => {
                self.stop = Some(Ended {
                    end: published + skipped.len() as u64,
                    skipped,
                })
            }
        }
    }

    fn on_event(&mut self, key: usize, event: &Event) {
        if let Some(ckey) = key.checked_sub(CONN_BASE) {
            return self.on_conn_event(ckey);
        }
        let Some(sub) = self.subs.get(key) else {
            // The stream was closed earlier in this batch.
            return;
        };
        if let Phase::Connecting { .. } = sub.phase {
            self.on_connecting(key);
        } else if sub.tls.is_some() {
            // Readable or writable: the session decides what it needs.
            self.drive_tls(key);
        } else if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_stream(key);
        }
    }

    /// Reads whatever kind of stream `key` is.
    fn read_any(&mut self, key: usize) {
        match self.subs.get(key) {
            // Slow readers are HTTP/1.1 only (`--slow-fraction` is refused over HTTP/2).
            Some(Sub {
                link: Link::H2 { .. },
                ..
            }) => {}
            Some(sub) if sub.tls.is_some() => self.drive_tls(key),
            Some(_) => self.read_stream(key),
            None => {}
        }
    }

    /// Finishes `connect()` and writes the request; then reads like any stream.
    fn on_connecting(&mut self, key: usize) {
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        let Some(stream) = sub.link.tcp() else {
            return;
        };
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return self.close(key, Failure::of(&e)),
        }
        match stream.peer_addr() {
            Ok(_) => {}
            // Still connecting: a spurious event.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.close(key, Failure::of(&e)),
        }
        let request = match &sub.request {
            Some(own) => own,
            None => &self.targets[sub.life.target].request[..],
        };
        if let Some(session) = sub.tls.as_deref_mut() {
            // Queued in the session until the handshake is done, then sent encrypted.
            if let Err(e) = session.writer().write_all(request) {
                return self.close_with(key, &e);
            }
            sub.phase = Phase::Head;
            return self.drive_tls(key);
        }
        let Phase::Connecting { mut written } = sub.phase else {
            return;
        };
        let Some(stream) = sub.link.tcp() else {
            return;
        };
        while written < request.len() {
            match stream.write(&request[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sub.phase = Phase::Connecting { written };
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(key, Failure::of(&e)),
            }
        }
        sub.phase = Phase::Head;
        // Nothing more to write: stop hearing about writability.
        if let Err(e) = self
            .poll
            .registry()
            .reregister(stream, Token(key), Interest::READABLE)
        {
            return self.close(key, Failure::of(&e));
        }
        self.read_stream(key);
    }

    /// Reads a stream until `WouldBlock` (slow readers: not at all until `Drain`).
    fn read_stream(&mut self, key: usize) {
        loop {
            let Some(sub) = self.subs.get_mut(key) else {
                return;
            };
            if sub.life.acct.slow && sub.phase == Phase::Streaming && !self.draining {
                return;
            }
            let Some(stream) = sub.link.tcp() else {
                return;
            };
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let kind = ended(sub);
                    if sub.phase != Phase::Streaming {
                        // The server hung up before its head (`ended` calls it bad_response).
                        self.meter.counters.closed_before_head += 1;
                    }
                    return self.close(key, kind);
                }
                Ok(n) => {
                    if !self.on_bytes(key, n) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(key, Failure::of(&e)),
            }
        }
    }

    /// Drives a TLS stream until its socket would block: sends what the session queued,
    /// then reads and parses plaintext (slow readers only send, until `Drain`).
    fn drive_tls(&mut self, key: usize) {
        loop {
            let Some(sub) = self.subs.get_mut(key) else {
                return;
            };
            let Some(session) = sub.tls.as_deref_mut() else {
                return;
            };
            let Link::Tcp(stream) = &mut sub.link else {
                return;
            };
            if sub.life.acct.slow && sub.phase == Phase::Streaming && !self.draining {
                if let Err(e) = tls::flush(session, stream) {
                    self.close_with(key, &e);
                }
                return;
            }
            match tls::read(session, stream, &mut self.scratch) {
                Ok(Got::Plaintext(n)) => {
                    if !self.on_bytes(key, n) {
                        return;
                    }
                }
                Ok(Got::WouldBlock) => return,
                Ok(Got::Closed) => {
                    let kind = ended(sub);
                    if sub.phase != Phase::Streaming {
                        // The server hung up before its head (`ended` calls it bad_response).
                        self.meter.counters.closed_before_head += 1;
                    }
                    return self.close(key, kind);
                }
                Err(e) => return self.close_with(key, &e),
            }
        }
    }

    /// Parses `n` bytes of the scratch buffer read from stream `key`; false when that closed
    /// the stream.
    fn on_bytes(&mut self, key: usize, n: usize) -> bool {
        let Some(sub) = self.subs.get_mut(key) else {
            return false;
        };
        let before = sub.phase;
        let now = now_us();
        let result = ingest(
            sub,
            &self.scratch[..n],
            &mut self.meter,
            &mut self.commands,
            now,
        );
        if before != Phase::Streaming && sub.phase == Phase::Streaming {
            self.served(key, now);
        }
        match result {
            Ok(()) => true,
            Err(kind) => {
                self.close(key, kind);
                false
            }
        }
    }

    /// Counts a stream that just had its 200 head: out of flight, first opened, or back.
    fn served(&mut self, key: usize, now: u64) {
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        self.in_flight -= 1;
        let life = &mut sub.life;
        if life.first_open {
            life.first_open = false;
            self.first_open -= 1;
        }
        if life.ended_us != 0 {
            // Served again: how long it was without a stream.
            self.meter.counters.reconnects += 1;
            self.reconnect_us
                .saturating_record(now.saturating_sub(life.ended_us).max(1));
            life.ended_us = 0;
        }
    }

    /// Ends a stream after an I/O or TLS error, keeping the first TLS reason for the report.
    fn close_with(&mut self, key: usize, e: &io::Error) {
        let kind = Failure::of(e);
        if kind == Failure::Tls && self.tls_error.is_none() {
            self.tls_error = Some(e.to_string());
        }
        self.close(key, kind);
    }

    /// Ends a stream's connection and counts why.
    fn close(&mut self, key: usize, kind: Failure) {
        self.end(key, Some(kind));
    }

    /// Ends a stream's connection: counts why (`None`: the loadtest itself closed it, a
    /// `Blip`), and with `--reconnect` puts the stream to sleep until it comes back.
    fn end(&mut self, key: usize, kind: Option<Failure>) {
        let Some(mut sub) = self.subs.remove(key) else {
            return;
        };
        match &mut sub.link {
            Link::Tcp(stream) => {
                let _ = self.poll.registry().deregister(stream);
            }
            &mut Link::H2 { conn, id } => self.detach(conn, id),
        }
        let counters = &mut self.meter.counters;
        if let Some(kind) = kind {
            counters.fail(kind);
            if sub.phase != Phase::Streaming && kind == Failure::Reset {
                counters.closed_before_head += 1;
            }
        }
        let mut life = sub.life;
        if sub.phase != Phase::Streaming {
            self.in_flight -= 1;
        }
        if kind == Some(Failure::GoAway) && self.plan.reconnect {
            // The server never processed it (RFC 9113 §6.8: safe to retry): it goes again at
            // once, on another connection, as a browser's network stack retries it; still
            // its first attempt if it was.
            let slot = self.sleeping.insert(life);
            self.wakeups.push(Reverse((now_us(), slot)));
            return;
        }
        if life.first_open {
            life.first_open = false;
            self.first_open -= 1;
        }
        if self.plan.reconnect {
            return self.sleep(life, now_us());
        }
        if sub.phase == Phase::Streaming {
            if life.acct.slow {
                counters.slow_disconnects += 1;
            } else {
                counters.disconnects += 1;
            }
            self.ended.push(life.acct);
        } else {
            counters.connect_errors += 1;
        }
    }

    /// Puts a stream whose connection ended to sleep until it comes back (`--reconnect`):
    /// for the last `retry:` it got, then to the next URL of the list.
    fn sleep(&mut self, mut life: Life, now: u64) {
        // An outage starts when a served stream ends; a first connection that fails is not
        // one (its comeback is its first head, not a reconnect).
        if life.established && life.ended_us == 0 {
            life.ended_us = now;
        }
        let wait_ms = life.acct.retry_ms.unwrap_or(DEFAULT_RETRY_MS);
        life.target = (life.target + 1) % self.targets.len();
        life.parser.restart();
        life.acct.shed = false;
        let at = now.saturating_add(wait_ms.saturating_mul(1000));
        let slot = self.sleeping.insert(life);
        self.wakeups.push(Reverse((at, slot)));
    }

    /// Brings back the sleeping streams whose wait is over (`--reconnect`).
    fn wake(&mut self, now: u64) {
        while let Some(&Reverse((at, slot))) = self.wakeups.peek() {
            if at > now {
                return;
            }
            self.wakeups.pop();
            let Some(life) = self.sleeping.remove(slot) else {
                continue;
            };
            self.meter.counters.reconnect_attempts += 1;
            self.open(life, now);
        }
    }

    /// Fails the streams whose head did not arrive in time.
    fn expire(&mut self, now: u64) {
        while let Some(&(at, key, serial)) = self.deadlines.front() {
            if at > now {
                return;
            }
            self.deadlines.pop_front();
            let pending = self
                .subs
                .get(key)
                .is_some_and(|s| s.serial == serial && s.phase != Phase::Streaming);
            if pending {
                self.close(key, Failure::Timeout);
            }
        }
    }

    /// Starts as many connections as the ramp and the in-flight bound allow.
    fn start_connections(&mut self, now: u64) {
        let allowed = if self.plan.ramp_per_sec > 0.0 {
            1 + ((now - self.ramp_start_us) as f64 * self.plan.ramp_per_sec / 1e6) as u64
        } else {
            u64::MAX
        };
        while self.started < self.plan.connections
            && self.started < allowed
            && self.in_flight < self.plan.max_in_flight
        {
            let index = self.plan.first_index + self.started;
            self.started += 1;
            if self.plan.storm && self.storm.first_connect_us == 0 {
                self.storm.first_connect_us = now;
            }
            let parser = match &self.plan.last_event_id {
                Some(id) => Parser::with_last_event_id(id),
                None => Parser::new(),
            };
            let life = Life {
                index,
                target: index as usize % self.targets.len(),
                parser,
                acct: Acct {
                    slow: is_slow(index, self.plan.slow_fraction),
                    ..Acct::default()
                },
                established: false,
                first_open: true,
                ended_us: 0,
                head_us: 0,
            };
            self.first_open += 1;
            self.open(life, now);
        }
    }

    /// Opens a connection for the stream `life`: to its target, with `Last-Event-ID` when it
    /// has one. A failure to even start is counted like a failed connection.
    fn open(&mut self, life: Life, now: u64) {
        if let Some(per_conn) = self.plan.streams_per_connection {
            return self.open_h2(life, now, per_conn);
        }
        let target = &self.targets[life.target];
        let source = (!self.plan.sources.is_empty())
            .then(|| self.plan.sources[life.index as usize % self.plan.sources.len()]);
        let session = match &target.tls {
            None => Ok(None),
            Some(tls) => ClientConnection::new(tls.config.clone(), tls.name.clone())
                .map(|session| Some(Box::new(session)))
                .map_err(|e| {
                    self.tls_error.get_or_insert_with(|| e.to_string());
                    Failure::Tls
                }),
        };
        let request = target.request_after(life.parser.last_event_id());
        let started = session.and_then(|session| {
            let mut stream = connect(target.url.addr, source).map_err(|e| Failure::of(&e))?;
            let key = self.subs.next_key();
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| Failure::of(&e))?;
            Ok((stream, session))
        });
        let (stream, session) = match started {
            Ok(pair) => pair,
            Err(kind) => return self.not_started(life, kind, now),
        };
        self.meter.counters.connections_opened += 1;
        self.serial += 1;
        let key = self.subs.insert(Sub {
            link: Link::Tcp(stream),
            tls: session,
            serial: self.serial,
            phase: Phase::Connecting { written: 0 },
            head: Vec::new(),
            body: Body::Plain,
            request,
            life,
        });
        self.in_flight += 1;
        self.deadlines
            .push_back((now + self.plan.connect_timeout_ms * 1000, key, self.serial));
    }

    /// Counts a stream whose connection could not even start like one that failed at once;
    /// with `--reconnect` it sleeps.
    fn not_started(&mut self, mut life: Life, kind: Failure, now: u64) {
        let counters = &mut self.meter.counters;
        counters.fail(kind);
        if life.first_open {
            life.first_open = false;
            self.first_open -= 1;
        }
        if self.plan.reconnect {
            self.sleep(life, now);
        } else {
            counters.connect_errors += 1;
        }
    }

    /// Opens an HTTP/2 stream for `life`: its HEADERS queued on a connection of its URL with
    /// room (at most `per_conn` streams), or on a new one.
    fn open_h2(&mut self, life: Life, now: u64, per_conn: u64) {
        let t = life.target;
        let ckey = match self.conn_with_room(t, per_conn) {
            Some(ckey) => ckey,
            None => match self.new_conn(t, life.index / per_conn) {
                Ok(ckey) => ckey,
                Err(kind) => return self.not_started(life, kind, now),
            },
        };
        let block = self.targets[t].h2_block_after(life.parser.last_event_id());
        let Some(conn) = self.conns.get_mut(ckey) else {
            return self.not_started(life, Failure::Other, now);
        };
        let Some(id) = conn.h2.open(&block) else {
            return self.not_started(life, Failure::Other, now);
        };
        self.serial += 1;
        let key = self.subs.insert(Sub {
            link: Link::H2 { conn: ckey, id },
            tls: None,
            serial: self.serial,
            phase: Phase::Head,
            head: Vec::new(),
            body: Body::Plain,
            request: None,
            life,
        });
        conn.ids.insert(id, key);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(ckey);
        }
        self.in_flight += 1;
        self.deadlines
            .push_back((now + self.plan.connect_timeout_ms * 1000, key, self.serial));
    }

    /// A connection of URL `t` that may take one more stream, if any.
    fn conn_with_room(&mut self, t: usize, per_conn: u64) -> Option<usize> {
        let conns = &self.conns;
        let has_room = |ckey: usize| {
            conns.get(ckey).is_some_and(|c| {
                c.target == t && c.h2.can_open() && (c.ids.len() as u64) < per_conn
            })
        };
        if let Some(ckey) = self.filling[t].filter(|&c| has_room(c)) {
            return Some(ckey);
        }
        while let Some(ckey) = self.with_room[t].pop() {
            if has_room(ckey) {
                self.filling[t] = Some(ckey);
                return Some(ckey);
            }
        }
        None
    }

    /// Starts a new HTTP/2 connection to URL `t`; `spread` picks its source address.
    fn new_conn(&mut self, t: usize, spread: u64) -> Result<usize, Failure> {
        let target = &self.targets[t];
        let source = (!self.plan.sources.is_empty())
            .then(|| self.plan.sources[spread as usize % self.plan.sources.len()]);
        let session = match &target.tls {
            None => None,
            Some(tls) => Some(Box::new(
                ClientConnection::new(tls.config.clone(), tls.name.clone()).map_err(|e| {
                    self.tls_error.get_or_insert_with(|| e.to_string());
                    Failure::Tls
                })?,
            )),
        };
        let mut stream = connect(target.url.addr, source).map_err(|e| Failure::of(&e))?;
        let ckey = self.conns.next_key();
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(CONN_BASE + ckey),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Failure::of(&e))?;
        self.conns.insert(Conn {
            stream,
            tls: session,
            h2: h2::Client::new(),
            target: t,
            connected: false,
            alpn_checked: false,
            ids: HashMap::new(),
            dirty: false,
        });
        self.meter.counters.connections_opened += 1;
        self.filling[t] = Some(ckey);
        Ok(ckey)
    }

    /// Takes an ended stream off its HTTP/2 connection (RST_STREAM when the server still
    /// holds it open). A connection left without streams closes, unless it is live and may
    /// carry the streams that come back (`--reconnect`).
    fn detach(&mut self, ckey: usize, id: u32) {
        let Some(conn) = self.conns.get_mut(ckey) else {
            return;
        };
        conn.ids.remove(&id);
        conn.h2.cancel(id);
        let keep = self.plan.reconnect && conn.connected && conn.h2.can_open();
        if conn.ids.is_empty() && !keep {
            return self.drop_conn(ckey, None);
        }
        if conn.h2.can_open() {
            self.with_room[conn.target].push(ckey);
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(ckey);
        }
    }

    /// Closes an HTTP/2 connection and ends its streams: with `kind`, or (`None`) as the
    /// server ending them (closed when streaming, a bad response before their head).
    fn drop_conn(&mut self, ckey: usize, kind: Option<Failure>) {
        let Some(mut conn) = self.conns.remove(ckey) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        for (_, key) in conn.ids {
            let kind = match kind {
                Some(kind) => kind,
                None => {
                    let Some(sub) = self.subs.get(key) else {
                        continue;
                    };
                    if sub.phase != Phase::Streaming {
                        self.meter.counters.closed_before_head += 1;
                    }
                    ended(sub)
                }
            };
            self.close(key, kind);
        }
    }

    /// Ends an HTTP/2 connection after an I/O or TLS error, keeping the first TLS reason.
    fn fail_conn(&mut self, ckey: usize, e: &io::Error) {
        let kind = Failure::of(e);
        if kind == Failure::Tls && self.tls_error.is_none() {
            self.tls_error = Some(e.to_string());
        }
        self.drop_conn(ckey, Some(kind));
    }

    /// Writes what the connections queued this turn (HEADERS, resets, window updates).
    fn flush_dirty(&mut self) {
        for ckey in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(ckey) else {
                continue;
            };
            conn.dirty = false;
            if let Err(e) = write_conn(conn) {
                self.fail_conn(ckey, &e);
            }
        }
    }

    /// An HTTP/2 connection is readable or writable: finish `connect()`, then write and read
    /// until its socket would block.
    fn on_conn_event(&mut self, ckey: usize) {
        let Some(conn) = self.conns.get_mut(ckey) else {
            return;
        };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail_conn(ckey, &e),
            }
            match conn.stream.peer_addr() {
                Ok(_) => conn.connected = true,
                // Still connecting: a spurious event.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail_conn(ckey, &e),
            }
        }
        loop {
            let Some(conn) = self.conns.get_mut(ckey) else {
                return;
            };
            if let Err(e) = write_conn(conn) {
                return self.fail_conn(ckey, &e);
            }
            let got = match conn.tls.as_deref_mut() {
                Some(session) => tls::read(session, &mut conn.stream, &mut self.scratch),
                None => match conn.stream.read(&mut self.scratch) {
                    Ok(0) => Ok(Got::Closed),
                    Ok(n) => Ok(Got::Plaintext(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::WouldBlock),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                },
            };
            if let Some(session) = conn.tls.as_deref() {
                if !conn.alpn_checked && !session.is_handshaking() {
                    conn.alpn_checked = true;
                    let chosen = session.alpn_protocol();
                    if chosen != Some(b"h2") {
                        let url = &self.targets[conn.target].url;
                        let chosen = chosen.map_or("none".into(), String::from_utf8_lossy);
                        self.tls_error.get_or_insert_with(|| {
                            format!(
                                "{url}: the server did not choose HTTP/2 by ALPN (it chose \
                                 {chosen}): --streams-per-connection needs h2 (without it \
                                 https:// runs use HTTP/1.1)"
                            )
                        });
                        return self.drop_conn(ckey, Some(Failure::Tls));
                    }
                }
            }
            match got {
                Ok(Got::Plaintext(n)) => {
                    if !self.on_h2_bytes(ckey, n) {
                        return;
                    }
                }
                Ok(Got::WouldBlock) => {
                    if let Err(e) = write_conn(conn) {
                        self.fail_conn(ckey, &e);
                    }
                    return;
                }
                Ok(Got::Closed) => return self.drop_conn(ckey, None),
                Err(e) => return self.fail_conn(ckey, &e),
            }
        }
    }

    /// Feeds `n` bytes of the scratch buffer to connection `ckey` and acts on what they said;
    /// false when the connection is gone.
    fn on_h2_bytes(&mut self, ckey: usize, n: usize) -> bool {
        let Some(conn) = self.conns.get_mut(ckey) else {
            return false;
        };
        let mut events = std::mem::take(&mut self.h2_events);
        let mut data = std::mem::take(&mut self.h2_data);
        events.clear();
        data.clear();
        let result = conn.h2.recv(&self.scratch[..n], &mut |event| match event {
            h2::Event::Head {
                stream,
                status,
                end_stream,
            } => events.push((stream, H2Ev::Head { status, end_stream })),
            h2::Event::Data {
                stream,
                data: bytes,
                end_stream,
            } => {
                let start = data.len();
                data.extend_from_slice(bytes);
                events.push((
                    stream,
                    H2Ev::Data {
                        start,
                        end: data.len(),
                        end_stream,
                    },
                ));
            }
            h2::Event::Reset { stream, .. } => events.push((stream, H2Ev::Reset)),
            h2::Event::GoAway { last_stream, .. } => events.push((0, H2Ev::GoAway { last_stream })),
        });
        let now = now_us();
        for (id, event) in events.drain(..) {
            self.on_h2_event(ckey, id, event, &data, now);
        }
        self.h2_events = events;
        self.h2_data = data;
        if result.is_err() {
            // A connection error: its GOAWAY goes out if it can, then every stream is lost.
            if let Some(conn) = self.conns.get_mut(ckey) {
                let _ = write_conn(conn);
            }
            self.drop_conn(ckey, Some(Failure::BadResponse));
            return false;
        }
        self.conns.get(ckey).is_some()
    }

    /// Acts on one thing an HTTP/2 connection said about stream `id`.
    fn on_h2_event(&mut self, ckey: usize, id: u32, event: H2Ev, data: &[u8], now: u64) {
        let Some(conn) = self.conns.get(ckey) else {
            return;
        };
        if let H2Ev::GoAway { last_stream } = event {
            self.meter.counters.h2_goaways += 1;
            // Streams above its last id were not processed: they may go elsewhere at once.
            let unprocessed: Vec<usize> = conn
                .ids
                .iter()
                .filter(|(&id, _)| id > last_stream)
                .map(|(_, &key)| key)
                .collect();
            for key in unprocessed {
                self.meter.counters.h2_goaway_streams += 1;
                self.close(key, Failure::GoAway);
            }
            return;
        }
        let Some(&key) = conn.ids.get(&id) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        match event {
            H2Ev::Head { status, end_stream } => {
                if status != 200 {
                    return self.close(key, Failure::BadStatus);
                }
                if sub.phase == Phase::Streaming {
                    return;
                }
                sub.phase = Phase::Streaming;
                on_head(sub, &mut self.meter, now);
                self.served(key, now);
                if end_stream {
                    self.close(key, Failure::Closed);
                }
            }
            H2Ev::Data {
                start,
                end,
                end_stream,
            } => {
                let bytes = data.get(start..end).unwrap_or_default();
                if let Err(kind) = feed_body(sub, bytes, &mut self.meter, &mut self.commands, now) {
                    return self.close(key, kind);
                }
                if end_stream {
                    let kind = ended(sub);
                    self.close(key, kind);
                }
            }
            H2Ev::Reset => {
                self.meter.counters.h2_resets += 1;
                self.close(key, Failure::Reset);
            }
            H2Ev::GoAway { .. } => {}
        }
    }

    /// Settles the books at the end: what each stream never got is lost, whether it is
    /// streaming, between two connections, or ended for good.
    fn finish(&mut self) {
        let Ended { end, skipped } = self.stop.take().unwrap_or(Ended {
            end: self.meter.sent_count(),
            skipped: Vec::new(),
        });
        let lives = self
            .subs
            .iter()
            .map(|(_, s)| (&s.life, s.phase == Phase::Streaming))
            .chain(self.sleeping.iter().map(|(_, life)| (life, false)));
        let mut unfinished = 0;
        let mut settle = Vec::new();
        for (life, streaming) in lives {
            // Without --reconnect only a streaming connection has an account to settle; with
            // it, every stream that was ever served, wherever it is now.
            if streaming || (self.plan.reconnect && life.established) {
                settle.push(life.acct);
            } else {
                unfinished += 1;
            }
            if self.plan.storm && life.established {
                self.storm.add(
                    life.acct.replayed,
                    life.head_us.max(life.acct.replayed_at_us),
                );
            }
        }
        if self.plan.storm {
            for acct in &self.ended {
                // Streams that ended for good were served once; their replay counts too.
                self.storm.add(acct.replayed, acct.replayed_at_us);
            }
        }
        let counters = &mut self.meter.counters;
        for acct in settle.iter().chain(&self.ended) {
            let settled = acct.settle(end, &skipped);
            let lost = if acct.slow {
                &mut counters.slow_lost
            } else {
                &mut counters.lost
            };
            *lost = (*lost + settled.tail).saturating_sub(settled.not_lost);
            counters.lost_covered = counters.lost_covered.saturating_sub(settled.not_covered);
        }
        // Streams still connecting when the run ended never made it.
        for _ in 0..unfinished {
            counters.connect_errors += 1;
            counters.fail(Failure::Timeout);
        }
        // Streams never started (an interrupted ramp) are not failures, only not requested.
        counters.requested = self.started;
    }
}

/// What `Stop` said was published.
struct Ended {
    /// Numbers `0..end` were given out.
    end: u64,
    /// Those among them never published (several publishing connections only).
    skipped: Vec<u64>,
}

/// Why a stream the server ended failed, by how far it had got.
fn ended(sub: &Sub) -> Failure {
    match sub.phase {
        Phase::Streaming if sub.life.acct.shed => Failure::Shed,
        Phase::Streaming => Failure::Closed,
        _ => Failure::BadResponse,
    }
}

/// Feeds bytes read from a stream: head first, then the (de-chunked) body to the parser.
fn ingest(
    sub: &mut Sub,
    bytes: &[u8],
    meter: &mut Meter,
    commands: &mut Commands,
    now: u64,
) -> Result<(), Failure> {
    let head_bytes;
    let mut bytes = bytes;
    if sub.phase == Phase::Head {
        sub.head.extend_from_slice(bytes);
        let head = match parse_head(&sub.head) {
            HeadParse::Partial => return Ok(()),
            HeadParse::Bad(_) => return Err(Failure::BadResponse),
            HeadParse::Done(head) if head.status != 200 => return Err(Failure::BadStatus),
            HeadParse::Done(head) => head,
        };
        sub.phase = Phase::Streaming;
        on_head(sub, meter, now);
        if head.chunked {
            sub.body = Body::Chunked(Dechunker::new());
        }
        head_bytes = std::mem::take(&mut sub.head);
        bytes = &head_bytes[head.len..];
    }
    feed_body(sub, bytes, meter, commands, now)
}

/// Counts a stream's 200 head: established once however many connections it takes.
fn on_head(sub: &mut Sub, meter: &mut Meter, now: u64) {
    if !sub.life.established {
        // A stream counts once, however many connections it takes (`--reconnect`).
        sub.life.established = true;
        sub.life.head_us = now;
        meter.counters.established += 1;
        if sub.life.acct.slow {
            meter.counters.slow_established += 1;
        }
    }
    if sub
        .tls
        .as_ref()
        .is_some_and(|s| s.handshake_kind() == Some(HandshakeKind::Resumed))
    {
        meter.counters.tls_resumed += 1;
    }
}

/// Feeds body bytes (de-chunked when the server chunks) to the stream's parser and meter.
fn feed_body(
    sub: &mut Sub,
    bytes: &[u8],
    meter: &mut Meter,
    commands: &mut Commands,
    now: u64,
) -> Result<(), Failure> {
    let Sub { body, life, .. } = sub;
    let Life { parser, acct, .. } = life;
    let mut on_item = |item: Item<'_>| {
        if meter.needs_commands(acct, &item) {
            commands.refresh(meter);
        }
        meter.on_item(acct, item, now);
    };
    let complete = match body {
        Body::Plain => {
            parser.feed(bytes, &mut on_item);
            false
        }
        Body::Chunked(dechunker) => {
            dechunker
                .feed(bytes, &mut |data| parser.feed(data, &mut on_item))
                .map_err(|_| Failure::BadResponse)?;
            dechunker.done()
        }
    };
    if complete {
        // The last chunk: the response is over though the connection may stay open. A proxy
        // ends its chunked answer so when the node behind it went away (nginx: an upstream
        // body delimited by its close); EventSource then reconnects, and so does this.
        return Err(ended(sub));
    }
    Ok(())
}

/// The parent's commands as the loop sees them.
struct Commands {
    inbox: Inbox,
    /// Commands read but left for the loop (`Drain`, `Stop`).
    deferred: Vec<Command>,
}

impl Commands {
    /// Reads the pipe now: commands about measuring go to `meter` at once, the rest wait for
    /// the loop.
    fn refresh(&mut self, meter: &mut Meter) {
        for command in self.inbox.read() {
            if let Some(command) = meter.apply(command) {
                self.deferred.push(command);
            }
        }
    }
}

/// Writes what an HTTP/2 connection queued, until its socket would block (TLS: through the
/// session, which holds it until the handshake is done).
fn write_conn(conn: &mut Conn) -> io::Result<()> {
    if !conn.connected {
        return Ok(());
    }
    match conn.tls.as_deref_mut() {
        Some(session) => loop {
            // rustls takes plaintext up to its buffer limit (during the handshake, and while
            // its records wait for the socket): what it refuses goes once the socket took
            // some, in this same call, since no edge of its own will come for it.
            let before = conn.h2.output().len();
            while !conn.h2.output().is_empty() {
                let n = session.writer().write(conn.h2.output())?;
                if n == 0 {
                    break;
                }
                conn.h2.sent(n);
            }
            tls::flush(session, &mut conn.stream)?;
            let stuck = session.wants_write() || session.is_handshaking();
            if conn.h2.output().is_empty() || stuck || conn.h2.output().len() == before {
                // Done; or the socket is full (a writable edge follows) or the handshake
                // holds the rest (its reads drive this again).
                return Ok(());
            }
        },
        None => {
            while !conn.h2.output().is_empty() {
                match conn.stream.write(conn.h2.output()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => conn.h2.sent(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// Starts a non-blocking connect, from `source` when given.
fn connect(to: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    if let Some(source) = source {
        // Choose the port at connect() time, by the whole 4-tuple: without this, bind() gives
        // each socket a port of its own and one source address tops out at ~28k streams
        // *in total* instead of per destination.
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain int option on a socket we own, with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_readers_are_spread_evenly() {
        let slow = (0..1000).filter(|&i| is_slow(i, 0.1)).count();
        assert_eq!(slow, 100);
        assert!(!(0..1000).any(|i| is_slow(i, 0.0)));
        assert!((0..1000).all(|i| is_slow(i, 1.0)));
        // Any window of ten consecutive streams holds one slow reader.
        assert_eq!((500..510).filter(|&i| is_slow(i, 0.1)).count(), 1);
    }
}
