//! The hand-over's messages and their bytes. Pure: encoding and checked decoding, no sockets.
//!
//! Every message is one logical datagram (the channel fragments and reassembles it): a tag
//! byte, then little-endian fields. Lengths and counts come from another process, possibly
//! another version of this binary: every read is checked, nothing is indexed, a count is
//! refused before anything is reserved for it when the bytes left could not hold that many,
//! and a message that does not decode whole is refused with one line saying what was wrong.
//! What the fields mean is judged apart, against the new process's own limits (see
//! `intake.rs`).
//!
//! [`Hello`] is the one message whose layout never changes: every version starts with it, so
//! any two binaries can at least agree on a version or tell each other why not.
//!
//! The embedded broker's history can be larger than any message: it travels as
//! [`Message::History`] parts of at most [`HISTORY_PART`] bytes (or the new process's
//! [`Message::Ready`] limit, if smaller), each naming the topics of its own frames, so each
//! part stands alone ([`plan_history`]).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use bytes::Bytes;

use crate::delivery::history::HistoryImage;
use crate::wire::event_id::EventId;
use crate::wire::h2::conn::{Image, StreamImage};
use crate::wire::h2::hpack::DecoderImage;

/// The hand-over version this binary speaks. Version 2 sends the history in parts, after
/// the new process said it can take what the old one keeps (version 1 sent it whole, under
/// one message's limit); version 3 adds h2c connections ([`Kind::H2`]).
pub const VERSION: u16 = 3;

/// The oldest version this binary takes from a previous process: a version 2 one sends
/// what version 3 does, less its h2c connections (it drains those).
pub const MIN_VERSION: u16 = 2;

/// Streams whose descriptors travel in one message: `SCM_RIGHTS` carries at most 253.
pub const BATCH: usize = 253;

/// What one history part holds at most (a part always takes one frame, so a larger frame
/// travels alone): small enough that no part costs either process more than a moment of
/// copying, large enough that the per-message cost is lost in it.
pub const HISTORY_PART: usize = 1 << 20;

/// The smallest message limit a new process may ask for: a part must hold at least a
/// frame's fields and a topic's name.
pub const MIN_MESSAGE: usize = 4096;

/// Opens every `Hello`, so a stray peer is not mistaken for a successor.
const MAGIC: &[u8; 17] = b"SSE-EDGE-HANDOVER";

const HELLO: u8 = 1;
const ACCEPT: u8 = 2;
const REFUSE: u8 = 3;
const STATE: u8 = 4;
const CONNECTIONS: u8 = 5;
const ACK: u8 = 6;
const END: u8 = 7;
const PREPARED: u8 = 8;
const COMMIT: u8 = 9;
const SERVING: u8 = 10;
const OFFER: u8 = 11;
const READY: u8 = 12;
const HISTORY: u8 = 13;

/// A history part's fixed bytes: the tag and its two counts.
pub(crate) const PART_BASE: usize = 1 + 4 + 4;
/// A topic entry's bytes besides its name: the name's length and the evicted id.
pub(crate) const TOPIC_ENTRY: usize = 4 + 16;
/// A frame entry's bytes besides the frame: its id, topic index and length.
const FRAME_ENTRY: usize = 16 + 4 + 4;
/// An h2c connection's stream entry: id, two windows, body left, flags.
const H2_STREAM_ENTRY: usize = 4 + 4 + 4 + 4 + 1;
/// The least an h2c connection's event stream takes: id, flag, and a stream state with no
/// topic (its count, two ids, three flags).
const H2_CARRIED_ENTRY: usize = 4 + 1 + 2 + 16 + 16 + 1 + 1 + 1 + 1;

/// One step of the hand-over, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// New → old, first: the versions the new binary speaks, and its pid.
    Hello(Hello),
    /// Old → new: the version both speak; the hand-over goes on in it.
    Accept {
        /// The version chosen.
        version: u16,
    },
    /// Either way: no hand-over, and why (one line). The new process then serves without
    /// the streams (or exits); the old one keeps them.
    Refuse {
        /// Why.
        reason: String,
    },
    /// Old → new, while nothing is paused yet: what the old process keeps, so the new one
    /// can refuse before accepting and delivery pause.
    Offer(Offer),
    /// New → old: it can take what was offered.
    Ready {
        /// The largest message it gathers; the old process cuts what it sends to fit.
        max_message: u32,
    },
    /// Old → new, once paused: where the node's ids stand, and what follows.
    State(State),
    /// Old → new, after the state: one part of the embedded broker's history.
    History(HistoryPart),
    /// Old → new: up to [`BATCH`] connections, their descriptors alongside in the same order.
    Connections(Vec<Record>),
    /// New → old: a batch was taken (the old side sends the next only then, so at most one
    /// batch of descriptors is in flight, charged to nobody's open-files limit for long).
    Ack {
        /// Connections taken so far.
        taken: u32,
    },
    /// Old → new: every stream is sent.
    End,
    /// New → old: everything is taken and ready to run; nothing is written yet.
    Prepared {
        /// Connections taken.
        connections: u32,
    },
    /// Old → new: the old process will never write to the streams again: they are yours.
    Commit,
    /// New → old: serving.
    Serving,
}

