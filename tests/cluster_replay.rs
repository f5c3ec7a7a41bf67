//! What a resume from before a cluster node's history costs, against a real `redis-server`:
//! a bounded walk of the stream (`--replay-scan`) ending in `reset` (expired) and the live
//! stream, one cache bounded in bytes (`--replay-cache-bytes`) whatever the entries' sizes,
//! and resumes from one id reading each range once. Redis's own `INFO commandstats` counts
//! the `XRANGE` calls; the node's `/metrics` shows its cache's bytes.

#[path = "util/redis.rs"]
mod redis_util;
mod util;

use redis_util::RedisServer;
use sse_edge::broker::redis::{fresh_epoch, parse_url, Link, Publish, Timeouts};
use sse_edge::broker::replay::RANGE_COUNT;
use sse_edge::wire::event_id::EventId;
use util::{Response, Server, SseClient};

/// The node's default stream key, where the test writes other nodes' entries.
const STREAM: &str = "sse-edge:events";

/// The id of a `200` publish answer.
fn id_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "publish failed: {}", r.text());
    let text = r.text();
    let at = text.find("\"id\":\"").expect("an id") + 6;
    text[at..].split('"').next().unwrap_or_default().to_owned()
}

/// A node whose history no longer reaches back before a stream of entries in Redis.
struct Setup {
    redis: RedisServer,
    node: Server,
    /// The cluster's epoch.
    epoch: String,
    /// The wire id of an event published before the entries.
    early: String,
    /// The entries' ids, in order (nothing else lies between `early` and the first).
    entries: Vec<EventId>,
}

impl Setup {
    /// Starts Redis and a node with `--topic-idle 1` and `args`; publishes one event, then
    /// writes `count` entries of `topic` with bodies of `size` bytes straight into the stream
    /// (as other nodes' publishes), then one more event on topic `gone`; and waits until the
    /// node has recorded all and forgotten every topic (idle): a resume from the first event
    /// on any topic is then from before the node's history, and Redis must serve it.
    fn new(args: &[&str], count: usize, topic: &str, size: usize) -> Setup {
        let redis = RedisServer::start();
        let url = redis.url();
        let mut all = vec!["--redis", url.as_str(), "--topic-idle", "1"];
        all.extend_from_slice(args);
        let node = Server::start(&all);
        let early = id_of(&node.publish("?topic=first", b"early"));
        let epoch = early.split('-').next().unwrap_or_default().to_owned();
        let info = parse_url(&url).expect("url");
        let mut link = Link::connect(info, STREAM, Timeouts::default()).expect("connect");
        let body = "x".repeat(size);
        let mut entries = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(256) {
            let jobs: Vec<Publish> = chunk
                .iter()
                .map(|_| Publish {
                    topic,
                    event: None,
                    data: &body,
                })
                .collect();
            let appended = link
                .publish(&jobs, 1_000_000, &fresh_epoch())
                .expect("append entries");
            assert!(appended.iter().all(|a| a.epoch == epoch), "one epoch");
            entries.extend(appended.iter().map(|a| a.id));
        }
        id_of(&node.publish("?topic=gone", b"forgotten soon"));
        let recorded = (count + 2) as f64;
        node.wait_metrics("every entry recorded and every topic forgotten", |m| {
            m["sse_edge_events_encoded_total"] == recorded && m["sse_edge_history_topics"] == 0.0
        });
        Setup {
            redis,
            node,
            epoch,
            early,
            entries,
        }
    }

    /// The wire form of entry `i`.
    fn wire(&self, i: usize) -> String {
        format!("{}-{}", self.epoch, self.entries[i])
    }

    fn resume(&self, topic: &str) -> SseClient {
        SseClient::connect(
            self.node.addr,
            &format!("/stream?topic={topic}"),
            &[&format!("Last-Event-ID: {}", self.early)],
        )
    }

    /// Waits until the node holds no cached range and returns its metrics.
    fn cache_given_back(&self) -> std::collections::HashMap<String, f64> {
        self.node.wait_metrics("the replay cache given back", |m| {
            m["sse_edge_replay_cache_bytes"] == 0.0
        })
    }
}

#[test]
fn a_resume_walks_at_most_its_scan_budget_then_resets_from_there_and_goes_live() {
    let cache = 256 << 10;
    let s = Setup::new(
        &[
            "--replay-scan",
            "1000",
            "--replay-cache-bytes",
            &cache.to_string(),
        ],
        4000,
        "bulk",
        16,
    );
    let before = s.redis.calls("xrange");
    // A topic nobody ever published to: every entry up to the history's mark is walked for
    // nothing, unless the walk is bounded.
    let mut stream = s.resume("fresh0");
    let reset = stream.event_within_patience("the reset");
    assert_eq!(reset.event.as_deref(), Some("reset"), "{}", reset.data);
    // The walk stopped at the 1000th entry after the id asked for: from there on, this stream
    // cannot know what it missed.
    assert_eq!(
        reset.data,
        format!(
            "{{\"reason\":\"expired\",\"requested\":\"{}\",\"oldest\":null}}",
            s.wire(999)
        )
    );
    let calls = s.redis.calls("xrange") - before;
    let budget = 1000usize.div_ceil(RANGE_COUNT) as u64;
    assert!(
        calls <= budget,
        "one resume made {calls} XRANGE calls; its budget of 1000 entries is {budget} reads"
    );
    // Then it is live.
    let live = id_of(&s.node.publish("?topic=fresh0", b"live"));
    let e = stream.event_within_patience("the live event");
    assert_eq!(
        (e.id.as_deref(), e.data.as_str()),
        (Some(live.as_str()), "live")
    );
    let m = s.cache_given_back();
    assert_eq!(m["sse_edge_replay_scan_limited_total"], 1.0);
    let peak = m["sse_edge_replay_cache_peak_bytes"];
    assert!(peak > 0.0 && peak <= cache as f64, "peak {peak} of {cache}");
}

