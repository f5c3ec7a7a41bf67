//! A publisher that reuses one connection (keep-alive, pipelining, chunked bodies).

mod util;

use util::{published_id, HttpConn, Server};

#[test]
fn thousand_posts_on_one_connection_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut stream = server.stream("/stream");
    let mut conn = HttpConn::open(server.addr);
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(published_id(&conn.publish("", format!("n{i}").as_bytes())));
    }
    assert_eq!(ids, (1..=1000).collect::<Vec<u64>>());
    for i in 0..1000 {
        assert_eq!(stream.next_event().data, format!("n{i}"));
    }
    let m = server.metrics();
    assert_eq!(m["sse_edge_events_published_total"], 1000.0);
}

#[test]
fn pipelined_requests_with_length_and_chunked_bodies() {
    let server = Server::start(&[]);
    let mut stream = server.stream("/stream");
    let mut conn = HttpConn::open(server.addr);
    let mut wire = Vec::new();
    for i in 0..100 {
        let body = format!("p{i}");
        if i % 2 == 0 {
            wire.extend_from_slice(
                format!(
                    "POST /broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        } else {
            let (a, b) = body.split_at(1);
            wire.extend_from_slice(
                format!(
                    "POST /broadcast HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
                .as_bytes(),
            );
        }
    }
    wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(&wire); // one write: every request pipelined
    let ids: Vec<u64> = (0..100)
        .map(|_| published_id(&conn.read_response()))
        .collect();
    assert_eq!(ids, (1..=100).collect::<Vec<u64>>());
    let health = conn.read_response();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    for i in 0..100 {
        assert_eq!(stream.next_event().data, format!("p{i}"));
    }
}

#[test]
fn expect_continue_gets_an_interim_response() {
    let server = Server::start(&[]);
    let mut conn = HttpConn::open(server.addr);
    conn.send(
        b"POST /broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = conn.read_response();
    assert_eq!(interim.status, 100);
    conn.send(b"hello");
    assert_eq!(published_id(&conn.read_response()), 1);
}

#[test]
fn a_pipelining_client_that_never_reads_is_paused_not_buffered() {
    // Thousands of requests whose responses are never read: the server stops reading this
    // connection once its unread responses pile up, instead of growing its memory.
    let server = Server::start(&[]);
    let conn = HttpConn::open(server.addr);
    let writer = {
        let mut sock = conn.sock.try_clone().unwrap();
        std::thread::spawn(move || {
            let req = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
            // Stops when the server stops reading and every buffer is full (write blocks
            // until the test ends and the socket is shut down).
            for _ in 0..200_000 {
                if std::io::Write::write_all(&mut sock, req).is_err() {
                    break;
                }
            }
        })
    };
    server.wait_metrics("output parked at the backlog", |m| {
        m["sse_edge_queued_bytes"] >= 256.0 * 1024.0
    });
    let before = server.metrics()["sse_edge_queued_bytes"];
    // The server is healthy, and the parked output does not grow without bound.
    for _ in 0..20 {
        assert_eq!(
            server
                .request(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
                .status,
            200
        );
    }
    let after = server.metrics()["sse_edge_queued_bytes"];
    assert!(
        after <= before + 64.0 * 1024.0,
        "queued grew from {before} to {after}"
    );
    conn.sock.shutdown(std::net::Shutdown::Both).unwrap();
    writer.join().unwrap();
}
