//! h2spec's cases for the frames the edge handles, ported to the sans-IO connection: each test
//! names the h2spec case it stands for (section, number, and its description), and asserts what
//! h2spec accepts (a connection error is a GOAWAY with the code; a stream error is an
//! RST_STREAM with the code). h2spec itself cannot run on these machines; the later suite over
//! the real binary uses PyPI's h2/hyperframe.

use super::conn::tests::{get, raw, Peer};
use super::conn::{Event, Limits};
use super::frame::{flag, kind, setting, Header, PREFACE};
use super::{hpack, ErrorCode};

const END_HEADERS: u8 = flag::END_HEADERS;
const END_STREAM: u8 = flag::END_STREAM;

/// A request block (without indexing), opened by the size update our SETTINGS require.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x20];
    for (n, v) in fields {
        hpack::encode_field(n.as_bytes(), v.as_bytes(), false, false, &mut b);
    }
    b
}

fn get_block() -> Vec<u8> {
    let mut b = vec![0x20];
    b.extend(get("/"));
    b
}

const BASE: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "localhost"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = BASE.to_vec();
    v.extend_from_slice(extra);
    v
}

fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    params
        .iter()
        .flat_map(|(id, v)| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&v.to_be_bytes());
            p
        })
        .collect()
}

/// Asserts a connection error with `code`: `recv` fails and a GOAWAY carries it.
fn connection_error(p: &mut Peer, bytes: &[u8], code: ErrorCode) {
    assert_eq!(p.feed(bytes), Err(code));
    assert_eq!(p.goaway(), Some(code));
}

/// Asserts a stream error with `code` on `stream`; the connection goes on.
fn stream_error(p: &mut Peer, bytes: &[u8], stream: u32, code: ErrorCode) {
    assert_eq!(p.feed(bytes), Ok(()));
    assert_eq!(p.rst(stream), Some(code));
    assert_eq!(
        p.feed(&raw(kind::PING, 0, 0, &[0; 8])),
        Ok(()),
        "still open"
    );
}

fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    raw(kind::HEADERS, flags, stream, block)
}

/// One frame on an open connection that h2spec expects to end it with a connection error: the
/// h2spec case (section, number and what it sends), the frame, and the GOAWAY code.
struct ConnectionErrorCase {
    h2spec: &'static str,
    frame: fn() -> Vec<u8>,
    code: ErrorCode,
}

