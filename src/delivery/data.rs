//! A delivery's frame as HTTP/2 DATA frames, for every stream of a shard at the cost of one
//! delivery: the payload stays the one shared `Bytes`, and only the 9-byte frame headers
//! differ per stream.
//!
//! [`DataHeaders`] is the shard's, prepared once per delivery. The headers of streams 1, 3,
//! 5, … (for each, one per frame of at most [`MAX_FRAME`] bytes) are written into one small
//! buffer, built when the first stream needs it and up to the largest stream id met so far,
//! so a stream's header is a `slice` of it (a reference count, not an allocation). Stream 1,
//! the only stream of most connections (a browser tab, the loadtest's h2c streams), gets the
//! whole frame baked into one `Bytes` (its headers and the payload, copied once per delivery
//! per shard), so its outbox holds one frame inline, as an HTTP/1.1 stream's does.

use bytes::Bytes;

use crate::delivery::outbox::Outbox;
use crate::wire::h2::frame::{data_header, HEADER_LEN};

/// The largest DATA payload the edge sends (SETTINGS_MAX_FRAME_SIZE's floor: every peer takes
/// it, and a larger frame would only save 9 bytes per 16 KiB).
pub const MAX_FRAME: usize = 16_384;

/// Stream ids whose headers one delivery's buffer holds at most (1 to 2 × this): a buffer of
/// 9 bytes per id per frame. A stream above it (a client that opened thousands of streams on
/// one connection) gets its headers allocated per frame: correct, only slower.
pub const CACHED_IDS: u32 = 4096;

/// Frames `len` payload bytes take (one for an empty payload).
pub fn frames(len: usize) -> usize {
    len.div_ceil(MAX_FRAME).max(1)
}

/// Bytes `len` payload bytes take on the wire as DATA frames.
pub fn wire_len(len: usize) -> usize {
    len.saturating_add(HEADER_LEN * frames(len))
}

/// The DATA frame headers of the delivery in course, for every stream id up to the largest
/// met (see the module's doc).
#[derive(Debug, Default)]
pub struct DataHeaders {
    /// The delivery's payload (None between deliveries).
    frame: Option<Bytes>,
    /// For ids 1, 3, 5, … in turn, the headers of each of the payload's frames.
    headers: Bytes,
    /// Ids (by index: (id - 1) / 2) whose headers `headers` holds.
    ids: u32,
    /// Stream 1's DATA frames, headers and payload in one buffer.
    baked: Option<Bytes>,
    /// The most ids a delivery has needed: the next builds this many at once.
    wanted: u32,
}

impl DataHeaders {
    /// Starts a delivery of `frame` (nothing is built until a stream needs it).
    pub fn prepare(&mut self, frame: &Bytes) {
        self.frame = Some(frame.clone());
        self.headers = Bytes::new();
        self.ids = 0;
        self.baked = None;
    }

    /// Ends the delivery: its buffers go once the outboxes are done with them.
    pub fn finish(&mut self) {
        self.frame = None;
        self.headers = Bytes::new();
        self.ids = 0;
        self.baked = None;
    }

    fn is_for(&self, frame: &Bytes) -> bool {
        self.frame
            .as_ref()
            .is_some_and(|f| f.as_ptr() == frame.as_ptr() && f.len() == frame.len())
    }

    /// Queues `frame` for stream `id` as DATA frames (without END_STREAM) in `outbox`;
    /// returns the bytes queued. The delivery's own frame costs no allocation per stream;
    /// any other (a notice, a replayed frame) allocates its headers.
    pub fn push(&mut self, outbox: &mut Outbox, id: u32, frame: Bytes) -> usize {
        let len = frame.len();
        if len == 0 {
            return 0;
        }
        let count = frames(len);
        let index = id.saturating_sub(1) / 2;
        if self.is_for(&frame) {
            if id == 1 {
                let baked = self.baked.get_or_insert_with(|| bake(&frame));
                outbox.push(baked.clone());
                return baked.len();
            }
            if index < CACHED_IDS {
                if index >= self.ids {
                    self.build(index + 1, len);
                }
                let per_id = HEADER_LEN * count;
                let at = index as usize * per_id;
                for (i, chunk) in chunks(len).enumerate() {
                    let h = at + i * HEADER_LEN;
                    outbox.push(self.headers.slice(h..h + HEADER_LEN));
                    outbox.push(frame.slice(chunk));
                }
                return wire_len(len);
            }
        }
        for chunk in chunks(len) {
            let header = data_header(id, (chunk.end - chunk.start) as u32, false);
            outbox.push(Bytes::copy_from_slice(&header));
            outbox.push(frame.slice(chunk));
        }
        wire_len(len)
    }