/// The first message of every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The oldest version spoken.
    pub min: u16,
    /// The newest version spoken.
    pub max: u16,
    /// The new process's id.
    pub pid: u32,
}

/// What the old process offers before anything pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// The budget its history is kept in (its `--history-bytes`); 0 when it sends none (a
    /// cluster node's history is in Redis).
    pub history_bytes: u64,
}

/// Where the node's ids stand when the old process stopped taking events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The last id the old process recorded: every stream handed over has been given
    /// everything up to it (or its record says where its replay stands).
    pub last_id: EventId,
    /// The cluster's epoch (None with the embedded broker).
    pub epoch: Option<String>,
    /// The embedded broker's kept events follow in parts; cluster nodes read theirs from
    /// Redis.
    pub history: Option<HistoryHead>,
    /// The demo ticker's last heartbeat number (the embedded broker's: a cluster counts its
    /// beats in Redis), so the next process's `Auto heartbeat #n` goes on from it.
    pub heartbeats: u64,
    /// How many connections will follow.
    pub connections: u32,
}

/// What the history parts after a [`State`] add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryHead {
    /// The newest id of any topic forgotten.
    pub forgotten_through: EventId,
    /// How many [`Message::History`] parts follow.
    pub parts: u32,
    /// Their encoded bytes, all together.
    pub bytes: u64,
}

/// One part of a history on its way: frames in id order, and the topics they (and topics
/// with no frame at all) name. Frames index this part's `topics`, not the whole image's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPart {
    /// Topics: name and the newest id it evicted.
    pub topics: Vec<(String, EventId)>,
    /// Frames: id, index into `topics`, the encoded frame.
    pub frames: Vec<(EventId, u32, Bytes)>,
}

/// One connection handed over; its socket travels beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The shard it was on (the new process keeps it there when it has as many).
    pub shard: u16,
    /// The bytes it had queued and not written: the rest of a half-written frame (or
    /// response), then whole ones. The new process writes them first.
    pub tail: Bytes,
    /// What it is.
    pub kind: Kind,
}

/// What a handed-over connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A connection between requests: a kept-alive publisher, or one that has not sent its
    /// first request yet.
    Requests {
        /// It was answered at least once (a kept-alive one).
        answered: bool,
    },
    /// An event stream.
    Stream(StreamState),
    /// An HTTP/2 connection (h2c: TLS keys cannot travel), at rest between frames.
    H2(H2Conn),
}

/// An h2c connection handed over: its protocol state and the event streams it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Conn {
    /// Its protocol state (judged by [`crate::wire::h2::conn::Connection::import`]).
    pub conn: Image,
    /// Its event streams, each one of `conn`'s open streams.
    pub streams: Vec<H2Stream>,
}

/// An event stream an h2c connection carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Stream {
    /// Its id on the connection.
    pub id: u32,
    /// Its window was closed when it last had a frame: it catches up only once the window
    /// holds a whole frame (the lane's rule).
    pub starved: bool,
    /// Its delivery state, as an HTTP/1.1 stream's.
    pub state: StreamState,
}

/// A stream's delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The topics it carries, in the order it asked for them.
    pub topics: Vec<String>,
    /// It has everything up to this id (what it queued is in `tail`); a replaying stream,
    /// the last id its replay reached.
    pub after: EventId,
    /// Evictions up to this id were already announced to it with a `reset`.
    pub announced: EventId,
    /// It is replaying from the history (else it is live at the state's last id).
    pub replaying: bool,
    /// Frames it lost and has not been told of yet: first id, last id, count.
    pub gap: Option<(EventId, EventId, u64)>,
    /// How long ago it started losing frames, in milliseconds (its slow-client clock).
    pub losing_ms: Option<u32>,
    /// Its token's `exp` (unix seconds), with `--subscribe-jwt`.
    pub expires: Option<u32>,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hand-over message: {0}")]
