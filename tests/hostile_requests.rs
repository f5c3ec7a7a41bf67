//! Hostile requests over real sockets against the real binary: overflowing sizes, garbage,
//! huge heads, smuggling shapes, control characters, a client that pipelines and never
//! reads, borrowed publish addresses. After each case the server must still answer
//! `/healthz`, and a control stream opened at the start must receive the next event.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{published_id, rss_bytes, send_raw, HttpConn, Server, SseClient, PATIENCE};

/// The server still serves, and the control stream gets the event published now.
fn still_serving(server: &Server, witness: &mut SseClient, case: &str) {
    let health = server.request(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(health.status, 200, "healthz after {case}");
    let marker = format!("after {case}");
    published_id(&server.publish("", marker.as_bytes()));
    let event = witness.next_event();
    assert_eq!(event.data, marker, "the control stream after {case}");
}

/// Sends `raw` and expects one of `statuses` as a one-line answer.
fn expect_status(server: &Server, case: &str, raw: &[u8], statuses: &[u16]) {
    let r = send_raw(server.addr, raw).unwrap_or_else(|| panic!("{case}: no answer"));
    assert!(
        statuses.contains(&r.status),
        "{case}: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.text().lines().count(), 1, "{case}: one-line reason");
}

#[test]
fn overflowing_chunk_sizes_and_lengths_are_refused() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");
    let chunked = "POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let many_digits = format!("1{}", "0".repeat(200));
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            "the crash of issue #11".into(),
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nfffffffffffffffe\r\n"
                .to_vec(),
        ),
        (
            "size 2^64-1".into(),
            format!("{chunked}ffffffffffffffff\r\n").into_bytes(),
        ),
        (
            "size 2^64".into(),
            format!("{chunked}10000000000000000\r\n").into_bytes(),
        ),
        (
            "after data, 2^64-2".into(),
            format!("{chunked}1\r\na\r\nfffffffffffffffe\r\na\r\n").into_bytes(),
        ),
        (
            "many digits".into(),
            format!("{chunked}{many_digits}\r\n").into_bytes(),
        ),
    ];
    for (case, raw) in &cases {
        expect_status(&server, case, raw, &[413]);
        still_serving(&server, &mut witness, case);
    }
    for length in [
        "18446744073709551615",
        "18446744073709551614",
        "18446744073709551616",
        "9223372036854775808",
        "99999999999999999999999999",
    ] {
        let raw = format!("POST /broadcast HTTP/1.1\r\nContent-Length: {length}\r\n\r\nx");
        expect_status(&server, length, raw.as_bytes(), &[413]);
        still_serving(&server, &mut witness, length);
    }
    assert_eq!(server.metrics()["sse_edge_parse_panics_total"], 0.0);
}

#[test]
fn garbage_huge_heads_and_many_headers_are_answered_not_hung_on() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");

    // Garbage: deterministic pseudo-random bytes.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    expect_status(&server, "garbage", &garbage, &[400, 431]);
    still_serving(&server, &mut witness, "garbage");

    // A 1 MiB request line, written by another thread: the answer must not wait for it.
    let mut conn = HttpConn::open(server.addr);
    let mut writer = conn.sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut line = b"GET /".to_vec();
        line.resize(1 << 20, b'a');
        line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let _ = writer.write_all(&line);
    });
    let started = Instant::now();
    if let Some(r) = conn.try_read_response() {
        assert_eq!(r.status, 431, "{}", r.text());
    }
    assert!(started.elapsed() < PATIENCE);
    drop(conn);
    sender.join().unwrap();
    still_serving(&server, &mut witness, "a 1 MiB request line");

    let mut many = b"GET /stream HTTP/1.1\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    expect_status(&server, "10 000 headers", &many, &[431]);
    still_serving(&server, &mut witness, "10 000 headers");
}

