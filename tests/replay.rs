//! Last-Event-ID replay: exactly what was missed, in order, then live, with no gap and no
//! duplicate at the seam; an explicit `reset` when that is not possible.

mod util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use util::{published_id, HttpConn, Server, SseClient};

fn id_of(e: &util::Event) -> u64 {
    e.id.as_deref().unwrap().parse().unwrap()
}

#[test]
fn reconnect_after_missing_fifty_gets_exactly_those_then_live() {
    let server = Server::start(&[]);
    let mut first = server.stream("/stream");
    let seen = published_id(&server.publish("", b"seen"));
    assert_eq!(id_of(&first.next_event()), seen);
    drop(first);
    let missed: Vec<u64> = (0..50)
        .map(|i| published_id(&server.publish("", format!("missed {i}").as_bytes())))
        .collect();
    let mut again =
        SseClient::connect(server.addr, "/stream", &[&format!("Last-Event-ID: {seen}")]);
    for (i, id) in missed.iter().enumerate() {
        let e = again.next_event();
        assert_eq!((id_of(&e), e.data), (*id, format!("missed {i}")));
    }
    let live = published_id(&server.publish("", b"live"));
    let e = again.next_event();
    assert_eq!((id_of(&e), e.data.as_str()), (live, "live"));
    assert!(again.comments.iter().all(|c| c != "reset"));
    assert!(server.metrics()["sse_edge_replayed_events_total"] >= 50.0);
}

#[test]
fn events_published_during_the_replay_are_neither_lost_nor_doubled() {
    // Two shards: the publisher and the resuming stream may sit on different reactors, so
    // the seam crosses the hub's mailboxes.
    let server = Server::start(&["--shards", "2"]);
    let last_seen = published_id(&server.publish("", b"start"));
    for i in 0..300 {
        published_id(&server.publish("", format!("before {i}").as_bytes()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (addr, stop, count) = (server.addr, stop.clone(), count.clone());
        std::thread::spawn(move || {
            let mut conn = HttpConn::open(addr);
            let mut last = 0;
            while !stop.load(Ordering::Acquire) {
                last = published_id(&conn.publish("", b"during"));
                count.fetch_add(1, Ordering::Release);
            }
            last
        })
    };
    let wait_for = |n: u64| {
        let deadline = std::time::Instant::now() + util::PATIENCE;
        while count.load(Ordering::Acquire) < n {
            assert!(std::time::Instant::now() < deadline, "publisher stalled");
            std::thread::yield_now();
        }
    };
    // Resume while the flood runs, several times, on fresh connections (both shards).
    wait_for(100);
    let mut resumed = Vec::new();
    for _ in 0..40 {
        resumed.push(SseClient::connect(
            server.addr,
            "/stream",
            &[&format!("Last-Event-ID: {last_seen}")],
        ));
    }
    wait_for(count.load(Ordering::Acquire) + 100);
    stop.store(true, Ordering::Release);
    let final_id = publisher.join().unwrap();
    for (n, client) in resumed.iter_mut().enumerate() {
        let mut expect = last_seen + 1;
        while expect <= final_id {
            let got = id_of(&client.next_event());
            assert_eq!(
                got, expect,
                "client {n}: ids must run on without gap or repeat"
            );
            expect += 1;
        }
    }
}

#[test]
fn the_header_wins_over_the_query_and_the_query_works_alone() {
    let server = Server::start(&[]);
    let ids: Vec<u64> = (0..5)
        .map(|i| published_id(&server.publish("", format!("{i}").as_bytes())))
        .collect();
    let mut by_query = server.stream(&format!("/stream?lastEventId={}", ids[2]));
    assert_eq!(id_of(&by_query.next_event()), ids[3]);
    let mut both = SseClient::connect(
        server.addr,
        &format!("/stream?lastEventId={}", ids[0]),
        &[&format!("Last-Event-ID: {}", ids[3])],
    );
    assert_eq!(id_of(&both.next_event()), ids[4]);
}

#[test]
fn an_id_older_than_the_history_gets_a_reset_then_what_is_kept() {
    let server = Server::start(&["--history", "10"]);
    let ids: Vec<u64> = (0..30)
        .map(|i| published_id(&server.publish("", format!("{i}").as_bytes())))
        .collect();
    let mut c = SseClient::connect(
        server.addr,
        "/stream",
        &[&format!("Last-Event-ID: {}", ids[4])],
    );
    let reset = c.next_event();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(reset.id, None, "notices carry no id");
    assert_eq!(
        reset.data,
        format!(
            "{{\"reason\":\"expired\",\"requested\":\"{}\",\"oldest\":\"{}\"}}",
            ids[4], ids[20]
        )
    );
    for id in &ids[20..] {
        assert_eq!(id_of(&c.next_event()), *id);
    }
    assert_eq!(server.metrics()["sse_edge_reset_notices_total"], 1.0);
}

#[test]
fn an_unknown_id_gets_a_reset_then_everything_kept() {
    let server = Server::start(&[]);
    let ids: Vec<u64> = (0..3)
        .map(|i| published_id(&server.publish("?topic=t", format!("{i}").as_bytes())))
        .collect();
    for bad in ["banana", "999999"] {
        let mut c = SseClient::connect(
            server.addr,
            "/stream?topic=t",
            &[&format!("Last-Event-ID: {bad}")],
        );
        let reset = c.next_event();
        assert_eq!(reset.event.as_deref(), Some("reset"));
        assert!(
            reset
                .data
                .starts_with(&format!("{{\"reason\":\"unknown\",\"requested\":\"{bad}\"")),
            "{}",
            reset.data
        );
        for id in &ids {
            assert_eq!(id_of(&c.next_event()), *id);
        }
    }
}
