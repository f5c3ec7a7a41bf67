"""h2spec's cases (summerwind/h2spec: http2/*.go and hpack/*.go) for the frames the edge handles,
against the real node over h2c. Each case carries h2spec's section and description verbatim and
asserts what h2spec's verifier accepts there (harness.py), a wrong error code failing.

h2spec's requests go to its --path ("/" by default): GET / here too (the node's page, which has
a body, as several flow-control cases need). Cases that send a request body use
POST /broadcast (the edge's one route with a body); a stream that must stay open uses /stream.
"""

import struct

from harness import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENABLE_PUSH,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Conn,
    Failure,
    block,
    describe,
    hblock,
    frame,
    goaway,
    hpack_int,
    literal,
    ping,
    priority,
    rst_stream,
    settings,
    window_update,
)
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

CASES = []

BROADCAST = "/broadcast?topic=h2spec"


def case(section, desc):
    def register(fn):
        CASES.append((f"{section} {desc}", fn))
        return fn

    return register


def open_conn(addr, *pairs):
    c = Conn(addr)
    c.handshake(*pairs)
    return c


def data_frame_of_length(c, n, what):
    f = c.wait(lambda f: isinstance(f, DataFrame), what)
    if len(f.data) != n:
        raise Failure(f"DATA of length {len(f.data)}, expected {n}")


# ---- 3.5 HTTP/2 Connection Preface -------------------------------------------------------------


@case("3.5/1", "HTTP/2 Connection Preface: Sends client connection preface")
def _(addr):
    c = Conn(addr)
    c.send(PREFACE + settings((INITIAL_WINDOW_SIZE, 65535)))
    c.verify_settings_ack()


@case("3.5/2", "HTTP/2 Connection Preface: Sends invalid connection preface")
def _(addr):
    c = Conn(addr)
    c.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    # The edge's plain listeners serve HTTP/1.1 beside h2c (CONTRACT: HTTP/1.1 is always
    # served), so what is not the h2c preface is an HTTP/1.1 request: a 400 and the close stand
    # where an h2-only server's GOAWAY PROTOCOL_ERROR does. Either passes; the close is required.
    try:
        c.verify_connection_error(PROTOCOL_ERROR)
    except Failure as e:
        if not c.buf.startswith(b"HTTP/1.1 400 "):
            raise e
        c.buf = b""
        c.verify_connection_close()


# ---- 4.1 Frame Format ---------------------------------------------------------------------------


@case("4.1/1", "Frame Format: Sends a frame with unknown type")
def _(addr):
    c = open_conn(addr)
    c.send(frame(0xFF, 0, 0, b"x" * 8))
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_ack(b"h2spec\0\0")


@case("4.1/2", "Frame Format: Sends a frame with undefined flag")
def _(addr):
    c = open_conn(addr)
    c.send(frame(PING, 0x16, 0, b"h2spec\0\0"))
    c.wait(lambda f: isinstance(f, PingFrame), "PING")


@case("4.1/3", "Frame Format: Sends a frame with reserved field bit")
def _(addr):
    c = open_conn(addr)
    raw = bytearray(frame(PING, 0, 0, b"h2spec\0\0"))
    raw[5] |= 0x80
    c.send(bytes(raw))
    c.wait(lambda f: isinstance(f, PingFrame), "PING")


# ---- 4.2 Frame Size ----------------------------------------------------------------------------


@case("4.2/1", "Frame Size: Sends a DATA frame with 2^14 octets in length")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST, [("content-length", "16384")])
    c.data(1, b"x" * 16384, end_stream=True)
    c.verify_headers(1)


@case("4.2/2", "Frame Size: Sends a large size DATA frame that exceeds the SETTINGS_MAX_FRAME_SIZE")
def _(addr):
    c = open_conn(addr)
    size = c.server_settings.get(MAX_FRAME_SIZE, 16384)
    c.post(1, BROADCAST)
    c.data(1, b"x" * (size + 1), end_stream=True)
    c.verify_stream_error(FRAME_SIZE_ERROR)


