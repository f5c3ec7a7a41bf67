//! The SSE event-stream parser, as the WHATWG spec describes it: pure, fed any chunking.
//!
//! Lines end with `\r\n`, `\n` or a lone `\r`, and a chunk may end between the `\r` and the
//! `\n` of one line break, so the parser remembers a trailing `\r` and skips the `\n` that
//! may open the next chunk. A blank line dispatches the event being built; an event with no
//! `data:` line is dropped, exactly as a browser drops it.

/// What a stream said, handed to the caller as soon as it is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A dispatched event: its type (empty for the default `message`), data and last id.
    Event {
        /// The `event:` field, empty when none was given.
        event: &'a str,
        /// The data lines joined with `\n`.
        data: &'a str,
        /// The last event id seen on the stream (ids persist across events).
        id: &'a str,
    },
    /// A comment line (what follows the `:`), e.g. `connected`, `keepalive` or `shed`.
    Comment(&'a [u8]),
    /// A valid `retry:` field, in milliseconds.
    Retry(u64),
}

/// Parser state for one stream; it owns only the bytes of an unfinished line and event.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the current line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a leading `\n` belongs to that line break.
    after_cr: bool,
    /// Data lines of the event being built, each followed by `\n`.
    data: String,
    /// The `event:` field of the event being built.
    event: String,
    /// The last event id buffer, kept across events.
    id: String,
    /// The last event ID string: the id buffer as it was at the last dispatch (a blank
    /// line), what an `EventSource` sends as `Last-Event-ID` when it reconnects. An `id:`
    /// line of an event cut off by the connection's end does not reach it.
    last_event_id: String,
    /// Set once a `data:` field was seen for the event being built.
    has_data: bool,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// A parser at the start of a stream whose `EventSource` already has `last_event_id`
    /// (`--last-event-id`): it is sent on the first request.
    pub fn with_last_event_id(last_event_id: &str) -> Parser {
        Parser {
            id: last_event_id.to_owned(),
            last_event_id: last_event_id.to_owned(),
            ..Parser::default()
        }
    }

    /// The id to send as `Last-Event-ID` on the next connection (empty: none).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Forgets the unfinished line and event of a connection that ended, keeping the last
    /// event ID for the next one (Blink hands it to the new connection's parser the same way).
    pub fn restart(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        self.id.clear();
        self.id.push_str(&self.last_event_id);
    }

    /// Feeds the next bytes of the stream body; `on_item` sees each complete item in order.
    pub fn feed(&mut self, mut bytes: &[u8], on_item: &mut impl FnMut(Item<'_>)) {
        if bytes.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(at) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = at;
            let skip = if bytes[at] == b'\r' {
                match bytes.get(at + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.after_cr = true;
                        1
                    }
                }
            } else {
                1
            };
            if self.line.is_empty() {
                self.process_line(&bytes[..end], on_item);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.process_line(&line, on_item);
                line.clear();
                self.line = line;
            }
            bytes = &bytes[at + skip..];
        }
        self.line.extend_from_slice(bytes);
    }

    /// Handles one complete line (without its line break).
    fn process_line(&mut self, line: &[u8], on_item: &mut impl FnMut(Item<'_>)) {
        if line.is_empty() {
            self.dispatch(on_item);
            return;
        }
        if let Some(comment) = line.strip_prefix(b":") {
            on_item(Item::Comment(comment.strip_prefix(b" ").unwrap_or(comment)));
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                self.data.push_str(&value);
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&value);
            }
            // An id with NUL is ignored, per spec.
            b"id" if !value.contains('\0') => {
                self.id.clear();
                self.id.push_str(&value);
            }
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    on_item(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }

    /// Ends the event being built at a blank line.
    fn dispatch(&mut self, on_item: &mut impl FnMut(Item<'_>)) {
        // WHATWG: the last event ID string is set at every dispatch, with or without data.
        if self.last_event_id != self.id {
            self.last_event_id.clear();
            self.last_event_id.push_str(&self.id);
        }
        if self.has_data {
            let data = self.data.strip_suffix('\n').unwrap_or(&self.data);
            on_item(Item::Event {
                event: &self.event,
                data,
                id: &self.id,
            });
        }
        self.data.clear();
        self.event.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of an item, for comparing.
    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Event(String, String, String),
        Comment(String),
        Retry(u64),
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<Owned> {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut |item| {
                out.push(match item {
                    Item::Event { event, data, id } => {
                        Owned::Event(event.into(), data.into(), id.into())
                    }
                    Item::Comment(c) => Owned::Comment(String::from_utf8_lossy(c).into()),
                    Item::Retry(ms) => Owned::Retry(ms),
                })
            });
        }
        out
    }

    /// Parses `wire` whole, byte by byte, and split at every position; all must agree.
    fn parse_every_split(wire: &[u8]) -> Vec<Owned> {
        let whole = parse_chunks(&[wire]);
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), whole, "byte by byte");
        for at in 0..=wire.len() {
            let (a, b) = wire.split_at(at);
            assert_eq!(parse_chunks(&[a, b]), whole, "split at {at}");
        }
        whole
    }

    fn ev(event: &str, data: &str, id: &str) -> Owned {
        Owned::Event(event.into(), data.into(), id.into())
    }

    #[test]
    fn the_sse_edge_preamble_and_one_event() {
        let wire = b": connected\nretry: 2000\n\nid: 7\ndata: hello\n\n";
        assert_eq!(
            parse_every_split(wire),
            vec![
                Owned::Comment("connected".into()),
                Owned::Retry(2000),
                ev("", "hello", "7")
            ]
        );
    }

    #[test]
    fn every_line_ending_gives_the_same_events() {
        let lf = "id: 1\nevent: tick\ndata: a\ndata: b\n\n: c\ndata: z\n\n";
        let expected = parse_every_split(lf.as_bytes());
        assert_eq!(
            expected,
            vec![
                ev("tick", "a\nb", "1"),
                Owned::Comment("c".into()),
                ev("", "z", "1")
            ]
        );
        for ending in ["\r\n", "\r"] {
            let wire = lf.replace('\n', ending);
            assert_eq!(parse_every_split(wire.as_bytes()), expected, "{ending:?}");
        }
        // Mixed endings in one stream.
        let mixed = b"id: 1\r\nevent: tick\rdata: a\ndata: b\r\n\r: c\ndata: z\r\r";
        assert_eq!(parse_every_split(mixed), expected);
    }

    #[test]
    fn merged_chunks_yield_every_event_in_order() {
        let wire = b"data: 1\n\ndata: 2\n\ndata: 3\n\n";
        let got = parse_chunks(&[wire]);
        assert_eq!(got, vec![ev("", "1", ""), ev("", "2", ""), ev("", "3", "")]);
    }

    #[test]
    fn fields_follow_the_spec() {
        let wire = b"data\n\ndata:no-space\n\ndata:  two\n\nevent: x\n\nid: 5\nretry: 1x\nretry: 30\nfoo: bar\ndata: y\n\nid: a\0b\ndata: z\n\n";
        assert_eq!(
            parse_every_split(wire),
            vec![
                // `data` with no colon is a data field with an empty value.
                ev("", "", ""),
                ev("", "no-space", ""),
                ev("", " two", ""),
                // An event without data is not dispatched and its type does not leak.
                Owned::Retry(30),
                ev("", "y", "5"),
                ev("", "z", "5"),
            ]
        );
    }

    #[test]
    fn a_trailing_empty_data_line_keeps_its_newline() {
        assert_eq!(
            parse_every_split(b"data: a\ndata:\n\n"),
            vec![ev("", "a\n", "")]
        );
    }

    #[test]
    fn the_last_event_id_is_what_was_dispatched_and_survives_a_restart() {
        let mut p = Parser::with_last_event_id("3");
        assert_eq!(p.last_event_id(), "3");
        let mut events = 0;
        p.feed(b"id: 4\ndata: a\n\nid: 5\ndata: b", &mut |_| events += 1);
        // Event 5 was cut off by the connection's end: resuming must ask for it again.
        assert_eq!((events, p.last_event_id()), (1, "4"));
        p.restart();
        let mut ids = Vec::new();
        p.feed(b"data: c\n\n", &mut |item| {
            if let Item::Event { id, data, .. } = item {
                ids.push((id.to_owned(), data.to_owned()));
            }
        });
        // The half event is gone, and the id buffer starts from the last event ID.
        assert_eq!(ids, vec![("4".to_owned(), "c".to_owned())]);
        // An id-only event (no data) still moves the last event ID, per spec.
        p.feed(b"id: 9\n\n", &mut |_| {});
        assert_eq!(p.last_event_id(), "9");
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        assert_eq!(parse_chunks(&[b"data: a\n", b"data: b"]), vec![]);
    }
}