#[test]
fn smuggling_shapes_are_refused_and_publish_nothing() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");
    // What a front proxy reading the framing differently would take for a second request.
    let inner = "POST /broadcast HTTP/1.1\r\nContent-Length: 8\r\n\r\nsmuggled";
    let shapes = [
        ("CL and TE", format!("POST /broadcast HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("TE on HTTP/1.0", format!("POST /broadcast HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("TE chunked, identity", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{inner}")),
        ("TE chunked, chunked", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("duplicate TE", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("line starting with a space", format!("POST /broadcast HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("space before the colon", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("obs-fold", format!("POST /broadcast HTTP/1.1\r\nX-A: b\r\n\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}")),
        ("bare LF", format!("POST /broadcast HTTP/1.1\nContent-Length: 0\n\n{inner}")),
        ("bare LF in a chunk line", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n{inner}")),
        ("Content-Length: 1,1", format!("POST /broadcast HTTP/1.1\r\nContent-Length: 1,1\r\n\r\nx{inner}")),
        ("Content-Length: +1", format!("POST /broadcast HTTP/1.1\r\nContent-Length: +1\r\n\r\nx{inner}")),
        ("chunk extension with space", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 ;x\r\nx\r\n0\r\n\r\n{inner}")),
        ("trailer", format!("POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n{inner}")),
    ];
    for (case, raw) in &shapes {
        expect_status(&server, case, raw.as_bytes(), &[400]);
        // still_serving checks that the next event is ours: nothing was smuggled through.
        still_serving(&server, &mut witness, case);
    }
    assert_eq!(
        server.metrics()["sse_edge_events_published_total"],
        shapes.len() as f64
    );
}

#[test]
fn control_characters_in_names_and_ids_never_crash() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");
    for (case, raw) in [
        ("NUL topic", &b"GET /stream?topic=%00 HTTP/1.1\r\n\r\n"[..]),
        ("CR topic", b"GET /stream?topic=a%0Db HTTP/1.1\r\n\r\n"),
        (
            "NUL publish topic",
            b"POST /broadcast?topic=%00 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "CR event",
            b"POST /broadcast?event=a%0D%0Aid:%209 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        ),
        ("sign in percent", b"GET /stream?topic=%+1 HTTP/1.1\r\n\r\n"),
        (
            "NUL Last-Event-ID",
            b"GET /stream HTTP/1.1\r\nLast-Event-ID: a\x00b\r\n\r\n",
        ),
        (
            "CR Last-Event-ID",
            b"GET /stream HTTP/1.1\r\nLast-Event-ID: a\rb\r\n\r\n",
        ),
    ] {
        expect_status(&server, case, raw, &[400]);
        still_serving(&server, &mut witness, case);
    }
    // Through the query, a NUL or CR id is only text: the stream starts and the reset
    // notice echoes it as one line of JSON.
    for (query, echoed) in [
        ("a%00b", "a\\u0000b"),
        ("a%0Db", "a\\u000db"),
        ("%0A", "\\u000a"),
    ] {
        let mut s = server.stream(&format!("/stream?lastEventId={query}"));
        let reset = s.next_event();
        assert_eq!(reset.event.as_deref(), Some("reset"));
        assert_eq!(reset.data.lines().count(), 1);
        assert!(
            reset.data.chars().all(|c| !c.is_control()),
            "{:?}",
            reset.data
        );
        assert!(
            reset.data.contains(&format!("\"requested\":\"{echoed}\"")),
            "{}",
            reset.data
        );
        still_serving(&server, &mut witness, query);
    }
    assert_eq!(server.metrics()["sse_edge_parse_panics_total"], 0.0);
}

#[test]
fn a_client_that_pipelines_pages_and_never_reads_is_closed_with_bounded_memory() {
    let server = Server::start(&["--header-timeout", "2"]);
    let mut witness = server.stream("/stream");
    let before = rss_bytes(server.pid());

    let mut sock = TcpStream::connect(server.addr).unwrap();
    sock.set_write_timeout(Some(PATIENCE)).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let all: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        // The server stops reading once its backlog is full; the rest may never be taken.
        let _ = writer.write_all(&all);
    });

    // The connection ends by itself (the header timeout), never read by us meanwhile.
    let started = Instant::now();
    let peak = std::cell::Cell::new(before);
    server.wait_metrics("the header timeout", |m| {
        peak.set(peak.get().max(rss_bytes(server.pid())));
        m["sse_edge_header_timeouts_total"] >= 1.0
    });
    let peak = peak.get();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed too early"
    );
    let grown = peak.saturating_sub(before);
    assert!(grown < 50 << 20, "RSS grew by {} MiB", grown >> 20);

    // What was sent before the close can be read, then the connection ends.
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = [0u8; 65536];
    loop {
        match sock.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sender.join().unwrap();
    eprintln!(
        "pipelined pages: RSS {} KiB before, peak {} KiB, closed after {:?}",
        before >> 10,
        peak >> 10,
        started.elapsed()
    );
    still_serving(
        &server,
        &mut witness,
        "a pipelining client that never reads",
    );
}

#[test]
fn borrowed_publish_addresses_are_refused_and_same_origin_passes() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");
    for (case, lines) in [
        (
            "cross-site",
            "Host: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\n",
        ),
        (
            "cross-origin",
            "Host: localhost:8080\r\nOrigin: https://evil.example\r\n",
        ),
        (
            "rebound name",
            "Host: evil.example:8080\r\nOrigin: http://evil.example:8080\r\n",
        ),
        ("Forwarded", "Forwarded: for=192.0.2.9\r\n"),
        ("X-Forwarded-For", "X-Forwarded-For: 192.0.2.9\r\n"),
        ("Via", "Via: 1.1 edge-proxy\r\n"),
    ] {
        let raw = format!("POST /broadcast HTTP/1.1\r\n{lines}Content-Length: 8\r\n\r\nborrowed");
        expect_status(&server, case, raw.as_bytes(), &[403]);
        still_serving(&server, &mut witness, case);
    }
    let same = server.request(b"POST /broadcast HTTP/1.1\r\nHost: localhost:8080\r\nOrigin: http://localhost:8080\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 4\r\n\r\npage");
    published_id(&same);
    assert_eq!(witness.next_event().data, "page");
    still_serving(&server, &mut witness, "same-origin");
}
