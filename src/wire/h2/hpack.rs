//! HPACK (RFC 7541): the decoder for request heads and a stateless encoder for response heads.
//!
//! The edge advertises `SETTINGS_HEADER_TABLE_SIZE` 0, so once the peer has acknowledged it the
//! decoder keeps no dynamic table at all (§4.2: the peer must then open its next block with a
//! size update to 0). Before that, a first request may still use the default 4 096 bytes, so the
//! table is real and its entries are evicted as the RFC says. Every decoded header list is
//! bounded (`max_list_size`, counted as RFC 9113 §6.5.2 counts it): an HPACK bomb (one byte
//! that names a 4 KiB table entry, repeated) stops at the bound, while the rest of the block is
//! still walked so the table stays in step with the peer's.
//!
//! The encoder never indexes: a response head is a handful of fields, mostly fixed, and an
//! encoder table would be per-connection memory for no gain.

use std::collections::VecDeque;

use super::huffman;

/// Bytes the RFC adds to each entry's name and value when sizing a table or a header list.
pub const ENTRY_OVERHEAD: u32 = 32;

/// The dynamic table size a peer may use before it has acknowledged ours (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: u32 = 4096;

/// Size updates allowed at the start of one block. Two express "shrink then grow" (§4.2);
/// more would only be a way to spend our CPU on bytes that decode to nothing.
const MAX_SIZE_UPDATES_PER_BLOCK: u8 = 2;

/// The static table (Appendix A); index 1 is the first entry.
pub const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Why a header block could not be decoded: each is a COMPRESSION_ERROR (RFC 9113 §4.3), since
/// the peer's table and ours may now differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The block ends inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit in 32 bits.
    #[error("integer too large")]
    Integer,
    /// Index 0, or past the end of both tables.
    #[error("header index out of range")]
    Index,
    /// A Huffman string is malformed.
    #[error("bad Huffman string")]
    Huffman,
    /// A size update above our advertised limit, in the middle of a block, or too many.
    #[error("dynamic table size update not allowed here")]
    SizeUpdate,
    /// The first block after our smaller limit took effect did not begin with a size update.
    #[error("dynamic table size update missing")]
    SizeUpdateMissing,
}

/// What came of decoding a block that was well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Every field is in the list.
    Complete,
    /// The list went over `max_list_size`: the list is cleared (answer 431), the table kept.
    TooLarge,
}

/// A decoded header list: names and values in one buffer, in block order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderList {
    /// Every name and value, back to back.
    bytes: Vec<u8>,
    /// One (start, name length, value length) per field.
    fields: Vec<(u32, u32, u32)>,
    /// The list's size as RFC 9113 §6.5.2 counts it.
    size: u32,
}

impl HeaderList {
    /// The fields, in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().filter_map(|&(start, name, value)| {
            let start = start as usize;
            let mid = start.checked_add(name as usize)?;
            let end = mid.checked_add(value as usize)?;
            Some((self.bytes.get(start..mid)?, self.bytes.get(mid..end)?))
        })
    }

    /// How many fields it holds.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether it holds no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Its size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (names, values, 32 per field).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Empties it, keeping its buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
        self.size = 0;
    }
}

/// One entry of the dynamic table: name and value in one allocation.
#[derive(Debug, Clone)]
struct Entry {
    /// Name then value.
    bytes: Box<[u8]>,
    /// Where the name ends.
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        self.bytes.get(..self.name_len).unwrap_or_default()
    }

    fn value(&self) -> &[u8] {
        self.bytes.get(self.name_len..).unwrap_or_default()
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD as usize
    }
}

/// The dynamic table, newest entry first.
#[derive(Debug, Default, Clone)]
struct Table {
    /// Entries, index 0 is HPACK index 62.
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
}

