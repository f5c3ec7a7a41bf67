//! Clients that vanish abruptly are removed at once, and the server keeps serving.

mod util;

use std::time::Duration;

use socket2::SockRef;
use util::{published_id, Server};

#[test]
fn five_hundred_resets_mid_stream_bring_the_count_back_to_zero() {
    let server = Server::start(&[]);
    let clients: Vec<_> = (0..500).map(|_| server.stream("/stream")).collect();
    server.wait_metrics("500 streams", |m| m["sse_edge_clients"] == 500.0);
    // Leave unread data in flight on every stream, then reset them all.
    for _ in 0..5 {
        published_id(&server.publish("", &[b'y'; 16 * 1024]));
    }
    for c in clients {
        SockRef::from(&c.sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // linger 0: close sends RST
    }
    let m = server.wait_metrics("all streams gone", |m| m["sse_edge_clients"] == 0.0);
    assert_eq!(m["sse_edge_streams_closed_total"], 500.0);
    // Only the metrics request's own connection is left.
    assert_eq!(m["sse_edge_connections"], 1.0);

    // Still serving: a new stream gets a new broadcast.
    let mut fresh = server.stream("/stream");
    let id = published_id(&server.publish("", b"after the storm"));
    let e = fresh.next_event();
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some(id.to_string()), "after the storm")
    );
}

#[test]
fn orderly_close_is_noticed_without_any_write() {
    let server = Server::start(&[]);
    let c = server.stream("/stream");
    server.wait_metrics("1 stream", |m| m["sse_edge_clients"] == 1.0);
    c.sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    server.wait_metrics("stream closed", |m| m["sse_edge_clients"] == 0.0);
}
