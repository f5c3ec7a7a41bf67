//! Who may publish: a bearer token when configured, else only allowed peers. Subscribing is
//! open; cross-origin pages are not invited to publish.

mod util;

use util::{published_id, HttpConn, Server};

fn post(server: &Server, auth: Option<&str>) -> util::Response {
    let header = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    server.request(
        format!("POST /broadcast HTTP/1.1\r\nContent-Length: 1\r\n{header}\r\nx").as_bytes(),
    )
}

#[test]
fn a_token_is_required_when_configured() {
    let server = Server::start(&["--publish-token", "s3cret"]);
    let mut stream = server.stream("/stream"); // subscribing needs nothing
    let missing = post(&server, None);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(post(&server, Some("Bearer wrong")).status, 403);
    assert_eq!(post(&server, Some("Basic czNjcmV0")).status, 401);
    let ok = post(&server, Some("Bearer s3cret"));
    assert_eq!(published_id(&ok), 1);
    assert_eq!(stream.next_event().data, "x");
    let m = server.metrics();
    assert_eq!(m["sse_edge_rejected_requests_total"], 3.0);
    assert_eq!(m["sse_edge_events_published_total"], 1.0);
}

#[test]
fn without_a_token_peers_outside_the_allow_list_are_refused() {
    // Loopback is the default allow-list; a list without it makes this test's peer a
    // stranger, as a remote publisher would be.
    let server = Server::start(&["--publish-allow", "192.0.2.0/24,2001:db8::/32"]);
    let r = post(&server, None);
    assert_eq!(r.status, 403);
    assert!(r.text().contains("not allowed from this address"));
    // A rejected publish keeps the connection usable (its body was read).
    let mut conn = HttpConn::open(server.addr);
    assert_eq!(conn.publish("", b"x").status, 403);
    assert_eq!(conn.publish("", b"y").status, 403);
    let _ = server.stream("/stream");
}

#[test]
fn loopback_publishes_by_default() {
    let server = Server::start(&[]);
    assert_eq!(published_id(&post(&server, None)), 1);
}

#[test]
fn cors_invites_reading_streams_not_publishing() {
    let server = Server::start(&[]);
    let pre = server.request(
        b"OPTIONS /broadcast HTTP/1.1\r\nOrigin: https://elsewhere.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    );
    assert_eq!(pre.status, 204);
    assert!(!pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let answer = server.request(b"POST /broadcast HTTP/1.1\r\nOrigin: https://elsewhere.example\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "a cross-origin page cannot read it"
    );
    let stream = server.stream("/stream");
    assert!(stream.head.contains("Access-Control-Allow-Origin: *"));
}
