//! Cluster mode against a real `redis-server`: every node delivers every event once, in
//! order, with the same ids; a stream resumes on another node with nothing lost or repeated;
//! a late node replays from Redis; Redis going away costs `503`s, not streams; Redis losing
//! its data is noticed (`reset`, unknown), never silence.

#[path = "util/redis.rs"]
mod redis_util;
mod util;

use std::time::{Duration, Instant};

use redis_util::RedisServer;
use util::{Response, Server, SseClient, PATIENCE};

/// A node of the cluster on `redis`, with `args`.
fn node(redis: &RedisServer, args: &[&str]) -> Server {
    let url = redis.url();
    let mut all = vec!["--redis", url.as_str()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// The id of a `200` publish answer (cluster ids are strings: `EPOCH-MS-SEQ`).
fn id_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "publish failed: {}", r.text());
    let text = r.text();
    let at = text.find("\"id\":\"").expect("an id") + 6;
    text[at..].split('"').next().unwrap_or_default().to_owned()
}

/// The next `n` events' ids and data.
fn take(stream: &mut SseClient, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let e = stream.event_within_patience("a cluster event");
            (e.id.unwrap_or_default(), e.data)
        })
        .collect()
}

/// Polls until `cond` holds, within PATIENCE.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health(server: &Server) -> u16 {
    server
        .request(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .status
}

#[test]
fn an_event_published_on_one_node_reaches_every_node_once_in_order_with_one_id() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &["--shards", "2"]));
    let mut on_a = a.stream("/stream");
    let mut on_b = b.stream("/stream");
    let mut ids = Vec::new();
    for i in 0..20 {
        let publisher = if i % 2 == 0 { &a } else { &b };
        ids.push(id_of(
            &publisher.publish("", format!("event {i}").as_bytes()),
        ));
    }
    let want: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("event {i}")))
        .collect();
    assert_eq!(take(&mut on_a, 20), want, "node A");
    assert_eq!(take(&mut on_b, 20), want, "node B");
    // Each node encoded each event once, whichever node it was published on.
    assert_eq!(a.metrics()["sse_edge_events_encoded_total"], 20.0);
    assert_eq!(b.metrics()["sse_edge_events_encoded_total"], 20.0);
    // One id format everywhere: the epoch first, then Redis's entry id.
    let epoch = ids[0].split('-').next().unwrap().to_owned();
    assert!(
        ids.iter().all(|id| id.starts_with(&format!("{epoch}-"))),
        "{ids:?}"
    );
}

#[test]
fn a_stream_resumes_on_another_node_with_no_gap_and_no_duplicate() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut on_a = a.stream("/stream");
    let ids: Vec<String> = (0..10)
        .map(|i| id_of(&a.publish("", format!("e{i}").as_bytes())))
        .collect();
    let seen = take(&mut on_a, 4);
    drop(on_a); // the browser loses its connection after the 4th event
    let last = &seen[3].0;
    let mut on_b = SseClient::connect(b.addr, "/stream", &[&format!("Last-Event-ID: {last}")]);
    let more: Vec<String> = (10..12)
        .map(|i| id_of(&b.publish("", format!("e{i}").as_bytes())))
        .collect();
    let got: Vec<String> = take(&mut on_b, 8).into_iter().map(|(id, _)| id).collect();
    let want: Vec<String> = ids[4..].iter().chain(&more).cloned().collect();
    assert_eq!(got, want);
    assert!(on_b.comments.iter().all(|c| !c.contains("reset")));
}

#[test]
fn a_node_started_after_the_events_replays_them_from_redis() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let ids: Vec<String> = (0..5)
        .map(|i| id_of(&a.publish("?topic=news", format!("n{i}").as_bytes())))
        .collect();
    let late = node(&redis, &[]);
    let mut stream = SseClient::connect(
        late.addr,
        "/stream?topic=news",
        &[&format!("Last-Event-ID: {}", ids[1])],
    );
    let got: Vec<String> = take(&mut stream, 3).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[2..].to_vec());
}

