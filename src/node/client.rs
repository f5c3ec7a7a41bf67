//! One connection: what phase it is in, what it has queued, and which readiness it holds.
//!
//! Each socket is registered once for READABLE | WRITABLE and never re-registered. mio is
//! edge-triggered, so readiness is remembered here (`readable`, `writable`) and cleared only
//! when a call returns `WouldBlock`; a client whose output is queued after its writable edge
//! was spent would otherwise stall for good (the classic stall sozu's docs describe).
//!
//! A streaming client owns no read buffer: its request buffer is dropped with the `Request`
//! phase, and later reads into the shard's scratch space only detect EOF or a reset.
//!
//! A connection is not a stream. Once it streams, it *carries* streams, which live in a slab
//! of their own beside the connections ([`crate::delivery::stream::Stream`], each naming its
//! connection), in the protocol it speaks ([`Protocol`]): HTTP/1.1 carries one stream, the
//! body of the response to the request that opened it. The fan-out, the topic index and the
//! timers address streams; the connection owns the socket, the TLS session and the one
//! outbox its streams share.

use std::io::{self, Read};
use std::net::Shutdown;
use std::time::Instant;

use mio::net::TcpStream;

use crate::auth::access::StreamGrant;
use crate::delivery::data::DataHeaders;
use crate::delivery::outbox::{Flush, Outbox, Written};
use crate::delivery::stream::{H2Way, Lane};
use crate::node::h2::H2;
use crate::node::tls::{Scratch, Session, TlsRead};
use crate::wire::http::RequestParser;

/// A connection in the shard's slab.
#[derive(Debug)]
pub struct Client {
    /// The socket, non-blocking.
    pub socket: TcpStream,
    /// Bytes waiting for the socket.
    pub outbox: Outbox,
    /// What the connection is doing.
    pub phase: Phase,
    /// The last read stopped before `WouldBlock`: input may be waiting.
    pub readable: bool,
    /// The last write did not hit `WouldBlock`: output can go now.
    pub writable: bool,
    /// Listed in the shard's pending-flush list.
    pub pending: bool,
    /// Something was queued for the streams it carries since the last keep-alive check: a
    /// comment would be redundant (for HTTP/1.1's one stream this is the stream's own state;
    /// it sits here, in the flags' padding, so that a stream costs no byte for it).
    pub active: bool,
    /// Listed in the shard's list of outboxes holding a queue behind their front frame,
    /// which are asked periodically to give it back once unused.
    pub queue_listed: bool,
    /// Listed for removal at the end of the turn; ignore further events.
    pub closing: bool,
    /// Once the outbox is empty, half-close and wait for the peer to leave.
    pub close_after_flush: bool,
    /// Detached for a hand-over: out of epoll, and nothing is queued, written or timed out
    /// until the hand-over is called off (or the successor has it and it is forgotten).
    pub handed: bool,
    /// The shard's accept count when this connection came: a slab key is reused, this is
    /// not, so an answer or list entry for a gone connection is recognised.
    pub serial: u32,
    /// The TLS session, on a `--tls-cert` listener: every byte in and out goes through it.
    pub tls: Option<Box<Session>>,
}

/// The phases of a connection.
#[derive(Debug)]
pub enum Phase {
    /// Reading requests (a new connection, or a keep-alive publisher).
    Request(Box<RequestState>),
    /// Carrying event streams, in the protocol it speaks.
    Streaming(Protocol),
    /// The last response is written and our side half-closed; waiting for the peer's EOF
    /// so that closing cannot turn unread input into a reset that destroys the response.
    Linger {
        /// When to close regardless (to a tenth of a second: 4 bytes, so that the phase
        /// stays 16 bytes with HTTP/2's boxed arm beside HTTP/1.1's stream key).
        deadline: Coarse,
    },
}

/// An instant to a tenth of a second after the process's first use of one, in 4 bytes (13
/// years of uptime). Rounded up: a deadline never comes early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coarse(u32);

/// The resolution of [`Coarse`].
const COARSE: std::time::Duration = std::time::Duration::from_millis(100);

