"""The hostile patterns of issue 28 against the real node over h2c: each asserts the GOAWAY code
(or the stream's reset / answer) the node gives AND that its /metrics counter for that defence
moved. The node these run against is started with short bounds (tests/h2spec.rs says which), so
nothing here waits for a default ten-second timeout.
"""

import socket
import time

from harness import (
    CANCEL,
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    PATIENCE,
    PREFACE,
    Conn,
    Failure,
    block,
    hblock,
    defence_count,
    frame,
    hpack_int,
    metric_sum,
    metrics,
    ping,
    rst_stream,
    settings,
    status_of,
    window_update,
)
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

CASES = []


def case(name):
    def register(fn):
        CASES.append((name, fn))
        return fn

    return register


def defence_before(addr, defence):
    return defence_count(metrics(addr), defence) or 0.0


def expect_defence_moved(addr, defence, before):
    """Polls /metrics until the defence counter is above `before` (a deadline, no sleep-and-hope)."""
    deadline = time.monotonic() + PATIENCE
    last = None
    while time.monotonic() < deadline:
        last = defence_count(metrics(addr), defence)
        if last is not None and last > before:
            return
        time.sleep(0.05)
    if last is None:
        raise Failure(f'/metrics has no sse_edge_h2_* series labelled "{defence}"')
    raise Failure(f'the "{defence}" counter stayed at {last} (before: {before})')


def expect_metric_moved(addr, name, before):
    deadline = time.monotonic() + PATIENCE
    last = None
    while time.monotonic() < deadline:
        last = metric_sum(metrics(addr), name)
        if last > before:
            return
        time.sleep(0.05)
    raise Failure(f"{name} stayed at {last} (before: {before})")


def publish(addr, topic, body):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as s:
        s.sendall(
            f"POST /broadcast?topic={topic} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        raw = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            raw += chunk
    if not raw.startswith(b"HTTP/1.1 200"):
        raise Failure(f"publish answered {raw[:60]!r}")


def still_answers_ping(c):
    c.send(ping(b"alive?\0\0"))
    c.verify_ping_ack(b"alive?\0\0")


@case("rapid reset (CVE-2023-44487): streams opened and cancelled at once get GOAWAY ENHANCE_YOUR_CALM")
def _(addr):
    before = defence_before(addr, "rapid_reset")
    c = Conn(addr)
    c.handshake()
    # Thousands of open-then-cancel pairs without reading: far past any honest client's resets.
    burst = b""
    for i in range(2000):
        sid = 1 + 2 * i
        burst += frame(HEADERS, END_STREAM | END_HEADERS, sid, c.encode(c.common_headers("/stream?topic=rr")))
        burst += rst_stream(sid, CANCEL)
    c.send(burst)
    c.verify_goaway(ENHANCE_YOUR_CALM)
    expect_defence_moved(addr, "rapid_reset", before)


@case("CONTINUATION flood (2024): endless CONTINUATIONs after one HEADERS get GOAWAY ENHANCE_YOUR_CALM")
def _(addr):
    before = defence_before(addr, "continuation_flood")
    c = Conn(addr)
    c.handshake()
    c.send(frame(HEADERS, END_STREAM, 1, hblock(c.common_headers("/stream"))))
    flood = b"".join(frame(CONTINUATION, 0, 1, literal_pad(i)) for i in range(5000))
    c.send(flood)
    c.verify_goaway(ENHANCE_YOUR_CALM)
    expect_defence_moved(addr, "continuation_flood", before)


def literal_pad(i):
    # Small, valid-looking fields, so that only the count of frames is hostile.
    return block([(f"x-c{i % 10}", "y")])


@case("HPACK bomb: a block that decodes far past the header list bound gets 431 and the connection lives")
def _(addr):
    before = defence_before(addr, "header_list")
    c = Conn(addr)
    # Before the node's SETTINGS is acknowledged the default 4 096-byte table still holds
    # (RFC 9113 §6.5.3): one 4 000-byte entry, then 4 000 one-octet references to it (16 MB).
    c.send(PREFACE + settings())
    fields = c.common_headers("/stream?topic=bomb")
    bomb = block(fields) + b"\x40" + hpack_str_raw(b"x-bomb") + hpack_str_raw(b"b" * 4000) + b"\xbe" * 4000
    c.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, bomb))
    f = c.wait(
        lambda f: f.stream_id == 1 and isinstance(f, (HeadersFrame, RstStreamFrame)) or isinstance(f, GoAwayFrame),
        "the bomb's stream answered",
    )
    if isinstance(f, GoAwayFrame):
        raise Failure(f"GOAWAY code {f.error_code}: the issue wants 431 (the table kept) for a bomb")
    if isinstance(f, HeadersFrame) and status_of(f) != 431:
        raise Failure(f"the bomb was answered {status_of(f)}, expected 431")
    # The table was kept: the connection still works.
    still_answers_ping(c)
    expect_defence_moved(addr, "header_list", before)