impl Table {
    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// The HPACK decoder of one connection.
///
/// Idle cost: 24 bytes and no heap once the peer has acknowledged a limit of 0 and shrunk its
/// table (the table is dropped then, not just emptied).
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The dynamic table; `None` while it is empty.
    table: Option<Box<Table>>,
    /// The table's maximum size, as the peer's last size update set it.
    max_size: u32,
    /// The ceiling of the peer's size updates: our SETTINGS_HEADER_TABLE_SIZE in force.
    limit: u32,
    /// A limit we advertised and the peer has not acknowledged yet (`u32::MAX`: none).
    pending: u32,
    /// The next block must begin with a size update (our limit fell below `max_size`).
    update_due: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: None,
            max_size: DEFAULT_TABLE_SIZE,
            limit: DEFAULT_TABLE_SIZE,
            pending: u32::MAX,
            update_due: false,
        }
    }
}

/// A decoder's state, to go on in another process (the hand-over): its dynamic table,
/// newest entry first, and where its size limits stand. [`Decoder::from_image`] judges it as
/// peer input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderImage {
    /// The dynamic table's entries as (name, value), newest first.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The table's maximum size, as the peer's last size update set it.
    pub max_size: u32,
    /// Our SETTINGS_HEADER_TABLE_SIZE in force.
    pub limit: u32,
    /// A limit advertised and not acknowledged yet (`u32::MAX`: none).
    pub pending: u32,
    /// The next block must begin with a size update.
    pub update_due: bool,
}

impl Decoder {
    /// Records that we sent SETTINGS_HEADER_TABLE_SIZE `limit`; it applies once acknowledged.
    pub fn advertise(&mut self, limit: u32) {
        self.pending = limit;
    }

    /// Our SETTINGS were acknowledged: the advertised limit is now in force (§4.2).
    pub fn settings_acked(&mut self) {
        if self.pending == u32::MAX {
            return;
        }
        self.limit = self.pending;
        self.pending = u32::MAX;
        if self.max_size > self.limit {
            self.update_due = true;
        }
    }

    /// Whether no limit we advertised waits for the peer's acknowledgement.
    pub fn acknowledged(&self) -> bool {
        self.pending == u32::MAX
    }

