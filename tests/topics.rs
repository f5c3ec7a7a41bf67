//! Topics: isolated from each other, several on one stream, each event once.

mod util;

use util::{published_id, Server, SseClient};

#[test]
fn two_topics_are_isolated() {
    let server = Server::start(&[]);
    let mut news = server.stream("/stream?topic=news");
    let mut sport = server.stream("/stream?topic=sport");
    let n = published_id(&server.publish("?topic=news", b"n1"));
    let s = published_id(&server.publish("?topic=sport", b"s1"));
    let n2 = published_id(&server.publish("?topic=news", b"n2"));
    assert_eq!(
        (news.next_event().id, news.next_event().id),
        (Some(n.to_string()), Some(n2.to_string()))
    );
    assert_eq!(sport.next_event().id, Some(s.to_string()));
    // The sport stream's next event is the next sport event, not news.
    let s2 = published_id(&server.publish("?topic=sport", b"s2"));
    assert_eq!(sport.next_event().id, Some(s2.to_string()));
}

#[test]
fn one_stream_on_two_topics_gets_both_once_each() {
    let server = Server::start(&[]);
    // Names with characters a browser percent-encodes.
    let mut both = server.stream("/stream?topic=eu%2Fnews&topic=eu:sport&topic=eu%2Fnews");
    let mut default = server.stream("/stream");
    let ids: Vec<u64> = [
        "?topic=eu%2Fnews",
        "?topic=eu:sport",
        "?topic=other",
        "?topic=eu%2Fnews",
    ]
    .iter()
    .map(|q| published_id(&server.publish(q, q.as_bytes())))
    .collect();
    for want in [ids[0], ids[1], ids[3]] {
        assert_eq!(both.next_event().id, Some(want.to_string()));
    }
    let last = published_id(&server.publish("?topic=eu:sport", b"end"));
    assert_eq!(
        both.next_event().id,
        Some(last.to_string()),
        "nothing in between: each once"
    );
    // The default topic saw none of it.
    let d = published_id(&server.publish("", b"default"));
    assert_eq!(default.next_event().id, Some(d.to_string()));
}

#[test]
fn publish_answer_counts_subscribers_of_the_topic() {
    let server = Server::start(&[]);
    let _a: Vec<SseClient> = (0..3)
        .map(|_| server.stream("/stream?topic=a&topic=b"))
        .collect();
    let _b = server.stream("/stream?topic=b");
    server.wait_metrics("4 streams", |m| m["sse_edge_clients"] == 4.0);
    assert!(server
        .publish("?topic=a", b"x")
        .text()
        .contains("\"topic\":\"a\",\"clients\":3}"));
    assert!(server
        .publish("?topic=b", b"x")
        .text()
        .contains("\"clients\":4}"));
    assert!(server
        .publish("?topic=c", b"x")
        .text()
        .contains("\"clients\":0}"));
}

#[test]
fn too_many_topics_or_bad_names_are_400() {
    let server = Server::start(&[]);
    let many: String = (0..33).map(|i| format!("topic=t{i}&")).collect();
    let r = server.request(format!("GET /stream?{many} HTTP/1.1\r\n\r\n").as_bytes());
    assert_eq!(
        (r.status, r.text().trim()),
        (400, "at most 32 topics per stream")
    );
    let r = server.request(b"GET /stream?topic=a%20b HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    let long = "t".repeat(129);
    let r = server.request(format!("POST /broadcast?topic={long} HTTP/1.1\r\n\r\n").as_bytes());
    assert_eq!(r.status, 400);
}
