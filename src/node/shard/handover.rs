//! A shard's part of a hand-over (see `handover/mod.rs` for the whole): in the old process,
//! settling requests, detaching connections, then forgetting them or taking them back; in
//! the new one, installing what was handed over before the first turn.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::Sender;

use super::api::Via;
use super::*;
use crate::delivery::history::Cursor;
use crate::delivery::stream::STARVED;
use crate::delivery::stream::{Gap, Loss};
use crate::node::h2::H2;
use crate::node::handover::wire::{H2Conn, H2Stream, Kind, Record, StreamState};
use crate::node::handover::{Outgoing, Step, SETTLE};
use crate::wire::event_id::EventId;
use crate::wire::h2::conn::Connection;

/// Where this shard is in a hand-over.
#[derive(Debug)]
pub(crate) enum Handing {
    /// Not accepting; requests in progress may finish until `until`.
    Settling {
        reply: Sender<usize>,
        until: Instant,
    },
    /// No request in progress; waiting for the hub to freeze.
    Settled,
    /// These connections are out of epoll and described to the successor.
    Detached(Vec<usize>),
    /// The successor has them; this shard drains the rest and stops.
    Committed,
}

/// Connections handed to this shard by the node's previous process, installed at its start.
#[derive(Debug, Default)]
pub(crate) struct Adopting {
    /// The cluster epoch their ids belong to.
    pub epoch: Option<String>,
    /// Each connection's state and socket.
    pub connections: Vec<(Record, OwnedFd)>,
}

impl Handing {
    /// Whether requests are left unread: once settled, a connection between requests is
    /// the successor's, and so is its next request (it stays in the socket meanwhile).
    pub(super) fn holds_requests(&self) -> bool {
        matches!(self, Handing::Settled | Handing::Detached(_))
    }
}

impl Shard {
    /// A hand-over step from the inbox.
    pub(super) fn on_handover(&mut self, step: Step) {
        match step {
            Step::Settle(reply) => {
                if let Some(listener) = &mut self.listener {
                    let _ = self.poll.registry().deregister(listener);
                }
                self.handing = Some(Handing::Settling {
                    reply,
                    until: self.now + SETTLE,
                });
                self.check_settled();
            }
            Step::Detach(reply) => {
                let outgoing = self.detach();
                let _ = reply.send(outgoing);
            }
            Step::Commit => self.forget_handed(),
            Step::Abort => self.take_back(),
        }
    }

