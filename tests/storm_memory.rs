//! After a reconnect storm a node holds what its idle streams hold, and no more: whatever the
//! requests and the replays needed while they ran goes back as soon as they are done, not
//! at the next keep-alive sweep (issue 25, item 2).
//!
//! The node runs in this process (the library's `Server`, one shard) so that the allocator
//! can be asked what is live: a counting global allocator (`util/counting_alloc.rs`) sums the
//! bytes of every allocation not yet freed. Live bytes are the whole process's, so the tests
//! here take turns (a lock), and the storm's clients run in a process of their own (this test
//! binary again, as `storm_client_side`): their allocations are not counted, and each side
//! has its own open-files limit, so a storm can be 10 000 streams.
//!
//! The burst is truly waiting: every connection is accepted while it is still silent, then
//! the shard is held still (a tracing subscriber parks its thread at its next log line, the
//! accept of one last connection), every request is written, and only then does the shard
//! go on: it meets 10 000 complete requests at once, as after a node restart.
//!
//! The figure: live bytes once every stream has all it was sent and the node is idle, minus
//! live bytes just before the first connection, divided by the streams. The baseline holds
//! the running node (its preallocated lists: the slab, the pending list and the deadline
//! heap at 128 KiB each; the history with the 30 events published; the publisher's
//! kept-alive connection) and the test harness; so the difference is what the streams cost
//! the node, the live event published after the storm (one frame in the history) included.
//! Debug builds count 112 bytes per client in the slab where release builds count 96.

#[path = "util/counting_alloc.rs"]
mod counting_alloc;
#[path = "util/redis.rs"]
mod redis_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Condvar, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use counting_alloc::{held_bytes, live_bytes, Counting};
use sse_edge::node::metrics::Stat;
use sse_edge::{Config, Control, Server};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Generous bound for anything that should happen "soon" on a noisy machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// Events published before the storm; the resuming streams ask for all after the fifth.
const PUBLISHED: u64 = 30;
/// Where the resuming streams left off: each is replayed 25 events.
const RESUME_FROM: u64 = 5;
/// The name of the thread the node runs on, which the gate parks.
const NODE_THREAD: &str = "storm-node";
/// Set for the client side of a storm: "ADDR STREAMS LAST-EVENT-ID" (`-` for none).
const CLIENT_ENV: &str = "SSE_EDGE_TEST_STORM_CLIENT";
/// What the client side's protocol lines start with (libtest prints lines of its own).
const SAYS: &str = "storm-client: ";

/// One storm at a time in this process: live bytes are the whole process's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_resume_storm_leaves_the_idle_figure_before_any_sweep() {
    storm(Storm {
        streams: 10_000,
        resume: true,
        keepalive: "3600",
        cluster: false,
        bound: 160,
    });
}

#[test]
fn a_resume_storm_leaves_the_idle_figure_without_keepalives() {
    storm(Storm {
        streams: 10_000,
        resume: true,
        keepalive: "0",
        cluster: false,
        bound: 160,
    });
}

#[test]
fn a_plain_storm_leaves_the_idle_figure_before_any_sweep() {
    storm(Storm {
        streams: 10_000,
        resume: false,
        keepalive: "3600",
        cluster: false,
        bound: 128,
    });
}

#[test]
fn a_plain_storm_leaves_the_idle_figure_without_keepalives() {
    storm(Storm {
        streams: 10_000,
        resume: false,
        keepalive: "0",
        cluster: false,
        bound: 128,
    });
}

#[test]
fn a_storm_past_the_deadline_heap_leaves_the_idle_figure() {
    // 19 000 connections outgrow the deadline heap's starting 16 384 entries: their
    // deadlines must go once they are streams, not --header-timeout later (they would be
    // 7 bytes a stream more here, 132). The bound is the goal behind the 160.
    storm(Storm {
        streams: 19_000,
        resume: true,
        keepalive: "0",
        cluster: false,
        bound: 128,
    });
}

#[test]
fn a_resume_storm_served_from_redis_leaves_the_idle_figure() {
    // Cluster mode, and a node that keeps one event per topic: each resume is replayed
    // from Redis by the replayer (its claims and its round of steps), then from the history.
    // The bound is the goal behind the 160: the replayer's storage for a storm's claims and
    // steps would be 15 bytes a stream more.
    storm(Storm {
        streams: 10_000,
        resume: true,
        keepalive: "0",
        cluster: true,
        bound: 128,
    });
}

