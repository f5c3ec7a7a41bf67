//! HTTP/2 on the edge, h2c with prior knowledge, driven frame by frame over loopback against
//! the real binary: every route through the same rules as HTTP/1.1, streams many to a
//! connection with the same bytes as HTTP/1.1's bodies, request bodies above one window,
//! replay, a stream whose window stays closed, the defences, the handshake's timeouts and
//! the drain.

#[path = "util/h2.rs"]
mod h2_client;
mod util;

use std::time::Duration;

use h2_client::H2Client;
use util::{Server, PATIENCE};

const NO_ERROR: u32 = 0;
const SETTINGS_TIMEOUT: u32 = 4;
const CANCEL: u32 = 8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[test]
fn every_route_answers_over_h2c_with_the_same_rules_and_no_connection_fields() {
    let server = Server::start(&["--cors-origins", "https://app.example"]);
    let mut c = H2Client::connect(server.addr, &[]);
    let health = c.get(1, "/healthz");
    assert_eq!((health.status(), health.text().as_str()), (200, "ok\n"));
    let page = c.get(3, "/");
    assert_eq!(page.status(), 200);
    assert!(page.field("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("<html"), "{}", page.text());
    let missing = c.get(5, "/nope");
    assert_eq!(missing.status(), 404);
    c.request(7, "POST", "/stream", &[], true);
    let wrong = c.response(7);
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.field("allow"), Some("GET, OPTIONS"));
    c.request(
        9,
        "OPTIONS",
        "/stream",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
        true,
    );
    let preflight = c.response(9);
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.field("access-control-allow-origin"),
        Some("https://app.example")
    );
    let metrics = c.get(11, "/metrics");
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .contains("sse_edge_h2_connections_total{shard=\"0\"} 1"));
    // A bad topic is refused with HTTP/1.1's status and reason, on its stream alone.
    let bad = c.get(13, "/stream?topic=%zz");
    assert_eq!(bad.status(), 400);
    for r in [&health, &page, &missing, &wrong, &preflight, &metrics, &bad] {
        for (name, _) in &r.head {
            assert!(
                !["connection", "keep-alive", "transfer-encoding"].contains(&name.as_str()),
                "a connection-specific field in {:?}",
                r.head
            );
        }
    }
    // A head over the list bound (an HPACK bomb's shape): 431 on its stream alone.
    let big = "v".repeat(12 * 1024);
    c.request(15, "GET", "/healthz", &[("x-big", &big)], true);
    assert_eq!(c.response(15).status(), 431);
    // The connection goes on after all of them.
    assert_eq!(c.get(17, "/healthz").status(), 200);
    assert_eq!(c.goaway, None);
}

#[test]
fn ten_streams_on_one_connection_get_every_broadcast_as_http1_does_in_the_same_bytes() {
    let server = Server::start(&[]);
    let mut c = H2Client::connect(server.addr, &[]);
    let ids: Vec<u32> = (0..10).map(|i| 1 + 2 * i).collect();
    for &id in &ids {
        c.request(id, "GET", "/stream?topic=news", &[], true);
    }
    let mut http1 = server.stream("/stream?topic=news");
    server.wait_metrics("11 streams", |m| m["sse_edge_clients"] == 11.0);
    for &id in &ids {
        let s = c.body_until(id, "retry:");
        assert!(s.starts_with(": connected\n"), "{s:?}");
        assert_eq!(c.streams[&id].status(), 200);
        assert_eq!(
            c.streams[&id].field("content-type"),
            Some("text/event-stream")
        );
    }
    // One small event, and one of 40 KiB: split into DATA frames of at most 16 KiB.
    let big = "x".repeat(40 * 1024);
    assert_eq!(server.publish("?topic=news", b"hello").status, 200);
    assert_eq!(server.publish("?topic=news", big.as_bytes()).status, 200);
    let e1 = http1.next_event();
    let e2 = http1.next_event();
    assert_eq!(e1.data, "hello");
    assert_eq!(e2.data.len(), big.len());
    let http1_bytes = format!("id: 1\ndata: hello\n\nid: 2\ndata: {big}\n\n");
    for &id in &ids {
        c.body_until(id, "id: 2\n");
        c.wait("the whole second event", |c| {
            c.streams[&id].text().ends_with(&format!("{big}\n\n"))
        });
        let body = c.streams[&id].text();
        let events = &body[body.find("id: 1").expect(&body)..];
        assert!(events == http1_bytes, "stream {id}: {} bytes", events.len());
        let sizes = &c.streams[&id].frame_sizes;
        assert!(sizes.iter().all(|&n| n <= 16_384), "{sizes:?}");
        assert!(
            sizes.len() >= 4,
            "the 40 KiB event is several frames: {sizes:?}"
        );
        let _ = body;
    }
    assert_eq!(c.goaway, None);
}

