//! HTTP/1.1 at the edge: the per-connection request parser ([`RequestParser`]), routes, and
//! the few responses the server sends. Pure: no sockets here.
//!
//! A rejection always ends the connection when it is a framing error, because the position
//! of the next request in the byte stream is then unknown.

mod parser;
#[cfg(test)]
mod proptests;

pub use parser::{parse_head, Framing, Head, Request, RequestParser, Shape, Step, MAX_CHUNK_LINE};

use bytes::Bytes;

/// Longest request head accepted (431 beyond).
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines accepted in one head (431 beyond).
pub(crate) const MAX_HEADERS: usize = 64;

/// The response head of every event stream up to its CORS lines ([`crate::wire::cors`]) and the
/// blank line. The body that follows is close-delimited (no `Content-Length`, no chunking),
/// so the very same frame bytes can go to every client.
pub const STREAM_HEAD_START: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Connection: keep-alive\r\n\
X-Accel-Buffering: no\r\n";

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

/// Progress of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
// Made once per call in tests and benchmarks, never kept in bulk: size does not matter.
#[allow(clippy::large_enum_variant)]
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

/// Parses the request at the start of `buf` in one go, accepting whatever its head asks;
/// bodies over `max_body` bytes are refused (413). For tests and benchmarks: the server feeds
/// a [`RequestParser`] per connection instead.
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<Parse, Rejection> {
    let mut parser = RequestParser::default();
    parser.feed(buf);
    let mut expects_continue = false;
    loop {
        match parser.advance(max_body)? {
            Step::NeedMore => return Ok(Parse::Incomplete { expects_continue }),
            Step::Head => expects_continue = parser.accept_head(),
            Step::Request(request) => {
                return Ok(Parse::Complete {
                    request,
                    consumed: buf.len().saturating_sub(parser.buffered()),
                })
            }
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
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            // Two hex digits, read by hand: `u8::from_str_radix` would take "+1" too.
            b'%' => {
                let high = parser::hex_value(bytes.next()?)?;
                let low = parser::hex_value(bytes.next()?)?;
                high << 4 | low
            }
            b => b,
        });
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
        assert_eq!(req.head.method, Method::Get);
        assert_eq!(req.head.path, "/stream");
        assert_eq!(req.head.query, "topic=news");
        assert_eq!(req.head.last_event_id.as_deref(), Some("42"));
        assert!(req.head.keep_alive);
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
        assert_eq!(next.head.path, "/healthz");
    }

    #[test]
    fn chunked_body_with_extensions() {
        let wire = b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=x;flag;q=\"a \\\"b\\\" c\"\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nNEXT";
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
            413
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
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.head.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .head
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .0
                .head
                .keep_alive
        );
        assert!(complete(b"GET / HTTP/1.1\r\n\r\n").0.head.keep_alive);
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
        assert_eq!(
            (req.head.path.as_str(), req.head.query.as_str()),
            ("/stream", "x=1")
        );
        let (req, _) = complete(b"OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(req.head.path, "*");
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

    const CHUNKED_HEAD: &[u8] = b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn chunked(body: &[u8]) -> Vec<u8> {
        [CHUNKED_HEAD, body].concat()
    }

    #[test]
    fn chunk_sizes_that_would_wrap_are_refused_not_added() {
        // The crash that started issue #11: a second size near u64::MAX once wrapped the sum.
        let crash =
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nfffffffffffffffe\r\n";
        assert_eq!(status_of(crash), 413);
        for size in [
            &b"ffffffffffffffff"[..],
            b"10000000000000000",
            b"fffffffffffffffffffffffffffffffffffff",
            b"7fffffffffffffff",
        ] {
            let wire = chunked(&[size, b"\r\n"].concat());
            assert_eq!(status_of(&wire), 413, "{}", String::from_utf8_lossy(size));
        }
        // Leading zeros are a valid hex number, but bounded by the line length.
        let zeros = chunked(&[&[b'0'; MAX_CHUNK_LINE + 1][..], b"1\r\n"].concat());
        assert_eq!(status_of(&zeros), 400);
        for len in ["18446744073709551615", "18446744073709551616", "1025"] {
            let wire = format!("POST /b HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
            assert_eq!(status_of(wire.as_bytes()), 413, "{len}");
        }
    }

    #[test]
    fn framing_a_proxy_could_read_differently_is_400() {
        let cases: &[(&str, &[u8])] = &[
            ("TE on 1.0", b"POST /b HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("bare LF head", b"GET / HTTP/1.1\nHost: a\n\n"),
            ("bare LF header", b"GET / HTTP/1.1\r\nHost: a\n\r\n"),
            ("bare CR", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
            ("obs-fold", b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n"),
            ("obs-fold tab", b"GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n"),
            ("leading space TE", b"POST /b HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n"),
            ("space before colon", b"POST /b HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n"),
            ("CL list", b"POST /b HTTP/1.1\r\nContent-Length: 1,1\r\n\r\nx"),
            ("CL plus", b"POST /b HTTP/1.1\r\nContent-Length: +1\r\n\r\nx"),
            ("CL empty", b"POST /b HTTP/1.1\r\nContent-Length: \r\n\r\n"),
            ("CL and TE", b"POST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("duplicate TE", b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("TE list", b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            ("TE identity", b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
            ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("two Origins", b"GET / HTTP/1.1\r\nOrigin: http://a\r\nOrigin: http://b\r\n\r\n"),
            ("NUL in header", b"GET / HTTP/1.1\r\nLast-Event-ID: a\x00b\r\n\r\n"),
            ("two Authorizations", b"GET /stream HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"),
            ("two Authorizations, any case", b"POST /broadcast HTTP/1.1\r\nauthorization: Bearer a\r\nAUTHORIZATION: Bearer a\r\n\r\n"),
            ("two Last-Event-IDs", b"GET /stream HTTP/1.1\r\nLast-Event-ID: 5\r\nLast-Event-ID: 9\r\n\r\n"),
            ("a second Last-Event-ID that is not UTF-8", b"GET /stream HTTP/1.1\r\nLast-Event-ID: 5\r\nLast-Event-ID: \xff\r\n\r\n"),
            ("a second Host that is not UTF-8", b"GET / HTTP/1.1\r\nHost: \xff\r\nHost: a\r\n\r\n"),
        ];
        for (name, wire) in cases {
            assert_eq!(status_of(wire), 400, "{name}");
        }
        let chunk_cases: &[(&str, &[u8])] = &[
            ("bare LF size line", b"1\nx\r\n0\r\n\r\n"),
            ("bare LF after data", b"1\r\nx\n0\r\n\r\n"),
            ("bare CR size line", b"1\rx\r\n"),
            ("space in extension", b"1; a=b\r\nx\r\n0\r\n\r\n"),
            ("space before extension", b"1 ;a\r\nx\r\n0\r\n\r\n"),
            ("empty extension name", b"1;=b\r\nx\r\n0\r\n\r\n"),
            ("empty extension value", b"1;a=\r\nx\r\n0\r\n\r\n"),
            ("control in quoted value", b"1;a=\"\x01\"\r\nx\r\n0\r\n\r\n"),
            ("junk after quoted value", b"1;a=\"b\"c\r\nx\r\n0\r\n\r\n"),
            ("non-token extension", b"1;a@b\r\nx\r\n0\r\n\r\n"),
            ("sign in size", b"+1\r\nx\r\n0\r\n\r\n"),
            ("empty size", b"\r\nx\r\n0\r\n\r\n"),
            ("trailer", b"0\r\nX-Trailer: 1\r\n\r\n"),
            ("data longer than size", b"1\r\nxy\r\n0\r\n\r\n"),
        ];
        for (name, body) in chunk_cases {
            assert_eq!(status_of(&chunked(body)), 400, "{name}");
        }
    }

    #[test]
    fn the_parser_stops_at_the_head_and_can_skip_a_refused_body() {
        let mut parser = RequestParser::default();
        parser.feed(b"POST /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel");
        assert_eq!(parser.advance(LIMIT), Ok(Step::Head));
        let head = parser.head().unwrap();
        assert_eq!(
            (head.path.as_str(), head.framing),
            ("/nope", Framing::Length(5))
        );
        parser.skip_body();
        assert_eq!(parser.advance(LIMIT), Ok(Step::NeedMore));
        parser.feed(b"loGET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(parser.advance(LIMIT), Ok(Step::Head));
        assert_eq!(parser.head().unwrap().path, "/healthz");
        assert!(!parser.accept_head());
        assert!(matches!(parser.advance(LIMIT), Ok(Step::Request(r)) if r.head.path == "/healthz"));
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn continue_is_owed_only_on_http_1_1_and_before_the_body() {
        let owed = |wire: &[u8]| {
            let mut parser = RequestParser::default();
            parser.feed(wire);
            assert_eq!(parser.advance(LIMIT), Ok(Step::Head));
            parser.accept_head()
        };
        let expect = "Content-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert!(owed(format!("POST /b HTTP/1.1\r\n{expect}").as_bytes()));
        assert!(!owed(format!("POST /b HTTP/1.0\r\n{expect}").as_bytes()));
        assert!(!owed(format!("POST /b HTTP/1.1\r\n{expect}abc").as_bytes()));
        assert!(!owed(b"POST /b HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
    }

    #[test]
    fn a_body_in_small_pieces_is_decoded_as_it_comes() {
        let mut parser = RequestParser::default();
        parser.feed(CHUNKED_HEAD);
        assert_eq!(parser.advance(LIMIT), Ok(Step::Head));
        let mut body = Vec::new();
        for _ in 0..100 {
            body.extend_from_slice(b"5;x=1\r\nabcde\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        for piece in body.chunks(3) {
            assert_eq!(parser.advance(LIMIT), Ok(Step::NeedMore));
            parser.feed(piece);
            // Everything fed is consumed at once: nothing is re-read later.
            let step = parser.advance(LIMIT);
            assert!(parser.buffered() == 0, "{step:?}");
            if let Ok(Step::Request(r)) = step {
                assert_eq!(r.body.len(), 500);
                return;
            }
        }
        panic!("no request");
    }

    #[test]
    fn leading_empty_lines_are_ignored() {
        let (req, used) = complete(b"\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((req.head.path.as_str(), used), ("/healthz", 29));
    }

    #[test]
    fn percent_decoding_takes_hex_digits_only() {
        for bad in ["a=%+1", "a=%-1", "a=%1", "a=%", "a=%g0", "a=%ff"] {
            assert!(query_pairs(bad).next().unwrap().is_err(), "{bad}");
        }
        let pairs: Vec<_> = query_pairs("a=%41%6a%00").collect();
        assert_eq!(pairs, vec![Ok(("a".into(), "Aj\0".into()))]);
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
