//! `SIGUSR2`: the binary at the path the node was started from takes over its listening
//! sockets, so no connection is refused across a deploy; the old process drains and exits 0.
//! A new binary that fails leaves the old one serving as if nothing happened.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use util::{published_id, Server, SseClient, PATIENCE};

/// A copy of the server binary in a directory of its own, so the test can replace it.
fn binary_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-edge-upgrade-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("sse-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_sse-edge"), &exe).unwrap();
    exe
}

/// One `GET /healthz` on a new connection: answered 200?
fn probe(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut sock) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(PATIENCE));
    if sock
        .write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200 ")
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn sigusr2_hands_the_listeners_to_a_new_process_and_no_connection_is_refused() {
    let exe = binary_copy("ok");
    let mut old = Server::start_exe(&exe, &[]);
    let addr = old.addr;
    let mut before = old.stream("/stream");
    // Connections every 2 ms throughout: each must be answered by one process or the other.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut answered, mut refused) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                if probe(addr) {
                    answered += 1;
                } else {
                    refused += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (answered, refused)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("the new process serves");
    let new_pid: u32 = log
        .lines()
        .find(|l| l.contains("the new process serves"))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .expect("the new pid in the log");
    assert_ne!(new_pid, old.pid());
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (answered, refused) = prober.join().unwrap();
    // The old process's stream ended with the drain; the browser reconnects to the new one.
    assert!(before.try_next_event().is_none());
    // The new process serves streams and publishes on the same port.
    assert!(alive(new_pid));
    let mut after = SseClient::connect(addr, "/stream", &[]);
    let mut conn = util::HttpConn::open(addr);
    assert_eq!(published_id(&conn.publish("", b"from the new process")), 1);
    assert_eq!(after.next_event().data, "from the new process");
    // SAFETY: a pid this test's upgrade started.
    unsafe { libc::kill(new_pid as i32, libc::SIGTERM) };
    assert_eq!(
        refused,
        0,
        "{refused} of {} connections refused",
        answered + refused
    );
    assert!(answered > 50, "only {answered} probes");
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let exe = binary_copy("fail");
    let mut old = Server::start_exe(&exe, &[]);
    let mut stream = old.stream("/stream");
    // Deploy a broken binary at the same path (a running file cannot be written over).
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade failed, this process keeps serving");
    assert!(log.contains("exited before serving"), "{log}");
    let mut conn = util::HttpConn::open(old.addr);
    assert_eq!(published_id(&conn.publish("", b"still here")), 1);
    assert_eq!(stream.next_event().data, "still here");
    assert!(
        old.wait_exit(Duration::from_millis(300)).is_none(),
        "the old process must go on"
    );
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}
