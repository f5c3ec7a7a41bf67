//! What the new process takes from the old one, judged as network input is. Pure: the
//! socket and the descriptors are `handover/mod.rs`'s.
//!
//! The old process is this node's previous binary, on a socket made for its child alone;
//! but it may be another version, or broken, and what it sends goes to every stream and
//! sizes this process's memory. So every count is held to this process's own limits before
//! anything is reserved for it, and names, ids and frames go through the checks a request's
//! go through ([`crate::wire::params`], [`crate::wire::sse::is_event_frame`]). A message that fails is
//! refused with one line; the old process then keeps serving.

use crate::broker::redis::is_epoch;
use crate::delivery::history::HistoryImage;
use crate::wire::event_id::EventId;
use crate::wire::params::{self, MAX_TOPICS_PER_STREAM, MAX_TOPIC_LEN};
use crate::wire::sse;

use crate::wire::h2::conn::{Connection, Limits as H2Limits};

use super::wire::{self, HistoryPart, Kind, Offer, Record, State, StreamState};

/// What this process can take, from its own flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Its `--history-bytes`; 0 when it keeps no history image (a cluster node reads Redis).
    pub history_bytes: usize,
    /// The most streams it admits (`--max-clients`, or what the open-files limit allows).
    pub max_streams: usize,
    /// The most connections it can hold: its open-files limit.
    pub max_connections: usize,
    /// Its `--h2-max-streams`: an h2c connection with more open streams is refused.
    pub h2_max_streams: u32,
}

impl Limits {
    /// The most history (its parts' bytes, all together) taken from a previous process.
    ///
    /// One with the same flags keeps frames and topics within `--history-bytes`, each
    /// charged more than it takes in a part, except that a part names again the topic of
    /// each of its frames: at most one entry per frame, which at most doubles the frame's
    /// charge. Topics that streams hold may be kept past the budget: at most
    /// [`MAX_TOPICS_PER_STREAM`] per stream, each one entry.
    pub fn image_bytes(&self) -> u64 {
        if self.history_bytes == 0 {
            return 0;
        }
        let entry = (wire::TOPIC_ENTRY + MAX_TOPIC_LEN) as u64;
        let held = (self.max_streams as u64)
            .saturating_mul(MAX_TOPICS_PER_STREAM as u64)
            .saturating_mul(entry);
        (self.history_bytes as u64)
            .saturating_mul(2)
            .saturating_add(held)
    }
}

/// The new process's judge of one hand-over, from the state on.
#[derive(Debug)]
pub struct Intake {
    h2: H2Limits,
    last_id: EventId,
    epoch: Option<String>,
    /// The embedded broker's ids: nothing handed over may be after the last one.
    embedded: bool,
    forgotten_through: EventId,
    parts_left: u32,
    bytes_left: u64,
    /// The newest kept frame taken so far: frames come in id order.
    newest: EventId,
    announced: u32,
    taken: u32,
}

/// Judges the old process's offer, before anything pauses there.
pub fn offer(limits: &Limits, offer: &Offer) -> Result<(), String> {
    if offer.history_bytes > limits.history_bytes as u64 {
        return Err(format!(
            "the running process keeps up to {} bytes of history and this one {} (--history-bytes, or --redis in one of them): keep them the same across an upgrade",
            offer.history_bytes, limits.history_bytes
        ));
    }
    Ok(())
}

impl Intake {
    /// Judges the state; what follows is judged against it.
    pub fn new(limits: &Limits, state: &State) -> Result<Intake, String> {
        if let Some(epoch) = &state.epoch {
            if !is_epoch(epoch) {
                return Err("the state's epoch is not one".into());
            }
        }
        if state.connections as usize > limits.max_connections {
            return Err(format!(
                "{} connections announced, more than this process's open-files limit ({})",
                state.connections, limits.max_connections
            ));
        }
        let (forgotten_through, parts, bytes) = match &state.history {
            None => (EventId::ZERO, 0, 0),
            Some(head) => {
                if limits.history_bytes == 0 {
                    return Err(
                        "a history came, and this process keeps none (it reads Redis)".into(),
                    );
                }
                if head.bytes > limits.image_bytes() {
                    return Err(format!(
                        "a history of {} bytes announced, more than this process takes ({}: twice --history-bytes, and the topics its streams can hold)",
                        head.bytes,
                        limits.image_bytes()
                    ));
                }
                // Each part takes at least its tag and counts.
                if u64::from(head.parts).saturating_mul(wire::PART_BASE as u64) > head.bytes {
                    return Err("more history parts announced than its bytes can hold".into());
                }
                if head.forgotten_through > state.last_id {
                    return Err("the history forgot ids after the last one".into());
                }
                (head.forgotten_through, head.parts, head.bytes)
            }
        };
        Ok(Intake {
            h2: H2Limits {
                max_streams: limits.h2_max_streams,
                ..H2Limits::default()
            },
            last_id: state.last_id,
            epoch: state.epoch.clone(),
            embedded: state.history.is_some(),
            forgotten_through,
            parts_left: parts,
            bytes_left: bytes,
            newest: EventId::ZERO,
            announced: state.connections,
            taken: 0,
        })
    }

