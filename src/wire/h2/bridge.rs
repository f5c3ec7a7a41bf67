//! HTTP/2 heads onto the edge's one set of HTTP rules, and its answers back.
//!
//! A request head that arrives in HEADERS is written out as the HTTP/1.1 head it stands for
//! (`:authority` as `Host`, split `cookie` fields joined by the parser as they are for
//! HTTP/1.1) and read by [`crate::wire::http::parse_head`], so routing, access, CORS, publish
//! rules and parameters judge one [`Head`] whatever the protocol: there is no second copy of
//! them. An answer, built once as HTTP/1.1 bytes by the same code, becomes a response head
//! for HPACK (status and fields, without the connection-specific ones RFC 9113 §8.2.2 forbids)
//! and the body, a slice of the same buffer.

use bytes::Bytes;

use super::conn::RequestHead;
use super::hpack;
use crate::wire::http::{self, Head, Rejection};

/// Fields an HTTP/2 response must not carry (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "upgrade",
];

/// Fields whose values no intermediary should keep in a table (RFC 7541 §7.1.3).
const NEVER_INDEXED: [&str; 2] = ["set-cookie", "www-authenticate"];

/// The [`Head`] an HTTP/2 request head stands for, judged by the HTTP/1.1 parser's rules
/// (`max_body` for a `content-length`).
pub fn head(request: &RequestHead, max_body: usize) -> Result<Head, Rejection> {
    let mut raw = Vec::with_capacity(256);
    raw.extend_from_slice(request.method());
    raw.push(b' ');
    raw.extend_from_slice(request.path());
    raw.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = request.authority().filter(|a| !a.is_empty());
    if let Some(authority) = authority {
        raw.extend_from_slice(b"host: ");
        raw.extend_from_slice(authority);
        raw.extend_from_slice(b"\r\n");
    }
    for (name, value) in request.fields() {
        // §8.3.1: `:authority` stands for Host when both are given.
        if authority.is_some() && name == b"host" {
            continue;
        }
        raw.extend_from_slice(name);
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let mut head = http::parse_head(&raw, max_body)?;
    // One connection carries many requests; none of them may end it.
    head.keep_alive = true;
    head.expects_continue = false;
    Ok(head)
}

/// A response translated for HTTP/2: the HPACK block of its head, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `:status` and the fields, never indexed in a table (we keep none).
    pub block: Vec<u8>,
    /// The body: a slice of the HTTP/1.1 answer, not a copy.
    pub body: Bytes,
}

/// Translates an HTTP/1.1 answer built by the edge (a status line, fields, a blank line, the
/// body) into an HTTP/2 head and body; `None` if it is not one (never, for the edge's own).
pub fn response(http1: &Bytes) -> Option<Response> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut fields);
    let httparse::Status::Complete(len) = parsed.parse(http1).ok()? else {
        return None;
    };
    let mut block = Vec::with_capacity(128);
    hpack::encode_status(parsed.code?, &mut block);
    for field in parsed.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            continue;
        }
        let secret = NEVER_INDEXED.contains(&name.as_str());
        hpack::encode_field(name.as_bytes(), field.value, secret, false, &mut block);
    }
    Some(Response {
        block,
        body: http1.slice(len..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::h2::hpack::{Decoded, Decoder, HeaderList};

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut list = HeaderList::default();
        let done = Decoder::default()
            .decode(block, 1 << 16, &mut list)
            .unwrap();
        assert_eq!(done, Decoded::Complete);
        list.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn an_answer_loses_its_connection_fields_and_keeps_its_body_shared() {
        let http1 = http::response(
            404,
            "text/plain",
            b"no such path\n",
            false,
            "Allow: GET\r\n",
        );
        let r = response(&http1).unwrap();
        let fields = decode(&r.block);
        assert_eq!(fields[0], (":status".into(), "404".into()));
        assert!(fields.iter().all(|(n, _)| n != "connection"));
        assert!(fields.contains(&("allow".into(), "GET".into())));
        assert!(fields.contains(&("content-length".into(), "13".into())));
        assert_eq!(&r.body[..], b"no such path\n");
        // A slice of the same buffer.
        assert_eq!(r.body.as_ptr(), http1[http1.len() - 13..].as_ptr());
    }

    #[test]
    fn a_stream_head_becomes_a_response_head_without_a_body() {
        let mut head = http::STREAM_HEAD_START.to_vec();
        head.extend_from_slice(b"\r\n");
        let r = response(&Bytes::from(head)).unwrap();
        let fields = decode(&r.block);
        assert_eq!(fields[0], (":status".into(), "200".into()));
        assert!(fields.contains(&("content-type".into(), "text/event-stream".into())));
        assert!(fields.iter().all(|(n, _)| n != "connection"));
        assert!(r.body.is_empty());
    }
}