struct Storm {
    /// Streams opened at once.
    streams: usize,
    /// Every stream resumes with `Last-Event-ID` (and is replayed 25 events).
    resume: bool,
    /// `--keepalive`: one far beyond the test (3600), so no sweep runs during it, or 0 (off).
    keepalive: &'static str,
    /// Cluster mode on a `redis-server` of its own, with `--history 1`: resumes are replayed
    /// from Redis.
    cluster: bool,
    /// Live bytes per stream allowed once the node is idle.
    bound: usize,
}

fn storm(storm: Storm) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    install_gate();
    sse_edge::node::fdlimit::raise_to_hard_limit().expect("raise RLIMIT_NOFILE");
    let limit = sse_edge::node::fdlimit::soft_limit().unwrap_or(1024) as usize;
    let n = storm.streams;
    assert!(
        n + 100 < limit,
        "{n} streams need more descriptors than {limit}"
    );

    let redis = storm.cluster.then(redis_util::RedisServer::start);
    let url = redis.as_ref().map(|r| r.url());
    let mut args = vec![
        "sse-edge",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--tick",
        "0",
        "--keepalive",
        storm.keepalive,
        // The burst arrives silent first (see the module doc): at the default cap most of it
        // would be evicted before it spoke, which is issue 25's item 1, not this one.
        "--max-request-connections",
        "20000",
        // Accepting and writing 19 000 connections in a debug build must not meet it.
        "--header-timeout",
        "300",
    ];
    if let Some(url) = &url {
        args.extend(["--redis", url, "--history", "1"]);
    }
    let config = Config::parse_args(args).unwrap_or_else(|e| panic!("config: {e:?}"));
    let server = Server::bind(config).expect("bind");
    let addr = server.local_addr();
    let control = server.control();
    let node = thread::Builder::new()
        .name(NODE_THREAD.into())
        .spawn(move || server.run())
        .unwrap();
    // One publisher, kept alive as a real one would be: it adds no connection to the storm.
    let mut publisher = Publisher::open(addr);
    let mut ids: Vec<String> = (1..=PUBLISHED)
        .map(|i| publisher.publish(&format!("event {i}")))
        .collect();
    let last_seen = ids[RESUME_FROM as usize - 1].clone();
    let resume_from = storm.resume.then_some(last_seen.as_str());
    let mut clients = Clients::start(addr, n, resume_from);
    let (live_before, held_before) = (live_bytes(), held_bytes());

    // The burst: every connection accepted while silent, the shard held, every request
    // written, the shard let go.
    clients.tell("connect");
    clients.expect("connected");
    wait(
        || stat(&control, Stat::Connections) == n as u64, // and the publisher
        "silent connections accepted",
    );
    hold_node();
    clients.tell("connect the last");
    wait_until_held();
    clients.tell("write");
    clients.expect("written");
    let released = Instant::now();
    let_node_go();

    // Each stream's head (and replay), then one live event to all.
    let replay_end = format!("read until {}", ids.last().unwrap());
    clients.tell(if storm.resume {
        &replay_end
    } else {
        "read until -"
    });
    clients.expect("read");
    let served = released.elapsed();
    wait(
        || stat(&control, Stat::Streams) == n as u64,
        "streams counted",
    );
    ids.push(publisher.publish("live"));
    clients.tell(&format!("read until {}", ids.last().unwrap()));
    clients.expect("read");
    wait(|| stat(&control, Stat::QueuedBytes) == 0, "queues flushed");
    let idle = Instant::now();
    let at_idle = per_stream(live_bytes(), live_before, n);

    // The node is idle: what it holds must come down to the bound without any sweep.
    let deadline = idle + PATIENCE;
    let over = || {
        per_stream(live_bytes(), live_before, n).max(per_stream(held_bytes(), held_before, n))
            > storm.bound as i64
    };
    while over() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let settled_in = idle.elapsed();
    let (live, held) = (
        per_stream(live_bytes(), live_before, n),
        per_stream(held_bytes(), held_before, n),
    );
    eprintln!(
        "storm of {n} ({}; --keepalive {}): all served in {served:?}; live bytes per stream \
         {at_idle} when idle, {live} {settled_in:?} later (held by the allocator: {held})",
        match (storm.resume, storm.cluster) {
            (true, true) => "resuming, 25 events replayed each, 24 from Redis",
            (true, false) => "resuming, 25 events replayed each",
            (false, _) => "plain",
        },
        storm.keepalive,
    );

    // Every stream got its head, exactly the events after its Last-Event-ID, then live.
    let expected = if storm.resume {
        &ids[RESUME_FROM as usize..]
    } else {
        &ids[PUBLISHED as usize..]
    };
    clients.tell(&format!("check {}", expected.join(" ")));
    clients.expect("checked");
    assert_eq!(stat(&control, Stat::StreamsOpened), n as u64);
    assert!(
        live <= storm.bound as i64 && held <= storm.bound as i64,
        "{live} live bytes per stream ({held} held by the allocator) after a storm of {n} \
         once idle (bound {})",
        storm.bound
    );

    clients.tell("close");
    clients.expect("closed");
    drop(publisher);
    control.shutdown();
    node.join().unwrap().expect("node ran");
    drop(redis);
}

