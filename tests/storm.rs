//! Reconnect storms: every connection that has sent a complete request is answered, however
//! many wait at once, while silent connections still give way at `--max-request-connections`.
//!
//! Deterministic, not timing luck: the server is stopped (`SIGSTOP`), the test opens every
//! connection and writes every request, then continues it (`SIGCONT`), so the whole burst is
//! truly waiting in the node's sockets when it wakes. The kernel holds at most
//! `net.core.somaxconn` (+1) connections in a listener's accept queue: beyond that, SYNs
//! are dropped while the node is stopped and their clients connect when the kernel retries
//! them (after 1 s, 3 s, ...); those write their request once connected. Every test says how
//! many were written while the node was stopped, and requires that to be a real burst.
//!
//! Descriptor-heavy (up to 7 000 client sockets here, as many in the server; 20 000 per
//! process at most): the tests of this file run one at a time ([`serial`]).

mod util;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use util::{metric, published_id, HttpConn, Server, PATIENCE};

/// The request-phase cap's default (`--max-request-connections`, per shard).
const DEFAULT_REQUEST_CAP: usize = 1024;

/// One test of this file at a time: each holds thousands of descriptors.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stops the server and waits until the kernel says it is stopped (state `T`).
fn stop(server: &Server) {
    server.signal(libc::SIGSTOP);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if state == Some(Some('T')) {
            return;
        }
        assert!(Instant::now() < deadline, "server not stopped: {stat}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client socket of a burst: connecting, then writing its request, then read.
struct Conn {
    sock: TcpStream,
    request: Vec<u8>,
    written: usize,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
}

impl Conn {
    /// Starts a non-blocking connect to `addr`.
    fn connect(addr: SocketAddr, request: Vec<u8>) -> Conn {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
        s.set_nonblocking(true).unwrap();
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => panic!("connect: {e}"),
        }
        Conn {
            sock: s.into(),
            request,
            written: 0,
            buf: Vec::new(),
        }
    }

    fn sent(&self) -> bool {
        self.written == self.request.len()
    }

    /// Writes what it can of the request (the socket is connected).
    fn write_some(&mut self) {
        while !self.sent() {
            match self.sock.write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("writing a request: {e}"),
            }
        }
    }

    /// Reads until `text` is in the buffer: false when the connection ends first. Panics
    /// once `deadline` has passed.
    fn read_until(&mut self, text: &[u8], deadline: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            if self.buf.windows(text.len()).any(|w| w == text) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {:?} by the deadline; got {:?}",
                String::from_utf8_lossy(text),
                String::from_utf8_lossy(&self.buf)
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return false,
            }
        }
    }

    /// Whether the server has closed this connection (without waiting: a connection still
    /// open reads as not closed).
    fn closed_now(&mut self) -> bool {
        self.sock.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 4096];
        let closed = loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        self.sock.set_nonblocking(false).unwrap();
        closed
    }

    /// The events (`id`, `data`) in the buffer so far, consumed.
    fn take_events(&mut self) -> Vec<(Option<String>, String)> {
        let mut events = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block[..end]).into_owned();
            let (mut id, mut data) = (None, None);
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            if let Some(data) = data {
                events.push((id, data));
            }
        }
        events
    }
}

/// How many of `conns` the server has closed, once at least `expected` are seen closed (a
/// close the server counted may reach this side a moment after its next answer) or after
/// [`PATIENCE`]: the caller compares it with what it expected.
fn closed_count(conns: &mut [Conn], expected: usize) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let closed = conns
            .iter_mut()
            .map(|c| c.closed_now())
            .filter(|&closed| closed)
            .count();
        if closed >= expected || Instant::now() > deadline {
            return closed;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (poll(2), `timeout`) for connects among `conns` to finish, and writes the request
/// of each that did; returns how many finished. Panics on a failed connect.
fn finish_connects(conns: &mut [Conn], timeout: Duration) -> usize {
    let pending: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].sent()).collect();
    if pending.is_empty() {
        return 0;
    }
    let mut fds: Vec<libc::pollfd> = pending
        .iter()
        .map(|&i| libc::pollfd {
            fd: conns[i].sock.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of pollfd of the length given.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), ErrorKind::Interrupted, "poll: {e}");
        return 0;
    }
    let mut done = 0;
    for (fd, &i) in fds.iter().zip(&pending) {
        if fd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            let e = conns[i].sock.take_error().ok().flatten();
            panic!("connect {i} failed: {e:?}");
        }
        if fd.revents & libc::POLLOUT != 0 {
            conns[i].write_some();
            if conns[i].sent() {
                done += 1;
            }
        }
    }
    done
}