#[test]
fn big_entries_are_read_in_pieces_that_fit_the_cache_and_nothing_is_lost() {
    // 300 entries of 10 KB: 512 of them would be 5 MB in one read.
    let cache = 256 << 10;
    let s = Setup::new(
        &["--replay-cache-bytes", &cache.to_string()],
        300,
        "big",
        10_000,
    );
    let before = s.redis.calls("xrange");
    let mut stream = s.resume("fresh0");
    let live = id_of(&s.node.publish("?topic=fresh0", b"live"));
    // Nothing of fresh0 was lost: no reset, the live event first.
    let e = stream.event_within_patience("the live event");
    assert_eq!((e.event, e.id), (None, Some(live)));
    let calls = s.redis.calls("xrange") - before;
    assert!(calls > 1, "one read of {calls} would have held 3 MB");
    let m = s.cache_given_back();
    let peak = m["sse_edge_replay_cache_peak_bytes"];
    assert!(peak > 0.0 && peak <= cache as f64, "peak {peak} of {cache}");
    assert_eq!(m["sse_edge_replay_scan_limited_total"], 0.0);
}

#[test]
fn resumes_from_one_id_read_each_range_once() {
    // A busy topic, and clients that do not read: each resume stops after what its socket and
    // queue take (far less than the first range read), and stays in progress.
    let s = Setup::new(
        &["--send-buffer", "4096", "--replay-cache-bytes", "4194304"],
        1500,
        "busy",
        2000,
    );
    let before = s.redis.calls("xrange");
    let n = 20;
    let streams: Vec<SseClient> = (0..n)
        .map(|i| {
            let mut stream = s.resume("busy");
            let first = stream.event_within_patience("the first replayed event");
            assert_eq!(first.id, Some(s.wire(0)), "resume {i}");
            stream
        })
        .collect();
    let calls = s.redis.calls("xrange") - before;
    assert!(
        calls <= 2,
        "{n} resumes from one id made {calls} XRANGE calls; each alone makes at least one"
    );
    let m = s.node.metrics();
    let peak = m["sse_edge_replay_cache_peak_bytes"];
    assert!(peak > 0.0 && peak <= 4194304.0, "peak {peak}");
    // Once their streams are gone, nothing is kept for them.
    drop(streams);
    s.cache_given_back();
}

#[test]
fn big_entries_take_their_size_from_the_scan_budget() {
    // 10 KB entries count ten units each: a budget of 1000 is spent after 100 of them, so a
    // resume reads about 1 MB, not 1000 entries' 10 MB.
    let s = Setup::new(&["--replay-scan", "1000"], 300, "big", 10_000);
    let mut stream = s.resume("fresh0");
    let reset = stream.event_within_patience("the reset");
    assert_eq!(reset.event.as_deref(), Some("reset"), "{}", reset.data);
    assert!(
        reset
            .data
            .contains(&format!("\"requested\":\"{}\"", s.wire(99))),
        "{}",
        reset.data
    );
}

#[test]
fn resumes_from_one_id_one_after_another_read_each_range_once() {
    // The streams of a lost node come back over one `retry:` period, not at once, and each
    // resume is over before the next arrives: what the first one read serves the others.
    let count = 1500;
    let s = Setup::new(&[], count, "busy", 16);
    let replay = |i: usize| {
        let mut stream = s.resume("busy");
        for k in 0..count {
            let e = stream.event_within_patience("a replayed event");
            assert_eq!(e.id, Some(s.wire(k)), "resume {i}, event {k}");
        }
    };
    let before = s.redis.calls("xrange");
    replay(0);
    let first = s.redis.calls("xrange") - before;
    let n = 10;
    for i in 1..n {
        replay(i);
    }
    let rest = s.redis.calls("xrange") - before - first;
    eprintln!(
        "XRANGE calls: {first} for the first resume, {rest} for the {} after it",
        n - 1
    );
    // Unshared, each later resume reads what the first read (and then some); shared, they read
    // nothing (the ranges linger after the first one is over), or now and then a tail.
    assert!(
        first > 1 && rest < (n - 1) as u64,
        "the first resume made {first} XRANGE calls, the {} after it {rest}: each alone reads \
         the same {count} entries again",
        n - 1
    );
}