    /// Builds the headers of at least `ids` ids (the most any delivery needed so far), for a
    /// payload of `len` bytes.
    fn build(&mut self, ids: u32, len: usize) {
        self.wanted = self.wanted.max(ids).min(CACHED_IDS);
        let ids = self.wanted.max(ids);
        let mut buf = Vec::with_capacity(ids as usize * HEADER_LEN * frames(len));
        for index in 0..ids {
            let id = index * 2 + 1;
            for chunk in chunks(len) {
                buf.extend_from_slice(&data_header(id, (chunk.end - chunk.start) as u32, false));
            }
        }
        self.headers = Bytes::from(buf);
        self.ids = ids;
    }
}

/// The payload ranges of each DATA frame of a `len`-byte payload.
fn chunks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..frames(len)).map(move |i| i * MAX_FRAME..((i + 1) * MAX_FRAME).min(len))
}

/// Stream 1's DATA frames of `frame`, headers and payload in one buffer.
fn bake(frame: &Bytes) -> Bytes {
    let mut buf = Vec::with_capacity(wire_len(frame.len()));
    for chunk in chunks(frame.len()) {
        buf.extend_from_slice(&data_header(1, (chunk.end - chunk.start) as u32, false));
        buf.extend_from_slice(frame.get(chunk).unwrap_or_default());
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::h2::frame::Header;

    fn written(outbox: &mut Outbox) -> Vec<u8> {
        let mut out = Vec::new();
        outbox.write_to(&mut out).unwrap();
        out
    }

    /// Reads DATA frames back: (stream, payload) each.
    fn read(mut wire: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let h = Header::parse(wire[..HEADER_LEN].try_into().unwrap());
            let end = HEADER_LEN + h.len as usize;
            assert_eq!(h.kind, 0);
            frames.push((h.stream, wire[HEADER_LEN..end].to_vec()));
            wire = &wire[end..];
        }
        frames
    }

    #[test]
    fn every_stream_gets_the_same_payload_under_its_own_headers_split_at_16_kib() {
        for len in [1, 100, MAX_FRAME, MAX_FRAME + 1, 3 * MAX_FRAME + 7] {
            let payload = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let mut cache = DataHeaders::default();
            cache.prepare(&payload);
            for id in [1, 3, 5, 99, 2 * CACHED_IDS + 1, 2 * CACHED_IDS + 3] {
                let mut outbox = Outbox::default();
                let n = cache.push(&mut outbox, id, payload.clone());
                let wire = written(&mut outbox);
                assert_eq!(n, wire.len());
                let frames = read(&wire);
                assert_eq!(frames.len(), frames_of(len));
                assert!(frames.iter().all(|(s, p)| *s == id && p.len() <= MAX_FRAME));
                let joined: Vec<u8> = frames.into_iter().flat_map(|(_, p)| p).collect();
                assert_eq!(joined, payload[..]);
            }
        }
    }

    fn frames_of(len: usize) -> usize {
        frames(len)
    }

    #[test]
    fn a_frame_that_is_not_the_delivery_s_is_framed_too() {
        let mut cache = DataHeaders::default();
        cache.prepare(&Bytes::from_static(b"event"));
        let mut outbox = Outbox::default();
        cache.push(&mut outbox, 3, Bytes::from_static(b"notice"));
        assert_eq!(read(&written(&mut outbox)), vec![(3, b"notice".to_vec())]);
    }
}