/// A burst: the server stopped, every connection opened and every request written that the
/// kernel lets connect meanwhile, then the server continued; the rest are written as soon
/// as they connect.
struct Burst {
    conns: Vec<Conn>,
    /// Requests that were complete in their sockets before the server woke.
    written_stopped: usize,
}

/// `n` plain stream requests on the storm's topic.
fn plain_requests(n: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|_| stream_request("/stream?topic=storm", ""))
}

fn burst(server: &Server, requests: impl IntoIterator<Item = Vec<u8>>) -> Burst {
    stop(server);
    let mut conns: Vec<Conn> = requests
        .into_iter()
        .map(|r| Conn::connect(server.addr, r))
        .collect();
    // Loopback handshakes finish at once; a round that finishes none means the accept
    // queue is full and the rest wait for the kernel to retry their SYN.
    let mut written_stopped = 0;
    loop {
        let done = finish_connects(&mut conns, Duration::from_millis(200));
        if done == 0 {
            break;
        }
        written_stopped += done;
    }
    eprintln!(
        "{written_stopped} of {} written while the node was stopped",
        conns.len()
    );
    server.signal(libc::SIGCONT);
    let deadline = Instant::now() + PATIENCE;
    while conns.iter().any(|c| !c.sent()) {
        assert!(
            Instant::now() < deadline,
            "{} of {} connections not connected within {PATIENCE:?}",
            conns.iter().filter(|c| !c.sent()).count(),
            conns.len()
        );
        finish_connects(&mut conns, Duration::from_millis(100));
    }
    for c in &conns {
        c.sock.set_nonblocking(false).unwrap();
    }
    Burst {
        conns,
        written_stopped,
    }
}

/// How a burst of stream requests was answered.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// The stream head and `: connected`.
    served: usize,
    /// `: shed` (beyond --max-clients).
    shed: usize,
    /// Closed by the server before any answer.
    closed: usize,
}

/// Reads every connection's answer up to its stream's `: connected` (or its close).
fn read_heads(conns: &mut [Conn]) -> Tally {
    let deadline = Instant::now() + 2 * PATIENCE;
    let mut tally = Tally::default();
    for c in conns.iter_mut() {
        if c.read_until(b"\r\n\r\n: connected\n", deadline) {
            assert!(
                c.buf.starts_with(b"HTTP/1.1 200 OK\r\n"),
                "{}",
                String::from_utf8_lossy(&c.buf)
            );
            tally.served += 1;
        } else if c.buf.windows(7).any(|w| w == b": shed\n") {
            tally.shed += 1;
        } else {
            tally.closed += 1;
        }
    }
    tally
}

/// One `/metrics` answer, read raw (its labels kept).
struct Scrape(String);

