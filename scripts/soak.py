#!/usr/bin/env python3
"""Soak driver for sse-edge (stdlib only): churn against a running server, sampled to CSV.

Started by scripts/soak.sh, which builds and starts the server; see there for the why.
Run by hand:

    python3 scripts/soak.py --addr 127.0.0.1:PORT --pid PID --secs 600 --out target/soak

What it does, all on loopback and bounded in count and time:

- publishes at a steady --rate (one keep-alive connection, 1-3 KB bodies) to a rotating
  window of WINDOW topics: every ROTATE_SECS one topic leaves the window and a new one enters,
  so old topics go idle and new ones keep appearing;
- keeps --readers streams that read everything (1-4 topics of the window, 1-30 s each) and
  --silent streams that never read (a 4 KiB receive buffer, the whole window, 10-90 s each),
  closing each at the end of its life and opening a replacement; RESUME_SHARE of the new
  streams resume with a Last-Event-ID a little behind the newest id;
- samples every second the server's RSS and open descriptors (/proc) and a few /metrics
  values into soak.csv;
- then stops the churn, waits until the streams are gone, prints a summary and writes
  soak.svg (RSS and descriptors over time; hand-written SVG, no plotting library).

Exit status: 0 when the run completed; 1 when the server died or streams never went away.
"""

import argparse
import csv
import os
import random
import selectors
import socket
import statistics
import sys
import threading
import time

WINDOW = 32  # topics publishers and streams use at any time (a stream carries at most 32)
ROTATE_SECS = 15  # one topic leaves the window and a new one enters this often
RESUME_SHARE = 0.3  # share of new streams that resume from a recent id
OPENS_PER_TICK = 20  # new streams per loop turn at most (bounds the connect rate)
BASELINE_SECS = 3  # samples before the churn starts
DRAIN_SECS = 60  # how long the streams may take to go away at the end


