//! The new process's side of a hand-over as a hostile predecessor drives it: arbitrary
//! messages through the decoder and, in the order they come, through the judge of what is
//! taken (`handover::intake`). Asserts that nothing panics, that whatever decodes encodes
//! back to the same bytes, and that a history part that is taken can be cut again into
//! parts that add up to it.
//!
//! The input is a sequence of messages, each prefixed by its length (two bytes, little
//! endian).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_edge::node::handover::intake::{self, Intake, Limits};
use sse_edge::node::handover::wire::{plan_history, Message};

const LIMITS: Limits = Limits {
    history_bytes: 64 << 10,
    max_streams: 100,
    max_connections: 100,
};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut intake: Option<Intake> = None;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let Ok(message) = Message::decode(bytes) else {
            continue;
        };
        assert_eq!(message.encode(), bytes, "{} encodes back", message.name());
        match message {
            Message::Offer(offer) => {
                let _ = intake::offer(&LIMITS, &offer);
            }
            Message::State(state) => intake = Intake::new(&LIMITS, &state).ok(),
            Message::History(part) => {
                let Some(taking) = intake.as_mut() else {
                    continue;
                };
                let len = part.encoded_len();
                let Ok(image) = taking.history(part) else {
                    continue;
                };
                let plan =
                    plan_history(&image, 4096, len.max(4096)).expect("a part fits its own size");
                let frames: usize = (0..plan.parts())
                    .map(|i| plan.part(&image, i).frames.len())
                    .sum();
                assert_eq!(frames, image.frames.len());
            }
            Message::Connections(mut records) => {
                if let Some(taking) = intake.as_mut() {
                    let _ = taking.connections(&mut records);
                }
            }
            Message::End => {
                if let Some(taking) = &intake {
                    let _ = taking.end();
                }
            }
            _ => {}
        }
    }
});