@case(
    "4.2/3",
    "Frame Size: Sends a large size HEADERS frame that exceeds the SETTINGS_MAX_FRAME_SIZE",
)
def _(addr):
    c = open_conn(addr)
    size = c.server_settings.get(MAX_FRAME_SIZE, 16384)
    fields = c.common_headers() + [(f"x-dummy{i}", "x" * (size // 4)) for i in range(5)]
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, hblock(fields)))
    c.verify_connection_error(FRAME_SIZE_ERROR)


# ---- 4.3 Header Compression and Decompression --------------------------------------------------


@case("4.3/1", "Header Compression and Decompression: Sends invalid header block fragment")
def _(addr):
    c = open_conn(addr)
    # h2spec's bytes: a one-octet block, a literal with incremental indexing and no name.
    c.send(b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x40")
    c.verify_connection_error(COMPRESSION_ERROR)


@case(
    "4.3/2",
    "Header Compression and Decompression: Sends a PRIORITY frame while sending the header blocks",
)
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(priority(1, 0, 255))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_connection_error(PROTOCOL_ERROR)


@case(
    "4.3/3",
    "Header Compression and Decompression: Sends a HEADERS frame to another stream while "
    "sending the header blocks",
)
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, hblock(c.common_headers())))
    c.verify_connection_error(PROTOCOL_ERROR)


# ---- 5.1 Stream States -------------------------------------------------------------------------


@case("5.1/1", "Stream States: idle: Sends a DATA frame")
def _(addr):
    c = open_conn(addr)
    c.data(1, b"test", end_stream=True)
    c.verify_connection_error(PROTOCOL_ERROR, STREAM_CLOSED)


@case("5.1/2", "Stream States: idle: Sends a RST_STREAM frame")
def _(addr):
    c = open_conn(addr)
    c.send(rst_stream(1, CANCEL))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("5.1/3", "Stream States: idle: Sends a WINDOW_UPDATE frame")
def _(addr):
    c = open_conn(addr)
    c.send(window_update(1, 100))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("5.1/4", "Stream States: idle: Sends a CONTINUATION frame")
def _(addr):
    c = open_conn(addr)
    c.send(frame(CONTINUATION, END_HEADERS, 1, block(c.common_headers())))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("5.1/5", "Stream States: half closed (remote): Sends a DATA frame")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")  # END_STREAM: half closed (remote), and the stream stays
    c.data(1, b"test", end_stream=True)
    c.verify_stream_error(STREAM_CLOSED)


@case("5.1/6", "Stream States: half closed (remote): Sends a HEADERS frame")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.get(1, "/stream?topic=h2spec")
    c.verify_stream_error(STREAM_CLOSED)


@case("5.1/7", "Stream States: half closed (remote): Sends a CONTINUATION frame")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_stream_error(STREAM_CLOSED, PROTOCOL_ERROR)


@case("5.1/8", "Stream States: closed: Sends a DATA frame after sending RST_STREAM frame")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST)
    c.send(rst_stream(1, CANCEL))
    c.data(1, b"test", end_stream=True)
    c.verify_stream_error(STREAM_CLOSED)


@case("5.1/9", "Stream States: closed: Sends a HEADERS frame after sending RST_STREAM frame")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST)
    c.send(rst_stream(1, CANCEL))
    c.get(1)
    # h2spec lists STREAM_CLOSED and passes any connection closed after a GOAWAY; a HEADERS on
    # an id not above the last opened is also "an unexpected stream identifier" (RFC 9113
    # §5.1.1: PROTOCOL_ERROR), which the edge answers (src/wire/h2/conformance.rs, 5.1.9).
    c.verify_stream_error(STREAM_CLOSED, PROTOCOL_ERROR)


@case("5.1/10", "Stream States: closed: Sends a CONTINUATION frame after sending RST_STREAM frame")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST)
    c.send(rst_stream(1, CANCEL))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_stream_error(STREAM_CLOSED, PROTOCOL_ERROR)


@case("5.1/11", "Stream States: closed: Sends a DATA frame")
def _(addr):
    c = open_conn(addr)
    c.get(1)
    c.verify_stream_close(1)
    c.data(1, b"test", end_stream=True)
    c.verify_stream_error(STREAM_CLOSED)


@case("5.1/12", "Stream States: closed: Sends a HEADERS frame")
def _(addr):
    c = open_conn(addr)
    c.get(1)
    c.verify_stream_close(1)
    c.get(1)
    # As in 5.1/9: PROTOCOL_ERROR by §5.1.1's reading, which h2spec's verifier also passes.
    c.verify_connection_error(STREAM_CLOSED, PROTOCOL_ERROR)


@case("5.1/13", "Stream States: closed: Sends a CONTINUATION frame")
def _(addr):
    c = open_conn(addr)
    c.get(1)
    c.verify_stream_close(1)
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_connection_error(STREAM_CLOSED, PROTOCOL_ERROR)


