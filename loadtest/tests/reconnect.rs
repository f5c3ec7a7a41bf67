//! `--reconnect`, `--reconnect-after` and `--storm` against the real `sse-edge` (and a real
//! `redis-server` where a node is restarted): streams that come back as browsers do, with
//! loss and duplicates counted exactly across their connections.
//!
//! Every wait is on a condition with a deadline; the assertions are on counts, never times.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

mod common;
use common::{wait_until, Node};

#[path = "../../tests/util/redis.rs"]
mod redis_util;
use redis_util::RedisServer;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadtest-{}-{name}", std::process::id()))
}

fn read_json(path: &PathBuf, out: &Output) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("--json file not written ({e}): {}", describe(out)));
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("--json is JSON")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A cluster node on `redis`: `--redis`, a short `retry:` so the test's streams come back
/// within a second, on `listen`.
fn cluster_node(redis: &RedisServer, listen: &str) -> Node {
    let url = redis.url();
    Node::start(&["--listen", listen, "--redis", &url, "--retry-ms", "300"])
}

/// A node restarted under load: its streams come back (`--reconnect`) to the new process on
/// the same port, each with `Last-Event-ID`, and the Redis stream the two nodes share replays
/// what they missed. Publishes go to the other node, which is never restarted, so every one
/// of them has a known fate. Nothing is lost, nothing is repeated, and each stream's comeback
/// is counted once. Without `--reconnect` the restart loses every stream's tail.
#[test]
fn a_node_restarted_mid_run_loses_nothing_and_repeats_nothing() {
    let redis = RedisServer::start();
    let publisher = cluster_node(&redis, "127.0.0.1:0");
    let node = cluster_node(&redis, "127.0.0.1:0");
    let port = node.port;
    const STREAMS: u64 = 200;
    let json = temp_path("restart.json");
    let mut args = strings(&[
        "--connections",
        "200",
        "--procs",
        "1",
        "--rate",
        "20",
        "--duration",
        "6",
        "--reconnect",
    ]);
    args.extend([
        "--url".into(),
        node.url("/stream?topic=restart"),
        "--publish-url".into(),
        publisher.url("/broadcast?topic=restart"),
        "--json".into(),
        json.display().to_string(),
    ]);
    let run = std::thread::spawn(move || common::run_loadtest(&args));

    // Once every stream is held and publishing is under way, the node dies and comes back.
    wait_until(Duration::from_secs(30), "streams held on the node", || {
        node.metric("sse_edge_clients") >= STREAMS as f64
    });
    wait_until(Duration::from_secs(30), "publishing under way", || {
        publisher.metric("sse_edge_events_published_total") >= 10.0
    });
    node.kill();
    let listen = format!("127.0.0.1:{port}");
    let node = cluster_node(&redis, &listen);

    let out = run.join().expect("loadtest thread");
    let j = read_json(&json, &out);
    assert!(out.status.success(), "{}\n{j:#}", describe(&out));
    let published = j["messages_published"].as_u64().unwrap();
    assert!(published >= 100, "{j:#}");
    assert_eq!(j["connections_established"], STREAMS, "{j:#}");
    assert_eq!(j["connect_errors"], 0, "{j:#}");
    assert_eq!(j["disconnects"], 0, "{j:#}");
    assert_eq!(j["deliveries_expected"], published * STREAMS, "{j:#}");
    assert_eq!(j["deliveries_received"], published * STREAMS, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["deliveries_lost_covered"], 0, "{j:#}");
    assert_eq!(j["deliveries_duplicated"], 0, "{j:#}");
    // Each stream ended once and was served again once, however many attempts it took
    // while the port was closed.
    assert_eq!(j["reconnects"], STREAMS, "{j:#}");
    assert!(
        j["reconnect_attempts"].as_u64().unwrap() >= STREAMS,
        "{j:#}"
    );
    assert_eq!(j["reconnect_ms"]["count"], STREAMS, "{j:#}");
    // The new process served every one of them a replay (from Redis: it had no history).
    assert!(node.metric("sse_edge_streams_opened_total") >= STREAMS as f64);
}

