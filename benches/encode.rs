//! Frame encoding: one published body to the SSE bytes every subscriber shares.
//!
//! Runs once per event (not per client), so it bounds publish throughput, not fan-out.
//! Bodies from 16 B to 16 KiB, single-line and multi-line (every line becomes a `data:` line,
//! so the multi-line case is the worst case for the line splitter). Throughput is body bytes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sse_edge::wire::event_id::EventId;
use sse_edge::wire::sse::encode_event;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_event");
    for size in [16usize, 256, 1024, 4096, 16384] {
        let single: String = "x".repeat(size);
        let multi: String = (0..size)
            .map(|i| if i % 32 == 31 { '\n' } else { 'y' })
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("single_line", size), &single, |b, body| {
            b.iter(|| {
                encode_event(
                    std::hint::black_box(EventId::local(123_456)),
                    None,
                    Some("update"),
                    body,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("lines_of_32", size), &multi, |b, body| {
            b.iter(|| {
                encode_event(
                    std::hint::black_box(EventId::local(123_456)),
                    None,
                    None,
                    body,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