/// h2spec's cases that are one frame and a connection error, in one table (each row names its
/// case, so a failure says which).
const CONNECTION_ERRORS: &[ConnectionErrorCase] = &[
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.1/1 \"idle: Sends a DATA frame\".",
        frame: || raw(kind::DATA, 0, 1, b"x"),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.1/2 \"idle: Sends a RST_STREAM frame\".",
        frame: || raw(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.1/3 \"idle: Sends a WINDOW_UPDATE frame\".",
        frame: || raw(kind::WINDOW_UPDATE, 0, 1, &[0, 0, 0, 1]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.1/4 \"idle: Sends a CONTINUATION frame\".",
        frame: || raw(kind::CONTINUATION, END_HEADERS, 1, &get_block()),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.1.1/1 \"Sends even-numbered stream identifier\".",
        frame: || headers(2, END_HEADERS | END_STREAM, &get_block()),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.3.1/2 \"Sends PRIORITY frame that depend on itself\": on an idle stream, so a connection error (no RST_STREAM may name an idle stream, §6.4), which h2spec accepts.",
        frame: || raw(kind::PRIORITY, 0, 1, &[0, 0, 0, 1, 16]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/5.4.1/1 \"Sends an invalid PING frame for connection close\".",
        frame: || raw(kind::PING, 0, 3, &[0; 8]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.1/1 \"Sends a DATA frame with 0x0 stream identifier\".",
        frame: || raw(kind::DATA, 0, 0, b"x"),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.2/3 \"Sends a HEADERS frame with 0x0 stream identifier\".",
        frame: || headers(0, END_HEADERS, &get_block()),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.3/1 \"Sends a PRIORITY frame with 0x0 stream identifier\".",
        frame: || raw(kind::PRIORITY, 0, 0, &[0, 0, 0, 1, 16]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.4/1 \"Sends a RST_STREAM frame with 0x0 stream identifier\".",
        frame: || raw(kind::RST_STREAM, 0, 0, &[0, 0, 0, 8]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.5/1 \"Sends a SETTINGS frame with ACK flag and payload\".",
        frame: || raw(kind::SETTINGS, flag::ACK, 0, &settings(&[(3, 100)])),
        code: ErrorCode::FrameSizeError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.5/2 \"Sends a SETTINGS frame with a stream identifier other than 0x0\".",
        frame: || raw(kind::SETTINGS, 0, 1, &settings(&[(3, 100)])),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.5/3 \"Sends a SETTINGS frame with a length other than a multiple of 6 octets\".",
        frame: || raw(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100, 0]),
        code: ErrorCode::FrameSizeError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.7/3 \"Sends a PING frame with a stream identifier field value other than 0x0\".",
        frame: || raw(kind::PING, 0, 1, &[0; 8]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.7/4 \"Sends a PING frame with a length field value other than 8\".",
        frame: || raw(kind::PING, 0, 0, &[0; 6]),
        code: ErrorCode::FrameSizeError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.8/1 \"Sends a GOAWAY frame with a stream identifier other than 0x0\".",
        frame: || raw(kind::GOAWAY, 0, 1, &[0; 8]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.9/1 \"Sends a WINDOW_UPDATE frame with a flow control window increment of 0\".",
        frame: || raw(kind::WINDOW_UPDATE, 0, 0, &[0; 4]),
        code: ErrorCode::ProtocolError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec http2/6.9/3 \"Sends a WINDOW_UPDATE frame with a length other than 4 octets\".",
        frame: || raw(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0, 1]),
        code: ErrorCode::FrameSizeError,
    },
    ConnectionErrorCase {
        h2spec: "h2spec hpack/6.1/1 \"Sends a indexed header field representation with index 0\".",
        frame: || headers(1, END_HEADERS, &[0x20, 0x80]),
        code: ErrorCode::CompressionError,
    },
];

#[test]
fn h2spec_one_frame_connection_errors() {
    for case in CONNECTION_ERRORS {
        let mut p = Peer::open();
        assert_eq!(p.feed(&(case.frame)()), Err(case.code), "{}", case.h2spec);
        assert_eq!(p.goaway(), Some(case.code), "{}", case.h2spec);
    }
}

// 3.5 HTTP/2 Connection Preface

/// h2spec http2/3.5/1 "Sends client connection preface": the server's SETTINGS come first.
#[test]
fn h2spec_3_5_1_preface_then_settings() {
    let mut p = Peer::fresh(Limits::default());
    let frames = p.frames();
    assert_eq!(frames[0].0.kind, kind::SETTINGS);
    let mut hello = PREFACE.to_vec();
    hello.extend(raw(kind::SETTINGS, 0, 0, &[]));
    p.feed(&hello).unwrap();
    assert_eq!(
        p.frames()[0].0,
        Header {
            len: 0,
            kind: kind::SETTINGS,
            flags: flag::ACK,
            stream: 0
        }
    );
}

/// h2spec http2/3.5/2 "Sends invalid connection preface".
#[test]
fn h2spec_3_5_2_invalid_preface() {
    let mut p = Peer::fresh(Limits::default());
    p.frames();
    connection_error(
        &mut p,
        b"INVALID CONNECTION PREFACE",
        ErrorCode::ProtocolError,
    );
}

/// RFC 9113 §3.4 (h2spec's handshake): the first frame after the preface must be SETTINGS.
#[test]
fn the_first_frame_must_be_settings() {
    let mut p = Peer::fresh(Limits::default());
    p.frames();
    let mut hello = PREFACE.to_vec();
    hello.extend(raw(kind::PING, 0, 0, &[0; 8]));
    connection_error(&mut p, &hello, ErrorCode::ProtocolError);
}

// 4.1 Frame Format, 4.2 Frame Size, 4.3 Header Compression

/// h2spec http2/4.1/1 "Sends a frame with unknown type", /2 "... with undefined flag",
/// /3 "... with reserved field bit": all ignored.
#[test]
fn h2spec_4_1_unknown_type_flags_and_reserved_bit_are_ignored() {
    let mut p = Peer::open();
    p.send(0x16, 0, 0, b"xxxx").unwrap();
    p.send(kind::PING, 0x16, 0, &[0; 8]).unwrap();
    assert_eq!(p.frames()[0].0.flags, flag::ACK);
    let mut bytes = headers(1, END_HEADERS | END_STREAM, &get_block());
    bytes[5] |= 0x80; // the reserved bit
    p.feed(&bytes).unwrap();
    assert!(matches!(p.events[..], [Event::Request { stream: 1, .. }]));
}

/// h2spec http2/4.2/1 "Sends a DATA frame with 2^14 octets in length".
#[test]
fn h2spec_4_2_1_data_of_max_frame_size() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    p.send(kind::DATA, END_STREAM, 1, &[b'x'; 16_384]).unwrap();
    assert!(
        matches!(&p.events[..], [Event::Data { data, end_stream: true, .. }] if data.len() == 16_384)
    );
}

/// h2spec http2/4.2/2 "Sends a large size DATA frame that exceeds the SETTINGS_MAX_FRAME_SIZE".
#[test]
fn h2spec_4_2_2_data_over_max_frame_size() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::DATA, 0, 1, &[0; 16_385]),
        ErrorCode::FrameSizeError,
    );
}

/// h2spec http2/4.2/3 "Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE".
#[test]
fn h2spec_4_2_3_headers_over_max_frame_size() {
    let mut p = Peer::open();
    // Refused from the 9-byte header alone: the payload is never buffered.
    let mut bytes = headers(1, END_HEADERS, &[0; 16_385]);
    bytes.truncate(9);
    connection_error(&mut p, &bytes, ErrorCode::FrameSizeError);
}

/// h2spec http2/4.3/1 "Sends invalid header block fragment".
#[test]
fn h2spec_4_3_1_invalid_header_block() {
    let mut p = Peer::open();
    // A literal with incremental indexing whose name length runs past the block.
    connection_error(
        &mut p,
        &headers(1, END_HEADERS, &[0x20, 0x40, 0x7f]),
        ErrorCode::CompressionError,
    );
}

/// h2spec http2/4.3/2 "Sends a PRIORITY frame while sending the header blocks", and
/// http2/6.2/1 "Sends a HEADERS frame without the END_HEADERS flag, and a PRIORITY frame".
#[test]
fn h2spec_4_3_2_priority_inside_a_header_block() {
    let mut p = Peer::open();
    p.feed(&headers(1, 0, &get_block())).unwrap();
    connection_error(
        &mut p,
        &raw(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/4.3/3 "Sends a HEADERS frame to another stream while sending the header
/// blocks", and http2/6.2/2.
#[test]
fn h2spec_4_3_3_headers_to_another_stream_inside_a_block() {
    let mut p = Peer::open();
    p.feed(&headers(1, 0, &get_block())).unwrap();
    connection_error(
        &mut p,
        &headers(3, END_HEADERS, &get("/")),
        ErrorCode::ProtocolError,
    );
}

// 5.1 Stream States

/// h2spec http2/5.1/5 "half closed (remote): Sends a DATA frame".
#[test]
fn h2spec_5_1_5_half_closed_remote_data() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    stream_error(
        &mut p,
        &raw(kind::DATA, 0, 1, b"x"),
        1,
        ErrorCode::StreamClosed,
    );
}

/// h2spec http2/5.1/6 "half closed (remote): Sends a HEADERS frame".
#[test]
fn h2spec_5_1_6_half_closed_remote_headers() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    stream_error(
        &mut p,
        &headers(1, END_HEADERS | END_STREAM, &get("/")),
        1,
        ErrorCode::StreamClosed,
    );
}

/// h2spec http2/5.1/7 "half closed (remote): Sends a CONTINUATION frame".
#[test]
fn h2spec_5_1_7_half_closed_remote_continuation() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::CONTINUATION, END_HEADERS, 1, &get("/")),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/5.1/8 "closed: Sends a DATA frame after sending RST_STREAM frame".
#[test]
fn h2spec_5_1_8_closed_data_after_rst() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &get_block())).unwrap();
    p.send(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]).unwrap();
    assert_eq!(
        p.events,
        [Event::Reset {
            stream: 1,
            code: ErrorCode::Cancel,
            by_peer: true
        }]
    );
    stream_error(
        &mut p,
        &raw(kind::DATA, 0, 1, b"x"),
        1,
        ErrorCode::StreamClosed,
    );
}

