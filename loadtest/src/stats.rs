//! What is counted and measured, in a shape that crosses process boundaries: counters as
//! serde structs, latencies as HdrHistograms in the V2 serialization, both merged by adding.

use std::collections::BTreeMap;
use std::io;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, 1 µs to one hour, 3 significant figures.
pub type Latency = Histogram<u64>;

/// Highest latency tracked exactly; anything slower is recorded as this (an hour is a stall).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant figures kept by every latency histogram.
pub const SIGFIG: u8 = 3;

/// An empty latency histogram; all of them share these bounds so they can be added.
pub fn new_latency() -> Latency {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG).expect("static bounds are valid")
}

/// Serializes a histogram in the HdrHistogram V2 format (what Java and Go read too).
pub fn encode(histogram: &Latency) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    V2Serializer::new()
        .serialize(histogram, &mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// Adds a V2-serialized histogram into `into`.
pub fn merge_encoded(into: &mut Latency, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let h: Latency = Deserializer::new()
        .deserialize(&mut io::Cursor::new(bytes))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
    into.add(&h)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))
}

/// Why a stream failed, one name per kind in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens there (`ECONNREFUSED`).
    Refused,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// No stream head within `--connect-timeout` (or `ETIMEDOUT`).
    Timeout,
    /// The stream answered with a status other than 200.
    BadStatus,
    /// Not a parsable HTTP response or chunked body.
    BadResponse,
    /// This process ran out of descriptors (`EMFILE`, `ENFILE`).
    Emfile,
    /// No local port left for this destination (`EADDRNOTAVAIL`).
    NoPort,
    /// The server closed an established stream.
    Closed,
    /// The server shed the stream at capacity (`: shed`).
    Shed,
    /// An HTTP/2 server went away (GOAWAY) before it processed the stream.
    GoAway,
    /// The TLS handshake failed (certificate not trusted, alert, hang-up before it was
    /// done) or a TLS record was bad.
    Tls,
    /// Any other error.
    Other,
}

impl Failure {
    /// Classifies an OS or TLS error.
    pub fn of(e: &io::Error) -> Failure {
        if crate::tls::is_tls_error(e) {
            return Failure::Tls;
        }
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Failure::Refused,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => Failure::Reset,
            Some(libc::ETIMEDOUT) => Failure::Timeout,
            Some(libc::EMFILE | libc::ENFILE) => Failure::Emfile,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => Failure::NoPort,
            _ => Failure::Other,
        }
    }

    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::BadStatus => "bad_status",
            Failure::BadResponse => "bad_response",
            Failure::Emfile => "emfile",
            Failure::NoPort => "no_port",
            Failure::Closed => "closed",
            Failure::Shed => "shed",
            Failure::Tls => "tls",
            Failure::GoAway => "goaway",
            Failure::Other => "other",
        }
    }
}

/// Counters of one worker, or of all of them once merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Streams this worker was asked for.
    pub requested: u64,
    /// Streams that got a 200 head (slow ones included).
    pub established: u64,
    /// Established streams that are slow readers.
    pub slow_established: u64,
    /// Streams that failed before their head arrived.
    pub connect_errors: u64,
    /// Fast streams that ended after being established.
    pub disconnects: u64,
    /// Slow streams that ended after being established (allowed).
    pub slow_disconnects: u64,
    /// Failures by kind (connect errors and disconnects, fast and slow).
    pub errors: BTreeMap<String, u64>,
    /// Published messages received by fast streams.
    pub received: u64,
    /// Published messages fast streams never got (gaps and missing tails).
    pub lost: u64,
    /// Published messages received by slow streams.
    pub slow_received: u64,
    /// Published messages slow streams never got.
    pub slow_lost: u64,
    /// Messages seen again or out of order.
    pub duplicates: u64,
    /// Events that were not ours (heartbeats, replays, notices such as `gap`).
    pub other_events: u64,
    /// Established streams whose TLS handshake resumed a session (`--tls-resume`).
    #[serde(default)]
    pub tls_resumed: u64,
    /// Messages fast streams never got whose absence a `gap` or `reset` notice announced
    /// (`--reconnect` runs; otherwise they are in `lost`).
    #[serde(default)]
    pub lost_covered: u64,
    /// Connections that ended (EOF or reset) before their response head.
    #[serde(default)]
    pub closed_before_head: u64,
    /// `--reconnect`: streams served again (a new 200 head after an earlier one ended).
    #[serde(default)]
    pub reconnects: u64,
    /// `--reconnect`: connection attempts after a stream's first, whatever their outcome.
    #[serde(default)]
    pub reconnect_attempts: u64,
    /// Connections opened (TCP; over HTTP/1.1 one per stream attempt, over HTTP/2 one per
    /// `--streams-per-connection` streams).
    #[serde(default)]
    pub connections_opened: u64,
    /// HTTP/2: GOAWAY frames received.
    #[serde(default)]
    pub h2_goaways: u64,
    /// HTTP/2: streams a GOAWAY left unprocessed (above its last stream id); with
    /// `--reconnect` each comes back on another connection.
    #[serde(default)]
    pub h2_goaway_streams: u64,
    /// HTTP/2: streams the server reset (RST_STREAM).
    #[serde(default)]
    pub h2_resets: u64,
}

