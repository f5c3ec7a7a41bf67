//! The hand-over's messages and their bytes. Pure: encoding and checked decoding, no sockets.
//!
//! Every message is one logical datagram (the channel fragments and reassembles it): a tag
//! byte, then little-endian fields. Lengths and counts come from another process, possibly
//! another version of this binary: every read is checked, nothing is indexed, and a message
//! that does not decode whole is refused with one line saying what was wrong.
//!
//! [`Hello`] is the one message whose layout never changes: every version starts with it, so
//! any two binaries can at least agree on a version or tell each other why not.

use bytes::Bytes;

use crate::event_id::EventId;

/// The hand-over version this binary speaks.
pub const VERSION: u16 = 1;

/// Streams whose descriptors travel in one message: `SCM_RIGHTS` carries at most 253.
pub const BATCH: usize = 253;

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
    /// the streams; the old one keeps them.
    Refuse {
        /// Why.
        reason: String,
    },
    /// Old → new: where the node's ids stand, and the embedded broker's history.
    State(State),
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

/// Where the node's ids stand when the old process stopped taking events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The last id the old process recorded: every stream handed over has been given
    /// everything up to it (or its record says where its replay stands).
    pub last_id: EventId,
    /// The cluster's epoch (None with the embedded broker).
    pub epoch: Option<String>,
    /// The embedded broker's kept events; cluster nodes read theirs from Redis.
    pub history: Option<HistoryImage>,
    /// How many connections will follow.
    pub connections: u32,
}

/// The embedded broker's history, as the new process rebuilds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryImage {
    /// The newest id of any topic forgotten.
    pub forgotten_through: EventId,
    /// Each topic known: its name and the newest id it evicted.
    pub topics: Vec<(String, EventId)>,
    /// Kept frames in id order: id, index into `topics`, the encoded frame.
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
        let mut w = Writer(Vec::with_capacity(64));
        match self {
            Message::Hello(h) => {
                w.u8(HELLO);
                w.0.extend_from_slice(MAGIC);
                w.u16(h.min);
                w.u16(h.max);
                w.u32(h.pid);
            }
            Message::Accept { version } => {
                w.u8(ACCEPT);
                w.u16(*version);
            }
            Message::Refuse { reason } => {
                w.u8(REFUSE);
                w.str(reason);
            }
            Message::State(s) => {
                w.u8(STATE);
                w.id(s.last_id);
                w.opt_str(s.epoch.as_deref());
                match &s.history {
                    None => w.u8(0),
                    Some(h) => {
                        w.u8(1);
                        w.id(h.forgotten_through);
                        w.u32(h.topics.len() as u32);
                        for (name, evicted) in &h.topics {
                            w.str(name);
                            w.id(*evicted);
                        }
                        w.u32(h.frames.len() as u32);
                        for (id, topic, frame) in &h.frames {
                            w.id(*id);
                            w.u32(*topic);
                            w.bytes(frame);
                        }
                    }
                }
                w.u32(s.connections);
            }
            Message::Connections(records) => {
                w.u8(CONNECTIONS);
                w.u32(records.len() as u32);
                for r in records {
                    w.u16(r.shard);
                    w.bytes(&r.tail);
                    match &r.kind {
                        Kind::Requests { answered } => {
                            w.u8(0);
                            w.u8(u8::from(*answered));
                        }
                        Kind::Stream(s) => {
                            w.u8(1);
                            w.u16(s.topics.len() as u16);
                            for t in &s.topics {
                                w.str(t);
                            }
                            w.id(s.after);
                            w.id(s.announced);
                            w.u8(u8::from(s.replaying));
                            match s.gap {
                                None => w.u8(0),
                                Some((from, to, dropped)) => {
                                    w.u8(1);
                                    w.id(from);
                                    w.id(to);
                                    w.u64(dropped);
                                }
                            }
                            w.opt_u32(s.losing_ms);
                            w.opt_u32(s.expires);
                        }
                    }
                }
            }
            Message::Ack { taken } => {
                w.u8(ACK);
                w.u32(*taken);
            }
            Message::End => w.u8(END),
            Message::Prepared { connections } => {
                w.u8(PREPARED);
                w.u32(*connections);
            }
            Message::Commit => w.u8(COMMIT),
            Message::Serving => w.u8(SERVING),
        }
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
            STATE => {
                let last_id = r.id()?;
                let epoch = r.opt_str()?;
                let history = match r.u8()? {
                    0 => None,
                    1 => {
                        let forgotten_through = r.id()?;
                        let n = r.count(4 + 16)?;
                        let mut topics = Vec::with_capacity(n);
                        for _ in 0..n {
                            topics.push((r.str()?, r.id()?));
                        }
                        let n = r.count(16 + 4 + 4)?;
                        let mut frames = Vec::with_capacity(n);
                        for _ in 0..n {
                            let id = r.id()?;
                            let topic = r.u32()?;
                            if topic as usize >= topics.len() {
                                return Err(Malformed("a kept frame names no topic"));
                            }
                            frames.push((id, topic, Bytes::copy_from_slice(r.bytes()?)));
                        }
                        Some(HistoryImage {
                            forgotten_through,
                            topics,
                            frames,
                        })
                    }
                    _ => return Err(Malformed("bad history flag")),
                };
                Message::State(State {
                    last_id,
                    epoch,
                    history,
                    connections: r.u32()?,
                })
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
            Message::State(_) => "State",
            Message::Connections(_) => "Connections",
            Message::Ack { .. } => "Ack",
            Message::End => "End",
            Message::Prepared { .. } => "Prepared",
            Message::Commit => "Commit",
            Message::Serving => "Serving",
        }
    }
}

/// The version two binaries speak: the newest both know, if any.
pub fn agree(ours: (u16, u16), theirs: &Hello) -> Option<u16> {
    let low = ours.0.max(theirs.min);
    let high = ours.1.min(theirs.max);
    (low <= high).then_some(high)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn id(&mut self, id: EventId) {
        self.u64(id.ms());
        self.u64(id.seq());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
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
    fn stream(&mut self) -> Result<StreamState, Malformed> {
        let topics = (0..self.u16()?)
            .map(|_| self.str())
            .collect::<Result<_, _>>()?;
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
            Message::State(State {
                last_id: EventId::entry(1_764_633_600_000, 5),
                epoch: Some("9f3c2a71".into()),
                history: None,
                connections: 19_000,
            }),
            Message::State(State {
                last_id: EventId::local(41),
                epoch: None,
                history: Some(HistoryImage {
                    forgotten_through: EventId::local(2),
                    topics: vec![("news".into(), EventId::local(3))],
                    frames: vec![(EventId::local(40), 0, Bytes::from_static(b"id: 40\n\n"))],
                }),
                connections: 2,
            }),
            Message::Connections(vec![
                record(b"ta: 1\n\n"),
                record(b""),
                Record {
                    shard: 0,
                    tail: Bytes::new(),
                    kind: Kind::Requests { answered: true },
                },
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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn flipped_bytes_of_a_real_message_never_panic(
            which in 0usize..11usize,
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
