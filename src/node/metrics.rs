//! Counters and their Prometheus text rendering.
//!
//! The shard that owns a set of counters is its only writer: it bumps plain integers on the
//! hot path ([`Counters`]) and mirrors them into atomics ([`ShardStats`]) once per loop turn,
//! so a scrape served by any shard reads every shard without a lock and the per-event path
//! pays no atomic operation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Statuses counted in `sse_edge_rejected_requests_total`.
pub const REJECTED_STATUSES: [u16; 10] = [400, 401, 403, 404, 405, 408, 413, 431, 503, 500];

/// One stat's rendering: its metric name, the label beside `shard` (empty for none; stats
/// that share a name differ by it, and their help is given once), kind and help.
struct Info {
    metric: &'static str,
    label: &'static str,
    kind: &'static str,
    help: &'static str,
}

macro_rules! stats {
    ($($name:ident => $metric:literal $([$label:literal])?, $kind:literal, $help:literal;)*) => {
        /// One counter or gauge kept per shard.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Stat { $($name,)* }

        const INFO: &[Info] = &[$(Info {
            metric: $metric,
            label: concat!("" $(, $label)?),
            kind: $kind,
            help: $help,
        },)*];
    };
}

stats! {
    Connections => "sse_edge_connections", "gauge", "Open connections (streams and requests in progress).";
    Streams => "sse_edge_clients", "gauge", "Event streams currently open.";
    StreamsOpened => "sse_edge_streams_opened_total", "counter", "Event streams opened.";
    StreamsClosed => "sse_edge_streams_closed_total", "counter", "Event streams closed.";
    StreamsHandedOver => "sse_edge_streams_handed_over_total", "counter", "Event streams handed to this node's next process in an upgrade.";
    StreamsAdopted => "sse_edge_streams_adopted_total", "counter", "Event streams taken over from this node's previous process in an upgrade.";
    EventsPublished => "sse_edge_events_published_total", "counter", "Events published through this shard.";
    FramesQueued => "sse_edge_frames_queued_total", "counter", "Event frames queued to streams.";
    FramesDropped => "sse_edge_frames_dropped_total", "counter", "Event frames dropped because a stream's queue was full.";
    FramesWritten => "sse_edge_frames_written_total", "counter", "Frames (events, notices, responses) fully written to sockets.";
    GapNotices => "sse_edge_gap_notices_total", "counter", "event: gap notices sent to streams that had lost frames.";
    SlowDisconnects => "sse_edge_slow_disconnects_total", "counter", "Streams disconnected for losing frames longer than --slow-client-timeout.";
    Replayed => "sse_edge_replayed_events_total", "counter", "Events replayed to streams resuming from a Last-Event-ID.";
    ResetNotices => "sse_edge_reset_notices_total", "counter", "event: reset notices (Last-Event-ID expired or unknown).";
    Shed => "sse_edge_shed_total", "counter", "Streams shed (max clients, out of descriptors, per-address limit, topic budget full, or draining).";
    TopicBudgetShed => "sse_edge_topic_budget_shed_total", "counter", "Streams shed because the topic budget (--topic-bytes) had no room for their new topics (also in sse_edge_shed_total).";
    StreamsExpired => "sse_edge_streams_expired_total", "counter", "Streams ended because their token expired (event: expired, then closed).";
    ExpiredTokens => "sse_edge_expired_tokens_total", "counter", "Stream requests with a correctly signed but expired token (answered event: expired).";
    KeepalivesSent => "sse_edge_keepalives_total", "counter", "Keep-alive comments queued to idle streams.";
    BytesWritten => "sse_edge_bytes_written_total", "counter", "Bytes written to sockets.";
    QueuedBytes => "sse_edge_queued_bytes", "gauge", "Bytes waiting in all outbound queues.";
    QueuePeakBytes => "sse_edge_queue_peak_bytes", "gauge", "Largest number of bytes one stream has had queued after an event.";
    AcceptErrors => "sse_edge_accept_errors_total", "counter", "Failed accept calls (for example out of file descriptors).";
    HeaderTimeouts => "sse_edge_header_timeouts_total", "counter", "Connections closed because a request was not complete in time.";
    RequestEvictionsSilent => "sse_edge_request_evictions_total" ["reason=\"silent\""], "counter", "Request-phase connections closed over --max-request-connections, by what they were doing: silent (no byte of a request for the grace period), stalled (part of a request, or answers left unread, and nothing more).";
    RequestEvictionsStalled => "sse_edge_request_evictions_total" ["reason=\"stalled\""], "counter", "";
    RequestConnections => "sse_edge_request_connections", "gauge", "Connections in the request phase (not yet a stream, or kept alive between requests).";
    RequestConnectionsPeak => "sse_edge_request_connections_peak", "gauge", "The most connections the request phase has held since start.";
    AcceptedPerTurnMax => "sse_edge_accepted_per_turn_max", "gauge", "The most connections one loop turn has accepted since start; at the per-turn bound, more were waiting (a reconnect storm).";
    Storms => "sse_edge_storms_total", "counter", "Reconnect storms: turns that found more connections waiting than one turn accepts (each is logged once, when served).";
    TlsHandshakes => "sse_edge_tls_handshakes_total", "counter", "TLS handshakes completed.";
    TlsHandshakeFailures => "sse_edge_tls_handshake_failures_total", "counter", "TLS connections that ended before their handshake completed (not TLS, bad TLS, gone, or too slow).";
    ParsePanics => "sse_edge_parse_panics_total", "counter", "Requests whose parsing panicked (connection closed, server kept running).";
    H2Connections => "sse_edge_h2_connections_total", "counter", "HTTP/2 connections served (h2c with prior knowledge, and h2 by ALPN).";
    H2ConnectionsAdopted => "sse_edge_h2_connections_adopted_total", "counter", "h2c connections taken over, with their HTTP/2 state and streams, from this node's previous process in an upgrade.";
    H2RapidReset => "sse_edge_h2_defences_total" ["defence=\"rapid_reset\""], "counter", "Defences against hostile HTTP/2 peers that tripped (GOAWAY or RST_STREAM), by defence.";
    H2ContinuationFlood => "sse_edge_h2_defences_total" ["defence=\"continuation_flood\""], "counter", "";
    H2HeaderList => "sse_edge_h2_defences_total" ["defence=\"header_list\""], "counter", "";
    H2SettingsFlood => "sse_edge_h2_defences_total" ["defence=\"settings_flood\""], "counter", "";
    H2PingFlood => "sse_edge_h2_defences_total" ["defence=\"ping_flood\""], "counter", "";
    H2WindowUpdateFlood => "sse_edge_h2_defences_total" ["defence=\"window_update_flood\""], "counter", "";
    H2IdleFrameFlood => "sse_edge_h2_defences_total" ["defence=\"idle_frame_flood\""], "counter", "";
    H2ControlBacklog => "sse_edge_h2_defences_total" ["defence=\"control_backlog\""], "counter", "";
    H2WindowOverflow => "sse_edge_h2_defences_total" ["defence=\"window_overflow\""], "counter", "";
    H2SettingsTimeout => "sse_edge_h2_defences_total" ["defence=\"settings_timeout\""], "counter", "";
}