#[test]
fn redis_going_away_costs_publishes_not_streams_and_nothing_acknowledged_is_lost() {
    let mut redis = RedisServer::start_persistent();
    let a = node(&redis, &["--keepalive", "1"]);
    let mut stream = a.stream("/stream");
    let before: Vec<String> = (0..3)
        .map(|i| id_of(&a.publish("", format!("b{i}").as_bytes())))
        .collect();
    assert_eq!(take(&mut stream, 3).len(), 3);
    redis.stop();
    // Publishing fails fast and says why; /healthz tells the load balancer.
    eventually("a 503 publish", || a.publish("", b"x").status == 503);
    let refused = a.publish("", b"x");
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("Redis"), "{}", refused.text());
    assert_eq!(health(&a), 503);
    // The stream stays open: keep-alive comments go on.
    stream.wait_for_comment("keepalive");
    redis.restart();
    eventually("the broker back", || health(&a) == 200);
    let after = id_of(&a.publish("", b"after"));
    let e = stream.event_within_patience("the event after the restart");
    assert_eq!(e.id.as_deref(), Some(after.as_str()));
    // With appendfsync always, what Redis acknowledged before it went away is still there:
    // the same epoch, and a resume from before it replays every event.
    assert_eq!(after.split('-').next(), before[0].split('-').next());
    let late = node(&redis, &[]);
    let mut resumed = SseClient::connect(
        late.addr,
        "/stream",
        &[&format!("Last-Event-ID: {}", before[0])],
    );
    let got: Vec<String> = take(&mut resumed, 3)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, vec![before[1].clone(), before[2].clone(), after]);
}

#[test]
fn redis_losing_its_data_makes_old_ids_unknown() {
    let mut redis = RedisServer::start();
    let a = node(&redis, &[]);
    let old = id_of(&a.publish("", b"old"));
    redis.flushall();
    let new = id_of(&a.publish("", b"new"));
    assert_ne!(old.split('-').next(), new.split('-').next(), "a new epoch");
    let mut stream = SseClient::connect(a.addr, "/stream", &[&format!("Last-Event-ID: {old}")]);
    let e = stream.event_within_patience("the reset");
    assert_eq!(e.event.as_deref(), Some("reset"));
    assert!(e.data.contains("\"reason\":\"unknown\""), "{}", e.data);
    assert_eq!(stream.event_within_patience("the new event").data, "new");

    // The same after a restart without persistence, noticed with no publish at all.
    let before_restart = id_of(&a.publish("", b"gone soon"));
    redis.stop();
    redis.restart();
    eventually("the broker back", || health(&a) == 200);
    let mut stream = SseClient::connect(
        a.addr,
        "/stream",
        &[&format!("Last-Event-ID: {before_restart}")],
    );
    eventually("a reset for an id Redis no longer knows", || {
        stream.event_within_patience("the reset").event.as_deref() == Some("reset")
    });
}

#[test]
fn a_node_started_while_redis_is_down_serves_streams_and_delivers_once_it_appears() {
    let mut redis = RedisServer::start();
    redis.stop();
    let a = node(&redis, &[]);
    let mut stream = a.stream("/stream");
    assert_eq!(health(&a), 503);
    assert_eq!(a.publish("", b"too early").status, 503);
    assert!(a.log().contains("cannot reach Redis"), "{}", a.log());
    redis.restart();
    eventually("the broker up", || health(&a) == 200);
    let id = id_of(&a.publish("", b"at last"));
    let e = stream.event_within_patience("the first event");
    assert_eq!((e.id, e.data.as_str()), (Some(id), "at last"));
}

#[test]
fn nodes_sharing_a_port_through_redis_are_not_warned() {
    let redis = RedisServer::start();
    let server = node(&redis, &["--reuse-port"]);
    assert!(
        !server.log().contains("--reuse-port without --redis"),
        "{}",
        server.log()
    );
}

#[test]
fn a_malformed_redis_url_is_one_line_and_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["--redis", "http://nowhere"])
        .output()
        .expect("run sse-edge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--redis"), "{stderr}");
}