fn coarse_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Coarse {
    /// `at`, rounded up to the next tenth of a second.
    pub fn at(at: Instant) -> Coarse {
        let since = at.saturating_duration_since(coarse_epoch());
        let ticks = since.as_nanos().div_ceil(COARSE.as_nanos());
        Coarse(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// As an instant.
    pub fn instant(self) -> Instant {
        coarse_epoch() + COARSE * self.0
    }
}

/// What a streaming connection speaks: which streams it carries, and how their frames reach
/// its outbox. An enum, not a trait object: HTTP/2 is an arm (many streams, a frame layer
/// between them and the outbox), never a second fan-out.
#[derive(Debug)]
pub enum Protocol {
    /// HTTP/1.1: one stream, the body of the response to the request that opened it. Its
    /// frames go into the outbox as they are, so every byte queued after its head is its own.
    Http1 {
        /// The stream's key in the shard's slab of streams.
        stream: u32,
    },
    /// HTTP/2 (h2c with prior knowledge, or `h2` by ALPN): any number of streams (none while
    /// it only publishes or asks for pages), each framed into DATA within the peer's windows.
    Http2(Box<H2>),
}

impl Protocol {
    /// The slab keys of the streams it carries.
    pub fn streams(&self) -> impl Iterator<Item = usize> + '_ {
        let (one, many) = match self {
            Protocol::Http1 { stream } => (Some(*stream as usize), &[][..]),
            Protocol::Http2(h2) => (None, &h2.streams[..]),
        };
        one.into_iter().chain(many.iter().map(|c| c.key as usize))
    }

    /// The slab key of its `i`-th stream (to walk them while borrowing the connection).
    pub fn stream_at(&self, i: usize) -> Option<usize> {
        match self {
            Protocol::Http1 { stream } => (i == 0).then_some(*stream as usize),
            Protocol::Http2(h2) => h2.streams.get(i).map(|c| c.key as usize),
        }
    }
}

/// A connection that is reading requests.
#[derive(Debug)]
pub struct RequestState {
    /// Where the current request is: it holds the bytes received and not yet consumed.
    pub parser: RequestParser,
    /// The current request must be complete by then. It moves on only when the connection's
    /// output has drained, so a client that never reads cannot keep it alive by sending.
    pub deadline: Instant,
    /// A publish waiting for the broker's answer: no further request is read until it is
    /// answered, so answers leave in request order.
    pub awaiting: Option<Awaiting>,
    /// What the head of the current stream request was allowed ([`crate::auth::access::check_head`]).
    pub grant: Option<StreamGrant>,
    /// A response was queued on this connection: it is a kept-alive one, not a new one that
    /// has yet to send its first request (a drain closes the first kind, waits for the other).
    pub answered: bool,
}

/// A publish sent to the broker, whose answer is owed to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// The topic, for the answer.
    pub topic: String,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// What a read pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// Bytes arrived; more may follow.
    Data,
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed or reset the connection.
    Closed,
}

/// What a write pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// Everything was written.
    Drained(Written),
    /// The socket is full; this much went before it.
    Blocked(Written),
    /// The connection is broken.
    Failed,
}

impl Client {
    /// A freshly accepted connection, the shard's `serial`-th, waiting for its first request
    /// (and, with `tls`, its handshake) until `deadline`.
    pub fn new(
        socket: TcpStream,
        deadline: Instant,
        serial: u32,
        tls: Option<Box<Session>>,
    ) -> Client {
        Client {
            socket,
            outbox: Outbox::default(),
            phase: Phase::Request(Box::new(RequestState {
                parser: RequestParser::default(),
                deadline,
                awaiting: None,
                grant: None,
                answered: false,
            })),
            readable: false,
            // A just-accepted socket has room; a WouldBlock corrects this if not.
            writable: true,
            pending: false,
            active: false,
            queue_listed: false,
            closing: false,
            close_after_flush: false,
            handed: false,
            serial,
            tls,
        }
    }