#[test]
fn a_publish_body_above_one_window_arrives_whole_without_content_length() {
    let server = Server::start(&[]);
    let mut reader = server.stream("/stream?topic=big");
    server.wait_metrics("the reader", |m| m["sse_edge_clients"] == 1.0);
    let mut c = H2Client::connect(server.addr, &[]);
    // 64 KiB of data (the default --max-body) is more than the 65 535-byte initial window.
    let text = "y".repeat(65_536);
    let body = text.clone();
    c.request(1, "POST", "/broadcast?topic=big", &[], false);
    c.send_body(1, body.as_bytes());
    let answer = c.response(1);
    assert_eq!(answer.status(), 200, "{}", answer.text());
    assert!(answer.text().contains("\"clients\":1"), "{}", answer.text());
    assert_eq!(reader.next_event().data, text);
    // One byte over --max-body: 413 on that stream, the connection goes on.
    c.request(3, "POST", "/broadcast?topic=big", &[], false);
    c.send_body(3, format!("{body}z").as_bytes());
    assert_eq!(c.response(3).status(), 413);
    assert_eq!(c.get(5, "/healthz").status(), 200);
}

#[test]
fn a_refused_publish_is_answered_and_its_body_read_and_dropped_up_to_max_body() {
    let server = Server::start(&["--publish-token", "sekrit-token", "--max-body", "4096"]);
    let mut c = H2Client::connect(server.addr, &[]);
    c.request(
        1,
        "POST",
        "/broadcast?topic=a",
        &[("content-length", "5")],
        false,
    );
    let r = c.response(1);
    assert_eq!(r.status(), 401);
    assert_eq!(r.field("www-authenticate"), Some("Bearer"));
    // Answered from its head; the body that follows is read and dropped, as over HTTP/1.1
    // (a reset here makes curl 7.88 lose the answer).
    c.send_body(1, b"hello");
    // One that goes on past --max-body is cut short with RST_STREAM(NO_ERROR).
    c.request(3, "POST", "/broadcast?topic=a", &[], false);
    assert_eq!(c.response(3).status(), 401);
    let mut data = sse_edge::wire::h2::frame::data_header(3, 10_000, false).to_vec();
    data.extend_from_slice(&[b'x'; 10_000]);
    c.send(&data); // no END_STREAM: more would come
    c.wait("RST_STREAM(NO_ERROR) past --max-body", |c| {
        c.streams[&3].reset == Some(NO_ERROR)
    });
    // With the token, from `authorization`, on the same connection.
    c.request(
        5,
        "POST",
        "/broadcast?topic=a",
        &[("authorization", "Bearer sekrit-token")],
        false,
    );
    c.send_body(5, b"data=ok");
    assert_eq!(c.response(5).status(), 200);
    assert_eq!(
        c.streams[&1].reset, None,
        "the first body was read, not cut"
    );
    assert_eq!(c.goaway, None);
}

#[test]
fn a_stream_resumes_from_last_event_id_over_h2c() {
    let server = Server::start(&[]);
    for text in ["one", "two", "three"] {
        assert_eq!(server.publish("?topic=r", text.as_bytes()).status, 200);
    }
    let mut c = H2Client::connect(server.addr, &[]);
    c.request(1, "GET", "/stream?topic=r", &[("last-event-id", "1")], true);
    let body = c.body_until(1, "data: three\n\n");
    assert!(!body.contains("data: one"), "{body}");
    assert!(
        body.contains("id: 2\ndata: two\n\nid: 3\ndata: three\n\n"),
        "{body}"
    );
    // A stream on its own: reset by the peer, it leaves; the connection stays.
    c.reset(1, CANCEL);
    server.wait_metrics("the stream gone", |m| m["sse_edge_clients"] == 0.0);
    assert_eq!(c.get(3, "/healthz").status(), 200);
}