/// A client-side failover list: streams spread over two nodes of one cluster, one node
/// killed for good. Its streams come back to the next URL of the list, the survivor, with
/// `Last-Event-ID`, and lose nothing; the survivor's own streams never notice.
#[test]
fn a_killed_nodes_streams_fail_over_to_the_next_url_of_the_list() {
    let redis = RedisServer::start();
    let doomed = cluster_node(&redis, "127.0.0.1:0");
    let survivor = cluster_node(&redis, "127.0.0.1:0");
    const STREAMS: u64 = 200;
    let json = temp_path("failover.json");
    let mut args = strings(&[
        "--connections",
        "200",
        "--procs",
        "1",
        "--rate",
        "20",
        "--duration",
        "5",
        "--reconnect",
    ]);
    args.extend([
        "--url".into(),
        format!(
            "{},{}",
            doomed.url("/stream?topic=failover"),
            survivor.url("/stream?topic=failover")
        ),
        "--publish-url".into(),
        survivor.url("/broadcast?topic=failover"),
        "--json".into(),
        json.display().to_string(),
    ]);
    let run = std::thread::spawn(move || common::run_loadtest(&args));
    wait_until(
        Duration::from_secs(30),
        "streams held on both nodes",
        || {
            doomed.metric("sse_edge_clients") >= (STREAMS / 2) as f64
                && survivor.metric("sse_edge_clients") >= (STREAMS / 2) as f64
        },
    );
    wait_until(Duration::from_secs(30), "publishing under way", || {
        survivor.metric("sse_edge_events_published_total") >= 10.0
    });
    doomed.kill();
    let out = run.join().expect("loadtest thread");
    let j = read_json(&json, &out);
    assert!(out.status.success(), "{}\n{j:#}", describe(&out));
    let published = j["messages_published"].as_u64().unwrap();
    assert_eq!(j["connections_established"], STREAMS, "{j:#}");
    assert_eq!(j["deliveries_received"], published * STREAMS, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["deliveries_lost_covered"], 0, "{j:#}");
    assert_eq!(j["deliveries_duplicated"], 0, "{j:#}");
    // Half the streams started on the killed node; each came back once, to the survivor.
    assert_eq!(j["reconnects"], STREAMS / 2, "{j:#}");
    assert_eq!(
        survivor.metric("sse_edge_streams_opened_total"),
        STREAMS as f64
    );
}

