//! Taking connections in: accepting a bounded number per turn, reading each at once,
//! admitting or shedding, the cap on connections still in the request phase (and who gives
//! way at it), reconnect storms, and the jittered `retry:` of a shed stream.
//!
//! # In a storm
//!
//! When a node's browsers all come back at once, thousands of connections wait in the
//! listener's accept queue, each with its complete request already in its socket. Nothing
//! may tell such a connection from a silent one but its bytes, so:
//!
//! - a turn accepts at most [`ACCEPTS_PER_TURN`], then serves what it has (reads, flushes,
//!   timers, deliveries) and comes back for more at once (the poll timeout is zero while the
//!   listener may hold more: mio is edge-triggered, and no new edge comes for connections
//!   already waiting);
//! - each connection is read as soon as it is accepted: a complete request is answered and
//!   leaves the request phase before the cap is looked at;
//! - over `--max-request-connections`, only a connection that has had [`REQUEST_GRACE`] to
//!   send its request and has nothing unread in its socket gives way ([`Eviction`]). When
//!   every connection over the cap has data or is too young to judge, that is load, not an
//!   attack, and all are served.
//!
//! A turn that finds more waiting than it may accept begins a [`Storm`]: counted at once,
//! logged once when the shard has caught up.

use super::*;

/// Connections one turn accepts at most. Each costs an accept, a registration and a read
/// (with its answer, a few microseconds; a TLS handshake is bounded apart): 256 keep a turn
/// within a few milliseconds, so a storm of 10 000 never holds up deliveries, flushes and
/// timers for longer, while the queue still empties at the pace of whole turns. A turn that
/// finds more waiting than this begins a [`Storm`].
pub(super) const ACCEPTS_PER_TURN: usize = 256;
/// A request-phase connection younger than this never gives way at the cap: its request may
/// still be on the network (one lost segment costs a retransmission, 200 ms at least; a
/// TLS handshake costs round trips). Silent connections may thus pass the cap by what
/// arrives within this time; the cap holds again once it has passed.
pub(super) const REQUEST_GRACE: Duration = Duration::from_secs(1);
/// Request-phase connections the cap looks at per turn beyond those it must close: bounds a
/// turn's work (one `recv(MSG_PEEK)` each) when most of them have data waiting.
const EVICTION_SLACK: usize = 64;
/// A storm is over once the shard has caught up and stayed so this long: browsers shed or
/// refused in a storm come back within seconds (and the kernel retries dropped SYNs after
/// 1 s and 3 s), and those waves are the same storm.
const STORM_QUIET: Duration = Duration::from_secs(2);

/// What a request-phase connection closed at the cap was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Eviction {
    /// No byte of a request (and nothing to send): never spoke, or kept alive and idle.
    Silent,
    /// Part of a request, or answers it does not read, and nothing more in its socket.
    Stalled,
}

/// A reconnect storm on one shard: from the turn that found more connections waiting than it
/// may accept, until the shard has caught up (accept queue empty, the request phase within
/// its cap, no TLS handshake waiting) and stayed so for [`STORM_QUIET`].
#[derive(Debug)]
pub(super) struct Storm {
    /// The start of the turn it began in.
    began: Instant,
    /// Connections accepted since it began.
    accepted: u64,
    /// Connections accepted up to the moment the shard last caught up: its size.
    size: u64,
    /// The shard was behind at the end of the last turn.
    behind: bool,
    /// When the shard last caught up.
    caught_up: Instant,
    /// The most connections the request phase held during it.
    peak: usize,
    /// Request-phase evictions counted before it (the line says what it added).
    evicted_before: u64,
    /// Sheds counted before it.
    shed_before: u64,
}

impl Shard {
    /// Whether this shard takes new connections now: not paused after running out of
    /// descriptors, not handing over (the listeners are the successor's to accept on, or ours
    /// again if the hand-over is called off), not draining.
    pub(super) fn may_accept(&self) -> bool {
        self.listener.is_some() && self.accept_paused_until.is_none() && self.handing.is_none()
    }

