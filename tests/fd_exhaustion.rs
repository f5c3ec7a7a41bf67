//! Out of file descriptors, the server backs off instead of spinning, and resumes accepting
//! when descriptors free up.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{Server, PATIENCE};

/// CPU time (user + system) the process has used, from /proc/PID/stat, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Whether a stream's response head has arrived (without blocking past `wait`).
fn got_head(sock: &mut TcpStream, wait: Duration) -> bool {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    matches!(sock.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
}

/// Polls the streams not yet marked served until some get their head and then a whole pass
/// brings no more; returns how many were newly served.
fn collect_heads(socks: &mut [TcpStream], served: &mut [bool]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    let mut total = 0;
    while Instant::now() < deadline {
        let mut new = 0;
        for (sock, done) in socks.iter_mut().zip(served.iter_mut()) {
            if !*done && got_head(sock, Duration::from_millis(5)) {
                *done = true;
                new += 1;
            }
        }
        total += new;
        if total > 0 && new == 0 {
            break;
        }
    }
    total
}

#[test]
fn emfile_on_accept_backs_off_and_recovers() {
    let server = Server::start_limited(&[], Some(48));
    let mut socks: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // Some get their stream; the rest wait in the backlog while the server is out of fds.
    let mut served = vec![false; socks.len()];
    let first = collect_heads(&mut socks, &mut served);
    assert!(first > 0 && first < 80, "served {first}");

    // Out of descriptors with connections waiting: the loop must sleep, not spin.
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(server.pid()) - before;
    // A spinning loop would burn ~200 ticks (100 Hz) in 2 s; back-off wakes 20 times.
    assert!(
        used < 50,
        "server used {used} ticks of CPU in 2 s while out of fds"
    );
    assert!(
        server.log().contains("accept failed"),
        "the condition was logged"
    );

    // Free descriptors: waiting connections are accepted once the back-off ends.
    let mut waiting: Vec<TcpStream> = socks
        .into_iter()
        .zip(served)
        .filter_map(|(sock, served)| (!served).then_some(sock))
        .collect();
    let mut served = vec![false; waiting.len()];
    let later = collect_heads(&mut waiting, &mut served);
    assert!(
        later > 0,
        "none of the waiting streams was served after fds were freed"
    );
    drop(waiting);
    let m = server.wait_metrics("streams gone", |m| m["sse_edge_clients"] == 0.0);
    assert!(m["sse_edge_accept_errors_total"] >= 1.0);
}