# ---- 5.1.1 Stream Identifiers / 5.1.2 Stream Concurrency ---------------------------------------


@case("5.1.1/1", "Stream Identifiers: Sends even-numbered stream identifier")
def _(addr):
    c = open_conn(addr)
    c.get(2)
    c.verify_connection_error(PROTOCOL_ERROR)


@case("5.1.1/2", "Stream Identifiers: Sends stream identifier that is numerically smaller than previous")
def _(addr):
    c = open_conn(addr)
    c.get(5)
    c.get(3)
    c.verify_connection_error(PROTOCOL_ERROR)


@case(
    "5.1.2/1",
    "Stream Concurrency: Sends HEADERS frames that causes their advertised concurrent stream "
    "limit to be exceeded",
)
def _(addr):
    # A window of 0 keeps every answer open, so the streams stay counted.
    c = open_conn(addr, (INITIAL_WINDOW_SIZE, 0))
    limit = c.server_settings.get(MAX_CONCURRENT_STREAMS)
    if limit is None:
        raise Failure("the node advertised no SETTINGS_MAX_CONCURRENT_STREAMS")
    for i in range(limit + 1):
        c.get(1 + 2 * i)
    c.verify_stream_error(PROTOCOL_ERROR, REFUSED_STREAM)


# ---- 5.3.1 Stream Dependencies -----------------------------------------------------------------


@case("5.3.1/1", "Stream Dependencies: Sends HEADERS frame that depends on itself")
def _(addr):
    c = open_conn(addr)
    prio = struct.pack(">IB", 3, 255)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 3, prio + hblock(c.common_headers())))
    c.verify_stream_error(PROTOCOL_ERROR)


@case("5.3.1/2", "Stream Dependencies: Sends PRIORITY frame that depend on itself")
def _(addr):
    c = open_conn(addr)
    c.send(priority(2, 2, 255))
    c.verify_stream_error(PROTOCOL_ERROR)


# ---- 5.4.1 Connection Error Handling / 5.5 Extending HTTP/2 ------------------------------------


@case("5.4.1/1", "Connection Error Handling: Sends an invalid PING frame for connection close")
def _(addr):
    c = open_conn(addr)
    c.send(frame(PING, 0, 3, b"h2spec\0\0"))
    c.verify_connection_close()


@case("5.4.1/2", "Connection Error Handling: Sends an invalid PING frame to receive GOAWAY frame")
def _(addr):
    c = open_conn(addr)
    c.send(frame(PING, 0, 3, b"h2spec\0\0"))
    c.verify_goaway(PROTOCOL_ERROR)


@case("5.5/1", "Extending HTTP/2: Sends an unknown extension frame")
def _(addr):
    c = open_conn(addr)
    c.send(frame(0x16, 0, 0, b"\0" * 8))
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_ack(b"h2spec\0\0")


@case("5.5/2", "Extending HTTP/2: Sends an unknown extension frame in the middle of a header block")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(0x16, 0, 1, b"\0" * 8))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_connection_error(PROTOCOL_ERROR)


# ---- 6.1 DATA ----------------------------------------------------------------------------------


@case("6.1/1", "DATA: Sends a DATA frame with 0x0 stream identifier")
def _(addr):
    c = open_conn(addr)
    c.data(0, b"test", end_stream=True)
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.1/2", 'DATA: Sends a DATA frame on the stream that is not in "open" or "half-closed (local)" state')
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.data(1, b"test", end_stream=True)
    c.verify_stream_error(STREAM_CLOSED)


@case("6.1/3", "DATA: Sends a DATA frame with invalid pad length")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST, [("content-length", "4")])
    # Pad length 6 in a 5-octet payload (h2spec: "\x06test").
    c.send(frame(DATA, END_STREAM | PADDED, 1, b"\x06test"))
    c.verify_connection_error(PROTOCOL_ERROR)


# ---- 6.2 HEADERS -------------------------------------------------------------------------------


@case("6.2/1", "HEADERS: Sends a HEADERS frame without the END_HEADERS flag, and a PRIORITY frame")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(priority(1, 0, 255))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.2/2", "HEADERS: Sends a HEADERS frame to another stream while sending a HEADERS frame")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, hblock(c.common_headers())))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.2/3", "HEADERS: Sends a HEADERS frame with 0x0 stream identifier")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 0, hblock(c.common_headers())))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.2/4", "HEADERS: Sends a HEADERS frame with invalid pad length")
def _(addr):
    c = open_conn(addr)
    fields = hblock(c.common_headers())
    # h2spec: a pad length of the block's length + 2, more than the payload holds.
    c.send(frame(HEADERS, END_STREAM | END_HEADERS | PADDED, 1, bytes([len(fields) + 2]) + fields))
    c.verify_stream_error(PROTOCOL_ERROR)


