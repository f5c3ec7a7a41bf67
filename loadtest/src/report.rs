//! The results: the JSON summary (field names fixed by the contract), the human table, and
//! the HdrHistogram percentile file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use crate::sizing::{self, Sizing};
use crate::stats::{Latency, SIGFIG};

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
    /// Values recorded.
    pub count: u64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram (all zero when it is empty).
    pub fn of(h: &Latency) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        }
    }
}

/// A spread of times, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Values recorded.
    pub count: u64,
}

/// Replayed events per stream in a storm: events a stream received that were neither this
/// run's own messages nor the server's notices (`gap`, `reset`), i.e. the server's history
/// published before the run (with the node's `--tick 0`: nothing else).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Replayed {
    /// Streams that had a head.
    pub streams: u64,
    /// Replayed events over all of them.
    pub total: u64,
    /// Fewest one stream got.
    pub min: u64,
    /// Most one stream got.
    pub max: u64,
}

/// What slow readers got (allowed to lose).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Slow {
    /// Slow readers established.
    pub clients: u64,
    /// Messages they received once they read again.
    pub received: u64,
    /// Messages they never got.
    pub lost: u64,
    /// Slow readers the server disconnected.
    pub disconnects: u64,
}

/// The run's summary, as written by `--json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// The stream URL.
    pub url: String,
    /// Streams asked for.
    pub connections_requested: u64,
    /// Streams started (fewer than requested only when Ctrl-C cut the ramp short).
    pub connections_started: u64,
    /// Streams that got a 200 stream head.
    pub connections_established: u64,
    /// Streams that failed before their head.
    pub connect_errors: u64,
    /// How the streams were carried: `http/1.1` (one connection per stream) or `h2`.
    pub protocol: String,
    /// Connections opened (TCP): over HTTP/1.1 one per stream and attempt, over HTTP/2
    /// about streams / `streams_per_connection` per worker (more after GOAWAYs or reconnects).
    pub connections: u64,
    /// HTTP/2 streams asked of each connection (`--streams-per-connection`); 1 over HTTP/1.1.
    pub streams_per_connection: u64,
    /// HTTP/2: GOAWAY frames received, and the streams they left unprocessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_goaways: Option<u64>,
    /// HTTP/2: streams left unprocessed by a GOAWAY (each reconnects under `--reconnect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_goaway_streams: Option<u64>,
    /// HTTP/2: streams the server reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_resets: Option<u64>,
    /// Established fast streams that ended before the run did.
    pub disconnects: u64,
    /// Failures by kind: refused, reset, timeout, bad_status, bad_response, emfile,
    /// no_port, closed, shed, tls, other.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Messages published successfully.
    pub messages_published: u64,
    /// POSTs that failed, by kind (with several publishing connections, each failed attempt
    /// of a POST that is sent again).
    pub publish_errors: BTreeMap<String, u64>,
    /// Publishing connections (`--publishers`); 0 when nothing was published.
    pub publishers: u64,
    /// Why the first stream or POST that failed in TLS failed, e.g. `invalid peer
    /// certificate: UnknownIssuer` (a `--cacert` that did not sign the server's certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_error: Option<String>,
    /// Established streams whose TLS handshake resumed a session (`--tls-resume`); the rest
    /// of an https:// run's streams made a full handshake.
    pub tls_resumed: u64,
    /// Messages × fast streams established.
    pub deliveries_expected: u64,
    /// Messages received by fast streams.
    pub deliveries_received: u64,
    /// Messages fast streams never got.
    pub deliveries_lost: u64,
    /// Messages received twice, or more places late than any number of publishing
    /// connections explains (out of order, but within the window, is received: see `meter`).
    pub duplicates: u64,
    /// Events that were not the run's messages (heartbeats, notices).
    pub other_events: u64,
    /// `--reconnect`: streams served again (a new 200 head after an earlier one ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnects: Option<u64>,
    /// `--reconnect`: connection attempts after a stream's first (failed ones included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_attempts: Option<u64>,
    /// `--reconnect`: messages a stream received again (ids it had, replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_duplicated: Option<u64>,
    /// `--reconnect`: messages fast streams never got whose absence a `gap` or `reset`
    /// notice announced (not in `deliveries_lost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_lost_covered: Option<u64>,
    /// `--reconnect`: from a stream's end (EOF, reset, failed connect) to its next response
    /// head, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_ms: Option<Spread>,
    /// `--storm`: connections refused (`ECONNREFUSED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_refused: Option<u64>,
    /// `--storm`: connections closed (EOF or reset) before their response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_closed: Option<u64>,
    /// `--storm`: from the first connect until every served stream had its head and the last
    /// of its replayed events, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_all_served_ms: Option<f64>,
    /// `--storm`: replayed events per stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_replayed_per_stream: Option<Replayed>,
    /// Delivery latency of fast streams, from scheduled send to receipt.
    pub latency_us: Percentiles,
    /// Per message, from its scheduled send until the last fast stream had it.
    pub broadcast_completion_us: Percentiles,
    /// Time the server took to answer each POST.
    pub publish_latency_us: Percentiles,
    /// Deliveries received per second, from the first publish to the last delivery wait.
    pub deliveries_per_sec: f64,
    /// Slow readers.
    pub slow: Slow,
    /// Server RSS at the end, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes: Option<u64>,
    /// Server RSS before the streams connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS with every stream connected, idle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_connected_bytes: Option<u64>,
    /// (connected − before) / established.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_bytes_per_conn: Option<f64>,
    /// Server CPU time from the first publish to the end of the delivery wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds: Option<f64>,
    /// That CPU time per delivery received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// A `--server-pid` process exited during the run (an upgrade hands over to a new pid):
    /// the CPU figures and the final RSS are left out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_exited: bool,
    /// How many `--server-pid` processes were measured; every server figure is their sum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_processes: Option<u64>,
    /// The subscriber count the server reported in its last publish answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_reported_clients: Option<u64>,
    /// The sizing report.
    pub sizing: Option<Sizing>,
    /// Worker processes used.
    pub procs: u64,
    /// Source addresses used (empty: the kernel's choice).
    pub sources: Vec<String>,
    /// `stamped`, `closed-loop`, or `none` (streams only held).
    pub publish_mode: String,
    /// Seconds the streams were held without a publisher.
    pub hold_secs: f64,
    /// CPU seconds the load generator itself used (parent and workers): near the core count
    /// times the run time, the client and not the server may be the bottleneck.
    pub client_cpu_secs: f64,
    /// Seconds from the first connect until every stream was established or failed.
    pub connect_secs: f64,
    /// Seconds spent publishing.
    pub publish_secs: f64,
    /// Largest delay of a POST behind its schedule, µs; latencies include it.
    pub publish_max_lag_us: u64,
    /// Seconds the whole run took.
    pub elapsed_secs: f64,
    /// Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Workers that died or did not send their final report.
    pub worker_errors: u64,
    /// Every stream connected and no fast reader lost a message.
    pub passed: bool,
}