    /// The dynamic table's size in bytes (the RFC's count, 32 per entry).
    pub fn table_size(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.size)
    }

    /// Whether the decoder holds any heap (a dynamic table).
    pub fn holds_table(&self) -> bool {
        self.table.is_some()
    }

    /// Its state, for [`Decoder::from_image`] in another process.
    pub fn image(&self) -> DecoderImage {
        DecoderImage {
            entries: self
                .table
                .iter()
                .flat_map(|t| t.entries.iter())
                .map(|e| (e.name().to_vec(), e.value().to_vec()))
                .collect(),
            max_size: self.max_size,
            limit: self.limit,
            pending: self.pending,
            update_due: self.update_due,
        }
    }

    /// A decoder in the state `image` describes. The image comes from another process and is
    /// held to what this decoder could ever reach: no size above the default table's (the
    /// most we advertise), entries that fit the table's maximum size.
    pub fn from_image(image: DecoderImage) -> Result<Decoder, &'static str> {
        if image.max_size > DEFAULT_TABLE_SIZE || image.limit > DEFAULT_TABLE_SIZE {
            return Err("an HPACK table size above the default");
        }
        if image.pending != u32::MAX && image.pending > DEFAULT_TABLE_SIZE {
            return Err("an HPACK table size above the default");
        }
        let mut size = 0usize;
        for (name, value) in &image.entries {
            size = size
                .checked_add(name.len())
                .and_then(|s| s.checked_add(value.len()))
                .and_then(|s| s.checked_add(ENTRY_OVERHEAD as usize))
                .filter(|&s| s <= image.max_size as usize)
                .ok_or("an HPACK table larger than its maximum size")?;
        }
        let mut decoder = Decoder {
            table: None,
            max_size: image.max_size,
            limit: image.limit,
            pending: image.pending,
            update_due: image.update_due,
        };
        // Oldest first, so that the newest ends in front, as they were.
        for (name, value) in image.entries.into_iter().rev() {
            let mut bytes = name;
            let name_len = bytes.len();
            bytes.extend_from_slice(&value);
            decoder.insert(&bytes, name_len);
        }
        Ok(decoder)
    }

    /// Decodes one complete header block into `out` (cleared first).
    ///
    /// Fields past `max_list_size` are not kept (`Decoded::TooLarge`) but the block is walked to
    /// its end, so that entries it adds to the table are added. An `Err` is a COMPRESSION_ERROR:
    /// the connection must end, since the two tables may now differ.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_size: u32,
        out: &mut HeaderList,
    ) -> Result<Decoded, DecodeError> {
        out.clear();
        let mut pos = 0usize;
        let mut too_large = false;
        let mut updates = 0u8;
        let mut first = true;
        while let Some(&byte) = block.get(pos) {
            if byte & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field.
                if !first || updates >= MAX_SIZE_UPDATES_PER_BLOCK {
                    return Err(DecodeError::SizeUpdate);
                }
                updates += 1;
                let size = decode_int(block, &mut pos, 5)?;
                if size > self.limit {
                    return Err(DecodeError::SizeUpdate);
                }
                self.max_size = size;
                self.update_due = false;
                self.shrink_table();
                continue;
            }
            if self.update_due {
                return Err(DecodeError::SizeUpdateMissing);
            }
            first = false;
            let start = out.bytes.len();
            let name_len;
            let value_len;
            if byte & 0x80 != 0 {
                // Indexed field (§6.1): its size is known before any copy, so a bomb costs no
                // copying once over the bound.
                let index = decode_int(block, &mut pos, 7)?;
                let (name, value) = self.lookup(index)?;
                name_len = name.len();
                value_len = value.len();
                if !too_large && fits(out.size, name_len, value_len, max_list_size) {
                    out.bytes.extend_from_slice(name);
                    out.bytes.extend_from_slice(value);
                } else {
                    too_large = true;
                    out.bytes.truncate(start);
                    continue;
                }
            } else {
                let (prefix, index_it) = if byte & 0xc0 == 0x40 {
                    (6, true) // with incremental indexing (§6.2.1)
                } else {
                    (4, false) // without indexing or never indexed (§6.2.2, §6.2.3)
                };
                let index = decode_int(block, &mut pos, prefix)?;
                if index == 0 {
                    read_string(block, &mut pos, &mut out.bytes)?;
                } else {
                    let (name, _) = self.lookup(index)?;
                    out.bytes.extend_from_slice(name);
                }
                name_len = out.bytes.len() - start;
                read_string(block, &mut pos, &mut out.bytes)?;
                value_len = out.bytes.len() - start - name_len;
                if index_it {
                    let bytes = out.bytes.get(start..).unwrap_or_default();
                    self.insert(bytes, name_len);
                }
                if too_large || !fits(out.size, name_len, value_len, max_list_size) {
                    too_large = true;
                    out.bytes.truncate(start);
                    continue;
                }
            }
            // `fits` bounded both lengths and the sum by `max_list_size` (a u32).
            out.size += name_len as u32 + value_len as u32 + ENTRY_OVERHEAD;
            out.fields
                .push((start as u32, name_len as u32, value_len as u32));
        }
        if self.update_due {
            // An empty block still had to carry the update.
            return Err(DecodeError::SizeUpdateMissing);
        }
        if too_large {
            out.clear();
            return Ok(Decoded::TooLarge);
        }
        Ok(Decoded::Complete)
    }

    fn lookup(&self, index: u32) -> Result<(&[u8], &[u8]), DecodeError> {
        let index = index as usize;
        if index == 0 {
            return Err(DecodeError::Index);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok((name, value));
        }
        let dynamic = index - STATIC_TABLE.len() - 1;
        self.table
            .as_ref()
            .and_then(|t| t.entries.get(dynamic))
            .map(|e| (e.name(), e.value()))
            .ok_or(DecodeError::Index)
    }

    fn insert(&mut self, bytes: &[u8], name_len: usize) {
        let max = self.max_size as usize;
        let size = bytes.len() + ENTRY_OVERHEAD as usize;
        if size > max {
            // §4.4: an entry larger than the table empties it and is not added.
            self.table = None;
            return;
        }
        let table = self.table.get_or_insert_with(Default::default);
        table.evict_to(max - size);
        table.entries.push_front(Entry {
            bytes: bytes.into(),
            name_len,
        });
        table.size += size;
    }

    fn shrink_table(&mut self) {
        if let Some(table) = self.table.as_mut() {
            table.evict_to(self.max_size as usize);
            if table.entries.is_empty() {
                self.table = None;
            }
        }
    }
}

