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
fn an_ipv4_mapped_network_in_the_allow_list_holds_ipv4_peers() {
    // The IPv6 spelling of 127.0.0.0/8; this test's peer connects over IPv4.
    let server = Server::start(&["--publish-allow", "::ffff:127.0.0.0/104"]);
    let mut witness = server.stream("/stream");
    assert_eq!(published_id(&post(&server, None)), 1);
    assert_eq!(witness.next_event().data, "x");
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
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let stream = server.stream("/stream");
    assert!(stream.head.contains("Access-Control-Allow-Origin: *"));
}

fn post_with(server: &Server, lines: &str) -> util::Response {
    server.request(
        format!("POST /broadcast HTTP/1.1\r\n{lines}Content-Length: 1\r\n\r\nx").as_bytes(),
    )
}

#[test]
fn browsers_and_proxies_cannot_borrow_a_loopback_address() {
    let server = Server::start(&[]);
    let mut witness = server.stream("/stream");
    let refused = [
        "Host: 127.0.0.1\r\nSec-Fetch-Site: cross-site\r\n",
        "Forwarded: for=192.0.2.1\r\n",
        "X-Forwarded-For: 192.0.2.1\r\n",
        "Via: 1.1 proxy\r\n",
        // nginx's and haproxy's usual client-address headers, and CDNs'.
        "X-Real-IP: 192.0.2.1\r\n",
        "X-Forwarded-Proto: http\r\n",
        "X-Forwarded-Host: app.example\r\n",
        "True-Client-IP: 192.0.2.1\r\n",
        "CF-Connecting-IP: 192.0.2.1\r\n",
        "X-Client-IP: 192.0.2.1\r\n",
        "Host: localhost:8080\r\nOrigin: http://evil.example\r\n",
        "Host: localhost:8080\r\nOrigin: https://localhost:8080\r\n",
        "Host: localhost:8080\r\nOrigin: http://localhost:9999\r\n",
        // DNS rebinding: the foreign name is in both Host and Origin.
        "Host: rebound.example:8080\r\nOrigin: http://rebound.example:8080\r\n",
        "Origin: null\r\n",
    ];
    for lines in refused {
        let r = post_with(&server, lines);
        assert_eq!(r.status, 403, "{lines:?}: {}", r.text());
        assert_eq!(r.text().lines().count(), 1);
        assert!(r.text().contains("--publish-token"), "{}", r.text());
    }
    // The page served at http://localhost:8080 (or an IP) publishes same-origin.
    let page_posts = [
        "Host: localhost:8080\r\nOrigin: http://localhost:8080\r\nSec-Fetch-Site: same-origin\r\n",
        "Host: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\nSec-Fetch-Site: same-origin\r\n",
        "Host: [::1]:8080\r\nOrigin: http://[::1]:8080\r\n",
    ];
    for (n, lines) in page_posts.iter().enumerate() {
        assert_eq!(published_id(&post_with(&server, lines)), n as u64 + 1);
        assert_eq!(witness.next_event().data, "x");
    }
    let m = server.metrics();
    assert_eq!(m["sse_edge_events_published_total"], 3.0);
    assert_eq!(m["sse_edge_rejected_requests_total"], refused.len() as f64);
}

#[test]
fn with_a_token_browser_headers_do_not_matter() {
    let server = Server::start(&["--publish-token", "s3cret"]);
    let r = post_with(
        &server,
        "Authorization: Bearer s3cret\r\nOrigin: https://app.example\r\nSec-Fetch-Site: cross-site\r\nX-Forwarded-For: 192.0.2.1\r\n",
    );
    assert_eq!(published_id(&r), 1);
}

#[test]
fn a_refused_publish_is_answered_from_its_head_without_waiting_for_the_body() {
    let server = Server::start(&["--publish-allow", "192.0.2.0/24"]);
    let mut conn = HttpConn::open(server.addr);
    // The body never comes: the answer must not wait for it.
    conn.send(b"POST /broadcast HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
    assert_eq!(conn.read_response().status, 403);
    // Its body, when it comes, is skipped; the connection goes on.
    conn.send(&[b'z'; 100]);
    conn.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(conn.read_response().status, 200);
}
