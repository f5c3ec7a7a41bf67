//! Property tests of the HTTP/1.1 parser: any bytes under any split, valid requests parsed
//! back under any split, query decoding and header parsing on any string. Each runs a few
//! hundred cases. What is built on the parser is tested where it lives: the parameters and
//! the SSE framing in `wire/proptests.rs`, the head's judge in `auth/proptests.rs`.

use proptest::prelude::*;

use super::{query_pairs, Framing, Method, Rejection, Request, RequestParser, Step};

const MAX_BODY: usize = 256;

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        ..ProptestConfig::default()
    }
}

/// What the parser said, in order, with a judge that accepts every head.
#[derive(Debug, PartialEq, Eq)]
// Test-only and short-lived: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Head(Box<super::Head>),
    Request(Request),
    Refused(Rejection),
}

/// Feeds `input` cut at `cuts`, advancing as far as possible after each piece.
fn outcomes(input: &[u8], cuts: &[usize]) -> Vec<Outcome> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut parser = RequestParser::default();
    let mut out = Vec::new();
    let mut from = 0;
    for to in cuts {
        parser.feed(&input[from..to]);
        from = to;
        loop {
            match parser.advance(MAX_BODY) {
                Ok(Step::NeedMore) => break,
                Ok(Step::Head) => {
                    out.push(Outcome::Head(Box::new(parser.head().cloned().unwrap())));
                    parser.accept_head();
                }
                Ok(Step::Request(r)) => out.push(Outcome::Request(r)),
                Err(r) => {
                    out.push(Outcome::Refused(r));
                    return out;
                }
            }
        }
    }
    out
}

/// Pieces of HTTP that random inputs are built from, so they get past the first line.
const FRAGMENTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /broadcast?topic=a HTTP/1.1\r\n",
    b"POST /b HTTP/1.0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Expect: 100-continue\r\n",
    b"Host: localhost\r\n",
    b"\r\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"5;a=\"b\"\r\nhello\r\n",
    b"3\r\nabc\r\n",
    b"ffffffffffffffff\r\n",
    b"hello",
    b"\n",
    b"\r",
    b" ",
    b";",
    b"\"",
    b":",
];

fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(FRAGMENTS).prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(cases())]

    /// (a) Any bytes, split anywhere: no panic, and the same outcomes as fed whole.
    #[test]
    fn any_split_gives_the_outcomes_of_the_whole(
        input in hostile_input(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = outcomes(&input, &[]);
        prop_assert_eq!(outcomes(&input, &cuts), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = outcomes(&input, &[]);
        prop_assert_eq!(outcomes(&input, &cuts), whole);
    }
}

/// One valid request as generated, with the wire bytes it becomes.
#[derive(Debug, Clone)]
struct Valid {
    method: &'static str,
    path: String,
    query: String,
    last_event_id: Option<String>,
    body: Vec<u8>,
    wire: Vec<u8>,
}

fn valid_request() -> impl Strategy<Value = Valid> {
    (
        prop::sample::select(&["GET", "POST", "OPTIONS", "DELETE"][..]),
        "/[a-z0-9._-]{0,12}",
        prop::option::of("[a-z]{1,6}=[A-Za-z0-9%]{0,8}"),
        prop::collection::vec(("X-[A-Za-z-]{1,10}", "[!-~]([ -~]{0,20}[!-~])?"), 0..6),
        prop::option::of("[0-9]{1,8}"),
        prop::collection::vec(any::<u8>(), 0..MAX_BODY),
        prop::option::of(prop::collection::vec(1usize..40, 1..8)),
    )
        .prop_map(|(method, path, query, headers, id, body, chunks)| {
            let target = match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let mut wire = format!("{method} {target} HTTP/1.1\r\nHost: edge\r\n").into_bytes();
            for (name, value) in &headers {
                wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            if let Some(id) = &id {
                wire.extend_from_slice(format!("Last-Event-ID: {id}\r\n").as_bytes());
            }
            match &chunks {
                None => {
                    wire.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    wire.extend_from_slice(&body);
                }
                Some(sizes) => {
                    wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    let mut rest = &body[..];
                    let mut sizes = sizes.iter().cycle();
                    while !rest.is_empty() {
                        let n = (*sizes.next().unwrap()).min(rest.len());
                        let ext = if n % 3 == 0 { ";x=\"y\"" } else { "" };
                        wire.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
                        wire.extend_from_slice(&rest[..n]);
                        wire.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    wire.extend_from_slice(b"0\r\n\r\n");
                }
            }
            Valid {
                method,
                path,
                query: query.unwrap_or_default(),
                last_event_id: id,
                body,
                wire,
            }
        })
}

proptest! {
    #![proptest_config(cases())]

    /// (b) Valid pipelined requests parse back to what was generated, under any split.
    #[test]
    fn valid_requests_parse_back_under_any_split(
        requests in prop::collection::vec(valid_request(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: Vec<u8> = requests.iter().flat_map(|r| r.wire.clone()).collect();
        let got: Vec<Request> = outcomes(&wire, &cuts)
            .into_iter()
            .filter_map(|o| match o {
                Outcome::Request(r) => Some(r),
                Outcome::Head(h) => {
                    assert!(matches!(h.framing, Framing::Length(_) | Framing::Chunked));
                    None
                }
                Outcome::Refused(r) => panic!("a valid request was refused: {r:?}"),
            })
            .collect();
        prop_assert_eq!(got.len(), requests.len());
        for (got, want) in got.iter().zip(&requests) {
            let method = match want.method {
                "GET" => Method::Get,
                "POST" => Method::Post,
                "OPTIONS" => Method::Options,
                _ => Method::Other,
            };
            prop_assert_eq!(got.head.method, method);
            prop_assert_eq!(&got.head.path, &want.path);
            prop_assert_eq!(&got.head.query, &want.query);
            prop_assert_eq!(&got.head.last_event_id, &want.last_event_id);
            prop_assert_eq!(got.head.host.as_deref(), Some("edge"));
            prop_assert_eq!(&got.body, &want.body);
            prop_assert!(got.head.keep_alive);
        }
    }
}

proptest! {
    #![proptest_config(cases())]

    /// (d) Query decoding and header parsing never panic.
    #[test]
    fn query_and_headers_never_panic(query in any::<String>(), name in any::<String>(), value in any::<String>()) {
        let _ = query_pairs(&query).count();
        let wire = format!("POST /broadcast?{query} HTTP/1.1\r\n{name}: {value}\r\nHost: {value}\r\nOrigin: {value}\r\nAuthorization: Bearer {value}\r\nCookie: a=b; sse_edge_token={value}\r\n\r\n");
        let mut parser = RequestParser::default();
        parser.feed(wire.as_bytes());
        if parser.advance(MAX_BODY) == Ok(Step::Head) {
            let head = parser.head().unwrap();
            let _ = super::route(head.method, &head.path);
        }
    }
}
