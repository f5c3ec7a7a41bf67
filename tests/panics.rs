//! A shard that panics outside request parsing takes the whole process down, promptly and
//! with a non-zero status and a log line naming the shard, so a supervisor restarts it; a
//! node with a dead reactor that still holds its listeners (a ghost) would be worse.
//!
//! The fault is injected by the debug build only: with `SSE_EDGE_TEST_PANIC_TOPIC=boom` a
//! shard panics when it delivers an event of topic `boom` to its subscribers.

mod util;

use std::time::{Duration, Instant};

use util::{per_shard, Control, HttpConn, Server, SseClient, PATIENCE};

const INJECT: (&str, &str) = ("SSE_EDGE_TEST_PANIC_TOPIC", "boom");

fn a_delivery_panic_exits_the_process(shards: usize) {
    let mut server = Server::start_with_env(&["--shards", &shards.to_string()], &[INJECT]);
    let mut control = Control::open(&server);
    // Which shard holds it (each shard mirrors its counts once per loop turn: poll).
    let deadline = Instant::now() + PATIENCE;
    let control_shard = loop {
        let per = per_shard(&server, "sse_edge_clients");
        if per.iter().sum::<f64>() == 1.0 {
            break per.iter().position(|&n| n == 1.0).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "control stream not counted: {per:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Streams on `boom` until every shard has one (SO_REUSEPORT spreads connections by a
    // hash, so a few usually suffice; bounded all the same).
    let mut boom: Vec<SseClient> = Vec::new();
    loop {
        boom.push(server.stream("/stream?topic=boom"));
        let per = per_shard(&server, "sse_edge_clients");
        let boom_per_shard: Vec<f64> = (0..shards)
            .map(|s| {
                let streams = per.get(s).copied().unwrap_or(0.0);
                if s == control_shard {
                    streams - 1.0
                } else {
                    streams
                }
            })
            .collect();
        if boom_per_shard.iter().all(|&n| n >= 1.0) {
            break;
        }
        assert!(
            boom.len() < 64,
            "no `boom` stream on some shard after 64: {boom_per_shard:?}"
        );
    }
    control.publish();
    control.check();

    // The publish itself may or may not be answered: the hub answers before the fan-out.
    let mut publisher = HttpConn::open(server.addr);
    publisher
        .send(b"POST /broadcast?topic=boom HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nboom");
    let status = server.wait_exit(PATIENCE).unwrap_or_else(|| {
        panic!(
            "still running {PATIENCE:?} after the publish to boom; log:\n{}",
            server.log()
        )
    });
    assert!(!status.success(), "exit status {status:?} must be non-zero");
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("panic") && l.contains("shard")),
        "a log line names the panicking shard:\n{log}"
    );
    // The connections end with the process (EOF, not a hang); the control stream got every
    // event published before the panic and nothing else.
    control.check();
    let extra = control.client.read_to_end_within_patience("control stream");
    assert!(
        extra.is_empty(),
        "control stream after the panic: {extra:?}"
    );
    for c in &mut boom {
        c.read_to_end_within_patience("a boom stream");
    }
}

#[test]
fn a_panicking_shard_of_two_exits_the_process() {
    a_delivery_panic_exits_the_process(2);
}

#[test]
fn a_panicking_single_shard_exits_the_process() {
    a_delivery_panic_exits_the_process(1);
}