pub struct Malformed(pub &'static str);

impl Message {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Sized first (counting copies nothing): a part with a frame of tens of megabytes
        // is copied once, not again at every doubling, while the node waits.
        let mut size = Writer(Count(0));
        size.message(self);
        let mut w = Writer(Vec::with_capacity(size.0 .0));
        w.message(self);
        w.0
    }

    /// Decodes a whole message; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Message, Malformed> {
        let mut r = Reader(bytes);
        let message = match r.u8()? {
            HELLO => {
                let magic = r.take(MAGIC.len())?;
                if magic != MAGIC {
                    return Err(Malformed("not an sse-edge hand-over"));
                }
                Message::Hello(Hello {
                    min: r.u16()?,
                    max: r.u16()?,
                    pid: r.u32()?,
                })
            }
            ACCEPT => Message::Accept { version: r.u16()? },
            REFUSE => Message::Refuse { reason: r.str()? },
            OFFER => Message::Offer(Offer {
                history_bytes: r.u64()?,
            }),
            READY => Message::Ready {
                max_message: r.u32()?,
            },
            STATE => {
                let last_id = r.id()?;
                let epoch = r.opt_str()?;
                let history = if r.flag()? {
                    Some(HistoryHead {
                        forgotten_through: r.id()?,
                        parts: r.u32()?,
                        bytes: r.u64()?,
                    })
                } else {
                    None
                };
                Message::State(State {
                    last_id,
                    epoch,
                    history,
                    heartbeats: r.u64()?,
                    connections: r.u32()?,
                })
            }
            HISTORY => {
                let n = r.count(TOPIC_ENTRY)?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    topics.push((r.str()?, r.id()?));
                }
                let n = r.count(FRAME_ENTRY)?;
                let mut frames = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id()?;
                    let topic = r.u32()?;
                    if topic as usize >= topics.len() {
                        return Err(Malformed("a kept frame names no topic"));
                    }
                    frames.push((id, topic, Bytes::copy_from_slice(r.bytes()?)));
                }
                Message::History(HistoryPart { topics, frames })
            }
            CONNECTIONS => {
                let n = r.count(2 + 4 + 1 + 1)?;
                if n > BATCH {
                    return Err(Malformed("more connections than one batch carries"));
                }
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let shard = r.u16()?;
                    let tail = Bytes::copy_from_slice(r.bytes()?);
                    let kind = match r.u8()? {
                        0 => Kind::Requests {
                            answered: r.flag()?,
                        },
                        1 => Kind::Stream(r.stream()?),
                        2 => Kind::H2(r.h2()?),
                        _ => return Err(Malformed("bad connection kind")),
                    };
                    records.push(Record { shard, tail, kind });
                }
                Message::Connections(records)
            }
            ACK => Message::Ack { taken: r.u32()? },
            END => Message::End,
            PREPARED => Message::Prepared {
                connections: r.u32()?,
            },
            COMMIT => Message::Commit,
            SERVING => Message::Serving,
            _ => return Err(Malformed("unknown message")),
        };
        if !r.0.is_empty() {
            return Err(Malformed("trailing bytes"));
        }
        Ok(message)
    }

    /// The message's name, for errors ("expected Commit, got End").
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Accept { .. } => "Accept",
            Message::Refuse { .. } => "Refuse",
            Message::Offer(_) => "Offer",
            Message::Ready { .. } => "Ready",
            Message::State(_) => "State",
            Message::History(_) => "History",
            Message::Connections(_) => "Connections",
            Message::Ack { .. } => "Ack",
            Message::End => "End",
            Message::Prepared { .. } => "Prepared",
            Message::Commit => "Commit",
            Message::Serving => "Serving",
        }
    }
}

impl Record {
    /// The event streams it carries: one for an HTTP/1.1 stream, any number on h2c.
    pub fn streams(&self) -> usize {
        match &self.kind {
            Kind::Requests { .. } => 0,
            Kind::Stream(_) => 1,
            Kind::H2(h2) => h2.streams.len(),
        }
    }
}

impl HistoryPart {
    /// Its bytes as a [`Message::History`], without encoding it.
    pub fn encoded_len(&self) -> usize {
        let topics: usize = self
            .topics
            .iter()
            .map(|(name, _)| TOPIC_ENTRY + name.len())
            .sum();
        let frames: usize = self
            .frames
            .iter()
            .map(|(_, _, f)| FRAME_ENTRY + f.len())
            .sum();
        PART_BASE + topics + frames
    }
}

/// A record's bytes inside a [`Message::Connections`], without encoding it.
pub fn record_len(record: &Record) -> usize {
    let mut w = Writer(Count(0));
    w.record(record);
    w.0 .0
}

/// The bytes of a [`Message::Connections`] with records of `records` bytes together.
pub fn connections_len(records: usize) -> usize {
    1 + 4 + records
}

