//! Connections that never become useful requests cannot lock anyone out: slow or silent
//! request heads are closed, the request phase is capped with the oldest silent connection
//! giving way, half-closed peers are handled, and one address cannot hold every stream.
//! (Bursts of real requests over the cap: `tests/storm.rs`.)
//!
//! Every test keeps a control stream that must receive every event published during and
//! after the attack.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::{connect_from, metric, Control, HttpConn, Server, SseClient, PATIENCE};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const CONTROL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Whether a read result means the peer closed the connection.
fn is_closed(r: &std::io::Result<usize>) -> bool {
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn a_slowloris_head_is_closed_after_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "2"]);
    let mut control = Control::open(&server);
    let started = Instant::now();
    let mut s = TcpStream::connect(server.addr).unwrap();
    // The read timeout paces the attack: each silent 300 ms read is followed by one byte.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let head = b"GET /stream HTTP/1.1\r\nHost: t\r\nX-Padding: ";
    let mut sent = 0usize;
    let mut buf = [0u8; 1024];
    let closed_after = loop {
        assert!(
            started.elapsed() < PATIENCE,
            "still open after {PATIENCE:?} ({sent} bytes sent)"
        );
        let r = s.read(&mut buf);
        if is_closed(&r) {
            break started.elapsed();
        }
        // A 408 or similar answer before the close is fine; only the close is required.
        if r.is_ok() {
            continue;
        }
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).is_err() {
            break started.elapsed();
        }
        sent += 1;
        if sent.is_multiple_of(3) {
            control.publish(); // events published during the attack
        }
    };
    // The server's clock starts at its accept, after ours: it cannot have closed earlier.
    assert!(
        closed_after >= Duration::from_millis(1900),
        "closed after {closed_after:?}, before --header-timeout 2"
    );
    let m = server.metrics();
    assert!(
        metric(&m, "sse_edge_header_timeouts_total") >= 1.0,
        "header timeout counted: {m:?}"
    );
    control.publish_and_check();
}

/// Opens `n` connections that never send a byte.
fn silent_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect a silent connection");
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s
        })
        .collect()
}

#[test]
fn silent_connections_give_way_to_new_clients_at_the_request_cap() {
    // A header timeout far beyond PATIENCE: if a new client were served only once silent
    // connections time out, it would not be served within this test's deadlines.
    let server = Server::start(&[
        "--max-request-connections",
        "100",
        "--header-timeout",
        "120",
    ]);
    let mut control = Control::open(&server);
    let silent = silent_connections(server.addr, 1000);
    // All 1000 have been accepted (and most evicted) once the accept queue is empty; a new
    // connection is accepted after them, so its answer proves they were all seen.
    control.publish();

    let mut publisher = HttpConn::open(server.addr);
    let r = publisher.publish("?topic=fresh", b"served");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut stream = SseClient::connect(server.addr, "/stream?topic=fresh", &[]);
    let r = publisher.publish("?topic=fresh", b"to the new stream");
    assert_eq!(r.status, 200, "{}", r.text());
    let e = stream.event_within_patience("the new stream");
    assert_eq!(e.data, "to the new stream");

    let m = server.wait_metrics("the silent connections evicted", |m| {
        metric(m, "sse_edge_request_evictions_total") >= 900.0
    });
    // Held: at most the cap in the request phase, plus the streams and this scrape.
    assert!(
        m["sse_edge_connections"] <= 100.0 + 3.0,
        "request-phase connections capped at 100: {m:?}"
    );
    // The evicted ones were closed, not just forgotten: the oldest sees EOF.
    let mut first = &silent[0];
    let mut buf = [0u8; 64];
    assert!(
        is_closed(&first.read(&mut buf)),
        "the oldest silent connection was closed"
    );
    control.publish_and_check();
    drop(silent);
}