/// h2spec http2/5.1/9 "closed: Sends a HEADERS frame after sending RST_STREAM frame": a new
/// block on a used id is a connection error (§5.1.1), which h2spec accepts.
#[test]
fn h2spec_5_1_9_closed_headers_after_rst() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &get_block())).unwrap();
    p.send(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]).unwrap();
    connection_error(
        &mut p,
        &headers(1, END_HEADERS, &get("/")),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/5.1/11 "closed: Sends a DATA frame" (after both sides ended the stream).
#[test]
fn h2spec_5_1_11_closed_data() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    let mut head = Vec::new();
    hpack::encode_status(200, &mut head);
    p.conn.send_head(1, &head, true).unwrap();
    assert_eq!(p.conn.open_streams(), 0);
    p.frames();
    stream_error(
        &mut p,
        &raw(kind::DATA, 0, 1, b"x"),
        1,
        ErrorCode::StreamClosed,
    );
}

/// h2spec http2/5.1.1/2 "Sends stream identifier that is numerically smaller than previous".
#[test]
fn h2spec_5_1_1_2_smaller_stream_id() {
    let mut p = Peer::open();
    p.feed(&headers(5, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    connection_error(
        &mut p,
        &headers(3, END_HEADERS | END_STREAM, &get("/")),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/5.1.2/1 "Sends HEADERS frames that causes their advertised concurrent stream
/// limit to be exceeded".
#[test]
fn h2spec_5_1_2_1_concurrent_stream_limit() {
    let mut p = Peer::open_with(Limits {
        max_streams: 2,
        ..Limits::default()
    });
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    p.feed(&headers(3, END_HEADERS | END_STREAM, &get("/")))
        .unwrap();
    stream_error(
        &mut p,
        &headers(5, END_HEADERS | END_STREAM, &get("/")),
        5,
        ErrorCode::RefusedStream,
    );
    assert_eq!(p.conn.open_streams(), 2);
}

/// h2spec http2/5.3.1/1 "Sends HEADERS frame that depends on itself".
#[test]
fn h2spec_5_3_1_1_headers_depends_on_itself() {
    let mut p = Peer::open();
    let mut payload = vec![0, 0, 0, 1, 16];
    payload.extend(get_block());
    stream_error(
        &mut p,
        &raw(
            kind::HEADERS,
            END_HEADERS | END_STREAM | flag::PRIORITY,
            1,
            &payload,
        ),
        1,
        ErrorCode::ProtocolError,
    );
    // The block was decoded all the same: the next request reads.
    p.feed(&headers(3, END_HEADERS | END_STREAM, &get("/")))
        .unwrap();
    assert!(matches!(p.events[..], [Event::Request { stream: 3, .. }]));
}

/// h2spec http2/5.5/2 "Sends an unknown extension frame in the middle of a header block".
#[test]
fn h2spec_5_5_2_unknown_frame_inside_a_block() {
    let mut p = Peer::open();
    p.feed(&headers(1, 0, &get_block())).unwrap();
    connection_error(&mut p, &raw(0x16, 0, 0, b"xx"), ErrorCode::ProtocolError);
}

// 6.1 DATA, 6.2 HEADERS, 6.3 PRIORITY, 6.4 RST_STREAM

/// h2spec http2/6.1/3 "Sends a DATA frame with invalid pad length".
#[test]
fn h2spec_6_1_3_data_invalid_pad_length() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::DATA, flag::PADDED, 1, &[6, b'a', b'b', 0, 0, 0]),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.2/4 "Sends a HEADERS frame with invalid pad length".
#[test]
fn h2spec_6_2_4_headers_invalid_pad_length() {
    let mut payload = vec![200];
    payload.extend(get_block());
    connection_error(
        &mut Peer::open(),
        &raw(kind::HEADERS, END_HEADERS | flag::PADDED, 1, &payload),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.3/2 "Sends a PRIORITY frame with a length other than 5 octets".
#[test]
fn h2spec_6_3_2_priority_wrong_length() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    stream_error(
        &mut p,
        &raw(kind::PRIORITY, 0, 1, &[0, 0, 0, 3, 16, 0]),
        1,
        ErrorCode::FrameSizeError,
    );
}

/// h2spec generic/2/1 "Sends a PRIORITY frame on idle stream": ignored, the stream stays idle.
#[test]
fn h2spec_generic_2_1_priority_on_idle_stream() {
    let mut p = Peer::open();
    p.send(kind::PRIORITY, 0, 9, &[0, 0, 0, 0, 16]).unwrap();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    assert!(matches!(p.events[..], [Event::Request { stream: 1, .. }]));
}

/// h2spec http2/6.4/3 "Sends a RST_STREAM frame with a length other than 4 octets".
#[test]
fn h2spec_6_4_3_rst_stream_wrong_length() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8, 0]),
        ErrorCode::FrameSizeError,
    );
}

