//! HTTP/2 frames (RFC 9113 §4 and §6): the 9-byte header, reading each frame type the edge
//! handles with its length and flag rules, and writing the few the edge sends.
//!
//! DATA is written without copying its payload: [`data_header`] gives the 9 bytes that go in
//! front, and [`DataFrames`] cuts a shared `Bytes` into frames of the peer's maximum size with
//! `Bytes::slice` (a reference count, not a copy), so a broadcast stays one buffer for every
//! stream and only its frame headers differ.

use bytes::Bytes;

use super::{ErrorCode, H2Error};

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until a peer says otherwise, and the smallest it may say (§6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed (§6.5.2).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (§6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Every window's size before SETTINGS or WINDOW_UPDATE change it (§6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
/// What a client sends first on every HTTP/2 connection (§3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame type numbers (§6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY.
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6).
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on this stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the header block is complete.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: a pad length byte comes first.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: stream dependency and weight come first.
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers (§6.5.2).
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame header (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length (24 bits).
    pub len: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier, the reserved bit cleared.
    pub stream: u32,
}

impl Header {
    /// Reads a header from its 9 bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// Its 9 bytes; `len` must fit in 24 bits (the writers here keep it so).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let l = self.len.to_be_bytes();
        let s = (self.stream & MAX_WINDOW).to_be_bytes();
        [
            l[1], l[2], l[3], self.kind, self.flags, s[0], s[1], s[2], s[3],
        ]
    }
}

/// A frame as read, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// DATA, padding removed.
    Data {
        /// Its stream.
        stream: u32,
        /// The data.
        data: &'a [u8],
        /// END_STREAM.
        end_stream: bool,
        /// The whole payload length, padding included: what flow control counts (§6.9).
        flow_len: u32,
    },
    /// HEADERS, padding and priority removed.
    Headers {
        /// Its stream.
        stream: u32,
        /// The header block fragment.
        fragment: &'a [u8],
        /// END_STREAM.
        end_stream: bool,
        /// END_HEADERS.
        end_headers: bool,
        /// The stream it depends on, when the PRIORITY flag is set (checked by the caller
        /// after the block is decoded, so the HPACK tables stay in step).
        dependency: Option<u32>,
    },
    /// PRIORITY: read to check it, then ignored (RFC 9113 deprecates the scheme).
    Priority {
        /// Its stream.
        stream: u32,
    },
    /// RST_STREAM.
    RstStream {
        /// Its stream.
        stream: u32,
        /// The error code.
        code: u32,
    },
    /// SETTINGS; read the parameters with [`settings`].
    Settings {
        /// ACK.
        ack: bool,
        /// Six bytes per parameter.
        params: &'a [u8],
    },
    /// PUSH_PROMISE: a client may never send one (§8.4).
    PushPromise,
    /// PING.
    Ping {
        /// ACK.
        ack: bool,
        /// The opaque data to echo.
        payload: [u8; 8],
    },
    /// GOAWAY.
    GoAway {
        /// The last stream the peer will process.
        last_stream: u32,
        /// The error code.
        code: u32,
    },
    /// WINDOW_UPDATE.
    WindowUpdate {
        /// Its stream, 0 for the connection.
        stream: u32,
        /// The increment, 1 to 2^31-1.
        increment: u32,
    },
    /// CONTINUATION.
    Continuation {
        /// Its stream.
        stream: u32,
        /// The header block fragment.
        fragment: &'a [u8],
        /// END_HEADERS.
        end_headers: bool,
    },
    /// A type this endpoint does not know: ignored (§4.1, §5.5).
    Unknown,
}

fn conn(code: ErrorCode) -> H2Error {
    H2Error::Connection(code)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Strips padding (§6.1): the pad length byte and the pad; a pad as long as the rest is a
/// connection PROTOCOL_ERROR.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], H2Error> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(conn(ErrorCode::FrameSizeError))?;
    let keep = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or(conn(ErrorCode::ProtocolError))?;
    rest.get(..keep).ok_or(conn(ErrorCode::ProtocolError))
}