def window_topics(t0, now):
    """The topics in use at `now`: a window sliding over soak0, soak1, ..."""
    first = int((now - t0) // ROTATE_SECS)
    return [f"soak{first + i}" for i in range(WINDOW)]


class Stats:
    """Counters shared by the driver's threads (plain ints: the GIL keeps each += whole)."""

    def __init__(self):
        self.published = 0
        self.publish_errors = 0
        self.last_id = 0
        self.opened = 0
        self.open_errors = 0
        self.readers = 0
        self.silent = 0
        self.closed_by_server = 0
        self.resets = 0
        self.shed = 0
        self.bytes_read = 0


def read_response(sock, buf):
    """One HTTP response with a Content-Length body from a blocking socket; (status, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    return status, rest[:length], rest[length:]


def publisher(addr, rate, t0, stop, stats):
    """Publishes at `rate` per second until `stop`; never bursts to catch up."""
    rng = random.Random(1)
    sock, buf = None, b""
    period = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        next_at = max(next_at + period, time.monotonic() - 1.0)
        topic = rng.choice(window_topics(t0, time.monotonic()))
        # ~2 KiB on average: the window's 32 topics x 256 events then hold more than the
        # soak's 16 MiB budget, so eviction by bytes (not only by count) is exercised.
        body = ("%d " % stats.published).encode() + b"p" * rng.randint(1000, 3000)
        req = (
            b"POST /broadcast?topic=%s HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n"
            % (topic.encode(), len(body))
        ) + body
        try:
            if sock is None:
                sock = socket.create_connection(addr, timeout=10)
                buf = b""
            sock.sendall(req)
            status, answer, buf = read_response(sock, buf)
            if status != 200:
                stats.publish_errors += 1
                continue
            # {"id":"123","topic":...}
            stats.last_id = int(answer.split(b'"id":"')[1].split(b'"')[0])
            stats.published += 1
        except (OSError, ValueError, IndexError):
            stats.publish_errors += 1
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


class Stream:
    """One stream connection owned by the churn loop."""

    def __init__(self, sock, silent, request, close_at):
        self.sock = sock
        self.silent = silent
        self.request = request
        self.close_at = close_at
        self.head_seen = False


def open_stream(addr, sel, rng, t0, stats, silent):
    now = time.monotonic()
    topics = window_topics(t0, now)
    if silent:
        chosen = topics
        life = rng.uniform(10, 90)
    else:
        chosen = rng.sample(topics, rng.randint(1, 4))
        life = rng.uniform(1, 30)
    query = "&".join("topic=" + t for t in chosen)
    extra = ""
    if stats.last_id and rng.random() < RESUME_SHARE:
        extra = "Last-Event-ID: %d\r\n" % max(1, stats.last_id - rng.randint(0, 500))
    request = ("GET /stream?%s HTTP/1.1\r\nHost: soak\r\n%s\r\n" % (query, extra)).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if silent:
        # Before connecting: the window is negotiated in the handshake.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    err = sock.connect_ex(addr)
    if err not in (0, 115):  # EINPROGRESS
        sock.close()
        stats.open_errors += 1
        return
    sel.register(sock, selectors.EVENT_WRITE, Stream(sock, silent, request, now + life))
    stats.opened += 1
    if silent:
        stats.silent += 1
    else:
        stats.readers += 1


def close_stream(sel, st, stats):
    try:
        sel.unregister(st.sock)
    except (KeyError, ValueError):
        pass
    st.sock.close()
    if st.silent:
        stats.silent -= 1
    else:
        stats.readers -= 1


def on_ready(sel, st, mask, stats, held):
    if mask & selectors.EVENT_WRITE:
        if st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            stats.open_errors += 1
            close_stream(sel, st, stats)
            return False
        st.sock.send(st.request)  # a few hundred bytes into an empty socket buffer
        if st.silent:
            # Never read again: held outside the selector until its life ends.
            sel.unregister(st.sock)
            held.append(st)
        else:
            sel.modify(st.sock, selectors.EVENT_READ, st)
        return True
    try:
        data = st.sock.recv(65536)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    if not data:
        stats.closed_by_server += 1
        close_stream(sel, st, stats)
        return False
    stats.bytes_read += len(data)
    stats.resets += data.count(b"event: reset\n")
    if b"\n: shed\n" in data:
        stats.shed += 1
    return True


def churn(addr, secs, readers, silent, t0, stats, server_alive):
    """Keeps the stream populations up for `secs`, then closes everything."""
    rng = random.Random(2)
    sel = selectors.DefaultSelector()
    held = []  # silent streams, not in the selector
    end = time.monotonic() + secs
    while time.monotonic() < end and server_alive():
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            if key.data.close_at <= now:
                close_stream(sel, key.data, stats)
        for st in [s for s in held if s.close_at <= now]:
            held.remove(st)
            st.sock.close()
            stats.silent -= 1
        opens = 0
        while stats.readers < readers and opens < OPENS_PER_TICK:
            open_stream(addr, sel, rng, t0, stats, silent=False)
            opens += 1
        while stats.silent < silent and opens < OPENS_PER_TICK:
            open_stream(addr, sel, rng, t0, stats, silent=True)
            opens += 1
        for key, mask in sel.select(timeout=0.05):
            on_ready(sel, key.data, mask, stats, held)
    for key in list(sel.get_map().values()):
        close_stream(sel, key.data, stats)
    for st in held:
        st.sock.close()
        stats.silent -= 1
    sel.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def scrape(addr):
    """/metrics summed by name (labels dropped); {} when it cannot be read."""
    try:
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return {}
    out = {}
    body = data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{")[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


FIELDS = [
    "t", "phase", "rss_kib", "fds", "clients", "history_bytes", "history_topics",
    "dropped", "slow_disconnects", "published", "publish_errors", "readers", "silent",
    "opened", "open_errors", "closed_by_server", "resets", "shed",
]


def sample(addr, pid, t0, phase, stats):
    # /proc first: the scrape's own connection is not to be counted among the descriptors.
    t, rss, fds = round(time.monotonic() - t0, 1), rss_kib(pid), open_fds(pid)
    m = scrape(addr)
    return {
        "t": t,
        "phase": phase,
        "rss_kib": rss,
        "fds": fds,
        "clients": int(m.get("sse_edge_clients", -1)),
        "history_bytes": int(m["sse_edge_history_bytes"]) if "sse_edge_history_bytes" in m else "",
        "history_topics": int(m["sse_edge_history_topics"]) if "sse_edge_history_topics" in m else "",
        "dropped": int(m.get("sse_edge_frames_dropped_total", 0)),
        "slow_disconnects": int(m.get("sse_edge_slow_disconnects_total", 0)),
        "published": stats.published,
        "publish_errors": stats.publish_errors,
        "readers": stats.readers,
        "silent": stats.silent,
        "opened": stats.opened,
        "open_errors": stats.open_errors,
        "closed_by_server": stats.closed_by_server,
        "resets": stats.resets,
        "shed": stats.shed,
    }


def slope_kib_per_min(rows):
    """Least-squares slope of RSS over time."""
    if len(rows) < 2:
        return 0.0
    xs = [r["t"] / 60.0 for r in rows]
    ys = [float(r["rss_kib"]) for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def svg(rows, path, title):
    """RSS (MiB, left axis) and descriptors (right axis) over time, as a standalone SVG."""
    w, h, left, right, top, bottom = 800, 360, 70, 70, 40, 50
    pw, ph = w - left - right, h - top - bottom
    tmax = max(r["t"] for r in rows) or 1.0
    rss = [r["rss_kib"] / 1024.0 for r in rows]
    fds = [r["fds"] for r in rows]
    rmax = max(rss) * 1.1 or 1.0
    fmax = max(fds) * 1.1 or 1.0

    def pts(values, vmax):
        return " ".join(
            "%.1f,%.1f" % (left + r["t"] / tmax * pw, top + ph - v / vmax * ph)
            for r, v in zip(rows, values)
        )

    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
        'viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">' % (w, h, w, h),
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="%d" y="22" font-size="14">%s</text>' % (left, title),
        '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>'
        % (left, top, pw, ph),
    ]
    # The churn phase, shaded.
    churn = [r["t"] for r in rows if r["phase"] == "churn"]
    if churn:
        x0 = left + min(churn) / tmax * pw
        x1 = left + max(churn) / tmax * pw
        out.append(
            '<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#f3f3f3"/>'
            % (x0, top, x1 - x0, ph)
        )
    for i in range(5):
        y = top + ph - i / 4 * ph
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e0e0e0"/>'
                   % (left, left + pw, y, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#1f5fbf">%.0f</text>'
                   % (left - 6, y + 4, rmax * i / 4))
        out.append('<text x="%d" y="%.1f" fill="#c0392b">%.0f</text>'
                   % (left + pw + 6, y + 4, fmax * i / 4))
    for i in range(6):
        x = left + i / 5 * pw
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>'
                   % (x, top + ph + 18, tmax * i / 5))
    out += [
        '<text x="%d" y="%d" text-anchor="middle">seconds</text>' % (left + pw / 2, h - 8),
        '<text x="16" y="%d" fill="#1f5fbf" transform="rotate(-90 16 %d)" '
        'text-anchor="middle">RSS (MiB)</text>' % (top + ph / 2, top + ph / 2),
        '<text x="%d" y="%d" fill="#c0392b" transform="rotate(90 %d %d)" '
        'text-anchor="middle">open descriptors</text>'
        % (w - 16, top + ph / 2, w - 16, top + ph / 2),
        '<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="%s"/>'
        % pts(rss, rmax),
        '<polyline fill="none" stroke="#c0392b" stroke-width="1" points="%s"/>'
        % pts(fds, fmax),
        "</svg>",
    ]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of the server (loopback)")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id")
    ap.add_argument("--secs", type=float, default=600, help="churn duration")
    ap.add_argument("--out", default="target/soak", help="directory for soak.csv and soak.svg")
    ap.add_argument("--rate", type=float, default=200, help="publishes per second")
    ap.add_argument("--readers", type=int, default=240, help="streams that read")
    ap.add_argument("--silent", type=int, default=60, help="streams that never read")
    ap.add_argument("--budget", type=int, default=0,
                    help="the server's --history-bytes (0: the build has none)")
    args = ap.parse_args()
    host, _, port = args.addr.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        sys.exit("soak: loopback only, got %s" % args.addr)
    addr = (host.strip("[]"), int(port))
    # Bounded: the populations, the rate and the duration, whatever is asked.
    readers, silent = min(args.readers, 2000), min(args.silent, 500)
    rate, secs = min(args.rate, 5000.0), min(args.secs, 4 * 3600.0)
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "soak.csv")
    svg_path = os.path.join(args.out, "soak.svg")

    def server_alive():
        return os.path.exists("/proc/%d/status" % args.pid)

    stats = Stats()
    t0 = time.monotonic()
    rows = []
    phase = ["baseline"]
    stop_sampling = threading.Event()

    def sampler():
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            next_at = time.monotonic()
            while not stop_sampling.is_set() and server_alive():
                try:
                    row = sample(addr, args.pid, t0, phase[0], stats)
                except (FileNotFoundError, ProcessLookupError):
                    break
                rows.append(row)
                w.writerow(row)
                f.flush()
                next_at += 1.0
                stop_sampling.wait(max(0.0, next_at - time.monotonic()))

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    deadline = time.monotonic() + BASELINE_SECS
    while time.monotonic() < deadline and len(rows) < BASELINE_SECS:
        time.sleep(0.1)
    baseline_fds = rows[-1]["fds"] if rows else open_fds(args.pid)

    stop_publishing = threading.Event()
    phase[0] = "churn"
    pub = threading.Thread(target=publisher, args=(addr, rate, t0, stop_publishing, stats),
                           daemon=True)
    pub.start()
    churn_start = time.monotonic() - t0
    churn(addr, secs, readers, silent, t0, stats, server_alive)
    churn_end = time.monotonic() - t0
    stop_publishing.set()
    pub.join(timeout=15)

    phase[0] = "drain"
    drained = False
    deadline = time.monotonic() + DRAIN_SECS
    while time.monotonic() < deadline and server_alive():
        m = scrape(addr)
        if m.get("sse_edge_clients", -1) == 0:
            drained = True
            break
        time.sleep(0.2)
    # A few samples after the streams are gone, for the end figures.
    phase[0] = "end"
    time.sleep(2.5)
    stop_sampling.set()
    sampling.join(timeout=10)

    alive = server_alive()
    if not rows:
        sys.exit("soak: no samples (the server is %s)" % ("up" if alive else "gone"))
    churn_rows = [r for r in rows if r["phase"] == "churn"]
    full_at, rule = None, ""
    kept = [r for r in churn_rows if r["history_bytes"] != ""]
    if kept:
        # Full: at 90 % of the budget, or else of the peak (the per-topic count may bind
        # before the bytes do).
        peak = max(r["history_bytes"] for r in kept)
        if args.budget and peak >= 0.9 * args.budget:
            target, what = 0.9 * args.budget, "90 %% of the budget %d" % args.budget
        else:
            target, what = 0.9 * peak, "90 %% of its peak %d (budget %s)" % (
                peak, args.budget or "none")
        full_at = next(r["t"] for r in kept if r["history_bytes"] >= target)
        rule = "sse_edge_history_bytes reached " + what
    else:
        rule = "no sse_edge_history_bytes in this build; using the second half"
    if full_at is None:
        full_at = churn_start + (churn_end - churn_start) / 2
    after_full = [r for r in churn_rows if r["t"] >= full_at] or churn_rows
    half = churn_start + (churn_end - churn_start) / 2
    second_half = [r for r in churn_rows if r["t"] >= half]
    rss = sorted(r["rss_kib"] for r in after_full)
    end_row = rows[-1]

    print("soak: %.0f s of churn, %d streams opened (%d open errors), %d published "
          "(%d publish errors), last id %d" % (churn_end - churn_start, stats.opened,
                                               stats.open_errors, stats.published,
                                               stats.publish_errors, stats.last_id))
    print("soak: streams closed by the server %d, resets seen %d, shed seen %d, "
          "server frames dropped %s, slow disconnects %s" % (
              stats.closed_by_server, stats.resets, stats.shed,
              end_row["dropped"], end_row["slow_disconnects"]))
    print("soak: history full from t=%.0f s (%s)" % (full_at, rule))
    print("soak: RSS after history full: min %.1f MiB, median %.1f MiB, max %.1f MiB (%d samples)"
          % (rss[0] / 1024, statistics.median(rss) / 1024, rss[-1] / 1024, len(rss)))
    print("soak: RSS slope over the second half: %+.1f KiB/min (%d samples)"
          % (slope_kib_per_min(second_half), len(second_half)))
    print("soak: descriptors at baseline %d, at end %d; streams at end %s"
          % (baseline_fds, end_row["fds"], end_row["clients"]))
    print("soak: wrote %s and %s" % (csv_path, svg_path))
    svg(rows, svg_path, "sse-edge soak: RSS (blue) and open descriptors (red); churn shaded")
    if not alive:
        print("soak: FAILED: the server process is gone")
        return 1
    if not drained:
        print("soak: FAILED: streams still open %d s after the churn stopped" % DRAIN_SECS)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
