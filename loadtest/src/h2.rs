//! The client side of HTTP/2 (RFC 9113), sans-IO: bytes in, events and bytes out.
//!
//! Just what a load generator of SSE streams needs: the client preface and SETTINGS, one GET
//! per stream (HEADERS, HPACK literals without indexing), the answers' heads (decoded with
//! sse-edge's own HPACK decoder: a server may use its dynamic table and Huffman), DATA handed
//! to the caller as it arrives, RST_STREAM and GOAWAY reported, SETTINGS acknowledged and PING
//! answered. Frames and HPACK come from `sse_edge::wire::h2`, tested there against RFC 9113
//! and RFC 7541 (Appendix C) and fuzzed; this module is the client's state only.
//!
//! # Flow control
//!
//! The loadtest must never be the slow reader: its stream windows are
//! [`WINDOW`] (16 MiB, by SETTINGS_INITIAL_WINDOW_SIZE) and so is its connection window (a
//! WINDOW_UPDATE on stream 0 right after the preface, since SETTINGS cannot raise it). DATA is
//! consumed the moment it is read, so its bytes are given back by WINDOW_UPDATE once half a
//! window has been consumed: a few bytes per 8 MiB, never one update per frame.

use std::collections::HashMap;

use sse_edge::wire::h2::frame::{self, setting, Frame, Header, HEADER_LEN};
use sse_edge::wire::h2::hpack::{self, Decoded, Decoder, HeaderList};
use sse_edge::wire::h2::{ErrorCode, H2Error};

/// Our stream and connection windows: large, so that the server never waits on us.
pub const WINDOW: u32 = 16 << 20;
/// Consumed bytes given back in one WINDOW_UPDATE: half a window, so it never closes.
const UPDATE_AT: u32 = WINDOW / 2;
/// Largest header block (HEADERS and its CONTINUATIONs) we gather: a response head is a few
/// hundred bytes; this bounds a server that never ends one.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest decoded header list we keep (SETTINGS_MAX_HEADER_LIST_SIZE, advertised).
pub const MAX_HEADER_LIST: u32 = 64 * 1024;

/// What the connection tells the worker, in the order the frames came.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A stream's final response head (1xx heads are skipped).
    Head {
        /// The stream.
        stream: u32,
        /// `:status` (0 when it was missing or not a number: a bad response).
        status: u16,
        /// The answer has no body.
        end_stream: bool,
    },
    /// Body bytes of a stream (trailers end a body as an empty `Data` with `end_stream`).
    Data {
        /// The stream.
        stream: u32,
        /// The bytes, padding removed.
        data: &'a [u8],
        /// The server ended the stream.
        end_stream: bool,
    },
    /// The server reset a stream (or we did, for its error).
    Reset {
        /// The stream.
        stream: u32,
        /// Why.
        code: ErrorCode,
    },
    /// The server goes away: our streams above `last_stream` were not processed and may be
    /// opened again elsewhere; it opens no more.
    GoAway {
        /// The last of our streams it processed (or may still).
        last_stream: u32,
        /// Why.
        code: ErrorCode,
    },
}

/// What this end knows of one open stream.
#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    /// DATA bytes consumed and not yet given back.
    consumed: u32,
    /// Its final head arrived (a later HEADERS is its trailers).
    head: bool,
}