/// Reads one frame whose whole payload is at hand. The caller has checked `header.len`
/// against our SETTINGS_MAX_FRAME_SIZE and that `payload.len() == header.len`.
pub fn parse(header: Header, payload: &[u8]) -> Result<Frame<'_>, H2Error> {
    let stream = header.stream;
    let flags = header.flags;
    let len = payload.len();
    let need_stream = || {
        if stream == 0 {
            Err(conn(ErrorCode::ProtocolError))
        } else {
            Ok(())
        }
    };
    let need_zero = || {
        if stream != 0 {
            Err(conn(ErrorCode::ProtocolError))
        } else {
            Ok(())
        }
    };
    match header.kind {
        kind::DATA => {
            need_stream()?;
            Ok(Frame::Data {
                stream,
                data: unpad(flags, payload)?,
                end_stream: flags & flag::END_STREAM != 0,
                flow_len: header.len,
            })
        }
        kind::HEADERS => {
            need_stream()?;
            let mut fragment = unpad(flags, payload)?;
            let mut dependency = None;
            if flags & flag::PRIORITY != 0 {
                let dep = be32(fragment, 0).ok_or(conn(ErrorCode::FrameSizeError))? & MAX_WINDOW;
                dependency = Some(dep);
                fragment = fragment.get(5..).ok_or(conn(ErrorCode::FrameSizeError))?;
            }
            Ok(Frame::Headers {
                stream,
                fragment,
                end_stream: flags & flag::END_STREAM != 0,
                end_headers: flags & flag::END_HEADERS != 0,
                dependency,
            })
        }
        kind::PRIORITY => {
            need_stream()?;
            if len != 5 {
                return Err(H2Error::Stream(stream, ErrorCode::FrameSizeError));
            }
            if be32(payload, 0).map(|d| d & MAX_WINDOW) == Some(stream) {
                return Err(H2Error::Stream(stream, ErrorCode::ProtocolError));
            }
            Ok(Frame::Priority { stream })
        }
        kind::RST_STREAM => {
            need_stream()?;
            let code = if len == 4 { be32(payload, 0) } else { None };
            let code = code.ok_or(conn(ErrorCode::FrameSizeError))?;
            Ok(Frame::RstStream { stream, code })
        }
        kind::SETTINGS => {
            need_zero()?;
            let ack = flags & flag::ACK != 0;
            if (ack && len != 0) || !len.is_multiple_of(6) {
                return Err(conn(ErrorCode::FrameSizeError));
            }
            for (id, value) in settings(payload) {
                check_setting(id, value)?;
            }
            Ok(Frame::Settings {
                ack,
                params: payload,
            })
        }
        kind::PUSH_PROMISE => Ok(Frame::PushPromise),
        kind::PING => {
            need_zero()?;
            let payload: [u8; 8] = payload
                .try_into()
                .map_err(|_| conn(ErrorCode::FrameSizeError))?;
            Ok(Frame::Ping {
                ack: flags & flag::ACK != 0,
                payload,
            })
        }
        kind::GOAWAY => {
            need_zero()?;
            let last = be32(payload, 0).ok_or(conn(ErrorCode::FrameSizeError))?;
            let code = be32(payload, 4).ok_or(conn(ErrorCode::FrameSizeError))?;
            Ok(Frame::GoAway {
                last_stream: last & MAX_WINDOW,
                code,
            })
        }
        kind::WINDOW_UPDATE => {
            let raw = if len == 4 { be32(payload, 0) } else { None };
            let increment = raw.ok_or(conn(ErrorCode::FrameSizeError))? & MAX_WINDOW;
            if increment == 0 {
                // §6.9: an error of the stream it names, or of the connection for stream 0.
                return Err(if stream == 0 {
                    conn(ErrorCode::ProtocolError)
                } else {
                    H2Error::Stream(stream, ErrorCode::ProtocolError)
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        kind::CONTINUATION => {
            need_stream()?;
            Ok(Frame::Continuation {
                stream,
                fragment: payload,
                end_headers: flags & flag::END_HEADERS != 0,
            })
        }
        _ => Ok(Frame::Unknown),
    }
}

/// The parameters of a SETTINGS payload, as (identifier, value).
pub fn settings(params: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    params.chunks_exact(6).map(|p| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        )
    })
}

/// The value rules of §6.5.2; unknown identifiers are ignored.
fn check_setting(id: u16, value: u32) -> Result<(), H2Error> {
    match id {
        setting::ENABLE_PUSH if value > 1 => Err(conn(ErrorCode::ProtocolError)),
        setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
            Err(conn(ErrorCode::FlowControlError))
        }
        setting::MAX_FRAME_SIZE
            if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
        {
            Err(conn(ErrorCode::ProtocolError))
        }
        _ => Ok(()),
    }
}

