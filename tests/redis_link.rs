//! The Redis layer of cluster mode against a real `redis-server`: what `Link` appends reads
//! back the same, the epoch follows Redis's data, the stream stays bounded, and a Redis that is
//! gone or hung costs an error within about a second, never a hang.

#[path = "util/redis.rs"]
mod redis_util;
mod util;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis_util::RedisServer;
use sse_edge::broker::redis::{
    fresh_epoch, parse_url, Appended, Link, LinkError, Publish, Timeouts,
};
use sse_edge::wire::event_id::EventId;
use util::PATIENCE;

const STREAM: &str = "test:events";
const MAXLEN: u64 = 100_000;

fn link(redis: &RedisServer) -> Link {
    let info = parse_url(&redis.url()).expect("url");
    Link::connect(info, STREAM, Timeouts::default()).expect("connect")
}

fn job<'a>(topic: &'a str, data: &'a str) -> Publish<'a> {
    Publish {
        topic,
        event: None,
        data,
    }
}

/// Publishes `n` numbered events in pipelines of `batch`; returns what each got.
fn publish_n(link: &mut Link, n: usize, batch: usize, maxlen: u64) -> Vec<Appended> {
    let bodies: Vec<String> = (0..n).map(|i| format!("event {i}")).collect();
    let mut out = Vec::with_capacity(n);
    for chunk in bodies.chunks(batch) {
        let jobs: Vec<Publish> = chunk.iter().map(|b| job("news", b)).collect();
        out.extend(
            link.publish(&jobs, maxlen, &fresh_epoch())
                .expect("publish"),
        );
    }
    out
}

/// Runs `f` on its own thread and returns its result, failing the test if it takes longer
/// than PATIENCE (a hang is the bug these tests look for; the time itself is not asserted).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let value = rx
        .recv_timeout(PATIENCE)
        .expect("the call returned within PATIENCE");
    (value, started.elapsed())
}

fn xlen(redis: &RedisServer) -> u64 {
    let reply = redis.command(&["XLEN", STREAM]).expect("XLEN");
    reply
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("XLEN answered {reply}"))
}

#[test]
fn what_is_published_reads_back_the_same_in_order() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let jobs = [
        job("news", "hello"),
        Publish {
            topic: "sport/football",
            event: Some("goal"),
            data: "line 1\nline 2\r\nline 3 — ünïcødé",
        },
        job("news", ""),
    ];
    let appended = link.publish(&jobs, MAXLEN, "abcd1234").expect("publish");
    assert_eq!(appended.len(), 3);
    assert!(appended.iter().all(|a| a.epoch == "abcd1234"));

    let read = link
        .read(EventId::ZERO, Duration::from_millis(100), 100)
        .expect("read");
    assert_eq!(read.skipped, 0);
    assert_eq!(read.last, Some(appended[2].id));
    assert_eq!(read.entries.len(), 3);
    for ((entry, job), a) in read.entries.iter().zip(&jobs).zip(&appended) {
        assert_eq!(entry.id, a.id);
        assert_eq!(entry.epoch, "abcd1234");
        assert_eq!(entry.topic, job.topic);
        assert_eq!(entry.event.as_deref(), job.event);
        assert_eq!(entry.data, job.data);
    }
    // XRANGE from the start answers the same.
    assert_eq!(link.range(EventId::ZERO, 100).expect("range"), read);
    assert_eq!(link.last_generated().expect("xinfo"), Some(appended[2].id));
}

#[test]
fn one_pipeline_of_many_publishes_gets_increasing_ids() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let appended = publish_n(&mut link, 500, 500, MAXLEN);
    assert_eq!(appended.len(), 500);
    assert!(appended.windows(2).all(|w| w[0].id < w[1].id));
    assert!(appended.iter().all(|a| a.epoch == appended[0].epoch));
    let read = link.range(EventId::ZERO, 1000).expect("range");
    let ids: Vec<EventId> = read.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, appended.iter().map(|a| a.id).collect::<Vec<_>>());
    assert_eq!(read.entries[499].data, "event 499");
}