# ---- 6.3 PRIORITY ------------------------------------------------------------------------------


@case("6.3/1", "PRIORITY: Sends a PRIORITY frame with 0x0 stream identifier")
def _(addr):
    c = open_conn(addr)
    c.send(priority(0, 1, 255))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.3/2", "PRIORITY: Sends a PRIORITY frame with a length other than 5 octets")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.send(frame(PRIORITY, 0, 1, b"\x80\x00\x00\x01"))
    c.verify_stream_error(FRAME_SIZE_ERROR)


# ---- 6.4 RST_STREAM ----------------------------------------------------------------------------


@case("6.4/1", "RST_STREAM: Sends a RST_STREAM frame with 0x0 stream identifier")
def _(addr):
    c = open_conn(addr)
    c.send(rst_stream(0, CANCEL))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.4/2", "RST_STREAM: Sends a RST_STREAM frame on a idle stream")
def _(addr):
    c = open_conn(addr)
    c.send(rst_stream(1, CANCEL))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.4/3", "RST_STREAM: Sends a RST_STREAM frame with a length other than 4 octets")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.send(frame(RST_STREAM, 0, 1, b"\x00\x00\x00"))
    c.verify_stream_error(FRAME_SIZE_ERROR)


# ---- 6.5 SETTINGS ------------------------------------------------------------------------------


@case("6.5/1", "SETTINGS: Sends a SETTINGS frame with ACK flag and payload")
def _(addr):
    c = open_conn(addr)
    c.send(frame(SETTINGS, ACK, 0, b"\x00"))
    c.verify_connection_error(FRAME_SIZE_ERROR)


@case("6.5/2", "SETTINGS: Sends a SETTINGS frame with a stream identifier other than 0x0")
def _(addr):
    c = open_conn(addr)
    c.send(frame(SETTINGS, 0, 1, struct.pack(">HI", INITIAL_WINDOW_SIZE, 100)))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.5/3", "SETTINGS: Sends a SETTINGS frame with a length other than a multiple of 6 octets")
def _(addr):
    c = open_conn(addr)
    c.send(frame(SETTINGS, 0, 0, b"\x00\x03\x00"))
    c.verify_stream_error(PROTOCOL_ERROR, FRAME_SIZE_ERROR)


# ---- 6.5.2 Defined SETTINGS Parameters ---------------------------------------------------------


@case("6.5.2/1", "Defined SETTINGS Parameters: SETTINGS_ENABLE_PUSH (0x2): Sends the value other than 0 or 1")
def _(addr):
    c = open_conn(addr)
    c.send(settings((ENABLE_PUSH, 2)))
    c.verify_connection_error(PROTOCOL_ERROR)


@case(
    "6.5.2/2",
    "Defined SETTINGS Parameters: SETTINGS_INITIAL_WINDOW_SIZE (0x4): Sends the value above "
    "the maximum flow control window size",
)
def _(addr):
    c = open_conn(addr)
    c.send(settings((INITIAL_WINDOW_SIZE, 2147483648)))
    c.verify_connection_error(FLOW_CONTROL_ERROR)


@case(
    "6.5.2/3",
    "Defined SETTINGS Parameters: SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value below the initial value",
)
def _(addr):
    c = open_conn(addr)
    c.send(settings((MAX_FRAME_SIZE, 16383)))
    c.verify_connection_error(PROTOCOL_ERROR)


@case(
    "6.5.2/4",
    "Defined SETTINGS Parameters: SETTINGS_MAX_FRAME_SIZE (0x5): Sends the value above the "
    "maximum allowed frame size",
)
def _(addr):
    c = open_conn(addr)
    c.send(settings((MAX_FRAME_SIZE, 16777216)))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.5.2/5", "Defined SETTINGS Parameters: Sends a SETTINGS frame with unknown identifier")
def _(addr):
    c = open_conn(addr)
    c.send(settings((0xFF, 1)))
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_ack(b"h2spec\0\0")


# ---- 6.5.3 Settings Synchronization ------------------------------------------------------------


