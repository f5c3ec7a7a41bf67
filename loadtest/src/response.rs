//! HTTP/1.1 responses as a client sees them: the head, and a chunked body decoded as it
//! arrives. Pure, so any server's framing can be tested without sockets.

/// Largest response head accepted; a server that sends more is not an SSE server we know.
pub const MAX_HEAD: usize = 16 * 1024;

/// The parts of a response head the load generator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code, e.g. 200.
    pub status: u16,
    /// `Transfer-Encoding: chunked` was given.
    pub chunked: bool,
    /// `Content-Length`, when given.
    pub content_length: Option<usize>,
    /// `Content-Type` (empty when absent).
    pub content_type: String,
    /// Bytes of the buffer the head took, blank line included.
    pub len: usize,
}

/// Outcome of looking for a complete head at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadParse {
    /// More bytes are needed.
    Partial,
    /// A whole head; the body starts at `Head::len`.
    Done(Head),
    /// Not an HTTP/1.x response head.
    Bad(&'static str),
}

/// Parses the response head at the start of `buf`; bare `\n` line ends are tolerated.
pub fn parse_head(buf: &[u8]) -> HeadParse {
    let Some(len) = head_end(buf) else {
        return if buf.len() > MAX_HEAD {
            HeadParse::Bad("response head too large")
        } else {
            HeadParse::Partial
        };
    };
    let Ok(text) = std::str::from_utf8(&buf[..len]) else {
        return HeadParse::Bad("response head is not UTF-8");
    };
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return HeadParse::Bad("malformed status line");
    };
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
        content_type: String::new(),
        len,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => head.content_length = Some(n),
                Err(_) => return HeadParse::Bad("malformed Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = value.to_owned();
        }
    }
    HeadParse::Done(head)
}

/// Where the blank line that ends a head ends, if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let nl = at + nl;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        at = nl + 1;
    }
    None
}

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

/// Where the decoder is inside the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a hex chunk size; `digits` says whether one was seen.
    Size { value: u64, digits: bool },
    /// Skipping a chunk extension up to the end of the size line.
    Extension { value: u64 },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the line break after chunk data.
    DataEnd,
    /// Reading trailer lines after the last chunk; `line` counts bytes of the current one.
    Trailer { line: usize },
    /// The body ended.
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally, from any split of the input.
#[derive(Debug, Clone)]
pub struct Dechunker {
    state: State,
}

impl Default for Dechunker {
    fn default() -> Self {
        Dechunker {
            state: State::Size {
                value: 0,
                digits: false,
            },
        }
    }
}

impl Dechunker {
    /// A decoder at the start of a body.
    pub fn new() -> Dechunker {
        Dechunker::default()
    }

    /// True once the last (zero-size) chunk and its trailers were read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each piece of body data to `on_data`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on_data: &mut impl FnMut(&[u8]),
    ) -> Result<(), BadChunk> {
        while let Some((&byte, rest)) = input.split_first() {
            self.state = match self.state {
                State::Data(left) => {
                    let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    on_data(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::Size { value, digits } => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                        let value = value.checked_mul(16).ok_or(BadChunk)? + digit;
                        State::Size {
                            value,
                            digits: true,
                        }
                    }
                    b';' | b' ' | b'\t' if digits => State::Extension { value },
                    b'\r' if digits => State::Extension { value },
                    b'\n' if digits => end_of_size(value),
                    _ => return Err(BadChunk),
                },
                State::Extension { value } => match byte {
                    b'\n' => end_of_size(value),
                    _ => State::Extension { value },
                },
                State::DataEnd => match byte {
                    b'\r' => State::DataEnd,
                    b'\n' => State::Size {
                        value: 0,
                        digits: false,
                    },
                    _ => return Err(BadChunk),
                },
                State::Trailer { line } => match byte {
                    b'\r' => State::Trailer { line },
                    b'\n' if line == 0 => State::Done,
                    b'\n' => State::Trailer { line: 0 },
                    _ => State::Trailer { line: line + 1 },
                },
                // Bytes after the end of the body are not ours to interpret.
                State::Done => return Ok(()),
            };
            input = rest;
        }
        Ok(())
    }
}

/// The state after a complete size line.
fn end_of_size(value: u64) -> State {
    if value == 0 {
        State::Trailer { line: 0 }
    } else {
        State::Data(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_edge_stream_head() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n: connected\n";
        let HeadParse::Done(head) = parse_head(wire) else {
            panic!("not parsed")
        };
        assert_eq!(head.status, 200);
        assert!(!head.chunked);
        assert_eq!(head.content_type, "text/event-stream");
        assert_eq!(&wire[head.len..], b": connected\n");
    }

    #[test]
    fn partial_bad_and_bare_lf_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Ty"),
            HeadParse::Partial
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n\r"), HeadParse::Partial);
        assert!(matches!(parse_head(b"SSH-2.0\r\n\r\n"), HeadParse::Bad(_)));
        assert!(matches!(
            parse_head(&[b'x'; MAX_HEAD + 1]),
            HeadParse::Bad(_)
        ));
        let HeadParse::Done(head) = parse_head(
            b"HTTP/1.0 503 Busy\nTransfer-Encoding: gzip, chunked\nContent-Length: 4\n\nbody",
        ) else {
            panic!("not parsed")
        };
        assert_eq!(
            (head.status, head.chunked, head.content_length),
            (503, true, Some(4))
        );
        assert_eq!(head.len, 70);
    }

    fn dechunk_every_split(wire: &[u8]) -> (Vec<u8>, bool) {
        let decode = |chunks: &[&[u8]]| {
            let mut d = Dechunker::new();
            let mut out = Vec::new();
            for c in chunks {
                d.feed(c, &mut |data| out.extend_from_slice(data)).unwrap();
            }
            (out, d.done())
        };
        let whole = decode(&[wire]);
        for at in 0..=wire.len() {
            let (a, b) = wire.split_at(at);
            assert_eq!(decode(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode(&bytes), whole);
        whole
    }

    #[test]
    fn chunked_bodies_decode_from_any_split() {
        let wire =
            b"7\r\ndata: a\r\n3;ext=1\r\n\n\n\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (body, done) = dechunk_every_split(wire);
        assert_eq!(body, b"data: a\n\n\r0123456789");
        assert!(done);
        // An open-ended stream: no last chunk yet.
        let (body, done) = dechunk_every_split(b"c\r\n: connected\n\r\n");
        assert_eq!(body, b": connected\n");
        assert!(!done);
        // Bare LF framing, as some servers send.
        let (body, done) = dechunk_every_split(b"2\nab\n0\n\n");
        assert_eq!((body.as_slice(), done), (&b"ab"[..], true));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"2\r\nabX",
            b"fffffffffffffffff\r\n",
        ] {
            let mut d = Dechunker::new();
            assert_eq!(d.feed(wire, &mut |_| {}), Err(BadChunk), "{wire:?}");
        }
    }

    #[test]
    fn sse_through_chunks_parses_like_plain_sse() {
        use crate::sse::{Item, Parser};
        let wire = b"10\r\nid: 1\r\ndata: hel\r\n6\r\nlo\r\n\r\n\r\n";
        let mut d = Dechunker::new();
        let mut p = Parser::new();
        let mut got = Vec::new();
        for piece in wire.chunks(3) {
            d.feed(piece, &mut |data| {
                p.feed(data, &mut |item| {
                    if let Item::Event { data, id, .. } = item {
                        got.push((id.to_owned(), data.to_owned()));
                    }
                })
            })
            .unwrap();
        }
        assert_eq!(got, vec![("1".to_owned(), "hello".to_owned())]);
    }
}