#[test]
fn the_epoch_is_created_once_and_stays() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    assert_eq!(link.epoch().expect("epoch"), None);
    assert_eq!(link.last_generated().expect("xinfo"), None);
    let first = link
        .publish(&[job("a", "1")], MAXLEN, "11111111")
        .expect("publish");
    assert_eq!(first[0].epoch, "11111111");
    let second = link
        .publish(&[job("a", "2")], MAXLEN, "22222222")
        .expect("publish");
    assert_eq!(second[0].epoch, "11111111", "an existing epoch is kept");
    assert_eq!(link.epoch().expect("epoch").as_deref(), Some("11111111"));
    // Another connection (another node) sees the same.
    let mut other = self::link(&redis);
    assert_eq!(other.epoch().expect("epoch").as_deref(), Some("11111111"));
    let third = other
        .publish(&[job("a", "3")], MAXLEN, "33333333")
        .expect("publish");
    assert_eq!(third[0].epoch, "11111111");
}

#[test]
fn flushall_starts_a_new_epoch_on_the_next_publish() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let before = link
        .publish(&[job("a", "1")], MAXLEN, &fresh_epoch())
        .expect("publish");
    redis.flushall();
    assert_eq!(link.epoch().expect("epoch"), None);
    let fresh = fresh_epoch();
    let after = link
        .publish(&[job("a", "2")], MAXLEN, &fresh)
        .expect("publish");
    assert_eq!(after[0].epoch, fresh);
    assert_ne!(after[0].epoch, before[0].epoch);
    assert_eq!(link.epoch().expect("epoch"), Some(fresh.clone()));
    let read = link.range(EventId::ZERO, 10).expect("range");
    assert_eq!(read.entries.len(), 1);
    assert_eq!(read.entries[0].epoch, fresh);
}

#[test]
fn a_restart_without_persistence_starts_a_new_epoch() {
    let mut redis = RedisServer::start();
    let mut link = link(&redis);
    let before = link
        .publish(&[job("a", "1")], MAXLEN, &fresh_epoch())
        .expect("publish");
    redis.restart();
    // The old connection is gone, and says so.
    let err = link
        .publish(&[job("a", "2")], MAXLEN, &fresh_epoch())
        .expect_err("the old connection is dead");
    assert!(err.is_connection_lost(), "{err}");
    let mut link = self::link(&redis);
    assert_eq!(link.epoch().expect("epoch"), None);
    let after = link
        .publish(&[job("a", "2")], MAXLEN, &fresh_epoch())
        .expect("publish");
    assert_ne!(after[0].epoch, before[0].epoch);
}

#[test]
fn a_flushed_script_cache_is_reloaded_and_nothing_is_appended_twice() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    publish_n(&mut link, 3, 3, MAXLEN);
    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK"));
    // The whole pipeline meets NOSCRIPT; the link loads the script and sends it again.
    let again = publish_n(&mut link, 5, 5, MAXLEN);
    assert_eq!(again.len(), 5);
    assert!(again.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(xlen(&redis), 8);
}

#[test]
fn a_restart_with_fsynced_aof_keeps_the_epoch_and_every_acknowledged_entry() {
    let mut redis = RedisServer::start_persistent();
    let mut link = link(&redis);
    let acked = publish_n(&mut link, 200, 20, MAXLEN);
    redis.restart(); // SIGKILL, then replay the AOF
    let mut link = self::link(&redis);
    assert_eq!(link.epoch().expect("epoch"), Some(acked[0].epoch.clone()));
    let read = link.range(EventId::ZERO, 1000).expect("range");
    let ids: Vec<EventId> = read.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, acked.iter().map(|a| a.id).collect::<Vec<_>>());
    let next = link
        .publish(&[job("a", "after")], MAXLEN, &fresh_epoch())
        .expect("publish");
    assert_eq!(next[0].epoch, acked[0].epoch);
    assert!(next[0].id > acked[199].id);
}

#[test]
fn maxlen_keeps_the_stream_bounded() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let appended = publish_n(&mut link, 1000, 50, 100);
    let len = xlen(&redis);
    eprintln!("after 1000 publishes with MAXLEN ~ 100: XLEN {len}");
    // Approximate trimming removes whole macro nodes (100 entries each by default).
    assert!((100..=300).contains(&len), "XLEN {len}");
    // What is left is the newest, and the last generated id is the last publish.
    assert_eq!(
        link.last_generated().expect("xinfo"),
        Some(appended[999].id)
    );
    let read = link.range(EventId::ZERO, 1000).expect("range");
    assert_eq!(read.entries.len() as u64, len);
    assert_eq!(read.entries.last().map(|e| e.id), Some(appended[999].id));
}

