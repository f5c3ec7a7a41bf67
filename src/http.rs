//! HTTP/1.1 at the edge: parse one request (head by httparse, body by length or chunked),
//! route it, and build the few responses the server sends. Pure: no sockets here.
//!
//! The parser is called again with the whole buffer each time more bytes arrive; it either
//! says the request is still incomplete, returns it with the number of bytes it used (so
//! pipelined requests that follow stay in the buffer), or rejects it with a status. A
//! rejection always ends the connection, because after a framing error the position of the
//! next request in the byte stream is unknown.

use bytes::Bytes;

/// Longest request head accepted (431 beyond).
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines accepted in one head (431 beyond).
const MAX_HEADERS: usize = 64;

/// The response head of every event stream. The body that follows is close-delimited (no
/// `Content-Length`, no chunking), so the very same frame bytes can go to every client.
pub const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Connection: keep-alive\r\n\
Access-Control-Allow-Origin: *\r\n\
X-Accel-Buffering: no\r\n\
\r\n";

/// The interim response owed to a client that sent `Expect: 100-continue` (curl does, for
/// bodies over 1 KiB, and otherwise waits a second before sending the body).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Request methods the server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `OPTIONS`
    Options,
    /// Anything else (answered 405).
    Other,
}

/// One complete request, owned (its buffer is reused for the next one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The raw query string after `?` (empty when absent), decoded by [`query_pairs`].
    pub query: String,
    /// The `Last-Event-ID` header, when present and valid UTF-8.
    pub last_event_id: Option<String>,
    /// The `Authorization` header, when present and valid UTF-8.
    pub authorization: Option<String>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The request body (de-chunked).
    pub body: Vec<u8>,
}

/// Progress of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed. `expects_continue` is set once the head is complete and the
    /// client waits for `100 Continue` before it sends the body.
    Incomplete {
        /// The client sent `Expect: 100-continue` and the body has not arrived yet.
        expects_continue: bool,
    },
    /// A whole request, and how many bytes of the buffer it used.
    Complete {
        /// The request.
        request: Request,
        /// Bytes of the buffer this request used; what follows is the next request.
        consumed: usize,
    },
}

