//! The body of a published message: a sequence number and its scheduled send time.
//!
//! It is one line of JSON, `{"loadtest_seq":N,"sent_us":T}` (plus `"pad"` to reach a chosen
//! size), so a browser on the same stream shows something readable, and it is one `data:`
//! line on any server. Receivers scan for the two fields rather than run a JSON parser per
//! delivery: at tens of thousands of streams, parsing is the receiver's main cost.

const SEQ: &str = "\"loadtest_seq\":";
const SENT: &str = "\"sent_us\":";

/// Builds the body of message `seq` scheduled at `sent_us`, padded to at least `size` bytes.
pub fn body(seq: u64, sent_us: u64, size: usize) -> String {
    let mut out = format!("{{{SEQ}{seq},{SENT}{sent_us}");
    // `,"pad":""}` is 10 bytes.
    let fill = size.saturating_sub(out.len() + 10);
    if fill > 0 {
        out.push_str(",\"pad\":\"");
        out.push_str(&"x".repeat(fill));
        out.push('"');
    }
    out.push('}');
    out
}

/// Reads `(seq, sent_us)` back from an event's data; `None` if it is not one of ours.
pub fn parse(data: &str) -> Option<(u64, u64)> {
    Some((number_after(data, SEQ)?, number_after(data, SENT)?))
}

fn number_after(data: &str, key: &str) -> Option<u64> {
    let at = data.find(key)? + key.len();
    let digits = data[at..].bytes().take_while(u8::is_ascii_digit).count();
    data[at..at + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let b = body(17, 123_456, 0);
        assert_eq!(b, r#"{"loadtest_seq":17,"sent_us":123456}"#);
        assert_eq!(parse(&b), Some((17, 123_456)));
        let padded = body(1, 2, 200);
        assert_eq!(padded.len(), 200);
        assert_eq!(parse(&padded), Some((1, 2)));
        serde_json::from_str::<serde_json::Value>(&padded).unwrap();
        assert_eq!(parse("Auto heartbeat #3"), None);
        assert_eq!(parse(r#"{"loadtest_seq":x}"#), None);
    }
}