#[test]
fn range_returns_exactly_what_follows_an_id() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let ids: Vec<EventId> = publish_n(&mut link, 10, 10, MAXLEN)
        .iter()
        .map(|a| a.id)
        .collect();
    let after = |link: &mut Link, id, count| -> Vec<EventId> {
        let read = link.range(id, count).expect("range");
        read.entries.iter().map(|e| e.id).collect()
    };
    assert_eq!(after(&mut link, ids[4], 100), ids[5..]);
    assert_eq!(after(&mut link, ids[4], 2), ids[5..7]);
    assert_eq!(after(&mut link, ids[9], 100), Vec::<EventId>::new());
    assert_eq!(after(&mut link, EventId::ZERO, 3), ids[..3]);
}

#[test]
fn read_blocks_until_an_entry_comes_or_the_time_is_up() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let last = publish_n(&mut link, 1, 1, MAXLEN)[0].id;

    let started = Instant::now();
    let read = link
        .read(last, Duration::from_millis(300), 10)
        .expect("read");
    assert_eq!(read, Default::default(), "nothing came");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it blocked"
    );

    // A publish from another connection while this one blocks wakes it.
    let url = redis.url();
    let publisher = std::thread::spawn(move || {
        let info = parse_url(&url).expect("url");
        let mut other = Link::connect(info, STREAM, Timeouts::default()).expect("connect");
        std::thread::sleep(Duration::from_millis(200)); // let the reader block first
        other
            .publish(&[job("late", "here")], MAXLEN, &fresh_epoch())
            .expect("publish")
    });
    // The block is long (the socket's read timeout follows it); the publish ends it.
    let read = link.read(last, Duration::from_secs(10), 10).expect("read");
    let appended = publisher.join().expect("publisher");
    assert_eq!(read.entries.len(), 1);
    assert_eq!(read.entries[0].id, appended[0].id);
    assert_eq!(read.entries[0].topic, "late");
}

#[test]
fn a_stopped_redis_fails_connect_and_publish_fast() {
    let mut redis = RedisServer::start();
    let mut link = link(&redis);
    publish_n(&mut link, 1, 1, MAXLEN);
    let info = parse_url(&redis.url()).expect("url");
    redis.stop();

    let ((err, link), took) = bounded(move || {
        let err = link
            .publish(&[job("a", "x")], MAXLEN, &fresh_epoch())
            .map(|_| ())
            .expect_err("publish to a stopped Redis");
        (err, link)
    });
    drop(link);
    eprintln!("publish to a stopped Redis failed in {took:?}: {err}");
    assert!(err.is_connection_lost(), "{err}");

    let (result, took) =
        bounded(move || Link::connect(info, STREAM, Timeouts::default()).map(|_| ()));
    let err = result.expect_err("connect to a stopped Redis");
    eprintln!("connect to a stopped Redis failed in {took:?}: {err}");
    assert!(matches!(err, LinkError::Connect { .. }), "{err}");
    assert!(err.is_connection_lost());
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", redis.port())),
        "{err}"
    );
}

#[test]
fn a_hung_redis_fails_connect_publish_and_read_fast() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    publish_n(&mut link, 1, 1, MAXLEN);
    let info = parse_url(&redis.url()).expect("url");
    // SIGSTOP: the kernel still accepts connections; nothing answers.
    redis.pause();

    let ((err, mut link), took) = bounded(move || {
        let err = link
            .publish(&[job("a", "x")], MAXLEN, &fresh_epoch())
            .map(|_| ())
            .expect_err("publish to a hung Redis");
        (err, link)
    });
    eprintln!("publish to a hung Redis failed in {took:?}: {err}");
    assert!(matches!(err, LinkError::Timeout { .. }), "{err}");
    assert!(err.is_connection_lost(), "{err}");

    let (err, took) = bounded(move || {
        link.read(EventId::ZERO, Duration::from_millis(100), 10)
            .map(|_| ())
            .expect_err("read from a hung Redis")
    });
    eprintln!("read from a hung Redis failed in {took:?}: {err}");
    assert!(err.is_connection_lost(), "{err}");

    let (result, took) =
        bounded(move || Link::connect(info, STREAM, Timeouts::default()).map(|_| ()));
    let err = result.expect_err("connect to a hung Redis");
    eprintln!("connect to a hung Redis failed in {took:?}: {err}");
    assert!(err.is_connection_lost(), "{err}");
    redis.resume();
}