impl Stat {
    /// The counter of an HTTP/2 defence (`sse_edge_h2_defences_total{defence}`).
    pub fn h2_defence(defence: crate::wire::h2::conn::Defence) -> Stat {
        use crate::wire::h2::conn::Defence;
        match defence {
            Defence::RapidReset => Stat::H2RapidReset,
            Defence::ContinuationFlood => Stat::H2ContinuationFlood,
            Defence::HeaderList => Stat::H2HeaderList,
            Defence::SettingsFlood => Stat::H2SettingsFlood,
            Defence::PingFlood => Stat::H2PingFlood,
            Defence::WindowUpdateFlood => Stat::H2WindowUpdateFlood,
            Defence::IdleFrameFlood => Stat::H2IdleFrameFlood,
            Defence::ControlBacklog => Stat::H2ControlBacklog,
            Defence::WindowOverflow => Stat::H2WindowOverflow,
        }
    }
}

const STAT_COUNT: usize = INFO.len();
const SLOTS: usize = STAT_COUNT + REJECTED_STATUSES.len();

/// A shard's counters as plain integers, written only by that shard.
#[derive(Debug, Clone)]
pub struct Counters([u64; SLOTS]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; SLOTS])
    }
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&mut self, stat: Stat, n: u64) {
        self.0[stat as usize] += n;
    }

    /// Subtracts `n` from a gauge.
    #[inline]
    pub fn sub(&mut self, stat: Stat, n: u64) {
        self.0[stat as usize] -= n;
    }

    /// Sets a gauge to `n`.
    #[inline]
    pub fn set(&mut self, stat: Stat, n: u64) {
        self.0[stat as usize] = n;
    }

    /// Raises a gauge to `n` if it is lower.
    #[inline]
    pub fn raise(&mut self, stat: Stat, n: u64) {
        let slot = &mut self.0[stat as usize];
        *slot = (*slot).max(n);
    }

    /// The current value.
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    /// Counts one rejected request with `status`.
    pub fn reject(&mut self, status: u16) {
        let at = REJECTED_STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(REJECTED_STATUSES.len() - 1);
        self.0[STAT_COUNT + at] += 1;
    }
}

