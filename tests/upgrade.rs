//! `SIGUSR2`: the binary at the path the node was started from takes over its listening
//! sockets and its live streams, so a deploy costs no connection and no stream a reconnect:
//! every event reaches every stream exactly once, in order, with one sequence of ids, and the
//! old process exits 0. A new binary that fails (at start, or in the middle of taking the
//! streams) leaves the old one serving as if nothing happened.

mod util;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use util::{published_id, send_raw, HttpConn, Server, SseClient, Successor, PATIENCE};

/// A copy of the server binary in a directory of its own, so the test can replace it.
fn binary_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-edge-upgrade-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("sse-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_sse-edge"), &exe).unwrap();
    exe
}

/// Deploys `script` at `exe` instead of the server (a running file cannot be written over,
/// so the old one is removed first, as a deploy would).
fn deploy_script(exe: &std::path::Path, script: &str) {
    std::fs::remove_file(exe).unwrap();
    std::fs::write(exe, script).unwrap();
    std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// One `GET /healthz` on a new connection: answered 200?
fn probe(addr: SocketAddr) -> bool {
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

/// New connections every 2 ms until stopped; returns (answered, refused or unanswered).
fn probes(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<(u32, u32)> {
    std::thread::spawn(move || {
        let (mut answered, mut failed) = (0u32, 0u32);
        while !stop.load(Ordering::Relaxed) {
            if probe(addr) {
                answered += 1;
            } else {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (answered, failed)
    })
}

/// Publishes `count` events numbered from 1 at about `per_second` on one kept-alive
/// connection; returns the ids the node answered, in order.
fn publisher(addr: SocketAddr, count: u32, per_second: u64) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut conn = HttpConn::open(addr);
        (1..=count)
            .map(|n| {
                let id = published_id(&conn.publish("", n.to_string().as_bytes()));
                std::thread::sleep(Duration::from_millis(1000 / per_second));
                id
            })
            .collect()
    })
}

/// The old process did not exit after a failed upgrade.
fn assert_goes_on(old: &mut Server) {
    assert!(
        old.wait_exit(Duration::from_millis(300)).is_none(),
        "the old process must go on"
    );
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn a_thousand_streams_go_on_in_the_new_process_with_every_event_exactly_once() {
    util::raise_fd_limit();
    const STREAMS: usize = 1000;
    const EVENTS: u32 = 300;
    let exe = binary_copy("ok");
    let mut old = Server::start_exe(&exe, &["--shards", "2"]);
    let addr = old.addr;
    let mut streams: Vec<SseClient> = (0..STREAMS).map(|_| old.stream("/stream")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probes(addr, stop.clone());
    let publishing = publisher(addr, EVENTS, 100);
    std::thread::sleep(Duration::from_millis(800));
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let new = Successor::from_log(&log, "upgrade: handed");
    let new_pid = new.0;
    assert_ne!(new_pid, old.pid());
    assert!(
        log.contains(&format!("handed {STREAMS} streams")),
        "every stream handed over:\n{log}"
    );
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let ids = publishing.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = prober.join().unwrap();
    // One sequence of ids across both processes: 1, 2, 3, ... whoever answered.
    assert_eq!(ids, (1..=u64::from(EVENTS)).collect::<Vec<_>>());
    // The new process serves the same streams: one more event, published to it, reaches all.
    assert!(alive(new_pid));
    let mut conn = HttpConn::open(addr);
    assert_eq!(
        published_id(&conn.publish("", b"last")),
        u64::from(EVENTS) + 1
    );
    let wanted: Vec<(Option<String>, String)> = (1..=EVENTS)
        .map(|n| (Some(n.to_string()), n.to_string()))
        .chain([(Some((EVENTS + 1).to_string()), "last".to_owned())])
        .collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        let got: Vec<(Option<String>, String)> = (0..wanted.len())
            .map(|_| {
                let e = stream.event_within_patience("an event across the upgrade");
                (e.id, e.data)
            })
            .collect();
        assert_eq!(
            got, wanted,
            "stream {i}: every event once, in order, same ids"
        );
    }
    let metrics = util::parse_metrics(&conn_metrics(addr));
    assert_eq!(
        metrics.get("sse_edge_streams_adopted_total"),
        Some(&(STREAMS as f64))
    );
    assert_eq!(metrics.get("sse_edge_clients"), Some(&(STREAMS as f64)));
    drop(new);
    assert_eq!(failed, 0, "{failed} of {} probes failed", answered + failed);
    assert!(answered > 50, "only {answered} probes");
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

/// `/metrics` from whichever process serves `addr`.
fn conn_metrics(addr: SocketAddr) -> String {
    let mut conn = HttpConn::open(addr);
    conn.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.read_response().text()
}

#[test]
fn a_new_binary_that_fails_to_start_leaves_the_old_one_serving() {
    let exe = binary_copy("fail");
    let mut old = Server::start_exe(&exe, &[]);
    let mut streams: Vec<SseClient> = (0..5).map(|_| old.stream("/stream")).collect();
    deploy_script(&exe, "#!/bin/sh\nexit 3\n");
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade failed, this process keeps serving");
    assert!(log.contains("exited before serving"), "{log}");
    let mut conn = HttpConn::open(old.addr);
    assert_eq!(published_id(&conn.publish("", b"still here")), 1);
    for stream in &mut streams {
        assert_eq!(stream.next_event().data, "still here");
    }
    assert_goes_on(&mut old);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_new_process_that_dies_holding_the_streams_leaves_them_all_with_the_old_one() {
    let exe = binary_copy("die");
    // The debug build's fault: the new process exits after taking every socket, before it
    // says it has them.
    let mut old = Server::start_exe_env(
        &exe,
        &["--shards", "2"],
        &[("SSE_EDGE_TEST_HANDOVER_DIE", "1")],
    );
    let mut streams: Vec<SseClient> = (0..300).map(|_| old.stream("/stream")).collect();
    let mut conn = HttpConn::open(old.addr);
    assert_eq!(published_id(&conn.publish("", b"before")), 1);
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade failed, this process keeps serving");
    assert!(log.contains("hand-over: detached"), "{log}");
    // Taken back: the kept-alive publisher too, and the ids go on from where they were.
    assert_eq!(published_id(&conn.publish("", b"after")), 2);
    for (i, stream) in streams.iter_mut().enumerate() {
        let got: Vec<String> = (0..2).map(|_| stream.next_event().data).collect();
        assert_eq!(got, ["before", "after"], "stream {i}");
    }
    // And it accepts again.
    let mut late = old.stream("/stream");
    assert_eq!(published_id(&conn.publish("", b"late")), 3);
    assert_eq!(late.next_event().data, "late");
    assert_goes_on(&mut old);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_stream_mid_replay_and_a_half_read_stream_go_on_where_they_were() {
    util::raise_fd_limit();
    let exe = binary_copy("tail");
    let mut old = Server::start_exe(&exe, &["--history", "200", "--client-buffer", "65536"]);
    let addr = old.addr;
    let mut conn = HttpConn::open(addr);
    let big = "x".repeat(8000);
    for _ in 0..100 {
        conn.publish("", big.as_bytes());
    }
    // A stream that resumes from id 0 and reads nothing: its replay is under way and part of
    // it waits in its queue (or half-written in the socket) when the hand-over comes.
    let mut slow = SseClient::connect(addr, "/stream", &["Last-Event-ID: 0"]);
    slow.sock
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    std::thread::sleep(Duration::from_millis(300));
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let _new = Successor::from_log(&log, "upgrade: handed");
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    assert!(log.contains("handed 1 streams"), "{log}");
    // It was handed over in the middle of its replay, with bytes still queued.
    assert!(log.contains("replaying=1"), "{log}");
    assert!(!log.contains("tail_bytes=0"), "{log}");
    conn = HttpConn::open(addr);
    assert_eq!(published_id(&conn.publish("", b"new")), 101);
    let ids: Vec<String> = (0..101)
        .map(|_| {
            slow.event_within_patience("replayed")
                .id
                .unwrap_or_default()
        })
        .collect();
    let wanted: Vec<String> = (1..=101).map(|n| n.to_string()).collect();
    assert_eq!(ids, wanted, "no event torn, lost or repeated");
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_try_that_fails_does_not_pause_the_node_while_the_new_process_decides() {
    let exe = binary_copy("stall");
    let release = exe.with_file_name("release");
    // The debug build's fault: once the old process accepted its version, the new one waits
    // until `release` exists, then exits. So the try is under way, and cannot end (the
    // failure cannot be logged) before this test says so.
    let mut old = Server::start_exe_env(
        &exe,
        &[],
        &[("SSE_EDGE_TEST_HANDOVER_STALL", release.to_str().unwrap())],
    );
    let mut stream = old.stream("/stream");
    let mut kept = HttpConn::open(old.addr);
    assert_eq!(published_id(&kept.publish("", b"before")), 1);
    old.signal(libc::SIGUSR2);
    old.wait_for_log("hand-over: the running process accepted");
    // A publish on the kept-alive connection, and one on a connection accepted now: both
    // answered while the try is on.
    kept.send(b"POST /broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nduring");
    let during = kept.try_read_response();
    let fresh = send_raw(
        old.addr,
        b"POST /broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfresh",
    );
    let log = old.log();
    assert!(
        !log.contains("upgrade failed"),
        "the try ended before the publishes were answered:\n{log}"
    );
    assert_eq!(during.map(|r| (r.status, published_id(&r))), Some((200, 2)));
    assert_eq!(fresh.map(|r| (r.status, published_id(&r))), Some((200, 3)));
    std::fs::write(&release, b"").unwrap();
    let log = old.wait_for_log("upgrade failed, this process keeps serving");
    assert!(log.contains("the other process stopped answering"), "{log}");
    let got: Vec<String> = (0..3)
        .map(|_| {
            stream
                .event_within_patience("a publish around the try")
                .data
        })
        .collect();
    assert_eq!(got, ["before", "during", "fresh"]);
    assert_eq!(published_id(&kept.publish("", b"after")), 4);
    assert_eq!(stream.event_within_patience("after the try").data, "after");
    assert_goes_on(&mut old);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_new_binary_of_another_hand_over_version_is_refused_and_the_old_one_keeps_everything() {
    let exe = binary_copy("version");
    // The debug build's pretence: the new process speaks only hand-over version 99.
    let old = Server::start_exe_env(&exe, &[], &[("SSE_EDGE_TEST_HANDOVER_VERSION", "99")]);
    let mut stream = old.stream("/stream");
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade failed, this process keeps serving");
    assert!(
        log.contains("this binary speaks hand-over version 3, the new one 99..=99"),
        "{log}"
    );
    // The new process said why too, in one line, and exited.
    let log = old.wait_for_log("sse-edge: upgrade refused by the running process");
    assert!(!log.contains("handed"), "{log}");
    let mut conn = HttpConn::open(old.addr);
    assert_eq!(published_id(&conn.publish("", b"still here")), 1);
    assert_eq!(stream.next_event().data, "still here");
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_new_binary_without_the_hand_over_gets_the_listeners_and_the_streams_reconnect_once() {
    let exe = binary_copy("older");
    let mut old = Server::start_exe(&exe, &[]);
    let mut stream = old.stream("/stream");
    // What an older binary does (a rollback): serve on the inherited listeners and say
    // `ready` on the pipe, ignoring the hand-over socket. This stand-in only says it.
    deploy_script(
        &exe,
        "#!/bin/sh\necho ready > /proc/self/fd/$SSE_EDGE_UPGRADE_READY\nexec sleep 30\n",
    );
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("the new process serves without taking connections");
    let _new = Successor::from_log(&log, "the new process serves without taking connections");
    // The old process drains as on SIGTERM: the stream ends, and the browser comes back
    // after the jittered retry: it was given.
    let rest = stream.read_to_end_within_patience("the drain");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(stream.retry.is_some());
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[path = "util/redis.rs"]
mod redis_util;

#[test]
fn in_a_cluster_the_upgraded_node_and_its_peer_deliver_every_event_once_in_order() {
    util::raise_fd_limit();
    const EVENTS: u32 = 200;
    let redis = redis_util::RedisServer::start();
    let url = redis.url();
    let exe = binary_copy("cluster");
    let mut a = Server::start_exe(&exe, &["--redis", &url, "--shards", "2"]);
    let b = Server::start(&["--redis", &url]);
    let (addr_a, addr_b) = (a.addr, b.addr);
    let mut streams: Vec<SseClient> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                a.stream("/stream")
            } else {
                b.stream("/stream")
            }
        })
        .collect();
    // One publisher alternating between the nodes: ids come from Redis, in publish order.
    let publishing = std::thread::spawn(move || {
        let mut conns = [HttpConn::open(addr_a), HttpConn::open(addr_b)];
        (0..EVENTS)
            .map(|n| {
                let r = conns[n as usize % 2].publish("", n.to_string().as_bytes());
                assert_eq!(r.status, 200, "publish {n}: {}", r.text());
                std::thread::sleep(Duration::from_millis(10));
                let text = r.text();
                let at = text.find("\"id\":\"").expect("an id") + 6;
                (
                    text[at..].split('"').next().unwrap().to_owned(),
                    n.to_string(),
                )
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(700));
    a.signal(libc::SIGUSR2);
    let log = a.wait_for_log("upgrade: handed");
    let _new = Successor::from_log(&log, "upgrade: handed");
    assert!(log.contains("handed 100 streams"), "{log}");
    assert_eq!(a.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let published = publishing.join().unwrap();
    for (i, stream) in streams.iter_mut().enumerate() {
        let got: Vec<(String, String)> = (0..published.len())
            .map(|_| {
                let e = stream.event_within_patience("a cluster event across the upgrade");
                (e.id.unwrap_or_default(), e.data)
            })
            .collect();
        assert_eq!(
            got,
            published,
            "stream {i} (node {})",
            if i % 2 == 0 { "a" } else { "b" }
        );
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn sse_edge_upgrade_pid_waits_for_the_hand_over_and_names_the_new_process() {
    let exe = binary_copy("command");
    let mut old = Server::start_exe(&exe, &[]);
    let mut stream = old.stream("/stream");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["upgrade", "--pid", &old.pid().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_pid: u32 = stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"));
    let _new = Successor(new_pid);
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let log = old.log();
    assert_eq!(Successor::pid_in(&log, "upgrade: handed"), new_pid, "{log}");
    let mut conn = HttpConn::open(old.addr);
    assert_eq!(published_id(&conn.publish("", b"on")), 1);
    assert_eq!(stream.next_event().data, "on");
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn sse_edge_upgrade_pid_says_so_when_the_node_keeps_running() {
    let exe = binary_copy("command-fail");
    let old = Server::start_exe(&exe, &[]);
    deploy_script(&exe, "#!/bin/sh\nexit 3\n");
    let pid = old.pid().to_string();
    let upgrade = |timeout: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
            .args(["upgrade", "--pid", &pid, "--timeout", timeout])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The node's answer ends the wait, long before the command's own timeout.
        let deadline = std::time::Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("sse-edge upgrade still waiting: it did not hear the node's verdict");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let out = upgrade("3600");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("says the upgrade failed and keeps serving"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    old.wait_for_log("upgrade failed, this process keeps serving");
    // A node that cannot answer (stopped) is waited for up to --timeout, and said so.
    old.signal(libc::SIGSTOP);
    let out = upgrade("1");
    old.signal(libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is still running after 1s"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let mut conn = HttpConn::open(old.addr);
    assert_eq!(published_id(&conn.publish("", b"still serving")), 1);
    // No such process: one line, exit 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["upgrade", "--pid", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn the_heartbeat_counts_on_across_an_upgrade() {
    let exe = binary_copy("heartbeat");
    let old = Server::start_exe(&exe, &["--tick", "1"]);
    let mut stream = old.stream("/stream");
    let before = util::heartbeat_number(&stream.event_within_patience("a heartbeat"));
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let _new = Successor::from_log(&log, "upgrade: handed");
    // The same stream, now served by the new process: the count goes on, never from #1.
    let mut last = before;
    for _ in 0..3 {
        let n = util::heartbeat_number(&stream.event_within_patience("a heartbeat"));
        assert_eq!(n, last + 1, "after #{last} came #{n}");
        last = n;
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[path = "util/h2.rs"]
mod h2_client;

/// The events (id, data) in an SSE body, in order.
fn events_in(body: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in body.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let (Some(v), Some(n)) = (line.strip_prefix("data: "), id) {
            out.push((n, v.to_owned()));
            id = None;
        }
    }
    out
}

/// Publishes `datas` to `topic` of whoever serves `addr`; their ids.
fn publish_all(addr: SocketAddr, topic: &str, datas: &[String]) -> Vec<u64> {
    let mut conn = HttpConn::open(addr);
    let query = format!("?topic={topic}");
    datas
        .iter()
        .map(|d| published_id(&conn.publish(&query, d.as_bytes())))
        .collect()
}

#[test]
fn h2c_streams_go_on_on_the_same_connection_in_the_new_process_with_every_event_once() {
    let exe = binary_copy("h2c");
    let mut old = Server::start_exe(&exe, &[]);
    let addr = old.addr;
    let mut h2 = h2_client::H2Client::connect(addr, &[]);
    // Three event streams on one connection (one also on a second topic), and an HTTP/1.1
    // stream beside it.
    h2.request(1, "GET", "/stream?topic=u", &[], true);
    h2.request(3, "GET", "/stream?topic=u&topic=v", &[], true);
    h2.request(5, "GET", "/stream?topic=u", &[], true);
    for id in [1, 3, 5] {
        h2.body_until(id, "retry:");
    }
    let mut http1 = old.stream("/stream?topic=u");
    let before: Vec<String> = (1..=5).map(|n| format!("before-{n}")).collect();
    let mut ids = publish_all(addr, "u", &before);
    h2.wait("every event before the upgrade", |c| {
        [1, 3, 5]
            .iter()
            .all(|id| c.streams[id].text().contains("before-5"))
    });
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let new = Successor::from_log(&log, "upgrade: handed");
    assert!(
        log.contains("handed 4 streams"),
        "three h2c, one HTTP/1.1:\n{log}"
    );
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let after: Vec<String> = (1..=5).map(|n| format!("after-{n}")).collect();
    ids.extend(publish_all(addr, "u", &after));
    assert_eq!(ids, (1..=10).collect::<Vec<u64>>(), "one sequence of ids");
    h2.wait("every event after the upgrade", |c| {
        [1, 3, 5]
            .iter()
            .all(|id| c.streams[id].text().contains("after-5"))
    });
    let wanted: Vec<(u64, String)> = ids
        .iter()
        .copied()
        .zip(before.iter().chain(&after).cloned())
        .collect();
    for id in [1, 3, 5] {
        let r = &h2.streams[&id];
        assert_eq!(events_in(&r.text()), wanted, "stream {id}: each event once");
        assert!(!r.ended && r.reset.is_none(), "stream {id} goes on");
        // One head: the stream was never opened again.
        assert_eq!(r.head.iter().filter(|(n, _)| n == ":status").count(), 1);
    }
    assert_eq!(
        h2.goaway, None,
        "no GOAWAY: the connection was handed, not drained"
    );
    for n in 1..=10 {
        assert_eq!(http1.next_event().id, Some(n.to_string()));
    }
    // The same connection, now the new process's: it answers on it.
    assert_eq!(h2.get(7, "/healthz").status(), 200);
    let metrics = util::parse_metrics(&conn_metrics(addr));
    assert_eq!(metrics.get("sse_edge_streams_adopted_total"), Some(&4.0));
    assert_eq!(
        metrics.get("sse_edge_h2_connections_adopted_total"),
        Some(&1.0)
    );
    assert_eq!(h2.goaway, None);
    drop(new);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn a_stream_opened_on_a_handed_h2c_connection_is_served_by_the_new_process() {
    let exe = binary_copy("h2c-new-stream");
    let mut old = Server::start_exe(&exe, &[]);
    let addr = old.addr;
    let mut h2 = h2_client::H2Client::connect(addr, &[]);
    h2.request(1, "GET", "/stream?topic=u", &[], true);
    h2.body_until(1, "retry:");
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let new = Successor::from_log(&log, "upgrade: handed");
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    // A new stream on the handed connection: its HEADERS reach the new process, which
    // knows the ids used so far and the windows, and serves it beside stream 1.
    h2.request(3, "GET", "/stream?topic=u", &[], true);
    h2.body_until(3, "retry:");
    let ids = publish_all(addr, "u", &["one".into(), "two".into()]);
    h2.wait("both events on both streams", |c| {
        [1, 3].iter().all(|id| c.streams[id].text().contains("two"))
    });
    let wanted: Vec<(u64, String)> = ids.into_iter().zip(["one".into(), "two".into()]).collect();
    for id in [1, 3] {
        assert_eq!(events_in(&h2.streams[&id].text()), wanted, "stream {id}");
    }
    assert_eq!(h2.streams[&3].status(), 200);
    assert_eq!(h2.goaway, None);
    let metrics = util::parse_metrics(&conn_metrics(addr));
    assert_eq!(metrics.get("sse_edge_streams_adopted_total"), Some(&1.0));
    assert_eq!(
        metrics.get("sse_edge_h2_connections_adopted_total"),
        Some(&1.0)
    );
    // Stream 1's state came along: it had ended its request (END_STREAM), so a second
    // head on it is a stream error STREAM_CLOSED (RFC 9113 §5.1), and only it ends.
    h2.request(1, "GET", "/healthz", &[], true);
    h2.wait("RST_STREAM on stream 1", |c| c.streams[&1].reset.is_some());
    assert_eq!(h2.streams[&1].reset, Some(5));
    assert_eq!(h2.get(5, "/healthz").status(), 200);
    assert_eq!(h2.goaway, None);
    drop(new);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn an_h2c_connection_with_a_frame_half_read_drains_while_one_at_rest_is_handed_over() {
    let exe = binary_copy("h2c-mid-frame");
    let mut old = Server::start_exe(&exe, &[]);
    let addr = old.addr;
    let mut at_rest = h2_client::H2Client::connect(addr, &[]);
    at_rest.request(1, "GET", "/stream?topic=u", &[], true);
    at_rest.body_until(1, "retry:");
    let mut mid = h2_client::H2Client::connect(addr, &[]);
    mid.request(1, "GET", "/stream?topic=u", &[], true);
    mid.body_until(1, "retry:");
    // A whole PING, then five bytes of another, in one write: once the first is answered
    // the node has read the half frame too (it reads until the socket is empty).
    let mut ping = Vec::new();
    sse_edge::wire::h2::frame::write_ping(false, *b"whole...", &mut ping);
    let mut half = Vec::new();
    sse_edge::wire::h2::frame::write_ping(false, *b"half....", &mut half);
    ping.extend_from_slice(&half[..5]);
    mid.send(&ping);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        assert!(std::time::Instant::now() < deadline, "no PING ACK");
        if let Some(f) = mid.read_frame(Duration::from_millis(100)) {
            if f.header.kind == 6 && f.header.flags & 1 != 0 {
                break;
            }
        }
    }
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let _new = Successor::from_log(&log, "upgrade: handed");
    assert!(log.contains("handed 1 streams"), "{log}");
    // The one mid-frame drains as before: GOAWAY(NO_ERROR), its stream told to come back.
    mid.wait("GOAWAY", |c| c.goaway.is_some());
    assert_eq!(mid.goaway, Some(0));
    assert!(mid.closed_by_server());
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let ids = publish_all(addr, "u", &["after".into()]);
    at_rest.body_until(1, "after");
    assert_eq!(
        events_in(&at_rest.streams[&1].text()),
        vec![(ids[0], "after".to_owned())]
    );
    assert_eq!(at_rest.goaway, None);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn an_h2c_stream_starved_by_its_window_keeps_its_loss_across_the_upgrade() {
    let exe = binary_copy("h2c-starved");
    let mut old = Server::start_exe(&exe, &["--slow-client-timeout", "0"]);
    let addr = old.addr;
    let mut c = h2_client::H2Client::connect(addr, &[]);
    // Stream 1 never gives its window back; stream 3 does.
    c.hold.push(1);
    c.request(1, "GET", "/stream?topic=w", &[], true);
    c.request(3, "GET", "/stream?topic=w", &[], true);
    c.body_until(1, "retry:");
    c.body_until(3, "retry:");
    let event = "z".repeat(10_000);
    let mut conn = HttpConn::open(addr);
    for n in 1..=10 {
        assert_eq!(published_id(&conn.publish("?topic=w", event.as_bytes())), n);
        c.body_until(3, &format!("id: {n}\n"));
    }
    let held = events_in(&c.streams[&1].text()).len();
    assert!(held < 10, "stream 1 got past its window");
    drop(conn);
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let _new = Successor::from_log(&log, "upgrade: handed");
    assert!(log.contains("handed 2 streams"), "{log}");
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    // Its window opens in the new process: what it lost there is announced, then it goes on.
    c.hold.clear();
    c.window_update(1, 1 << 20);
    let ids = publish_all(addr, "w", &["after".into()]);
    assert_eq!(ids, vec![11]);
    let body = c.body_until(1, "data: after\n");
    assert!(body.contains("event: gap\n"), "{body}");
    let got: Vec<u64> = events_in(&body).iter().map(|(id, _)| *id).collect();
    let mut wanted: Vec<u64> = (1..=held as u64).collect();
    wanted.push(11);
    assert_eq!(
        got, wanted,
        "what fit its window, then the event after: none twice"
    );
    let three: Vec<u64> = events_in(&c.body_until(3, "data: after\n"))
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(three, (1..=11).collect::<Vec<u64>>());
    assert_eq!(c.goaway, None);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

#[test]
fn an_h2c_connection_taken_back_after_a_failed_hand_over_goes_on_in_the_old_process() {
    let exe = binary_copy("h2c-die");
    // The new process exits after taking every socket, before it says it has them.
    let mut old = Server::start_exe_env(&exe, &[], &[("SSE_EDGE_TEST_HANDOVER_DIE", "1")]);
    let addr = old.addr;
    let mut h2 = h2_client::H2Client::connect(addr, &[]);
    h2.request(1, "GET", "/stream?topic=u", &[], true);
    h2.request(3, "GET", "/stream?topic=u", &[], true);
    h2.body_until(1, "retry:");
    h2.body_until(3, "retry:");
    let mut ids = publish_all(addr, "u", &["before".into()]);
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade failed, this process keeps serving");
    // The h2c connection was detached (taken out of epoll, described), then taken back.
    assert!(
        log.contains("hand-over: detached shard=0 connections=1"),
        "{log}"
    );
    ids.extend(publish_all(addr, "u", &["after".into()]));
    assert_eq!(ids, vec![1, 2]);
    h2.wait("both events on both streams", |c| {
        [1, 3]
            .iter()
            .all(|id| c.streams[id].text().contains("after"))
    });
    let wanted = vec![(1, "before".to_owned()), (2, "after".to_owned())];
    for id in [1, 3] {
        assert_eq!(events_in(&h2.streams[&id].text()), wanted, "stream {id}");
    }
    // Its frame layer is the one it had: a new stream on it is served.
    assert_eq!(h2.get(5, "/healthz").status(), 200);
    assert_eq!(h2.goaway, None);
    assert_goes_on(&mut old);
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}

/// A child's stdout, gathered as it comes.
fn gather(mut out: std::process::ChildStdout) -> Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let text = Arc::new(std::sync::Mutex::new(String::new()));
    let into = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Waits until `text` holds `needle` `times` times.
fn wait_count(text: &std::sync::Mutex<String>, needle: &str, times: usize) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let got = text.lock().unwrap().matches(needle).count();
        if got >= times {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} {got} times of {times}: {}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nghttp_s_two_h2c_streams_on_one_connection_go_on_across_the_upgrade() {
    // nghttp (Debian's nghttp2-client) opens both streams on one prior-knowledge h2c
    // connection; a GOAWAY and a close would end them, and it would exit.
    let exe = binary_copy("h2c-nghttp");
    let mut old = Server::start_exe(&exe, &[]);
    let addr = old.addr;
    let url = format!("http://{addr}/stream?topic=u");
    let mut nghttp = std::process::Command::new("stdbuf")
        .args(["-o0", "nghttp", &url, &format!("{url}&topic=v")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nghttp (nghttp2-client)");
    let text = gather(nghttp.stdout.take().unwrap());
    wait_count(&text, "retry:", 2);
    let ids = publish_all(addr, "u", &["before".into()]);
    wait_count(&text, "data: before\n", 2);
    old.signal(libc::SIGUSR2);
    let log = old.wait_for_log("upgrade: handed");
    let _new = Successor::from_log(&log, "upgrade: handed");
    assert!(log.contains("handed 2 streams"), "{log}");
    assert_eq!(old.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0));
    let after = publish_all(addr, "u", &["after".into()]);
    assert_eq!((ids[0], after[0]), (1, 2));
    wait_count(&text, "data: after\n", 2);
    assert_eq!(nghttp.try_wait().unwrap(), None, "nghttp's streams go on");
    let got = text.lock().unwrap().clone();
    assert_eq!(got.matches("id: 1\n").count(), 2, "{got}");
    assert_eq!(got.matches("id: 2\n").count(), 2, "{got}");
    assert_eq!(
        got.matches("retry:").count(),
        2,
        "no stream opened again: {got}"
    );
    let metrics = util::parse_metrics(&conn_metrics(addr));
    assert_eq!(metrics.get("sse_edge_streams_adopted_total"), Some(&2.0));
    assert_eq!(
        metrics.get("sse_edge_h2_connections_adopted_total"),
        Some(&1.0)
    );
    let _ = nghttp.kill();
    let _ = nghttp.wait();
    std::fs::remove_dir_all(exe.parent().unwrap()).ok();
}