@case("6.5.3/1", "Settings Synchronization: Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE")
def _(addr):
    c = open_conn(addr)
    c.send(settings((INITIAL_WINDOW_SIZE, 100), (INITIAL_WINDOW_SIZE, 1)))
    c.verify_settings_ack()
    c.get(1)
    data_frame_of_length(c, 1, "DATA of length 1 (the last value wins)")


@case("6.5.3/2", "Settings Synchronization: Sends a SETTINGS frame without ACK flag")
def _(addr):
    c = open_conn(addr)
    c.send(settings((ENABLE_PUSH, 0)))
    c.verify_settings_ack()


# ---- 6.7 PING ----------------------------------------------------------------------------------


@case("6.7/1", "PING: Sends a PING frame")
def _(addr):
    c = open_conn(addr)
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_ack(b"h2spec\0\0")


@case("6.7/2", "PING: Sends a PING frame with ACK")
def _(addr):
    c = open_conn(addr)
    # An unsolicited ACK must not be answered: the next ACK is the one to the PING after it.
    c.send(ping(b"invalid\0", ack=True))
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_ack(b"h2spec\0\0")


@case("6.7/3", "PING: Sends a PING frame with a stream identifier field value other than 0x0")
def _(addr):
    c = open_conn(addr)
    c.send(frame(PING, 0, 1, b"h2spec\0\0"))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.7/4", "PING: Sends a PING frame with a length field value other than 8")
def _(addr):
    c = open_conn(addr)
    c.send(frame(PING, 0, 0, b"h2spec"))
    c.verify_connection_error(FRAME_SIZE_ERROR)


# ---- 6.8 GOAWAY --------------------------------------------------------------------------------


@case("6.8/1", "GOAWAY: Sends a GOAWAY frame with a stream identifier other than 0x0")
def _(addr):
    c = open_conn(addr)
    c.send(frame(0x7, 0, 1, struct.pack(">II", 0, 0)))
    c.verify_connection_error(PROTOCOL_ERROR)


# ---- 6.9 WINDOW_UPDATE -------------------------------------------------------------------------


@case("6.9/1", "WINDOW_UPDATE: Sends a WINDOW_UPDATE frame with a flow control window increment of 0")
def _(addr):
    c = open_conn(addr)
    c.send(window_update(0, 0))
    c.verify_connection_error(PROTOCOL_ERROR)


@case(
    "6.9/2",
    "WINDOW_UPDATE: Sends a WINDOW_UPDATE frame with a flow control window increment of 0 on a stream",
)
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.send(window_update(1, 0))
    c.verify_stream_error(PROTOCOL_ERROR)


@case("6.9/3", "WINDOW_UPDATE: Sends a WINDOW_UPDATE frame with a length other than 4 octets")
def _(addr):
    c = open_conn(addr)
    c.send(frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
    c.verify_connection_error(FRAME_SIZE_ERROR)


# ---- 6.9.1 The Flow-Control Window -------------------------------------------------------------


@case(
    "6.9.1/1",
    "The Flow-Control Window: Sends SETTINGS frame to set the initial window size to 1 and "
    "sends HEADERS frame",
)
def _(addr):
    c = open_conn(addr)
    c.send(settings((INITIAL_WINDOW_SIZE, 1)))
    c.verify_settings_ack()
    c.get(1)
    data_frame_of_length(c, 1, "DATA of length 1")


@case(
    "6.9.1/2",
    "The Flow-Control Window: Sends multiple WINDOW_UPDATE frames increasing the flow control "
    "window to above 2^31-1",
)
def _(addr):
    c = open_conn(addr)
    c.send(window_update(0, 2147483647))
    c.send(window_update(0, 2147483647))
    c.verify_goaway(FLOW_CONTROL_ERROR)


@case(
    "6.9.1/3",
    "The Flow-Control Window: Sends multiple WINDOW_UPDATE frames increasing the flow control "
    "window to above 2^31-1 on a stream",
)
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.send(window_update(1, 2147483647))
    c.send(window_update(1, 2147483647))
    f = c.wait(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 1, "RST_STREAM FLOW_CONTROL_ERROR")
    if f.error_code != FLOW_CONTROL_ERROR:
        raise Failure(f"RST_STREAM code {f.error_code}, expected FLOW_CONTROL_ERROR")


# ---- 6.9.2 Initial Flow-Control Window Size ----------------------------------------------------


@case(
    "6.9.2/1",
    "Initial Flow-Control Window Size: Changes SETTINGS_INITIAL_WINDOW_SIZE after sending HEADERS frame",
)
def _(addr):
    c = open_conn(addr)
    c.send(settings((INITIAL_WINDOW_SIZE, 0)))
    c.verify_settings_ack()
    c.get(1)
    c.verify_headers(1)
    c.send(settings((INITIAL_WINDOW_SIZE, 1)))
    data_frame_of_length(c, 1, "DATA of length 1 after the window grew to 1")


@case("6.9.2/2", "Initial Flow-Control Window Size: Sends a SETTINGS frame for window size to be negative")
def _(addr):
    c = open_conn(addr)
    c.send(settings((INITIAL_WINDOW_SIZE, 3)))
    c.verify_settings_ack()
    c.get(1)
    c.wait(lambda f: isinstance(f, DataFrame), "DATA")
    c.send(settings((INITIAL_WINDOW_SIZE, 2)))
    c.verify_settings_ack()
    c.send(window_update(1, 2))
    data_frame_of_length(c, 1, "DATA of length 1 (window -1 + 2)")


@case(
    "6.9.2/3",
    "Initial Flow-Control Window Size: Sends a SETTINGS_INITIAL_WINDOW_SIZE settings with an "
    "exceeded maximum window size value",
)
def _(addr):
    c = open_conn(addr)
    c.send(settings((INITIAL_WINDOW_SIZE, 2147483648)))
    c.verify_connection_error(FLOW_CONTROL_ERROR)


# ---- 6.10 CONTINUATION -------------------------------------------------------------------------


@case("6.10/1", "CONTINUATION: Sends multiple CONTINUATION frames preceded by a HEADERS frame")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(CONTINUATION, 0, 1, block([("x-dummy1", "x" * 100)])))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy2", "x" * 100)])))
    c.verify_headers(1)