    /// Whether history parts are still to come.
    pub fn wants_history(&self) -> bool {
        self.parts_left > 0
    }

    /// Judges one history part; returns it as an image to import.
    pub fn history(&mut self, part: HistoryPart) -> Result<HistoryImage, String> {
        self.parts_left = self
            .parts_left
            .checked_sub(1)
            .ok_or("more history parts than announced")?;
        self.bytes_left = self
            .bytes_left
            .checked_sub(part.encoded_len() as u64)
            .ok_or("more history bytes than announced")?;
        for (name, evicted) in &part.topics {
            params::check_topic(name).map_err(|r| format!("the history: {}", r.reason))?;
            if *evicted > self.last_id {
                return Err("the history evicted ids after the last one".into());
            }
        }
        for (id, topic, frame) in &part.frames {
            if *id <= self.newest || *id > self.last_id {
                return Err("the history's frames are out of order or after the last id".into());
            }
            if *topic as usize >= part.topics.len() {
                return Err("a kept frame names no topic".into());
            }
            if !sse::is_event_frame(frame, *id, self.epoch.as_deref()) {
                return Err(format!("kept frame {id} is not one event"));
            }
            self.newest = *id;
        }
        Ok(HistoryImage {
            forgotten_through: self.forgotten_through,
            topics: part.topics,
            frames: part.frames,
        })
    }

    /// Judges a batch of connections (their descriptors are checked apart), and keeps each
    /// stream's topics as a request's are kept: each once, in order.
    pub fn connections(&mut self, records: &mut [Record]) -> Result<(), String> {
        let taken = u32::try_from(records.len())
            .ok()
            .and_then(|n| self.taken.checked_add(n))
            .filter(|&n| n <= self.announced)
            .ok_or_else(|| format!("more than the {} connections announced", self.announced))?;
        for record in records.iter_mut() {
            match &mut record.kind {
                Kind::Requests { .. } => {}
                Kind::Stream(stream) => self.stream(stream)?,
                Kind::H2(h2) => {
                    // Judged whole here, so that a record no connection could reach refuses
                    // the hand-over (the old process keeps everything) rather than a socket.
                    let conn = Connection::import(h2.conn.clone(), &self.h2)?;
                    let mut ids = Vec::with_capacity(h2.streams.len());
                    for carried in &mut h2.streams {
                        if conn.send_window(carried.id).is_none() {
                            return Err("an HTTP/2 event stream that is not open".into());
                        }
                        if ids.contains(&carried.id) {
                            return Err("an HTTP/2 event stream named twice".into());
                        }
                        ids.push(carried.id);
                        self.stream(&mut carried.state)?;
                    }
                }
            }
        }
        self.taken = taken;
        Ok(())
    }

    /// Judges one stream's state; keeps its topics as a request's are kept.
    fn stream(&self, stream: &mut StreamState) -> Result<(), String> {
        let mut topics = Vec::with_capacity(stream.topics.len().min(MAX_TOPICS_PER_STREAM));
        for name in std::mem::take(&mut stream.topics) {
            params::add_topic(&mut topics, name)
                .map_err(|r| format!("a stream's topics: {}", r.reason))?;
        }
        if topics.is_empty() {
            return Err("a stream with no topic".into());
        }
        stream.topics = topics;
        // A cluster stream may wait for an id this node has not read yet; an embedded
        // one has nothing after the last id.
        if self.embedded && (stream.after > self.last_id || stream.announced > self.last_id) {
            return Err("a stream after the last id".into());
        }
        if stream.gap.is_some_and(|(from, to, _)| from > to) {
            return Err("a stream's gap ends before it starts".into());
        }
        Ok(())
    }