impl Counters {
    /// Counts one failure of `kind`.
    pub fn fail(&mut self, kind: Failure) {
        *self.errors.entry(kind.name().to_owned()).or_default() += 1;
    }

    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &Counters) {
        self.requested += other.requested;
        self.established += other.established;
        self.slow_established += other.slow_established;
        self.connect_errors += other.connect_errors;
        self.disconnects += other.disconnects;
        self.slow_disconnects += other.slow_disconnects;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.received += other.received;
        self.lost += other.lost;
        self.slow_received += other.slow_received;
        self.slow_lost += other.slow_lost;
        self.duplicates += other.duplicates;
        self.other_events += other.other_events;
        self.tls_resumed += other.tls_resumed;
        self.lost_covered += other.lost_covered;
        self.closed_before_head += other.closed_before_head;
        self.reconnects += other.reconnects;
        self.reconnect_attempts += other.reconnect_attempts;
        self.connections_opened += other.connections_opened;
        self.h2_goaways += other.h2_goaways;
        self.h2_goaway_streams += other.h2_goaway_streams;
        self.h2_resets += other.h2_resets;
    }

    /// Established streams that read at full speed.
    pub fn fast_established(&self) -> u64 {
        self.established - self.slow_established
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_across_processes_through_v2() {
        // Two "workers" record disjoint ranges and ship V2 bytes; the parent adds them.
        let mut a = new_latency();
        let mut b = new_latency();
        for v in 1..=900u64 {
            a.record(v * 10).unwrap();
        }
        for v in 1..=100u64 {
            b.record(1_000_000 + v).unwrap();
        }
        b.saturating_record(u64::MAX);
        let mut merged = new_latency();
        merge_encoded(&mut merged, &encode(&a)).unwrap();
        merge_encoded(&mut merged, &encode(&b)).unwrap();
        merge_encoded(&mut merged, &[]).unwrap();
        assert_eq!(merged.len(), 1001);
        assert!(merged.value_at_quantile(0.5).abs_diff(5010) <= 10);
        assert!(merged.value_at_quantile(0.95) > 1_000_000);
        assert!(merged.equivalent(merged.max(), MAX_LATENCY_US));
        // Serialization is lossless: a round trip gives the same histogram.
        let mut again = new_latency();
        merge_encoded(&mut again, &encode(&merged)).unwrap();
        assert_eq!(again, merged);
        assert!(merge_encoded(&mut again, b"not a histogram").is_err());
    }

    #[test]
    fn counters_merge_by_adding_every_field() {
        let mut a = Counters {
            requested: 2,
            established: 2,
            slow_established: 1,
            received: 10,
            ..Counters::default()
        };
        a.fail(Failure::Refused);
        let mut b = a.clone();
        b.fail(Failure::of(&libc_reset()));
        a.merge(&b);
        assert_eq!(
            (a.requested, a.established, a.fast_established()),
            (4, 4, 2)
        );
        assert_eq!(a.received, 20);
        assert_eq!(a.errors["refused"], 2);
        assert_eq!(a.errors["reset"], 1);
    }

    fn libc_reset() -> io::Error {
        io::Error::from_raw_os_error(libc::ECONNRESET)
    }
}
