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

criterion_group!(benches, bench);
criterion_main!(benches);