    /// While settling: says so once no request is in progress; past [`SETTLE`], closes those
    /// still unfinished.
    pub(super) fn check_settled(&mut self) {
        let Some(Handing::Settling { until, .. }) = &self.handing else {
            return;
        };
        let until = *until;
        let busy: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| in_progress(c))
            .map(|(key, _)| key)
            .collect();
        if !busy.is_empty() && self.now < until {
            return;
        }
        if !busy.is_empty() {
            warn!(
                shard = self.id,
                closed = busy.len(),
                "hand-over: closing requests not finished within {SETTLE:?}"
            );
            for key in busy {
                self.close(key);
            }
        }
        if let Some(Handing::Settling { reply, .. }) = self.handing.replace(Handing::Settled) {
            let _ = reply.send(self.id);
        }
    }

    /// Detaches every connection that can go on in another process: plain streams, h2c
    /// connections at rest and connections between requests. Each is taken out of epoll and
    /// flushed once; what it still has queued travels with it. TLS connections (their keys
    /// cannot travel), h2c ones that are not at rest ([`describe_h2`]) and connections on
    /// their way out stay here (and drain).
    fn detach(&mut self) -> Vec<Outgoing> {
        let mut outgoing = Vec::new();
        let mut detached = Vec::new();
        let mut broken = Vec::new();
        // The hub is frozen at its last id, and every event up to it was in the inbox ahead
        // of this step: a live stream has been offered all of them.
        let (last_id, _) = self.hub.last_id();
        // What the frame layers queued goes into the outboxes first: the outbox travels,
        // the frame layer's own queue does not.
        let h2c: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase_is_h2() && c.tls.is_none() && !c.closing)
            .map(|(key, _)| key)
            .collect();
        for key in h2c {
            self.pump_h2(key);
        }
        let limits = Self::h2_limits(&self.config);
        let mut kept_h2 = 0usize;
        for (key, client) in self.clients.iter_mut() {
            if client.closing || client.close_after_flush || client.tls.is_some() {
                continue;
            }
            let kind = match &client.phase {
                Phase::Request(state) if client.is_idle_request() => Kind::Requests {
                    answered: state.answered,
                },
                // HTTP/1.1: one stream, the connection its own.
                Phase::Streaming(Protocol::Http1 { stream }) => {
                    match self.streams.get(*stream as usize) {
                        Some(s) => Kind::Stream(describe(s, &self.topics, last_id, self.now)),
                        None => continue,
                    }
                }
                Phase::Streaming(Protocol::Http2(h2)) => {
                    match describe_h2(h2, &self.streams, &self.topics, last_id, self.now, &limits) {
                        Some(h2) => Kind::H2(h2),
                        None => {
                            kept_h2 += 1;
                            continue;
                        }
                    }
                }
                _ => continue,
            };
            if self.poll.registry().deregister(&mut client.socket).is_err() {
                continue;
            }
            // One try: a full socket keeps the rest for the successor to write.
            if client.writable && client.wants_flush() {
                match client.flush(&mut self.tls_scratch) {
                    WriteStatus::Failed => {
                        broken.push(key);
                        continue;
                    }
                    WriteStatus::Drained(w) | WriteStatus::Blocked(w) => {
                        self.counters.add(Stat::BytesWritten, w.bytes as u64);
                        self.counters.add(Stat::FramesWritten, w.frames as u64);
                        self.counters.sub(Stat::QueuedBytes, w.bytes as u64);
                    }
                }
            }
            if let Phase::Streaming(protocol) = &client.phase {
                for s in protocol.streams() {
                    if let Some(replay) = self.streams.get_mut(s).and_then(Stream::replay_mut) {
                        // A step asked for is dropped when it comes; asked again if called off.
                        replay.asked = false;
                    }
                }
            }
            client.handed = true;
            detached.push(key);
            outgoing.push(Outgoing {
                fd: client.socket.as_raw_fd(),
                record: Record {
                    shard: self.id as u16,
                    tail: client.outbox.to_bytes(),
                    kind,
                },
            });
        }
        for key in broken {
            self.close(key);
        }
        let replaying = outgoing
            .iter()
            .filter(|o| matches!(&o.record.kind, Kind::Stream(s) if s.replaying))
            .count();
        let tail_bytes: usize = outgoing.iter().map(|o| o.record.tail.len()).sum();
        info!(
            shard = self.id,
            connections = outgoing.len(),
            replaying,
            tail_bytes,
            h2c_draining = kept_h2,
            "hand-over: detached"
        );
        self.handing = Some(Handing::Detached(detached));
        outgoing
    }

    /// The successor has the detached connections: close our copies (the peer sees nothing,
    /// the other process still holds each socket) and stop serving; what is left drains.
    fn forget_handed(&mut self) {
        let Some(Handing::Detached(keys)) = self.handing.replace(Handing::Committed) else {
            return;
        };
        for key in keys {
            let client = self.clients.remove(key);
            self.counters
                .sub(Stat::QueuedBytes, client.outbox.queued_bytes() as u64);
            self.counters.sub(Stat::Connections, 1);
            match &client.phase {
                Phase::Streaming(protocol) => {
                    for s in protocol.streams() {
                        // HTTP/2 streams' tickets name their own serial, not the connection's.
                        let serial = client.serial_of(s).unwrap_or(client.serial);
                        if let Some(stream) = self.streams.try_remove(s) {
                            self.counters.add(Stat::StreamsHandedOver, 1);
                            self.stream_ended(s, serial, stream);
                        }
                    }
                }
                _ => self.left_request_phase(),
            }
            // Dropping the socket closes this process's descriptor only.
        }
        self.listener = None;
    }

    /// The hand-over is off: every detached connection is registered again and goes on as
    /// if nothing happened (what came meanwhile is read now; a replay asks again).
    fn take_back(&mut self) {
        let keys = match self.handing.take() {
            Some(Handing::Detached(keys)) => keys,
            _ => Vec::new(),
        };
        if let Some(listener) = &mut self.listener {
            if let Err(e) = self
                .poll
                .registry()
                .register(listener, LISTENER, Interest::READABLE)
            {
                warn!(shard = self.id, error = %e, "cannot listen again after a failed hand-over");
            }
        }
        let header_timeout = self.config.header_timeout();
        for key in keys {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.handed = false;
            if let Err(e) = self.poll.registry().register(
                &mut client.socket,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(shard = self.id, key, error = %e, "cannot take a connection back");
                self.close(key);
                continue;
            }
            client.readable = true;
            client.writable = true;
            let carried = match &mut client.phase {
                Phase::Request(state) => {
                    state.deadline = self.now + header_timeout;
                    let deadline = state.deadline;
                    self.set_deadline(key, deadline);
                    None
                }
                Phase::Streaming(protocol) => Some(protocol.streams().collect::<Vec<_>>()),
                Phase::Linger { .. } => None,
            };
            for &s in carried.iter().flatten() {
                let Some(serial) = self.clients[key].serial_of(s) else {
                    continue;
                };
                if let Some(exp) = self.streams.get(s).and_then(|s| s.expires) {
                    self.schedule_expiry(s, serial, u64::from(exp.get()));
                }
            }
            if self.clients[key].wants_flush() {
                self.mark_pending(key);
            }
            self.on_readable(key);
            for &s in carried.iter().flatten() {
                self.continue_replay(s);
            }
        }
        // Requests left unread meanwhile on connections that stayed (TLS) are read now: their
        // edge is spent.
        let unread: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.readable && !c.closing && matches!(c.phase, Phase::Request(_)))
            .map(|(key, _)| key)
            .collect();
        for key in unread {
            self.serve_requests(key);
        }
        // Accept what waited in the backlog meanwhile (its edge may be spent).
        self.listener_ready = true;
        self.accept_some();
    }

    /// Keeps a connection handed over by the previous process for [`Shard::adopt_all`].
    pub(crate) fn adopt_later(&mut self, epoch: Option<String>, record: Record, fd: OwnedFd) {
        self.adopting.epoch = epoch;
        self.adopting.connections.push((record, fd));
    }

    /// Installs what the node's previous process handed to this shard (before its first
    /// turn): each connection goes on where it was; a stream's queued bytes go out first,
    /// then everything after the id it had reached.
    pub(super) fn adopt_all(&mut self) {
        let Adopting { epoch, connections } = std::mem::take(&mut self.adopting);
        let (mut streams, mut requests) = (0usize, 0usize);
        for (record, fd) in connections {
            let carried = record.streams();
            match self.adopt(record, fd, epoch.as_deref()) {
                Some(true) => streams += carried,
                Some(false) => requests += 1,
                None => {}
            }
        }
        if streams + requests > 0 {
            info!(
                shard = self.id,
                streams, requests, "took over connections from the previous process"
            );
        }
    }

    /// Installs one connection; returns whether it is a stream (None: it could not be).
    fn adopt(&mut self, record: Record, fd: OwnedFd, epoch: Option<&str>) -> Option<bool> {
        let std = std::net::TcpStream::from(fd);
        if std.set_nonblocking(true).is_err() {
            return None;
        }
        let mut socket = TcpStream::from_std(std);
        self.room_for_a_client();
        let key = self.clients.vacant_key();
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(shard = self.id, error = %e, "cannot register a handed-over connection");
            return None;
        }
        let peer = socket.peer_addr().ok();
        let deadline = self.now + self.config.header_timeout();
        self.serial = self.serial.wrapping_add(1);
        let mut client = Client::new(socket, deadline, self.serial, None);
        client.readable = true; // whatever arrived during the hand-over is read now
        self.clients.insert(client);
        self.counters.add(Stat::Connections, 1);
        if !record.tail.is_empty() {
            self.queue(key, record.tail);
        }
        let state = match record.kind {
            Kind::Requests { answered } => {
                if let Phase::Request(state) = &mut self.clients[key].phase {
                    state.answered = answered;
                }
                self.set_deadline(key, deadline);
                self.entered_request_phase(key);
                return Some(false);
            }
            Kind::Stream(state) => state,
            Kind::H2(h2) => {
                self.adopt_h2(key, h2, peer, epoch);
                return Some(true);
            }
        };
        let serial = self.clients[key].serial;
        self.adopt_stream(key, Via::Http1, serial, peer, state, epoch);
        Some(true)
    }

    /// Installs the HTTP/2 state of adopted connection `key` and every stream it carries;
    /// it goes on at the peer's next frame. A state this process cannot take closes the
    /// connection (its streams reconnect).
    fn adopt_h2(
        &mut self,
        key: usize,
        h2: H2Conn,
        peer: Option<std::net::SocketAddr>,
        epoch: Option<&str>,
    ) {
        let limits = Self::h2_limits(&self.config);
        let conn = match Connection::import(h2.conn, &limits) {
            Ok(conn) => conn,
            Err(why) => {
                warn!(
                    shard = self.id,
                    why, "cannot take a handed-over h2c connection"
                );
                self.close(key);
                return;
            }
        };
        let mut state = H2::new(&limits, self.now);
        state.conn = conn;
        state.deadline = None;
        self.clients[key].phase = Phase::Streaming(Protocol::Http2(Box::new(state)));
        self.counters.add(Stat::H2ConnectionsAdopted, 1);
        if self.config.send_buffer > 0 {
            let socket = socket2::SockRef::from(&self.clients[key].socket);
            let _ = socket.set_send_buffer_size(self.config.send_buffer);
        }
        for H2Stream { id, starved, state } in h2.streams {
            let serial = self.next_serial();
            let Some(stream) = self.adopt_stream(key, Via::Http2(id), serial, peer, state, epoch)
            else {
                continue;
            };
            if starved {
                if let Some(carried) = self.clients[key].h2().and_then(|h2| {
                    let i = h2
                        .streams
                        .binary_search_by_key(&stream, |c| c.key as usize)
                        .ok()?;
                    h2.streams.get(i)
                }) {
                    carried.flags.set(carried.flags.get() | STARVED);
                }
            }
        }
        self.pump_h2(key);
    }

    /// Installs one adopted stream on connection `key` (`via` its protocol, its tickets
    /// naming `serial`); returns its key in the slab of streams, None if it was shed.
    fn adopt_stream(
        &mut self,
        key: usize,
        via: Via,
        serial: u32,
        peer: Option<std::net::SocketAddr>,
        state: StreamState,
        epoch: Option<&str>,
    ) -> Option<usize> {
        // A stream counts against this process's quota as any other; one over it is shed
        // (after its queued bytes) and comes back to a node with room.
        let admitted = match peer.map(|p| self.node.quota.admit(p.ip())) {
            Some(Ok(admitted)) => admitted,
            refused => {
                let refusal = match refused {
                    Some(Err(refusal)) => refusal,
                    _ => Refusal::NodeFull,
                };
                self.shed_adopted(key, via, refusal);
                return None;
            }
        };
        let cursor = Cursor::resume(state.after, state.announced);
        let mut topics = state.topics;
        // As a request's topics are: each once (a membership per topic and stream).
        let mut seen = std::collections::HashSet::new();
        topics.retain(|t| seen.insert(t.clone()));
        let subscription = match self.hub.resume(&topics, cursor, epoch) {
            Ok(subscription) => subscription,
            Err(crate::delivery::history::TopicsFull) => {
                self.node.quota.release(admitted);
                self.shed_adopted(key, via, Refusal::TopicsFull);
                return None;
            }
        };
        // The stream's key, taken by `stream_begins` below (nothing else is inserted before).
        self.room_for_a_stream();
        let stream_key = self.streams.vacant_key();
        let subs: Vec<_> = subscription
            .names
            .into_iter()
            .map(|name| self.topics.join(name, stream_key))
            .collect();
        let mut stream = Stream::new(Subs::new(subs), subscription.replay);
        if let Some((from, to, dropped)) = state.gap {
            let ago = Duration::from_millis(u64::from(state.losing_ms.unwrap_or(0)));
            stream.set_loss(Loss {
                gap: Some(Gap { from, to, dropped }),
                since: self.now.checked_sub(ago).unwrap_or(self.now),
            });
        }
        stream.expires = state.expires.and_then(NonZeroU32::new);
        let began = self.stream_begins(
            key,
            via,
            serial,
            stream,
            admitted.address,
            subscription.reset,
        );
        debug_assert_eq!(began, stream_key);
        if let Some(exp) = state.expires.and_then(NonZeroU32::new) {
            self.schedule_expiry(stream_key, serial, u64::from(exp.get()));
        }
        self.counters.add(Stat::StreamsAdopted, 1);
        Some(stream_key)
    }

    /// Sheds an adopted stream this process has no room for (after its queued bytes): it
    /// comes back to a node with room. On HTTP/2 the stream alone ends (`: shed`, its
    /// `retry:`, END_STREAM); its head went out long ago.
    fn shed_adopted(&mut self, key: usize, via: Via, refusal: Refusal) {
        if let Via::Http2(id) = via {
            self.counters.add(Stat::Shed, 1);
            if refusal == Refusal::TopicsFull {
                self.counters.add(Stat::TopicBudgetShed, 1);
            }
            let retry = self.jitter(self.config.retry_ms * SHED_RETRY_FACTOR);
            self.send_h2(key, id, None, sse::encode_shed(retry), true);
            return;
        }
        // Its head went out long ago; it is a stream on its way out, not a request.
        self.clients[key].phase = Phase::Linger {
            deadline: Coarse::at(self.now + LINGER),
        };
        self.set_deadline(key, self.now + LINGER);
        self.shed(key, None, refusal);
    }
}

