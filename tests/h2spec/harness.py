"""A raw HTTP/2 client for the h2spec port: frames written byte by byte (so that malformed ones
can be sent), the server's frames read with PyPI's hyperframe and its heads decoded with hpack.

h2spec's own verbs are kept (summerwind/h2spec, spec/verifier.go), with its rules for what
passes: a connection error is a GOAWAY with one of the expected codes, or the connection closed;
a stream error is that, or an RST_STREAM with one of the codes; a timeout fails. Every wait has a
deadline (PATIENCE); nothing asserts on how long anything took.
"""

import socket
import struct
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

# Flags.
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Settings.
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xA, 0xB

CODE_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM", 0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM", 0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED",
}

# How long to wait for what should come "soon" on a noisy shared machine (h2spec: 2 s).
PATIENCE = 10.0


# Every connection a case opened, closed by run.py after the case.
OPEN = []


class Failure(Exception):
    """A case's expectation was not met: what was expected and what happened."""


def code_name(code):
    return CODE_NAMES.get(code, hex(code))


def frame(ftype, flags, stream, payload=b""):
    """One frame, exactly as given (length from the payload, reserved bit clear)."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
        ">I", stream
    ) + payload


def settings(*pairs, ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(stream, increment):
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment))


def rst_stream(stream, code):
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def ping(data=b"h2spec\0\0", ack=False):
    return frame(PING, ACK if ack else 0, 0, data)


def priority(stream, depends_on, weight=16, exclusive=False):
    dep = depends_on | (0x80000000 if exclusive else 0)
    return frame(PRIORITY, 0, stream, struct.pack(">IB", dep, weight - 1))


def goaway(last_stream, code, debug=b""):
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code) + debug)


def hpack_int(value, prefix_bits, first_byte_flags):
    """RFC 7541 §5.1 integer with an N-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(s):
    b = s if isinstance(s, bytes) else s.encode()
    return hpack_int(len(b), 7, 0) + b


def literal(name, value):
    """A literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2): no table state."""
    return b"\x00" + hpack_str(name) + hpack_str(value)


def hblock(fields):
    """The start of a header block: a dynamic table size update to 0, then literals. The node
    advertises SETTINGS_HEADER_TABLE_SIZE 0, and once our ACK of it is sent an encoder MUST say
    so at the start of its next block (RFC 7541 §4.2), which the node enforces (as nghttp2
    does). h2spec's own client leaves it out; every block start here carries it (allowed at the
    start of any block, at or below the setting)."""
    return b"\x20" + block(fields)


def block(fields):
    """A header block of literals without indexing (the table is never touched)."""
    return b"".join(literal(n, v) for n, v in fields)


