//! Log lines on stderr, as text or as JSON lines (`--log-format`).
//!
//! The JSON form is one object per line with fields a log pipeline can rely on: `time`
//! (RFC 3339, UTC, microseconds), `level` (`error` .. `trace`), `target` (the module),
//! `message`, then the event's own fields under their names, in the order the event gives
//! them. An event field whose name is one of those four is written as `field.NAME`, so the
//! fixed fields can always be trusted.

use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The names every JSON line carries, in this order, before the event's fields.
pub const JSON_FIELDS: [&str; 4] = ["time", "level", "target", "message"];

/// Formats each event as one JSON object on one line.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = json_line(
            &time,
            &meta.level().as_str().to_ascii_lowercase(),
            meta.target(),
            &fields,
        );
        writeln!(writer, "{line}")
    }
}

/// An event's message and fields, in the order recorded.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    rest: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else if JSON_FIELDS.contains(&name) {
            self.rest.push((format!("field.{name}"), value));
        } else {
            self.rest.push((name.to_owned(), value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// One JSON object: the fixed fields first, then the event's.
fn json_line(time: &str, level: &str, target: &str, fields: &Fields) -> String {
    let mut line = String::with_capacity(128);
    let fixed = [time, level, target, fields.message.as_str()];
    let pairs = JSON_FIELDS
        .iter()
        .zip(fixed)
        .map(|(k, v)| (*k, Value::String(v.to_owned())))
        .chain(fields.rest.iter().map(|(k, v)| (k.as_str(), v.clone())));
    line.push('{');
    for (i, (key, value)) in pairs.enumerate() {
        if i > 0 {
            line.push(',');
        }
        // A string key and a serde_json Value always serialise.
        line.push_str(&Value::String(key.to_owned()).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_fields_first_then_the_events_with_reserved_names_set_apart() {
        let fields = Fields {
            message: "took over \"3\"\nstreams".into(),
            rest: vec![
                ("shard".into(), Value::from(1u64)),
                ("field.level".into(), Value::from("x")),
            ],
        };
        let line = json_line(
            "2026-12-06T07:00:00.000001Z",
            "info",
            "sse_edge::shard",
            &fields,
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Map<String, Value> = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        // serde_json's map is sorted; the order on the line is checked on the text.
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert_eq!(v["message"], "took over \"3\"\nstreams");
        assert_eq!(v["shard"], 1);
        assert_eq!(v["field.level"], "x");
        assert_eq!(v["level"], "info");
        assert!(line.starts_with(
            r#"{"time":"2026-12-06T07:00:00.000001Z","level":"info","target":"sse_edge::shard","message":"#
        ));
    }
}
