//! The HPACK decoder as a hostile peer drives it: a sequence of header blocks through one
//! decoder (its table carried from block to block, as on a connection). Asserts that nothing
//! panics, that a decoded list stays within its bound and the table within its size, and
//! that whatever decodes, encoded again by our encoder, decodes to the same list.
//!
//! The first two bytes are the list bound (little endian); the rest is a sequence of blocks,
//! each prefixed by its length (two bytes, little endian).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_edge::wire::h2::hpack::{self, Decoded, Decoder, HeaderList, DEFAULT_TABLE_SIZE};

fuzz_target!(|data: &[u8]| {
    let Some((bound, mut rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = u32::from(u16::from_le_bytes(*bound));
    let mut decoder = Decoder::default();
    let mut list = HeaderList::default();
    let mut again = HeaderList::default();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        let (block, tail) = tail.split_at(len);
        rest = tail;
        let result = decoder.decode(block, max, &mut list);
        assert!(decoder.table_size() <= DEFAULT_TABLE_SIZE as usize);
        match result {
            Err(_) => return, // a connection would end here
            Ok(Decoded::TooLarge) => assert!(list.is_empty()),
            Ok(Decoded::Complete) => {
                assert!(
                    list.size() <= max,
                    "list {} over its bound {max}",
                    list.size()
                );
                let mut encoded = Vec::new();
                for (i, (name, value)) in list.iter().enumerate() {
                    hpack::encode_field(name, value, i % 2 == 0, i % 3 == 0, &mut encoded);
                }
                let mut fresh = Decoder::default();
                assert_eq!(
                    fresh.decode(&encoded, max, &mut again),
                    Ok(Decoded::Complete)
                );
                assert_eq!(list, again, "re-encoded list read differently");
                assert!(!fresh.holds_table(), "our encoder indexed something");
            }
        }
    }
});
