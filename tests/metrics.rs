//! `/metrics` is valid Prometheus text and its counters follow what happens.

mod util;

use util::{parse_metrics, published_id, Server};

/// Checks the text exposition format line by line: HELP and TYPE before each family's
/// samples, names and label sets well formed, values numbers.
fn assert_prometheus_text(text: &str) {
    let mut typed = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(
                rest.split_once(' ')
                    .is_some_and(|(_, help)| !help.is_empty()),
                "{line}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty(),
                "{line}"
            );
            // A histogram's samples are its family's name with a suffix.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            let kind = typed
                .get(family)
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            if kind == "histogram" {
                assert!(
                    name != family,
                    "a histogram sample without its suffix: {line}"
                );
                assert_eq!(
                    name.ends_with("_bucket"),
                    series.contains("le=\""),
                    "{line}"
                );
            }
            assert!(kind != "counter" || name.ends_with("_total"), "{line}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                    for pair in labels[1..labels.len() - 1].split(',') {
                        let (k, v) = pair.split_once('=').expect(line);
                        assert!(
                            !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                            "{line}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn metrics_parse_and_move_with_the_traffic() {
    let server = Server::start(&["--shards", "2"]);
    let r = server.request(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert_prometheus_text(&r.text());
    let before = parse_metrics(&r.text());
    assert!(before["process_resident_memory_bytes"] > 0.0);

    let mut streams: Vec<_> = (0..10).map(|_| server.stream("/stream")).collect();
    for i in 0..5 {
        published_id(&server.publish("", format!("{i}").as_bytes()));
    }
    for s in streams.iter_mut() {
        for _ in 0..5 {
            s.next_event();
        }
    }
    server.request(b"GET /nope HTTP/1.1\r\n\r\n");
    drop(streams);
    let after = server.wait_metrics("streams closed", |m| {
        m["sse_edge_streams_closed_total"] == 10.0
    });
    let text = server
        .request(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .text();
    assert_prometheus_text(&text);
    assert!(
        text.contains("sse_edge_clients{shard=\"1\"}"),
        "clients per shard"
    );
    assert_eq!(after["sse_edge_streams_opened_total"], 10.0);
    assert_eq!(after["sse_edge_events_published_total"], 5.0);
    assert_eq!(after["sse_edge_events_encoded_total"], 5.0);
    assert_eq!(after["sse_edge_frames_queued_total"], 50.0);
    assert!(after["sse_edge_frames_written_total"] >= 50.0);
    assert!(after["sse_edge_bytes_written_total"] > before["sse_edge_bytes_written_total"]);
    assert_eq!(after["sse_edge_rejected_requests_total"], 1.0);
    assert_eq!(after["sse_edge_clients"], 0.0);
}

/// The fan-out histograms count each event once on each shard that had streams for it, and
/// never on a shard that had none (nor for an event nobody was subscribed to).
#[test]
fn fanout_latency_is_counted_once_per_event_per_shard_with_subscribers() {
    const SHARDS: usize = 4;
    const EVENTS: usize = 7;
    let server = Server::start(&["--shards", "4"]);
    // Three streams over four shards: at least one shard has none.
    let mut streams: Vec<_> = (0..3).map(|_| server.stream("/stream?topic=a")).collect();
    let clients = server.wait_metrics("three streams", |m| m["sse_edge_clients"] == 3.0);
    assert_eq!(clients["sse_edge_fanout_seconds_count"], 0.0);
    let per = util::per_shard(&server, "sse_edge_clients");
    assert_eq!(per.len(), SHARDS);
    let with_streams = per.iter().filter(|&&n| n > 0.0).count();
    assert!((1..SHARDS).contains(&with_streams), "{per:?}");
    for i in 0..EVENTS {
        published_id(&server.publish("?topic=a", format!("{i}").as_bytes()));
        // Nobody carries topic b: no shard fans it out.
        published_id(&server.publish("?topic=b", b"x"));
    }
    for s in streams.iter_mut() {
        for _ in 0..EVENTS {
            s.next_event();
        }
    }
    let expected = (EVENTS * with_streams) as f64;
    let m = server.wait_metrics("every fan-out timed", |m| {
        m["sse_edge_fanout_seconds_count"] == expected
            && m["sse_edge_fanout_first_seconds_count"] == expected
    });
    assert!(m["sse_edge_fanout_seconds_sum"] > 0.0);
    for family in ["sse_edge_fanout_seconds", "sse_edge_fanout_first_seconds"] {
        let counts = util::per_shard(&server, &format!("{family}_count"));
        let infinite = util::per_shard(&server, &format!("{family}_bucket"));
        for shard in 0..SHARDS {
            let want = if per[shard] > 0.0 { EVENTS as f64 } else { 0.0 };
            assert_eq!(
                counts[shard], want,
                "{family} shard {shard}: {counts:?} {per:?}"
            );
            // per_shard keeps the last bucket of each shard: +Inf, which is the count.
            assert_eq!(infinite[shard], want, "{family} shard {shard}");
        }
    }
}
