//! Fan-out enqueue: one shared frame offered to N in-memory streams, through the very code the
//! shard runs per subscriber (`Stream::offer` into a bounded `Outbox`), N = 1k, 10k, 100k.
//!
//! This is the per-client part of a broadcast that is not a syscall: a refcount bump and a
//! queue push. Throughput is clients, so the report reads as clients per second (the inverse
//! is ns per client). A counting allocator checks it allocates nothing per client once queues
//! have their capacity; the count is printed after the run (`allocations per client`), and
//! `tests/fanout_allocations.rs` asserts it is zero.

use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sse_edge::delivery::outbox::Outbox;
use sse_edge::delivery::stream::{Bounds, Lane, Stream};
use sse_edge::delivery::topics::Subs;
use sse_edge::wire::event_id::EventId;
use sse_edge::wire::sse::encode_event;

#[path = "../tests/util/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Subscriber {
    stream: Stream,
    outbox: Outbox,
}

/// One broadcast into every subscriber, then the queues emptied as a flush would.
fn broadcast(subs: &mut [Subscriber], id: u64, frame: &Bytes, now: Instant) -> usize {
    let mut queued = 0;
    for s in subs.iter_mut() {
        let offer = s.stream.offer(
            &mut Lane::alone(&mut s.outbox),
            EventId::local(id),
            None,
            frame,
            Bounds::both(65536),
            now,
            std::time::Duration::MAX,
        );
        queued += matches!(offer, sse_edge::delivery::stream::Offer::Queued(_)) as usize;
    }
    for s in subs.iter_mut() {
        s.outbox.write_to(&mut std::io::sink()).unwrap();
    }
    queued
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_enqueue");
    let frame = encode_event(
        EventId::local(1),
        None,
        None,
        "a typical small event body of a few dozen bytes",
    );
    let now = Instant::now();
    for n in [1_000usize, 10_000, 100_000] {
        let mut subs: Vec<Subscriber> = (0..n)
            .map(|_| Subscriber {
                stream: Stream::new(Subs::One((0, 0)), None),
                outbox: Outbox::default(),
            })
            .collect();
        let mut id = 1;
        broadcast(&mut subs, id, &frame, now); // warm-up: queues take their capacity
        let before = allocations();
        id += 1;
        broadcast(&mut subs, id, &frame, now);
        let per_client = (allocations() - before) as f64 / n as f64;
        eprintln!("fanout_enqueue/{n}: allocations per client per event: {per_client}");

        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                id += 1;
                broadcast(&mut subs, id, &frame, now)
            })
        });
    }
    group.finish();
}

/// One HTTP/2 connection: its protocol state, its outbox, its streams (stream, lane flags, id).
struct H2Subscriber {
    conn: sse_edge::wire::h2::conn::Connection,
    outbox: Outbox,
    streams: Vec<(Stream, std::cell::Cell<u8>, u32)>,
}

/// A server-side connection whose peer opened `streams` streams with the largest windows.
fn h2_connection(streams: u32) -> H2Subscriber {
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
    conn.recv(&input, 0, &limits, &mut Vec::new()).unwrap();
    let _ = conn.take_output();
    H2Subscriber {
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

/// One broadcast into every HTTP/2 stream (the delivery's DATA headers prepared once), then
/// the queues emptied as a flush would. Windows are given back so they never close.
fn broadcast_h2(
    conns: &mut [H2Subscriber],
    headers: &mut sse_edge::delivery::data::DataHeaders,
    id: u64,
    frame: &Bytes,
    now: Instant,
) -> usize {
    use sse_edge::delivery::stream::H2Way;
    let mut queued = 0;
    headers.prepare(frame);
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
            let offer = stream.offer(
                &mut Lane::h2(&mut c.outbox, way),
                EventId::local(id),
                None,
                frame,
                Bounds::both(65536),
                now,
                std::time::Duration::MAX,
            );
            queued += matches!(offer, sse_edge::delivery::stream::Offer::Queued(_)) as usize;
        }
    }
    headers.finish();
    for c in conns.iter_mut() {
        c.outbox.write_to(&mut std::io::sink()).unwrap();
    }
    queued
}

/// The same fan-out over HTTP/2: 10 000 streams, 1, 10 and 100 to a connection.
fn bench_h2(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_enqueue_h2");
    let frame = encode_event(
        EventId::local(1),
        None,
        None,
        "a typical small event body of a few dozen bytes",
    );
    let now = Instant::now();
    let mut headers = sse_edge::delivery::data::DataHeaders::default();
    for per_conn in [1u32, 10, 100] {
        let conns = 10_000 / per_conn as usize;
        let mut subs: Vec<H2Subscriber> = (0..conns).map(|_| h2_connection(per_conn)).collect();
        let mut id = 1;
        broadcast_h2(&mut subs, &mut headers, id, &frame, now);
        group.throughput(Throughput::Elements(10_000));
        group.bench_function(BenchmarkId::new("streams_per_connection", per_conn), |b| {
            // The windows are the largest allowed (2^31 - 1): they hold millions of these
            // events per stream, so they never close during a measure.
            b.iter(|| {
                id += 1;
                broadcast_h2(&mut subs, &mut headers, id, &frame, now)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_h2);
criterion_main!(benches);
