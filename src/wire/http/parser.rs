//! The request parser: one per connection, fed bytes as they arrive, and consuming them as
//! it goes, so a request delivered a few bytes at a time costs linear, not quadratic, work.
//!
//! # Steps
//!
//! [`RequestParser::advance`] moves through one request in three steps:
//!
//! 1. The head. New bytes are scanned once for the blank line that ends it (and for bare LF,
//!    bare CR and obsolete line folding, which a front proxy may read differently); then one
//!    `httparse` call reads the whole head. It must end within [`MAX_HEAD`] bytes (431).
//! 2. [`Step::Head`]: the parser stops so that the caller can judge the request from its
//!    head alone ([`RequestParser::head`]), before any body is buffered, and then either
//!    [`RequestParser::accept_head`] or [`RequestParser::skip_body`].
//! 3. The body, by a `Content-Length` countdown or a chunked decoder that keeps its place
//!    between calls; then [`Step::Request`]. Bytes after it stay for the next request.
//!
//! A rejection ends the connection: after a framing error the position of the next request
//! in the byte stream is unknown. Every size read from the input is checked against the body
//! limit as it is read, so no sum over client-chosen numbers can wrap.

use super::{reject, Method, Rejection, MAX_HEAD, MAX_HEADERS};

/// Longest chunk-size line accepted, extensions included (400 beyond): what a client can
/// make the server read per chunk without sending body bytes.
pub const MAX_CHUNK_LINE: usize = 256;

/// How the body of a request is delimited, as its head declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`, or neither header (an empty body).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head, framing already checked: everything needed to judge a request before its
/// body arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The raw query string after `?` (empty when absent).
    pub query: String,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// How the body is delimited.
    pub framing: Framing,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expects_continue: bool,
    /// The `Last-Event-ID` header, when present and valid UTF-8.
    pub last_event_id: Option<String>,
    /// The `Authorization` header, when present and valid UTF-8.
    pub authorization: Option<String>,
    /// The `Host` header, when present and valid UTF-8.
    pub host: Option<String>,
    /// The `Origin` header, when present and valid UTF-8.
    pub origin: Option<String>,
    /// The `Sec-Fetch-Site` header, when present and valid UTF-8.
    pub sec_fetch_site: Option<String>,
    /// The `Cookie` header(s), when present and valid UTF-8 (several are joined by `; `).
    pub cookie: Option<String>,
    /// A header only proxies send was present (`Forwarded`, `Via`, `X-Forwarded-*`, `X-Real-IP`
    /// and the like: see `is_proxy_marker`): a proxy relayed it.
    pub proxied: bool,
    /// Header lines in the head.
    pub header_count: usize,
}

impl Head {
    /// A head with no headers: HTTP/1.`version`'s default keep-alive, no body.
    pub fn new(method: Method, path: String, query: String, version: u8) -> Head {
        Head {
            method,
            path,
            query,
            version,
            keep_alive: version == 1,
            framing: Framing::Length(0),
            expects_continue: false,
            last_event_id: None,
            authorization: None,
            host: None,
            origin: None,
            sec_fetch_site: None,
            cookie: None,
            proxied: false,
            header_count: 0,
        }
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        self.framing != Framing::Length(0)
    }
}

/// One complete request, owned: its head and its (de-chunked) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Everything but the body.
    pub head: Head,
    /// The request body (de-chunked).
    pub body: Vec<u8>,
}

impl Request {
    /// Joins a head and its body.
    pub fn new(head: Head, body: Vec<u8>) -> Request {
        Request { head, body }
    }
}

/// What [`RequestParser::advance`] reached.
// A request is moved out once, by value; boxing it would add an allocation per request to
// save a few hundred bytes of stack on a value that never sits in a collection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every buffered byte is used; feed more.
    NeedMore,
    /// A head is complete: judge [`RequestParser::head`], then accept it or skip its body.
    /// Advancing without either accepts it.
    Head,
    /// A whole request.
    Request(Request),
}