#[test]
fn a_resume_from_before_what_a_node_kept_is_replayed_from_redis() {
    let redis = RedisServer::start();
    // Two events per topic in memory: a resume from the first of ten needs Redis.
    let a = node(&redis, &["--history", "2"]);
    let ids: Vec<String> = (0..10)
        .map(|i| id_of(&a.publish("?topic=t", format!("t{i}").as_bytes())))
        .collect();
    a.publish("?topic=other", b"not this stream's");
    let mut stream = SseClient::connect(
        a.addr,
        "/stream?topic=t",
        &[&format!("Last-Event-ID: {}", ids[0])],
    );
    let later = id_of(&a.publish("?topic=t", b"live"));
    let got: Vec<String> = take(&mut stream, 10)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let want: Vec<String> = ids[1..].iter().cloned().chain([later]).collect();
    assert_eq!(
        got, want,
        "from Redis, then the history, then live: no gap, no duplicate"
    );
    // A small room makes it take several steps, with the same result.
    let b = node(&redis, &["--history", "2", "--client-buffer", "1024"]);
    let mut stream = SseClient::connect(
        b.addr,
        "/stream?topic=t",
        &[&format!("Last-Event-ID: {}", ids[0])],
    );
    let got: Vec<String> = take(&mut stream, 10)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn many_streams_resuming_from_redis_at_once_all_get_every_event() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--history", "1"]);
    let ids: Vec<String> = (0..30)
        .map(|i| id_of(&a.publish("", format!("e{i}").as_bytes())))
        .collect();
    let header = format!("Last-Event-ID: {}", ids[0]);
    let mut streams: Vec<SseClient> = (0..50)
        .map(|_| SseClient::connect(a.addr, "/stream", &[&header]))
        .collect();
    for (n, stream) in streams.iter_mut().enumerate() {
        let got: Vec<String> = take(stream, 29).into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids[1..].to_vec(), "stream {n}");
    }
}

#[test]
fn a_publish_waiting_on_a_slow_redis_is_answered_past_the_header_timeout() {
    // A kept-alive publisher sends its next publish just before its connection's header
    // deadline, and Redis takes a while to append it. The publish was made: it must be
    // answered, not cut off by the deadline (the client would publish it again: a duplicate).
    let redis = RedisServer::start();
    let server = node(&redis, &["--header-timeout", "1"]);
    let mut on = server.stream("/stream");
    let mut conn = util::HttpConn::open(server.addr);
    let first = id_of(&conn.publish("", b"first"));
    std::thread::sleep(Duration::from_millis(700));
    // Redis holds write commands for 800 ms: the answer comes well after the deadline.
    assert_eq!(
        redis
            .command(&["CLIENT", "PAUSE", "800", "WRITE"])
            .as_deref(),
        Some("+OK")
    );
    let second = conn.publish("", b"second");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_ne!(id_of(&second), first);
    let got = take(&mut on, 2);
    assert_eq!(
        got.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    // Published once: the next event is the next publish, not the second one again.
    id_of(&conn.publish("", b"third"));
    assert_eq!(take(&mut on, 1)[0].1, "third");
}

#[test]
fn the_heartbeat_is_sent_once_for_the_cluster_and_counts_on_when_its_sender_dies() {
    let redis = RedisServer::start();
    let mut a = node(&redis, &["--tick", "1"]);
    let b = node(&redis, &["--tick", "1"]);
    let mut on_a = a.stream("/stream");
    let mut on_b = b.stream("/stream");
    // Whichever node holds the lease, both streams see one beat per number, with one id.
    let beats = |s: &mut SseClient, n: usize| -> Vec<(u64, String)> {
        (0..n)
            .map(|_| {
                let e = s.event_within_patience("a heartbeat");
                (util::heartbeat_number(&e), e.id.unwrap_or_default())
            })
            .collect()
    };
    let seen_a = beats(&mut on_a, 4);
    let seen_b = beats(&mut on_b, 4);
    let numbers: Vec<u64> = seen_a.iter().map(|(n, _)| *n).collect();
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..first + 4).collect::<Vec<_>>(),
        "{seen_a:?}"
    );
    // b may have connected a beat later or earlier than a: compare where they overlap.
    let common: Vec<_> = seen_b.iter().filter(|b| seen_a.contains(b)).collect();
    assert!(
        common.len() >= 3,
        "the same beats with the same ids: {seen_a:?} {seen_b:?}"
    );
    // Kill a (it may be the sender): b goes on counting, once the lease is free.
    let last = seen_b.last().map_or(0, |(n, _)| *n);
    a.signal(libc::SIGKILL);
    let _ = a.wait_exit(util::PATIENCE);
    let after = beats(&mut on_b, 5);
    let numbers: Vec<u64> = after.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (last + 1..last + 6).collect::<Vec<_>>(),
        "no number repeated or skipped"
    );
}
