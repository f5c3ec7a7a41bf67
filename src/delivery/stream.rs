//! One event stream's delivery state: which topics it carries, where its replay stands, and
//! what it has lost. Pure: the shard hands it frames and its outbox; no sockets here.
//!
//! The per-event path is [`Stream::offer`]: skip what a replay covers, else try the bounded
//! queue. A stream that cannot take a frame starts a [`Loss`] record (one allocation when
//! losing starts, none per dropped frame); the first frame that fits afterwards goes out
//! behind an `event: gap` notice naming what was lost, so the client can reconnect with its
//! `Last-Event-ID` and have it replayed. The record lasts until its queue is empty again:
//! a stream that lost frames and has not caught up within the slow-client timeout is told
//! to go, even if a frame fits now and then (a reader trickling a few bytes would otherwise
//! hold its queue full forever).
//!
//! # Two bounds
//!
//! A stream's frames meet two bounds ([`Bounds`]): what waits for the stream itself, and what
//! waits on the connection that carries it, which its sibling streams share. The stream sees
//! its connection through a [`Lane`], which the connection builds for it (its protocol knows
//! where a stream's bytes wait): on HTTP/1.1 a stream has its connection to itself, so what
//! the outbox holds is all its own and the two bounds are one, as they always were. On a
//! connection that carries several streams, each counts its own bytes, so one that stopped
//! reading (whose window is closed) drops its own frames at its own bound, and its siblings
//! go on until the connection's is reached.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::delivery::history::Cursor;
use crate::delivery::outbox::Outbox;
use crate::delivery::topics::{Membership, Subs};
use crate::wire::event_id::EventId;
use crate::wire::sse;

/// One event stream: its subscription, replay position and loss record, and the connection
/// that carries it. It does not know which protocol that connection speaks.
#[derive(Debug)]
pub struct Stream {
    /// Its first topic: the shard's topic index and this stream's slot in its subscriber
    /// list, so that leaving is O(1) ([`NO_TOPIC`] for a stream on none).
    first: Membership,
    /// What a stream on one topic that is live and keeps up (nearly all of them) does not
    /// have: further topics, a replay, losses. One pointer for all of them.
    more: Option<Box<More>>,
    /// When its token expires (unix seconds), with `--subscribe-jwt`. Four bytes beside
    /// `conn`: a stream without a token pays nothing more for it.
    pub expires: Option<NonZeroU32>,
    /// The connection that carries it (set by the shard as it opens it).
    conn: ConnKey,
}

/// The membership of a stream on no topic (one handed over with none): no topic has this
/// index, so leaving it changes nothing.
const NO_TOPIC: Membership = (u32::MAX, u32::MAX);

/// A stream's further topics and its replay and losses. A stream on several topics keeps
/// this box for good; a stream on one has it only while it replays or loses.
#[derive(Debug, Default)]
struct More {
    /// Its topics beyond the first (a boxed slice: no allocation when there are none).
    topics: Box<[Membership]>,
    /// Its replay and its losses, when it has either: one box for both.
    behind: Option<Box<Behind>>,
}

/// The slab key of a stream's connection, kept plus one: a `NonZeroU32` gives the stream a
/// niche, so a vacant slot in the shard's slab of streams needs no tag of its own (8 bytes a
/// stream). Slab keys stay far below `u32::MAX`: the stream quota bounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnKey(NonZeroU32);

impl ConnKey {
    fn new(key: usize) -> ConnKey {
        let stored = u32::try_from(key).ok().and_then(|k| k.checked_add(1));
        ConnKey(stored.and_then(NonZeroU32::new).unwrap_or(NonZeroU32::MAX))
    }

    fn get(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// What a stream that is not simply live and keeping up carries.
#[derive(Debug, Default)]
struct Behind {
    /// Set while the stream replays from the history: live frames are skipped (the replay
    /// reaches them in the history, in order) until its last step arrives in the inbox.
    replay: Option<Replay>,
    /// Frames lost since the queue was last empty.
    loss: Option<Loss>,
}

/// Where a replaying stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The position after the last step received.
    pub cursor: Cursor,
    /// A step was asked for and has not arrived yet.
    pub asked: bool,
}

/// A stream's losses since its queue was last empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// Frames dropped and not yet announced.
    pub gap: Option<Gap>,
    /// When the first frame was dropped, or the queue last emptied while a gap was pending.
    pub since: Instant,
}

