//! One HTTP/2 connection's node-side state: the sans-IO protocol state
//! ([`crate::wire::h2::conn::Connection`]), the streams it carries (by id and slab key), the
//! requests whose bodies are still arriving, publishes waiting for the broker, and answers
//! whose bodies wait for the peer's window. Boxed in [`crate::node::client::Protocol::Http2`]
//! so that a connection that speaks HTTP/1.1 pays nothing for it.

use std::cell::Cell;

use bytes::Bytes;

use crate::auth::access::StreamGrant;
use crate::wire::h2::conn::{Connection, Limits};
use crate::wire::http::Head;

/// An HTTP/2 connection's state beside its socket.
#[derive(Debug)]
pub struct H2 {
    /// The protocol state: frames, windows, defences.
    pub conn: Connection,
    /// The event streams it carries, sorted by slab key (the fan-out finds a stream's entry
    /// by its key, by binary search).
    pub streams: Vec<Carried>,
    /// Requests whose heads were judged and whose bodies are still arriving (publishes).
    pub bodies: Vec<Body>,
    /// Publishes sent to the broker, whose answers are owed (by the publish's serial).
    pub awaiting: Vec<Owed>,
    /// Answers whose bodies wait for the peer's window, in order.
    pub unsent: Vec<(u32, Bytes)>,
    /// Until the handshake is settled (preface, SETTINGS both ways): when to give up, in
    /// the shard's ticks.
    pub deadline: Option<std::time::Instant>,
}

/// An event stream an HTTP/2 connection carries.
#[derive(Debug)]
pub struct Carried {
    /// Its id on the connection.
    pub id: u32,
    /// Its key in the shard's slab of streams.
    pub key: u32,
    /// Its own serial (stream keys are reused, and so are connections' streams): replay
    /// tickets and token expiries name it.
    pub serial: u32,
    /// [`crate::delivery::stream::STARVED`] | [`crate::delivery::stream::ACTIVE`].
    pub flags: Cell<u8>,
}

/// A request whose body is still arriving.
#[derive(Debug)]
pub struct Body {
    /// Its stream id.
    pub id: u32,
    /// Its head, judged allowed; None for a request already answered (refused from its
    /// head), whose body is read and dropped as HTTP/1.1's is: cutting it short with
    /// RST_STREAM(NO_ERROR) makes some clients lose the answer (curl 7.88: error 92).
    pub head: Option<Box<Head>>,
    /// Body bytes read and dropped so far (a refused request's), at most `--max-body`.
    pub dropped: usize,
    /// What its head was granted.
    pub grant: Option<StreamGrant>,
    /// The body so far (at most `--max-body`).
    pub bytes: Vec<u8>,
}

/// A publish whose answer is owed to a stream.
#[derive(Debug)]
pub struct Owed {
    /// The publish's serial (its ticket's).
    pub serial: u32,
    /// The stream to answer on.
    pub id: u32,
    /// The topic, for the answer.
    pub topic: String,
}

impl H2 {
    /// A connection whose preface is arriving; our SETTINGS are queued.
    pub fn new(limits: &Limits, deadline: std::time::Instant) -> H2 {
        H2 {
            conn: Connection::new(limits),
            streams: Vec::new(),
            bodies: Vec::new(),
            awaiting: Vec::new(),
            unsent: Vec::new(),
            deadline: Some(deadline),
        }
    }

    /// The stream it carries under id `id`.
    pub fn by_id(&self, id: u32) -> Option<&Carried> {
        self.streams.iter().find(|c| c.id == id)
    }

    /// The stream it carries under slab key `key`.
    pub fn by_key(&self, key: usize) -> Option<&Carried> {
        let i = self
            .streams
            .binary_search_by_key(&key, |c| c.key as usize)
            .ok()?;
        self.streams.get(i)
    }

    /// Starts carrying `carried` (kept in key order).
    pub fn carry(&mut self, carried: Carried) {
        if self.streams.len() == self.streams.capacity() {
            // Grow by little: most connections carry one or a few streams.
            self.streams.reserve_exact((self.streams.len() / 2).max(1));
        }
        let at = self.streams.partition_point(|c| c.key < carried.key);
        self.streams.insert(at, carried);
    }

    /// Forgets the stream of slab key `key`; returns its id and serial.
    pub fn drop_key(&mut self, key: usize) -> Option<(u32, u32)> {
        let i = self
            .streams
            .binary_search_by_key(&key, |c| c.key as usize)
            .ok()?;
        let c = self.streams.remove(i);
        if self.streams.is_empty() {
            self.streams = Vec::new();
        }
        Some((c.id, c.serial))
    }

    /// Whether a request on it is owed an answer (a drain waits for it).
    pub fn owes_answers(&self) -> bool {
        self.bodies.iter().any(|b| b.head.is_some())
            || !self.awaiting.is_empty()
            || !self.unsent.is_empty()
    }

    /// Heap bytes it holds beyond its box (for the memory budget).
    pub fn heap_bytes(&self) -> usize {
        self.conn.heap_bytes()
            + self.streams.capacity() * std::mem::size_of::<Carried>()
            + self.bodies.capacity() * std::mem::size_of::<Body>()
            + self.awaiting.capacity() * std::mem::size_of::<Owed>()
            + self.unsent.capacity() * std::mem::size_of::<(u32, Bytes)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// What an idle HTTP/2 connection and its streams cost beyond HTTP/1.1's tables (the
    /// integration test `tests/h2_memory.rs` measures the same live, with the allocator).
    #[test]
    fn an_idle_h2_connection_and_its_streams_fit_their_budget() {
        // The box: the protocol state (152, see conn.rs), four lists (24 each), the
        // handshake's deadline (16).
        assert_eq!(size_of::<Connection>(), 152);
        assert_eq!(size_of::<H2>(), 264);
        // Per stream: its entry here (16) and in the protocol state (20); the stream's slab
        // entry (24) and its two 4-byte slots are HTTP/1.1's too.
        assert_eq!(size_of::<Carried>(), 16);
        let per_stream = size_of::<Carried>() + 20 + 24 + 8;
        assert!(per_stream <= 128, "{per_stream}");
        // A connection with one stream: its slab entry (72 in release builds), the box, one
        // stream's entries (lists grown exactly).
        let mut h2 = H2::new(&Limits::default(), std::time::Instant::now());
        let _ = h2.conn.take_output();
        assert_eq!(h2.heap_bytes(), 0, "an idle connection holds no buffer");
        let one = 72 + size_of::<H2>() + per_stream;
        assert!(one <= 512, "{one}");
    }
}