/// The size of what a connection sent, for logs: never its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The method, once a head was read.
    pub method: Option<Method>,
    /// Length of the path, once a head was read.
    pub path_len: usize,
    /// Header lines, once a head was read.
    pub headers: usize,
    /// Bytes received and not yet consumed.
    pub buffered: usize,
}

/// The per-connection request parser. See the module documentation.
#[derive(Debug)]
pub struct RequestParser {
    /// Received bytes; those before `pos` are consumed.
    buf: Vec<u8>,
    pos: usize,
    state: State,
}

impl Default for RequestParser {
    fn default() -> RequestParser {
        RequestParser {
            buf: Vec::new(),
            pos: 0,
            state: FRESH_HEAD,
        }
    }
}

#[derive(Debug)]
enum State {
    /// Looking for the end of a head; `scanned` bytes after `pos` were looked at.
    Head { scanned: usize },
    /// A head waits for the caller's judgement.
    Judging(Box<Head>),
    /// Reading a body; `keep` is false when it is read only to be dropped.
    Body {
        head: Box<Head>,
        body: Vec<u8>,
        keep: bool,
        decoder: Decoder,
    },
    /// A rejection ended the connection; it is repeated.
    Failed(Rejection),
}

const FRESH_HEAD: State = State::Head { scanned: 0 };

const OBS_FOLD: Rejection = reject(
    400,
    "obsolete line folding (a line starting with whitespace) in request head",
);

#[derive(Debug)]
enum Decoder {
    Length { left: usize },
    Chunked(Chunked),
}

/// Where the chunked decoder is, byte by byte outside chunk data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size (`digits` so far).
    Size { size: usize, digits: usize },
    /// Inside `;name`: `named` once a name character was seen.
    ExtName { size: usize, named: bool },
    /// Right after `=`.
    ExtValue { size: usize },
    /// Inside a token value.
    ExtToken { size: usize },
    /// Inside a quoted-string value; `escaped` after a backslash.
    ExtQuoted { size: usize, escaped: bool },
    /// After the closing quote.
    ExtQuotedEnd { size: usize },
    /// After the CR that ends a size line.
    SizeLf { size: usize },
    /// Chunk data, `left` bytes to go.
    Data { left: usize },
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk: only the empty line that ends an empty trailer section.
    TrailerCr,
    /// The LF of that empty line.
    TrailerLf,
    /// The body is complete.
    Done,
}

