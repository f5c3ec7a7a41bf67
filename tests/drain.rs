//! SIGTERM: stop accepting, flush what is queued, close every stream, exit 0; a reader that
//! never reads cannot hold the process past `--drain-timeout`.

mod util;

use std::io::Read;

use util::{published_id, Server, SseClient, PATIENCE};

#[test]
fn sigterm_with_a_thousand_streams_delivers_queued_events_then_exits_zero() {
    let mut server = Server::start(&[]);
    let mut clients: Vec<SseClient> = (0..1000).map(|_| server.stream("/stream")).collect();
    server.wait_metrics("1000 streams", |m| m["sse_edge_clients"] == 1000.0);
    let ids: Vec<u64> = (0..5)
        .map(|i| published_id(&server.publish("", format!("last words {i}").as_bytes())))
        .collect();
    server.signal(libc::SIGTERM);
    for (n, c) in clients.iter_mut().enumerate() {
        let got: Vec<String> = c.read_to_end().into_iter().filter_map(|e| e.id).collect();
        let want: Vec<String> = ids.iter().map(u64::to_string).collect();
        assert_eq!(got, want, "client {n} saw its queued events, then the end");
    }
    assert_eq!(server.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let log = server.log();
    assert!(log.contains("draining"), "{log}");
    assert!(
        !log.contains("drain timeout"),
        "nothing was left unsent: {log}"
    );
}

#[test]
fn a_reader_that_never_reads_cannot_hold_the_drain_past_its_timeout() {
    let mut server = Server::start(&["--drain-timeout", "1"]);
    let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
    server.wait_metrics("stream open", |m| m["sse_edge_clients"] == 1.0);
    // Fill its socket buffers and queue so the drain has output it cannot flush.
    let mut dropped = 0.0;
    while dropped == 0.0 {
        published_id(&server.publish("", &vec![b'z'; 60 * 1024]));
        dropped = server.metrics()["sse_edge_frames_dropped_total"];
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    assert!(server.log().contains("drain timeout"), "{}", server.log());
    let mut sink = Vec::new();
    let _ = stalled.read_to_end(&mut sink);
}

#[test]
fn sigterm_drains_even_when_nobody_reads_the_log_any_more() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // A supervisor that stopped reading the server's stderr: every later log line fails to
    // be written. The node must still stop on SIGTERM, not lose its signal thread.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["--listen", "127.0.0.1:0", "--tick", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sse-edge");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on "));
    assert!(listening.is_some(), "the server started");
    drop(lines); // closes the pipe's read end
                 // SAFETY: kill with a pid we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exited 0 on SIGTERM"
    );
}

#[test]
fn a_request_on_a_connection_accepted_before_the_drain_is_still_answered() {
    use std::io::Write;
    let mut server = Server::start(&[]);
    let mut early = std::net::TcpStream::connect(server.addr).unwrap();
    early.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut stream = server.stream("/stream"); // accepted too, so the drain is under way below
    server.wait_metrics("both accepted", |m| m["sse_edge_connections"] >= 2.0);
    server.signal(libc::SIGTERM);
    // The stream ends: the drain has begun, with `early` accepted and silent.
    assert!(stream.try_next_event().is_none());
    early
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.contains("Connection: close"), "{answer:?}");
    assert_eq!(server.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
}
