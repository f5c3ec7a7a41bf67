//! One HTTP/2 connection as a hostile client drives it: arbitrary frames, split at arbitrary
//! points, after a well-formed preface and SETTINGS exchange. Asserts that nothing panics,
//! that the split input gives the events and output of the whole, and that the connection's
//! heap stays bounded (a frame in progress, a header block in progress, its streams, and
//! the output it queued). The output is taken only at the end, as control replies are
//! bounded per call of `recv` and the whole input is one call.
//!
//! The first byte says how many split points follow (0 to 7), each two bytes; the rest is
//! the frames.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_edge::wire::h2::conn::{Connection, Event, Limits};
use sse_edge::wire::h2::frame::PREFACE;

/// Preface, an empty SETTINGS, and the ACK of ours.
fn hello() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
    v
}

fn run(input: &[u8], cuts: &[usize], limits: &Limits) -> (Vec<Event>, Vec<u8>, bool) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut conn = Connection::new(limits);
    let mut events = Vec::new();
    let mut out = Vec::new();
    conn.recv(&hello(), 0, limits, &mut events)
        .expect("a well-formed hello");
    let mut from = 0;
    let mut failed = false;
    for to in cuts {
        let result = conn.recv(&input[from..to], 0, limits, &mut events);
        from = to;
        // A frame in progress, a block in progress, the stream entries, the HPACK table, and
        // the output (a Vec's capacity is at most twice its length past its first growth).
        let bound = 2 * 16_384 + limits.max_header_block as usize + 4096 + 100 * 64;
        let heap = conn.heap_bytes();
        assert!(
            heap <= bound + 2 * conn.output_len() + 64,
            "heap {heap} over its bound"
        );
        if result.is_err() {
            failed = true;
            break;
        }
    }
    if let Some(bytes) = conn.take_output() {
        out.extend_from_slice(&bytes);
    }
    (events, out, failed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8);
    let Some((cut_bytes, input)) = rest.split_at_checked(count * 2) else {
        return;
    };
    let cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    let limits = Limits::default();
    let whole = run(input, &[], &limits);
    let split = run(input, &cuts, &limits);
    assert_eq!(whole, split, "split input read differently");
});
