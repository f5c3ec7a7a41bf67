//! Socket fan-out: one frame queued to N connected socket pairs and flushed with the server's
//! own `Outbox::write_to` (`writev` until empty or `WouldBlock`), N = 100 and 1000.
//!
//! This is the syscall half of a broadcast: one write per client per flush. The readers are
//! drained outside the timed section's hot loop (a read per client per iteration), so the
//! figure includes their cost too; the loadtest's CPU per delivery measures the server alone.
//! Throughput is clients (deliveries).

use std::io::Read;
use std::os::unix::net::UnixStream;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sse_edge::delivery::outbox::Outbox;
use sse_edge::wire::event_id::EventId;
use sse_edge::wire::sse::encode_event;

fn bench(c: &mut Criterion) {
    sse_edge::node::fdlimit::raise_to_hard_limit().expect("raise the open files limit");
    let mut group = c.benchmark_group("socket_fanout");
    let frame = encode_event(
        EventId::local(1),
        None,
        None,
        "a typical small event body of a few dozen bytes",
    );
    for n in [100usize, 1000] {
        let mut pairs: Vec<(UnixStream, UnixStream, Outbox)> = (0..n)
            .map(|_| {
                let (a, b) = UnixStream::pair().unwrap();
                a.set_nonblocking(true).unwrap();
                (a, b, Outbox::default())
            })
            .collect();
        let mut sink = vec![0u8; 4096];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                for (writer, _, outbox) in pairs.iter_mut() {
                    outbox.push_bounded(frame.clone(), 65536);
                    outbox.write_to(writer).unwrap();
                }
                for (_, reader, _) in pairs.iter_mut() {
                    let _ = reader.read(&mut sink).unwrap();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
