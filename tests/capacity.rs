//! At `--max-clients`, a new stream is shed (200, `: shed`, a long retry, closed), never
//! refused with a status a browser would treat as final; it comes back after its retry.

mod util;

use std::time::Duration;

use util::{Server, SseClient};

#[test]
fn beyond_max_clients_a_stream_is_shed_and_comes_back_after_retry() {
    let server = Server::start(&["--max-clients", "3", "--retry-ms", "100"]);
    let mut live: Vec<SseClient> = (0..3).map(|_| server.stream("/stream")).collect();
    server.wait_metrics("3 streams", |m| m["sse_edge_clients"] == 3.0);

    let mut shed = server.stream("/stream");
    assert!(
        shed.head.contains("Content-Type: text/event-stream"),
        "{}",
        shed.head
    );
    assert!(shed.try_next_event().is_none(), "closed at once, no events");
    assert_eq!(shed.comments, vec!["shed"]);
    let retry = shed.retry.expect("a retry hint");
    assert!((500..1500).contains(&retry), "long and jittered: {retry}");

    // The node stays healthy and counted it.
    let m = server.metrics();
    assert_eq!(
        (m["sse_edge_shed_total"], m["sse_edge_clients"]),
        (1.0, 3.0)
    );
    assert_eq!(server.request(b"GET /healthz HTTP/1.1\r\n\r\n").status, 200);

    // A slot frees; the shed client waits its retry, as a browser does, and is served.
    drop(live.pop());
    server.wait_metrics("a slot free", |m| m["sse_edge_clients"] == 2.0);
    std::thread::sleep(Duration::from_millis(retry));
    let mut back = server.stream("/stream");
    server.publish("", b"welcome back");
    assert_eq!(back.next_event().data, "welcome back");
    assert!(back.comments.contains(&"connected".to_owned()));
}