/// A first connection refused is retried like any end, on the next URL of the list: the
/// stream is then established (once), not a reconnect, and nothing counts as a failure.
#[test]
fn a_refused_first_connection_moves_on_to_the_next_url() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    // A bound socket that never listens: every connect to its port is refused, and the port
    // stays ours for the test.
    let dead =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    dead.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let dead_port = dead
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("an IP address")
        .port();
    const STREAMS: u64 = 100;
    let json = temp_path("refused.json");
    let mut args = strings(&[
        "--connections",
        "100",
        "--procs",
        "1",
        "--duration",
        "6",
        "--reconnect",
    ]);
    args.extend([
        "--url".into(),
        format!(
            "http://127.0.0.1:{dead_port}/stream,{}",
            node.url("/stream?topic=refused")
        ),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = common::run_loadtest(&args);
    let j = read_json(&json, &out);
    assert!(out.status.success(), "{}\n{j:#}", describe(&out));
    assert_eq!(j["connections_established"], STREAMS, "{j:#}");
    assert_eq!(j["connect_errors"], 0, "{j:#}");
    // Half the streams started on the dead port: one refusal each, one more attempt each.
    assert_eq!(j["errors_by_kind"]["refused"], STREAMS / 2, "{j:#}");
    assert_eq!(j["reconnect_attempts"], STREAMS / 2, "{j:#}");
    assert_eq!(j["reconnects"], 0, "{j:#}");
    assert_eq!(j["reconnect_ms"]["count"], 0, "{j:#}");
    drop(dead);
}

/// A storm resuming from a point in the node's history: every stream opened at once with
/// `--last-event-id`, each replayed exactly the events after it, and the summary's storm
/// fields agree with what the node counted.
#[test]
fn a_storm_with_last_event_id_reports_what_the_node_replayed() {
    let node = Node::start(&["--listen", "127.0.0.1:0"]);
    const STREAMS: u64 = 500;
    const BEFORE: u64 = 30;
    let ids: Vec<String> = (0..BEFORE)
        .map(|i| node.publish("storm", &format!("before {i}")))
        .collect();
    // Resume after the tenth: twenty events each to replay.
    let resume = &ids[9];
    let replayed_before = node.metric("sse_edge_replayed_events_total");
    let opened_before = node.metric("sse_edge_streams_opened_total");
    let json = temp_path("storm.json");
    let mut args = strings(&[
        "--connections",
        "500",
        "--procs",
        "2",
        "--duration",
        "1",
        "--storm",
    ]);
    args.extend([
        "--last-event-id".into(),
        resume.clone(),
        "--url".into(),
        node.url("/stream?topic=storm"),
        "--server-pid".into(),
        node.pid().to_string(),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = common::run_loadtest(&args);
    let j = read_json(&json, &out);
    assert!(out.status.success(), "{}\n{j:#}", describe(&out));
    let per = BEFORE - 10;
    assert_eq!(j["connections_established"], STREAMS, "{j:#}");
    assert_eq!(j["storm_refused"], 0, "{j:#}");
    assert_eq!(j["storm_closed"], 0, "{j:#}");
    let r = &j["storm_replayed_per_stream"];
    assert_eq!(
        (&r["streams"], &r["min"], &r["max"], &r["total"]),
        (
            &STREAMS.into(),
            &per.into(),
            &per.into(),
            &(per * STREAMS).into()
        ),
        "{j:#}"
    );
    assert!(j["storm_all_served_ms"].as_f64().unwrap() > 0.0, "{j:#}");
    assert!(j["server_bytes_per_conn"].is_number(), "{j:#}");
    // The node's own counts of the same storm.
    assert_eq!(
        node.metric("sse_edge_replayed_events_total") - replayed_before,
        (per * STREAMS) as f64
    );
    assert_eq!(
        node.metric("sse_edge_streams_opened_total") - opened_before,
        STREAMS as f64
    );
}

/// A network blip: every stream closed at once mid-run and brought back with its last id.
/// Each comes back once, and across the blip nothing is lost or repeated.
#[test]
fn a_blip_brings_every_stream_back_with_nothing_lost_or_repeated() {
    let node = Node::start(&["--listen", "127.0.0.1:0", "--retry-ms", "300"]);
    const STREAMS: u64 = 300;
    let json = temp_path("blip.json");
    let mut args = strings(&[
        "--connections",
        "300",
        "--procs",
        "1",
        "--rate",
        "20",
        "--duration",
        "4",
        "--reconnect-after",
        "1.5",
    ]);
    args.extend([
        "--url".into(),
        node.url("/stream?topic=blip"),
        "--publish-url".into(),
        node.url("/broadcast?topic=blip"),
        "--json".into(),
        json.display().to_string(),
    ]);
    let out = common::run_loadtest(&args);
    let j = read_json(&json, &out);
    assert!(out.status.success(), "{}\n{j:#}", describe(&out));
    let published = j["messages_published"].as_u64().unwrap();
    assert!(published >= 60, "{j:#}");
    assert_eq!(j["connections_established"], STREAMS, "{j:#}");
    assert_eq!(j["reconnects"], STREAMS, "{j:#}");
    assert_eq!(j["deliveries_received"], published * STREAMS, "{j:#}");
    assert_eq!(j["deliveries_lost"], 0, "{j:#}");
    assert_eq!(j["deliveries_lost_covered"], 0, "{j:#}");
    assert_eq!(j["deliveries_duplicated"], 0, "{j:#}");
    // The node saw every stream twice: before the blip and after it.
    assert_eq!(
        node.metric("sse_edge_streams_opened_total"),
        (2 * STREAMS) as f64
    );
}