/// A header block being gathered (HEADERS, then CONTINUATION until END_HEADERS).
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// One HTTP/2 client connection's protocol state.
#[derive(Debug)]
pub struct Client {
    /// Bytes read but not yet a whole frame.
    partial: Vec<u8>,
    /// Frames to send, in order.
    out: Vec<u8>,
    /// Open streams (ours, odd ids).
    streams: HashMap<u32, Stream>,
    block: Option<Block>,
    decoder: Decoder,
    list: HeaderList,
    /// The id of the next stream we open.
    next_stream: u32,
    /// Connection-level bytes consumed and not yet given back.
    consumed: u32,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (unbounded until it says).
    peer_max_streams: u32,
    /// The server's SETTINGS_MAX_FRAME_SIZE, for our HEADERS.
    peer_max_frame: u32,
    /// The server's GOAWAY came: no new streams here.
    gone: bool,
    /// A connection error ended it (only our GOAWAY is left to send).
    failed: bool,
    /// The server set SETTINGS_HEADER_TABLE_SIZE: our next block must open with a table size
    /// update (RFC 7541 §4.2), or a server that checks (sse-edge does) fails the connection.
    size_update_due: bool,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A connection whose preface, SETTINGS and connection WINDOW_UPDATE are queued.
    pub fn new() -> Client {
        let mut out = frame::PREFACE.to_vec();
        frame::write_settings(
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, WINDOW),
                (setting::MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            ],
            &mut out,
        );
        frame::write_window_update(0, WINDOW - frame::DEFAULT_WINDOW, &mut out);
        Client {
            partial: Vec::new(),
            out,
            streams: HashMap::new(),
            block: None,
            decoder: Decoder::default(),
            list: HeaderList::default(),
            next_stream: 1,
            consumed: 0,
            peer_max_streams: u32::MAX,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            gone: false,
            failed: false,
            size_update_due: false,
        }
    }

    /// Whether a new stream may open here now: not gone, not failed, ids left, and under the
    /// server's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn can_open(&self) -> bool {
        !self.gone
            && !self.failed
            && self.next_stream <= frame::MAX_WINDOW
            && (self.streams.len() as u64) < u64::from(self.peer_max_streams)
    }

    /// Opens a stream with a GET whose fields `block` holds (an HPACK block from
    /// [`request_block`]); `None` when [`Client::can_open`] is false.
    pub fn open(&mut self, block: &[u8]) -> Option<u32> {
        if !self.can_open() {
            return None;
        }
        let stream = self.next_stream;
        self.next_stream += 2;
        if self.size_update_due {
            // Size 0: our encoder never indexes, so no table at all is the truth.
            self.size_update_due = false;
            let mut first = Vec::with_capacity(block.len() + 1);
            hpack::encode_size_update(0, &mut first);
            first.extend_from_slice(block);
            frame::write_headers(stream, &first, true, self.peer_max_frame, &mut self.out);
        } else {
            frame::write_headers(stream, block, true, self.peer_max_frame, &mut self.out);
        }
        self.streams.insert(stream, Stream::default());
        Some(stream)
    }

    /// Cancels a stream we no longer want (RST_STREAM CANCEL); unknown ones are ignored.
    pub fn cancel(&mut self, stream: u32) {
        if self.streams.remove(&stream).is_some() && !self.failed {
            frame::write_rst_stream(stream, ErrorCode::Cancel, &mut self.out);
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether the server sent GOAWAY.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Bytes queued to send.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the first `n` bytes of the output: they were written.
    pub fn sent(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.drain(..n);
    }

    /// Takes every byte queued to send.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feeds bytes read from the server; what they mean goes to `on_event`, in order. `Err`
    /// is a connection error: a GOAWAY is queued (send it, then close); every open stream is
    /// lost.
    pub fn recv(
        &mut self,
        input: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ErrorCode> {
        if self.failed {
            return Err(ErrorCode::ProtocolError);
        }
        let mut partial = std::mem::take(&mut self.partial);
        let result = if partial.is_empty() {
            let used = self.frames(input, on_event);
            used.map(|used| partial.extend_from_slice(input.get(used..).unwrap_or_default()))
        } else {
            partial.extend_from_slice(input);
            let used = self.frames(&partial, on_event);
            used.map(|used| {
                partial.drain(..used.min(partial.len()));
            })
        };
        match result {
            Ok(()) => {
                // Bounded: `frames` reads every whole frame, and refuses one over our size.
                self.partial = partial;
                if self.partial.is_empty() {
                    self.partial = Vec::new();
                }
                Ok(())
            }
            Err(code) => {
                self.failed = true;
                frame::write_goaway(0, code, &mut self.out);
                self.streams.clear();
                Err(code)
            }
        }
    }

    /// Reads every whole frame at the start of `bytes`; returns how many bytes they took.
    fn frames(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<usize, ErrorCode> {
        let mut at = 0usize;
        loop {
            let Some(head) = bytes.get(at..at.saturating_add(HEADER_LEN)) else {
                return Ok(at);
            };
            let Ok(head) = <&[u8; HEADER_LEN]>::try_from(head) else {
                return Ok(at);
            };
            let header = Header::parse(head);
            // We advertise the default SETTINGS_MAX_FRAME_SIZE (§4.2).
            if header.len > frame::DEFAULT_MAX_FRAME_SIZE {
                return Err(ErrorCode::FrameSizeError);
            }
            let start = at + HEADER_LEN;
            let end = start + header.len as usize;
            let Some(payload) = bytes.get(start..end) else {
                return Ok(at);
            };
            match frame::parse(header, payload) {
                Ok(f) => self.on_frame(f, on_event)?,
                Err(H2Error::Connection(code)) => return Err(code),
                Err(H2Error::Stream(stream, code)) => {
                    if self.streams.remove(&stream).is_some() {
                        frame::write_rst_stream(stream, code, &mut self.out);
                        on_event(Event::Reset { stream, code });
                    }
                }
            }
            at = end;
        }
    }

    fn on_frame(
        &mut self,
        f: Frame<'_>,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ErrorCode> {
        // §6.10: a header block is contiguous; anything else in it is a connection error.
        if self.block.is_some() && !matches!(f, Frame::Continuation { .. }) {
            return Err(ErrorCode::ProtocolError);
        }
        match f {
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => {
                self.consumed = self.consumed.saturating_add(flow_len);
                if self.consumed >= UPDATE_AT {
                    frame::write_window_update(0, self.consumed, &mut self.out);
                    self.consumed = 0;
                }
                let Some(entry) = self.streams.get_mut(&stream) else {
                    // A stream we cancelled (or never opened): its bytes still count above.
                    return Ok(());
                };
                if !entry.head {
                    self.reset(stream, ErrorCode::ProtocolError, on_event);
                    return Ok(());
                }
                entry.consumed = entry.consumed.saturating_add(flow_len);
                if end_stream {
                    self.streams.remove(&stream);
                } else if entry.consumed >= UPDATE_AT {
                    frame::write_window_update(stream, entry.consumed, &mut self.out);
                    entry.consumed = 0;
                }
                on_event(Event::Data {
                    stream,
                    data,
                    end_stream,
                });
            }
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                ..
            } => {
                let block = Block {
                    stream,
                    end_stream,
                    bytes: fragment.to_vec(),
                };
                if end_headers {
                    self.on_block(block, on_event)?;
                } else {
                    self.block = Some(block);
                }
            }
            Frame::Continuation {
                stream,
                fragment,
                end_headers,
            } => {
                let Some(mut block) = self.block.take() else {
                    return Err(ErrorCode::ProtocolError);
                };
                if block.stream != stream {
                    return Err(ErrorCode::ProtocolError);
                }
                if block.bytes.len().saturating_add(fragment.len()) > MAX_HEADER_BLOCK {
                    return Err(ErrorCode::EnhanceYourCalm);
                }
                block.bytes.extend_from_slice(fragment);
                if end_headers {
                    self.on_block(block, on_event)?;
                } else {
                    self.block = Some(block);
                }
            }
            Frame::RstStream { stream, code } => {
                if self.streams.remove(&stream).is_some() {
                    on_event(Event::Reset {
                        stream,
                        code: ErrorCode::from_u32(code),
                    });
                }
            }
            Frame::Settings { ack: true, .. } => {}
            Frame::Settings { ack: false, params } => {
                for (id, value) in frame::settings(params) {
                    match id {
                        setting::MAX_CONCURRENT_STREAMS => self.peer_max_streams = value,
                        setting::MAX_FRAME_SIZE => self.peer_max_frame = value,
                        setting::HEADER_TABLE_SIZE => self.size_update_due = true,
                        _ => {}
                    }
                }
                frame::write_settings_ack(&mut self.out);
            }
            Frame::Ping {
                ack: false,
                payload,
            } => frame::write_ping(true, payload, &mut self.out),
            Frame::Ping { ack: true, .. } => {}
            Frame::GoAway { last_stream, code } => {
                self.gone = true;
                on_event(Event::GoAway {
                    last_stream,
                    code: ErrorCode::from_u32(code),
                });
            }
            // We send no DATA: the server's windows for it do not matter.
            Frame::WindowUpdate { .. } | Frame::Priority { .. } | Frame::Unknown => {}
            // We said SETTINGS_ENABLE_PUSH 0 (§8.4).
            Frame::PushPromise => return Err(ErrorCode::ProtocolError),
        }
        Ok(())
    }

    /// A whole header block: decoded whatever its stream (the HPACK table must stay in step),
    /// then a head, trailers, or nothing for a stream we no longer hold.
    fn on_block(
        &mut self,
        block: Block,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ErrorCode> {
        let decoded = self
            .decoder
            .decode(&block.bytes, MAX_HEADER_LIST, &mut self.list)
            .map_err(|_| ErrorCode::CompressionError)?;
        let stream = block.stream;
        let Some(entry) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if decoded == Decoded::TooLarge {
            self.reset(stream, ErrorCode::ProtocolError, on_event);
            return Ok(());
        }
        if entry.head {
            // Trailers: they carry nothing we use, and must end the stream.
            if !block.end_stream {
                self.reset(stream, ErrorCode::ProtocolError, on_event);
                return Ok(());
            }
            self.streams.remove(&stream);
            on_event(Event::Data {
                stream,
                data: &[],
                end_stream: true,
            });
            return Ok(());
        }
        let status = self
            .list
            .iter()
            .find(|(name, _)| *name == b":status")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && !block.end_stream {
            // Informational: the final head is still to come.
            return Ok(());
        }
        entry.head = true;
        if block.end_stream {
            self.streams.remove(&stream);
        }
        on_event(Event::Head {
            stream,
            status,
            end_stream: block.end_stream,
        });
        Ok(())
    }

    /// Resets a stream for its own error and tells the caller.
    fn reset(&mut self, stream: u32, code: ErrorCode, on_event: &mut impl FnMut(Event<'_>)) {
        self.streams.remove(&stream);
        frame::write_rst_stream(stream, code, &mut self.out);
        on_event(Event::Reset { stream, code });
    }
}

/// The HPACK block of a GET for an SSE stream: pseudo-headers, then `fields` (lower-case
/// names; connection-specific ones are the caller's to leave out), all literals without
/// indexing, so the server's decoder keeps no table for us.
pub fn request_block(
    scheme: &str,
    authority: &str,
    path: &str,
    fields: &[(String, String)],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + path.len() + authority.len());
    hpack::encode_field(b":method", b"GET", false, false, &mut b);
    hpack::encode_field(b":scheme", scheme.as_bytes(), false, false, &mut b);
    hpack::encode_field(b":path", path.as_bytes(), false, false, &mut b);
    hpack::encode_field(b":authority", authority.as_bytes(), false, false, &mut b);
    for (name, value) in fields {
        hpack::encode_field(name.as_bytes(), value.as_bytes(), false, false, &mut b);
    }
    b
}

/// Appends a `last-event-id` field to a request block.
pub fn add_last_event_id(block: &mut Vec<u8>, id: &str) {
    hpack::encode_field(b"last-event-id", id.as_bytes(), false, false, block);
}

/// Header fields HTTP/2 forbids (RFC 9113 §8.2.2), and `host` (`:authority` stands for it).
pub fn is_connection_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "host"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sse_edge::wire::h2::conn::{Connection, Event as ServerEvent, Limits};
    use sse_edge::wire::h2::frame::{flag, kind};

    /// What the client saw, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Head(u32, u16, bool),
        Data(u32, Vec<u8>, bool),
        Reset(u32, ErrorCode),
        GoAway(u32, ErrorCode),
    }

    fn own(e: Event<'_>) -> Seen {
        match e {
            Event::Head {
                stream,
                status,
                end_stream,
            } => Seen::Head(stream, status, end_stream),
            Event::Data {
                stream,
                data,
                end_stream,
            } => Seen::Data(stream, data.to_vec(), end_stream),
            Event::Reset { stream, code } => Seen::Reset(stream, code),
            Event::GoAway { last_stream, code } => Seen::GoAway(last_stream, code),
        }
    }

    /// sse-edge's own server state machine on one side, our client on the other, bytes
    /// carried by hand.
    struct Pair {
        server: Connection,
        limits: Limits,
        client: Client,
        requests: Vec<(u32, String)>,
        seen: Vec<Seen>,
    }

    impl Pair {
        fn new() -> Pair {
            let limits = Limits::default();
            Pair {
                server: Connection::new(&limits),
                limits,
                client: Client::new(),
                requests: Vec::new(),
                seen: Vec::new(),
            }
        }

        /// Client → server, then server → client, until both are quiet.
        fn exchange(&mut self) {
            for _ in 0..8 {
                let up = self.client.take_output();
                let mut events = Vec::new();
                if !up.is_empty() {
                    self.server.recv(&up, 0, &self.limits, &mut events).unwrap();
                }
                for e in events {
                    if let ServerEvent::Request { stream, head, .. } = e {
                        let path = String::from_utf8(head.path().to_vec()).unwrap();
                        self.requests.push((stream, path));
                    }
                }
                let down = self.server.take_output();
                match down {
                    Some(down) => self.deliver(&down),
                    None if up.is_empty() => return,
                    None => {}
                }
            }
        }

        fn deliver(&mut self, bytes: &[u8]) {
            let seen = &mut self.seen;
            self.client.recv(bytes, &mut |e| seen.push(own(e))).unwrap();
        }

        /// A 200 SSE head on `stream`, as the node sends it.
        fn answer(&mut self, stream: u32) {
            let mut block = Vec::new();
            hpack::encode_status(200, &mut block);
            hpack::encode_field(
                b"content-type",
                b"text/event-stream",
                false,
                false,
                &mut block,
            );
            self.server.send_head(stream, &block, false).unwrap();
        }

        /// DATA frames of `payload` on `stream`, as the server would write them.
        fn data(&mut self, stream: u32, payload: &[u8], end: bool) -> Vec<u8> {
            let mut wire = self
                .server
                .take_output()
                .map(|b| b.to_vec())
                .unwrap_or_default();
            let frames = self
                .server
                .send_data(stream, Bytes::copy_from_slice(payload), end)
                .unwrap();
            for (header, chunk) in frames {
                wire.extend_from_slice(&header);
                wire.extend_from_slice(&chunk);
            }
            wire
        }
    }

    fn get(path: &str) -> Vec<u8> {
        request_block(
            "http",
            "127.0.0.1:1",
            path,
            &[("accept".into(), "text/event-stream".into())],
        )
    }

    #[test]
    fn streams_open_on_the_crate_server_and_their_data_arrives() {
        let mut p = Pair::new();
        let a = p.client.open(&get("/stream?topic=a")).unwrap();
        let b = p.client.open(&get("/stream?topic=b")).unwrap();
        assert_eq!((a, b), (1, 3));
        p.exchange();
        assert_eq!(
            p.requests,
            vec![(1, "/stream?topic=a".into()), (3, "/stream?topic=b".into())]
        );
        p.answer(a);
        p.answer(b);
        let wire = p.data(b, b": connected\n\nid: 1\ndata: x\n\n", false);
        p.deliver(&wire);
        assert_eq!(
            p.seen,
            vec![
                Seen::Head(1, 200, false),
                Seen::Head(3, 200, false),
                Seen::Data(3, b": connected\n\nid: 1\ndata: x\n\n".to_vec(), false),
            ]
        );
        // The server learnt our windows: 16 MiB for a stream's DATA and for the connection,
        // less what it sent on the other stream.
        let sent = b": connected\n\nid: 1\ndata: x\n\n".len() as u32;
        assert_eq!(p.server.send_window(a), Some(WINDOW - sent));
        assert_eq!(p.server.connection_window(), (WINDOW - sent) as i32);
    }

    #[test]
    fn streams_opened_after_the_server_settings_open_with_a_table_size_update() {
        // sse-edge advertises SETTINGS_HEADER_TABLE_SIZE 0 and holds the first block after our
        // ACK to RFC 7541 §4.2: it must open with a size update, or the connection fails.
        let mut p = Pair::new();
        p.client.open(&get("/stream?first")).unwrap();
        p.exchange();
        let later = p.client.open(&get("/stream?later")).unwrap();
        let again = p.client.open(&get("/stream?again")).unwrap();
        p.exchange();
        assert_eq!(
            p.requests,
            vec![
                (1, "/stream?first".into()),
                (later, "/stream?later".into()),
                (again, "/stream?again".into())
            ]
        );
        assert!(
            p.seen.iter().all(|s| !matches!(s, Seen::GoAway(..))),
            "{:?}",
            p.seen
        );
    }

    #[test]
    fn the_server_settings_are_acked_and_its_pings_answered() {
        let mut p = Pair::new();
        p.exchange();
        // The server's SETTINGS were read; its ACK of ours too (it counts them as applied).
        let mut ping = Header {
            len: 8,
            kind: kind::PING,
            flags: 0,
            stream: 0,
        }
        .encode()
        .to_vec();
        ping.extend_from_slice(b"12345678");
        p.deliver(&ping);
        let out = p.client.take_output();
        let mut pong = Header {
            len: 8,
            kind: kind::PING,
            flags: flag::ACK,
            stream: 0,
        }
        .encode()
        .to_vec();
        pong.extend_from_slice(b"12345678");
        assert_eq!(out, pong);
    }

    #[test]
    fn data_split_at_every_point_reads_as_the_whole() {
        let mut p = Pair::new();
        let s = p.client.open(&get("/stream")).unwrap();
        p.exchange();
        p.answer(s);
        let mut wire = p.server.take_output().unwrap().to_vec();
        wire.extend(p.data(s, b"data: one\n\n", false));
        wire.extend(p.data(s, b"data: two\n\n", false));
        for cut in 0..wire.len() {
            let mut c = Client::new();
            assert_eq!(c.open(&get("/stream")), Some(1));
            let mut body = Vec::new();
            let mut heads = 0;
            let mut on = |e: Event<'_>| match e {
                Event::Head { .. } => heads += 1,
                Event::Data { data, .. } => body.extend_from_slice(data),
                other => panic!("{other:?}"),
            };
            c.recv(&wire[..cut], &mut on).unwrap();
            c.recv(&wire[cut..], &mut on).unwrap();
            assert_eq!(
                (heads, body.as_slice()),
                (1, &b"data: one\n\ndata: two\n\n"[..])
            );
        }
    }

    /// A frame written by hand.
    fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Header {
            len: payload.len() as u32,
            kind,
            flags,
            stream,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn head_200() -> Vec<u8> {
        let mut block = Vec::new();
        hpack::encode_status(200, &mut block);
        block
    }

    fn run(c: &mut Client, wire: &[u8]) -> Result<Vec<Seen>, ErrorCode> {
        let mut seen = Vec::new();
        c.recv(wire, &mut |e| seen.push(own(e)))?;
        Ok(seen)
    }

    #[test]
    fn padding_is_removed_and_counted_for_flow_control() {
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        c.take_output();
        let mut wire = raw(kind::HEADERS, flag::END_HEADERS, 1, &head_200());
        // Pad length 3, then "hi", then three bytes of padding.
        wire.extend(raw(kind::DATA, flag::PADDED, 1, b"\x03hi\0\0\0"));
        let seen = run(&mut c, &wire).unwrap();
        assert_eq!(
            seen,
            vec![
                Seen::Head(1, 200, false),
                Seen::Data(1, b"hi".to_vec(), false)
            ]
        );
        // A padded HEADERS too.
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        let mut padded = vec![2u8];
        padded.extend(head_200());
        padded.extend([0, 0]);
        let seen = run(
            &mut c,
            &raw(kind::HEADERS, flag::END_HEADERS | flag::PADDED, 1, &padded),
        );
        assert_eq!(seen.unwrap(), vec![Seen::Head(1, 200, false)]);
    }

    #[test]
    fn a_head_in_continuations_is_gathered_and_an_interleaved_frame_fails() {
        // sse-edge's own server splits a block over CONTINUATION past the frame size; here a
        // block cut in three by hand, with a Huffman-coded and an indexed field.
        let mut block = head_200();
        hpack::encode_field(
            b"content-type",
            b"text/event-stream",
            false,
            true,
            &mut block,
        );
        hpack::encode_field(b"x-long", &[b'v'; 100], false, true, &mut block);
        let (one, rest) = block.split_at(1);
        let (two, three) = rest.split_at(3);
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        let mut wire = raw(kind::HEADERS, 0, 1, one);
        wire.extend(raw(kind::CONTINUATION, 0, 1, two));
        wire.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, three));
        assert_eq!(run(&mut c, &wire).unwrap(), vec![Seen::Head(1, 200, false)]);

        // Anything between HEADERS and its last CONTINUATION ends the connection (§6.10).
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        c.take_output();
        let mut wire = raw(kind::HEADERS, 0, 1, one);
        wire.extend(raw(kind::PING, 0, 0, b"12345678"));
        assert_eq!(run(&mut c, &wire), Err(ErrorCode::ProtocolError));
        assert!(!c.can_open());
        // Its GOAWAY is queued for the caller to send.
        assert_eq!(c.take_output()[3], kind::GOAWAY);
        // So does a CONTINUATION of another stream.
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        let mut wire = raw(kind::HEADERS, 0, 1, one);
        wire.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 3, two));
        assert_eq!(run(&mut c, &wire), Err(ErrorCode::ProtocolError));
    }

    #[test]
    fn a_dynamic_table_entry_from_one_head_serves_the_next() {
        // Literal with incremental indexing of content-type (static name 31), then the same
        // field as dynamic index 62 on the next stream: the decoder must keep the table.
        let mut first = head_200();
        hpack::encode_int(31, 6, 0x40, &mut first);
        first.push(17);
        first.extend_from_slice(b"text/event-stream");
        let mut second = head_200();
        second.push(0x80 | 62);
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        c.open(&get("/")).unwrap();
        let mut wire = raw(kind::HEADERS, flag::END_HEADERS, 1, &first);
        wire.extend(raw(kind::HEADERS, flag::END_HEADERS, 3, &second));
        assert_eq!(
            run(&mut c, &wire).unwrap(),
            vec![Seen::Head(1, 200, false), Seen::Head(3, 200, false)]
        );
        // An index past both tables is a COMPRESSION_ERROR of the connection.
        let mut bad = head_200();
        bad.push(0x80 | 70);
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        assert_eq!(
            run(&mut c, &raw(kind::HEADERS, flag::END_HEADERS, 1, &bad)),
            Err(ErrorCode::CompressionError)
        );
    }

    #[test]
    fn resets_goaway_and_status_reach_the_caller() {
        let mut c = Client::new();
        for _ in 0..3 {
            c.open(&get("/")).unwrap();
        }
        let mut not_found = Vec::new();
        hpack::encode_status(404, &mut not_found);
        let mut wire = raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &not_found,
        );
        wire.extend(raw(
            kind::RST_STREAM,
            0,
            3,
            &(ErrorCode::RefusedStream as u32).to_be_bytes(),
        ));
        let mut goaway = 3u32.to_be_bytes().to_vec();
        goaway.extend((ErrorCode::NoError as u32).to_be_bytes());
        wire.extend(raw(kind::GOAWAY, 0, 0, &goaway));
        assert_eq!(
            run(&mut c, &wire).unwrap(),
            vec![
                Seen::Head(1, 404, true),
                Seen::Reset(3, ErrorCode::RefusedStream),
                Seen::GoAway(3, ErrorCode::NoError),
            ]
        );
        assert!(c.is_gone() && !c.can_open());
        assert_eq!(c.open(&get("/")), None);
        assert_eq!(c.open_streams(), 1);
    }

    #[test]
    fn consumed_data_opens_the_windows_again_before_they_close() {
        let mut c = Client::new();
        c.open(&get("/")).unwrap();
        c.take_output();
        run(
            &mut c,
            &raw(kind::HEADERS, flag::END_HEADERS, 1, &head_200()),
        )
        .unwrap();
        let chunk = vec![b'x'; 16_384];
        let mut updates = Vec::new();
        // 20 MiB through a 16 MiB window: only possible if we give bytes back.
        for _ in 0..(20 << 20) / chunk.len() {
            run(&mut c, &raw(kind::DATA, 0, 1, &chunk)).unwrap();
            let out = c.take_output();
            for f in out.chunks(13) {
                assert_eq!(f[3], kind::WINDOW_UPDATE);
                let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]);
                let inc = u32::from_be_bytes([f[9], f[10], f[11], f[12]]);
                updates.push((stream, inc));
            }
        }
        let given = |s: u32| {
            updates
                .iter()
                .filter(|u| u.0 == s)
                .map(|u| u.1 as u64)
                .sum::<u64>()
        };
        // Both windows were given back by half windows, so neither ever closed.
        assert_eq!(given(0), 2 * u64::from(UPDATE_AT));
        assert_eq!(given(1), 2 * u64::from(UPDATE_AT));
        assert_eq!(updates.len(), 4);
    }

    #[test]
    fn frames_over_our_size_and_push_promises_end_the_connection() {
        let mut c = Client::new();
        let big = Header {
            len: frame::DEFAULT_MAX_FRAME_SIZE + 1,
            kind: kind::DATA,
            flags: 0,
            stream: 1,
        }
        .encode();
        assert_eq!(run(&mut c, &big), Err(ErrorCode::FrameSizeError));
        let mut c = Client::new();
        assert_eq!(
            run(
                &mut c,
                &raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2])
            ),
            Err(ErrorCode::ProtocolError)
        );
    }

    #[test]
    fn cancelled_streams_are_reset_and_their_late_frames_ignored() {
        let mut c = Client::new();
        let s = c.open(&get("/")).unwrap();
        c.take_output();
        c.cancel(s);
        let out = c.take_output();
        assert_eq!((out[3], out.len()), (kind::RST_STREAM, 13));
        let mut wire = raw(kind::HEADERS, flag::END_HEADERS, 1, &head_200());
        wire.extend(raw(kind::DATA, 0, 1, b"late"));
        assert_eq!(run(&mut c, &wire).unwrap(), vec![]);
    }

    #[test]
    fn server_max_concurrent_streams_bounds_our_opens() {
        let mut c = Client::new();
        let mut settings = Vec::new();
        frame::write_settings(&[(setting::MAX_CONCURRENT_STREAMS, 2)], &mut settings);
        run(&mut c, &settings).unwrap();
        assert!(c.open(&get("/")).is_some());
        assert!(c.open(&get("/")).is_some());
        assert_eq!(c.open(&get("/")), None);
    }
}