/// The version two binaries speak: the newest both know, if any.
pub fn agree(ours: (u16, u16), theirs: &Hello) -> Option<u16> {
    let low = ours.0.max(theirs.min);
    let high = ours.1.min(theirs.max);
    (low <= high).then_some(high)
}

/// How a history image is cut into parts: which of its frames (a range, in id order) and
/// which of its frameless topics each part carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPlan {
    /// Topics no frame names (indexes into the image's topics): they still carry an
    /// eviction mark.
    frameless: Vec<u32>,
    /// Per part: its slice of `frameless`, its frames, its encoded bytes.
    parts: Vec<(Range<usize>, Range<usize>, usize)>,
}

/// A frame too large for any part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a kept frame of {frame} bytes does not fit in a hand-over message of {limit} bytes")]
pub struct Oversized {
    /// The frame's length.
    pub frame: usize,
    /// The message limit.
    pub limit: usize,
}

/// Plans the parts of `image`: each about `target` encoded bytes at most, except that a part
/// always takes one frame, so a larger frame travels alone, in a part of at most `limit`
/// (the receiver's message limit). Only sizes are worked out here; [`HistoryPlan::part`]
/// builds each part when it is sent, so no second copy of the names is held.
pub fn plan_history(
    image: &HistoryImage,
    target: usize,
    limit: usize,
) -> Result<HistoryPlan, Oversized> {
    let target = target.min(limit);
    let name_len = |t: u32| image.topics.get(t as usize).map_or(0, |(n, _)| n.len());
    let mut named = vec![false; image.topics.len()];
    for (_, t, _) in &image.frames {
        if let Some(seen) = named.get_mut(*t as usize) {
            *seen = true;
        }
    }
    let frameless: Vec<u32> = (0..image.topics.len() as u32)
        .filter(|&t| !named.get(t as usize).copied().unwrap_or(true))
        .collect();
    let mut parts = Vec::new();
    let mut len = PART_BASE;
    let mut first = 0;
    for (i, &t) in frameless.iter().enumerate() {
        let add = TOPIC_ENTRY + name_len(t);
        if len + add > target && i > first {
            parts.push((first..i, 0..0, len));
            first = i;
            len = PART_BASE;
        }
        len += add;
    }
    let mut topics_here: HashSet<u32> = HashSet::new();
    let mut frames_from = 0;
    for (i, (_, t, frame)) in image.frames.iter().enumerate() {
        let topic = if topics_here.contains(t) {
            0
        } else {
            TOPIC_ENTRY + name_len(*t)
        };
        let mut add = FRAME_ENTRY + frame.len() + topic;
        if len + add > target && (i > frames_from || first < frameless.len()) {
            parts.push((first..frameless.len(), frames_from..i, len));
            first = frameless.len();
            frames_from = i;
            len = PART_BASE;
            topics_here.clear();
            add = FRAME_ENTRY + frame.len() + TOPIC_ENTRY + name_len(*t);
        }
        if PART_BASE + add > limit {
            return Err(Oversized {
                frame: frame.len(),
                limit,
            });
        }
        topics_here.insert(*t);
        len += add;
    }
    if first < frameless.len() || frames_from < image.frames.len() {
        parts.push((first..frameless.len(), frames_from..image.frames.len(), len));
    }
    Ok(HistoryPlan { frameless, parts })
}

impl HistoryPlan {
    /// How many parts.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Their bytes, all together.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|(_, _, len)| *len as u64).sum()
    }

    /// Part `i` of `image` (the image this plan was made for).
    pub fn part(&self, image: &HistoryImage, i: usize) -> HistoryPart {
        let mut part = HistoryPart::default();
        let Some((frameless, frames, _)) = self.parts.get(i) else {
            return part;
        };
        let mut local: HashMap<u32, u32> = HashMap::new();
        let mut name = |t: u32, part: &mut HistoryPart| -> u32 {
            *local.entry(t).or_insert_with(|| {
                let (n, evicted) = image.topics.get(t as usize).cloned().unwrap_or_default();
                part.topics.push((n, evicted));
                part.topics.len() as u32 - 1
            })
        };
        for &t in self.frameless.get(frameless.clone()).unwrap_or_default() {
            name(t, &mut part);
        }
        for (id, t, frame) in image.frames.get(frames.clone()).unwrap_or_default() {
            let at = name(*t, &mut part);
            part.frames.push((*id, at, frame.clone()));
        }
        part
    }
}