class Conn:
    """One connection to the node, h2c with prior knowledge."""

    def __init__(self, addr, patience=PATIENCE):
        self.addr = addr
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=patience)
        self.sock.settimeout(patience)
        self.patience = patience
        self.buf = b""
        self.closed = False
        self.server_settings = {}
        # A real encoder for the ordinary requests: static-table indexing and Huffman, its
        # dynamic table sized 0 (it starts the first block with a size update to 0, which any
        # table size the node advertises allows).
        self.encoder = hpack.Encoder()
        self.encoder.header_table_size = 0
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.frames = []  # every frame read, for the failure messages
        OPEN.append(self)

    # ---- writing -------------------------------------------------------------------------------

    def send(self, raw):
        try:
            self.sock.sendall(raw)
        except OSError:
            # The node may have closed already (that is what some cases wait for); the reads
            # that follow see it.
            pass

    def encode(self, fields):
        return self.encoder.encode(fields)

    def common_headers(self, path="/", method="GET"):
        return [(":method", method), (":scheme", "http"), (":path", path), (":authority", self.addr)]

    def headers(self, stream, fields, end_stream=True, end_headers=True, raw_block=None):
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        payload = raw_block if raw_block is not None else self.encode(fields)
        self.send(frame(HEADERS, flags, stream, payload))

    def get(self, stream, path="/", extra=(), end_stream=True):
        self.headers(stream, self.common_headers(path) + list(extra), end_stream=end_stream)

    def post(self, stream, path, extra=(), end_stream=False):
        self.headers(stream, self.common_headers(path, "POST") + list(extra), end_stream=end_stream)

    def data(self, stream, payload, end_stream=False):
        self.send(frame(DATA, END_STREAM if end_stream else 0, stream, payload))

    # ---- reading -------------------------------------------------------------------------------

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError
        except (ConnectionResetError, BrokenPipeError, OSError):
            chunk = b""
        if not chunk:
            self.closed = True
        self.buf += chunk
        return chunk

    def read_frame(self, patience=None):
        """The next frame, None when the connection closed; TimeoutError past the deadline."""
        deadline = time.monotonic() + (self.patience if patience is None else patience)
        while True:
            if self.buf.startswith(b"HTTP/1."):
                # A node without HTTP/2 answers the preface as a bad HTTP/1.1 request: say so
                # at once rather than wait for a frame that never comes.
                line = self.buf.split(b"\r\n", 1)[0]
                raise Failure(f"the node answered in HTTP/1.1: {line!r} (no h2c?)")
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    head, body = self.buf[:9], self.buf[9 : 9 + length]
                    self.buf = self.buf[9 + length :]
                    f, _ = Frame.parse_frame_header(memoryview(head))
                    f.parse_body(memoryview(body))
                    if isinstance(f, HeadersFrame) or isinstance(f, ContinuationFrame):
                        f.decoded = None
                        if isinstance(f, HeadersFrame) and "END_HEADERS" in f.flags:
                            f.decoded = self.decoder.decode(bytes(f.data), raw=False)
                    if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                        self.server_settings.update(f.settings)
                    self.frames.append(f)
                    return f
            if self.closed:
                return None
            self._fill(deadline)

    def wait(self, pred, what, patience=None):
        """Reads until a frame matches `pred` (returned); Failure when it closes or times out."""
        deadline = time.monotonic() + (self.patience if patience is None else patience)
        while True:
            try:
                f = self.read_frame(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Failure(f"expected {what}; got nothing more ({self.history()})")
            if f is None:
                raise Failure(f"expected {what}; the connection closed ({self.history()})")
            if pred(f):
                return f

    def history(self, last=6):
        shown = [describe(f) for f in self.frames[-last:]]
        return "last frames: " + (", ".join(shown) if shown else "none")

    # ---- h2spec's verbs --------------------------------------------------------------------------

    def handshake(self, *pairs):
        """Preface, our SETTINGS; the node's SETTINGS (acknowledged) and its ACK of ours."""
        self.send(PREFACE + settings(*pairs))
        got_settings = got_ack = False
        while not (got_settings and got_ack):
            f = self.wait(lambda f: isinstance(f, SettingsFrame), "the node's SETTINGS and ACK")
            if "ACK" in f.flags:
                got_ack = True
            else:
                got_settings = True
                self.send(settings(ack=True))

    def verify_settings_ack(self):
        self.wait(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags, "SETTINGS with ACK")

    def verify_ping_ack(self, data):
        f = self.wait(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags, "PING with ACK")
        if bytes(f.opaque_data) != data:
            raise Failure(f"PING ACK carries {bytes(f.opaque_data)!r}, expected {data!r}")

    def verify_ping_or_close(self, data):
        try:
            self.verify_ping_ack(data)
        except Failure:
            if not self.closed:
                raise

    def verify_connection_error(self, *codes):
        """h2spec VerifyConnectionError: a GOAWAY with one of `codes`, or the connection closed."""
        self._verify_error(codes, stream_too=False)

    def verify_stream_error(self, *codes):
        """h2spec VerifyStreamError: a GOAWAY or RST_STREAM with one of `codes`, or closed."""
        self._verify_error(codes, stream_too=True)

    def _verify_error(self, codes, stream_too):
        deadline = time.monotonic() + self.patience
        while True:
            try:
                f = self.read_frame(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Failure(f"expected {expected(codes, stream_too)}; timed out ({self.history()})")
            if f is None:
                return  # closed: h2spec accepts it
            if isinstance(f, GoAwayFrame) and f.error_code in codes:
                return
            if stream_too and isinstance(f, RstStreamFrame) and f.error_code in codes:
                return
            if isinstance(f, GoAwayFrame) or (stream_too and isinstance(f, RstStreamFrame)):
                # Stricter than h2spec, which keeps reading to the close and passes then: the
                # code is what tells a client why, so a wrong one fails here.
                raise Failure(f"expected {expected(codes, stream_too)}; got {describe(f)}")

    def verify_connection_close(self):
        deadline = time.monotonic() + self.patience
        while True:
            try:
                f = self.read_frame(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Failure(f"expected the connection closed ({self.history()})")
            if f is None:
                return

    def verify_headers(self, stream):
        self.wait(
            lambda f: isinstance(f, HeadersFrame) and f.stream_id == stream,
            f"HEADERS on stream {stream}",
        )

    def verify_stream_close(self, stream):
        """h2spec VerifyStreamClose: END_STREAM on DATA or HEADERS, or RST_STREAM NO_ERROR."""
        self.wait(
            lambda f: f.stream_id == stream
            and (
                (isinstance(f, (DataFrame, HeadersFrame)) and "END_STREAM" in f.flags)
                or (isinstance(f, RstStreamFrame) and f.error_code == NO_ERROR)
            ),
            f"stream {stream} closed",
        )

    def verify_goaway(self, *codes):
        """Strict: a GOAWAY with one of `codes` (for the hostile patterns: the node must say why)."""
        f = self.wait(lambda f: isinstance(f, GoAwayFrame), f"GOAWAY {expected(codes, False)}")
        if f.error_code not in codes:
            raise Failure(f"GOAWAY {code_name(f.error_code)}, expected {expected(codes, False)}")
        return f

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def expected(codes, stream_too):
    names = "/".join(code_name(c) for c in codes)
    return f"GOAWAY or RST_STREAM {names}" if stream_too else f"GOAWAY {names}"


def describe(f):
    name = type(f).__name__.replace("Frame", "").upper()
    extra = ""
    if isinstance(f, (GoAwayFrame, RstStreamFrame)):
        extra = " " + code_name(f.error_code)
    if isinstance(f, DataFrame):
        extra = f" len={len(f.data)}"
    flags = ",".join(sorted(f.flags))
    return f"{name}(stream={f.stream_id}{extra}{' ' + flags if flags else ''})"


def status_of(f):
    for name, value in f.decoded or []:
        if name == ":status":
            return int(value)
    return None


def metrics(addr):
    """The node's /metrics over HTTP/1.1: {series: value}, series with its labels."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise Failure(f"/metrics answered {head[:40]!r}")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = out.get(series, 0.0) + float(value)
    return out


def metric_sum(m, name):
    """The sum of `name` over its label sets."""
    return sum(v for s, v in m.items() if s == name or s.startswith(name + "{"))


def defence_count(m, defence):
    """The node's HTTP/2 defence counter for `defence` (a label value such as rapid_reset),
    summed over every series of an `sse_edge_h2_*` family that carries it; None if no series
    names it at all (the counter is missing)."""
    total, found = 0.0, False
    for series, value in m.items():
        if series.startswith("sse_edge_h2") and f'="{defence}"' in series:
            total += value
            found = True
    return total if found else None