@case("6.10/2", "CONTINUATION: Sends a CONTINUATION frame followed by any frame other than CONTINUATION")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(CONTINUATION, 0, 1, block([("x-dummy1", "x")])))
    c.data(1, b"test", end_stream=True)
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.10/3", "CONTINUATION: Sends a CONTINUATION frame with 0x0 stream identifier")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(CONTINUATION, END_HEADERS, 0, block([("x-dummy", "x")])))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.10/4", "CONTINUATION: Sends a CONTINUATION frame preceded by a HEADERS frame with END_HEADERS flag")
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, hblock(c.common_headers())))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_connection_error(PROTOCOL_ERROR)


@case(
    "6.10/5",
    "CONTINUATION: Sends a CONTINUATION frame preceded by a CONTINUATION frame with END_HEADERS flag",
)
def _(addr):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers())))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy1", "x")])))
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy2", "x")])))
    c.verify_connection_error(PROTOCOL_ERROR)


@case("6.10/6", "CONTINUATION: Sends a CONTINUATION frame preceded by a DATA frame")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST)
    c.data(1, b"test")
    c.send(frame(CONTINUATION, END_HEADERS, 1, block([("x-dummy", "x")])))
    c.verify_connection_error(PROTOCOL_ERROR)


# ---- 7 Error Codes -----------------------------------------------------------------------------


@case("7/1", "Error Codes: Sends a GOAWAY frame with unknown error code")
def _(addr):
    c = open_conn(addr)
    c.send(goaway(0, 0xFF))
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_or_close(b"h2spec\0\0")


@case("7/2", "Error Codes: Sends a RST_STREAM frame with unknown error code")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.verify_headers(1)
    c.send(rst_stream(1, 0xFF))
    c.send(ping(b"h2spec\0\0"))
    c.verify_ping_or_close(b"h2spec\0\0")


# ---- 8.1 HTTP Request/Response Exchange --------------------------------------------------------


@case("8.1/1", "HTTP Request/Response Exchange: Sends a second HEADERS frame without the END_STREAM flag")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST)
    c.data(1, b"test")
    c.headers(1, [("x-trailer", "x")], end_stream=False)
    c.verify_stream_error(PROTOCOL_ERROR)


def malformed(addr, fields, raw=None):
    """A request whose head breaks §8.3 (h2spec 8.1.2.x): a stream error PROTOCOL_ERROR."""
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, raw if raw is not None else hblock(fields)))
    c.verify_stream_error(PROTOCOL_ERROR)


