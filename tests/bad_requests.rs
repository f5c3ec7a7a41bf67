//! Every bad input gets its status and a one-line reason, and the server keeps serving.

mod util;

use std::io::Write;
use std::time::Duration;

use util::{published_id, HttpConn, Server};

fn status_and_reason(server: &Server, raw: &[u8]) -> (u16, String) {
    let r = server.request(raw);
    let text = r.text();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "one-line reason: {text:?}"
    );
    (r.status, text)
}

#[test]
fn each_bad_request_gets_its_status_while_a_stream_keeps_flowing() {
    let server = Server::start(&["--max-body", "1024"]);
    let mut witness = server.stream("/stream");

    let mut big_head = b"GET /stream HTTP/1.1\r\nX-Pad: ".to_vec();
    big_head.resize(9000, b'a');
    big_head.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x16\x03\x01 hello\r\n\r\n".to_vec(), 400),
        ("bad header line", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(), 400),
        ("bad topic", b"POST /broadcast?topic=a%20b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".to_vec(), 400),
        ("bad stream topic", b"GET /stream?topic=%0A HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("bad event name", b"POST /broadcast?event=a/b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".to_vec(), 400),
        ("invalid utf-8", b"POST /broadcast HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xc3\x28".to_vec(), 400),
        (
            "length and chunked",
            b"POST /broadcast HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("bad chunk", b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), 400),
        ("unknown path", b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        ("wrong method", b"GET /broadcast HTTP/1.1\r\n\r\n".to_vec(), 405),
        ("other method", b"DELETE /stream HTTP/1.1\r\n\r\n".to_vec(), 405),
        ("body too large", b"POST /broadcast HTTP/1.1\r\nContent-Length: 1025\r\n\r\n".to_vec(), 413),
        (
            "chunked too large",
            [&b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n"[..], &[b'z'; 1025], b"\r\n0\r\n\r\n"].concat(),
            413,
        ),
        ("head too large", big_head, 431),
    ];
    for (name, raw, expected) in &cases {
        let (status, reason) = status_and_reason(&server, raw);
        assert_eq!(status, *expected, "{name}: {reason}");
    }

    let wrong = server.request(b"POST /stream HTTP/1.1\r\n\r\n");
    assert_eq!(wrong.header("allow"), Some("GET, OPTIONS"));
    let wrong = server.request(b"GET /broadcast HTTP/1.1\r\n\r\n");
    assert_eq!(wrong.header("allow"), Some("POST, OPTIONS"));

    // None of that published anything or disturbed the stream.
    let id = published_id(&server.publish("", b"still here"));
    assert_eq!(id, 1);
    assert_eq!(witness.next_event().data, "still here");
    let m = server.metrics();
    assert_eq!(
        m["sse_edge_rejected_requests_total"],
        cases.len() as f64 + 2.0
    );
    assert_eq!(m["sse_edge_clients"], 1.0);
}

#[test]
fn semantic_errors_keep_the_connection_framing_errors_close_it() {
    let server = Server::start(&[]);
    let mut conn = HttpConn::open(server.addr);
    conn.send(b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(conn.read_response().status, 404);
    assert_eq!(conn.publish("?event=bad/name", b"x").status, 400);
    assert_eq!(published_id(&conn.publish("", b"ok")), 1);
    conn.send(b"POST /broadcast HTTP/1.1\r\nContent-Length: x\r\n\r\n");
    let r = conn.read_response();
    assert_eq!((r.status, r.header("connection")), (400, Some("close")));
    assert!(
        conn.try_read_response().is_none(),
        "closed after a framing error"
    );
}

#[test]
fn an_incomplete_head_is_closed_after_the_header_timeout() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut slow = HttpConn::open(server.addr);
    slow.send(b"GET /stream HTTP/1.1\r\nHost: slow");
    let mut idle = HttpConn::open(server.addr);
    // Both are closed by the server (reads end with EOF well within the 30 s patience).
    assert!(slow.try_read_response().is_none());
    assert!(idle.try_read_response().is_none());
    let m = server.metrics();
    assert_eq!(m["sse_edge_header_timeouts_total"], 2.0);
    // A stream, once its head is in, is not subject to the header timeout.
    let mut stream = server.stream("/stream");
    std::thread::sleep(Duration::from_millis(1500));
    published_id(&server.publish("", b"alive"));
    assert_eq!(stream.next_event().data, "alive");
    let _ = slow.sock.write_all(b"\r\n\r\n");
}

#[test]
fn page_health_and_preflight() {
    let server = Server::start(&[]);
    let page = server.request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("EventSource"));
    assert!(!page.text().contains("://cdn"), "self-contained page");
    assert_eq!(
        page.header("content-security-policy"),
        Some("frame-ancestors 'none'")
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let health = server.request(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let pre = server.request(b"OPTIONS /stream HTTP/1.1\r\nOrigin: http://a.example\r\nAccess-Control-Request-Method: GET\r\n\r\n");
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(pre
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Last-Event-ID"));
}

#[test]
fn framing_a_proxy_could_read_differently_is_400_with_a_reason() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");
    let cases: &[(&str, &[u8])] = &[
        ("TE on HTTP/1.0", b"POST /broadcast HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bare LF", b"GET /healthz HTTP/1.1\nHost: a\n\n"),
        ("obs-fold", b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n"),
        ("trailer", b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n"),
        ("CL list", b"POST /broadcast HTTP/1.1\r\nContent-Length: 1,1\r\n\r\nx"),
        ("TE list", b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk extension", b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a b\r\nx\r\n0\r\n\r\n"),
    ];
    for (name, raw) in cases {
        let (status, reason) = status_and_reason(&server, raw);
        assert_eq!(status, 400, "{name}: {reason}");
    }
    published_id(&server.publish("", b"after"));
    assert_eq!(witness.next_event().data, "after");
}

#[test]
fn continue_goes_only_to_accepted_http_1_1_heads() {
    let server = Server::start(&["--publish-allow", "192.0.2.0/24"]);
    // Refused from its head: the final answer comes at once, no 100, and the connection
    // closes because the client may never send the body it announced.
    let mut refused = HttpConn::open(server.addr);
    refused.send(b"POST /broadcast HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    let r = refused.read_response();
    assert_eq!((r.status, r.header("connection")), (403, Some("close")));
    assert!(refused.try_read_response().is_none());

    let server = Server::start(&[]);
    let mut accepted = HttpConn::open(server.addr);
    accepted.send(b"POST /broadcast HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(accepted.read_response().status, 100);
    accepted.send(b"abc");
    assert_eq!(published_id(&accepted.read_response()), 1);
    // HTTP/1.0 does not know 100 Continue: the first answer is the final one.
    let mut old = HttpConn::open(server.addr);
    old.send(b"POST /broadcast HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    old.send(b"abc");
    assert_eq!(published_id(&old.read_response()), 2);
}

#[test]
fn a_404_or_405_with_a_body_is_answered_from_the_head_and_the_body_skipped() {
    let server = Server::start(&[]);
    let mut conn = HttpConn::open(server.addr);
    conn.send(b"POST /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(conn.read_response().status, 404);
    conn.send(b"12345GET /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let r = conn.read_response();
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    conn.send(b"3\r\nabc\r\n0\r\n\r\n");
    assert_eq!(published_id(&conn.publish("", b"next")), 1);
}
