//! The per-client fan-out path allocates nothing: offering one shared frame to 10 000
//! streams, through the same `Topics`, `Stream::offer` and `Outbox` the shard uses, makes no
//! heap allocation, not even for the first event (the front frame is inline). So for a
//! stream carrying several topics, and for a lossy stream: nothing per dropped frame, and
//! once it has caught up nothing per event. Over TLS, a flush allocates only rustls's own
//! record buffer.

use std::time::{Duration, Instant};

use sse_edge::delivery::outbox::Outbox;
use sse_edge::delivery::stream::{Bounds, Lane, Offer, Stream};
use sse_edge::delivery::topics::{Subs, Topics};
use sse_edge::wire::event_id::EventId;
use sse_edge::wire::sse::encode_event;

#[path = "util/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn offering_a_frame_to_ten_thousand_streams_allocates_nothing() {
    let mut subs: Vec<(Stream, Outbox)> = (0..10_000)
        .map(|_| (Stream::new(Subs::One((0, 0)), None), Outbox::default()))
        .collect();
    let now = Instant::now();
    let mut sink = std::io::sink();
    let mut round = |id: u64| -> (u64, usize) {
        let frame = encode_event(EventId::local(id), None, None, "payload");
        let before = allocations();
        let mut queued = 0;
        for (stream, outbox) in subs.iter_mut() {
            let got = offer(stream, outbox, id, &frame, 65536, now);
            queued += usize::from(matches!(got, Offer::Queued(_)));
        }
        let during = allocations() - before;
        for (_, outbox) in subs.iter_mut() {
            outbox.write_to(&mut sink).unwrap();
        }
        (during, queued)
    };
    for id in 1..10 {
        assert_eq!(
            round(id),
            (0, 10_000),
            "event {id}: no allocation, every stream queued"
        );
    }
}

#[test]
fn a_stream_that_keeps_losing_frames_allocates_nothing_per_dropped_frame() {
    // Queues that nobody drains: after the first frames fill them, every offer is dropped
    // (and measured against its pending gap notice) without touching the allocator.
    let limit = 1024;
    let mut subs: Vec<(Stream, Outbox)> = (0..1_000)
        .map(|_| (Stream::new(Subs::One((0, 0)), None), Outbox::default()))
        .collect();
    let now = Instant::now();
    let frame = encode_event(EventId::local(1), None, None, &"x".repeat(600));
    // Warm up: the first frame fits, the second starts each stream's loss record.
    for id in 1..=2 {
        for (stream, outbox) in subs.iter_mut() {
            offer(stream, outbox, id, &frame, limit, now);
        }
    }
    let before = allocations();
    let mut dropped = 0;
    for id in 3..50 {
        for (stream, outbox) in subs.iter_mut() {
            let got = offer(stream, outbox, id, &frame, limit, now);
            dropped += usize::from(got == Offer::Dropped);
        }
    }
    assert_eq!(dropped, 47 * 1_000, "every later frame was dropped");
    assert_eq!(allocations() - before, 0, "no allocation per dropped frame");
}

#[test]
fn a_lossy_stream_allocates_its_notice_once_then_nothing_per_event() {
    let limit = 1024;
    let mut subs: Vec<(Stream, Outbox)> = (0..1_000)
        .map(|_| (Stream::new(Subs::One((0, 0)), None), Outbox::default()))
        .collect();
    let now = Instant::now();
    let mut sink = std::io::sink();
    let big = encode_event(EventId::local(1), None, None, &"x".repeat(600));
    let offer_all = |subs: &mut Vec<(Stream, Outbox)>, id: u64, frame: &bytes::Bytes| {
        subs.iter_mut()
            .map(|(stream, outbox)| offer(stream, outbox, id, frame, limit, now))
            .filter(|o| matches!(o, Offer::Queued(_)))
            .count()
    };
    // Two frames that do not fit together: each stream loses the second.
    offer_all(&mut subs, 1, &big);
    offer_all(&mut subs, 2, &big);
    for (stream, outbox) in subs.iter_mut() {
        outbox.write_to(&mut sink).unwrap();
        stream.on_drained(now);
    }
    // Caught up: the gap notice is encoded once per stream, and goes out with the frame.
    let small = encode_event(EventId::local(3), None, None, "small");
    let before = allocations();
    assert_eq!(offer_all(&mut subs, 3, &small), 1_000);
    let notices = allocations() - before;
    // Per stream, once: the notice's encoding (its text and buffer) and the queue behind the
    // front frame (its box and storage). Six today.
    assert!(
        (1_000..=6_000).contains(&notices),
        "a notice and a queue per stream, once: {notices}"
    );
    for (stream, outbox) in subs.iter_mut() {
        outbox.write_to(&mut sink).unwrap();
        stream.on_drained(now);
    }
    // From then on, nothing per event.
    for id in 4..20 {
        let frame = encode_event(EventId::local(id), None, None, "small");
        let before = allocations();
        assert_eq!(offer_all(&mut subs, id, &frame), 1_000);
        assert_eq!(allocations() - before, 0, "event {id}");
        for (stream, outbox) in subs.iter_mut() {
            outbox.write_to(&mut sink).unwrap();
            stream.on_drained(now);
        }
    }
}

