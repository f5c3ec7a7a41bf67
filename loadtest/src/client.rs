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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
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

/// One stream with a connection.
struct Sub {
    stream: TcpStream,
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
                Scheme::Http => None,
                Scheme::Https => {
                    let trust = plan.tls.as_ref().ok_or_else(|| {
                        io::Error::other("an https:// URL needs --cacert FILE or --insecure")
                    })?;
                    // One configuration (and so one ticket store) for every URL of the list.
                    let config = match &tls_config {
                        Some(config) => Arc::clone(config),
                        None => {
                            let config = tls::client_config(trust, plan.tls_resume)
                                .map_err(io::Error::other)?;
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
            targets.push(Target {
                url,
                tls,
                head,
                request,
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
        match sub.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return self.close(key, Failure::of(&e)),
        }
        match sub.stream.peer_addr() {
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
        while written < request.len() {
            match sub.stream.write(&request[written..]) {
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
        if let Err(e) =
            self.poll
                .registry()
                .reregister(&mut sub.stream, Token(key), Interest::READABLE)
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
            match sub.stream.read(&mut self.scratch) {
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
            if sub.life.acct.slow && sub.phase == Phase::Streaming && !self.draining {
                if let Err(e) = tls::flush(session, &mut sub.stream) {
                    self.close_with(key, &e);
                }
                return;
            }
            match tls::read(session, &mut sub.stream, &mut self.scratch) {
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
        match result {
            Ok(()) => true,
            Err(kind) => {
                self.close(key, kind);
                false
            }
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
        let _ = self.poll.registry().deregister(&mut sub.stream);
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
    fn open(&mut self, mut life: Life, now: u64) {
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
            Err(kind) => {
                // Counted as a connection that failed at once; with --reconnect it sleeps.
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
                return;
            }
        };
        self.serial += 1;
        let key = self.subs.insert(Sub {
            stream,
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
        if head.chunked {
            sub.body = Body::Chunked(Dechunker::new());
        }
        head_bytes = std::mem::take(&mut sub.head);
        bytes = &head_bytes[head.len..];
    }
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