    /// Accepts while the listener may hold connections (until `WouldBlock`) and this turn's
    /// budget lasts, reading each as it comes; then keeps the request phase within its cap.
    ///
    /// Called when the listener reported readiness, and again every turn while it may hold
    /// more ([`Shard::listener_ready`] stays set until `WouldBlock`).
    pub(super) fn accept_some(&mut self) {
        if !self.may_accept() || !self.listener_ready {
            return;
        }
        let evicted_before = self.evictions();
        let shed_before = self.counters.get(Stat::Shed);
        while self.listener_ready && self.accepts_left > 0 {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    self.accepts_left -= 1;
                    self.accept_failing = false;
                    self.admit(socket, peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.listener_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The peer gave up between SYN and accept: nothing to do.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    self.counters.add(Stat::AcceptErrors, 1);
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        warn!(shard = self.id, error = %e, "accept failed; shedding or pausing until it works again (counted in sse_edge_accept_errors_total)");
                    }
                    if out_of_descriptors(&e) && self.shed_with_reserve() {
                        self.accepts_left -= 1;
                        continue;
                    }
                    // Accepting again at once would fail again at once, and spin. Pause; the
                    // timer resumes (no new edge would come for connections already waiting).
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    break;
                }
            }
        }
        if self.accepts_left == 0 && self.listener_ready && self.storm.is_none() {
            self.counters.add(Stat::Storms, 1);
            debug!(
                shard = self.id,
                "storm begins: more connections waiting than a turn accepts"
            );
            self.storm = Some(Storm {
                began: self.now,
                accepted: 0, // this turn's are added at its end
                size: 0,
                behind: true,
                caught_up: self.now,
                peak: 0,
                evicted_before,
                shed_before,
            });
        }
        self.enforce_request_cap();
    }

    /// Out of descriptors: gives up the reserve to accept one waiting connection and shed it.
    /// Returns false when there was no reserve or the accept failed anyway.
    pub(super) fn shed_with_reserve(&mut self) -> bool {
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
    pub(super) fn shed_unadmitted(&mut self, mut socket: TcpStream) {
        if self.node.tls.is_some() {
            // No room for a handshake: close, and the browser retries after its retry delay.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return;
        }
        let n = socket.read(&mut self.scratch).unwrap_or(0);
        let response = if self.scratch[..n].starts_with(b"GET /stream") {
            self.counters.add(Stat::Shed, 1);
            let retry = self.jitter(self.config.retry_ms * SHED_RETRY_FACTOR);
            [
                &self.node.cors.stream_head(None)[..],
                &sse::encode_shed(retry),
            ]
            .concat()
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

    /// Takes a new connection in: registers it, lists it in the request phase, and reads it
    /// at once.
    pub(super) fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        // Each frame is a complete message; do not let Nagle hold it back.
        let _ = socket.set_nodelay(true);
        self.room_for_a_client();
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
        let tls = match &self.node.tls {
            None => None,
            Some(certificate) => match tls::Session::new(certificate) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => {
                    warn!(shard = self.id, error = %e, "cannot start a TLS session");
                    return;
                }
            },
        };
        // The handshake must finish within the header timeout too: it is part of the request.
        let deadline = Instant::now() + self.config.header_timeout();
        self.serial = self.serial.wrapping_add(1);
        entry.insert(Client::new(socket, deadline, self.serial, tls));
        self.set_deadline(key, deadline);
        self.counters.add(Stat::Connections, 1);
        self.entered_request_phase(key);
        debug!(shard = self.id, %peer, key, "connection accepted");
        // Read it now: in a storm its request is already waiting, and answering it takes it out
        // of the request phase before the cap is looked at. (Without data, one read finds
        // nothing; its readable event comes later as for any connection.)
        self.clients[key].readable = true;
        self.serve_requests(key);
    }

    /// Lists the connection just inserted at `key` (the shard's latest serial) in the
    /// request phase, accepted now.
    pub(super) fn entered_request_phase(&mut self, key: usize) {
        // Rounded up: its grace is never cut short.
        let since = timers::tick_ceil(self.now.saturating_duration_since(self.started));
        self.requesting.push_back((key as u32, self.serial, since));
        self.requesting_now += 1;
        self.turn_peak = self.turn_peak.max(self.requesting_now);
        // Drop entries of connections that moved on, once they outnumber the live ones.
        self.compact_requesting();
    }

    /// Whether `key` with `serial` is still a connection in the request phase.
    pub(super) fn is_requesting(&self, key: usize, serial: u32) -> bool {
        self.clients.get(key).is_some_and(|c| {
            c.serial == serial && !c.closing && matches!(c.phase, Phase::Request(_))
        })
    }

    /// Keeps the request phase within `--max-request-connections`: while over it, closes the
    /// oldest connection that has had [`REQUEST_GRACE`] and has nothing unread in its socket
    /// ([`Shard::eviction`]), so silent connections cannot hold the node's descriptors.
    ///
    /// Never closed: a connection whose socket holds data (it is served as soon as it is
    /// read), a publish waiting for the broker, a connection younger than the grace. If only
    /// such are over the cap, the phase stays over it: that is load, not an attack. Looks
    /// again when the oldest young one comes of age.
    pub(super) fn enforce_request_cap(&mut self) {
        self.next_cap_check = None;
        let cap = self.config.max_request_connections;
        let grace = timers::tick_ceil(REQUEST_GRACE);
        let now = self.ticks_at(self.now);
        // Connections found with data (kept) cost a look each and free nothing: a turn spends
        // a bounded number on them.
        let mut kept = 0;
        // Each entry is met once at most: a kept one goes to the back.
        let mut entries = self.requesting.len();
        while self.requesting_now > cap && entries > 0 {
            entries -= 1;
            let Some(entry) = self.requesting.pop_front() else {
                break;
            };
            let (key, serial, since) = entry;
            let key = key as usize;
            if !self.is_requesting(key, serial) {
                continue; // moved on: the entry goes
            }
            let of_age = since.saturating_add(grace);
            if of_age > now || kept == EVICTION_SLACK {
                // Everyone behind a young one came later (but for kept ones sent back: older,
                // and just found with data).
                self.requesting.push_front(entry);
                let at = self.started + TICK * of_age;
                self.next_cap_check = Some(if of_age > now { at } else { self.now + TICK });
                return;
            }
            match self.eviction(key) {
                Some(reason) => {
                    self.counters.add(
                        match reason {
                            Eviction::Silent => Stat::RequestEvictionsSilent,
                            Eviction::Stalled => Stat::RequestEvictionsStalled,
                        },
                        1,
                    );
                    debug!(
                        shard = self.id,
                        key,
                        ?reason,
                        "request connections over the cap; closing the oldest with nothing unread"
                    );
                    self.close(key);
                }
                None => {
                    kept += 1;
                    self.requesting.push_back(entry);
                }
            }
        }
        if self.requesting_now > cap {
            // Every connection over the cap had data: look again in a while, in case one of
            // them stalls and no new connection comes to make us look.
            self.next_cap_check = Some(self.now + REQUEST_GRACE);
        }
    }

    /// Whether the request-phase connection `key` may give way at the cap, and as what: not
    /// while its socket holds bytes not yet read (one `recv(MSG_PEEK)`), nor while a publish
    /// it made waits for the broker (closing it would lose an answer, and the publish would
    /// be made again), nor while it is handed over.
    fn eviction(&self, key: usize) -> Option<Eviction> {
        let client = self.clients.get(key)?;
        let Phase::Request(state) = &client.phase else {
            return None;
        };
        if client.handed || state.awaiting.is_some() {
            return None;
        }
        // A TLS handshake that began, or whose ClientHello waits in the handshake queue, has
        // nothing in its socket because it was read: it is load, not silence.
        if client
            .tls
            .as_ref()
            .is_some_and(|s| s.handshaking() && (s.began() || s.queued()))
        {
            return None;
        }
        match client.socket.peek(&mut [0u8; 1]) {
            Ok(n) if n > 0 => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
            // Nothing waiting; or the peer left (EOF, reset): it has nothing more to send.
            _ => {}
        }
        Some(if client.is_idle_request() && !client.wants_flush() {
            Eviction::Silent
        } else {
            Eviction::Stalled
        })
    }

    /// Request-phase evictions so far, whatever the reason.
    fn evictions(&self) -> u64 {
        self.counters.get(Stat::RequestEvictionsSilent)
            + self.counters.get(Stat::RequestEvictionsStalled)
    }

    /// At the end of a turn: the accept and request-phase gauges, and the course of a storm
    /// (behind while connections wait in the accept queue, the request phase is over its
    /// cap, or TLS handshakes wait; over once caught up for [`STORM_QUIET`]).
    pub(super) fn end_turn_accepting(&mut self) {
        let accepted = ACCEPTS_PER_TURN.saturating_sub(self.accepts_left);
        self.counters
            .raise(Stat::AcceptedPerTurnMax, accepted as u64);
        self.counters
            .set(Stat::RequestConnections, self.requesting_now as u64);
        self.counters
            .raise(Stat::RequestConnectionsPeak, self.turn_peak as u64);
        let behind = (self.listener_ready && self.may_accept())
            || self.requesting_now > self.config.max_request_connections
            || !self.handshakes.is_empty();
        let evictions = self.evictions();
        let sheds = self.counters.get(Stat::Shed);
        let Some(storm) = &mut self.storm else {
            return;
        };
        storm.accepted += accepted as u64;
        storm.peak = storm.peak.max(self.turn_peak);
        if behind {
            storm.behind = true;
        } else if storm.behind {
            storm.behind = false;
            storm.caught_up = Instant::now();
            storm.size = storm.accepted;
        } else if self.now >= storm.caught_up + STORM_QUIET {
            let evicted = evictions - storm.evicted_before;
            let shed = sheds - storm.shed_before;
            info!(
                shard = self.id,
                connections = storm.size,
                took_ms = storm
                    .caught_up
                    .saturating_duration_since(storm.began)
                    .as_millis() as u64,
                request_phase_peak = storm.peak,
                evicted,
                shed,
                "reconnect storm served: every waiting connection taken in and read"
            );
            self.storm = None;
        }
    }

    /// When the storm in course is over if the shard stays caught up (a poll timeout).
    pub(super) fn storm_end(&self) -> Option<Instant> {
        self.storm
            .as_ref()
            .filter(|s| !s.behind)
            .map(|s| s.caught_up + STORM_QUIET)
    }

    /// Bookkeeping for a connection leaving the request phase (it became a stream, it is
    /// lingering after its last answer, or it is closing).
    pub(super) fn left_request_phase(&mut self) {
        self.requesting_now = self.requesting_now.saturating_sub(1);
    }

    /// At the end of a turn: drops the entries of connections that left the request phase
    /// once they outnumber the live ones, and with them the storage a storm grew: after a
    /// burst has become streams, the list is empty and holds no memory.
    pub(super) fn compact_requesting(&mut self) {
        if self.requesting.len() <= 2 * self.requesting_now + 64 {
            return;
        }
        let requesting = std::mem::take(&mut self.requesting);
        self.requesting = requesting
            .into_iter()
            .filter(|&(key, serial, _)| self.is_requesting(key as usize, serial))
            .collect();
    }

    /// Counts a shed stream and picks its `retry:`: long and jittered at capacity, the plain
    /// one while draining (whatever protocol carries the stream).
    pub(super) fn shed_retry(&mut self, refusal: Refusal) -> u64 {
        self.counters.add(Stat::Shed, 1);
        if refusal == Refusal::TopicsFull {
            self.counters.add(Stat::TopicBudgetShed, 1);
        }
        let factor = match refusal {
            Refusal::Draining => 1,
            Refusal::NodeFull | Refusal::AddressFull | Refusal::TopicsFull => SHED_RETRY_FACTOR,
        };
        self.jitter(self.config.retry_ms * factor)
    }

    /// Answers a stream request beyond capacity: its stream `head` (unless it was sent
    /// already), `: shed`, a long jittered `retry:`, then close.
    pub(super) fn shed(&mut self, key: usize, head: Option<Bytes>, refusal: Refusal) {
        let retry = self.shed_retry(refusal);
        if let Some(head) = head {
            self.queue(key, head);
        }
        self.queue(key, sse::encode_shed(retry));
        self.clients[key].close_after_flush = true;
        debug!(shard = self.id, key, ?refusal, "stream shed");
    }

    /// A `retry:` around `base` for one stream: uniform in [base/2, base*3/2), so that the
    /// clients of a restarted node come back spread over a whole period.
    pub(super) fn jitter(&mut self, base: u64) -> u64 {
        // xorshift64: cheap, and quality is irrelevant here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        base / 2 + self.rng % base.max(1)
    }
}

/// Whether an accept error means the process or system is out of file descriptors.
pub(super) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
