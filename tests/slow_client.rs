//! A client that never reads cannot hold anyone back, and costs at most `--client-buffer`.

mod util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Socket, Type};
use util::{published_id, HttpConn, Server, SseClient, PATIENCE};

const EVENTS: u64 = 2000;
const FAST: usize = 10;
const CLIENT_BUFFER: u64 = 65536;

/// A stream whose socket has a tiny receive buffer and that never reads.
fn stalled_stream(addr: SocketAddr) -> std::net::TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = s.into();
    std::io::Write::write_all(&mut s, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s
}

#[test]
fn a_reader_that_never_reads_gets_drops_and_everyone_else_gets_everything() {
    let server = Server::start(&["--client-buffer", &CLIENT_BUFFER.to_string()]);
    let stalled = stalled_stream(server.addr);
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..FAST).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = (0..FAST)
        .map(|n| {
            let mut c = server.stream("/stream");
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..EVENTS {
                    let e = c.next_event();
                    let id: u64 = e.id.unwrap().parse().unwrap();
                    assert!(
                        last == 0 || id == last + 1,
                        "fast client {n} skipped from {last} to {id}"
                    );
                    assert_eq!(e.data.len(), 4096);
                    last = id;
                    seen[n].store(id, Ordering::Release);
                }
            })
        })
        .collect();
    server.wait_metrics("11 streams", |m| m["sse_edge_clients"] == 11.0);

    // Publish in small batches and let the fast readers catch up between them, so what is
    // tested is the slow client's isolation, not whether a test thread got scheduled in time.
    let body = vec![b'x'; 4096];
    let mut publisher = HttpConn::open(server.addr);
    let mut last_id = 0;
    for batch in 0..(EVENTS / 8) {
        for _ in 0..8 {
            last_id = published_id(&publisher.publish("", &body));
        }
        let deadline = Instant::now() + PATIENCE;
        while seen.iter().any(|s| s.load(Ordering::Acquire) < last_id) {
            assert!(
                Instant::now() < deadline,
                "fast readers stalled at batch {batch}"
            );
            std::thread::yield_now();
        }
    }
    for r in readers {
        r.join().expect("a fast reader lost or reordered an event");
    }

    // The fast readers hung up when their threads ended; the stalled one is still there.
    let m = server.wait_metrics("only the stalled stream left", |m| {
        m["sse_edge_clients"] == 1.0
    });
    assert!(
        m["sse_edge_frames_dropped_total"] > 0.0,
        "the stalled client had drops: {m:?}"
    );
    assert!(
        m["sse_edge_queue_peak_bytes"] <= CLIENT_BUFFER as f64,
        "no queue grew past --client-buffer: {m:?}"
    );
    assert!(m["sse_edge_queued_bytes"] <= CLIENT_BUFFER as f64, "{m:?}");
    let fast_frames = FAST as f64 * EVENTS as f64;
    assert_eq!(
        m["sse_edge_frames_queued_total"] + m["sse_edge_frames_dropped_total"],
        fast_frames + EVENTS as f64
    );

    // Now it reads: it sees a gapped subset, in order, then live events again.
    let stalled = stalled.try_clone().unwrap();
    let mut late = SseClient::from_stream(stalled);
    let done = Arc::new(AtomicBool::new(false));
    let marker = {
        let done = done.clone();
        let addr = server.addr;
        std::thread::spawn(move || {
            let mut conn = HttpConn::open(addr);
            let deadline = Instant::now() + PATIENCE;
            // Repeat until the reader has it: while its queue is full, a marker is dropped too.
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                conn.publish("?event=marker", b"end");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    // Ids it saw: what the kernel and its queue held, then (after the drops) the marker.
    let mut ids = Vec::new();
    let mut notices = Vec::new();
    loop {
        let e = late.next_event();
        if e.event.as_deref() == Some("gap") {
            notices.push((ids.last().copied(), e.data));
            continue;
        }
        ids.push(e.id.unwrap().parse::<u64>().unwrap());
        if e.event.as_deref() == Some("marker") {
            break;
        }
    }
    // It was told, right where the hole is, which ids it lost.
    let (before, notice) = notices.first().cloned().expect("an event: gap notice");
    let hole_start = before.unwrap() + 1;
    assert!(
        notice.starts_with(&format!("{{\"from\":\"{hole_start}\",")),
        "{notice}"
    );
    done.store(true, Ordering::Release);
    marker.join().unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert!((ids.len() as u64) < EVENTS, "got {} of {EVENTS}", ids.len());
    assert!(
        ids.windows(2).any(|w| w[1] > w[0] + 1),
        "a gap where frames were dropped"
    );
    assert!(
        *ids.last().unwrap() > last_id,
        "the marker came after the burst"
    );
}