impl Summary {
    /// Why the run did not pass, one short phrase each.
    pub fn failures(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.connect_errors > 0 {
            why.push(format!("{} streams failed to connect", self.connect_errors));
        }
        if self.disconnects > 0 {
            why.push(format!("{} streams were disconnected", self.disconnects));
        }
        if self.deliveries_lost > 0 {
            why.push(format!("{} deliveries lost", self.deliveries_lost));
        }
        let publish_errors: u64 = self.publish_errors.values().sum();
        if publish_errors > 0 {
            why.push(format!("{publish_errors} POSTs failed"));
        }
        if self.worker_errors > 0 {
            why.push(format!("{} workers failed", self.worker_errors));
        }
        if self.interrupted {
            why.push("interrupted".to_owned());
        }
        why
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, name: &str, value: String| {
            let _ = writeln!(t, "  {name:<12} {value}");
        };
        let _ = writeln!(
            t,
            "\nloadtest: {} streams → {} ({} worker{}, {})",
            self.connections_requested,
            self.url,
            self.procs,
            if self.procs == 1 { "" } else { "s" },
            if self.sources.is_empty() {
                "kernel-chosen source".to_owned()
            } else {
                format!("sources {}", self.sources.join(","))
            }
        );
        row(
            &mut t,
            "streams",
            format!(
                "{} established, {} connect errors, {} disconnects  ({:.1} s to connect)",
                self.connections_established,
                self.connect_errors,
                self.disconnects,
                self.connect_secs
            ),
        );
        row(
            &mut t,
            "protocol",
            format!(
                "{}, {} connections, {} streams per connection{}",
                self.protocol,
                self.connections,
                self.streams_per_connection,
                match (self.h2_goaways, self.h2_goaway_streams, self.h2_resets) {
                    (Some(g), Some(gs), Some(r)) if g + gs + r > 0 => format!(
                        "  (GOAWAY {g}, streams it left unprocessed {gs}, streams reset {r})"
                    ),
                    _ => String::new(),
                }
            ),
        );
        if !self.errors_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            row(&mut t, "failures", kinds.join(", "));
        }
        if let Some(why) = &self.tls_error {
            row(&mut t, "tls", format!("first failure: {why}"));
        }
        if self.tls_resumed > 0 {
            row(
                &mut t,
                "tls",
                format!(
                    "{} of {} streams resumed a session",
                    self.tls_resumed, self.connections_established
                ),
            );
        }
        if let (Some(reconnects), Some(ms)) = (self.reconnects, self.reconnect_ms) {
            row(
                &mut t,
                "reconnects",
                format!(
                    "{reconnects} streams served again ({} attempts), end to head p50 {:.0} ms, \
                     p99 {:.0} ms, max {:.0} ms; {} duplicates, {} lost covered by gap/reset",
                    self.reconnect_attempts.unwrap_or(0),
                    ms.p50,
                    ms.p99,
                    ms.max,
                    self.deliveries_duplicated.unwrap_or(0),
                    self.deliveries_lost_covered.unwrap_or(0)
                ),
            );
        }
        if let Some(closed) = self.storm_closed {
            let replayed = self.storm_replayed_per_stream.unwrap_or_default();
            row(
                &mut t,
                "storm",
                format!(
                    "{} refused, {closed} closed before their head; all served in {}; \
                     replayed per stream {}..{} ({} in all)",
                    self.storm_refused.unwrap_or(0),
                    self.storm_all_served_ms
                        .map_or("-".to_owned(), |ms| format!("{ms:.0} ms")),
                    replayed.min,
                    replayed.max,
                    replayed.total
                ),
            );
        }
        let publish_errors: u64 = self.publish_errors.values().sum();
        if self.publish_mode == "none" {
            row(
                &mut t,
                "published",
                format!("nothing (streams held {:.1} s)", self.hold_secs),
            );
        } else {
            self.publishing_rows(&mut t, publish_errors);
        }
        if self.slow.clients > 0 {
            row(
                &mut t,
                "slow",
                format!(
                    "{} readers: {} received, {} lost, {} disconnected by the server (allowed)",
                    self.slow.clients, self.slow.received, self.slow.lost, self.slow.disconnects
                ),
            );
        }
        if let Some(n) = self.server_processes {
            let what = if n == 1 {
                "1 process measured".to_owned()
            } else {
                format!("{n} processes measured: RSS and CPU are their sums")
            };
            row(&mut t, "server", what);
        }
        if self.server_exited {
            row(
                &mut t,
                "server",
                "exited during the run: its CPU and final RSS are not reported".to_owned(),
            );
        }
        if self.server_rss_bytes.is_some() || self.server_rss_connected_bytes.is_some() {
            let mut line = format!("rss {}", self.server_rss_bytes.map_or("-".to_owned(), mib));
            if let (Some(before), Some(connected)) = (
                self.server_rss_before_bytes,
                self.server_rss_connected_bytes,
            ) {
                let _ = write!(
                    line,
                    " (before {}, connected idle {})",
                    mib(before),
                    mib(connected)
                );
            }
            if let Some(per) = self.server_bytes_per_conn {
                let _ = write!(line, ", {per:.0} B/stream");
            }
            row(&mut t, "server mem", line);
            if sizing::grew_nothing(self.server_bytes_per_conn) {
                row(&mut t, "", sizing::NO_GROWTH.to_owned());
            }
        }
        if let Some(cpu) = self.server_cpu_seconds {
            let per = self
                .server_cpu_ns_per_delivery
                .map_or("-".to_owned(), |ns| format!("{ns:.0} ns/delivery"));
            let window = if self.publish_mode == "none" {
                "while the streams were held"
            } else {
                "from the first publish to the end of the wait"
            };
            row(&mut t, "server cpu", format!("{cpu:.2} s {window}, {per}"));
        }
        row(
            &mut t,
            "client cpu",
            format!(
                "{:.2} s (loadtest and its workers) over {:.1} s: {:.2} cores busy",
                self.client_cpu_secs,
                self.elapsed_secs,
                self.client_cpu_secs / self.elapsed_secs.max(1e-9)
            ),
        );
        if let Some(clients) = self.server_reported_clients {
            row(
                &mut t,
                "server says",
                format!("{clients} subscribers at the last publish"),
            );
        }
        if let Some(s) = &self.sizing {
            let per_gib = s
                .streams_per_gib
                .map_or("-".to_owned(), |v| format!("{v:.0}"));
            let per_cpu = s
                .deliveries_per_cpu_sec
                .map_or("-".to_owned(), |v| format!("{v:.0}"));
            row(
                &mut t,
                "sizing",
                format!("{per_gib} streams per GiB of server memory, {per_cpu} deliveries per server CPU-second"),
            );
            if let Some(p) = &s.plan {
                let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                row(
                    &mut t,
                    "plan",
                    format!(
                        "{} streams × {} msg/s = {:.0} deliveries/s → {} node(s)  (memory {}, cpu {}, open files {})",
                        p.streams,
                        p.msgs_per_sec,
                        p.deliveries_per_sec,
                        n(p.nodes),
                        n(p.nodes_for_memory),
                        n(p.nodes_for_cpu),
                        n(p.nodes_for_fds)
                    ),
                );
                for a in &p.assumptions {
                    row(&mut t, "", format!("assumes {a}"));
                }
            }
        }
        let failures = self.failures();
        row(
            &mut t,
            "result",
            if failures.is_empty() {
                "PASS".to_owned()
            } else {
                format!("FAIL: {}", failures.join(", "))
            },
        );
        t
    }
    /// The rows about publishing, deliveries and latency.
    fn publishing_rows(&self, t: &mut String, publish_errors: u64) {
        let row = |t: &mut String, name: &str, value: String| {
            let _ = writeln!(t, "  {name:<12} {value}");
        };
        row(
            t,
            "published",
            format!(
                "{} messages in {:.1} s ({:.1}/s, {}{}), {} POST errors, POST p50 {} p99 {}",
                self.messages_published,
                self.publish_secs,
                self.messages_published as f64 / self.publish_secs.max(1e-9),
                self.publish_mode,
                if self.publishers > 1 {
                    format!(", {} publishers", self.publishers)
                } else {
                    String::new()
                },
                publish_errors,
                ms(self.publish_latency_us.p50),
                ms(self.publish_latency_us.p99)
            ),
        );
        row(
            t,
            "deliveries",
            format!(
                "{} expected, {} received, {} lost, {} duplicate, {} other  ({:.0}/s)",
                self.deliveries_expected,
                self.deliveries_received,
                self.deliveries_lost,
                self.duplicates,
                self.other_events,
                self.deliveries_per_sec
            ),
        );
        if self.publish_max_lag_us >= 10_000 {
            row(
                t,
                "",
                format!(
                    "behind schedule by up to {}: {}; latency counts from the schedule",
                    ms(self.publish_max_lag_us),
                    if self.publishers > 1 {
                        "each connection waited for its previous answer"
                    } else {
                        "each POST waited for the previous answer"
                    }
                ),
            );
        }
        let l = &self.latency_us;
        row(
            t,
            "latency",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                ms(l.mean as u64),
                l.count
            ),
        );
        let b = &self.broadcast_completion_us;
        if b.count > 0 {
            row(
                t,
                "completion",
                format!(
                    "p50 {}  p99 {}  max {}  (per message, until the last stream had it)",
                    ms(b.p50),
                    ms(b.p99),
                    ms(b.max)
                ),
            );
        }
    }
}

