#!/usr/bin/env python3
"""A reconnect storm against a running sse-edge node on loopback, measured.

The node is stopped (SIGSTOP) while this opens every connection and writes every request
(`GET /stream`, with `Last-Event-ID` when asked), then continued (SIGCONT): the whole burst is
waiting in the node's sockets when it wakes, as after a failover, whatever this machine's
speed. Beyond the kernel's accept queue (net.core.somaxconn per listener) connections wait
for the kernel to retry their SYN, and write their request once connected.

Prints one line per figure: how many requests were waiting when the node woke, how many were
served (the stream head and `: connected`), shed (`: shed`) or closed unanswered, how long
from SIGCONT until the last was served, the events each resumed stream received (with
--last-event-id), and the node's RSS before and 1 s after (per stream). Exits 1 when any
connection was closed unanswered or not served by the deadline.

Loopback only, bounded: at most --connections sockets (within this process's open-files
limit), one deadline (--deadline) for everything.

  target/release/sse-edge --listen 127.0.0.1:8090 --tick 0 & PID=$!
  python3 scripts/storm.py --pid $PID --port 8090 --connections 10000
  python3 scripts/storm.py --pid $PID --port 8090 --connections 10000 --publish 50 --last-event-id 25
"""

import argparse
import errno
import ipaddress
import os
import resource
import selectors
import signal
import socket
import sys
import time
import urllib.request

HEAD_END = b"\r\n\r\n"
CONNECTED = b"\r\n\r\n: connected\n"
SHED = b": shed\n"


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def stop(pid, deadline):
    os.kill(pid, signal.SIGSTOP)
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(") ", 1)[1][0] == "T":
                return
        time.sleep(0.005)
    sys.exit("the node did not stop")


def publish(host, port, topic, n):
    """Publishes n events; returns their ids."""
    ids = []
    for i in range(n):
        req = urllib.request.Request(
            f"http://{host}:{port}/broadcast?topic={topic}", data=f"e{i}".encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode()
        ids.append(body.split('"id":"', 1)[1].split('"', 1)[0])
    return ids


class Conn:
    __slots__ = ("sock", "request", "written", "buf", "state", "served_at", "events")

    def __init__(self, sock, request):
        self.sock = sock
        self.request = request
        self.written = 0
        self.buf = b""
        self.state = "connecting"  # connecting, reading, served, shed, closed
        self.served_at = None
        self.events = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pid", type=int, required=True, help="the node's process id")
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--topic", default="storm")
    ap.add_argument("--publish", type=int, default=0, help="events to publish before the storm")
    ap.add_argument(
        "--last-event-id",
        type=int,
        default=None,
        help="resume from the K-th published event (1-based; needs --publish)",
    )
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds for everything")
    ap.add_argument(
        "--path",
        default=None,
        help="the stream's path (default /stream?topic=TOPIC); for another server, e.g. nchan's",
    )
    ap.add_argument(
        "--served-at-head",
        action="store_true",
        help="count a connection served at its 200 head (a server other than sse-edge, which "
        "sends no ': connected'); replay is not counted then",
    )
    args = ap.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("loopback only: --host must be 127.0.0.0/8 or ::1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 64 > hard:
        sys.exit(f"--connections {args.connections} does not fit the open-files limit {hard}")
    if args.last_event_id is not None and not 1 <= args.last_event_id <= args.publish:
        sys.exit("--last-event-id K needs 1 <= K <= --publish")

    ids = publish(args.host, args.port, args.topic, args.publish) if args.publish else []
    extra = ""
    owed = 0
    if args.last_event_id is not None:
        extra = f"Last-Event-ID: {ids[args.last_event_id - 1]}\r\n"
        owed = args.publish - args.last_event_id
    request = (
        f"GET {args.path or '/stream?topic=' + args.topic} HTTP/1.1\r\nHost: storm\r\n"
        f"Accept: text/event-stream\r\n{extra}\r\n"
    ).encode()

    rss_before = rss(args.pid)
    deadline = time.monotonic() + args.deadline
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sel = selectors.DefaultSelector()
    conns = []

    stop(args.pid, deadline)
    for _ in range(args.connections):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((args.host, args.port))
        if err not in (0, errno.EINPROGRESS):
            sys.exit(f"connect: {os.strerror(err)}")
        c = Conn(s, request)
        conns.append(c)
        sel.register(s, selectors.EVENT_WRITE, c)

    def on_writable(c):
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sys.exit(f"connect: {os.strerror(err)}")
        try:
            c.written += c.sock.send(c.request[c.written :])
        except BlockingIOError:
            return False
        if c.written == len(c.request):
            c.state = "reading"
            sel.modify(c.sock, selectors.EVENT_READ, c)
            return True
        return False

    # While stopped: what the kernel lets connect (its accept queue) gets its request now.
    waiting = 0
    while True:
        done = [on_writable(key.data) for key, _ in sel.select(timeout=0.2) if key.data.state == "connecting"]
        if not any(done):
            break
        waiting += sum(done)
    os.kill(args.pid, signal.SIGCONT)
    woke = time.monotonic()

    left = len(conns)
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            c = key.data
            if c.state == "connecting":
                on_writable(c)
                continue
            try:
                chunk = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            c.buf += chunk
            if c.state == "reading":
                if args.served_at_head and HEAD_END in c.buf and c.buf.startswith(b"HTTP/1.1 200"):
                    c.state = "served"
                    c.served_at = time.monotonic()
                    c.buf = b""
                elif not args.served_at_head and CONNECTED in c.buf:
                    c.state = "served"
                    c.served_at = time.monotonic()
                    c.buf = c.buf.split(CONNECTED, 1)[1]
                elif not chunk:
                    c.state = "shed" if SHED in c.buf else "closed"
            if c.state == "served":
                # Count replayed events (blocks with a data line) until every owed one arrived.
                while b"\n\n" in c.buf:
                    block, c.buf = c.buf.split(b"\n\n", 1)
                    c.events += any(line.startswith(b"data:") for line in block.split(b"\n"))
            if c.state in ("shed", "closed") or (c.state == "served" and (c.events >= owed or not chunk)):
                sel.unregister(c.sock)
                left -= 1

    counts = {k: sum(1 for c in conns if c.state == k) for k in ("served", "shed", "closed")}
    unanswered = len(conns) - sum(counts.values())
    served = [c.served_at for c in conns if c.served_at is not None]
    time.sleep(1.0)
    rss_after = rss(args.pid)
    print(f"connections            {len(conns)}")
    print(f"waiting_when_woken     {waiting}")
    print(f"served                 {counts['served']}")
    print(f"shed                   {counts['shed']}")
    print(f"closed_unanswered      {counts['closed']}")
    print(f"not_served_by_deadline {unanswered}")
    if served:
        print(f"all_served_ms          {(max(served) - woke) * 1000:.0f}")
    if args.last_event_id is not None:
        short = sum(1 for c in conns if c.state == "served" and c.events < owed)
        print(f"replay_owed_per_stream {owed}")
        print(f"streams_short_of_it    {short}")
    print(f"rss_before_bytes       {rss_before}")
    print(f"rss_after_1s_bytes     {rss_after}")
    if counts["served"]:
        print(f"rss_per_stream_bytes   {(rss_after - rss_before) / counts['served']:.0f}")
    for c in conns:
        c.sock.close()
    return 1 if counts["closed"] or unanswered else 0


if __name__ == "__main__":
    sys.exit(main())
