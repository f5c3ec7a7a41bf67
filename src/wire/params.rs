//! What a publish or subscribe request asks for, validated: topics, event names, the body.
//!
//! Pure. Names are checked here against the contract's character sets, which is also what
//! keeps them from carrying a line break into a frame.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::wire::http::{query_pairs, Rejection, Request};

/// The topic of a request that names none.
pub const DEFAULT_TOPIC: &str = "default";

/// Most topics one stream may carry.
pub const MAX_TOPICS_PER_STREAM: usize = 32;

/// The longest topic name.
pub const MAX_TOPIC_LEN: usize = 128;

/// A validated `POST /broadcast`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic to publish to.
    pub topic: String,
    /// SSE event type, when given.
    pub event: Option<String>,
    /// The event data (UTF-8).
    pub data: String,
}

/// A validated `GET /stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Topics to carry, without duplicates, in the order first named.
    pub topics: Vec<String>,
    /// The id to resume after: the `Last-Event-ID` header, else `?lastEventId=`.
    pub last_event_id: Option<String>,
}

const fn bad(reason: &'static str) -> Rejection {
    Rejection {
        status: 400,
        reason,
    }
}

/// Whether `s` is a valid topic name: 1–128 ([`MAX_TOPIC_LEN`]) of `[A-Za-z0-9_.:/-]`.
pub fn is_topic(s: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

/// Whether `s` is a valid event name: 1–64 of `[A-Za-z0-9_.:-]`.
pub fn is_event_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Reads a publish request; an empty body becomes `Message from server at <RFC 3339 now>`.
pub fn parse_publish(request: Request, now: SystemTime) -> Result<Publish, Rejection> {
    let (topic, event) = publish_target(&request.head.query)?;
    let data = String::from_utf8(request.body).map_err(|_| bad("body is not valid UTF-8"))?;
    let data = if data.is_empty() {
        format!("Message from server at {}", rfc3339(now))
    } else {
        data
    };
    Ok(Publish { topic, event, data })
}

/// The topic and event name of a publish query, checked.
pub fn publish_target(query: &str) -> Result<(String, Option<String>), Rejection> {
    let mut topic = None;
    let mut event = None;
    for pair in query_pairs(query) {
        let (key, value) = pair?;
        match key.as_str() {
            "topic" if topic.is_some() => return Err(bad("publish to one topic at a time")),
            "topic" => {
                check_topic(&value)?;
                topic = Some(value);
            }
            "event" if !is_event_name(&value) => {
                return Err(bad("event name must be 1-64 characters of [A-Za-z0-9_.:-]"))
            }
            "event" => event = Some(value),
            _ => {}
        }
    }
    Ok((topic.unwrap_or_else(|| DEFAULT_TOPIC.to_owned()), event))
}

/// Reads a stream request: its topics and where to resume.
pub fn parse_subscribe(request: &Request) -> Result<Subscribe, Rejection> {
    subscribe_from(&request.head.query, request.head.last_event_id.as_deref())
}

/// The topics and resume point of a stream request's query, checked; `header_last_id` (the
/// `Last-Event-ID` header) wins over the query's `lastEventId`.
pub fn subscribe_from(query: &str, header_last_id: Option<&str>) -> Result<Subscribe, Rejection> {
    let mut topics: Vec<String> = Vec::new();
    let mut query_last_id = None;
    for pair in query_pairs(query) {
        let (key, value) = pair?;
        match key.as_str() {
            "topic" => add_topic(&mut topics, value)?,
            "lastEventId" => query_last_id = Some(value),
            _ => {}
        }
    }
    if topics.is_empty() {
        topics.push(DEFAULT_TOPIC.to_owned());
    }
    Ok(Subscribe {
        topics,
        // A reconnecting browser keeps its first URL and sends a newer header.
        last_event_id: header_last_id.map(str::to_owned).or(query_last_id),
    })
}

/// Adds `name` to a stream's `topics` as a request's `topic=` does: a valid name
/// ([`is_topic`]), kept once, at most [`MAX_TOPICS_PER_STREAM`] of them. The one check of a
/// stream's topics, also applied to the streams a previous process hands over.
pub fn add_topic(topics: &mut Vec<String>, name: String) -> Result<(), Rejection> {
    check_topic(&name)?;
    if topics.contains(&name) {
        return Ok(());
    }
    if topics.len() >= MAX_TOPICS_PER_STREAM {
        return Err(bad("at most 32 topics per stream"));
    }
    topics.push(name);
    Ok(())
}

/// Checks one topic name ([`is_topic`]), with the reason a request is refused for it.
pub fn check_topic(name: &str) -> Result<(), Rejection> {
    if is_topic(name) {
        Ok(())
    } else {
        Err(bad("topic must be 1-128 characters of [A-Za-z0-9_.:/-]"))
    }
}

/// Formats a time as RFC 3339 in UTC with whole seconds, e.g. `2026-11-25T01:24:19Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::{Head, Method};
    use std::time::Duration;

    fn request(query: &str, body: &[u8]) -> Request {
        Request::new(
            Head::new(Method::Post, "/broadcast".into(), query.into(), 1),
            body.to_vec(),
        )
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3723);
        assert_eq!(rfc3339(leap), "2000-02-29T01:02:03Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_795_569_859);
        assert_eq!(rfc3339(later), "2026-11-25T01:24:19Z");
    }

    #[test]
    fn empty_body_gets_the_demo_message() {
        let now = UNIX_EPOCH + Duration::from_secs(86_400);
        let p = parse_publish(request("", b""), now).unwrap();
        assert_eq!(p.data, "Message from server at 1970-01-02T00:00:00Z");
        assert_eq!(p.topic, DEFAULT_TOPIC);
        assert_eq!(p.event, None);
    }

    #[test]
    fn publish_params() {
        let p = parse_publish(request("topic=a%2Fb&event=tick.1", b"x"), UNIX_EPOCH).unwrap();
        assert_eq!(
            (p.topic.as_str(), p.event.as_deref()),
            ("a/b", Some("tick.1"))
        );
        for bad_query in [
            "topic=",
            "topic=has%20space",
            "event=with/slash",
            "event=",
            "topic=a&topic=b",
            &format!("topic={}", "t".repeat(129)),
            &format!("event={}", "e".repeat(65)),
        ] {
            let err = parse_publish(request(bad_query, b"x"), UNIX_EPOCH).unwrap_err();
            assert_eq!(err.status, 400, "{bad_query}");
        }
        assert!(parse_publish(
            request(&format!("topic={}", "t".repeat(128)), b"x"),
            UNIX_EPOCH
        )
        .is_ok());
    }

    #[test]
    fn invalid_utf8_body_is_400() {
        let err = parse_publish(request("", b"\xff\xfe"), UNIX_EPOCH).unwrap_err();
        assert_eq!(err.reason, "body is not valid UTF-8");
    }

    #[test]
    fn subscribe_topics_dedup_default_and_cap() {
        let s = parse_subscribe(&request("topic=a&topic=b&topic=a", b"")).unwrap();
        assert_eq!(s.topics, vec!["a", "b"]);
        assert_eq!(
            parse_subscribe(&request("", b"")).unwrap().topics,
            vec!["default"]
        );
        let many: String = (0..33).map(|i| format!("topic=t{i}&")).collect();
        assert_eq!(
            parse_subscribe(&request(&many, b"")).unwrap_err().status,
            400
        );
        let exactly: String = (0..32).map(|i| format!("topic=t{i}&")).collect();
        assert_eq!(
            parse_subscribe(&request(&exactly, b""))
                .unwrap()
                .topics
                .len(),
            32
        );
        assert!(parse_subscribe(&request("topic=bad%0Aname", b"")).is_err());
    }

    #[test]
    fn header_last_event_id_wins_over_query() {
        let mut r = request("lastEventId=5", b"");
        assert_eq!(
            parse_subscribe(&r).unwrap().last_event_id.as_deref(),
            Some("5")
        );
        r.head.last_event_id = Some("9".into());
        assert_eq!(
            parse_subscribe(&r).unwrap().last_event_id.as_deref(),
            Some("9")
        );
    }

    #[test]
    fn name_rules() {
        assert!(is_topic("news/eu:fr_1.x-y"));
        assert!(!is_topic("a b"));
        assert!(is_event_name("a.b:c-d_e"));
        assert!(!is_event_name("a/b"));
        assert!(!is_event_name("line\nbreak"));
    }
}