/// A run of frames dropped for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first id dropped.
    pub from: EventId,
    /// The last id dropped.
    pub to: EventId,
    /// How many frames were dropped.
    pub dropped: u64,
}

/// The bounds a stream's frames meet, in bytes queued and not yet written (a frame always
/// fits an empty queue, so each bound is its figure or one frame, whichever is larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// What one stream may have waiting.
    pub stream: usize,
    /// What its connection may have waiting in its outbox, all its streams together.
    pub connection: usize,
}

impl Bounds {
    /// The same bound for a stream and for its connection (`--client-buffer`).
    pub fn both(limit: usize) -> Bounds {
        Bounds {
            stream: limit,
            connection: limit,
        }
    }
}

/// One stream's way onto its connection: the connection's outbox, and how much of what waits
/// there is this stream's. Built by the connection for each offer ([`crate::node::client::Client::lane`]).
#[derive(Debug)]
pub struct Lane<'a> {
    /// The connection's queue toward its socket.
    outbox: &'a mut Outbox,
    /// This stream's bytes waiting, counted apart from its siblings' (its connection's
    /// protocol lowers the count as they are written); None when the stream has the
    /// connection to itself, so all the outbox holds is its own.
    own: Option<&'a mut usize>,
    /// On HTTP/2: the frame layer its bytes go through (windows, DATA frames).
    h2: Option<H2Way<'a>>,
    /// Bytes this lane put into the outbox (frames and, on HTTP/2, their headers).
    pushed: usize,
}

/// What an HTTP/2 stream's lane writes through: its connection's flow control, its id, the
/// shard's DATA headers of the delivery in course, and its flags.
#[derive(Debug)]
pub struct H2Way<'a> {
    /// The connection's protocol state (the peer's windows).
    pub conn: &'a mut crate::wire::h2::conn::Connection,
    /// The stream's id on the connection.
    pub id: u32,
    /// The shard's DATA headers for the delivery in course.
    pub headers: &'a mut crate::delivery::data::DataHeaders,
    /// Its flags: a frame did not fit its window (until the peer opens it again), and
    /// something was queued since the last keep-alive check.
    pub flags: &'a std::cell::Cell<u8>,
    /// Streams its connection carries: the connection's bound is the per-stream bound times
    /// this (what as many HTTP/1.1 connections would hold), so one event reaches them all.
    pub siblings: usize,
}

/// [`H2Way::flags`]: a frame was dropped because the peer's window was closed; the stream is
/// not caught up until the window opens again.
pub const STARVED: u8 = 1;
/// [`H2Way::flags`]: something was queued since the last keep-alive check.
pub const ACTIVE: u8 = 2;

impl<'a> Lane<'a> {
    /// A stream alone on its connection (HTTP/1.1): every byte in `outbox` is its own.
    pub fn alone(outbox: &'a mut Outbox) -> Lane<'a> {
        Lane {
            outbox,
            own: None,
            h2: None,
            pushed: 0,
        }
    }

    /// A stream that shares `outbox` with others: `own` counts its bytes waiting.
    pub fn shared(outbox: &'a mut Outbox, own: &'a mut usize) -> Lane<'a> {
        Lane {
            outbox,
            own: Some(own),
            h2: None,
            pushed: 0,
        }
    }

