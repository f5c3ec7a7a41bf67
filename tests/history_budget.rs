//! Publishers cannot make the node keep unbounded history: kept frames over all topics stay
//! within `--history-bytes`, idle topics are forgotten after `--topic-idle`, and a stream that
//! resumes into what was dropped is told so (`reset`, `expired`), never left in silence.
//!
//! Every test keeps a control stream that must receive every event published during and
//! after the attack.

mod util;

use util::{metric, published_id, Control, HttpConn, Server, SseClient};

const BUDGET: u64 = 8 << 20;
const TOPICS: usize = 30_000;

/// Asserts that `e` is a `reset` for `requested` with reason `expired`.
fn assert_expired_reset(e: &util::Event, requested: u64) {
    assert_eq!(e.event.as_deref(), Some("reset"), "{e:?}");
    assert_eq!(e.id, None, "notices carry no id");
    assert!(
        e.data.starts_with(&format!(
            "{{\"reason\":\"expired\",\"requested\":\"{requested}\""
        )),
        "{}",
        e.data
    );
}

#[test]
fn thirty_thousand_topics_stay_within_the_history_budget() {
    let server = Server::start(&["--history-bytes", &BUDGET.to_string()]);
    let mut control = Control::open(&server);
    let mut publisher = HttpConn::open(server.addr);
    // An id a client saw before the `early` topic's only event, which the flood evicts.
    let seen = published_id(&publisher.publish("?topic=seen", b"seen"));
    published_id(&publisher.publish("?topic=early", b"early"));

    let rss_before = server.rss_bytes();
    let body = vec![b'h'; 1000];
    for n in 0..TOPICS {
        published_id(&publisher.publish(&format!("?topic=flood{n}"), &body));
        if n.is_multiple_of(1000) {
            control.publish(); // during the flood
        }
    }
    let rss_after = server.rss_bytes();
    // The frames alone are ~30 MiB; what the node holds is the budget plus slack for the
    // allocator, the index and the test's own connections.
    let slack: u64 = 24 << 20;
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth <= BUDGET + slack,
        "RSS grew {} KiB publishing {TOPICS} topics (budget {} KiB + {} KiB slack)",
        growth / 1024,
        BUDGET / 1024,
        slack / 1024
    );

    let m = server.metrics();
    let kept = metric(&m, "sse_edge_history_bytes");
    assert!(
        m.contains_key("sse_edge_history_bytes") && kept <= BUDGET as f64,
        "kept history within --history-bytes {BUDGET}: {kept} ({m:?})"
    );
    assert!(
        metric(&m, "sse_edge_history_topics") < TOPICS as f64,
        "topics were dropped with their frames: {m:?}"
    );

    // Resuming into the evicted topic is told so, then goes on live.
    let mut c = SseClient::connect(
        server.addr,
        "/stream?topic=early",
        &[&format!("Last-Event-ID: {seen}")],
    );
    assert_expired_reset(&c.event_within_patience("resume into evicted early"), seen);
    let live = published_id(&publisher.publish("?topic=early", b"live"));
    let e = c.event_within_patience("live after the reset");
    assert_eq!((e.id, e.data.as_str()), (Some(live.to_string()), "live"));
    control.publish_and_check();
}

#[test]
fn an_idle_topic_is_forgotten_and_a_resume_into_it_is_reset() {
    let server = Server::start(&["--topic-idle", "1"]);
    let mut control = Control::open(&server);
    // The control topic first, so the count below already includes it; its id is one the
    // client below has seen before x's event, which it then misses.
    let seen = control.publish();
    let id = published_id(&server.publish("?topic=x", b"soon forgotten"));
    assert!(seen < id);
    let m = server.wait_metrics("x counted", |m| metric(m, "sse_edge_history_topics") >= 2.0);
    let with_x = metric(&m, "sse_edge_history_topics");
    // The control topic has a subscriber and stays; x has none and no publishes.
    server.wait_metrics("x forgotten", |m| {
        metric(m, "sse_edge_history_topics") < with_x
    });
    control.publish();
    let mut c = SseClient::connect(
        server.addr,
        "/stream?topic=x",
        &[&format!("Last-Event-ID: {seen}")],
    );
    assert_expired_reset(&c.event_within_patience("resume into forgotten x"), seen);
    let live = published_id(&server.publish("?topic=x", b"live"));
    let e = c.event_within_patience("live after the reset");
    assert_eq!((e.id, e.data.as_str()), (Some(live.to_string()), "live"));
    control.publish_and_check();
}