/// Microseconds as milliseconds, for people.
fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Writes the distribution like HdrHistogram's `outputPercentileDistribution` (Java), in
/// milliseconds, five ticks per half distance: the `.hgrm` format plotters read.
pub fn write_hgrm(h: &Latency, out: &mut impl Write) -> io::Result<()> {
    const SCALE: f64 = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    let sub_buckets = (2 * 10u64.pow(u32::from(SIGFIG))).next_power_of_two();
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_latency;

    #[test]
    fn json_carries_the_contract_fields() {
        let mut h = new_latency();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let summary = Summary {
            connections_requested: 10,
            connections_established: 10,
            latency_us: Percentiles::of(&h),
            server_rss_bytes: Some(1),
            server_bytes_per_conn: Some(2.0),
            server_cpu_ns_per_delivery: Some(3.0),
            passed: true,
            ..Summary::default()
        };
        let json: serde_json::Value = serde_json::to_value(&summary).unwrap();
        for field in [
            "connections_requested",
            "connections_established",
            "connect_errors",
            "messages_published",
            "deliveries_expected",
            "deliveries_received",
            "deliveries_lost",
            "deliveries_per_sec",
            "server_rss_bytes",
            "server_bytes_per_conn",
            "server_cpu_ns_per_delivery",
            "protocol",
            "connections",
            "streams_per_connection",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json["latency_us"][p].as_u64().unwrap() > 0, "{p}");
        }
        assert_eq!(json["latency_us"]["p50"], 500);
        // Server figures are left out when no --server-pid was given.
        let bare = serde_json::to_value(Summary::default()).unwrap();
        assert!(bare.get("server_rss_bytes").is_none());
    }

    #[test]
    fn table_names_every_failure() {
        let mut s = Summary {
            connections_requested: 3,
            connect_errors: 1,
            deliveries_lost: 2,
            ..Summary::default()
        };
        s.errors_by_kind.insert("refused".into(), 1);
        let table = s.table();
        assert!(table.contains("refused 1"));
        assert!(table.contains("FAIL: 1 streams failed to connect, 2 deliveries lost"));
        assert!(Summary::default().table().contains("PASS"));
    }

    #[test]
    fn a_server_that_exited_keeps_its_memory_per_stream() {
        let s = Summary {
            server_rss_before_bytes: Some(1 << 20),
            server_rss_connected_bytes: Some(2 << 20),
            server_bytes_per_conn: Some(300.0),
            server_exited: true,
            ..Summary::default()
        };
        let table = s.table();
        assert!(table.contains("exited during the run"), "{table}");
        assert!(!table.contains("measured"), "{table}");
        assert!(
            table.contains("rss - (before 1.0 MiB, connected idle 2.0 MiB), 300 B/stream"),
            "{table}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["server_exited"], true);
        let bare = serde_json::to_value(Summary::default()).unwrap();
        assert!(bare.get("server_exited").is_none());
    }

    #[test]
    fn a_server_whose_memory_did_not_grow_is_explained_in_the_table() {
        let reused = Summary {
            server_rss_before_bytes: Some(20 << 20),
            server_rss_connected_bytes: Some(20 << 20),
            server_rss_bytes: Some(20 << 20),
            server_bytes_per_conn: Some(0.0),
            ..Summary::default()
        };
        let table = reused.table();
        assert!(table.contains(", 0 B/stream\n"), "{table}");
        assert!(table.contains("reused from an earlier run"), "{table}");
        let fresh = Summary {
            server_bytes_per_conn: Some(117.0),
            ..reused
        };
        assert!(!fresh.table().contains("reused"), "{}", fresh.table());
    }

    #[test]
    fn the_report_says_how_many_server_processes_were_summed() {
        let s = Summary {
            server_processes: Some(3),
            server_rss_bytes: Some(3 << 20),
            ..Summary::default()
        };
        let table = s.table();
        assert!(
            table.contains("server       3 processes measured: RSS and CPU are their sums"),
            "{table}"
        );
        assert_eq!(serde_json::to_value(&s).unwrap()["server_processes"], 3);
        let one = Summary {
            server_processes: Some(1),
            ..Summary::default()
        };
        assert!(one.table().contains("server       1 process measured\n"));
        let bare = serde_json::to_value(Summary::default()).unwrap();
        assert!(bare.get("server_processes").is_none());
    }

    #[test]
    fn hgrm_reads_like_the_java_output() {
        let mut h = new_latency();
        for v in [1000, 2000, 3000, 4000] {
            h.record(v).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        // Like Java, each row shows the highest value equivalent to what was recorded.
        let last_row = lines[lines.len() - 4];
        assert_eq!(last_row, "       4.001 1.000000000000          4");
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =        4.001, Total count    =            4]"
        );
        assert!(text.ends_with("SubBuckets     =         2048]\n"));
    }
}
