//! Property tests across the wire formats: a publish body read from its request, framed as
//! SSE and parsed back as an EventSource would; the parameters on any query and header
//! value. Each runs a few hundred cases.

use proptest::prelude::*;

use crate::wire::event_id::EventId;
use crate::wire::http::{Head, Method, Request};
use crate::wire::{params, sse};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        ..ProptestConfig::default()
    }
}

/// One event as a WHATWG `EventSource` sees it.
#[derive(Debug, PartialEq, Eq)]
struct SeenEvent {
    id: Option<String>,
    event: String,
    data: String,
}

/// Parses an event stream by the WHATWG EventSource rules: lines end in CRLF, LF or CR;
/// `data` appends its value and LF; a blank line dispatches (dropping one trailing LF) unless
/// no data came. Returns the events and the names of fields other than id/event/data.
fn parse_event_stream(stream: &str) -> (Vec<SeenEvent>, Vec<String>) {
    let mut events = Vec::new();
    let mut other = Vec::new();
    let (mut data, mut event, mut last_id) = (String::new(), String::new(), None);
    let stream = stream.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<&str> = stream.split('\n').collect();
    // A final piece without a line end is not a line (the stream stopped mid-line).
    lines.pop();
    for line in lines {
        if line.is_empty() {
            if data.is_empty() {
                event.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            let name = if event.is_empty() {
                "message".to_owned()
            } else {
                std::mem::take(&mut event)
            };
            events.push(SeenEvent {
                id: last_id.clone(),
                event: name,
                data: std::mem::take(&mut data),
            });
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_id = Some(value.to_owned()),
            other_field => other.push(other_field.to_owned()),
        }
    }
    (events, other)
}

fn publish_request(query: String, body: Vec<u8>) -> Request {
    Request::new(Head::new(Method::Post, "/broadcast".into(), query, 1), body)
}

proptest! {
    #![proptest_config(cases())]

    /// (c) Any publish body comes out of an EventSource as the same text, line ends as LF:
    /// one event, the given id and name, nothing else.
    #[test]
    fn any_body_round_trips_through_the_sse_framing(
        body in any::<String>().prop_filter("empty bodies become the demo text", |b| !b.is_empty()),
        event in prop::option::of("[A-Za-z0-9_.:-]{1,64}"),
        id in any::<u64>(),
    ) {
        let query = event.as_ref().map(|e| format!("event={e}")).unwrap_or_default();
        let publish = params::parse_publish(publish_request(query, body.clone().into_bytes()), std::time::UNIX_EPOCH).unwrap();
        let frame = sse::encode_event(EventId::local(id), None, publish.event.as_deref(), &publish.data);
        let (events, other) = parse_event_stream(std::str::from_utf8(&frame).unwrap());
        prop_assert!(other.is_empty(), "extra fields {:?}", other);
        prop_assert_eq!(events.len(), 1);
        let seen = &events[0];
        prop_assert_eq!(seen.id.clone(), Some(id.to_string()));
        prop_assert_eq!(&seen.event, event.as_deref().unwrap_or("message"));
        prop_assert_eq!(&seen.data, &body.replace("\r\n", "\n").replace('\r', "\n"));
    }

    /// (d) Stream and publish parameters never panic.
    #[test]
    fn parameters_never_panic(query in any::<String>(), value in any::<String>()) {
        let mut request = publish_request(query.clone(), value.clone().into_bytes());
        request.head.last_event_id = Some(value.clone());
        let _ = params::parse_subscribe(&request);
        let _ = params::parse_publish(request, std::time::UNIX_EPOCH);
    }
}