/// The client side of a storm: a process of its own, told what to do line by line.
struct Clients {
    to: ChildStdin,
    from: BufReader<std::process::ChildStdout>,
    child: std::process::Child,
    line: String,
}

impl Clients {
    fn start(addr: SocketAddr, n: usize, resume_from: Option<&str>) -> Clients {
        let last = resume_from.unwrap_or("-");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "storm_client_side", "--nocapture"])
            .env(CLIENT_ENV, format!("{addr} {n} {last}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client side");
        Clients {
            to: child.stdin.take().unwrap(),
            from: BufReader::new(child.stdout.take().unwrap()),
            child,
            // Room for every answer, so reading one allocates nothing.
            line: String::with_capacity(1024),
        }
    }

    fn tell(&mut self, what: &str) {
        writeln!(self.to, "{what}").expect("the client side is gone");
    }

    /// Waits for the client side to say `what` (it fails on its own deadlines if stuck).
    fn expect(&mut self, what: &str) {
        loop {
            self.line.clear();
            let read = self.from.read_line(&mut self.line).expect("client side");
            assert!(read > 0, "the client side exited before saying {what:?}");
            if let Some(said) = self.line.trim_end().strip_prefix(SAYS) {
                assert_eq!(said, what, "the client side");
                return;
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The other end of a storm, in a process of its own (started by the storm tests, which
/// read what it says); does nothing when run as a test.
#[test]
fn storm_client_side() {
    let Ok(spec) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let mut words = spec.split(' ');
    let addr: SocketAddr = words.next().unwrap().parse().unwrap();
    let n: usize = words.next().unwrap().parse().unwrap();
    let request = match words.next().unwrap() {
        "-" => "GET /stream HTTP/1.1\r\nHost: storm\r\n\r\n".to_owned(),
        last => format!("GET /stream HTTP/1.1\r\nHost: storm\r\nLast-Event-ID: {last}\r\n\r\n"),
    };
    sse_edge::node::fdlimit::raise_to_hard_limit().expect("raise RLIMIT_NOFILE");
    let say = |what: &str| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{SAYS}{what}").unwrap();
        out.flush().unwrap();
    };
    let mut clients: Vec<TcpStream> = Vec::with_capacity(n);
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); n];
    for command in std::io::stdin().lock().lines() {
        let command = command.unwrap();
        let (verb, arg) = command.split_once(' ').unwrap_or((&command, ""));
        match (verb, arg) {
            ("connect", "") => {
                for _ in 0..n - 1 {
                    clients.push(TcpStream::connect(addr).expect("connect"));
                }
                say("connected");
            }
            // The node is about to be held: this connection's accept parks it.
            ("connect", "the last") => clients.push(TcpStream::connect(addr).expect("connect")),
            ("write", "") => {
                for client in &mut clients {
                    client.write_all(request.as_bytes()).expect("write request");
                }
                say("written");
            }
            ("read", until) => {
                let needle = match until.strip_prefix("until ") {
                    Some("-") => "\n\n".to_owned(), // the preamble's end (retry:)
                    Some(id) => format!("id: {id}\n"),
                    None => panic!("read what? {until}"),
                };
                for (client, got) in clients.iter_mut().zip(&mut got) {
                    read_until(client, got, needle.as_bytes());
                }
                say("read");
            }
            ("check", expected) => {
                let expected: Vec<&str> = expected.split(' ').collect();
                for (i, got) in got.iter().enumerate() {
                    let text = std::str::from_utf8(got).unwrap();
                    assert!(text.starts_with("HTTP/1.1 200 "), "stream {i}: {text}");
                    let ids: Vec<&str> = text
                        .lines()
                        .filter_map(|l| l.strip_prefix("id: "))
                        .collect();
                    assert_eq!(ids, expected, "stream {i}: {text}");
                }
                say("checked");
            }
            ("close", "") => {
                clients.clear();
                say("closed");
                return;
            }
            _ => panic!("unknown command {command:?}"),
        }
    }
}

/// Reads from `client` into `got` until `needle` is in it.
fn read_until(client: &mut TcpStream, got: &mut Vec<u8>, needle: &[u8]) {
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    while memchr::memmem::find(got, needle).is_none() {
        match client.read(&mut buf) {
            Ok(0) => panic!("stream closed by the node"),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) => panic!("reading a stream: {e}"),
        }
    }
}