    /// Reads once into `scratch` and feeds what came to the request parser.
    ///
    /// Called only when the parser needs more (so it holds at most one partial head, and
    /// memory stays bounded); does nothing outside the request phase. Clears `readable` on
    /// `WouldBlock`.
    pub fn read_request_bytes(&mut self, scratch: &mut [u8]) -> ReadStatus {
        let Phase::Request(state) = &mut self.phase else {
            return ReadStatus::WouldBlock;
        };
        if let Some(session) = &mut self.tls {
            let parser = &mut state.parser;
            return match session.read(&mut self.socket, scratch, |plain| parser.feed(plain)) {
                TlsRead::Data => ReadStatus::Data,
                TlsRead::WouldBlock => {
                    self.readable = false;
                    ReadStatus::WouldBlock
                }
                // Not TLS (a plain request to this port), broken TLS, or gone: close.
                TlsRead::Closed | TlsRead::Refused(_) => ReadStatus::Closed,
            };
        }
        loop {
            match self.socket.read(scratch) {
                Ok(0) => return ReadStatus::Closed,
                Ok(n) => {
                    state.parser.feed(scratch.get(..n).unwrap_or_default());
                    return ReadStatus::Data;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return ReadStatus::WouldBlock;
                }
                Err(_) => return ReadStatus::Closed,
            }
        }
    }