// 6.5 SETTINGS

/// h2spec http2/6.5.2/1..4 "Defined SETTINGS Parameters": ENABLE_PUSH other than 0 or 1,
/// INITIAL_WINDOW_SIZE above 2^31-1, MAX_FRAME_SIZE below 2^14 and above 2^24-1.
#[test]
fn h2spec_6_5_2_defined_parameters() {
    let cases = [
        (setting::ENABLE_PUSH, 2, ErrorCode::ProtocolError),
        (
            setting::INITIAL_WINDOW_SIZE,
            1 << 31,
            ErrorCode::FlowControlError,
        ),
        (setting::MAX_FRAME_SIZE, 16_383, ErrorCode::ProtocolError),
        (setting::MAX_FRAME_SIZE, 1 << 24, ErrorCode::ProtocolError),
    ];
    for (id, value, code) in cases {
        connection_error(
            &mut Peer::open(),
            &raw(kind::SETTINGS, 0, 0, &settings(&[(id, value)])),
            code,
        );
    }
}

/// h2spec http2/6.5.2/5 "Sends a SETTINGS frame with unknown identifier".
#[test]
fn h2spec_6_5_2_5_unknown_setting() {
    let mut p = Peer::open();
    p.send(kind::SETTINGS, 0, 0, &settings(&[(0xff, 1)]))
        .unwrap();
    assert_eq!(
        p.frames()[0].0,
        Header {
            len: 0,
            kind: kind::SETTINGS,
            flags: flag::ACK,
            stream: 0
        }
    );
}