#[test]
fn streams_on_several_topics_are_found_and_fed_without_allocating() {
    // 5 000 streams, each on the same three topics, as the shard holds them: one topic index,
    // dense subscriber lists, a subscription of three memberships per stream.
    let names: Vec<std::sync::Arc<str>> = ["a", "b", "c"].map(std::sync::Arc::from).to_vec();
    let mut topics = Topics::default();
    let mut streams: Vec<(Stream, Outbox)> = (0..5_000)
        .map(|key| {
            let subs = names.iter().map(|n| topics.join(n.clone(), key)).collect();
            (Stream::new(Subs::new(subs), None), Outbox::default())
        })
        .collect();
    let now = Instant::now();
    let mut sink = std::io::sink();
    for id in 1..30u64 {
        let topic = &names[(id % 3) as usize];
        let frame = encode_event(EventId::local(id), None, None, "payload");
        let before = allocations();
        let mut queued = 0;
        for key in topics.subscribers(topic) {
            let (stream, outbox) = &mut streams[key];
            let got = offer(stream, outbox, id, &frame, 65536, now);
            queued += usize::from(matches!(got, Offer::Queued(_)));
        }
        assert_eq!((allocations() - before, queued), (0, 5_000), "event {id}");
        for (_, outbox) in streams.iter_mut() {
            outbox.write_to(&mut sink).unwrap();
        }
    }
}

/// Offers event `id`'s `frame` to one stream, as the fan-out does (no slow-client limit).
fn offer(
    stream: &mut Stream,
    outbox: &mut Outbox,
    id: u64,
    frame: &bytes::Bytes,
    limit: usize,
    now: Instant,
) -> Offer {
    stream.offer(
        &mut Lane::alone(outbox),
        EventId::local(id),
        None,
        frame,
        Bounds::both(limit),
        now,
        Duration::MAX,
    )
}

/// A socket stand-in: reads what was written to it, `WouldBlock` when empty.
#[derive(Default)]
struct Pipe(std::collections::VecDeque<u8>);

impl std::io::Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        std::io::Read::read(&mut self.0, buf)
    }
}

impl std::io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn encrypting_a_frame_for_a_tls_stream_allocates_nothing() {
    use sse_edge::node::tls::{Certificate, Scratch, Session, TlsRead};
    use std::sync::Arc;

    let dir = std::env::temp_dir().join(format!("sse-edge-alloc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("c.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), made.signing_key.serialize_pem()).unwrap();
    let certificate = Certificate::load(&dir.join("c.pem"), &dir.join("k.pem"), false).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut session = Session::new(&certificate).unwrap();
    let mut scratch = Scratch::new(true);
    let mut read_buf = vec![0u8; 16 * 1024];
    let mut outbox = Outbox::default();
    let (mut to_server, mut to_client) = (Pipe::default(), Pipe::default());
    // The handshake, in memory.
    for _ in 0..10 {
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let read = session.read(&mut to_server, &mut read_buf, |_| {});
        assert!(
            matches!(read, TlsRead::WouldBlock | TlsRead::Data),
            "{read:?}"
        );
        session
            .flush(&mut to_client, &mut outbox, &mut scratch)
            .unwrap();
        if !to_client.0.is_empty() {
            client.read_tls(&mut to_client).unwrap();
            client.process_new_packets().unwrap();
        }
        if !session.handshaking() && !client.is_handshaking() {
            break;
        }
    }
    assert!(!session.handshaking(), "the handshake completed");

    let frame = encode_event(EventId::local(1), None, None, "payload of an event");
    let mut flush = |frames: usize| {
        for _ in 0..frames {
            outbox.push(frame.clone());
        }
        let before = allocations();
        session
            .flush(&mut std::io::sink(), &mut outbox, &mut scratch)
            .unwrap();
        assert!(outbox.is_empty());
        allocations() - before
    };
    flush(1); // the session tickets rustls sends after the handshake go out with the first
              // rustls 0.23 encrypts into a buffer of its own, one per record, and copies it into ours:
              // that one allocation per record is all; the edge's path (gathering the frames, the
              // shard's scratch, the write) adds none, and frames queued together share one record.
    for round in 0..8 {
        assert_eq!(flush(1), 1, "flush {round} of one frame");
        assert_eq!(flush(5), 1, "flush {round} of five frames: one record");
    }
}

/// One HTTP/2 connection of the fan-out test: its protocol state, its outbox, and its
/// streams (the stream, its lane's flags, its id).
struct H2Conn {
    conn: sse_edge::wire::h2::conn::Connection,
    outbox: Outbox,
    streams: Vec<(Stream, std::cell::Cell<u8>, u32)>,
}