    /// Reads and discards input until `WouldBlock`, to learn whether the peer left.
    ///
    /// Streams have nothing to say after their request; anything they send is dropped.
    pub fn discard_input(&mut self, scratch: &mut [u8]) -> ReadStatus {
        if let Some(session) = &mut self.tls {
            // Still read through TLS: alerts, key updates and close_notify arrive this way.
            loop {
                match session.read(&mut self.socket, scratch, |_| {}) {
                    TlsRead::Data => {}
                    TlsRead::WouldBlock => {
                        self.readable = false;
                        return ReadStatus::WouldBlock;
                    }
                    TlsRead::Closed | TlsRead::Refused(_) => return ReadStatus::Closed,
                }
            }
        }
        loop {
            match self.socket.read(scratch) {
                Ok(0) => return ReadStatus::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return ReadStatus::WouldBlock;
                }
                Err(_) => return ReadStatus::Closed,
            }
        }
    }

    /// Writes the outbox until it is empty or the socket would block.
    /// `scratch` is the shard's, for encrypting.
    pub fn flush(&mut self, scratch: &mut Scratch) -> WriteStatus {
        let result = match &mut self.tls {
            Some(session) => session.flush(&mut self.socket, &mut self.outbox, scratch),
            None => self.outbox.write_to(&mut self.socket),
        };
        match result {
            Ok((Flush::Empty, n)) => WriteStatus::Drained(n),
            Ok((Flush::Blocked, n)) => {
                self.writable = false;
                WriteStatus::Blocked(n)
            }
            Err(_) => WriteStatus::Failed,
        }
    }

    /// The way onto this connection for its stream `stream` (a key in the shard's slab of
    /// streams), as its protocol has it; None if it does not carry that stream. `headers`
    /// are the shard's DATA headers of the delivery in course (HTTP/2 only).
    pub fn lane<'a>(&'a mut self, stream: usize, headers: &'a mut DataHeaders) -> Option<Lane<'a>> {
        match &mut self.phase {
            // HTTP/1.1: the stream has the connection to itself.
            Phase::Streaming(Protocol::Http1 { stream: own }) if *own as usize == stream => {
                Some(Lane::alone(&mut self.outbox))
            }
            Phase::Streaming(Protocol::Http2(h2)) => {
                let H2 { conn, streams, .. } = &mut **h2;
                let at = streams
                    .binary_search_by_key(&stream, |c| c.key as usize)
                    .ok()?;
                let carried = streams.get(at)?;
                let way = H2Way {
                    conn,
                    id: carried.id,
                    headers,
                    flags: &carried.flags,
                    siblings: streams.len(),
                };
                Some(Lane::h2(&mut self.outbox, way))
            }
            _ => None,
        }
    }

    /// The serial that tickets for its stream `stream` carry: the connection's on HTTP/1.1,
    /// the stream's own on HTTP/2.
    pub fn serial_of(&self, stream: usize) -> Option<u32> {
        match &self.phase {
            Phase::Streaming(Protocol::Http1 { stream: own }) if *own as usize == stream => {
                Some(self.serial)
            }
            Phase::Streaming(Protocol::Http2(h2)) => h2.by_key(stream).map(|c| c.serial),
            _ => None,
        }
    }

    /// Whether it speaks HTTP/2.
    pub fn phase_is_h2(&self) -> bool {
        matches!(self.phase, Phase::Streaming(Protocol::Http2(_)))
    }

    /// Its HTTP/2 state, when it speaks HTTP/2.
    pub fn h2(&mut self) -> Option<&mut H2> {
        match &mut self.phase {
            Phase::Streaming(Protocol::Http2(h2)) => Some(h2),
            _ => None,
        }
    }

    /// Half-closes our side after the last response and waits for the peer until `deadline`.
    pub fn start_linger(&mut self, deadline: Instant) {
        self.close_notify();
        let _ = self.socket.shutdown(Shutdown::Write);
        self.phase = Phase::Linger {
            deadline: Coarse::at(deadline),
        };
    }

    /// Tells a TLS peer the connection ends (`close_notify`), in one try: a peer that does
    /// not read it still sees the TCP close.
    pub fn close_notify(&mut self) {
        if let Some(session) = &mut self.tls {
            session.close_notify(&mut self.socket);
        }
    }

    /// Whether anything waits to be written: queued frames, or TLS records (a handshake's
    /// answer).
    pub fn wants_flush(&self) -> bool {
        !self.outbox.is_empty() || self.tls.as_ref().is_some_and(|s| s.wants_write())
    }

    /// Whether this is a TLS connection still in its handshake.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|s| s.handshaking())
    }

    /// Whether this is a request-phase connection with no partial request buffered. Over
    /// TLS, one whose handshake began or waits for its turn is not idle: its request cannot
    /// be buffered yet, and its client is answering (or about to be answered), not silent.
    pub fn is_idle_request(&self) -> bool {
        matches!(&self.phase, Phase::Request(state)
            if state.parser.buffered() == 0
                && state.parser.head().is_none()
                && state.awaiting.is_none())
            && !self
                .tls
                .as_ref()
                .is_some_and(|s| s.handshaking() && (s.began() || s.queued()))
    }

    /// The deadline this client must meet now, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Request(state) => Some(state.deadline),
            Phase::Linger { deadline } => Some(deadline.instant()),
            Phase::Streaming(Protocol::Http2(h2)) => h2.deadline,
            Phase::Streaming(Protocol::Http1 { .. }) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::outbox::Outbox;
    use crate::delivery::stream::Stream;
    use std::mem::size_of;

    /// A slot of a `slab::Slab<T>`, laid out as the slab crate declares it (its type is
    /// private): what one connection or stream costs in its slab.
    #[allow(dead_code)] // never built: only measured
    enum SlabEntry<T> {
        Vacant(usize),
        Occupied(T),
    }

    /// Every byte an idle HTTP/1.1 stream costs in its shard's tables, accounted for
    /// (BENCHMARKS.md, "Where an idle stream's bytes go"): its connection's slab entry, its
    /// stream's slab entry, and its 4-byte slots in its topic's subscriber list and in the
    /// pending list. Growing any of these is a decision, not an accident.
    #[test]
    fn a_stream_and_its_connection_fit_their_budget() {
        // The outbox: one frame inline (32, a `Bytes`), or the pointer to a queue when frames
        // wait behind the front, in the frame's niche (outbox.rs).
        assert_eq!(size_of::<Outbox>(), 32);
        // The phase: a request's box (8), a lingering deadline (4, coarse), or the protocol
        // of the streams it carries (16: HTTP/1.1's one stream key or HTTP/2's box, and the
        // tag, whose spare values tag the phase).
        assert_eq!(size_of::<Protocol>(), 16);
        assert_eq!(size_of::<Phase>(), 16);
        // The connection: socket (4: a descriptor) + serial (4) + eight flags (8) + the TLS session pointer (8, null for plain TCP) + outbox (32) + phase (16) = 72.
        // Debug builds of mio keep a selector id beside the descriptor (12 bytes more).
        let debug_extra = (size_of::<TcpStream>() - 4).next_multiple_of(8);
        assert_eq!(size_of::<SlabEntry<Client>>(), 72 + debug_extra);
        // The stream (see stream.rs): 24; its connection's key gives it a niche, so a slab
        // slot is no larger.
        assert_eq!(size_of::<SlabEntry<Stream>>(), 24);
        // Its slots in its topic's subscriber list and in the pending list (u32 keys).
        let slots = 4 + 4;
        // 104: what an idle stream's tables cost when the connection's entry held the stream
        // (a 96-byte entry and the same two slots).
        assert_eq!(
            size_of::<SlabEntry<Client>>() - debug_extra + size_of::<SlabEntry<Stream>>() + slots,
            104
        );
    }
}