def hpack_str_raw(b):
    return hpack_int(len(b), 7, 0) + b


def flood(addr, defence, one, count):
    before = defence_before(addr, defence)
    c = Conn(addr)
    c.handshake()
    c.send(one * count)
    c.verify_goaway(ENHANCE_YOUR_CALM)
    expect_defence_moved(addr, defence, before)


@case("SETTINGS flood: thousands of SETTINGS get GOAWAY ENHANCE_YOUR_CALM")
def _(addr):
    flood(addr, "settings_flood", settings((INITIAL_WINDOW_SIZE, 65535)), 5000)


@case("PING flood: thousands of PINGs get GOAWAY ENHANCE_YOUR_CALM")
def _(addr):
    flood(addr, "ping_flood", ping(b"floodfld"), 5000)


@case("WINDOW_UPDATE flood: tens of thousands of WINDOW_UPDATEs get GOAWAY ENHANCE_YOUR_CALM")
def _(addr):
    flood(addr, "window_update_flood", window_update(0, 1), 30000)


@case("zero-window stall: a stream whose window never opens is a slow reader, reset, and counted")
def _(addr):
    m = metrics(addr)
    slow_before = metric_sum(m, "sse_edge_slow_disconnects_total")
    dropped_before = metric_sum(m, "sse_edge_frames_dropped_total")
    c = Conn(addr)
    c.handshake((INITIAL_WINDOW_SIZE, 0))
    c.get(1, "/stream?topic=stall")
    c.verify_headers(1)
    # Publish until the node gives up on the stream: with a window of 0 it can send nothing, so
    # every event is dropped for it, and past --slow-client-timeout it must let it go.
    body = b"s" * 2048
    deadline = time.monotonic() + 3 * PATIENCE
    ended = None
    while ended is None:
        if time.monotonic() > deadline:
            raise Failure(f"the stalled stream was never reset ({c.history()})")
        publish(addr, "stall", body)
        try:
            f = c.read_frame(0.2)
        except TimeoutError:
            continue
        if f is None:
            ended = "closed"
        elif isinstance(f, RstStreamFrame) and f.stream_id == 1:
            ended = f
        elif isinstance(f, GoAwayFrame):
            ended = f
        elif isinstance(f, DataFrame) and f.stream_id == 1 and f.data:
            raise Failure("the node sent DATA into a closed stream window")
    expect_metric_moved(addr, "sse_edge_frames_dropped_total", dropped_before)
    expect_metric_moved(addr, "sse_edge_slow_disconnects_total", slow_before)


@case("a preface that never completes: closed at the header timeout, and counted")
def _(addr):
    before = metric_sum(metrics(addr), "sse_edge_header_timeouts_total")
    c = Conn(addr, patience=3 * PATIENCE)
    # The connection preface is the magic AND a SETTINGS frame (RFC 9113 §3.4): the magic alone,
    # then nothing. (A node without h2c answers the magic as a bad HTTP/1.1 request at once.)
    c.send(PREFACE)
    c.verify_connection_close()
    expect_metric_moved(addr, "sse_edge_header_timeouts_total", before)
