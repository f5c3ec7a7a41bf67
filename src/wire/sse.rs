//! SSE framing: the bytes one event becomes on the wire, encoded once and shared by every
//! subscriber.
//!
//! Everything here is pure. The one rule that matters for safety: a publisher controls the
//! body, so every line break it contains (`\n`, `\r\n` or a lone `\r`, which the SSE parser
//! all treats as line ends) starts a new `data:` line. No body can end the event early or
//! forge an `id:`/`event:`/`retry:` field. Event names and ids are validated before they
//! reach this module, so they cannot carry line breaks.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::event_id::EventId;

/// The comment sent to a stream that had nothing else to say for a keep-alive period.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Encodes one event: `id:`, optional `event:`, one `data:` line per line of `data`, blank line.
///
/// `epoch` is the cluster's (None with the embedded broker); see [`crate::wire::event_id`].
pub fn encode_event(id: EventId, epoch: Option<&str>, event: Option<&str>, data: &str) -> Bytes {
    let breaks = data.bytes().filter(|&b| b == b'\n' || b == b'\r').count();
    let capacity =
        32 + id_len(id, epoch) + event.map_or(0, |e| e.len() + 8) + data.len() + 7 * (breaks + 1);
    let mut out = BytesMut::with_capacity(capacity);
    out.put_slice(b"id: ");
    put_id(&mut out, id, epoch);
    out.put_u8(b'\n');
    if let Some(event) = event {
        out.put_slice(b"event: ");
        out.put_slice(event.as_bytes());
        out.put_u8(b'\n');
    }
    for line in lines(data.as_bytes()) {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Whether `frame` is what [`encode_event`] makes of some event `id` (with `epoch`): the
/// `id:` line, an optional `event:` line with a valid name
/// ([`is_event_name`](crate::wire::params::is_event_name)), one or more `data:` lines with no
/// line break of their own, and the blank line that ends the event; UTF-8 throughout. A
/// frame that comes from outside this process (a previous process's history) is checked
/// with it, so it cannot carry another field or a second event into a stream.
pub fn is_event_frame(frame: &[u8], id: EventId, epoch: Option<&str>) -> bool {
    let Ok(text) = std::str::from_utf8(frame) else {
        return false;
    };
    let Some(fields) = text.strip_suffix("\n\n") else {
        return false;
    };
    let mut lines = fields.split('\n');
    let id_line = lines.next().and_then(|l| l.strip_prefix("id: "));
    if !id_line.is_some_and(|wire| is_wire_id(wire.as_bytes(), id, epoch)) {
        return false;
    }
    let (mut data, mut named) = (0usize, false);
    for line in lines {
        if let Some(value) = line.strip_prefix("data: ") {
            if value.contains('\r') {
                return false;
            }
            data += 1;
        } else if data == 0
            && !named
            && line
                .strip_prefix("event: ")
                .is_some_and(crate::wire::params::is_event_name)
        {
            // The event's name comes once, before any data.
            named = true;
        } else {
            return false;
        }
    }
    data > 0
}

/// Whether `s` is `id`'s wire form, without allocating.
fn is_wire_id(s: &[u8], id: EventId, epoch: Option<&str>) -> bool {
    let mut rest = s;
    if let Some(epoch) = epoch {
        for part in [
            epoch.as_bytes(),
            b"-",
            itoa(id.ms(), &mut [0; 20]),
            b"-".as_slice(),
        ] {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        }
    }
    rest == itoa(id.seq(), &mut [0; 20])
}

/// Encodes the start of every stream body: the `: connected` comment and the `retry:` hint.
pub fn encode_preamble(retry_ms: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(40);
    out.put_slice(b": connected\nretry: ");
    out.put_slice(itoa(retry_ms, &mut [0; 20]));
    out.put_slice(b"\n\n");
    out.freeze()
}

/// Encodes the preamble of a stream shed at capacity: the `: shed` comment and a long retry.
pub fn encode_shed(retry_ms: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(40);
    out.put_slice(b": shed\nretry: ");
    out.put_slice(itoa(retry_ms, &mut [0; 20]));
    out.put_slice(b"\n\n");
    out.freeze()
}

/// Encodes the `event: gap` notice: frames `from..=to` (`dropped` of them) were not sent.
///
/// Notices carry no `id:`, so the client's last event id stays that of the last real event.
pub fn encode_gap(from: EventId, to: EventId, dropped: u64, epoch: Option<&str>) -> Bytes {
    encode_notice(
        "gap",
        &format!(
            "{{\"from\":\"{}\",\"to\":\"{}\",\"dropped\":{dropped}}}",
            from.wire(epoch),
            to.wire(epoch)
        ),
    )
}

/// The length of [`encode_gap`]'s notice, without encoding it (the slow path of a losing
/// stream measures the notice on every frame and must not allocate).
pub fn gap_len(from: EventId, to: EventId, dropped: u64, epoch: Option<&str>) -> usize {
    const FIXED: usize = "event: gap\ndata: {\"from\":\"\",\"to\":\"\",\"dropped\":}\n\n".len();
    FIXED + id_len(from, epoch) + id_len(to, epoch) + itoa(dropped, &mut [0; 20]).len()
}

/// Writes `id`'s wire form (see [`crate::wire::event_id`]) without allocating.
fn put_id(out: &mut BytesMut, id: EventId, epoch: Option<&str>) {
    if let Some(epoch) = epoch {
        out.put_slice(epoch.as_bytes());
        out.put_u8(b'-');
        out.put_slice(itoa(id.ms(), &mut [0; 20]));
        out.put_u8(b'-');
    }
    out.put_slice(itoa(id.seq(), &mut [0; 20]));
}

/// The length of `id`'s wire form.
fn id_len(id: EventId, epoch: Option<&str>) -> usize {
    let seq = itoa(id.seq(), &mut [0; 20]).len();
    match epoch {
        None => seq,
        Some(epoch) => epoch.len() + 2 + itoa(id.ms(), &mut [0; 20]).len() + seq,
    }
}

/// Most bytes of a requested id echoed back in a `reset` notice: an attacker's 8 KiB header
/// is not worth repeating, and the client knows what it sent.
pub const MAX_ECHOED_ID: usize = 64;

/// Why a requested `Last-Event-ID` cannot be replayed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Events after it were already evicted from the history.
    Expired,
    /// It is not an id this node handed out.
    Unknown,
}

/// Encodes the `event: reset` notice sent before a replay that cannot start where asked.
pub fn encode_reset(
    reason: ResetReason,
    requested: &str,
    oldest: Option<EventId>,
    epoch: Option<&str>,
) -> Bytes {
    let reason = match reason {
        ResetReason::Expired => "expired",
        ResetReason::Unknown => "unknown",
    };
    let oldest = oldest.map_or_else(|| "null".to_owned(), |id| format!("\"{}\"", id.wire(epoch)));
    let mut cut = requested.len().min(MAX_ECHOED_ID);
    while !requested.is_char_boundary(cut) {
        cut -= 1;
    }
    let requested = requested.get(..cut).unwrap_or_default();
    encode_notice(
        "reset",
        &format!(
            "{{\"reason\":\"{reason}\",\"requested\":{},\"oldest\":{oldest}}}",
            json_string(requested)
        ),
    )
}

/// Encodes the `event: expired` notice for a token that expired at `exp` (unix seconds), with
/// the `retry:` after which the browser reconnects (with its refreshed cookie). No id, so
/// the reconnect resumes after the last real event.
pub fn encode_expired(exp: u64, retry_ms: u64) -> Bytes {
    Bytes::from(format!(
        "event: expired\ndata: {{\"exp\":{exp}}}\nretry: {retry_ms}\n\n"
    ))
}

/// A server notice: an event type and one line of JSON data, no id.
fn encode_notice(event: &str, json: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

/// Quotes `s` as a JSON string. Control characters are escaped, so the result is one line.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits a body into SSE lines: `\r\n`, `\n` and a lone `\r` each end one line.
///
/// A body with `n` line breaks yields `n + 1` lines, so a trailing newline survives the
/// round trip as a trailing empty `data:` line (the browser rebuilds `"a\n"` from it).
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                rest = None;
                Some(text)
            }
            Some(at) => {
                let skip = if text[at] == b'\r' && text.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&text[at + skip..]);
                Some(&text[..at])
            }
        }
    })
}