/// The header of a DATA frame carrying `len` bytes, written beside its payload.
pub fn data_header(stream: u32, len: u32, end_stream: bool) -> [u8; HEADER_LEN] {
    Header {
        len,
        kind: kind::DATA,
        flags: if end_stream { flag::END_STREAM } else { 0 },
        stream,
    }
    .encode()
}

/// A payload cut into DATA frames of at most the peer's maximum size, each a header and a
/// slice of the one shared buffer (no copy). END_STREAM, when asked, goes on the last.
#[derive(Debug, Clone)]
pub struct DataFrames {
    /// What is left to send.
    rest: Bytes,
    /// The stream.
    stream: u32,
    /// The largest payload per frame.
    max: usize,
    /// Put END_STREAM on the last frame.
    end_stream: bool,
    /// The last frame has been given.
    done: bool,
}

impl DataFrames {
    /// Cuts `payload` for `stream` into frames of at most `max_frame` bytes.
    pub fn new(stream: u32, payload: Bytes, max_frame: u32, end_stream: bool) -> DataFrames {
        let max = max_frame.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE) as usize;
        DataFrames {
            rest: payload,
            stream,
            max,
            end_stream,
            done: false,
        }
    }
}

impl Iterator for DataFrames {
    type Item = ([u8; HEADER_LEN], Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let take = self.rest.len().min(self.max);
        let chunk = self.rest.split_to(take);
        let last = self.rest.is_empty();
        self.done = last;
        // `take` is at most MAX_MAX_FRAME_SIZE, 24 bits.
        let header = data_header(self.stream, take as u32, last && self.end_stream);
        Some((header, chunk))
    }
}

/// Appends a HEADERS frame and as many CONTINUATION frames as `block` needs at `max_frame`.
pub fn write_headers(
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: u32,
    out: &mut Vec<u8>,
) {
    let max = max_frame.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE) as usize;
    let mut chunks = block.chunks(max).peekable();
    let mut kind = kind::HEADERS;
    let end = if end_stream { flag::END_STREAM } else { 0 };
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        let mut flags = if last { flag::END_HEADERS } else { 0 };
        if kind == kind::HEADERS {
            flags |= end;
        }
        let header = Header {
            len: chunk.len() as u32,
            kind,
            flags,
            stream,
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(chunk);
        if last {
            return;
        }
        kind = kind::CONTINUATION;
    }
}