/// h2spec http2/6.5.3/1 "Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE": the last wins.
#[test]
fn h2spec_6_5_3_1_last_value_wins() {
    let mut p = Peer::open();
    p.send(
        kind::SETTINGS,
        0,
        0,
        &settings(&[
            (setting::INITIAL_WINDOW_SIZE, 100),
            (setting::INITIAL_WINDOW_SIZE, 1),
        ]),
    )
    .unwrap();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    assert_eq!(p.conn.send_window(1), Some(1));
}

/// h2spec http2/6.5.3/2 "Sends a SETTINGS frame without ACK flag": answered by SETTINGS ACK.
#[test]
fn h2spec_6_5_3_2_settings_ack() {
    let mut p = Peer::open();
    p.send(
        kind::SETTINGS,
        0,
        0,
        &settings(&[(setting::MAX_CONCURRENT_STREAMS, 100)]),
    )
    .unwrap();
    assert_eq!(
        p.frames(),
        [(
            Header {
                len: 0,
                kind: kind::SETTINGS,
                flags: flag::ACK,
                stream: 0
            },
            vec![]
        )]
    );
}

// 6.7 PING, 6.8 GOAWAY

/// h2spec http2/6.7/1 "Sends a PING frame": the ACK echoes the payload.
#[test]
fn h2spec_6_7_1_ping_ack() {
    let mut p = Peer::open();
    p.send(kind::PING, 0, 0, b"h2spec!!").unwrap();
    assert_eq!(
        p.frames(),
        [(
            Header {
                len: 8,
                kind: kind::PING,
                flags: flag::ACK,
                stream: 0
            },
            b"h2spec!!".to_vec()
        )]
    );
}

/// h2spec http2/6.7/2 "Sends a PING frame with ACK": no answer.
#[test]
fn h2spec_6_7_2_ping_ack_is_not_answered() {
    let mut p = Peer::open();
    p.send(kind::PING, flag::ACK, 0, b"h2spec!!").unwrap();
    assert!(p.frames().is_empty());
}

// 6.9 WINDOW_UPDATE, 6.9.1 and 6.9.2 flow control

/// h2spec http2/6.9/2 "Sends a WINDOW_UPDATE frame with a flow control window increment of 0
/// on a stream".
#[test]
fn h2spec_6_9_2_zero_increment_on_a_stream() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    stream_error(
        &mut p,
        &raw(kind::WINDOW_UPDATE, 0, 1, &[0; 4]),
        1,
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.9.1/1 "Sends SETTINGS frame to set the initial window size to 1 and sends
/// HEADERS frame": one byte of DATA may go, no more.
#[test]
fn h2spec_6_9_1_1_initial_window_of_one() {
    let mut p = Peer::open();
    p.send(
        kind::SETTINGS,
        0,
        0,
        &settings(&[(setting::INITIAL_WINDOW_SIZE, 1)]),
    )
    .unwrap();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    assert_eq!(p.conn.send_window(1), Some(1));
    let frames: Vec<_> = p
        .conn
        .send_data(1, bytes::Bytes::from_static(b"x"), false)
        .unwrap()
        .collect();
    assert_eq!(frames.len(), 1);
    assert_eq!(p.conn.send_window(1), Some(0));
}

/// h2spec http2/6.9.1/2 "Sends multiple WINDOW_UPDATE frames increasing the flow control
/// window to above 2^31-1".
#[test]
fn h2spec_6_9_1_2_connection_window_overflow() {
    let mut p = Peer::open();
    p.send(kind::WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes())
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes()),
        ErrorCode::FlowControlError,
    );
}

/// h2spec http2/6.9.1/3 "Sends multiple WINDOW_UPDATE frames increasing the flow control
/// window to above 2^31-1 on a stream".
#[test]
fn h2spec_6_9_1_3_stream_window_overflow() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    p.send(kind::WINDOW_UPDATE, 0, 1, &0x7fff_0000u32.to_be_bytes())
        .unwrap();
    stream_error(
        &mut p,
        &raw(kind::WINDOW_UPDATE, 0, 1, &0x7fff_0000u32.to_be_bytes()),
        1,
        ErrorCode::FlowControlError,
    );
}

