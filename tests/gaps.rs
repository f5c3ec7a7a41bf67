//! Honest lossy delivery: a stalled reader is told exactly what it lost (`event: gap`), and
//! one that keeps losing for `--slow-client-timeout` is disconnected.

mod util;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use util::{published_id, HttpConn, Server, SseClient};

/// A stream with a tiny receive buffer whose reading is up to the test.
fn stalled_stream(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    std::io::Write::write_all(&mut s, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s
}

#[test]
fn a_stalled_reader_gets_a_gap_notice_naming_the_lost_range() {
    let server = Server::start(&["--client-buffer", "8192", "--slow-client-timeout", "0"]);
    let stalled = stalled_stream(server.addr);
    server.wait_metrics("stream open", |m| m["sse_edge_clients"] == 1.0);
    let mut publisher = HttpConn::open(server.addr);
    // Large frames fill the kernel's socket buffers (megabytes on loopback) in few events.
    let body = vec![b'g'; 60 * 1024];
    // Publish until the server has dropped frames for it.
    let mut published = Vec::new();
    for _ in 0..5000 {
        published.push(published_id(&publisher.publish("", &body)));
        if published.len() % 10 == 0 && server.metrics()["sse_edge_frames_dropped_total"] >= 20.0 {
            break;
        }
    }
    let burst_end = *published.last().unwrap();
    let mut reader = SseClient::from_stream(stalled);
    // Once its queue drains, the next event that fits brings the notice: keep publishing
    // markers until it arrives (markers dropped meanwhile belong to the gap too).
    let done = Arc::new(AtomicBool::new(false));
    let markers = {
        let (addr, done) = (server.addr, done.clone());
        std::thread::spawn(move || {
            let mut conn = HttpConn::open(addr);
            let deadline = Instant::now() + util::PATIENCE;
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                published_id(&conn.publish("?event=marker", b"after"));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // What was delivered before the loss is a contiguous run from the first id.
    let mut expect = published[0];
    let notice = loop {
        let e = reader.next_event();
        if e.event.as_deref() == Some("gap") {
            break e;
        }
        assert_eq!(e.id, Some(expect.to_string()), "contiguous before the gap");
        expect += 1;
    };
    let after = reader.next_event();
    done.store(true, Ordering::Release);
    markers.join().unwrap();
    let next: u64 = after.id.unwrap().parse().unwrap();
    let (from, to) = (expect, next - 1);
    assert!(from <= burst_end, "the loss began during the burst");
    assert_eq!(notice.id, None, "notices carry no id");
    assert_eq!(
        notice.data,
        format!(
            "{{\"from\":\"{from}\",\"to\":\"{to}\",\"dropped\":{}}}",
            to - from + 1
        )
    );
    assert_eq!(
        after.event.as_deref(),
        Some("marker"),
        "straight after the notice: the event that fitted"
    );
    assert_eq!(server.metrics()["sse_edge_gap_notices_total"], 1.0);
}

#[test]
fn a_reader_that_keeps_losing_is_disconnected_after_the_timeout() {
    let server = Server::start(&["--client-buffer", "4096", "--slow-client-timeout", "1"]);
    let mut stalled = stalled_stream(server.addr);
    let mut healthy = server.stream("/stream");
    server.wait_metrics("two streams", |m| m["sse_edge_clients"] == 2.0);
    let mut publisher = HttpConn::open(server.addr);
    let body = vec![b's'; 60 * 1024];
    let deadline = std::time::Instant::now() + util::PATIENCE;
    let mut sent = 0;
    while server.metrics()["sse_edge_slow_disconnects_total"] < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled stream was never disconnected"
        );
        published_id(&publisher.publish("", &body));
        sent += 1;
        // The healthy stream keeps up and keeps its place.
        assert_eq!(healthy.next_event().data.len(), 60 * 1024);
        // Once it is losing frames, give the clock time to pass the timeout.
        if server.metrics()["sse_edge_frames_dropped_total"] > 0.0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let m = server.wait_metrics("the stalled stream gone", |m| m["sse_edge_clients"] == 1.0);
    assert_eq!(m["sse_edge_slow_disconnects_total"], 1.0);
    // What it had received ends, then the connection is closed (EOF after the buffered bytes).
    stalled.set_read_timeout(Some(util::PATIENCE)).unwrap();
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut stalled, &mut sink).expect("closed by the server");
    assert!(sent > 1);
}