    /// An HTTP/2 stream: its frames become DATA frames within the peer's windows. Its own
    /// bound is its window; what its connection's outbox holds is shared with its siblings.
    pub fn h2(outbox: &'a mut Outbox, way: H2Way<'a>) -> Lane<'a> {
        Lane {
            outbox,
            own: None,
            h2: Some(way),
            pushed: 0,
        }
    }

    /// This stream's bytes waiting (on HTTP/2, its connection's, and one more while its
    /// window is closed on a frame it dropped: it has not caught up).
    pub fn queued(&self) -> usize {
        match (&self.own, &self.h2) {
            (Some(own), _) => **own,
            (None, Some(way)) => {
                let starved = way.flags.get() & STARVED != 0;
                self.outbox.queued_bytes() + usize::from(starved)
            }
            (None, None) => self.outbox.queued_bytes(),
        }
    }

    /// Bytes this lane has put into the outbox so far.
    pub fn pushed(&self) -> usize {
        self.pushed
    }

    /// Whether `len` more bytes fit under both bounds (always into an empty queue).
    pub fn fits(&self, len: usize, bounds: Bounds) -> bool {
        match (&self.own, &self.h2) {
            // Alone, its bytes are the outbox's: the two bounds are one, the smaller (the
            // per-event path of HTTP/1.1: one look at the queue, as before there were two).
            (None, None) => self.outbox.fits(len, bounds.stream.min(bounds.connection)),
            (None, Some(way)) => {
                let window = way.conn.send_window(way.id).unwrap_or(0) as usize;
                if len > window {
                    way.flags.set(way.flags.get() | STARVED);
                    return false;
                }
                let bound = bounds.connection.saturating_mul(way.siblings.max(1));
                self.outbox
                    .fits(crate::delivery::data::wire_len(len), bound)
            }
            (Some(own), _) => {
                (**own == 0 || own.saturating_add(len) <= bounds.stream)
                    && self.outbox.fits(len, bounds.connection)
            }
        }
    }

    /// How many more bytes fit under both bounds (none once either is reached).
    pub fn room(&self, bounds: Bounds) -> usize {
        let stream = bounds.stream.saturating_sub(self.queued());
        match &self.h2 {
            Some(way) => {
                let bound = bounds.connection.saturating_mul(way.siblings.max(1));
                let room = stream.min(bound.saturating_sub(self.outbox.queued_bytes()));
                room.min(way.conn.send_window(way.id).unwrap_or(0) as usize)
            }
            None => stream.min(bounds.connection.saturating_sub(self.outbox.queued_bytes())),
        }
    }

    /// Queues `frame`, whatever its size (a stream head, a replayed frame, a notice). On
    /// HTTP/2 it must still fit the peer's window, which a client that stopped reading keeps
    /// closed: then it is dropped (and the stream marked as not caught up).
    pub fn push(&mut self, frame: Bytes) {
        if let Some(way) = &mut self.h2 {
            if way.conn.debit(way.id, frame.len()).is_err() {
                way.flags.set(way.flags.get() | STARVED);
                return;
            }
            way.flags.set(way.flags.get() | ACTIVE);
            self.pushed += way.headers.push(self.outbox, way.id, frame);
            return;
        }
        if let Some(own) = &mut self.own {
            **own = own.saturating_add(frame.len());
        }
        self.pushed += frame.len();
        self.outbox.push(frame);
    }

    /// Queues `frame` if it fits under both bounds; returns whether it did.
    pub fn push_bounded(&mut self, frame: Bytes, bounds: Bounds) -> bool {
        let fits = self.fits(frame.len(), bounds);
        if fits {
            self.push(frame);
        }
        fits
    }
}

/// What became of a frame offered to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The stream is replaying: the replay will send it, or already did.
    Skipped,
    /// Queued (with this many bytes, a gap notice included).
    Queued(usize),
    /// Dropped: it did not fit.
    Dropped,
    /// The stream lost frames and has not caught up for longer than allowed.
    TooSlow,
}

impl Stream {
    /// A new stream on the topics of `subs`, replaying from `replay` when given.
    pub fn new(subs: Subs, replay: Option<Cursor>) -> Stream {
        let (first, topics): (Membership, Box<[Membership]>) = match subs {
            Subs::One(one) => (one, Box::default()),
            Subs::Many(many) => match many.split_first() {
                Some((first, rest)) => (*first, rest.into()),
                None => (NO_TOPIC, Box::default()),
            },
        };
        let behind = replay.map(|cursor| {
            Box::new(Behind {
                replay: Some(Replay {
                    cursor,
                    asked: false,
                }),
                loss: None,
            })
        });
        let more =
            (!topics.is_empty() || behind.is_some()).then(|| Box::new(More { topics, behind }));
        Stream {
            first,
            more,
            expires: None,
            conn: ConnKey::new(0),
        }
    }