/// h2spec http2/6.9.2/1 "Changes SETTINGS_INITIAL_WINDOW_SIZE after sending HEADERS frame".
#[test]
fn h2spec_6_9_2_1_initial_window_changes_open_streams() {
    let mut p = Peer::open();
    p.send(
        kind::SETTINGS,
        0,
        0,
        &settings(&[(setting::INITIAL_WINDOW_SIZE, 0)]),
    )
    .unwrap();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    assert_eq!(p.conn.send_window(1), Some(0));
    p.send(
        kind::SETTINGS,
        0,
        0,
        &settings(&[(setting::INITIAL_WINDOW_SIZE, 1)]),
    )
    .unwrap();
    assert!(p.events.contains(&Event::Writable { stream: None }));
    assert_eq!(p.conn.send_window(1), Some(1));
}

/// h2spec http2/6.9.2/2 "Sends a SETTINGS frame for window size to be negative".
#[test]
fn h2spec_6_9_2_2_negative_window() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS | END_STREAM, &get_block()))
        .unwrap();
    p.conn
        .send_data(1, bytes::Bytes::from(vec![0u8; 5]), false)
        .unwrap();
    p.send(
        kind::SETTINGS,
        0,
        0,
        &settings(&[(setting::INITIAL_WINDOW_SIZE, 3)]),
    )
    .unwrap();
    // 3 - 5: the window is -2, nothing may be sent until it is above zero again.
    assert_eq!(p.conn.send_window(1), Some(0));
    p.send(kind::WINDOW_UPDATE, 0, 1, &3u32.to_be_bytes())
        .unwrap();
    assert_eq!(p.conn.send_window(1), Some(1));
}

/// h2spec http2/6.9.2/3 "Sends a SETTINGS_INITIAL_WINDOW_SIZE settings with an exceeded
/// maximum window size value".
#[test]
fn h2spec_6_9_2_3_initial_window_too_large() {
    connection_error(
        &mut Peer::open(),
        &raw(
            kind::SETTINGS,
            0,
            0,
            &settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]),
        ),
        ErrorCode::FlowControlError,
    );
}

// 6.10 CONTINUATION

/// h2spec http2/6.10/1 "Sends multiple CONTINUATION frames preceded by a HEADERS frame".
#[test]
fn h2spec_6_10_1_continuations_complete_a_block() {
    let mut p = Peer::open();
    let b = get_block();
    let (a, rest) = b.split_at(3);
    let (c, d) = rest.split_at(rest.len() / 2);
    p.feed(&raw(kind::HEADERS, END_STREAM, 1, a)).unwrap();
    p.feed(&raw(kind::CONTINUATION, 0, 1, c)).unwrap();
    p.feed(&raw(kind::CONTINUATION, END_HEADERS, 1, d)).unwrap();
    match &p.events[..] {
        [Event::Request {
            stream: 1,
            head,
            end_stream: true,
        }] => {
            assert_eq!(head.method(), b"GET");
            assert_eq!(head.path(), b"/");
            assert_eq!(head.authority(), Some(&b"localhost"[..]));
        }
        other => panic!("{other:?}"),
    }
}