impl Scrape {
    fn of(server: &Server) -> Scrape {
        let r = server.request(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        Scrape(r.text())
    }

    /// The value of the series `series` (name and labels, as written), 0 when absent.
    fn series(&self, series: &str) -> f64 {
        let prefix = format!("{series} ");
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    /// A per-shard metric of the one shard.
    fn value(&self, name: &str) -> f64 {
        self.series(&format!("{name}{{shard=\"0\"}}"))
    }

    /// Request-phase evictions for `reason`.
    fn evictions(&self, reason: &str) -> f64 {
        self.series(&format!(
            "sse_edge_request_evictions_total{{shard=\"0\",reason=\"{reason}\"}}"
        ))
    }
}

fn stream_request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: storm\r\nAccept: text/event-stream\r\n{extra}\r\n")
        .into_bytes()
}

#[test]
fn a_burst_of_5000_stream_requests_is_all_served() {
    let _serial = serial();
    let server = Server::start(&[]);
    let mut b = burst(&server, plain_requests(5000));
    assert!(
        b.written_stopped > 2 * DEFAULT_REQUEST_CAP,
        "a real burst: {} waiting",
        b.written_stopped
    );
    let tally = read_heads(&mut b.conns);
    assert_eq!(
        tally,
        Tally {
            served: 5000,
            ..Tally::default()
        },
        "every complete request answered with its stream ({} were waiting at once)",
        b.written_stopped
    );
    let m = server.wait_metrics("5000 streams", |m| m["sse_edge_clients"] == 5000.0);
    assert_eq!(metric(&m, "sse_edge_request_evictions_total"), 0.0, "{m:?}");
    // Each still a live stream: one event reaches them all.
    let r = server.publish("?topic=storm", b"after the storm");
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + PATIENCE;
    for (i, c) in b.conns.iter_mut().enumerate() {
        assert!(c.read_until(b"data: after the storm\n\n", deadline), "{i}");
    }
}

#[test]
fn silent_connections_may_give_way_but_a_burst_of_real_ones_never() {
    let _serial = serial();
    // A header timeout far beyond the test: only the request cap may close a silent one.
    let server = Server::start(&["--header-timeout", "120"]);
    let baseline = server.metrics()["sse_edge_connections"];
    let mut silent: Vec<Conn> = (0..2000)
        .map(|_| {
            let mut c = Conn::connect(server.addr, Vec::new());
            c.sock.set_nonblocking(false).unwrap();
            c.buf.clear();
            c
        })
        .collect();
    // Each taken in (kept, or already evicted by a cap that does not wait).
    server.wait_metrics("the silent connections accepted", |m| {
        m["sse_edge_connections"] + metric(m, "sse_edge_request_evictions_total")
            >= baseline + 2000.0
    });
    let mut b = burst(&server, plain_requests(5000));
    assert!(b.written_stopped > 2 * DEFAULT_REQUEST_CAP);
    let tally = read_heads(&mut b.conns);
    assert_eq!(
        tally,
        Tally {
            served: 5000,
            ..Tally::default()
        },
        "no real connection lost to the silent ones"
    );
    // The cap still bounds the silent ones: all but the cap's worth give way.
    server.wait_metrics("the silent ones beyond the cap evicted", |m| {
        metric(m, "sse_edge_request_evictions_total") >= (2000 - DEFAULT_REQUEST_CAP) as f64
    });
    // Evictions may go on a moment after the scrape (young ones come of age): compare the
    // closes the silent ones see with the count until both agree.
    let deadline = Instant::now() + PATIENCE;
    let m = loop {
        let m = server.metrics();
        let evicted = metric(&m, "sse_edge_request_evictions_total") as usize;
        let closed = closed_count(&mut silent, evicted);
        if closed == evicted {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the evicted ones are the silent ones: {closed} closed, {evicted} evicted: {m:?}"
        );
    };
    assert!(
        metric(&m, "sse_edge_request_connections") <= DEFAULT_REQUEST_CAP as f64,
        "{m:?}"
    );
    assert_eq!(m["sse_edge_clients"], 5000.0);
}

#[test]
fn a_burst_of_2000_resumes_each_gets_the_ids_after_its_own_then_live() {
    let _serial = serial();
    let server = Server::start(&[]);
    let mut publisher = HttpConn::open(server.addr);
    let ids: Vec<u64> = (0..50)
        .map(|n| published_id(&publisher.publish("?topic=storm", format!("e{n}").as_bytes())))
        .collect();
    // Client i resumes from the (i mod 50)-th event: it is owed every one after it.
    let resume_from = |i: usize| i % ids.len();
    let mut b = burst(
        &server,
        (0..2000).map(|i| {
            let last = format!("Last-Event-ID: {}\r\n", ids[resume_from(i)]);
            stream_request("/stream?topic=storm", &last)
        }),
    );
    assert!(b.written_stopped > DEFAULT_REQUEST_CAP);
    let tally = read_heads(&mut b.conns);
    assert_eq!(
        tally,
        Tally {
            served: 2000,
            ..Tally::default()
        }
    );
    server.wait_metrics("2000 streams", |m| m["sse_edge_clients"] == 2000.0);
    let live = published_id(&publisher.publish("?topic=storm", b"live"));
    let deadline = Instant::now() + PATIENCE;
    for (i, c) in b.conns.iter_mut().enumerate() {
        assert!(
            c.read_until(b"data: live\n\n", deadline),
            "stream {i} ended"
        );
        let got: Vec<(Option<String>, String)> = c.take_events();
        let from = resume_from(i);
        let mut want: Vec<(Option<String>, String)> = (from + 1..ids.len())
            .map(|n| (Some(ids[n].to_string()), format!("e{n}")))
            .collect();
        want.push((Some(live.to_string()), "live".to_owned()));
        assert_eq!(got, want, "stream {i}, resumed after event {from}");
    }
}

#[test]
fn a_storm_is_counted_and_logged_once() {
    let _serial = serial();
    // A small cap, so that a few hundred connections are a storm's worth of silent ones; a
    // header timeout beyond the test, so that only the cap closes them.
    let server = Server::start(&[
        "--max-request-connections",
        "100",
        "--header-timeout",
        "120",
    ]);
    // Fewer at once than a turn accepts (256), so none of this is a storm yet: 50 that
    // sent part of a request (stalled), then 150 that sent nothing (silent).
    let mut stalled: Vec<Conn> = (0..50)
        .map(|_| {
            let mut c = Conn::connect(server.addr, b"GET /stream HTTP/1.1\r\nHo".to_vec());
            c.sock.set_nonblocking(false).unwrap();
            c.sock.write_all(&c.request).unwrap();
            c
        })
        .collect();
    let mut silent: Vec<Conn> = (0..150)
        .map(|_| {
            let c = Conn::connect(server.addr, Vec::new());
            c.sock.set_nonblocking(false).unwrap();
            c
        })
        .collect();
    // After their grace period the oldest 100 give way, whatever they were: all 50 stalled
    // ones and the 50 oldest silent ones. (Each scrape is a new connection too, and may push
    // one more silent one out: the counts are read from the scrape after which they are
    // compared.)
    server.wait_metrics("200 taken in and 100 evicted", |m| {
        metric(m, "sse_edge_request_evictions_total") >= 100.0
    });
    let m = Scrape::of(&server);
    assert_eq!(m.evictions("stalled"), 50.0, "{}", m.0);
    assert!(m.evictions("silent") >= 50.0, "{}", m.0);
    assert!(m.value("sse_edge_request_connections") <= 100.0, "{}", m.0);
    let peak = m.value("sse_edge_request_connections_peak");
    assert!((101.0..=201.0).contains(&peak), "{}", m.0);
    assert_eq!(
        closed_count(&mut stalled, 50),
        50,
        "every stalled one closed"
    );
    let evicted = m.evictions("silent") as usize;
    assert_eq!(closed_count(&mut silent, evicted), evicted);
    assert!(!server.log().contains("reconnect storm"));

    // The storm: 1000 complete requests waiting at once. The first turn after the node
    // wakes takes its whole budget of 256; none is evicted, every one is served.
    let mut b = burst(&server, plain_requests(1000));
    assert_eq!(b.written_stopped, 1000, "all waiting in the accept queue");
    let tally = read_heads(&mut b.conns);
    assert_eq!(
        tally,
        Tally {
            served: 1000,
            ..Tally::default()
        }
    );
    let log = server.wait_for_log("reconnect storm");
    let m = Scrape::of(&server);
    assert_eq!(m.value("sse_edge_accepted_per_turn_max"), 256.0, "{}", m.0);
    assert_eq!(m.value("sse_edge_storms_total"), 1.0, "{}", m.0);
    assert_eq!(m.evictions("stalled"), 50.0, "{}", m.0);
    let evicted = m.evictions("silent") as usize;
    assert_eq!(
        closed_count(&mut silent, evicted),
        evicted,
        "only silent ones gave way"
    );
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reconnect storm"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    eprintln!("{}", lines[0]);
    assert!(lines[0].contains("connections=1000"), "{}", lines[0]);
    // Still one, with the streams served and an event delivered to each.
    let r = server.publish("?topic=storm", b"after");
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + PATIENCE;
    for c in b.conns.iter_mut() {
        assert!(c.read_until(b"data: after\n\n", deadline));
    }
    let log = server.log();
    assert_eq!(log.matches("reconnect storm").count(), 1, "{log}");
}
