//! The request path as a connection sees it: arbitrary bytes, split at arbitrary points,
//! through the parser, the head judge (routes, publish access, names) and the parameters.
//! Asserts that nothing panics and that the split input gives the outcomes of the whole.
//!
//! The first byte says how many split points follow (0 to 7), each two bytes; the rest is
//! the input.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sse_edge::auth::access::{check_head, Access, PublishAccess, StreamAccess};
use sse_edge::wire::http::{self, Head, Rejection, Request, RequestParser, Route, Step};
use sse_edge::wire::params::{self, Publish, Subscribe};

const MAX_BODY: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Head(Box<Head>, Result<(), Rejection>),
    Publish(Request, Result<Publish, Rejection>),
    Subscribe(Request, Result<Subscribe, Rejection>),
    Other(Request),
    Refused(Rejection),
}

fn run(input: &[u8], cuts: &[usize], access: &Access, peer: IpAddr) -> Vec<Outcome> {
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
                    let head = parser.head().cloned().expect("a head after Step::Head");
                    let route = http::route(head.method, &head.path);
                    let verdict = match route {
                        Route::NotFound | Route::WrongMethod(_) => Err(Rejection {
                            status: 404,
                            reason: "refused by route",
                        }),
                        _ => check_head(route, &head, access, Some(peer), 0, false)
                            .map(|_| ()),
                    };
                    if verdict.is_ok() {
                        parser.accept_head();
                    } else {
                        parser.skip_body();
                    }
                    out.push(Outcome::Head(Box::new(head), verdict));
                }
                Ok(Step::Request(request)) => {
                    out.push(match http::route(request.head.method, &request.head.path) {
                        Route::Broadcast => {
                            let publish =
                                params::parse_publish(request.clone(), std::time::UNIX_EPOCH);
                            Outcome::Publish(request, publish)
                        }
                        Route::Stream => {
                            let subscribe = params::parse_subscribe(&request);
                            Outcome::Subscribe(request, subscribe)
                        }
                        _ => Outcome::Other(request),
                    });
                }
                Err(rejection) => {
                    out.push(Outcome::Refused(rejection));
                    return out;
                }
            }
        }
    }
    out
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
    let access = Access {
        publish: PublishAccess::new(None, None, vec!["127.0.0.0/8".parse().unwrap()]),
        streams: StreamAccess::new(None, false),
    };
    let peer = IpAddr::from([127, 0, 0, 1]);
    let whole = run(input, &[], &access, peer);
    let split = run(input, &cuts, &access, peer);
    assert_eq!(whole, split, "split input read differently");
});