#[test]
fn a_stream_whose_window_stays_closed_loses_frames_alone_and_hears_of_its_gap() {
    let server = Server::start(&["--slow-client-timeout", "0"]);
    let mut c = H2Client::connect(server.addr, &[]);
    // Stream 1 never gives its window back; stream 3 does.
    c.hold.push(1);
    c.request(1, "GET", "/stream?topic=w", &[], true);
    c.request(3, "GET", "/stream?topic=w", &[], true);
    c.body_until(1, "retry:");
    c.body_until(3, "retry:");
    let event = "z".repeat(10_000);
    // Stream 3 gets all ten; stream 1 what its 64 KiB window held.
    for n in 1..=10 {
        assert_eq!(server.publish("?topic=w", event.as_bytes()).status, 200);
        c.body_until(3, &format!("id: {n}\n"));
    }
    let held = c.streams[&1].text();
    assert!(!held.contains("id: 10\n"), "stream 1 got past its window");
    let m = server.wait_metrics("drops", |m| m["sse_edge_frames_dropped_total"] >= 1.0);
    assert!(m["sse_edge_frames_dropped_total"] <= 10.0);
    // Its window opens: the next event comes behind a `gap` notice naming what it lost.
    c.hold.clear();
    c.window_update(1, 1 << 20);
    assert_eq!(server.publish("?topic=w", b"after").status, 200);
    let body = c.body_until(1, "data: after\n");
    assert!(body.contains("event: gap\n"), "{body}");
    assert_eq!(c.goaway, None);
}

#[test]
fn a_stream_that_stays_behind_is_reset_alone_after_the_slow_client_period() {
    let server = Server::start(&["--slow-client-timeout", "1"]);
    let mut c = H2Client::connect(server.addr, &[]);
    c.hold.push(1);
    c.request(1, "GET", "/stream?topic=s", &[], true);
    c.request(3, "GET", "/stream?topic=s", &[], true);
    c.body_until(3, "retry:");
    let event = "z".repeat(20_000);
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut n = 0;
    while c.streams.get(&1).and_then(|r| r.reset).is_none() {
        assert!(std::time::Instant::now() < deadline, "stream 1 never reset");
        assert_eq!(server.publish("?topic=s", event.as_bytes()).status, 200);
        n += 1;
        while c.read_frame(Duration::from_millis(20)).is_some() {}
    }
    assert_eq!(c.streams[&1].reset, Some(CANCEL));
    assert!(n >= 2, "{n}");
    // Its sibling goes on.
    assert_eq!(server.publish("?topic=s", b"still").status, 200);
    c.body_until(3, "data: still\n");
    assert_eq!(c.goaway, None);
    server.wait_metrics("one slow disconnect", |m| {
        m["sse_edge_slow_disconnects_total"] == 1.0 && m["sse_edge_clients"] == 1.0
    });
}

#[test]
fn rapid_reset_ends_the_connection_with_enhance_your_calm_and_is_counted() {
    let server = Server::start(&[]);
    let mut c = H2Client::connect(server.addr, &[]);
    // A stream open when the connection fails ends with it (and gives back its place).
    c.request(1, "GET", "/stream?topic=rr", &[], true);
    c.body_until(1, "retry:");
    for i in 1..400u32 {
        let id = 1 + 2 * i;
        c.request(id, "GET", "/healthz", &[], true);
        c.reset(id, CANCEL);
    }
    c.wait("GOAWAY", |c| c.goaway.is_some());
    assert_eq!(c.goaway, Some(ENHANCE_YOUR_CALM));
    assert!(c.closed_by_server());
    let m = server.wait_metrics("the defence counted", |m| {
        m.get("sse_edge_h2_defences_total")
            .is_some_and(|&n| n >= 1.0)
    });
    assert_eq!(m["sse_edge_h2_defences_total"], 1.0);
    // Only the scrape's own connection is left.
    server.wait_metrics("its stream ended", |m| {
        m["sse_edge_clients"] == 0.0 && m["sse_edge_connections"] == 1.0
    });
}

