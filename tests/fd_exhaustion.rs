//! Out of file descriptors, the server still answers: it frees a reserve descriptor to
//! accept each waiting stream and sheds it (so the browser comes back later), never spins,
//! and serves new streams again once descriptors free up.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use util::{Server, PATIENCE};

/// CPU time (user + system) the process has used, from /proc/PID/stat, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[derive(Debug, PartialEq)]
enum Answer {
    Stream,
    Shed {
        retry: u64,
    },
    /// Closed before any answer: out of descriptors, the server accepts with its reserve and
    /// reads once; when the request has not arrived by then (a race the client can lose on a
    /// busy machine), it cannot tell a stream from a publish and closes in silence, which an
    /// `EventSource` retries like any network error.
    Silence,
}

/// Opens a stream and reads until it is clearly a live stream or a shed one.
fn open(server: &Server) -> (TcpStream, Answer) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
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
        if n == 0 && got.is_empty() {
            return (s, Answer::Silence);
        }
        if n == 0 {
            // Closed after an answer began: it must have been a complete shed answer.
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("Content-Type: text/event-stream"), "{text}");
            assert!(text.contains("\r\n\r\n: shed\nretry: "), "{text}");
            let retry = text
                .split("retry: ")
                .nth(1)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            return (s, Answer::Shed { retry });
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn out_of_descriptors_streams_are_shed_not_left_hanging() {
    // 48 descriptors, and no --max-clients shedding before the descriptors run out.
    let server = Server::start_limited(&["--max-clients", "1000", "--retry-ms", "1000"], Some(48));
    let answers: Vec<(TcpStream, Answer)> = (0..60).map(|_| open(&server)).collect();
    let live = answers.iter().filter(|(_, a)| *a == Answer::Stream).count();
    let shed: Vec<u64> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Answer::Shed { retry } => Some(*retry),
            Answer::Stream | Answer::Silence => None,
        })
        .collect();
    let silent = answers
        .iter()
        .filter(|(_, a)| *a == Answer::Silence)
        .count();
    assert!(live > 10, "live streams up to the limit: {live}");
    assert!(!shed.is_empty(), "the rest were shed");
    assert!(
        silent < shed.len(),
        "most were told to come back: {silent} silent"
    );
    assert_eq!(
        live + shed.len() + silent,
        60,
        "every connection was answered or closed"
    );
    // A shed stream is told to come back much later than --retry-ms (jittered ±50 %).
    assert!(shed.iter().all(|r| (5_000..15_000).contains(r)), "{shed:?}");

    // Nothing is waiting and the loop sleeps: no spinning while full.
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(server.pid()) - before;
    assert!(
        used < 25,
        "server used {used} ticks of CPU in 1 s while full"
    );

    // Free the descriptors: new streams are live again.
    drop(answers);
    server.wait_metrics("streams gone", |m| m["sse_edge_clients"] == 0.0);
    let (_s, again) = open(&server);
    assert_eq!(again, Answer::Stream);
    let m = server.metrics();
    assert!(m["sse_edge_accept_errors_total"] >= shed.len() as f64);
    assert_eq!(m["sse_edge_shed_total"], shed.len() as f64);
}