/// A request the server refuses, with its status and one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status code.
    pub status: u16,
    /// One line of plain text for the response body.
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the browser page.
    Page,
    /// `GET /stream`: an event stream.
    Stream,
    /// `POST /broadcast`: publish an event.
    Broadcast,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /healthz`: liveness.
    Health,
    /// `OPTIONS` anything: CORS preflight.
    Preflight,
    /// A known path with the wrong method; carries the `Allow` header value.
    WrongMethod(&'static str),
    /// An unknown path.
    NotFound,
}

/// Maps a method and path to a route.
pub fn route(method: Method, path: &str) -> Route {
    if method == Method::Options {
        return Route::Preflight;
    }
    let (wanted, found, allow) = match path {
        "/" | "/index.html" => (Method::Get, Route::Page, "GET, OPTIONS"),
        "/stream" => (Method::Get, Route::Stream, "GET, OPTIONS"),
        "/broadcast" => (Method::Post, Route::Broadcast, "POST, OPTIONS"),
        "/metrics" => (Method::Get, Route::Metrics, "GET, OPTIONS"),
        "/healthz" => (Method::Get, Route::Health, "GET, OPTIONS"),
        _ => return Route::NotFound,
    };
    if method == wanted {
        found
    } else {
        Route::WrongMethod(allow)
    }
}

/// How the body of a request is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

/// Parses the request at the start of `buf`; bodies over `max_body` bytes are refused (413).
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<Parse, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(reject(431, "request head larger than 8 KiB"))
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(reject(431, "request head larger than 8 KiB"))
        }
        Ok(httparse::Status::Partial) => {
            return Ok(Parse::Incomplete {
                expects_continue: false,
            })
        }
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431, "too many header lines")),
        Err(_) => return Err(reject(400, "malformed request head")),
    };

    let method = match head.method.unwrap_or_default() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let (path, query) = split_target(head.path.unwrap_or_default())?;
    let mut keep_alive = head.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut expects_continue = false;
    let mut last_event_id = None;
    let mut authorization = None;

    for h in head.headers.iter() {
        let value = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value)?;
            if length.is_some_and(|m| m != n) {
                return Err(reject(400, "conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !trim(value).eq_ignore_ascii_case(b"chunked") || chunked {
                return Err(reject(400, "only Transfer-Encoding: chunked is supported"));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expects_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = std::str::from_utf8(trim(value)).ok().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = std::str::from_utf8(trim(value)).ok().map(str::to_owned);
        }
    }

    let framing = match (length, chunked) {
        (Some(_), true) => {
            return Err(reject(
                400,
                "both Content-Length and Transfer-Encoding given",
            ))
        }
        (Some(n), false) if n > max_body => return Err(reject(413, "request body too large")),
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
        // The contract: a request with neither has an empty body.
        (None, false) => Framing::Length(0),
    };

    let rest = &buf[head_len..];
    let (body, body_len) = match framing {
        Framing::Length(n) if rest.len() < n => return Ok(Parse::Incomplete { expects_continue }),
        Framing::Length(n) => (rest[..n].to_vec(), n),
        Framing::Chunked => match decode_chunked(rest, max_body)? {
            Some(done) => done,
            None => return Ok(Parse::Incomplete { expects_continue }),
        },
    };

    Ok(Parse::Complete {
        request: Request {
            method,
            path,
            query,
            last_event_id,
            authorization,
            keep_alive,
            body,
        },
        consumed: head_len + body_len,
    })
}

/// Splits a request target into path and raw query; accepts origin-form, absolute-form and `*`.
fn split_target(target: &str) -> Result<(String, String), Rejection> {
    let target = match target.find("://") {
        Some(at)
            if target[..at].eq_ignore_ascii_case("http")
                || target[..at].eq_ignore_ascii_case("https") =>
        {
            let after = &target[at + 3..];
            after.find('/').map_or("/", |p| &after[p..])
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

fn parse_length(value: &[u8]) -> Result<usize, Rejection> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(reject(400, "invalid Content-Length"));
    }
    Ok(digits
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
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

/// Decodes a chunked body at the start of `buf`: `None` while incomplete, else the body and
/// the bytes used (trailers included, and ignored).
fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, Rejection> {
    // Chunk-size lines and extensions are overhead a client could inflate without limit;
    // bound the raw bytes so the buffer stays bounded too.
    let max_raw = max_body.saturating_mul(2).saturating_add(MAX_HEAD);
    let incomplete = |at: usize| {
        if at > max_raw {
            Err(reject(413, "request body too large"))
        } else {
            Ok(None)
        }
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return incomplete(buf.len()),
            Err(_) => return Err(reject(400, "malformed chunked body")),
        };
        at += size_len;
        if size == 0 {
            break;
        }
        if body.len() as u64 + size > max_body as u64 {
            return Err(reject(413, "request body too large"));
        }
        let size = size as usize;
        if buf.len() < at + size + 2 {
            return incomplete(buf.len());
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(reject(400, "malformed chunked body"));
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
    // Trailer section: header lines, then an empty line.
    loop {
        let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            if buf.len() - at > MAX_HEAD {
                return Err(reject(431, "chunked trailers larger than 8 KiB"));
            }
            return incomplete(buf.len());
        };
        at += end + 2;
        if end == 0 {
            return Ok(Some((body, at)));
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs from a query string.
///
/// Yields `Err` for a pair that is not valid percent-encoding or not UTF-8 once decoded.
pub fn query_pairs(query: &str) -> impl Iterator<Item = Result<(String, String), Rejection>> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k), percent_decode(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(reject(400, "malformed query string")),
        }
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The reason phrase of the statuses this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Builds a whole response with a `Content-Length` body.
///
/// `extra_headers` are complete lines, each ending in `\r\n`.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &str,
) -> Bytes {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}{extra_headers}\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" },
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Builds a plain-text error response whose body is the one-line reason.
pub fn error_response(status: u16, reason: &str, keep_alive: bool, extra_headers: &str) -> Bytes {
    response(
        status,
        "text/plain; charset=utf-8",
        format!("{reason}\n").as_bytes(),
        keep_alive,
        extra_headers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, LIMIT) {
            Ok(Parse::Complete { request, consumed }) => (request, consumed),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn status_of(buf: &[u8]) -> u16 {
        match parse_request(buf, LIMIT) {
            Err(r) => r.status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    const BROWSER_GET: &[u8] = b"GET /stream?topic=news HTTP/1.1\r\n\
Host: localhost:8080\r\n\
User-Agent: Mozilla/5.0\r\n\
Accept: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Last-Event-ID: 42\r\n\
Connection: keep-alive\r\n\r\n";

    #[test]
    fn browser_stream_request() {
        let (req, used) = complete(BROWSER_GET);
        assert_eq!(used, BROWSER_GET.len());
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/stream");
        assert_eq!(req.query, "topic=news");
        assert_eq!(req.last_event_id.as_deref(), Some("42"));
        assert!(req.keep_alive);
        assert!(req.body.is_empty());
    }

    #[test]
    fn head_arriving_byte_by_byte() {
        for end in 0..BROWSER_GET.len() {
            assert_eq!(
                parse_request(&BROWSER_GET[..end], LIMIT),
                Ok(Parse::Incomplete {
                    expects_continue: false
                }),
                "prefix of {end} bytes"
            );
        }
        complete(BROWSER_GET);
    }

    #[test]
    fn body_by_content_length_byte_by_byte_then_pipelined_request() {
        let mut wire = b"POST /broadcast HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let first = wire.len();
        for end in 0..first {
            assert!(matches!(
                parse_request(&wire[..end], LIMIT),
                Ok(Parse::Incomplete { .. })
            ));
        }
        wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
        let (req, used) = complete(&wire);
        assert_eq!((req.body.as_slice(), used), (&b"hello"[..], first));
        let (next, _) = complete(&wire[used..]);
        assert_eq!(next.path, "/healthz");
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let wire = b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=x\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (req, used) = complete(wire);
        assert_eq!(req.body, b"hello, world");
        assert_eq!(&wire[used..], b"NEXT");
        for end in 0..used {
            assert!(
                matches!(
                    parse_request(&wire[..end], LIMIT),
                    Ok(Parse::Incomplete { .. })
                ),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn chunked_body_limits_and_errors() {
        let head = b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let over = [&head[..], b"401\r\n"].concat(); // 0x401 = 1025 > LIMIT
        assert_eq!(status_of(&over), 413);
        let bad_size = [&head[..], b"zz\r\nab\r\n0\r\n\r\n"].concat();
        assert_eq!(status_of(&bad_size), 400);
        let missing_crlf = [&head[..], b"2\r\nabXX0\r\n\r\n"].concat();
        assert_eq!(status_of(&missing_crlf), 400);
        // Endless tiny chunks cannot grow the buffer without bound.
        let mut tiny = head.to_vec();
        while tiny.len() < 4 * LIMIT + 2 * MAX_HEAD {
            tiny.extend_from_slice(b"0000000001\r\na\r\n");
        }
        assert!(matches!(parse_request(&tiny, LIMIT), Err(r) if r.status == 413));
    }

    #[test]
    fn content_length_limits_and_conflicts() {
        assert_eq!(
            status_of(b"POST /broadcast HTTP/1.1\r\nContent-Length: 1025\r\n\r\n"),
            413
        );
        assert_eq!(
            status_of(b"POST /broadcast HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of(b"POST /b HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of(b"POST /b HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of(b"POST /b HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of(b"POST /b HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400
        );
        let (same, _) =
            complete(b"POST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(same.body, b"x");
    }

    #[test]
    fn no_length_and_no_chunking_means_empty_body() {
        let head = b"POST /broadcast HTTP/1.1\r\n\r\n";
        let (req, used) = complete(&[&head[..], b"trailing"].concat());
        assert!(req.body.is_empty());
        assert_eq!(used, head.len());
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(status_of(&big), 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status_of(&many), 431);
    }

    #[test]
    fn garbage_is_400() {
        assert_eq!(status_of(b"\x00\x01\x02 nonsense\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET stream HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(complete(b"GET / HTTP/1.1\r\n\r\n").0.keep_alive);
    }

    #[test]
    fn expect_continue_is_reported_while_the_body_is_missing() {
        let head = b"POST /broadcast HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            parse_request(head, LIMIT),
            Ok(Parse::Incomplete {
                expects_continue: true
            })
        );
        let whole = [&head[..], b"abc"].concat();
        assert_eq!(complete(&whole).0.body, b"abc");
    }

    #[test]
    fn absolute_form_targets_and_fragments() {
        let (req, _) = complete(b"GET http://example.org/stream?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/stream", "x=1"));
        let (req, _) = complete(b"OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "*");
    }

    #[test]
    fn routes_and_allow_headers() {
        assert_eq!(route(Method::Get, "/"), Route::Page);
        assert_eq!(route(Method::Get, "/stream"), Route::Stream);
        assert_eq!(route(Method::Post, "/broadcast"), Route::Broadcast);
        assert_eq!(
            route(Method::Get, "/broadcast"),
            Route::WrongMethod("POST, OPTIONS")
        );
        assert_eq!(
            route(Method::Post, "/stream"),
            Route::WrongMethod("GET, OPTIONS")
        );
        assert_eq!(
            route(Method::Other, "/healthz"),
            Route::WrongMethod("GET, OPTIONS")
        );
        assert_eq!(route(Method::Options, "/anything"), Route::Preflight);
        assert_eq!(route(Method::Get, "/nope"), Route::NotFound);
    }

    #[test]
    fn query_decoding() {
        let pairs: Vec<_> = query_pairs("topic=a%2Fb&event=x+y&&flag")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("topic".into(), "a/b".into()),
                ("event".into(), "x y".into()),
                ("flag".into(), "".into())
            ]
        );
        assert!(query_pairs("a=%zz").next().unwrap().is_err());
        assert!(query_pairs("a=%ff").next().unwrap().is_err());
        assert!(query_pairs("a=%4").next().unwrap().is_err());
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = error_response(404, "no such path", false, "");
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nno such path\n"));
        let r = response(405, "text/plain", b"", true, "Allow: GET\r\n");
        assert!(std::str::from_utf8(&r)
            .unwrap()
            .contains("Allow: GET\r\n\r\n"));
    }
}