#[test]
fn settings_never_acknowledged_end_with_settings_timeout() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut c = H2Client::connect_raw(server.addr);
    c.ack_settings = false;
    c.send_preface(&[]);
    c.wait("GOAWAY", |c| c.goaway.is_some());
    assert_eq!(c.goaway, Some(SETTINGS_TIMEOUT));
    assert!(c.closed_by_server());
    // A preface that never comes is a header timeout, as a request head that never comes.
    let mut silent = H2Client::connect_raw(server.addr);
    silent.ack_settings = false;
    silent.send(b"PRI * HTTP/2.0\r\n");
    assert!(silent.closed_by_server());
    let m = server.wait_metrics("both counted", |m| {
        m["sse_edge_h2_defences_total"] >= 1.0 && m["sse_edge_header_timeouts_total"] >= 1.0
    });
    assert_eq!(
        (
            m["sse_edge_h2_defences_total"],
            m["sse_edge_header_timeouts_total"]
        ),
        (1.0, 1.0)
    );
}

#[test]
fn with_http2_off_the_preface_is_not_served() {
    let server = Server::start(&["--http2", "off"]);
    let mut c = H2Client::connect_raw(server.addr);
    c.send_preface(&[]);
    assert!(c
        .read_frame(Duration::from_millis(500))
        .is_none_or(|f| f.header.kind != 4));
    assert!(!c.settings_seen);
    let m = server.metrics();
    assert_eq!(m["sse_edge_h2_connections_total"], 0.0);
}

#[test]
fn a_drain_sends_goaway_no_error_and_closes_the_streams() {
    let server = Server::start(&["--drain-timeout", "5"]);
    let mut c = H2Client::connect(server.addr, &[]);
    c.request(1, "GET", "/stream?topic=d", &[], true);
    c.body_until(1, "retry:");
    server.signal(libc::SIGTERM);
    c.wait("GOAWAY", |c| c.goaway.is_some());
    assert_eq!(c.goaway, Some(NO_ERROR));
    assert!(c.closed_by_server());
}

#[test]
fn streams_count_against_max_clients_and_the_connection_refuses_past_h2_max_streams() {
    let server = Server::start(&["--max-clients", "2"]);
    let mut c = H2Client::connect(server.addr, &[]);
    for id in [1, 3, 5] {
        c.request(id, "GET", "/stream?topic=q", &[], true);
    }
    // Two streams fit the node; the third is shed as over HTTP/1.1: 200, `: shed`, a long
    // `retry:`, and its stream ends.
    let shed = c.response(5);
    assert_eq!(shed.status(), 200);
    assert!(shed.text().contains(": shed\n"), "{}", shed.text());
    assert!(shed.text().contains("retry: "), "{}", shed.text());
    c.body_until(1, "retry:");
    c.body_until(3, "retry:");
    server.wait_metrics("two streams", |m| m["sse_edge_clients"] == 2.0);
    assert_eq!(c.goaway, None);
    // --h2-max-streams: a connection holding that many open streams has the next refused
    // by the frame layer with REFUSED_STREAM (a client may retry it).
    let server = Server::start(&["--h2-max-streams", "2"]);
    let mut c = H2Client::connect(server.addr, &[]);
    for id in [1, 3, 5] {
        c.request(id, "GET", "/stream?topic=q", &[], true);
    }
    c.wait("a refusal", |c| {
        c.streams.get(&5).is_some_and(|r| r.reset == Some(7))
    });
    c.body_until(1, "retry:");
    c.body_until(3, "retry:");
    server.wait_metrics("two streams", |m| m["sse_edge_clients"] == 2.0);
    assert_eq!(c.goaway, None);
}

#[test]
fn a_split_cookie_and_the_authorization_field_carry_tokens() {
    // An HS256 token for topic "secret", signed as tests/auth.rs signs them.
    let secret = "0123456789abcdef0123456789abcdef";
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({"exp": exp, "sse_edge": {"subscribe": ["secret"]}});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let server = Server::start(&["--subscribe-jwt", secret]);
    let mut c = H2Client::connect(server.addr, &[]);
    assert_eq!(c.get(1, "/stream?topic=secret").status(), 401);
    // HTTP/2 may split a cookie into several fields (RFC 9113 §8.2.3).
    let cookie = format!("sse_edge_token={token}");
    c.request(
        3,
        "GET",
        "/stream?topic=secret",
        &[("cookie", "theme=dark"), ("cookie", &cookie)],
        true,
    );
    c.body_until(3, "retry:");
    assert_eq!(c.streams[&3].status(), 200);
    let bearer = format!("Bearer {token}");
    c.request(
        5,
        "GET",
        "/stream?topic=secret",
        &[("authorization", &bearer)],
        true,
    );
    c.body_until(5, "retry:");
    assert_eq!(c.streams[&5].status(), 200);
}