/// Bytes per stream between two readings.
fn per_stream(now: usize, before: usize, n: usize) -> i64 {
    (now as i64 - before as i64) / n as i64
}

/// A node-wide figure (every shard's, as mirrored at the end of its last turn).
fn stat(control: &Control, stat: Stat) -> u64 {
    control.stats().iter().map(|s| s.get(stat)).sum()
}

/// Waits for `ready`, failing after [`PATIENCE`].
fn wait(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A publisher on one kept-alive connection.
struct Publisher {
    conn: TcpStream,
    got: Vec<u8>,
}

impl Publisher {
    fn open(addr: SocketAddr) -> Publisher {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        Publisher {
            conn,
            got: Vec::with_capacity(4096),
        }
    }

    /// Publishes `body` to the default topic; returns its id.
    fn publish(&mut self, body: &str) -> String {
        write!(
            self.conn,
            "POST /broadcast HTTP/1.1\r\nHost: storm\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        self.got.clear();
        read_until(&mut self.conn, &mut self.got, b"\r\n\r\n");
        let head_end = memchr::memmem::find(&self.got, b"\r\n\r\n").unwrap() + 4;
        let head = std::str::from_utf8(&self.got[..head_end])
            .unwrap()
            .to_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("a length")
            .parse()
            .unwrap();
        while self.got.len() < head_end + length {
            let mut buf = [0u8; 1024];
            let k = self.conn.read(&mut buf).unwrap();
            assert!(k > 0, "publisher connection closed");
            self.got.extend_from_slice(&buf[..k]);
        }
        let answer = std::str::from_utf8(&self.got[head_end..]).unwrap();
        let at = answer.find("\"id\":\"").expect("an id") + 6;
        answer[at..].split('"').next().unwrap().to_owned()
    }
}

// ----- the gate: holding the node's thread still while the burst is written --------------

/// Whether the node's thread must stop at its next log line, and whether it has.
static GATE: Mutex<(bool, bool)> = Mutex::new((false, false));
static GATE_MOVED: Condvar = Condvar::new();

/// Installs (once) a tracing subscriber that records nothing and parks the node's thread at
/// its next event while the gate is closed.
fn install_gate() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(Gate).expect("the only subscriber");
    });
}

fn hold_node() {
    *GATE.lock().unwrap() = (true, false);
}

fn wait_until_held() {
    let mut gate = GATE.lock().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !gate.1 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the node did not log its next accept");
        gate = GATE_MOVED.wait_timeout(gate, left).unwrap().0;
    }
}

fn let_node_go() {
    *GATE.lock().unwrap() = (false, false);
    GATE_MOVED.notify_all();
}

fn on_node_thread() -> bool {
    thread::current().name() == Some(NODE_THREAD)
}

/// A subscriber that only ever holds the node's thread (see [`install_gate`]).
struct Gate;

impl tracing::Subscriber for Gate {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        on_node_thread()
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        let mut gate = GATE.lock().unwrap();
        if gate.0 {
            gate.1 = true;
            GATE_MOVED.notify_all();
            while gate.0 {
                gate = GATE_MOVED.wait(gate).unwrap();
            }
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