/// A shard's counters as atomics, readable from any thread.
#[derive(Debug)]
pub struct ShardStats {
    /// The mirrored [`Counters`].
    slots: [AtomicU64; SLOTS],
    /// From an event's acceptance to its last frame leaving this shard
    /// (`sse_edge_fanout_seconds`).
    pub fanout: Histogram,
    /// From an event's acceptance to its first frame leaving this shard
    /// (`sse_edge_fanout_first_seconds`).
    pub fanout_first: Histogram,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            fanout: Histogram::default(),
            fanout_first: Histogram::default(),
        }
    }
}

impl ShardStats {
    /// Mirrors the owner's plain counters (called by the owning shard once per turn).
    pub fn store(&self, counters: &Counters) {
        for (slot, value) in self.slots.iter().zip(counters.0.iter()) {
            slot.store(*value, Ordering::Relaxed);
        }
    }

    /// Reads one stat.
    pub fn get(&self, stat: Stat) -> u64 {
        self.slots[stat as usize].load(Ordering::Relaxed)
    }
}

/// Upper bounds of the fan-out histograms' buckets, in nanoseconds: 100 µs (a small shard's
/// whole fan-out) to 10 s (a node so far behind that only the count matters), about three
/// per decade like the Prometheus client defaults.
pub const FANOUT_BUCKETS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram written by one shard and read by any scrape: a count per bucket (not
/// cumulative: one store per observation), the overflow beyond the last bound, and the sum.
///
/// Only the owning shard writes, so an observation is loads and stores with `Relaxed`
/// ordering: no lock, no read-modify-write instruction, no allocation. A scrape may see an
/// observation's bucket before its sum; the next scrape sees both.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`FANOUT_BUCKETS_NS`], each counted in the first bucket
    /// whose bound it does not pass.
    buckets: [AtomicU64; FANOUT_BUCKETS_NS.len()],
    /// Observations beyond the last bound (`le="+Inf"` only).
    over: AtomicU64,
    /// All observations added up, in nanoseconds (584 years before it wraps).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one observation. Only the shard that owns this histogram may call it (the
    /// single writer is what makes plain loads and stores enough).
    #[inline]
    pub fn observe(&self, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let slot = match FANOUT_BUCKETS_NS.iter().position(|&bound| ns <= bound) {
            Some(at) => &self.buckets[at],
            None => &self.over,
        };
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        let sum = self.sum_ns.load(Ordering::Relaxed).wrapping_add(ns);
        self.sum_ns.store(sum, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .chain(std::iter::once(&self.over))
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Renders one histogram family with a series per shard.
fn render_histogram(
    out: &mut String,
    metric: &str,
    help: &str,
    shards: &[ShardStats],
    pick: fn(&ShardStats) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
    for (shard, stats) in shards.iter().enumerate() {
        let h = pick(stats);
        let mut cumulative = 0u64;
        for (bound, bucket) in FANOUT_BUCKETS_NS.iter().zip(h.buckets.iter()) {
            cumulative = cumulative.wrapping_add(bucket.load(Ordering::Relaxed));
            let le = *bound as f64 / 1e9;
            let _ = writeln!(
                out,
                "{metric}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative = cumulative.wrapping_add(h.over.load(Ordering::Relaxed));
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{metric}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {cumulative}\n\
             {metric}_sum{{shard=\"{shard}\"}} {sum}\n\
             {metric}_count{{shard=\"{shard}\"}} {cumulative}"
        );
    }
}

/// Figures kept node-wide (by the hub), not per shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFigures {
    /// Frames encoded: one per event, however many shards and streams it went to.
    pub events_encoded: u64,
    /// Bytes the history is charged (frames and bookkeeping).
    pub history_bytes: u64,
    /// Topics the history knows.
    pub history_topics: u64,
    /// Bytes the topic budget is charged (records of subscribed topics).
    pub topic_bytes: u64,
    /// Events not sent to a shard because its inbox was full.
    pub inbox_overruns: u64,
    /// Cluster mode: resumes waiting for this node to read up to their id, and those refused
    /// since start because `hub::WAITING_MAX` were waiting.
    pub replay_waiting: (u64, u64),
    /// The cluster broker's figures, in cluster mode.
    pub broker: Option<crate::broker::cluster::Figures>,
    /// With `--tls-cert`: the certificate's expiry (unix seconds) and successful reloads.
    pub tls: Option<(u64, u64)>,
}

/// Renders every shard's stats, plus node and process figures, as Prometheus text (0.0.4).
pub fn render(shards: &[ShardStats], node: NodeFigures) -> String {
    let mut out = String::with_capacity(4096);
    for (metric, kind, help, value) in [
        (
            "sse_edge_events_encoded_total",
            "counter",
            "Events encoded into frames (once per event, node-wide).",
            node.events_encoded,
        ),
        (
            "sse_edge_history_bytes",
            "gauge",
            "Bytes charged to the replay history (frames, their bookkeeping, records of unsubscribed topics; bound: --history-bytes).",
            node.history_bytes,
        ),
        (
            "sse_edge_history_topics",
            "gauge",
            "Topics the node knows (subscribed to, or with kept events).",
            node.history_topics,
        ),
        (
            "sse_edge_topic_bytes",
            "gauge",
            "Bytes charged to the topic budget (records of subscribed topics; bound: --topic-bytes).",
            node.topic_bytes,
        ),
        (
            "sse_edge_inbox_overruns_total",
            "counter",
            "Events not sent to a shard whose inbox was full (its streams got gap notices).",
            node.inbox_overruns,
        ),
        (
            "sse_edge_replay_waiting",
            "gauge",
            "Resumes waiting for this node to read up to an id another node handed out (cluster mode).",
            node.replay_waiting.0,
        ),
        (
            "sse_edge_replay_waiting_refused_total",
            "counter",
            "Resumes told reset (unknown) at once because the most that may wait were waiting.",
            node.replay_waiting.1,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
        );
    }
    for (i, info) in INFO.iter().enumerate() {
        let Info {
            metric,
            label,
            kind,
            help,
        } = info;
        // Stats that share a name (told apart by a label) share one help.
        if i.checked_sub(1).and_then(|j| INFO.get(j)).map(|p| p.metric) != Some(*metric) {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        }
        let comma = if label.is_empty() { "" } else { "," };
        for (shard, stats) in shards.iter().enumerate() {
            let v = stats.slots[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{metric}{{shard=\"{shard}\"{comma}{label}}} {v}");
        }
    }
    if let Some((not_after, reloads)) = node.tls {
        for (metric, kind, help, value) in [
            (
                "sse_edge_tls_certificate_expiry_seconds",
                "gauge",
                "When the TLS certificate in use expires, in unix seconds (alert well before).",
                not_after,
            ),
            (
                "sse_edge_tls_reloads_total",
                "counter",
                "Successful TLS certificate reloads (SIGHUP).",
                reloads,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
    }
    if let Some(b) = node.broker {
        let seconds = |ns: u64| ns as f64 / 1e9;
        for (metric, kind, help, value) in [
            (
                "sse_edge_broker_up",
                "gauge",
                "1 while both connections to Redis work (publishes and /healthz answer 503 otherwise).",
                f64::from(u8::from(b.up)),
            ),
            (
                "sse_edge_broker_reconnects_total",
                "counter",
                "Connections to Redis re-established after one was lost.",
                b.reconnects as f64,
            ),
            (
                "sse_edge_broker_publish_round_trip_seconds_sum",
                "counter",
                "Round trips of publish pipelines to Redis, added up (divide by _count).",
                seconds(b.round_trip_ns),
            ),
            (
                "sse_edge_broker_publish_round_trip_seconds_count",
                "counter",
                "Publish pipelines sent to Redis.",
                b.round_trips as f64,
            ),
            (
                "sse_edge_broker_lag_seconds",
                "gauge",
                "How far this node's reader is behind Redis's newest entry, in seconds of entry time.",
                b.lag_ms as f64 / 1e3,
            ),
            (
                "sse_edge_broker_skipped_entries_total",
                "counter",
                "Entries in the Redis stream that were not sse-edge events (skipped).",
                b.skipped as f64,
            ),
            (
                "sse_edge_replay_cache_bytes",
                "gauge",
                "Bytes of Redis ranges the replayer holds for resumes in progress (bound: --replay-cache-bytes).",
                b.replay.cache_bytes as f64,
            ),
            (
                "sse_edge_replay_cache_peak_bytes",
                "gauge",
                "The most bytes the replay cache has held since start.",
                b.replay.cache_peak_bytes as f64,
            ),
            (
                "sse_edge_replay_cache_evictions_total",
                "counter",
                "Cached Redis ranges dropped to stay within --replay-cache-bytes while a resume still needed them.",
                b.replay.cache_evictions as f64,
            ),
            (
                "sse_edge_replay_scan_limited_total",
                "counter",
                "Resumes that walked --replay-scan entries in Redis without reaching the node's history (told reset, expired).",
                b.replay.scan_limited as f64,
            ),
            (
                "sse_edge_replay_refused_total",
                "counter",
                "Replay steps the replayer's queue had no room for (answered from the node's history, with its reset).",
                b.replay.refused as f64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
    }
    let metric = "sse_edge_rejected_requests_total";
    let _ = writeln!(
        out,
        "# HELP {metric} Requests answered with an error status.\n# TYPE {metric} counter"
    );
    for (j, status) in REJECTED_STATUSES.iter().enumerate() {
        let v: u64 = shards
            .iter()
            .map(|s| s.slots[STAT_COUNT + j].load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(out, "{metric}{{status=\"{status}\"}} {v}");
    }
    render_histogram(
        &mut out,
        "sse_edge_fanout_seconds",
        "From an event's acceptance by this node to its frame written to the last stream of this shard that could take it (a stream whose socket is full gets it later).",
        shards,
        |s| &s.fanout,
    );
    render_histogram(
        &mut out,
        "sse_edge_fanout_first_seconds",
        "From an event's acceptance by this node to the first stream write of this shard after its fan-out.",
        shards,
        |s| &s.fanout_first,
    );
    render_process(&mut out, &Process::read());
    out
}

/// The conventional `process_*` figures of the Prometheus clients, read from `/proc` at
/// scrape time; a figure that cannot be read is left out rather than shown as zero.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Process {
    /// Open file descriptors (`/proc/self/fd`).
    pub open_fds: Option<u64>,
    /// The soft limit on open files.
    pub max_fds: Option<u64>,
    /// User and system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// When the process started, in unix seconds.
    pub start_time_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub resident_memory_bytes: Option<u64>,
}

impl Process {
    /// Reads this process's figures.
    pub fn read() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields_after_comm);
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = (ticks > 0).then_some(ticks as f64);
        let field = |n: usize| -> Option<u64> { fields.as_ref()?.get(n)?.parse().ok() };
        // Fields counted from the state (field 3 of proc(5)): utime is 14, stime 15,
        // starttime 22.
        let cpu_seconds = match (field(14 - 3), field(15 - 3), ticks) {
            (Some(user), Some(system), Some(hz)) => Some((user + system) as f64 / hz),
            _ => None,
        };
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let start_time_seconds = match (boot, field(22 - 3), ticks) {
            (Some(boot), Some(start), Some(hz)) => Some(boot as f64 + start as f64 / hz),
            _ => None,
        };
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            // The directory's own descriptor is among the entries while it is read.
            .map(|dir| (dir.count() as u64).saturating_sub(1));
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct it is given.
        let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
            .then_some(limit.rlim_cur);
        Process {
            open_fds,
            max_fds,
            cpu_seconds,
            start_time_seconds,
            resident_memory_bytes: resident_memory_bytes(),
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name, which is in parentheses and may
/// itself hold spaces and parentheses (so the last `)` ends it).
fn stat_fields_after_comm(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Renders the figures that could be read.
fn render_process(out: &mut String, p: &Process) {
    let rows: [(&str, &str, &str, Option<f64>); 5] = [
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_memory_bytes.map(|v| v as f64),
        ),
    ];
    for (metric, kind, help, value) in rows {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
    }
}

/// This process's resident set size, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_stat_per_shard_and_rejections_summed() {
        let shards = [ShardStats::default(), ShardStats::default()];
        let mut a = Counters::default();
        a.add(Stat::Streams, 3);
        a.add(Stat::FramesDropped, 7);
        a.reject(404);
        a.reject(999);
        shards[0].store(&a);
        let mut b = Counters::default();
        b.add(Stat::Streams, 2);
        b.reject(404);
        shards[1].store(&b);
        let text = render(
            &shards,
            NodeFigures {
                events_encoded: 9,
                history_bytes: 5,
                history_topics: 1,
                topic_bytes: 7,
                inbox_overruns: 0,
                replay_waiting: (0, 0),
                broker: None,
                tls: None,
            },
        );
        assert!(text.contains("sse_edge_events_encoded_total 9\n"));
        assert!(text.contains("sse_edge_history_bytes 5\n"));
        assert!(text.contains("sse_edge_topic_bytes 7\n"));
        assert!(text.contains("sse_edge_clients{shard=\"0\"} 3\n"));
        assert!(text.contains("sse_edge_clients{shard=\"1\"} 2\n"));
        assert!(text.contains("sse_edge_frames_dropped_total{shard=\"0\"} 7\n"));
        assert!(text.contains("sse_edge_rejected_requests_total{status=\"404\"} 2\n"));
        assert!(text.contains("sse_edge_rejected_requests_total{status=\"500\"} 1\n"));
        assert!(text.contains("# TYPE sse_edge_clients gauge\n"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn stats_sharing_a_name_are_one_family_told_apart_by_a_label() {
        let shards = [ShardStats::default(), ShardStats::default()];
        let mut a = Counters::default();
        a.add(Stat::RequestEvictionsSilent, 3);
        a.add(Stat::RequestEvictionsStalled, 1);
        shards[0].store(&a);
        let text = render(&shards, NodeFigures::default());
        let family = "sse_edge_request_evictions_total";
        assert_eq!(text.matches(&format!("# HELP {family} ")).count(), 1);
        assert_eq!(
            text.matches(&format!("# TYPE {family} counter\n")).count(),
            1
        );
        for line in [
            "{shard=\"0\",reason=\"silent\"} 3\n",
            "{shard=\"0\",reason=\"stalled\"} 1\n",
            "{shard=\"1\",reason=\"silent\"} 0\n",
            "{shard=\"1\",reason=\"stalled\"} 0\n",
        ] {
            assert!(text.contains(&format!("{family}{line}")), "{line}: {text}");
        }
        // Every stat that shares a name with the one before carries a label of its own.
        for pair in INFO.windows(2) {
            if pair[0].metric == pair[1].metric {
                assert!(!pair[0].label.is_empty() && pair[0].label != pair[1].label);
            }
        }
    }

    #[test]
    fn gauges_move_both_ways_and_peaks_only_rise_unless_set() {
        let mut c = Counters::default();
        c.add(Stat::QueuedBytes, 10);
        c.sub(Stat::QueuedBytes, 4);
        assert_eq!(c.get(Stat::QueuedBytes), 6);
        c.raise(Stat::QueuePeakBytes, 5);
        c.raise(Stat::QueuePeakBytes, 3);
        assert_eq!(c.get(Stat::QueuePeakBytes), 5);
        c.set(Stat::RequestConnections, 7);
        c.set(Stat::RequestConnections, 2);
        assert_eq!(c.get(Stat::RequestConnections), 2);
    }

    #[test]
    fn a_histogram_counts_each_observation_once_in_its_bucket_and_renders_cumulative() {
        use std::time::Duration;
        let shards = [ShardStats::default(), ShardStats::default()];
        let h = &shards[1].fanout;
        h.observe(Duration::from_micros(100)); // on the first bound: in it
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(11)); // beyond the last bound
        assert_eq!(h.count(), 4);
        let text = render(&shards, NodeFigures::default());
        let f = "sse_edge_fanout_seconds";
        for line in [
            format!("{f}_bucket{{shard=\"1\",le=\"0.0001\"}} 1\n"),
            format!("{f}_bucket{{shard=\"1\",le=\"0.00025\"}} 2\n"),
            format!("{f}_bucket{{shard=\"1\",le=\"0.0025\"}} 2\n"),
            format!("{f}_bucket{{shard=\"1\",le=\"0.005\"}} 3\n"),
            format!("{f}_bucket{{shard=\"1\",le=\"10\"}} 3\n"),
            format!("{f}_bucket{{shard=\"1\",le=\"+Inf\"}} 4\n"),
            format!("{f}_count{{shard=\"1\"}} 4\n"),
            format!("{f}_sum{{shard=\"1\"}} 11.003201\n"),
            format!("{f}_count{{shard=\"0\"}} 0\n"),
            "sse_edge_fanout_first_seconds_count{shard=\"1\"} 0\n".to_owned(),
        ] {
            assert!(text.contains(&line), "{line}: {text}");
        }
        assert_eq!(
            text.matches("# TYPE sse_edge_fanout_seconds histogram\n")
                .count(),
            1
        );
    }

    #[test]
    fn process_figures_are_readable_here() {
        let p = Process::read();
        assert!(p.open_fds.unwrap() >= 3, "{p:?}");
        assert!(p.max_fds.unwrap() >= p.open_fds.unwrap(), "{p:?}");
        assert!(p.cpu_seconds.unwrap() >= 0.0, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = p.start_time_seconds.unwrap();
        assert!(started > 1e9 && started <= now + 1.0, "{p:?}");
        let text = render(&[], NodeFigures::default());
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(&format!("\n{name}")), "{name}");
        }
    }

    #[test]
    fn the_command_name_may_hold_spaces_and_parentheses() {
        let fields = stat_fields_after_comm("42 (a) b (c) S 1 2").unwrap();
        assert_eq!(fields, ["S", "1", "2"]);
    }

    #[test]
    fn resident_memory_is_readable_here() {
        assert!(resident_memory_bytes().unwrap() > 0);
    }
}