/// Appends a SETTINGS frame with these parameters.
pub fn write_settings(params: &[(u16, u32)], out: &mut Vec<u8>) {
    let header = Header {
        len: (params.len() * 6) as u32,
        kind: kind::SETTINGS,
        flags: 0,
        stream: 0,
    };
    out.extend_from_slice(&header.encode());
    for &(id, value) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn write_settings_ack(out: &mut Vec<u8>) {
    let header = Header {
        len: 0,
        kind: kind::SETTINGS,
        flags: flag::ACK,
        stream: 0,
    };
    out.extend_from_slice(&header.encode());
}

/// Appends a PING (or its acknowledgement).
pub fn write_ping(ack: bool, payload: [u8; 8], out: &mut Vec<u8>) {
    let header = Header {
        len: 8,
        kind: kind::PING,
        flags: if ack { flag::ACK } else { 0 },
        stream: 0,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&payload);
}

/// Appends a GOAWAY naming the last stream we will process.
pub fn write_goaway(last_stream: u32, code: ErrorCode, out: &mut Vec<u8>) {
    let header = Header {
        len: 8,
        kind: kind::GOAWAY,
        flags: 0,
        stream: 0,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

/// Appends an RST_STREAM.
pub fn write_rst_stream(stream: u32, code: ErrorCode, out: &mut Vec<u8>) {
    let header = Header {
        len: 4,
        kind: kind::RST_STREAM,
        flags: 0,
        stream,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

/// Appends a WINDOW_UPDATE (`stream` 0: the connection's window).
pub fn write_window_update(stream: u32, increment: u32, out: &mut Vec<u8>) {
    let header = Header {
        len: 4,
        kind: kind::WINDOW_UPDATE,
        flags: 0,
        stream,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> (Header, Vec<u8>) {
        let h = Header {
            len: payload.len() as u32,
            kind,
            flags,
            stream,
        };
        (h, payload.to_vec())
    }

    fn read(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame<'static>, H2Error> {
        let (h, p) = frame(kind, flags, stream, payload);
        let p: &'static [u8] = Box::leak(p.into_boxed_slice());
        parse(h, p)
    }

    #[test]
    fn a_header_round_trips_and_drops_the_reserved_bit() {
        let h = Header {
            len: 0x12_3456,
            kind: 7,
            flags: 0xab,
            stream: 0x7fff_fffe,
        };
        assert_eq!(Header::parse(&h.encode()), h);
        let mut raw = h.encode();
        raw[5] |= 0x80;
        assert_eq!(Header::parse(&raw).stream, 0x7fff_fffe);
    }

    #[test]
    fn padding_is_removed_and_overlong_padding_refused() {
        assert_eq!(
            read(
                kind::DATA,
                flag::PADDED | flag::END_STREAM,
                1,
                &[2, b'h', b'i', 0, 0]
            ),
            Ok(Frame::Data {
                stream: 1,
                data: b"hi",
                end_stream: true,
                flow_len: 5
            })
        );
        assert_eq!(
            read(kind::DATA, flag::PADDED, 1, &[4, b'h', b'i', 0]),
            Err(H2Error::Connection(ErrorCode::ProtocolError))
        );
        let r = read(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            3,
            &[1, 0, 0, 0, 1, 16, 0x82, 0],
        );
        assert_eq!(
            r,
            Ok(Frame::Headers {
                stream: 3,
                fragment: &[0x82],
                end_stream: false,
                end_headers: true,
                dependency: Some(1),
            })
        );
    }

    #[test]
    fn lengths_are_checked_per_type() {
        let fse = Err(H2Error::Connection(ErrorCode::FrameSizeError));
        assert_eq!(read(kind::PING, 0, 0, &[0; 7]), fse);
        assert_eq!(read(kind::SETTINGS, 0, 0, &[0; 5]), fse);
        assert_eq!(read(kind::SETTINGS, flag::ACK, 0, &[0; 6]), fse);
        assert_eq!(read(kind::RST_STREAM, 0, 1, &[0; 3]), fse);
        assert_eq!(read(kind::WINDOW_UPDATE, 0, 1, &[0; 5]), fse);
        assert_eq!(read(kind::GOAWAY, 0, 0, &[0; 7]), fse);
        assert_eq!(
            read(kind::PRIORITY, 0, 1, &[0; 4]),
            Err(H2Error::Stream(1, ErrorCode::FrameSizeError))
        );
    }

    #[test]
    fn stream_zero_rules() {
        let pe = Err(H2Error::Connection(ErrorCode::ProtocolError));
        assert_eq!(read(kind::DATA, 0, 0, b"x"), pe);
        assert_eq!(read(kind::HEADERS, 0, 0, &[0x82]), pe);
        assert_eq!(read(kind::SETTINGS, 0, 1, &[]), pe);
        assert_eq!(read(kind::PING, 0, 1, &[0; 8]), pe);
        assert_eq!(read(kind::GOAWAY, 0, 1, &[0; 8]), pe);
        assert_eq!(read(kind::RST_STREAM, 0, 0, &[0; 4]), pe);
    }

    #[test]
    fn settings_values_are_checked() {
        let s = |id: u16, v: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&v.to_be_bytes());
            read(kind::SETTINGS, 0, 0, &p)
        };
        assert_eq!(
            s(setting::ENABLE_PUSH, 2),
            Err(H2Error::Connection(ErrorCode::ProtocolError))
        );
        assert_eq!(
            s(setting::INITIAL_WINDOW_SIZE, MAX_WINDOW + 1),
            Err(H2Error::Connection(ErrorCode::FlowControlError))
        );
        assert_eq!(
            s(setting::MAX_FRAME_SIZE, 16_383),
            Err(H2Error::Connection(ErrorCode::ProtocolError))
        );
        assert_eq!(
            s(setting::MAX_FRAME_SIZE, 1 << 24),
            Err(H2Error::Connection(ErrorCode::ProtocolError))
        );
        assert!(s(0xff, 7).is_ok(), "unknown settings are ignored");
    }

    #[test]
    fn a_zero_window_increment_is_an_error_of_what_it_names() {
        assert_eq!(
            read(kind::WINDOW_UPDATE, 0, 0, &[0; 4]),
            Err(H2Error::Connection(ErrorCode::ProtocolError))
        );
        assert_eq!(
            read(kind::WINDOW_UPDATE, 0, 5, &[0; 4]),
            Err(H2Error::Stream(5, ErrorCode::ProtocolError))
        );
    }

    #[test]
    fn unknown_types_are_ignored() {
        assert_eq!(read(0xfa, 0xff, 0, b"anything"), Ok(Frame::Unknown));
    }

    #[test]
    fn data_is_split_by_slicing_the_shared_payload() {
        let payload = Bytes::from(vec![7u8; 40_000]);
        let base = payload.as_ptr() as usize;
        let frames: Vec<_> = DataFrames::new(3, payload.clone(), 16_384, true).collect();
        assert_eq!(frames.len(), 3);
        let mut offset = 0;
        for (i, (h, chunk)) in frames.iter().enumerate() {
            let h = Header::parse(h);
            assert_eq!(h.len as usize, chunk.len());
            assert_eq!(h.stream, 3);
            assert_eq!(h.flags & flag::END_STREAM != 0, i == 2);
            // The same memory, not a copy.
            assert_eq!(chunk.as_ptr() as usize, base + offset);
            offset += chunk.len();
        }
        assert_eq!(offset, 40_000);
        let empty: Vec<_> = DataFrames::new(1, Bytes::new(), 16_384, true).collect();
        assert_eq!(empty.len(), 1);
        assert_eq!(Header::parse(&empty[0].0).flags, flag::END_STREAM);
    }

    #[test]
    fn a_long_block_goes_out_as_headers_then_continuations() {
        let block = vec![0x82u8; 40_000];
        let mut out = Vec::new();
        write_headers(5, &block, true, 16_384, &mut out);
        let mut at = 0;
        let mut kinds = Vec::new();
        let mut got = Vec::new();
        while at < out.len() {
            let h = Header::parse(out[at..at + 9].try_into().unwrap());
            kinds.push((h.kind, h.flags));
            got.extend_from_slice(&out[at + 9..at + 9 + h.len as usize]);
            at += 9 + h.len as usize;
        }
        assert_eq!(got, block);
        assert_eq!(
            kinds,
            [
                (kind::HEADERS, flag::END_STREAM),
                (kind::CONTINUATION, 0),
                (kind::CONTINUATION, flag::END_HEADERS)
            ]
        );
    }
}