/// h2spec http2/6.10/2 "Sends a CONTINUATION frame followed by any frame other than
/// CONTINUATION".
#[test]
fn h2spec_6_10_2_continuation_then_other_frame() {
    let mut p = Peer::open();
    p.feed(&raw(kind::HEADERS, 0, 1, &get_block())).unwrap();
    p.feed(&raw(kind::CONTINUATION, 0, 1, &[])).unwrap();
    connection_error(
        &mut p,
        &raw(kind::DATA, 0, 1, b"x"),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.10/3 "Sends a CONTINUATION frame with 0x0 stream identifier".
#[test]
fn h2spec_6_10_3_continuation_on_stream_zero() {
    let mut p = Peer::open();
    p.feed(&raw(kind::HEADERS, 0, 1, &get_block())).unwrap();
    connection_error(
        &mut p,
        &raw(kind::CONTINUATION, END_HEADERS, 0, &[]),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.10/4 "Sends a CONTINUATION frame preceded by a HEADERS frame with
/// END_HEADERS flag".
#[test]
fn h2spec_6_10_4_continuation_after_end_headers() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::CONTINUATION, END_HEADERS, 1, &get("/")),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.10/5 "Sends a CONTINUATION frame preceded by a CONTINUATION frame with
/// END_HEADERS flag".
#[test]
fn h2spec_6_10_5_continuation_after_final_continuation() {
    let mut p = Peer::open();
    p.feed(&raw(kind::HEADERS, 0, 1, &get_block())).unwrap();
    p.feed(&raw(kind::CONTINUATION, END_HEADERS, 1, &[]))
        .unwrap();
    connection_error(
        &mut p,
        &raw(kind::CONTINUATION, END_HEADERS, 1, &[]),
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/6.10/6 "Sends a CONTINUATION frame preceded by a DATA frame".
#[test]
fn h2spec_6_10_6_continuation_after_data() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    p.send(kind::DATA, 0, 1, b"x").unwrap();
    connection_error(
        &mut p,
        &raw(kind::CONTINUATION, END_HEADERS, 1, &[]),
        ErrorCode::ProtocolError,
    );
}

// 8.1 HTTP message exchange, 8.1.2 header fields, 8.2 push

/// h2spec http2/8.1/1 "Sends a second HEADERS frame without the END_STREAM flag".
#[test]
fn h2spec_8_1_1_trailers_without_end_stream() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    p.send(kind::DATA, 0, 1, b"test").unwrap();
    stream_error(
        &mut p,
        &headers(1, END_HEADERS, &block(&[("x-trailer", "a")])),
        1,
        ErrorCode::ProtocolError,
    );
}

/// Trailers that end the stream end the body (RFC 9113 §8.1).
#[test]
fn trailers_end_the_body() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    p.feed(&headers(
        1,
        END_HEADERS | END_STREAM,
        &block(&[("x-trailer", "a")]),
    ))
    .unwrap();
    assert_eq!(
        p.events,
        [Event::Data {
            stream: 1,
            data: bytes::Bytes::new(),
            end_stream: true
        }]
    );
}

/// h2spec http2/8.1.2/1 "Sends a HEADERS frame that contains the header field name in
/// uppercase letters", and the malformed heads of 8.1.2.1 (pseudo-fields: unknown, for
/// responses, after regular fields), 8.1.2.2 (connection-specific fields, TE other than
/// "trailers") and 8.1.2.3 (empty :path; no :method, :scheme or :path; duplicated ones).
#[test]
fn h2spec_8_1_2_malformed_heads_are_stream_errors() {
    let cases: Vec<Vec<(&str, &str)>> = vec![
        with(&[("X-TEST", "ok")]),
        with(&[(":test", "ok")]),
        with(&[(":status", "200")]),
        vec![
            (":method", "GET"),
            ("x-test", "ok"),
            (":scheme", "http"),
            (":path", "/"),
        ],
        with(&[("connection", "keep-alive")]),
        with(&[("te", "gzip")]),
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", ""),
            (":authority", "a"),
        ],
        vec![(":scheme", "http"), (":path", "/")],
        vec![(":method", "GET"), (":path", "/")],
        vec![(":method", "GET"), (":scheme", "http")],
        with(&[(":method", "GET")]),
        with(&[(":scheme", "http")]),
        with(&[(":path", "/")]),
    ];
    for (i, fields) in cases.iter().enumerate() {
        let mut p = Peer::open();
        p.feed(&headers(1, END_HEADERS | END_STREAM, &block(fields)))
            .unwrap();
        assert_eq!(
            p.rst(1),
            Some(ErrorCode::ProtocolError),
            "case {i}: {fields:?}"
        );
        assert!(
            !p.events.iter().any(|e| matches!(e, Event::Request { .. })),
            "case {i}"
        );
    }
    // TE: trailers is allowed.
    let mut p = Peer::open();
    p.feed(&headers(
        1,
        END_HEADERS | END_STREAM,
        &block(&with(&[("te", "trailers")])),
    ))
    .unwrap();
    assert!(matches!(p.events[..], [Event::Request { .. }]));
}

/// h2spec http2/8.1.2.1/3 "Sends a HEADERS frame that contains a pseudo-header field as
/// trailers".
#[test]
fn h2spec_8_1_2_1_3_pseudo_field_in_trailers() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    stream_error(
        &mut p,
        &headers(1, END_HEADERS | END_STREAM, &block(&[(":method", "GET")])),
        1,
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/8.1.2.6/1 "Sends a HEADERS frame with the "content-length" header field which
/// does not equal the DATA frame payload length", and /2 "... the sum of the multiple DATA
/// frames payload length".
#[test]
fn h2spec_8_1_2_6_content_length_mismatch() {
    let mut p = Peer::open();
    p.feed(&headers(
        1,
        END_HEADERS,
        &block(&with(&[("content-length", "1")])),
    ))
    .unwrap();
    stream_error(
        &mut p,
        &raw(kind::DATA, END_STREAM, 1, b"test"),
        1,
        ErrorCode::ProtocolError,
    );
    let mut p = Peer::open();
    p.feed(&headers(
        1,
        END_HEADERS,
        &block(&with(&[("content-length", "10")])),
    ))
    .unwrap();
    p.send(kind::DATA, 0, 1, b"test").unwrap();
    stream_error(
        &mut p,
        &raw(kind::DATA, END_STREAM, 1, b"test"),
        1,
        ErrorCode::ProtocolError,
    );
}

/// h2spec http2/8.2/1 "Sends a PUSH_PROMISE frame".
#[test]
fn h2spec_8_2_1_push_promise_from_a_client() {
    let mut p = Peer::open();
    p.feed(&headers(1, END_HEADERS, &block(&with(&[]))))
        .unwrap();
    let mut payload = vec![0, 0, 0, 2];
    payload.extend(get("/"));
    connection_error(
        &mut p,
        &raw(kind::PUSH_PROMISE, END_HEADERS, 1, &payload),
        ErrorCode::ProtocolError,
    );
}

// HPACK (h2spec's "hpack" group)

/// h2spec hpack/2.3.3/1 "Sends a indexed header field representation with invalid index", and
/// /2 "Sends a literal header field representation with invalid index".
#[test]
fn h2spec_hpack_2_3_3_invalid_index() {
    connection_error(
        &mut Peer::open(),
        &headers(1, END_HEADERS, &[0x20, 0x80 | 0x46]),
        ErrorCode::CompressionError,
    );
    connection_error(
        &mut Peer::open(),
        &headers(1, END_HEADERS, &[0x20, 0x7f, 0x00, 0x01, b'x']),
        ErrorCode::CompressionError,
    );
}

/// h2spec hpack/4.2/1 "Sends a dynamic table size update at the end of header block".
#[test]
fn h2spec_hpack_4_2_1_size_update_at_the_end() {
    let mut b = get_block();
    b.push(0x20);
    connection_error(
        &mut Peer::open(),
        &headers(1, END_HEADERS, &b),
        ErrorCode::CompressionError,
    );
}

/// h2spec hpack/5.2/1..3 "String Literal Representation": Huffman padding longer than 7 bits,
/// padding that is not the start of EOS, and EOS inside the string.
#[test]
fn h2spec_hpack_5_2_bad_huffman() {
    for value in [
        &[0x1f, 0xff][..],
        &[0x18][..],
        &[0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut b = get_block();
        b.extend([0x00, 0x01, b'x', 0x80 | value.len() as u8]);
        b.extend_from_slice(value);
        connection_error(
            &mut Peer::open(),
            &headers(1, END_HEADERS, &b),
            ErrorCode::CompressionError,
        );
    }
}

/// h2spec hpack/6.3/1 "Sends a dynamic table size update larger than the value of
/// SETTINGS_HEADER_TABLE_SIZE" (ours is 0 once acknowledged).
#[test]
fn h2spec_hpack_6_3_1_size_update_over_our_setting() {
    let mut b = vec![0x3f, 0xe1, 0x1f]; // 4 096
    b.extend(get("/"));
    connection_error(
        &mut Peer::open(),
        &headers(1, END_HEADERS, &b),
        ErrorCode::CompressionError,
    );
}

/// Before our SETTINGS are acknowledged, the default table (4 096) may be used (RFC 9113
/// §6.5.3); after, the peer's first block must shrink it to 0 (RFC 7541 §4.2).
#[test]
fn the_table_limit_follows_the_settings_ack() {
    let mut p = Peer::fresh(Limits::default());
    let mut hello = PREFACE.to_vec();
    hello.extend(raw(kind::SETTINGS, 0, 0, &[]));
    let mut b = Vec::new();
    hpack::encode_field(b":method", b"GET", false, false, &mut b);
    hpack::encode_field(b":scheme", b"http", false, false, &mut b);
    hpack::encode_field(b":path", b"/", false, false, &mut b);
    b.extend([0x41, 0x09]); // :authority, incremental indexing
    b.extend(b"localhost");
    hello.extend(headers(1, END_HEADERS | END_STREAM, &b));
    p.feed(&hello).unwrap();
    assert!(matches!(
        p.events[..],
        [
            Event::Settings { .. },
            Event::Writable { .. },
            Event::Request { .. }
        ]
    ));
    // The ACK arrives; the next block names the entry without shrinking first: refused.
    p.send(kind::SETTINGS, flag::ACK, 0, &[]).unwrap();
    let mut q_block = get("/");
    q_block.push(0xbe);
    connection_error(
        &mut p,
        &headers(3, END_HEADERS | END_STREAM, &q_block),
        ErrorCode::CompressionError,
    );
}
