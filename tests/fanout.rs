//! One broadcast reaches every stream, once, in id order.

mod util;

use util::{published_id, Server, SseClient};

#[test]
fn thousand_streams_get_twenty_broadcasts_each_once_in_order() {
    let server = Server::start(&[]);
    let mut clients: Vec<SseClient> = (0..1000).map(|_| server.stream("/stream")).collect();
    server.wait_metrics("1000 streams", |m| m["sse_edge_clients"] == 1000.0);

    let ids: Vec<u64> = (0..20)
        .map(|i| published_id(&server.publish("", format!("event {i}").as_bytes())))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    for (n, client) in clients.iter_mut().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let e = client.next_event();
            assert_eq!(
                e.id.as_deref(),
                Some(id.to_string().as_str()),
                "client {n}, event {i}"
            );
            assert_eq!(e.data, format!("event {i}"), "client {n}");
        }
    }
    // Nothing more than the 20 (each once): the next thing a client sees is a fresh event.
    let marker = published_id(&server.publish("", b"marker"));
    for client in clients.iter_mut() {
        assert_eq!(client.next_event().id, Some(marker.to_string()));
    }
    let m = server.metrics();
    assert_eq!(m["sse_edge_frames_dropped_total"], 0.0);
    assert_eq!(m["sse_edge_frames_queued_total"], 21.0 * 1000.0);
}

#[test]
fn stream_response_matches_the_contract() {
    let server = Server::start(&["--retry-ms", "1000"]);
    let mut c = server.stream("/stream");
    for header in [
        "Content-Type: text/event-stream",
        "Cache-Control: no-cache",
        "Connection: keep-alive",
        "Access-Control-Allow-Origin: *",
        "X-Accel-Buffering: no",
    ] {
        assert!(c.head.contains(header), "missing {header} in {}", c.head);
    }
    assert!(!c.head.to_ascii_lowercase().contains("content-length"));
    assert!(!c.head.to_ascii_lowercase().contains("transfer-encoding"));
    published_id(&server.publish("?event=greeting", b"line one\r\nline two\rline three\n"));
    let e = c.next_event();
    assert_eq!(c.comments.first().map(String::as_str), Some("connected"));
    let retry = c.retry.expect("retry line");
    assert!(
        (500..1500).contains(&retry),
        "retry {retry} is base 1000 ±50 %"
    );
    assert_eq!(e.event.as_deref(), Some("greeting"));
    assert_eq!(e.data, "line one\nline two\nline three\n");
}

#[test]
fn retry_is_jittered_per_stream() {
    let server = Server::start(&["--retry-ms", "2000"]);
    let mut retries = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut c = server.stream("/stream");
        server.publish("", b"x");
        c.next_event();
        let r = c.retry.unwrap();
        assert!((1000..3000).contains(&r));
        retries.insert(r);
    }
    assert!(retries.len() > 5, "20 streams got only {retries:?}");
}

#[test]
fn forged_fields_in_a_body_stay_data() {
    let server = Server::start(&[]);
    let mut c = server.stream("/stream");
    let hostile = "a\n\nid: 999\nevent: admin\ndata: x\r\rretry: 1";
    let id = published_id(&server.publish("", hostile.as_bytes()));
    let e = c.next_event();
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!(e.event, None);
    assert_eq!(e.data, "a\n\nid: 999\nevent: admin\ndata: x\n\nretry: 1");
    assert_eq!(c.retry.map(|r| r > 1), Some(true));
}

#[test]
fn empty_body_gets_the_demo_message_and_ids_answer_json() {
    let server = Server::start(&[]);
    let mut c = server.stream("/stream");
    let r = server.publish("", b"");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.text();
    assert!(
        text.starts_with("{\"id\":\"1\",\"topic\":\"default\",\"clients\":1}"),
        "{text}"
    );
    let e = c.next_event();
    assert!(
        e.data.starts_with("Message from server at 20"),
        "{}",
        e.data
    );
    assert!(e.data.ends_with('Z'));
}