/// A server-side connection whose peer opened `streams` streams (ids 1, 3, …) and gave every
/// window its largest size.
fn h2_connection(streams: u32) -> H2Conn {
    use sse_edge::wire::h2::conn::{Connection, Limits};
    use sse_edge::wire::h2::frame::{self, setting, MAX_WINDOW, PREFACE};
    use sse_edge::wire::h2::hpack;
    let limits = Limits::default();
    let mut conn = Connection::new(&limits);
    let mut input = PREFACE.to_vec();
    frame::write_settings(&[(setting::INITIAL_WINDOW_SIZE, MAX_WINDOW)], &mut input);
    frame::write_window_update(0, MAX_WINDOW - 65_535, &mut input);
    frame::write_settings_ack(&mut input);
    for i in 0..streams {
        let mut block = Vec::new();
        if i == 0 {
            hpack::encode_size_update(0, &mut block);
        }
        for (n, v) in [
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"http"),
            (b":path", b"/stream"),
            (b":authority", b"t"),
        ] {
            hpack::encode_field(n, v, false, false, &mut block);
        }
        frame::write_headers(1 + 2 * i, &block, true, 16_384, &mut input);
    }
    let mut events = Vec::new();
    conn.recv(&input, 0, &limits, &mut events).unwrap();
    let _ = conn.take_output();
    H2Conn {
        conn,
        outbox: Outbox::default(),
        streams: (0..streams)
            .map(|i| {
                let s = Stream::new(Subs::One((0, 0)), None);
                (s, std::cell::Cell::new(0), 1 + 2 * i)
            })
            .collect(),
    }
}

/// Offers one event of `size` bytes to every stream of `conns` through HTTP/2 lanes; returns
/// the allocations the offers made and the streams that queued it. The bytes written are
/// checked to be DATA frames of at most 16 KiB carrying the event.
fn h2_round(
    conns: &mut [H2Conn],
    headers: &mut sse_edge::delivery::data::DataHeaders,
    id: u64,
    size: usize,
) -> (u64, usize) {
    use sse_edge::delivery::stream::H2Way;
    let text = "p".repeat(size);
    let frame = encode_event(EventId::local(id), None, None, &text);
    let now = Instant::now();
    headers.prepare(&frame);
    let before = allocations();
    let mut queued = 0;
    for c in conns.iter_mut() {
        let siblings = c.streams.len();
        for (stream, flags, sid) in c.streams.iter_mut() {
            let way = H2Way {
                conn: &mut c.conn,
                id: *sid,
                headers,
                flags,
                siblings,
            };
            let mut lane = Lane::h2(&mut c.outbox, way);
            let got = stream.offer(
                &mut lane,
                EventId::local(id),
                None,
                &frame,
                Bounds::both(1 << 20),
                now,
                Duration::from_secs(30),
            );
            queued += usize::from(matches!(got, Offer::Queued(_)));
        }
    }
    let during = allocations() - before;
    headers.finish();
    for c in conns.iter_mut() {
        let mut wire = Vec::new();
        c.outbox.write_to(&mut wire).unwrap();
        // DATA frames of at most 16 KiB, per stream in turn, carrying the event whole.
        let mut at = 0;
        let mut per_stream: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        while at < wire.len() {
            let len = u32::from_be_bytes([0, wire[at], wire[at + 1], wire[at + 2]]) as usize;
            assert_eq!(wire[at + 3], 0, "a DATA frame");
            assert!(len <= 16_384, "a frame of {len} bytes");
            let sid = u32::from_be_bytes(wire[at + 5..at + 9].try_into().unwrap());
            per_stream
                .entry(sid)
                .or_default()
                .extend_from_slice(&wire[at + 9..at + 9 + len]);
            at += 9 + len;
        }
        assert_eq!(per_stream.len(), c.streams.len());
        assert!(per_stream.values().all(|p| p[..] == frame[..]));
    }
    (during, queued)
}

#[test]
fn offering_a_frame_to_http2_streams_allocates_once_per_delivery_not_per_stream() {
    let mut headers = sse_edge::delivery::data::DataHeaders::default();
    // The hard case: 10 000 connections of one stream each (stream 1: its frame is baked
    // once per delivery, headers and payload, so its outbox holds one frame inline).
    let mut single: Vec<H2Conn> = (0..10_000).map(|_| h2_connection(1)).collect();
    // Many streams per connection: 100 connections of 100 streams each.
    let mut shared: Vec<H2Conn> = (0..100).map(|_| h2_connection(100)).collect();
    // Each outbox grows its queue to the most frames one delivery leaves it (two per stream
    // per 16 KiB: header and payload) once, as an HTTP/1.1 outbox does for a burst.
    h2_round(&mut shared, &mut headers, 1, 40 * 1024);
    for (id, size) in [(2, 100), (3, 100), (4, 40 * 1024), (5, 100)] {
        let (during, queued) = h2_round(&mut single, &mut headers, id, size);
        assert_eq!(queued, 10_000);
        // A buffer and, at its first clone, its shared count: per delivery, not per stream.
        assert!(
            during <= 2,
            "event {id} ({size} B) to 10 000 single-stream connections: {during} allocations"
        );
        let (during, queued) = h2_round(&mut shared, &mut headers, id, size);
        assert_eq!(queued, 10_000);
        // Stream 1's baked frame and the headers of the other ids, once each.
        assert!(
            during <= 4,
            "event {id} ({size} B) to 100 x 100 streams: {during} allocations"
        );
    }
}