/// Formats `n` in decimal into `buf` without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn single_line_event() {
        assert_eq!(
            text(&encode_event(EventId::local(7), None, None, "hello")),
            "id: 7\ndata: hello\n\n"
        );
    }

    #[test]
    fn event_name_comes_before_data() {
        assert_eq!(
            text(&encode_event(
                EventId::local(12),
                None,
                Some("price.update"),
                "1.5"
            )),
            "id: 12\nevent: price.update\ndata: 1.5\n\n"
        );
    }

    #[test]
    fn every_line_ending_starts_a_new_data_line() {
        assert_eq!(
            text(&encode_event(EventId::local(1), None, None, "a\nb\r\nc\rd")),
            "id: 1\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn empty_lines_and_trailing_breaks_are_kept() {
        assert_eq!(
            text(&encode_event(EventId::local(1), None, None, "a\n\nb\n")),
            "id: 1\ndata: a\ndata: \ndata: b\ndata: \n\n"
        );
        assert_eq!(
            text(&encode_event(EventId::local(1), None, None, "\r\r\n")),
            "id: 1\ndata: \ndata: \ndata: \n\n"
        );
    }

    #[test]
    fn empty_body_is_one_empty_data_line() {
        assert_eq!(
            text(&encode_event(EventId::local(3), None, None, "")),
            "id: 3\ndata: \n\n"
        );
    }

    #[test]
    fn a_body_cannot_forge_fields_or_events() {
        let hostile = "x\n\nid: 999\nevent: admin\r\ndata: injected\rretry: 1";
        let frame = encode_event(EventId::local(5), None, None, hostile);
        let s = text(&frame);
        // Exactly one blank line, at the very end: one event.
        assert_eq!(s.matches("\n\n").count(), 1);
        assert!(s.ends_with("\n\n"));
        // Every line but the first is a data line.
        for line in s.trim_end_matches('\n').lines().skip(1) {
            assert!(line.starts_with("data: "), "line {line:?}");
        }
        assert!(!s.contains('\r'));
    }

    #[test]
    fn leading_spaces_survive_because_exactly_one_is_stripped() {
        assert_eq!(
            text(&encode_event(EventId::local(1), None, None, " x")),
            "id: 1\ndata:  x\n\n"
        );
    }

    #[test]
    fn large_ids_and_capacity_estimate() {
        let frame = encode_event(
            EventId::local(u64::MAX),
            None,
            Some("e"),
            &"z\n".repeat(1000),
        );
        assert!(text(&frame).starts_with("id: 18446744073709551615\nevent: e\n"));
        assert_eq!(text(&frame).matches("data: ").count(), 1001);
    }

    #[test]
    fn preamble_has_comment_then_retry() {
        assert_eq!(text(&encode_preamble(2345)), ": connected\nretry: 2345\n\n");
    }

    #[test]
    fn notices_have_no_id_and_one_json_data_line() {
        assert_eq!(
            text(&encode_gap(EventId::local(5), EventId::local(9), 5, None)),
            "event: gap\ndata: {\"from\":\"5\",\"to\":\"9\",\"dropped\":5}\n\n"
        );
        assert_eq!(
            text(&encode_reset(ResetReason::Expired, "3", Some(EventId::local(10)), None)),
            "event: reset\ndata: {\"reason\":\"expired\",\"requested\":\"3\",\"oldest\":\"10\"}\n\n"
        );
        assert_eq!(
            text(&encode_reset(ResetReason::Unknown, "x", None, None)),
            "event: reset\ndata: {\"reason\":\"unknown\",\"requested\":\"x\",\"oldest\":null}\n\n"
        );
    }

    #[test]
    fn a_hostile_requested_id_cannot_break_the_notice() {
        let frame = encode_reset(ResetReason::Unknown, "a\"\n\ndata: evil\r\\", None, None);
        let s = text(&frame);
        assert_eq!(s.matches('\n').count(), 3, "{s:?}");
        assert!(
            s.contains(r#""requested":"a\"\u000a\u000adata: evil\u000d\\""#),
            "{s}"
        );
    }

    #[test]
    fn shed_preamble() {
        assert_eq!(text(&encode_shed(30000)), ": shed\nretry: 30000\n\n");
        assert_eq!(
            text(&encode_expired(1_800_000_000, 7321)),
            "event: expired\ndata: {\"exp\":1800000000}\nretry: 7321\n\n"
        );
    }

    #[test]
    fn itoa_formats_edges() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(10, &mut [0; 20]), b"10");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn gap_len_is_the_encoded_length() {
        let cases = [
            (1, 1, 1),
            (9, 10, 2),
            (123, 45_678, 9_999),
            (u64::MAX, u64::MAX, u64::MAX),
        ];
        for (from, to, dropped) in cases {
            let (from, to) = (EventId::local(from), EventId::local(to));
            assert_eq!(
                gap_len(from, to, dropped, None),
                encode_gap(from, to, dropped, None).len()
            );
            let (from, to) = (EventId::entry(from.seq(), 7), EventId::entry(to.seq(), 0));
            let epoch = Some("9f3c2a71");
            assert_eq!(
                gap_len(from, to, dropped, epoch),
                encode_gap(from, to, dropped, epoch).len()
            );
        }
    }

    #[test]
    fn cluster_ids_carry_their_epoch_in_frames_and_notices() {
        let id = EventId::entry(1_764_633_600_000, 2);
        let frame = encode_event(id, Some("9f3c2a71"), None, "x");
        assert_eq!(text(&frame), "id: 9f3c2a71-1764633600000-2\ndata: x\n\n");
        let gap = encode_gap(id, id, 1, Some("9f3c2a71"));
        assert!(text(&gap).contains("\"from\":\"9f3c2a71-1764633600000-2\""));
    }

    #[test]
    fn an_event_frame_is_what_the_encoder_makes_and_nothing_else() {
        let id = EventId::local(7);
        for (event, data) in [(None, "x"), (Some("tick.1"), "a\nb\r\nc"), (None, "")] {
            assert!(is_event_frame(
                &encode_event(id, None, event, data),
                id,
                None
            ));
        }
        let cluster = EventId::entry(1_764_633_600_000, 2);
        let frame = encode_event(cluster, Some("9f3c2a71"), None, "x");
        assert!(is_event_frame(&frame, cluster, Some("9f3c2a71")));
        assert!(!is_event_frame(&frame, cluster, Some("9f3c2a72")));
        for bad in [
            "id: 8\ndata: x\n\n",                     // another id
            "id: 7\ndata: x\n",                       // not ended
            "id: 7\n\n",                              // no data
            "id: 7\nretry: 0\ndata: x\n\n",           // another field
            "id: 7\ndata: x\nevent: e\n\n",           // a name after the data
            "id: 7\nevent: e\nevent: f\ndata: x\n\n", // two names
            "id: 7\nevent: a b\ndata: x\n\n",         // not a name
            "id: 7\ndata: x\n\nid: 8\ndata: y\n\n",   // a second event
            "id: 7\ndata: x\ry\n\n",                  // a line break of its own
            "data: x\n\n",                            // no id
        ] {
            assert!(!is_event_frame(bad.as_bytes(), id, None), "{bad:?}");
        }
        assert!(!is_event_frame(b"id: 7\ndata: \xff\n\n", id, None));
    }

    proptest::proptest! {
        #[test]
        fn every_encoded_event_is_an_event_frame(
            seq in proptest::prelude::any::<u64>(),
            ms in proptest::prelude::any::<u64>(),
            data in "\\PC*|[a\n\r]*",
            named in proptest::prelude::any::<bool>(),
            cluster in proptest::prelude::any::<bool>(),
        ) {
            let (id, epoch) = if cluster {
                (EventId::entry(ms, seq), Some("9f3c2a71"))
            } else {
                (EventId::local(seq), None)
            };
            let event = named.then_some("price.update");
            let frame = encode_event(id, epoch, event, &data);
            proptest::prop_assert!(is_event_frame(&frame, id, epoch));
        }
    }

    #[test]
    fn a_long_requested_id_is_cut_at_a_char_boundary() {
        let long = format!("{}é{}", "x".repeat(MAX_ECHOED_ID - 1), "y".repeat(8000));
        let notice = encode_reset(ResetReason::Unknown, &long, None, None);
        let text = std::str::from_utf8(&notice).unwrap();
        let expected = format!("\"requested\":\"{}\"", "x".repeat(MAX_ECHOED_ID - 1));
        assert!(text.contains(&expected), "{text}");
        assert!(notice.len() < 200);
    }
}