/// Whether a field of these lengths still fits in a list of `size` under `max`.
fn fits(size: u32, name: usize, value: usize, max: u32) -> bool {
    (size as usize)
        .checked_add(name)
        .and_then(|s| s.checked_add(value))
        .and_then(|s| s.checked_add(ENTRY_OVERHEAD as usize))
        .is_some_and(|s| s <= max as usize)
}

/// Decodes an integer with an N-bit prefix (§5.1) at `*pos`, advancing past it.
pub fn decode_int(input: &[u8], pos: &mut usize, prefix: u8) -> Result<u32, DecodeError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *input.get(*pos).ok_or(DecodeError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(value as u32);
    }
    // Five continuation bytes carry 35 bits: more than a u32 can hold, so more is refused.
    for shift in (0..35).step_by(7) {
        let byte = *input.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(DecodeError::Integer);
        }
        if byte & 0x80 == 0 {
            return Ok(value as u32);
        }
    }
    Err(DecodeError::Integer)
}

/// Reads a string literal (§5.2) at `*pos` and appends its bytes to `out`.
fn read_string(input: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let huffman = input.get(*pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = decode_int(input, pos, 7)? as usize;
    let end = pos.checked_add(len).ok_or(DecodeError::Truncated)?;
    let bytes = input.get(*pos..end).ok_or(DecodeError::Truncated)?;
    *pos = end;
    if huffman {
        huffman::decode(bytes, out).map_err(|_| DecodeError::Huffman)
    } else {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends an integer with an N-bit prefix (§5.1); `flags` fills the bits above the prefix.
pub fn encode_int(value: u32, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = ((1u16 << prefix) - 1) as u32;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a string literal, Huffman-coded when asked and shorter.
fn encode_string(value: &[u8], huffman: bool, out: &mut Vec<u8>) {
    let coded = huffman::encoded_len(value);
    // Lengths above u32 cannot occur in a header block bounded by the frame layer; saturate
    // rather than wrap if a caller ever tried.
    if huffman && coded < value.len() {
        encode_int(u32::try_from(coded).unwrap_or(u32::MAX), 7, 0x80, out);
        huffman::encode(value, out);
    } else {
        encode_int(u32::try_from(value.len()).unwrap_or(u32::MAX), 7, 0, out);
        out.extend_from_slice(value);
    }
}

/// The static table index whose name is `name`, if any.
pub fn static_name_index(name: &[u8]) -> Option<u32> {
    STATIC_TABLE
        .iter()
        .position(|&(n, _)| n == name)
        .map(|i| i as u32 + 1)
}

/// Appends a dynamic table size update (§6.3); the connection opens its first block with one
/// of size 0, so its encoder keeps no table whatever the peer's setting.
pub fn encode_size_update(size: u32, out: &mut Vec<u8>) {
    encode_int(size, 5, 0x20, out);
}

/// Appends `:status`: indexed when the static table has it, else a literal without indexing.
pub fn encode_status(status: u16, out: &mut Vec<u8>) {
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    match STATIC_TABLE
        .iter()
        .position(|&(n, v)| n == b":status" && v == digits)
    {
        Some(i) => encode_int(i as u32 + 1, 7, 0x80, out),
        None => {
            encode_int(8, 4, 0x00, out);
            encode_string(&digits, false, out);
        }
    }
}

/// Appends a field as a literal without indexing (§6.2.2), or never indexed (§6.2.3) for
/// values no intermediary should remember (cookies, tokens). `name` must be lower case.
pub fn encode_field(
    name: &[u8],
    value: &[u8],
    never_index: bool,
    huffman: bool,
    out: &mut Vec<u8>,
) {
    let flags = if never_index { 0x10 } else { 0x00 };
    match static_name_index(name) {
        Some(index) => encode_int(index, 4, flags, out),
        None => {
            out.push(flags);
            encode_string(name, huffman, out);
        }
    }
    encode_string(value, huffman, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(list: &HeaderList) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn decode_ok(d: &mut Decoder, block: &str) -> Vec<(String, String)> {
        let mut list = HeaderList::default();
        assert_eq!(
            d.decode(&hex(block), 1 << 20, &mut list),
            Ok(Decoded::Complete)
        );
        fields(&list)
    }

    fn table_with(max: u32) -> Decoder {
        Decoder {
            max_size: max,
            ..Default::default()
        }
    }

    #[test]
    fn rfc_7541_c_1_integers() {
        let mut out = Vec::new();
        encode_int(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_int(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        encode_int(42, 8, 0, &mut out);
        assert_eq!(out, [0x2a]);
        let mut pos = 0;
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
    }

    #[test]
    fn rfc_7541_c_2_literals_and_indexed() {
        let mut d = Decoder::default();
        assert_eq!(
            decode_ok(
                &mut d,
                "400a637573746f6d2d6b65790d637573746f6d2d686561646572"
            ),
            pairs(&[("custom-key", "custom-header")])
        );
        assert_eq!(d.table_size(), 55);
        let mut d = Decoder::default();
        assert_eq!(
            decode_ok(&mut d, "040c2f73616d706c652f70617468"),
            pairs(&[(":path", "/sample/path")])
        );
        assert_eq!(
            decode_ok(&mut d, "100870617373776f726406736563726574"),
            pairs(&[("password", "secret")])
        );
        assert_eq!(decode_ok(&mut d, "82"), pairs(&[(":method", "GET")]));
        assert_eq!(d.table_size(), 0);
        assert!(!d.holds_table());
    }

    fn requests(blocks: [&str; 3]) {
        let mut d = Decoder::default();
        let first = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(decode_ok(&mut d, blocks[0]), pairs(&first));
        assert_eq!(d.table_size(), 57);
        let mut second = first.to_vec();
        second.push(("cache-control", "no-cache"));
        assert_eq!(decode_ok(&mut d, blocks[1]), pairs(&second));
        assert_eq!(d.table_size(), 110);
        assert_eq!(
            decode_ok(&mut d, blocks[2]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.table_size(), 164);
    }

    #[test]
    fn rfc_7541_c_3_requests_without_huffman() {
        requests([
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ]);
    }

    #[test]
    fn rfc_7541_c_4_requests_with_huffman() {
        requests([
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ]);
    }

    fn responses(blocks: [&str; 3]) {
        // Appendix C.5/C.6 run with a 256-byte table: eviction on every block.
        let mut d = table_with(256);
        let date = "Mon, 21 Oct 2013 20:13:21 GMT";
        let loc = "https://www.example.com";
        assert_eq!(
            decode_ok(&mut d, blocks[0]),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", date),
                ("location", loc)
            ])
        );
        assert_eq!(d.table_size(), 222);
        assert_eq!(
            decode_ok(&mut d, blocks[1]),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", date),
                ("location", loc)
            ])
        );
        assert_eq!(d.table_size(), 222);
        assert_eq!(
            decode_ok(&mut d, blocks[2]),
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", loc),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
        assert_eq!(d.table_size(), 215);
    }

    #[test]
    fn rfc_7541_c_5_responses_without_huffman() {
        responses([
            "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a32312047\
             4d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            "4803333037c1c0bf",
            "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f\
             6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b\
             2076657273696f6e3d31",
        ]);
    }

    #[test]
    fn rfc_7541_c_6_responses_with_huffman() {
        responses([
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863\
             c78f0b97c8e9ae82ae43d3",
            "4883640effc1c0bf",
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b3\
             35dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        ]);
    }

    #[test]
    fn a_bomb_stops_at_the_list_bound_and_keeps_the_table() {
        // One 4 000-byte entry, then 10 000 one-byte references to it: 40 MB if expanded.
        let mut block = vec![0x40];
        encode_string(b"x", false, &mut block);
        encode_string(&[b'a'; 4000], false, &mut block);
        block.extend(std::iter::repeat_n(0xbe, 10_000));
        let mut d = Decoder::default();
        let mut list = HeaderList::default();
        assert_eq!(d.decode(&block, 16_384, &mut list), Ok(Decoded::TooLarge));
        assert!(list.is_empty());
        assert!(
            list.bytes.capacity() < 16_384 + 4096,
            "grew to {}",
            list.bytes.capacity()
        );
        // The table kept the entry: the next block can still name it.
        assert_eq!(d.decode(&[0xbe], 16_384, &mut list), Ok(Decoded::Complete));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn the_advertised_zero_applies_only_once_acknowledged() {
        let mut d = Decoder::default();
        d.advertise(0);
        // Before the ACK the peer may still index with the default 4 096.
        decode_ok(
            &mut d,
            "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
        );
        assert!(d.holds_table());
        d.settings_acked();
        let mut list = HeaderList::default();
        // The next block must begin with a size update to at most 0.
        assert_eq!(
            d.decode(&hex("82"), 4096, &mut list),
            Err(DecodeError::SizeUpdateMissing)
        );
        let mut d2 = d.clone();
        assert_eq!(
            d2.decode(&hex("3fe11f82"), 4096, &mut list),
            Err(DecodeError::SizeUpdate)
        );
        assert_eq!(
            d.decode(&hex("2082"), 4096, &mut list),
            Ok(Decoded::Complete)
        );
        assert!(!d.holds_table());
        // From now on nothing can be indexed into a table.
        decode_ok(
            &mut d,
            "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
        );
        assert!(!d.holds_table());
        assert_eq!(
            d.decode(&hex("be"), 4096, &mut list),
            Err(DecodeError::Index)
        );
    }

    #[test]
    fn size_updates_only_at_the_start_of_a_block() {
        let mut d = Decoder::default();
        let mut list = HeaderList::default();
        assert_eq!(
            d.decode(&hex("8220"), 4096, &mut list),
            Err(DecodeError::SizeUpdate)
        );
        assert_eq!(
            d.decode(&hex("202020"), 4096, &mut list),
            Err(DecodeError::SizeUpdate)
        );
        assert_eq!(
            d.decode(&hex("2020"), 4096, &mut list),
            Ok(Decoded::Complete)
        );
    }

    #[test]
    fn integers_past_32_bits_are_refused() {
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x0f], &mut pos, 5),
            Err(DecodeError::Integer)
        );
        pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut pos, 5),
            Err(DecodeError::Integer)
        );
    }

    #[test]
    fn the_status_is_indexed_when_static() {
        let mut out = Vec::new();
        encode_status(200, &mut out);
        assert_eq!(out, [0x88]);
        out.clear();
        encode_status(431, &mut out);
        let mut list = HeaderList::default();
        Decoder::default().decode(&out, 4096, &mut list).unwrap();
        assert_eq!(fields(&list), pairs(&[(":status", "431")]));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            fields_in in proptest::collection::vec(
                ("[a-z-]{1,20}", proptest::collection::vec(any::<u8>(), 0..100), any::<bool>(), any::<bool>()),
                0..12,
            ),
            status in 100u16..1000,
        ) {
            let mut block = Vec::new();
            encode_size_update(0, &mut block);
            encode_status(status, &mut block);
            for (name, value, never, huff) in &fields_in {
                encode_field(name.as_bytes(), value, *never, *huff, &mut block);
            }
            let mut d = Decoder::default();
            let mut list = HeaderList::default();
            prop_assert_eq!(d.decode(&block, u32::MAX, &mut list), Ok(Decoded::Complete));
            let got: Vec<(Vec<u8>, Vec<u8>)> =
                list.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let mut want = vec![(b":status".to_vec(), status.to_string().into_bytes())];
            want.extend(fields_in.iter().map(|(n, v, _, _)| (n.clone().into_bytes(), v.clone())));
            prop_assert_eq!(got, want);
            prop_assert!(!d.holds_table());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..4),
            max in 0u32..2000,
        ) {
            let mut d = Decoder::default();
            let mut list = HeaderList::default();
            for block in &blocks {
                if d.decode(block, max, &mut list).is_ok() {
                    prop_assert!(list.size() <= max);
                }
                prop_assert!(d.table_size() <= d.max_size as usize);
            }
        }
    }
}
