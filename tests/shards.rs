//! Several reactors behind SO_REUSEPORT: one encoding per event, every stream gets every
//! event once and in order, whichever shard it is on and whichever shard took the publish.

mod util;

use util::{heartbeat_number, per_shard, published_id, HttpConn, Server, SseClient};

#[test]
fn two_shards_four_hundred_streams_publishes_from_either_shard() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<SseClient> = (0..400).map(|_| server.stream("/stream")).collect();
    server.wait_metrics("400 streams", |m| m["sse_edge_clients"] == 400.0);
    let per = per_shard(&server, "sse_edge_clients");
    assert_eq!(per.len(), 2);
    assert!(
        per.iter().all(|&n| n > 0.0),
        "both shards hold streams: {per:?}"
    );

    // Find a publishing connection on each shard: publish once per new connection and see
    // which shard's publish count moved.
    let mut ids = Vec::new();
    let mut on_shard: [Option<HttpConn>; 2] = [None, None];
    for attempt in 0..64 {
        if on_shard.iter().all(Option::is_some) {
            break;
        }
        let before = per_shard(&server, "sse_edge_events_published_total");
        let mut conn = HttpConn::open(server.addr);
        ids.push(published_id(
            &conn.publish("", format!("probe {attempt}").as_bytes()),
        ));
        // Shards mirror their counters once per loop turn: poll until the publish shows.
        let deadline = std::time::Instant::now() + util::PATIENCE;
        let shard = loop {
            let after = per_shard(&server, "sse_edge_events_published_total");
            if let Some(s) = (0..2).find(|&s| after[s] > before.get(s).copied().unwrap_or(0.0)) {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the publish never showed in /metrics"
            );
        };
        on_shard[shard].get_or_insert(conn);
    }
    let [Some(mut a), Some(mut b)] = on_shard else {
        panic!("no connection landed on one shard")
    };
    for i in 0..20 {
        let conn = if i % 2 == 0 { &mut a } else { &mut b };
        ids.push(published_id(
            &conn.publish("", format!("broadcast {i}").as_bytes()),
        ));
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "one increasing sequence: {ids:?}"
    );

    for (n, client) in clients.iter_mut().enumerate() {
        for id in &ids {
            assert_eq!(client.next_event().id, Some(id.to_string()), "client {n}");
        }
    }
    let published = ids.len() as f64;
    let m = server.metrics();
    assert_eq!(
        m["sse_edge_events_encoded_total"], published,
        "one encoding per event"
    );
    assert_eq!(m["sse_edge_frames_queued_total"], 400.0 * published);
    assert_eq!(m["sse_edge_frames_dropped_total"], 0.0);
}

#[test]
fn the_ticker_runs_once_per_node_not_once_per_shard() {
    let server = Server::start(&["--shards", "2", "--tick", "1"]);
    // Enough streams that both shards hold some.
    let mut clients: Vec<SseClient> = (0..16).map(|_| server.stream("/stream")).collect();
    server.wait_metrics("16 streams", |m| m["sse_edge_clients"] == 16.0);
    assert!(per_shard(&server, "sse_edge_clients")
        .iter()
        .all(|&n| n > 0.0));
    for client in clients.iter_mut() {
        let first = client.next_event();
        let second = client.next_event();
        assert_eq!(heartbeat_number(&second), heartbeat_number(&first) + 1);
        let (i, j): (u64, u64) = (
            first.id.unwrap().parse().unwrap(),
            second.id.unwrap().parse().unwrap(),
        );
        assert_eq!(j, i + 1, "no duplicate tick between them");
    }
}

#[test]
fn sigterm_stops_every_shard() {
    let mut server = Server::start(&["--shards", "2"]);
    let _streams: Vec<SseClient> = (0..8).map(|_| server.stream("/stream")).collect();
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.wait_exit(util::PATIENCE).and_then(|s| s.code()),
        Some(0)
    );
    assert_eq!(server.log().matches("shard stopped").count(), 2);
}

#[test]
fn processes_share_a_port_only_when_both_ask() {
    let first = Server::start(&["--reuse-port", "--shards", "2"]);
    let addr = first.addr.to_string();
    // A second node that asks to share joins the port and serves.
    let second = Server::start(&["--reuse-port", "--listen", &addr]);
    assert_eq!(second.addr, first.addr);
    // Without a shared Redis each publish reaches one process's streams: both say so.
    let warning = "--reuse-port without --redis: a publish reaches only the streams of the process that received it";
    for node in [&first, &second] {
        assert_eq!(node.log().matches(warning).count(), 1, "{}", node.log());
    }
    assert!(!Server::start(&["--listen", "127.0.0.1:0"])
        .log()
        .contains("--reuse-port"));
    // One that does not ask is refused, even though the port's owners allow sharing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["--listen", &addr, "--shards", "2", "--log", "error"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    // Both sharing nodes answer on the one port (the kernel picks; ask until both did).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let r = first.request(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        let text = r.text();
        // Each node reports its own shard count: 2 lines of sse_edge_clients, or 1.
        seen.insert(
            text.lines()
                .filter(|l| l.starts_with("sse_edge_clients{"))
                .count(),
        );
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "connections reached both processes");
}
