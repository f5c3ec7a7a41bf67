//! The per-client fan-out path allocates nothing: offering one shared frame to 10 000
//! streams, through the same `Stream::offer` and `Outbox` the shard uses, makes no heap
//! allocation once the queues have their capacity.

use std::time::{Duration, Instant};

use sse_edge::event_id::EventId;
use sse_edge::outbox::Outbox;
use sse_edge::sse::encode_event;
use sse_edge::stream::{Offer, Stream};

#[path = "util/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn offering_a_frame_to_ten_thousand_streams_allocates_nothing() {
    let mut subs: Vec<(Stream, Outbox)> = (0..10_000)
        .map(|_| (Stream::new(Box::new([(0, 0)]), None), Outbox::default()))
        .collect();
    let now = Instant::now();
    let mut sink = std::io::sink();
    let mut round = |id: u64| -> (u64, usize) {
        let frame = encode_event(EventId::local(id), None, None, "payload");
        let before = allocations();
        let mut queued = 0;
        for (stream, outbox) in subs.iter_mut() {
            let offer = stream.offer(
                outbox,
                EventId::local(id),
                None,
                &frame,
                65536,
                now,
                Duration::MAX,
            );
            queued += usize::from(matches!(offer, Offer::Queued(_)));
        }
        let during = allocations() - before;
        for (_, outbox) in subs.iter_mut() {
            outbox.write_to(&mut sink).unwrap();
        }
        (during, queued)
    };
    let (warm_up, _) = round(1);
    assert!(
        warm_up >= 10_000,
        "the first round gives each queue its capacity"
    );
    for id in 2..10 {
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
        .map(|_| (Stream::new(Box::new([(0, 0)]), None), Outbox::default()))
        .collect();
    let now = Instant::now();
    let frame = encode_event(EventId::local(1), None, None, &"x".repeat(600));
    // Warm up: the first frame fits, the second starts each stream's loss record.
    for id in 1..=2 {
        for (stream, outbox) in subs.iter_mut() {
            stream.offer(
                outbox,
                EventId::local(id),
                None,
                &frame,
                limit,
                now,
                Duration::MAX,
            );
        }
    }
    let before = allocations();
    let mut dropped = 0;
    for id in 3..50 {
        for (stream, outbox) in subs.iter_mut() {
            let offer = stream.offer(
                outbox,
                EventId::local(id),
                None,
                &frame,
                limit,
                now,
                Duration::MAX,
            );
            dropped += usize::from(offer == Offer::Dropped);
        }
    }
    assert_eq!(dropped, 47 * 1_000, "every later frame was dropped");
    assert_eq!(allocations() - before, 0, "no allocation per dropped frame");
}