/// Where bytes go: a message's buffer, or a count of them.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written.
struct Count(usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

struct Writer<S>(S);

impl<S: Sink> Writer<S> {
    fn message(&mut self, message: &Message) {
        match message {
            Message::Hello(h) => {
                self.u8(HELLO);
                self.0.put(MAGIC);
                self.u16(h.min);
                self.u16(h.max);
                self.u32(h.pid);
            }
            Message::Accept { version } => {
                self.u8(ACCEPT);
                self.u16(*version);
            }
            Message::Refuse { reason } => {
                self.u8(REFUSE);
                self.str(reason);
            }
            Message::Offer(offer) => {
                self.u8(OFFER);
                self.u64(offer.history_bytes);
            }
            Message::Ready { max_message } => {
                self.u8(READY);
                self.u32(*max_message);
            }
            Message::State(s) => {
                self.u8(STATE);
                self.id(s.last_id);
                self.opt_str(s.epoch.as_deref());
                match &s.history {
                    None => self.u8(0),
                    Some(h) => {
                        self.u8(1);
                        self.id(h.forgotten_through);
                        self.u32(h.parts);
                        self.u64(h.bytes);
                    }
                }
                self.u64(s.heartbeats);
                self.u32(s.connections);
            }
            Message::History(part) => {
                self.u8(HISTORY);
                self.u32(part.topics.len() as u32);
                for (name, evicted) in &part.topics {
                    self.str(name);
                    self.id(*evicted);
                }
                self.u32(part.frames.len() as u32);
                for (id, topic, frame) in &part.frames {
                    self.id(*id);
                    self.u32(*topic);
                    self.bytes(frame);
                }
            }
            Message::Connections(records) => {
                self.u8(CONNECTIONS);
                self.u32(records.len() as u32);
                for r in records {
                    self.record(r);
                }
            }
            Message::Ack { taken } => {
                self.u8(ACK);
                self.u32(*taken);
            }
            Message::End => self.u8(END),
            Message::Prepared { connections } => {
                self.u8(PREPARED);
                self.u32(*connections);
            }
            Message::Commit => self.u8(COMMIT),
            Message::Serving => self.u8(SERVING),
        }
    }
    fn record(&mut self, r: &Record) {
        self.u16(r.shard);
        self.bytes(&r.tail);
        match &r.kind {
            Kind::Requests { answered } => {
                self.u8(0);
                self.u8(u8::from(*answered));
            }
            Kind::Stream(s) => {
                self.u8(1);
                self.stream(s);
            }
            Kind::H2(h2) => {
                self.u8(2);
                self.h2(h2);
            }
        }
    }
    fn h2(&mut self, h2: &H2Conn) {
        let c = &h2.conn;
        self.u32(c.advertised_window);
        self.u32(c.send_window as u32);
        self.u32(c.recv_window as u32);
        self.u32(c.peer_window);
        self.u32(c.peer_max_frame);
        self.u32(c.last_stream);
        self.u8(u8::from(c.head_sent));
        self.u16(c.streams.len() as u16);
        for s in &c.streams {
            self.u32(s.id);
            self.u32(s.send_window as u32);
            self.u32(s.recv_window as u32);
            self.u32(s.body_left);
            self.u8(u8::from(s.remote_closed) | u8::from(s.local_closed) << 1);
        }
        let d = &c.decoder;
        self.u16(d.entries.len() as u16);
        for (name, value) in &d.entries {
            self.bytes(name);
            self.bytes(value);
        }
        self.u32(d.max_size);
        self.u32(d.limit);
        self.u32(d.pending);
        self.u8(u8::from(d.update_due));
        self.u16(h2.streams.len() as u16);
        for s in &h2.streams {
            self.u32(s.id);
            self.u8(u8::from(s.starved));
            self.stream(&s.state);
        }
    }
    fn stream(&mut self, s: &StreamState) {
        {
            {
                self.u16(s.topics.len() as u16);
                for t in &s.topics {
                    self.str(t);
                }
                self.id(s.after);
                self.id(s.announced);
                self.u8(u8::from(s.replaying));
                match s.gap {
                    None => self.u8(0),
                    Some((from, to, dropped)) => {
                        self.u8(1);
                        self.id(from);
                        self.id(to);
                        self.u64(dropped);
                    }
                }
                self.opt_u32(s.losing_ms);
                self.opt_u32(s.expires);
            }
        }
    }
    fn u8(&mut self, v: u8) {
        self.0.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.put(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.put(&v.to_le_bytes());
    }
    fn id(&mut self, id: EventId) {
        self.u64(id.ms());
        self.u64(id.seq());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.put(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }
    fn flag(&mut self) -> Result<bool, Malformed> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("bad flag")),
        }
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn id(&mut self) -> Result<EventId, Malformed> {
        let ms = self.u64()?;
        let seq = self.u64()?;
        Ok(EventId::entry(ms, seq))
    }
    /// A count of items that take at least `each` bytes: one larger than what is left
    /// cannot be true, so it is refused before anything is reserved for it.
    fn count(&mut self, each: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        self.fits(n, each)
    }
    fn fits(&self, n: usize, each: usize) -> Result<usize, Malformed> {
        if n.saturating_mul(each.max(1)) > self.0.len() {
            return Err(Malformed("a count larger than the message"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<String, Malformed> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| Malformed("a name that is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>, Malformed> {
        Ok(if self.flag()? {
            Some(self.str()?)
        } else {
            None
        })
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, Malformed> {
        Ok(if self.flag()? {
            Some(self.u32()?)
        } else {
            None
        })
    }
    fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn h2(&mut self) -> Result<H2Conn, Malformed> {
        let advertised_window = self.u32()?;
        let send_window = self.i32()?;
        let recv_window = self.i32()?;
        let peer_window = self.u32()?;
        let peer_max_frame = self.u32()?;
        let last_stream = self.u32()?;
        let head_sent = self.flag()?;
        let n = self.u16()?;
        let n = self.fits(usize::from(n), H2_STREAM_ENTRY)?;
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.u32()?;
            let send_window = self.i32()?;
            let recv_window = self.i32()?;
            let body_left = self.u32()?;
            let closed = self.u8()?;
            if closed > 3 {
                return Err(Malformed("bad HTTP/2 stream flags"));
            }
            streams.push(StreamImage {
                id,
                send_window,
                recv_window,
                body_left,
                remote_closed: closed & 1 != 0,
                local_closed: closed & 2 != 0,
            });
        }
        // Each entry takes at least its two 4-byte lengths.
        let n = self.u16()?;
        let n = self.fits(usize::from(n), 8)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.bytes()?.to_vec();
            let value = self.bytes()?.to_vec();
            entries.push((name, value));
        }
        let decoder = DecoderImage {
            entries,
            max_size: self.u32()?,
            limit: self.u32()?,
            pending: self.u32()?,
            update_due: self.flag()?,
        };
        let n = self.u16()?;
        let n = self.fits(usize::from(n), H2_CARRIED_ENTRY)?;
        let mut carried = Vec::with_capacity(n);
        for _ in 0..n {
            carried.push(H2Stream {
                id: self.u32()?,
                starved: self.flag()?,
                state: self.stream()?,
            });
        }
        Ok(H2Conn {
            conn: Image {
                advertised_window,
                send_window,
                recv_window,
                peer_window,
                peer_max_frame,
                last_stream,
                head_sent,
                streams,
                decoder,
            },
            streams: carried,
        })
    }
    fn stream(&mut self) -> Result<StreamState, Malformed> {
        // Each name takes at least its 4-byte length.
        let n = self.u16()?;
        let n = self.fits(usize::from(n), 4)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            topics.push(self.str()?);
        }
        let after = self.id()?;
        let announced = self.id()?;
        let replaying = self.flag()?;
        let gap = match self.u8()? {
            0 => None,
            1 => Some((self.id()?, self.id()?, self.u64()?)),
            _ => return Err(Malformed("bad gap flag")),
        };
        Ok(StreamState {
            topics,
            after,
            announced,
            replaying,
            gap,
            losing_ms: self.opt_u32()?,
            expires: self.opt_u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(tail: &'static [u8]) -> Record {
        Record {
            shard: 1,
            tail: Bytes::from_static(tail),
            kind: Kind::Stream(StreamState {
                topics: vec!["news".into(), "sport".into()],
                after: EventId::local(41),
                announced: EventId::local(3),
                replaying: true,
                gap: Some((EventId::local(7), EventId::local(9), 3)),
                losing_ms: Some(1500),
                expires: Some(1_900_000_000),
            }),
        }
    }

    fn h2_record() -> Record {
        let Kind::Stream(state) = record(b"").kind else {
            unreachable!()
        };
        Record {
            shard: 0,
            tail: Bytes::from_static(b"\0\0\x05\0\0\0\0\0\x01: x\n\n"),
            kind: Kind::H2(H2Conn {
                conn: Image {
                    advertised_window: 65_535,
                    send_window: -5,
                    recv_window: 1 << 20,
                    peer_window: 65_535,
                    peer_max_frame: 16_384,
                    last_stream: 5,
                    head_sent: true,
                    streams: vec![
                        StreamImage {
                            id: 1,
                            send_window: 100,
                            recv_window: 65_535,
                            body_left: u32::MAX,
                            remote_closed: true,
                            local_closed: false,
                        },
                        StreamImage {
                            id: 5,
                            send_window: -7,
                            recv_window: 0,
                            body_left: 3,
                            remote_closed: false,
                            local_closed: true,
                        },
                    ],
                    decoder: DecoderImage {
                        entries: vec![(b"x-a".to_vec(), b"b".to_vec())],
                        max_size: 4096,
                        limit: 0,
                        pending: u32::MAX,
                        update_due: true,
                    },
                },
                streams: vec![H2Stream {
                    id: 1,
                    starved: true,
                    state,
                }],
            }),
        }
    }

    fn every_kind() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                min: 1,
                max: 3,
                pid: 4242,
            }),
            Message::Accept { version: 1 },
            Message::Refuse {
                reason: "no".into(),
            },
            Message::Offer(Offer {
                history_bytes: 64 << 20,
            }),
            Message::Ready {
                max_message: 1 << 30,
            },
            Message::State(State {
                last_id: EventId::entry(1_764_633_600_000, 5),
                epoch: Some("9f3c2a71".into()),
                history: None,
                heartbeats: 0,
                connections: 19_000,
            }),
            Message::State(State {
                last_id: EventId::local(41),
                epoch: None,
                history: Some(HistoryHead {
                    forgotten_through: EventId::local(2),
                    parts: 3,
                    bytes: 3 << 20,
                }),
                heartbeats: 7,
                connections: 2,
            }),
            Message::History(HistoryPart {
                topics: vec![("news".into(), EventId::local(3))],
                frames: vec![(EventId::local(40), 0, Bytes::from_static(b"id: 40\n\n"))],
            }),
            Message::Connections(vec![
                record(b"ta: 1\n\n"),
                record(b""),
                Record {
                    shard: 0,
                    tail: Bytes::new(),
                    kind: Kind::Requests { answered: true },
                },
                h2_record(),
            ]),
            Message::Ack { taken: 253 },
            Message::End,
            Message::Prepared { connections: 3 },
            Message::Commit,
            Message::Serving,
        ]
    }

    #[test]
    fn every_message_comes_back_as_sent() {
        for m in every_kind() {
            assert_eq!(Message::decode(&m.encode()), Ok(m.clone()), "{}", m.name());
        }
    }

    #[test]
    fn a_message_cut_anywhere_or_lengthened_is_refused() {
        for m in every_kind() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{} at {cut}",
                    m.name()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Message::decode(&longer), Err(Malformed("trailing bytes")));
        }
    }

    #[test]
    fn an_h2_record_with_bad_flags_or_counts_past_its_bytes_is_refused() {
        let bytes = Message::Connections(vec![h2_record()]).encode();
        // Tag, count, shard, tail; then the kind and the connection's seven fixed fields.
        let tail = 1 + 4 + 2 + 4 + h2_record().tail.len();
        let streams = tail + 1 + 6 * 4 + 1;
        let mut huge = bytes.clone();
        huge[streams..streams + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            Message::decode(&huge),
            Err(Malformed("a count larger than the message"))
        );
        let mut flags = bytes.clone();
        flags[streams + 2 + H2_STREAM_ENTRY - 1] = 4;
        assert_eq!(
            Message::decode(&flags),
            Err(Malformed("bad HTTP/2 stream flags"))
        );
        let mut kind = bytes.clone();
        kind[tail] = 3;
        assert_eq!(
            Message::decode(&kind),
            Err(Malformed("bad connection kind"))
        );
        assert_eq!(
            Message::decode(&bytes),
            Ok(Message::Connections(vec![h2_record()]))
        );
    }

    #[test]
    fn a_hello_without_the_magic_is_not_a_successor() {
        let mut bytes = Message::Hello(Hello {
            min: 1,
            max: 1,
            pid: 1,
        })
        .encode();
        bytes[3] ^= 1;
        assert_eq!(
            Message::decode(&bytes),
            Err(Malformed("not an sse-edge hand-over"))
        );
    }

    #[test]
    fn versions_agree_on_the_newest_both_speak() {
        let hello = |min, max| Hello { min, max, pid: 1 };
        assert_eq!(agree((1, 1), &hello(1, 1)), Some(1));
        assert_eq!(agree((1, 2), &hello(1, 3)), Some(2));
        assert_eq!(agree((1, 1), &hello(2, 3)), None);
        assert_eq!(agree((2, 3), &hello(1, 1)), None);
    }

    #[test]
    fn a_huge_count_is_refused_before_anything_is_reserved() {
        let mut bytes = vec![CONNECTIONS];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Message::decode(&bytes),
            Err(Malformed("a count larger than the message"))
        );
    }

    #[test]
    fn sizes_worked_out_are_the_sizes_encoded() {
        for m in every_kind() {
            match &m {
                Message::History(part) => assert_eq!(part.encoded_len(), m.encode().len()),
                Message::Connections(records) => {
                    let sum = records.iter().map(record_len).sum();
                    assert_eq!(connections_len(sum), m.encode().len());
                }
                _ => {}
            }
        }
    }

    /// An image of `frames` frames of `size` bytes over `topics` topics, with `frameless`
    /// more topics that kept no frame.
    fn image(frames: u64, size: usize, topics: u32, frameless: u32) -> HistoryImage {
        HistoryImage {
            forgotten_through: EventId::local(1),
            topics: (0..topics + frameless)
                .map(|t| (format!("topic-{t}"), EventId::local(u64::from(t))))
                .collect(),
            frames: (0..frames)
                .map(|i| {
                    let frame = Bytes::from(vec![b'x'; size + (i as usize % 7)]);
                    (
                        EventId::local(100 + i),
                        (i % u64::from(topics)) as u32,
                        frame,
                    )
                })
                .collect(),
        }
    }

    /// Puts the parts back together as one image (what importing them one by one amounts to).
    fn join(parts: &[HistoryPart], forgotten_through: EventId) -> HistoryImage {
        let mut whole = HistoryImage {
            forgotten_through,
            ..HistoryImage::default()
        };
        let mut index: HashMap<String, u32> = HashMap::new();
        for part in parts {
            for (name, evicted) in &part.topics {
                if !index.contains_key(name) {
                    index.insert(name.clone(), whole.topics.len() as u32);
                    whole.topics.push((name.clone(), *evicted));
                }
            }
            for (id, t, frame) in &part.frames {
                let name = &part.topics[*t as usize].0;
                whole.frames.push((*id, index[name], frame.clone()));
            }
        }
        whole
    }

    #[test]
    fn a_history_is_cut_into_parts_within_the_limit_that_add_up_to_it() {
        let limit = 4096;
        let whole = image(300, 300, 5, 40);
        let plan = plan_history(&whole, limit, limit).unwrap();
        assert!(plan.parts() > 20, "{} parts", plan.parts());
        let parts: Vec<HistoryPart> = (0..plan.parts()).map(|i| plan.part(&whole, i)).collect();
        let mut total = 0;
        for part in &parts {
            let bytes = Message::History(part.clone()).encode();
            assert!(bytes.len() <= limit, "{} bytes", bytes.len());
            assert_eq!(bytes.len(), part.encoded_len());
            total += bytes.len() as u64;
        }
        assert_eq!(total, plan.bytes());
        // The same frames in the same order, each under its topic; every topic named.
        let mut joined = join(&parts, whole.forgotten_through);
        assert_eq!(joined.frames.len(), whole.frames.len());
        for ((id, t, frame), (wid, wt, wframe)) in joined.frames.iter().zip(&whole.frames) {
            assert_eq!((id, frame), (wid, wframe));
            assert_eq!(joined.topics[*t as usize], whole.topics[*wt as usize]);
        }
        joined.topics.sort();
        let mut topics = whole.topics.clone();
        topics.sort();
        assert_eq!(joined.topics, topics);
    }

    #[test]
    fn a_frame_larger_than_a_part_travels_alone_and_one_larger_than_a_message_is_refused() {
        let plan = plan_history(&HistoryImage::default(), 4096, 4096).unwrap();
        assert_eq!((plan.parts(), plan.bytes()), (0, 0));
        let whole = image(3, 5000, 1, 0);
        assert_eq!(
            plan_history(&whole, 4096, 4096),
            Err(Oversized {
                frame: 5000,
                limit: 4096
            })
        );
        // Parts of about 1 KiB, messages up to 8 KiB: each 5 KB frame alone, whole.
        let plan = plan_history(&whole, 1024, 8192).unwrap();
        assert_eq!(plan.parts(), 3);
        for i in 0..3 {
            let part = plan.part(&whole, i);
            assert_eq!(part.frames.len(), 1);
            assert!(part.encoded_len() <= 8192);
        }
        // Frames that fit together share a part.
        let plan = plan_history(&whole, 16384, 16384).unwrap();
        assert_eq!(plan.parts(), 1);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn flipped_bytes_of_a_real_message_never_panic(
            which in 0usize..14usize,
            at in any::<prop::sample::Index>(),
            to in any::<u8>(),
        ) {
            let mut bytes = every_kind()[which].encode();
            let i = at.index(bytes.len());
            bytes[i] = to;
            let _ = Message::decode(&bytes);
        }
    }
}
