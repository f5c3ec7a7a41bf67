//! Subscribers cannot evict or block history: the records of the topics streams subscribe to
//! are charged to `--topic-bytes`, never to `--history-bytes`, so streams asking for unique
//! topic names, from as many addresses as they like, cannot make the node drop fresh events.
//! A stream whose new topics find the topic budget full is shed and counted.

mod util;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use util::{connect_from, metric, published_id, Server, SseClient, PATIENCE};

const HISTORY_BYTES: u64 = 65536;
/// Room for the records of about eight streams of 32 topics of 128 characters (512 B each).
const TOPIC_BYTES: u64 = 128 << 10;
/// Source addresses 127.0.0.2 and up, each within `--max-streams-per-ip`: a per-address cap
/// alone does not stop this.
const SOURCES: u8 = 8;
const PER_SOURCE: u8 = 4;

/// The request of a stream on 32 unique topics of 128 characters.
fn hostile_request(source: u8, stream: u8) -> String {
    let topics: Vec<String> = (0..32)
        .map(|i| {
            let name = format!("s{source:03}-{stream:02}-{i:02}-{}", "x".repeat(117));
            assert_eq!(name.len(), 128);
            format!("topic={name}")
        })
        .collect();
    format!(
        "GET /stream?{} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
        topics.join("&")
    )
}

#[test]
fn streams_on_unique_topics_from_many_addresses_cannot_evict_history() {
    let server = Server::start(&[
        "--history-bytes",
        &HISTORY_BYTES.to_string(),
        "--topic-bytes",
        &TOPIC_BYTES.to_string(),
        "--max-streams-per-ip",
        &PER_SOURCE.to_string(),
    ]);
    // A reader of `default` from before the attack: joining its topic costs nothing more.
    let mut watcher = server.stream("/stream");

    let mut hostile = Vec::new();
    for source in 2..2 + SOURCES {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, source));
        for stream in 0..PER_SOURCE {
            let mut sock = connect_from(server.addr, from, None);
            sock.write_all(hostile_request(source, stream).as_bytes())
                .unwrap();
            let c = SseClient::from_stream(sock);
            assert!(c.head.starts_with("HTTP/1.1 200 "), "{}", c.head);
            hostile.push(c); // kept open: a stream that stays holds its topics
        }
    }
    let asked = f64::from(SOURCES) * f64::from(PER_SOURCE) + 1.0;
    let m = server.wait_metrics("every stream open or shed", |m| {
        metric(m, "sse_edge_clients") + metric(m, "sse_edge_topic_budget_shed_total") >= asked
    });
    let shed = metric(&m, "sse_edge_topic_budget_shed_total");
    assert!(shed > 0.0, "the topic budget filled and shed: {m:?}");
    assert!(
        metric(&m, "sse_edge_shed_total") >= shed,
        "counted with every shed stream: {m:?}"
    );
    let topic_bytes = metric(&m, "sse_edge_topic_bytes");
    assert!(
        topic_bytes > 0.0 && topic_bytes <= TOPIC_BYTES as f64,
        "topic records within --topic-bytes {TOPIC_BYTES}: {m:?}"
    );

    let before = published_id(&server.publish("", b"before"));
    let last = published_id(&server.publish("", b"last"));
    let mut resumed = SseClient::connect(
        server.addr,
        "/stream",
        &[&format!("Last-Event-ID: {before}")],
    );
    let deadline = Instant::now() + PATIENCE;
    let e = resumed
        .next_event_before(deadline, "the resume's replay")
        .expect("the resumed stream stays open");
    assert_eq!(
        (e.event.as_deref(), e.id, e.data.as_str()),
        (None, Some(last.to_string()), "last"),
        "the event after the resumed id, not a reset"
    );
    for (id, data) in [(before, "before"), (last, "last")] {
        let e = watcher
            .next_event_before(deadline, "the watcher")
            .expect("the watcher stays open");
        assert_eq!((e.id, e.data.as_str()), (Some(id.to_string()), data));
    }
    let m = server.metrics();
    let kept = metric(&m, "sse_edge_history_bytes");
    assert!(
        kept > 0.0 && kept <= HISTORY_BYTES as f64,
        "the history keeps events within --history-bytes {HISTORY_BYTES}: {m:?}"
    );
}
