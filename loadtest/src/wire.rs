//! The parent ↔ worker protocol.
//!
//! The parent writes the [`Plan`] and then [`Command`]s to a worker's stdin, one JSON object
//! per line (each line is one `write` below `PIPE_BUF`, so it arrives whole). A worker writes
//! [`Report`] frames to its stdout: `u32` length + JSON, then `u32` length + a V2 histogram,
//! little-endian. Binary framing keeps the histogram bytes as they are.

use std::io::{self, Read, Write};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::stats::Counters;
use crate::tls::Trust;

/// Largest frame part accepted, so a corrupt length cannot make the parent allocate wildly.
const MAX_PART: usize = 64 << 20;

/// How receivers turn an event into a latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The body carries a sequence number and its scheduled send time; loss is a gap.
    Stamped,
    /// The server ignores the body: the n-th event after the start answers the n-th POST.
    ClosedLoop,
}

/// One worker's share of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Index of this worker, for messages.
    pub worker: usize,
    /// The stream URL.
    pub url: String,
    /// Streams to open.
    pub connections: u64,
    /// Global index of this worker's first stream (spreads sources and slow readers evenly).
    pub first_index: u64,
    /// Source addresses to bind, used in turn; empty = let the kernel choose.
    pub sources: Vec<IpAddr>,
    /// Streams started per second; 0 = as fast as `max_in_flight` allows.
    pub ramp_per_sec: f64,
    /// Connections between `connect()` and their stream head, at most.
    pub max_in_flight: usize,
    /// How long a stream may take to get its head.
    pub connect_timeout_ms: u64,
    /// Share of streams that stop reading once established.
    pub slow_fraction: f64,
    /// How latencies are taken.
    pub mode: Mode,
    /// How often to report progress.
    pub progress_ms: u64,
    /// `CLOCK_MONOTONIC` µs after which the worker reports and exits whatever happens.
    pub deadline_us: u64,
    /// Extra header lines for every stream request, each ending in CRLF (`--header`).
    #[serde(default)]
    pub headers: String,
    /// What to trust for an `https://` URL; the worker builds its TLS configuration from it.
    #[serde(default)]
    pub tls: Option<Trust>,
    /// Whether the worker's streams share session tickets (`--tls-resume`).
    #[serde(default)]
    pub tls_resume: bool,
    /// `--reconnect`: a stream that ends comes back like an `EventSource`.
    #[serde(default)]
    pub reconnect: bool,
    /// `--last-event-id`: every stream sends it on its first request.
    #[serde(default)]
    pub last_event_id: Option<String>,
    /// `--storm`: measure how each stream was served (head, replay).
    #[serde(default)]
    pub storm: bool,
    /// HTTP/2 (`h2c://`, or `https://` with `--streams-per-connection`): streams per
    /// connection; `None`: HTTP/1.1, one connection per stream.
    #[serde(default)]
    pub streams_per_connection: Option<u64>,
}

/// What the parent tells a running worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Publishing begins: events from now on are measured.
    Start,
    /// Closed-loop mode: message `seq` is (re)sent at `at_us`.
    Sent {
        /// 0-based message number.
        seq: u64,
        /// Its scheduled send time.
        at_us: u64,
    },
    /// Slow readers start reading, to count what they got.
    Drain,
    /// `--reconnect-after`: close every stream at once; each comes back with its last id.
    Blip,
    /// Send the final report and exit; `published` messages went out.
    Stop {
        /// Messages published successfully.
        published: u64,
        /// Numbers given out but never published (with several publishing connections, the
        /// last few when publishing stopped): numbers `0..published + skipped.len()` went out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<u64>,
    },
}

/// Where a worker is, with its counters so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The last report: the histogram holds every latency of the run.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Every stream is established or failed.
    pub connect_done: bool,
    /// Counters since the start.
    pub counters: Counters,
    /// Final report only: per message, the slowest fast stream's latency (µs; 0: none got it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completion_us: Vec<u64>,
    /// Why the first stream that failed in TLS failed (certificate not trusted, alert…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_error: Option<String>,
    /// Final report only, `--reconnect`: from each stream's end to its next head, µs, as a
    /// V2-serialized histogram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconnect_us: Vec<u8>,
    /// Final report only, `--storm`: how the worker's streams were served (boxed: most
    /// reports carry none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<Box<StormTally>>,
}