def common(addr):
    return [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", addr)]


@case("8.1.2/1", "HTTP Header Fields: Sends a HEADERS frame that contains the header field name in uppercase letters")
def _(addr):
    malformed(addr, common(addr) + [("X-TEST", "ok")])


@case("8.1.2.1/1", "Pseudo-Header Fields: Sends a HEADERS frame that contains a unknown pseudo-header field")
def _(addr):
    malformed(addr, common(addr) + [(":test", "ok")])


@case(
    "8.1.2.1/2",
    "Pseudo-Header Fields: Sends a HEADERS frame that contains the pseudo-header field defined for response",
)
def _(addr):
    malformed(addr, common(addr) + [(":status", "200")])


@case("8.1.2.1/3", "Pseudo-Header Fields: Sends a HEADERS frame that contains a pseudo-header field as trailers")
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST)
    c.data(1, b"test")
    c.headers(1, [(":method", "POST")], end_stream=True)
    c.verify_stream_error(PROTOCOL_ERROR)


@case(
    "8.1.2.1/4",
    "Pseudo-Header Fields: Sends a HEADERS frame that contains a pseudo-header field that "
    "appears in a header block after a regular header field",
)
def _(addr):
    f = common(addr)
    malformed(addr, f[:3] + [("x-test", "ok"), f[3]])


@case(
    "8.1.2.2/1",
    "Connection-Specific Header Fields: Sends a HEADERS frame that contains the connection-specific header field",
)
def _(addr):
    malformed(addr, common(addr) + [("connection", "keep-alive")])


@case(
    "8.1.2.2/2",
    'Connection-Specific Header Fields: Sends a HEADERS frame that contains the TE header field '
    'with any value other than "trailers"',
)
def _(addr):
    malformed(addr, common(addr) + [("trailers", "test"), ("te", "trailers, deflate")])


@case("8.1.2.3/1", 'Request Pseudo-Header Fields: Sends a HEADERS frame with empty ":path" pseudo-header field')
def _(addr):
    malformed(addr, [(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", addr)])


@case("8.1.2.3/2", 'Request Pseudo-Header Fields: Sends a HEADERS frame that omits ":method" pseudo-header field')
def _(addr):
    malformed(addr, [(":scheme", "http"), (":path", "/"), (":authority", addr)])


@case("8.1.2.3/3", 'Request Pseudo-Header Fields: Sends a HEADERS frame that omits ":scheme" pseudo-header field')
def _(addr):
    malformed(addr, [(":method", "GET"), (":path", "/"), (":authority", addr)])


@case("8.1.2.3/4", 'Request Pseudo-Header Fields: Sends a HEADERS frame that omits ":path" pseudo-header field')
def _(addr):
    malformed(addr, [(":method", "GET"), (":scheme", "http"), (":authority", addr)])


@case(
    "8.1.2.3/5",
    'Request Pseudo-Header Fields: Sends a HEADERS frame with duplicated ":method" pseudo-header field',
)
def _(addr):
    malformed(addr, [(":method", "GET"), (":method", "GET")] + common(addr)[1:])


@case(
    "8.1.2.3/6",
    'Request Pseudo-Header Fields: Sends a HEADERS frame with duplicated ":scheme" pseudo-header field',
)
def _(addr):
    f = common(addr)
    malformed(addr, f[:2] + [(":scheme", "http")] + f[2:])


@case(
    "8.1.2.3/7",
    'Request Pseudo-Header Fields: Sends a HEADERS frame with duplicated ":path" pseudo-header field',
)
def _(addr):
    f = common(addr)
    malformed(addr, f[:3] + [(":path", "/")] + f[3:])


@case(
    "8.1.2.6/1",
    'Malformed Requests and Responses: Sends a HEADERS frame with the "content-length" header '
    "field which does not equal the DATA frame payload length",
)
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST, [("content-length", "1")])
    c.data(1, b"test", end_stream=True)
    c.verify_stream_error(PROTOCOL_ERROR)


@case(
    "8.1.2.6/2",
    'Malformed Requests and Responses: Sends a HEADERS frame with the "content-length" header '
    "field which does not equal the sum of the multiple DATA frames payload length",
)
def _(addr):
    c = open_conn(addr)
    c.post(1, BROADCAST, [("content-length", "1")])
    c.data(1, b"test")
    c.data(1, b"test", end_stream=True)
    c.verify_stream_error(PROTOCOL_ERROR)


@case("8.2/1", "Server Push: Sends a PUSH_PROMISE frame")
def _(addr):
    c = open_conn(addr)
    c.get(1, "/stream?topic=h2spec")
    c.send(frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 3) + hblock(common(addr))))
    c.verify_connection_error(PROTOCOL_ERROR)