impl RequestParser {
    /// Appends received bytes.
    ///
    /// The caller feeds only after [`Step::NeedMore`]; the parser has then used every byte
    /// it holds except a head under [`MAX_HEAD`], so what it holds stays bounded.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            // One move per read, not per request: pipelined requests are consumed by `pos`.
            self.buf.drain(..self.pos.min(self.buf.len()));
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The bytes received and not yet consumed (the first read of a connection tells h2c's
    /// preface from a request).
    pub fn unread(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// The head waiting for judgement, or whose body is being read.
    pub fn head(&self) -> Option<&Head> {
        match &self.state {
            State::Judging(head) | State::Body { head, .. } => Some(head),
            _ => None,
        }
    }

    /// The shape of what is being parsed, for a log line.
    pub fn shape(&self) -> Shape {
        let head = self.head();
        Shape {
            method: head.map(|h| h.method),
            path_len: head.map_or(0, |h| h.path.len()),
            headers: head.map_or(0, |h| h.header_count),
            buffered: self.buffered(),
        }
    }

    /// Accepts the head waiting for judgement; its body will be read and returned. Returns
    /// whether the client waits for `100 Continue` (HTTP/1.1, `Expect: 100-continue`, and no
    /// body byte has arrived yet).
    pub fn accept_head(&mut self) -> bool {
        self.start_body(true)
    }

    /// Refuses the head waiting for judgement: its body is read and dropped, so that the
    /// connection can serve the next request.
    pub fn skip_body(&mut self) {
        self.start_body(false);
    }

    fn start_body(&mut self, keep: bool) -> bool {
        let State::Judging(head) = std::mem::replace(&mut self.state, FRESH_HEAD) else {
            return false;
        };
        let decoder = match head.framing {
            Framing::Length(left) => Decoder::Length { left },
            Framing::Chunked => Decoder::Chunked(Chunked::default()),
        };
        let wants_continue =
            keep && head.expects_continue && head.has_body() && self.buffered() == 0;
        self.state = State::Body {
            head,
            body: Vec::new(),
            keep,
            decoder,
        };
        wants_continue
    }

    /// Parses as far as the buffered bytes allow; bodies over `max_body` bytes are refused
    /// (413). See the module documentation.
    pub fn advance(&mut self, max_body: usize) -> Result<Step, Rejection> {
        loop {
            let step = match &self.state {
                State::Failed(rejection) => return Err(*rejection),
                State::Head { .. } => self.advance_head(max_body),
                State::Judging(_) => {
                    self.accept_head();
                    continue;
                }
                State::Body { .. } => self.advance_body(max_body),
            };
            match step {
                Ok(Some(step)) => return Ok(step),
                // A skipped body ended: go on with the next request.
                Ok(None) => continue,
                Err(rejection) => {
                    self.state = State::Failed(rejection);
                    return Err(rejection);
                }
            }
        }
    }

    fn advance_head(&mut self, max_body: usize) -> Result<Option<Step>, Rejection> {
        let State::Head { scanned } = self.state else {
            return Ok(Some(Step::NeedMore));
        };
        if scanned == 0 {
            // RFC 9112 §2.2: empty lines before a request line are ignored (some clients
            // send a CRLF after a POST body).
            while self.buf.get(self.pos..self.pos.saturating_add(2)) == Some(&b"\r\n"[..]) {
                self.pos += 2;
            }
            if self.buf.get(self.pos..) == Some(&b"\r"[..]) {
                return Ok(Some(Step::NeedMore));
            }
        }
        // Line by line, from where the last call stopped: each LF must follow a CR, the line
        // after it must not start with whitespace (obs-fold), and CRLF CRLF ends the head.
        // A bare CR inside a line is left to httparse, which refuses it.
        let start = self.pos;
        let buf = &self.buf;
        let limit = start.saturating_add(MAX_HEAD).min(buf.len());
        let folded = |lf: usize| lf + 1 < limit && matches!(buf.get(lf + 1), Some(b' ' | b'\t'));
        let mut at = start.saturating_add(scanned);
        if scanned > 0 && folded(at - 1) && buf.get(at - 1) == Some(&b'\n') {
            return Err(OBS_FOLD);
        }
        let len = loop {
            let window = buf.get(at..limit).unwrap_or_default();
            let Some(found) = memchr::memchr(b'\n', window) else {
                if buf.len() > start.saturating_add(MAX_HEAD) {
                    return Err(reject(431, "request head larger than 8 KiB"));
                }
                self.state = State::Head {
                    scanned: limit - start,
                };
                return Ok(Some(Step::NeedMore));
            };
            let lf = at + found;
            if lf == start || buf.get(lf - 1) != Some(&b'\r') {
                return Err(reject(400, "bare LF in request head; lines end in CRLF"));
            }
            if lf >= start + 3 && buf.get(lf - 3..lf) == Some(&b"\r\n\r"[..]) {
                break lf + 1 - start;
            }
            if folded(lf) {
                return Err(OBS_FOLD);
            }
            at = lf + 1;
        };
        let raw = self
            .buf
            .get(self.pos..self.pos.saturating_add(len))
            .unwrap_or_default();
        let head = parse_head(raw, max_body)?;
        self.pos = self.pos.saturating_add(len);
        self.state = State::Judging(Box::new(head));
        Ok(Some(Step::Head))
    }

    fn advance_body(&mut self, max_body: usize) -> Result<Option<Step>, Rejection> {
        let RequestParser { buf, pos, state } = self;
        let State::Body {
            body,
            keep,
            decoder,
            ..
        } = state
        else {
            return Ok(Some(Step::NeedMore));
        };
        let input = buf.get(*pos..).unwrap_or_default();
        let (used, done) = match decoder {
            Decoder::Length { left } => {
                let take = (*left).min(input.len());
                if *keep {
                    body.extend_from_slice(input.get(..take).unwrap_or_default());
                }
                *left -= take;
                (take, *left == 0)
            }
            Decoder::Chunked(chunked) => {
                let sink = keep.then_some(body);
                let used = chunked.decode(input, sink, max_body)?;
                (used, chunked.at == Chunk::Done)
            }
        };
        *pos = pos.saturating_add(used);
        if !done {
            return Ok(Some(Step::NeedMore));
        }
        let State::Body {
            head, body, keep, ..
        } = std::mem::replace(state, FRESH_HEAD)
        else {
            return Ok(Some(Step::NeedMore));
        };
        if *pos >= buf.len() {
            // An idle keep-alive connection holds no buffer.
            *buf = Vec::new();
            *pos = 0;
        }
        Ok(keep.then(|| Step::Request(Request::new(*head, body))))
    }
}

/// The chunked decoder's place between calls.
#[derive(Debug)]
struct Chunked {
    at: Chunk,
    /// Bytes of the current chunk-size line so far.
    line: usize,
    /// Body bytes decoded so far (kept or not).
    received: usize,
    /// Framing bytes (sizes, extensions, line ends) consumed so far.
    overhead: usize,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked {
            at: Chunk::Size { size: 0, digits: 0 },
            line: 0,
            received: 0,
            overhead: 0,
        }
    }
}

const MALFORMED_CHUNK: Rejection = reject(400, "malformed chunked body");
const TOO_LARGE: Rejection = reject(413, "request body too large");

impl Chunked {
    /// Decodes from `input`, appending data to `sink` when given; returns the bytes used.
    /// Stops at the end of the body (`at == Done`) or of the input.
    fn decode(
        &mut self,
        input: &[u8],
        mut sink: Option<&mut Vec<u8>>,
        max_body: usize,
    ) -> Result<usize, Rejection> {
        let mut used = 0;
        while let Some(rest) = input.get(used..).filter(|r| !r.is_empty()) {
            if self.at == Chunk::Done {
                break;
            }
            if let Chunk::Data { left } = self.at {
                let take = left.min(rest.len());
                if let Some(body) = sink.as_deref_mut() {
                    body.extend_from_slice(rest.get(..take).unwrap_or_default());
                }
                used += take;
                self.at = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left: left - take }
                };
                continue;
            }
            let Some(&b) = rest.first() else { break };
            used += 1;
            self.overhead = self.overhead.saturating_add(1);
            // Sizes, extensions and line ends are bytes a client could send without end and
            // without any body; bound them like the body.
            if self.overhead > max_body.saturating_add(MAX_HEAD) {
                return Err(TOO_LARGE);
            }
            self.at = self.step(b, max_body)?;
        }
        Ok(used)
    }

    /// One byte of framing: where it leads.
    fn step(&mut self, b: u8, max_body: usize) -> Result<Chunk, Rejection> {
        use Chunk::*;
        let in_line = matches!(
            self.at,
            Size { .. }
                | ExtName { .. }
                | ExtValue { .. }
                | ExtToken { .. }
                | ExtQuoted { .. }
                | ExtQuotedEnd { .. }
        );
        if in_line {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err(reject(400, "chunk-size line too long"));
            }
        }
        if b == b'\n' && !matches!(self.at, SizeLf { .. } | DataLf | TrailerLf) {
            return Err(reject(400, "bare LF in chunked body; lines end in CRLF"));
        }
        let bad_ext = reject(400, "malformed chunk extension");
        Ok(match (self.at, b) {
            (Size { size, digits }, _) if hex_value(b).is_some() => {
                let digit = usize::from(hex_value(b).unwrap_or(0));
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(TOO_LARGE)?;
                if size > max_body.saturating_sub(self.received) {
                    return Err(TOO_LARGE);
                }
                Size {
                    size,
                    digits: digits + 1,
                }
            }
            (Size { digits: 0, .. }, _) => return Err(MALFORMED_CHUNK),
            (Size { size, .. }, b';') => ExtName { size, named: false },
            (Size { size, .. }, b'\r') => SizeLf { size },
            (Size { .. }, _) => return Err(MALFORMED_CHUNK),
            (ExtName { size, .. }, _) if is_tchar(b) => ExtName { size, named: true },
            (ExtName { size, named: true }, b'=') => ExtValue { size },
            (ExtName { size, named: true }, b';') => ExtName { size, named: false },
            (ExtName { size, named: true }, b'\r') => SizeLf { size },
            (ExtValue { size }, b'"') => ExtQuoted {
                size,
                escaped: false,
            },
            (ExtValue { size } | ExtToken { size }, _) if is_tchar(b) => ExtToken { size },
            (ExtToken { size } | ExtQuotedEnd { size }, b';') => ExtName { size, named: false },
            (ExtToken { size } | ExtQuotedEnd { size }, b'\r') => SizeLf { size },
            (
                ExtQuoted {
                    size,
                    escaped: true,
                },
                b'\t' | b' '..=b'~',
            ) => ExtQuoted {
                size,
                escaped: false,
            },
            (
                ExtQuoted {
                    size,
                    escaped: false,
                },
                b'"',
            ) => ExtQuotedEnd { size },
            (
                ExtQuoted {
                    size,
                    escaped: false,
                },
                b'\\',
            ) => ExtQuoted {
                size,
                escaped: true,
            },
            (
                ExtQuoted {
                    size,
                    escaped: false,
                },
                b'\t' | b' '..=b'~',
            ) => ExtQuoted {
                size,
                escaped: false,
            },
            (ExtName { .. } | ExtValue { .. } | ExtToken { .. }, _)
            | (ExtQuoted { .. } | ExtQuotedEnd { .. }, _) => return Err(bad_ext),
            (SizeLf { size: 0 }, b'\n') => {
                self.line = 0;
                TrailerCr
            }
            (SizeLf { size }, b'\n') => {
                self.line = 0;
                self.received = self.received.saturating_add(size);
                Data { left: size }
            }
            (SizeLf { .. }, _) => return Err(reject(400, "bare CR in chunk-size line")),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size { size: 0, digits: 0 },
            (DataCr | DataLf, _) => return Err(reject(400, "chunk data not followed by CRLF")),
            // Trailers are refused rather than parsed: nothing here reads them, and a field
            // that one side takes for a trailer and another for a header is a smuggling tool.
            (TrailerCr, b'\r') => TrailerLf,
            (TrailerCr, _) => return Err(reject(400, "chunked trailers are not accepted")),
            (TrailerLf, b'\n') => Done,
            (TrailerLf, _) => return Err(MALFORMED_CHUNK),
            (Data { .. } | Done, _) => self.at,
        })
    }
}