    /// Every topic it carries, as its membership there.
    pub fn topics(&self) -> impl Iterator<Item = Membership> + '_ {
        let rest = self.more.as_ref().map_or(&[][..], |m| &m.topics[..]);
        std::iter::once(self.first)
            .filter(|&m| m != NO_TOPIC)
            .chain(rest.iter().copied())
    }

    /// Replaces membership `old` with `new` (the topic moved this stream to another slot).
    pub fn relocate(&mut self, old: Membership, new: Membership) {
        if self.first == old {
            self.first = new;
        } else if let Some(m) = self
            .more
            .as_mut()
            .and_then(|more| more.topics.iter_mut().find(|m| **m == old))
        {
            *m = new;
        }
    }

    /// Its replay and losses, if it has either.
    fn behind(&self) -> Option<&Behind> {
        self.more.as_ref().and_then(|m| m.behind.as_deref())
    }

    /// Its replay and losses, to change them, if it has either.
    fn behind_mut(&mut self) -> Option<&mut Behind> {
        self.more.as_mut().and_then(|m| m.behind.as_deref_mut())
    }

    /// Its replay and losses, made if it had neither.
    fn behind_or_new(&mut self) -> &mut Behind {
        self.more
            .get_or_insert_default()
            .behind
            .get_or_insert_default()
    }

    /// The slab key of the connection that carries it.
    pub fn conn(&self) -> usize {
        self.conn.get()
    }

    /// Says which connection carries it: `key` in the shard's slab of connections.
    pub fn carried_by(&mut self, key: usize) {
        self.conn = ConnKey::new(key);
    }

    /// Where its replay stands, while it replays.
    pub fn replay(&self) -> Option<&Replay> {
        self.behind().and_then(|b| b.replay.as_ref())
    }

    /// Where its replay stands, to move it on.
    pub fn replay_mut(&mut self) -> Option<&mut Replay> {
        self.behind_mut().and_then(|b| b.replay.as_mut())
    }

    /// The replay is over: the stream is live from here.
    pub fn end_replay(&mut self) {
        if let Some(b) = self.behind_mut() {
            b.replay = None;
        }
        self.tidy();
    }

    /// What it lost and has not caught up from.
    pub fn loss(&self) -> Option<&Loss> {
        self.behind().and_then(|b| b.loss.as_ref())
    }

    /// Takes over a loss record (from the node's previous process).
    pub fn set_loss(&mut self, loss: Loss) {
        self.behind_or_new().loss = Some(loss);
    }

    /// Frees the boxes once they hold nothing.
    fn tidy(&mut self) {
        let Some(more) = &mut self.more else {
            return;
        };
        if more
            .behind
            .as_ref()
            .is_some_and(|b| b.replay.is_none() && b.loss.is_none())
        {
            more.behind = None;
        }
        if more.behind.is_none() && more.topics.is_empty() {
            self.more = None;
        }
    }

    /// Offers event `id`'s frame to this stream, onto its connection through `lane`, within
    /// `bounds`.
    ///
    /// `slow_after` is how long a stream may stay behind after losing frames before it is
    /// [`Offer::TooSlow`]; `epoch` is the cluster's, for a gap notice's ids.
    #[allow(clippy::too_many_arguments)] // the per-event path: plain values, no struct to build
    pub fn offer(
        &mut self,
        lane: &mut Lane<'_>,
        id: EventId,
        epoch: Option<&str>,
        frame: &Bytes,
        bounds: Bounds,
        now: Instant,
        slow_after: Duration,
    ) -> Offer {
        // A stream with a box is replaying or losing (the box goes when both are over).
        let losing = match self.more.as_mut().and_then(|m| m.behind.as_deref_mut()) {
            None => None,
            Some(behind) if behind.replay.is_some() => return Offer::Skipped,
            Some(behind) => behind.loss.as_mut(),
        };
        let Some(loss) = losing else {
            if lane.fits(frame.len(), bounds) {
                lane.push(frame.clone());
                return Offer::Queued(frame.len());
            }
            self.set_loss(Loss {
                gap: Some(Gap {
                    from: id,
                    to: id,
                    dropped: 1,
                }),
                since: now,
            });
            return Offer::Dropped;
        };
        if now.saturating_duration_since(loss.since) >= slow_after {
            return Offer::TooSlow;
        }
        let Some(gap) = &mut loss.gap else {
            if lane.fits(frame.len(), bounds) {
                lane.push(frame.clone());
                return Offer::Queued(frame.len());
            }
            loss.gap = Some(Gap {
                from: id,
                to: id,
                dropped: 1,
            });
            return Offer::Dropped;
        };
        // Measured before it is encoded, so a losing stream allocates nothing per frame.
        let notice_len = sse::gap_len(gap.from, gap.to, gap.dropped, epoch);
        if lane.fits(notice_len.saturating_add(frame.len()), bounds) {
            lane.push(sse::encode_gap(gap.from, gap.to, gap.dropped, epoch));
            lane.push(frame.clone());
            loss.gap = None;
            return Offer::Queued(notice_len + frame.len());
        }
        gap.to = id;
        gap.dropped += 1;
        Offer::Dropped
    }

    /// Records `count` events `from..=to` as lost without offering them (the shard was not
    /// sent them): the next frame that fits goes out behind a `gap` notice.
    pub fn lose(&mut self, from: EventId, to: EventId, count: u64, now: Instant) {
        let loss = self.behind_or_new().loss.get_or_insert(Loss {
            gap: None,
            since: now,
        });
        match &mut loss.gap {
            Some(gap) => {
                gap.from = gap.from.min(from);
                gap.to = gap.to.max(to);
                gap.dropped = gap.dropped.saturating_add(count);
            }
            None => {
                loss.gap = Some(Gap {
                    from,
                    to,
                    dropped: count,
                })
            }
        }
    }

    /// Its queue just emptied (nothing of it waits on its connection): the stream has caught
    /// up. A loss already announced is forgotten; one still pending restarts its clock (the
    /// notice goes with the next frame).
    pub fn on_drained(&mut self, now: Instant) {
        let Some(behind) = self.behind_mut() else {
            return;
        };
        if let Some(loss) = &mut behind.loss {
            if loss.gap.is_none() {
                behind.loss = None;
                self.tidy();
            } else {
                loss.since = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 100;
    const SLOW: Duration = Duration::from_secs(30);

    fn frame(id: u64, size: usize) -> Bytes {
        let mut f = format!("id: {id}\ndata: ").into_bytes();
        f.resize(size - 2, b'x');
        f.extend_from_slice(b"\n\n");
        Bytes::from(f)
    }

    /// Offers event `id`'s frame of `size` bytes at `now`, under the test's limits.
    fn offer(s: &mut Stream, q: &mut Outbox, id: u64, size: usize, now: Instant) -> Offer {
        s.offer(
            &mut Lane::alone(q),
            EventId::local(id),
            None,
            &frame(id, size),
            Bounds::both(LIMIT),
            now,
            SLOW,
        )
    }

    fn drain(outbox: &mut Outbox) -> String {
        let mut out = Vec::new();
        outbox.write_to(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Offers event `id`'s frame of `size` bytes to `s` through `lane`, within `bounds`.
    fn offer_on(
        s: &mut Stream,
        lane: &mut Lane<'_>,
        id: u64,
        size: usize,
        bounds: Bounds,
    ) -> Offer {
        let now = Instant::now();
        s.offer(
            lane,
            EventId::local(id),
            None,
            &frame(id, size),
            bounds,
            now,
            SLOW,
        )
    }

    #[test]
    fn a_stream_alone_on_its_connection_meets_one_bound_the_outbox_s() {
        // HTTP/1.1: the stream's bytes are the outbox's, so its bound and its connection's
        // are one, and a frame fits exactly when it fitted the outbox before streams had
        // bounds of their own.
        for queued in [0, 1, 40, 99, 100, 150] {
            for len in [1, 10, 60, 100, 200] {
                let mut q = Outbox::default();
                if queued > 0 {
                    q.push(frame(0, queued.max(3)));
                }
                let before = q.fits(len, LIMIT);
                let lane = Lane::alone(&mut q);
                assert_eq!(
                    lane.fits(len, Bounds::both(LIMIT)),
                    before,
                    "{queued} + {len}"
                );
                let room = LIMIT.saturating_sub(lane.queued());
                assert_eq!(lane.room(Bounds::both(LIMIT)), room);
            }
        }
    }

    #[test]
    fn a_stuck_stream_drops_at_its_own_bound_and_does_not_hold_back_its_sibling() {
        // Two streams on one connection. A's reader stopped (its window is closed): what it
        // has waits, counted as its own. B's frames leave as they come: the frame layer
        // lowers B's count as they are written.
        let bounds = Bounds {
            stream: 100,
            connection: 1000,
        };
        let mut q = Outbox::default();
        let (mut a_own, mut b_own) = (0usize, 0usize);
        let mut a = Stream::new(Subs::new(Vec::new()), None);
        let mut b = Stream::new(Subs::new(Vec::new()), None);
        let mut got = (Vec::new(), Vec::new());
        for id in 1..=6 {
            got.0.push(offer_on(
                &mut a,
                &mut Lane::shared(&mut q, &mut a_own),
                id,
                40,
                bounds,
            ));
            got.1.push(offer_on(
                &mut b,
                &mut Lane::shared(&mut q, &mut b_own),
                id,
                40,
                bounds,
            ));
            b_own = 0; // B's frame went out
        }
        let queued = Offer::Queued(40);
        assert_eq!(got.0[..2], [queued, queued]);
        assert!(
            got.0[2..].iter().all(|o| *o == Offer::Dropped),
            "{:?}",
            got.0
        );
        assert!(got.1.iter().all(|o| *o == queued), "{:?}", got.1);
        assert_eq!(a_own, 80);
        assert_eq!(
            a.loss()
                .and_then(|l| l.gap)
                .map(|g| (g.from.seq(), g.to.seq())),
            Some((3, 6))
        );
        assert!(b.loss().is_none(), "B lost nothing to A's stall");
        // A's window opens and its bytes leave: it goes on behind its gap notice, which
        // counts against its own bound.
        a_own = 0;
        a.on_drained(Instant::now());
        let next = offer_on(&mut a, &mut Lane::shared(&mut q, &mut a_own), 7, 40, bounds);
        assert!(
            matches!(next, Offer::Queued(n) if n > 40 && n == a_own),
            "{next:?}"
        );
    }

    #[test]
    fn the_connection_bound_holds_all_its_streams_together() {
        let bounds = Bounds {
            stream: 100,
            connection: 150,
        };
        let mut q = Outbox::default();
        let (mut a_own, mut b_own) = (0usize, 0usize);
        let mut a = Stream::new(Subs::new(Vec::new()), None);
        let mut b = Stream::new(Subs::new(Vec::new()), None);
        for id in 1..=2 {
            let got = offer_on(
                &mut a,
                &mut Lane::shared(&mut q, &mut a_own),
                id,
                40,
                bounds,
            );
            assert_eq!(got, Offer::Queued(40));
        }
        let mut lane = Lane::shared(&mut q, &mut b_own);
        assert_eq!(
            lane.room(bounds),
            70,
            "the connection's room, below B's own"
        );
        assert_eq!(
            offer_on(&mut b, &mut lane, 3, 40, bounds),
            Offer::Queued(40)
        );
        // B has 40 of its 100, but the connection holds 120 of 150.
        let mut lane = Lane::shared(&mut q, &mut b_own);
        assert_eq!(offer_on(&mut b, &mut lane, 4, 40, bounds), Offer::Dropped);
        assert_eq!((a_own, b_own, q.queued_bytes()), (80, 40, 120));
        // A frame always fits an empty queue: a stream with nothing waiting is held only by
        // its connection's bound.
        let mut c_own = 0;
        let lane = Lane::shared(&mut q, &mut c_own);
        assert!(lane.fits(30, bounds) && !lane.fits(31, bounds));
    }

    #[test]
    fn a_stream_keeps_its_first_topic_inline_and_the_others_boxed() {
        let one = Stream::new(Subs::new(vec![(1, 2)]), None);
        assert!(one.more.is_none(), "one topic, live: nothing on the heap");
        assert_eq!(one.topics().collect::<Vec<_>>(), [(1, 2)]);
        let mut three = Stream::new(Subs::new(vec![(1, 2), (3, 4), (5, 6)]), None);
        three.relocate((3, 4), (3, 0));
        three.relocate((1, 2), (1, 7));
        three.relocate((9, 9), (9, 0)); // not one of its own: nothing changes
        assert_eq!(three.topics().collect::<Vec<_>>(), [(1, 7), (3, 0), (5, 6)]);
        // Losing and catching up leaves the further topics' box in place.
        three.lose(EventId::local(1), EventId::local(1), 1, Instant::now());
        let mut q = Outbox::default();
        offer(&mut three, &mut q, 2, 20, Instant::now());
        drain(&mut q);
        three.on_drained(Instant::now());
        assert!(three.loss().is_none());
        assert_eq!(three.topics().count(), 3);
        let none = Stream::new(Subs::new(Vec::new()), None);
        assert_eq!(none.topics().count(), 0);
    }

    #[test]
    fn a_token_expiry_costs_a_stream_no_bytes() {
        // first topic (8) + more (8: null on one topic, live and keeping up) + expires (4) +
        // conn (4) = 24: the expiry lives in what would be padding beside `conn`.
        assert_eq!(std::mem::size_of::<Stream>(), 24);
    }

    #[test]
    fn replaying_and_losing_share_one_box_that_goes_when_both_are_over() {
        let cursor = crate::delivery::history::History::new(1, 1 << 20, 1 << 20)
            .start_replay(&[], "0", EventId::ZERO, None, false)
            .cursor;
        let (mut s, mut q, now) = (
            Stream::new(Subs::new(Vec::new()), Some(cursor)),
            Outbox::default(),
            Instant::now(),
        );
        s.lose(EventId::local(1), EventId::local(1), 1, now);
        s.end_replay();
        assert!(s.behind().is_some(), "the loss is still owed");
        assert!(matches!(
            offer(&mut s, &mut q, 2, 20, now),
            Offer::Queued(_)
        ));
        drain(&mut q);
        s.on_drained(now);
        assert!(s.behind().is_none() && s.more.is_none());
    }

    #[test]
    fn drops_become_one_gap_notice_before_the_next_frame_that_fits() {
        let (mut s, mut q, now) = (
            Stream::new(Subs::new(Vec::new()), None),
            Outbox::default(),
            Instant::now(),
        );
        assert_eq!(offer(&mut s, &mut q, 1, 60, now), Offer::Queued(60));
        for id in 2..=4 {
            assert_eq!(offer(&mut s, &mut q, id, 60, now), Offer::Dropped);
        }
        assert_eq!(
            s.loss()
                .as_ref()
                .and_then(|l| l.gap)
                .map(|g| (g.from.seq(), g.to.seq(), g.dropped)),
            Some((2, 4, 3))
        );
        drain(&mut q);
        assert!(matches!(offer(&mut s, &mut q, 5, 20, now), Offer::Queued(n) if n > 20));
        let text = drain(&mut q);
        assert!(
            text.starts_with(
                "event: gap\ndata: {\"from\":\"2\",\"to\":\"4\",\"dropped\":3}\n\nid: 5\n"
            ),
            "{text}"
        );
        assert!(s.loss().is_some_and(|l| l.gap.is_none()));
        s.on_drained(now);
        assert!(s.loss().is_none());
    }

    #[test]
    fn a_gap_notice_that_does_not_fit_with_its_frame_extends_the_gap() {
        let (mut s, mut q, now) = (
            Stream::new(Subs::new(Vec::new()), None),
            Outbox::default(),
            Instant::now(),
        );
        offer(&mut s, &mut q, 1, 90, now);
        offer(&mut s, &mut q, 2, 90, now);
        // 90 queued: a 9-byte frame would fit alone, but not behind a ~50-byte notice.
        assert_eq!(offer(&mut s, &mut q, 3, 9, now), Offer::Dropped);
        assert_eq!(
            s.loss()
                .as_ref()
                .and_then(|l| l.gap)
                .map(|g| (g.from.seq(), g.to.seq())),
            Some((2, 3))
        );
    }

    #[test]
    fn losing_for_the_whole_timeout_is_too_slow() {
        let (mut s, mut q, t0) = (
            Stream::new(Subs::new(Vec::new()), None),
            Outbox::default(),
            Instant::now(),
        );
        offer(&mut s, &mut q, 1, 90, t0);
        assert_eq!(offer(&mut s, &mut q, 2, 90, t0), Offer::Dropped);
        let later = t0 + SLOW - Duration::from_millis(1);
        assert_eq!(offer(&mut s, &mut q, 3, 90, later), Offer::Dropped);
        assert_eq!(offer(&mut s, &mut q, 4, 90, t0 + SLOW), Offer::TooSlow);
    }

    #[test]
    fn catching_up_resets_the_slow_clock() {
        let (mut s, mut q, t0) = (
            Stream::new(Subs::new(Vec::new()), None),
            Outbox::default(),
            Instant::now(),
        );
        offer(&mut s, &mut q, 1, 90, t0);
        offer(&mut s, &mut q, 2, 90, t0);
        drain(&mut q);
        s.on_drained(t0 + SLOW / 2);
        assert!(matches!(
            offer(&mut s, &mut q, 3, 20, t0 + SLOW / 2),
            Offer::Queued(_)
        ));
        drain(&mut q);
        s.on_drained(t0 + SLOW / 2);
        assert!(s.loss().is_none());
        offer(&mut s, &mut q, 4, 90, t0 + SLOW);
        offer(&mut s, &mut q, 5, 90, t0 + SLOW);
        // A new loss began at t0 + SLOW; it is not "too slow" until SLOW after that.
        assert_eq!(
            offer(&mut s, &mut q, 6, 90, t0 + SLOW + SLOW / 2),
            Offer::Dropped
        );
    }

    #[test]
    fn a_trickling_reader_that_never_empties_its_queue_is_too_slow() {
        let (mut s, mut q, t0) = (
            Stream::new(Subs::new(Vec::new()), None),
            Outbox::default(),
            Instant::now(),
        );
        offer(&mut s, &mut q, 1, 90, t0);
        assert_eq!(offer(&mut s, &mut q, 2, 90, t0), Offer::Dropped);
        // The reader takes a little now and then: a frame fits, but the queue never empties.
        let mut id = 3;
        let mut t = t0;
        while t < t0 + SLOW {
            let mut sink = Vec::new();
            let mut front = Outbox::default();
            std::mem::swap(&mut front, &mut q);
            front.write_to(&mut sink).unwrap();
            q.push(frame(99, 95)); // what is still unread
            let offered = offer(&mut s, &mut q, id, 4, t);
            assert_ne!(offered, Offer::TooSlow, "at {:?}", t - t0);
            id += 1;
            t += SLOW / 10;
        }
        assert_eq!(offer(&mut s, &mut q, id, 4, t0 + SLOW), Offer::TooSlow);
    }

    #[test]
    fn a_replaying_stream_skips_live_frames() {
        let cursor = crate::delivery::history::History::new(1, 1 << 20, 1 << 20)
            .start_replay(&[], "0", EventId::ZERO, None, false)
            .cursor;
        let mut s = Stream::new(Subs::new(Vec::new()), Some(cursor));
        let mut q = Outbox::default();
        let now = Instant::now();
        assert_eq!(offer(&mut s, &mut q, 1, 20, now), Offer::Skipped);
        s.end_replay();
        assert_eq!(offer(&mut s, &mut q, 2, 20, now), Offer::Queued(20));
    }

    #[test]
    fn events_the_shard_was_not_sent_are_announced_like_dropped_ones() {
        let (mut s, mut q, now) = (
            Stream::new(Subs::new(Vec::new()), None),
            Outbox::default(),
            Instant::now(),
        );
        s.lose(EventId::local(3), EventId::local(5), 2, now);
        s.lose(EventId::local(7), EventId::local(8), 2, now);
        assert!(matches!(offer(&mut s, &mut q, 9, 20, now), Offer::Queued(n) if n > 20));
        let text = drain(&mut q);
        assert!(
            text.starts_with(
                "event: gap\ndata: {\"from\":\"3\",\"to\":\"8\",\"dropped\":4}\n\nid: 9\n"
            ),
            "{text}"
        );
    }
}