#[test]
fn entries_written_by_something_else_are_skipped_and_counted() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let first = publish_n(&mut link, 1, 1, MAXLEN)[0].id;
    assert!(redis
        .command(&["XADD", STREAM, "*", "foo", "bar"])
        .is_some());
    assert!(redis
        .command(&[
            "XADD",
            STREAM,
            "*",
            "e",
            "ab12",
            "t",
            "bad topic",
            "n",
            "",
            "d",
            "x"
        ])
        .is_some());
    let foreign_last = link.last_generated().expect("xinfo").expect("a stream");
    // A run of foreign entries alone still moves a reader past them.
    let read = link.range(first, 10).expect("range");
    assert_eq!((read.entries.len(), read.skipped), (0, 2));
    assert_eq!(read.last, Some(foreign_last));

    let good = publish_n(&mut link, 1, 1, MAXLEN)[0].id;
    let read = link.range(EventId::ZERO, 10).expect("range");
    assert_eq!(read.skipped, 2);
    let ids: Vec<EventId> = read.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, [first, good]);
    let read = link
        .read(first, Duration::from_millis(100), 10)
        .expect("read");
    assert_eq!((read.entries.len(), read.skipped), (1, 2));
    assert_eq!(read.last, Some(good));
}

#[test]
fn a_replay_range_is_cut_to_its_byte_budget_and_proves_nothing_after_the_cursor_was_trimmed() {
    let redis = RedisServer::start();
    let mut link = link(&redis);
    let ids: Vec<EventId> = publish_n(&mut link, 20, 20, MAXLEN)
        .iter()
        .map(|a| a.id)
        .collect();
    // "event N": 7 or 8 bytes of data, plus the id, the field names, the epoch and topic.
    let one = |cost: usize| cost + 60;
    let range = link
        .range_within(ids[2], None, 100, 3 * one(100), 100)
        .expect("range");
    let got: Vec<EventId> = range.read.entries.iter().map(|e| e.id).collect();
    assert_eq!(got, ids[3..6], "what fits three entries' budget");
    assert!(range.cut);
    assert_eq!(range.oldest, Some(ids[2]), "the cursor is still there");
    // An entry larger than the budget still comes, alone: a replay never stalls.
    let range = link.range_within(ids[2], None, 100, 1, 100).expect("range");
    assert_eq!(range.read.entries.len(), 1);
    // Bounded by a count and an end (inclusive), not cut.
    let range = link
        .range_within(ids[2], Some(ids[9]), 4, 1 << 20, 100)
        .expect("range");
    let got: Vec<EventId> = range.read.entries.iter().map(|e| e.id).collect();
    assert_eq!((got.as_slice(), range.cut), (&ids[3..7], false));
    let range = link
        .range_within(ids[2], Some(ids[5]), 100, 1 << 20, 100)
        .expect("range");
    assert_eq!(range.read.last, Some(ids[5]));
    // A cursor that is no entry: the stream's first id tells whether anything was trimmed.
    let range = link
        .range_within(EventId::ZERO, None, 2, 1 << 20, 100)
        .expect("range");
    assert_eq!(range.oldest, Some(ids[0]));
    assert_eq!(range.read.entries.len(), 2);
    // Trimmed past the cursor: the oldest entry is newer than it.
    assert_eq!(
        redis.command(&["XTRIM", STREAM, "MAXLEN", "10"]).as_deref(),
        Some(":10")
    );
    let range = link
        .range_within(ids[2], None, 5, 1 << 20, 100)
        .expect("range");
    assert_eq!(range.oldest, Some(ids[10]));
    // Past the end: nothing, and the cursor proven.
    let range = link
        .range_within(ids[19], None, 5, 1 << 20, 100)
        .expect("range");
    assert_eq!((range.read.last, range.oldest), (None, Some(ids[19])));
}