/// The value of one hex digit, read by hand: `from_str_radix` would also take a sign.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 `tchar`: the characters of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads one complete head (`raw` ends with the blank line) and checks its framing. HTTP/2
/// heads are judged by these very rules ([`crate::wire::h2::bridge`]).
pub fn parse_head(raw: &[u8], max_body: usize) -> Result<Head, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many header lines")),
        _ => return Err(reject(400, "malformed request head")),
    }
    let method = match parsed.method.unwrap_or_default() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let (path, query) = split_target(parsed.path.unwrap_or_default())?;
    let version = parsed.version.unwrap_or(0);
    let mut head = Head::new(method, path, query, version);
    head.header_count = parsed.headers.len();
    let mut length: Option<usize> = None;
    let mut chunked = false;
    // Headers that must come at most once, as bits of `seen`: which of two copies a proxy
    // and this parser would each believe is a guess an attacker makes for us.
    let mut seen = 0u8;
    for h in parsed.headers.iter() {
        let name = h.name;
        let value = trim(h.value);
        let text = || std::str::from_utf8(value).ok().map(str::to_owned);
        let mut once = |bit: u8, reason| {
            if seen & bit != 0 {
                Err(reject(400, reason))
            } else {
                seen |= bit;
                Ok(text())
            }
        };
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value, max_body)?;
            if length.is_some_and(|m| m != n) {
                return Err(reject(400, "conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err(reject(400, "more than one Transfer-Encoding header"));
            }
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(reject(400, "only Transfer-Encoding: chunked is supported"));
            }
            if version == 0 {
                return Err(reject(400, "Transfer-Encoding is not allowed in HTTP/1.0"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            // HTTP/1.0 clients do not know 100 Continue (RFC 9110 §10.1.1).
            head.expects_continue = version == 1 && value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("last-event-id") {
            head.last_event_id = once(1, "more than one Last-Event-ID header")?;
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = once(2, "more than one Authorization header")?;
        } else if name.eq_ignore_ascii_case("host") {
            head.host = once(4, "more than one Host header")?;
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = once(8, "more than one Origin header")?;
        } else if name.eq_ignore_ascii_case("sec-fetch-site") {
            head.sec_fetch_site = once(16, "more than one Sec-Fetch-Site header")?;
        } else if name.eq_ignore_ascii_case("cookie") {
            // RFC 6265 §5.4 sends one Cookie line; HTTP/2 gateways may split it.
            if let Some(more) = text() {
                head.cookie = Some(match head.cookie.take() {
                    Some(before) => format!("{before}; {more}"),
                    None => more,
                });
            }
        } else if is_proxy_marker(name) {
            head.proxied = true;
        }
    }
    head.framing = match (length, chunked) {
        (Some(_), true) => {
            return Err(reject(
                400,
                "both Content-Length and Transfer-Encoding given",
            ))
        }
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
        // The contract: a request with neither has an empty body.
        (None, false) => Framing::Length(0),
    };
    Ok(head)
}

/// Headers that only a proxy (or a client pretending to be behind one) sends: the standard
/// `Forwarded` and `Via`, every `X-Forwarded-*`, and the vendors' client-address headers. A
/// request carrying one does not come from the peer address the socket shows.
fn is_proxy_marker(name: &str) -> bool {
    const MARKERS: [&str; 10] = [
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "x-proxyuser-ip",
    ];
    let forwarded = name
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("x-forwarded-"));
    forwarded || MARKERS.iter().any(|m| name.eq_ignore_ascii_case(m))
}

/// Splits a request target into path and raw query; accepts origin-form, absolute-form and `*`.
fn split_target(target: &str) -> Result<(String, String), Rejection> {
    let target = match target.split_once("://") {
        Some((scheme, after))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            after.find('/').and_then(|p| after.get(p..)).unwrap_or("/")
        }
        _ => target,
    };
    if !target.starts_with('/') && target != "*" {
        return Err(reject(400, "request target must be a path"));
    }
    let target = target.split('#').next().unwrap_or_default();
    Ok(match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (target.to_owned(), String::new()),
    })
}

/// Reads a `Content-Length` value: one decimal number, nothing else (no sign, no list).
/// A number over `max_body` is refused (413) as soon as it is seen, before it can overflow.
fn parse_length(value: &[u8], max_body: usize) -> Result<usize, Rejection> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(reject(400, "invalid Content-Length"));
    }
    let mut n: usize = 0;
    for &d in value {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .filter(|&n| n <= max_body)
            .ok_or(TOO_LARGE)?;
    }
    Ok(n)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