    /// Judges the end: every connection announced came.
    pub fn end(&self) -> Result<(), String> {
        if self.parts_left > 0 {
            return Err("the connections came before the history's last part".into());
        }
        if self.taken != self.announced {
            return Err(format!(
                "{} connections announced, {} came",
                self.announced, self.taken
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::history::History;
    use crate::node::handover::wire::{plan_history, HistoryHead, StreamState};
    use bytes::Bytes;
    use std::time::Instant;

    const LIMITS: Limits = Limits {
        history_bytes: 64 << 10,
        max_streams: 10,
        max_connections: 100,
        h2_max_streams: 100,
    };

    fn state(history: Option<HistoryHead>, connections: u32) -> State {
        State {
            last_id: EventId::local(10),
            epoch: None,
            history,
            heartbeats: 0,
            connections,
        }
    }

    fn head(parts: u32, bytes: u64) -> Option<HistoryHead> {
        Some(HistoryHead {
            forgotten_through: EventId::ZERO,
            parts,
            bytes,
        })
    }

    fn frame(id: u64) -> (EventId, u32, Bytes) {
        let id = EventId::local(id);
        (id, 0, sse::encode_event(id, None, None, "x"))
    }

    fn stream(topics: &[&str]) -> Record {
        Record {
            shard: 0,
            tail: Bytes::new(),
            kind: Kind::Stream(StreamState {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                after: EventId::local(10),
                announced: EventId::local(10),
                replaying: false,
                gap: None,
                losing_ms: None,
                expires: None,
            }),
        }
    }

    #[test]
    fn counts_are_held_to_this_process_limits() {
        assert!(Intake::new(&LIMITS, &state(None, u32::MAX))
            .unwrap_err()
            .contains("open-files limit"));
        let too_much = LIMITS.image_bytes() + 1;
        assert!(Intake::new(&LIMITS, &state(head(1, too_much), 0))
            .unwrap_err()
            .contains("more than this process takes"));
        assert!(Intake::new(&LIMITS, &state(head(u32::MAX, 100), 0)).is_err());
        let cluster = Limits {
            history_bytes: 0,
            ..LIMITS
        };
        assert!(Intake::new(&cluster, &state(head(1, 100), 0)).is_err());
        assert!(offer(&cluster, &Offer { history_bytes: 1 }).is_err());
        assert!(offer(
            &LIMITS,
            &Offer {
                history_bytes: 64 << 10
            }
        )
        .is_ok());
    }

    #[test]
    fn history_parts_are_checked_like_requests_and_in_order() {
        let part = |topic: &str, frames: Vec<(EventId, u32, Bytes)>| HistoryPart {
            topics: vec![(topic.into(), EventId::ZERO)],
            frames,
        };
        let intake = || Intake::new(&LIMITS, &state(head(3, 10_000), 0)).unwrap();
        let mut ok = intake();
        assert!(ok.history(part("t", vec![frame(1), frame(2)])).is_ok());
        assert!(ok.history(part("u", vec![frame(3)])).is_ok());
        for (bad, why) in [
            (part("a\nb", vec![]), "topic must be"),
            (part(&"t".repeat(129), vec![]), "topic must be"),
            (part("t", vec![frame(2), frame(1)]), "out of order"),
            (part("t", vec![frame(11)]), "after the last id"),
            (
                part("t", vec![(EventId::local(1), 1, frame(1).2)]),
                "names no topic",
            ),
            (
                part(
                    "t",
                    vec![(EventId::local(1), 0, Bytes::from_static(b"retry: 0\n\n"))],
                ),
                "not one event",
            ),
        ] {
            let err = intake().history(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        // More parts, or more bytes, than announced.
        let mut one = Intake::new(&LIMITS, &state(head(1, 10_000), 0)).unwrap();
        one.history(part("t", vec![])).unwrap();
        assert!(one.history(part("t", vec![])).is_err());
        let mut small = Intake::new(&LIMITS, &state(head(1, 10), 0)).unwrap();
        assert!(small.history(part("t", vec![frame(1)])).is_err());
    }

    /// An h2c connection with streams 1 and 3 open, carrying `carried` (id, topics).
    fn h2(carried: &[(u32, &[&str])]) -> Record {
        use crate::node::handover::wire::{H2Conn, H2Stream};
        use crate::wire::h2::conn::{Image, StreamImage};
        let open = |id| StreamImage {
            id,
            send_window: 65_535,
            recv_window: 65_535,
            body_left: u32::MAX,
            remote_closed: true,
            local_closed: false,
        };
        Record {
            shard: 0,
            tail: Bytes::new(),
            kind: Kind::H2(H2Conn {
                conn: Image {
                    advertised_window: 65_535,
                    send_window: 65_535,
                    recv_window: 65_535,
                    peer_window: 65_535,
                    peer_max_frame: 16_384,
                    last_stream: 3,
                    head_sent: true,
                    streams: vec![open(1), open(3)],
                    decoder: Default::default(),
                },
                streams: carried
                    .iter()
                    .map(|(id, topics)| {
                        let Kind::Stream(state) = stream(topics).kind else {
                            unreachable!()
                        };
                        H2Stream {
                            id: *id,
                            starved: false,
                            state,
                        }
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn h2c_connections_are_judged_whole_and_their_streams_like_requests() {
        let intake = || Intake::new(&LIMITS, &state(None, 1)).unwrap();
        for (bad, why) in [
            (h2(&[(5, &["a"])]), "not open"),
            (h2(&[(1, &["a"]), (1, &["b"])]), "named twice"),
            (h2(&[(1, &["a\nb"])]), "topic must be"),
            (h2(&[(1, &[])]), "no topic"),
        ] {
            let err = intake().connections(&mut [bad]).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let mut spoiled = h2(&[(1, &["a"])]);
        if let Kind::H2(h2) = &mut spoiled.kind {
            h2.conn.decoder.max_size = 1 << 20;
        }
        let err = intake().connections(&mut [spoiled]).unwrap_err();
        assert!(err.contains("HPACK"), "{err}");
        let mut fewer = Intake::new(
            &Limits {
                h2_max_streams: 1,
                ..LIMITS
            },
            &state(None, 1),
        )
        .unwrap();
        let err = fewer.connections(&mut [h2(&[(1, &["a"])])]).unwrap_err();
        assert!(err.contains("--h2-max-streams"), "{err}");
        let mut good = [h2(&[(1, &["a", "b", "a"]), (3, &["c"])])];
        intake().connections(&mut good).unwrap();
        assert!(matches!(&good[0].kind, Kind::H2(h2) if h2.streams[0].state.topics == ["a", "b"]));
    }

    #[test]
    fn streams_are_checked_like_requests_and_counted() {
        let intake = || Intake::new(&LIMITS, &state(None, 2)).unwrap();
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        for (bad, why) in [
            (stream(&["a\nb"]), "topic must be"),
            (stream(&[&"t".repeat(129)]), "topic must be"),
            (stream(&many), "at most 32 topics"),
            (stream(&[]), "no topic"),
        ] {
            let err = intake().connections(&mut [bad]).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let mut ahead = stream(&["t"]);
        if let Kind::Stream(s) = &mut ahead.kind {
            s.after = EventId::local(11);
        }
        // The embedded broker's streams only: a cluster one may wait for an id.
        let mut embedded = Intake::new(&LIMITS, &state(head(0, 0), 1)).unwrap();
        assert!(embedded.connections(&mut [ahead.clone()]).is_err());
        assert!(intake().connections(&mut [ahead]).is_ok());
        // Duplicates go, as a request's do.
        let mut twice = [stream(&["a", "b", "a"])];
        let mut counted = intake();
        counted.connections(&mut twice).unwrap();
        assert!(matches!(&twice[0].kind, Kind::Stream(s) if s.topics == ["a", "b"]));
        assert!(counted.end().is_err(), "one of two announced");
        counted.connections(&mut [stream(&["c"])]).unwrap();
        counted.end().unwrap();
        assert!(counted.connections(&mut [stream(&["c"])]).is_err());
    }

    /// A history kept to its budget, in the shapes that cost a part the most per byte
    /// charged: the smallest frames, each of another topic with the longest name, so every
    /// part names again the topics of its frames.
    #[test]
    fn a_full_history_fits_in_what_a_successor_with_the_same_flags_takes() {
        let now = Instant::now();
        // No stream holds a topic here: the budget alone bounds them.
        let limits = Limits {
            max_streams: 0,
            ..LIMITS
        };
        for (topics, name) in [(1usize, 1usize), (7, 128), (5000, 128)] {
            let mut history = History::new(1024, limits.history_bytes, 64 << 20);
            for i in 1..20_000u64 {
                let topic = format!("{:x>name$}", i as usize % topics);
                let id = EventId::local(i);
                history.record(&topic, id, &sse::encode_event(id, None, None, ""), now);
            }
            let image = history.image();
            let plan = plan_history(&image, 4096, 4096).unwrap();
            assert!(
                plan.bytes() <= limits.image_bytes(),
                "{topics} topics: {} > {}",
                plan.bytes(),
                limits.image_bytes()
            );
        }
    }
}