/// A request-phase connection in the middle of a request: bytes of one buffered, or a
/// publish waiting for its answer. A hand-over waits for these.
fn in_progress(client: &Client) -> bool {
    !client.closing
        && !client.close_after_flush
        && matches!(client.phase, Phase::Request(_))
        && !client.is_idle_request()
}

/// A stream's state, for its successor.
fn describe(stream: &Stream, topics: &Topics, last_id: EventId, now: Instant) -> StreamState {
    let names = stream
        .topics()
        .filter_map(|m| topics.name(m).map(|n| n.to_string()))
        .collect();
    let (after, announced, replaying) = match stream.replay() {
        Some(replay) => (replay.cursor.after(), replay.cursor.announced(), true),
        // Live: it has been offered every event up to the hub's last id.
        None => (last_id, last_id, false),
    };
    let gap = stream
        .loss()
        .and_then(|l| l.gap)
        .map(|g| (g.from, g.to, g.dropped));
    let losing_ms = stream.loss().map(|l| {
        u32::try_from(now.saturating_duration_since(l.since).as_millis()).unwrap_or(u32::MAX)
    });
    StreamState {
        topics: names,
        after,
        announced,
        replaying,
        gap,
        losing_ms,
        expires: stream.expires.map(NonZeroU32::get),
    }
}

/// An h2c connection's state for its successor, if it is at rest: its handshake over, no
/// request owed an answer (a body arriving, a publish waiting, an answer waiting for window),
/// nothing half read, and every stream it carries in the slab and open in its frame layer. Otherwise None: it stays and
/// drains (GOAWAY, `retry:`), as before version 3 of the hand-over.
fn describe_h2(
    h2: &H2,
    streams: &Slab<Stream>,
    topics: &Topics,
    last_id: EventId,
    now: Instant,
    limits: &crate::wire::h2::conn::Limits,
) -> Option<H2Conn> {
    if h2.deadline.is_some() || h2.owes_answers() {
        return None;
    }
    let conn = h2.conn.export(limits).ok()?;
    let carried = h2
        .streams
        .iter()
        .map(|c| {
            let stream = streams.get(c.key as usize)?;
            // The successor refuses a stream its frame layer does not hold open for sending
            // (and with it the whole hand-over): such a connection drains here instead.
            h2.conn.send_window(c.id)?;
            Some(H2Stream {
                id: c.id,
                starved: c.flags.get() & STARVED != 0,
                state: describe(stream, topics, last_id, now),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(H2Conn {
        conn,
        streams: carried,
    })
}
