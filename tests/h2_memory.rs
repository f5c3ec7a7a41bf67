//! What idle HTTP/2 costs the node, in live bytes (issue 28): an idle h2c connection with
//! one stream at most 512 B, and each further idle stream on a connection at most 128 B
//! beyond it.
//!
//! As `storm_memory.rs` does: the node runs in this process (the library's `Server`, one
//! shard) under a counting global allocator, and the clients in a process of their own (this
//! test binary again, as `h2_client_side`), so only the node's allocations are counted. The
//! figure is live bytes once every stream has its head and the node is idle, minus live
//! bytes before the first connection, per connection.

#[path = "util/counting_alloc.rs"]
mod counting_alloc;
#[path = "util/h2.rs"]
mod h2_client;
mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::size_of;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use counting_alloc::{live_bytes, Counting};
use h2_client::H2Client;
use sse_edge::node::metrics::Stat;
use sse_edge::{Config, Control, Server};
use util::PATIENCE;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Set for the client side: "ADDR CONNECTIONS STREAMS-EACH".
const CLIENT_ENV: &str = "SSE_EDGE_TEST_H2_CLIENT";

/// One measurement at a time in this process: live bytes are the whole process's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn idle_h2c_connections_and_streams_fit_their_budgets() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    sse_edge::node::fdlimit::raise_to_hard_limit().expect("raise RLIMIT_NOFILE");
    let args = [
        "sse-edge",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--tick",
        "0",
        "--keepalive",
        "3600",
        "--header-timeout",
        "300",
    ];
    let config = Config::parse_args(args).unwrap_or_else(|e| panic!("config: {e:?}"));
    let server = Server::bind(config).expect("bind");
    let addr = server.local_addr();
    let control = server.control();
    thread::spawn(move || server.run());

    // Warm the node's lists (slab, pending, heaps) and the topic, so they are in the
    // baseline, as the first storm of storm_memory.rs's baseline does.
    let warm = measure(&control, addr, 50, 2);
    let one = measure(&control, addr, 300, 1);
    let ten = measure(&control, addr, 30, 10);
    // The slabs of connections and streams are allocated ahead (128 KiB each, in the
    // baseline): their entries count by size.
    let (conn_entry, stream_entry) = (
        size_of::<SlabEntry<sse_edge::node::client::Client>>() as i64,
        size_of::<SlabEntry<sse_edge::delivery::stream::Stream>>() as i64,
    );
    let one = one + conn_entry + stream_entry;
    let ten = ten + conn_entry + 10 * stream_entry;
    let beyond = (ten - one) / 9;
    eprintln!(
        "live bytes per idle h2c connection: {one} with one stream, {ten} with ten \
         ({beyond} per stream beyond the first; warm-up {warm})"
    );
    assert!(
        one <= 512,
        "an idle h2c connection with one stream holds {one} B"
    );
    assert!(
        beyond <= 128,
        "an idle HTTP/2 stream holds {beyond} B beyond its connection"
    );
}

/// A slot of a `slab::Slab<T>`, laid out as the slab crate declares it (its type is private).
#[allow(dead_code)] // never built: only measured
enum SlabEntry<T> {
    Vacant(usize),
    Occupied(T),
}

/// Opens `conns` h2c connections of `streams` streams each, waits until the node is idle,
/// and returns the live bytes it holds for each connection; then closes them all.
fn measure(control: &Control, addr: std::net::SocketAddr, conns: usize, streams: usize) -> i64 {
    wait(|| stat(control, Stat::Connections) == 0, "no connection");
    let before = live_bytes();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "h2_client_side", "--nocapture"])
        .env(CLIENT_ENV, format!("{addr} {conns} {streams}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client side");
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::with_capacity(1024);
    loop {
        line.clear();
        assert!(
            from.read_line(&mut line).unwrap() > 0,
            "the client side failed"
        );
        if line.starts_with("h2-client: ready") {
            break;
        }
    }
    let n = (conns * streams) as u64;
    wait(
        || stat(control, Stat::Streams) == n && stat(control, Stat::QueuedBytes) == 0,
        "streams open and flushed",
    );
    let per_conn = || (live_bytes() as i64 - before as i64) / conns as i64;
    // What the requests needed goes back as they become streams; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut figure = per_conn();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        figure = figure.min(per_conn());
    }
    drop(child.stdin.take());
    let _ = child.wait();
    wait(
        || stat(control, Stat::Connections) == 0,
        "connections closed",
    );
    figure
}

/// The client side: opens the connections and streams, says ready, holds them until stdin
/// closes.
#[test]
fn h2_client_side() {
    let Ok(spec) = std::env::var(CLIENT_ENV) else {
        return; // run as part of the suite: nothing to do
    };
    let mut parts = spec.split(' ');
    let addr = parts.next().unwrap().parse().unwrap();
    let conns: usize = parts.next().unwrap().parse().unwrap();
    let streams: u32 = parts.next().unwrap().parse().unwrap();
    let mut clients: Vec<H2Client> = (0..conns)
        .map(|_| {
            let mut c = H2Client::connect(addr, &[]);
            for i in 0..streams {
                c.request(1 + 2 * i, "GET", "/stream?topic=idle", &[], true);
            }
            for i in 0..streams {
                c.body_until(1 + 2 * i, "retry:");
            }
            c
        })
        .collect();
    println!("h2-client: ready");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    clients.clear();
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