# ---- HPACK (RFC 7541) --------------------------------------------------------------------------


def hpack_error(addr, raw_block):
    c = open_conn(addr)
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, raw_block))
    c.verify_connection_error(COMPRESSION_ERROR)


@case("hpack/2.3.3/1", "Index Address Space: Sends a indexed header field representation with invalid index")
def _(addr):
    # h2spec: index 70, past the static table with an empty dynamic table.
    hpack_error(addr, hblock(common(addr)) + hpack_int(70, 7, 0x80))


@case("hpack/2.3.3/2", "Index Address Space: Sends a literal header field representation with invalid index")
def _(addr):
    # h2spec's bytes: a literal with incremental indexing naming index 70, an empty value.
    hpack_error(addr, hblock(common(addr)) + b"\x7f\x07\x00")


@case("hpack/4.2/1", "Maximum Table Size: Sends a dynamic table size update at the end of header block")
def _(addr):
    hpack_error(addr, hblock(common(addr)) + hpack_int(1, 5, 0x20))


@case(
    "hpack/5.2/1",
    "String Literal Representation: Sends a Huffman-encoded string literal representation with "
    "padding longer than 7 bits",
)
def _(addr):
    # h2spec: "x-test" with the value Huffman-coded and a whole octet of EOS padding after it.
    hpack_error(addr, hblock(common(addr)) + b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff")


@case(
    "hpack/5.2/2",
    "String Literal Representation: Sends a Huffman-encoded string literal representation padded by zero",
)
def _(addr):
    hpack_error(addr, hblock(common(addr)) + b"\x00\x85\xf2\xb2\x4a\x84\xff\x83\x49\x50\x90")


@case(
    "hpack/5.2/3",
    "String Literal Representation: Sends a Huffman-encoded string literal representation "
    "containing the EOS symbol",
)
def _(addr):
    hpack_error(addr, hblock(common(addr)) + b"\x00\x85\xf2\xb2\x4a\x84\xff\x87\x49\x51\xff\xff\xff\xfa\x7f")


@case("hpack/6.1/1", "Indexed Header Field Representation: Sends a indexed header field representation with index 0")
def _(addr):
    hpack_error(addr, hblock(common(addr)) + b"\x80")


@case(
    "hpack/6.3/1",
    "Dynamic Table Size Update: Sends a dynamic table size update larger than the value of "
    "SETTINGS_HEADER_TABLE_SIZE",
)
def _(addr):
    c = open_conn(addr)
    limit = c.server_settings.get(HEADER_TABLE_SIZE, 4096)
    # At the start of the block, as the rule wants, and one above the node's setting.
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, hpack_int(limit + 1, 5, 0x20) + block(common(addr))))
    c.verify_connection_error(COMPRESSION_ERROR)


@case("8.1/2", "HTTP Request/Response Exchange: a GET / answered 200 with a body that ends the stream")
def _(addr):
    # Not an h2spec case: the exchange every case above relies on, with a real HPACK encoder.
    c = open_conn(addr)
    c.get(1)
    h = c.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1, "HEADERS on stream 1")
    status = dict(h.decoded or []).get(":status")
    if status != "200":
        raise Failure(f":status {status!r}, expected 200 (head {h.decoded})")
    for name, _ in h.decoded:
        if name in ("connection", "keep-alive", "transfer-encoding"):
            raise Failure(f"the head carries the connection-specific field {name!r}")
    c.verify_stream_close(1)


@case(
    "5.1/extra",
    "Stream States (RFC 9113 §5.1, not an h2spec case): closed: DATA already in flight after "
    "the node's RST_STREAM is ignored",
)
def _(addr):
    # A body over --max-body is answered 413 at once and the stream reset with NO_ERROR (§8.1);
    # frames the client had already sent "MUST" then be minimally processed and discarded
    # (§5.1, "closed", after sending RST_STREAM; DATA still counts against the connection
    # window), not answered with another RST_STREAM per frame.
    c = open_conn(addr)
    c.post(1, BROADCAST, [("content-length", "70000")])
    c.data(1, b"x" * 16384)
    c.data(1, b"x" * 16384)
    c.wait(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 1, "the node's RST_STREAM")
    c.send(ping(b"h2spec\0\0"))
    f = c.wait(lambda f: isinstance(f, PingFrame) or isinstance(f, RstStreamFrame), "PING with ACK")
    if isinstance(f, RstStreamFrame):
        raise Failure(f"the node answered DATA on a stream it had reset with {describe(f)}")