#[test]
fn silent_connections_are_gone_after_the_header_timeout() {
    // Default settings: 1000 silent connections fit under the default request cap (1024 per
    // shard); the default 10 s header timeout closes them.
    let server = Server::start(&[]);
    let mut control = Control::open(&server);
    let baseline = server.metrics()["sse_edge_connections"];
    let silent = silent_connections(server.addr, 1000);
    control.publish();
    server.wait_metrics("the silent connections accepted", |m| {
        m["sse_edge_connections"] >= baseline + 1000.0
    });
    control.publish();
    let m = server.wait_metrics("connections back to baseline", |m| {
        m["sse_edge_connections"] <= baseline
    });
    assert!(
        metric(&m, "sse_edge_header_timeouts_total") >= 1000.0,
        "each silent connection timed out: {m:?}"
    );
    for (n, mut s) in silent.iter().enumerate() {
        let mut buf = [0u8; 64];
        assert!(is_closed(&s.read(&mut buf)), "silent connection {n} closed");
    }
    control.publish_and_check();
}

#[test]
fn a_request_then_half_close_still_gets_its_answer() {
    let server = Server::start(&[]);
    let mut control = Control::open(&server);
    let mut c = HttpConn::open(server.addr);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    c.sock.shutdown(Shutdown::Write).unwrap();
    control.publish();
    let r = c
        .try_read_response()
        .expect("an answer to a request sent before the half-close");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert!(c.closed_by_server());
    control.publish_and_check();
}

#[test]
fn a_stream_whose_client_half_closes_is_closed_by_the_server() {
    let server = Server::start(&[]);
    let mut control = Control::open(&server);
    let mut s = server.stream("/stream");
    server.wait_metrics("two streams", |m| m["sse_edge_clients"] == 2.0);
    s.sock.shutdown(Shutdown::Write).unwrap();
    control.publish();
    // Returns at EOF; panics if the server has not closed it within PATIENCE.
    s.read_to_end_within_patience("the half-closed stream");
    server.wait_metrics("the half-closed stream gone", |m| {
        m["sse_edge_clients"] == 1.0
    });
    control.publish_and_check();
}

#[derive(Debug, PartialEq)]
enum Answer {
    Stream,
    Shed,
}

/// Opens a stream from `source` and reads until it is clearly a live stream or a shed one.
fn open_from(server: &Server, source: IpAddr) -> (TcpStream, Answer) {
    let mut s = connect_from(server.addr, source, None);
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.contains(": connected\n") && text.contains("\n\n") {
            return (s, Answer::Stream);
        }
        let n = s.read(&mut buf).expect("an answer in time");
        if n == 0 {
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("\r\n\r\n: shed\nretry: "), "{text}");
            return (s, Answer::Shed);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn one_address_beyond_its_stream_cap_is_shed_and_others_are_not() {
    let server = Server::start(&["--max-streams-per-ip", "3"]);
    // The control stream has an address of its own, so it does not count against 127.0.0.1.
    let mut control = Control::open_from(&server, CONTROL);
    let mut local: Vec<TcpStream> = Vec::new();
    while local.len() < 3 {
        let (s, a) = open_from(&server, LOCAL);
        assert_eq!(
            a,
            Answer::Stream,
            "stream {} of 3 from 127.0.0.1",
            local.len() + 1
        );
        local.push(s);
    }
    control.publish();
    let (_shed, a) = open_from(&server, LOCAL);
    assert_eq!(a, Answer::Shed, "the 4th stream from 127.0.0.1");
    let (_other, a) = open_from(&server, OTHER);
    assert_eq!(a, Answer::Stream, "a stream from 127.0.0.2 is unaffected");
    control.publish();
    let m = server.metrics();
    assert!(
        metric(&m, "sse_edge_shed_total") >= 1.0,
        "the shed stream counted: {m:?}"
    );

    // One from 127.0.0.1 closes: a new one fits again once the server has seen the close.
    drop(local.pop());
    server.wait_metrics("the closed stream gone", |m| m["sse_edge_clients"] == 4.0);
    let (_again, a) = open_from(&server, LOCAL);
    assert_eq!(a, Answer::Stream, "room again after a close");
    control.publish_and_check();
}