/// One worker's storm (`--storm`), merged by [`StormTally::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormTally {
    /// When its first connection began (`CLOCK_MONOTONIC` µs; 0: none began).
    pub first_connect_us: u64,
    /// When its last stream had its head and its whole replay (µs; 0: none did).
    pub all_served_us: u64,
    /// Streams that had a head.
    pub streams: u64,
    /// Replayed events (see [`Acct::replayed`](crate::meter::Acct::replayed)) over them.
    pub replayed_total: u64,
    /// Fewest replayed events one of them got.
    pub replayed_min: u64,
    /// Most replayed events one of them got.
    pub replayed_max: u64,
}

impl StormTally {
    /// Adds another worker's storm to this one.
    pub fn merge(&mut self, other: &StormTally) {
        if other.streams == 0 && other.first_connect_us == 0 {
            return;
        }
        self.first_connect_us = match (self.first_connect_us, other.first_connect_us) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.all_served_us = self.all_served_us.max(other.all_served_us);
        if other.streams > 0 {
            self.replayed_min = if self.streams == 0 {
                other.replayed_min
            } else {
                self.replayed_min.min(other.replayed_min)
            };
            self.replayed_max = self.replayed_max.max(other.replayed_max);
        }
        self.streams += other.streams;
        self.replayed_total += other.replayed_total;
    }

    /// Counts one served stream that got `replayed` events, the last of them (or its head)
    /// at `served_us`.
    pub fn add(&mut self, replayed: u64, served_us: u64) {
        self.merge(&StormTally {
            first_connect_us: 0,
            all_served_us: served_us,
            streams: 1,
            replayed_total: replayed,
            replayed_min: replayed,
            replayed_max: replayed,
        });
    }
}

/// Writes one line of JSON.
pub fn write_line<T: Serialize>(out: &mut impl Write, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Writes a report frame with its histogram (V2 bytes; empty for none).
pub fn write_frame(out: &mut impl Write, report: &Report, histogram: &[u8]) -> io::Result<()> {
    let json = serde_json::to_vec(report).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(8 + json.len() + histogram.len());
    frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
    frame.extend_from_slice(&json);
    frame.extend_from_slice(&(histogram.len() as u32).to_le_bytes());
    frame.extend_from_slice(histogram);
    out.write_all(&frame)?;
    out.flush()
}

/// Reads one report frame; `None` at a clean end of stream.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<(Report, Vec<u8>)>> {
    let Some(json) = read_part(input, true)? else {
        return Ok(None);
    };
    let report = serde_json::from_slice(&json).map_err(io::Error::other)?;
    let histogram = read_part(input, false)?.unwrap_or_default();
    Ok(Some((report, histogram)))
}

fn read_part(input: &mut impl Read, eof_ok: bool) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 4];
    if let Err(e) = input.read_exact(&mut len) {
        return if eof_ok && e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PART {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut part = vec![0; len];
    input.read_exact(&mut part)?;
    Ok(Some(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_commands_round_trip() {
        let mut report = Report {
            connect_done: true,
            ..Report::default()
        };
        report.counters.received = 42;
        let mut pipe = Vec::new();
        write_frame(&mut pipe, &report, b"hist").unwrap();
        write_frame(&mut pipe, &Report::default(), b"").unwrap();
        let mut r = pipe.as_slice();
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((report, b"hist".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((Report::default(), vec![]))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // A frame cut short is an error, not a clean end.
        assert!(read_frame(&mut &pipe[..6]).is_err());

        let mut line = Vec::new();
        write_line(&mut line, &Command::Sent { seq: 3, at_us: 9 }).unwrap();
        assert_eq!(line, b"{\"cmd\":\"sent\",\"seq\":3,\"at_us\":9}\n");
        let back: Command = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, Command::Sent { seq: 3, at_us: 9 });
    }
}
