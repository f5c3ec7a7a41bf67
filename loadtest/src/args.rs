//! The command line (names fixed by the contract), and what follows from it: how many worker
//! processes, which source addresses.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::Parser;

use crate::meter::REORDER_WINDOW;
use crate::tls::Trust;
use crate::url::Scheme;
use crate::wire::Mode;

/// Descriptors a worker keeps for itself (poll, pipes, stdio, slack) below its limit.
pub const FD_RESERVE: u64 = 200;
/// Streams per source address per destination before another source address is used. Far
/// below the ~28k ephemeral ports Linux offers: connect() searches the port range for a free
/// port, and that search costs more the fuller the range is. Measured here: 200k streams at
/// 20k per source (71% of the range) spent 1.25 cores in the kernel and took 125 s for 4k/s,
/// with 2.8k timeouts; at 5k per source (18%), 0.27 cores, the 50 s the ramp asked, none.
pub const STREAMS_PER_SOURCE: u64 = 5_000;

const EXAMPLES: &str = "\
Examples:
  # Hold 10k streams against a local sse-edge, publish 10 msg/s for 20 s, measure the server:
  loadtest --url http://127.0.0.1:8080/stream --connections 10000 \\
           --publish-url http://127.0.0.1:8080/broadcast --rate 10 --duration 20 \\
           --server-pid $(pgrep -x sse-edge) --json run.json --hgrm run.hgrm --svg run.svg

  # CI smoke: 2000 streams over 2 worker processes, 50 messages one at a time:
  loadtest --url http://127.0.0.1:8080/stream --connections 2000 --procs 2 \\
           --publish-url http://127.0.0.1:8080/broadcast --messages 50 --json out.json

  # A server that ignores the body (the original Go demo): pair events with POSTs by order:
  loadtest --url http://127.0.0.1:8080/events --connections 500 \\
           --publish-url http://127.0.0.1:8080/broadcast --messages 100 --publish-mode closed-loop

  # 50k streams: 3 workers and 3 source addresses are chosen automatically:
  loadtest --url http://127.0.0.1:8080/stream --connections 50000 --ramp 5000 --duration 30

  # How many nodes for 200k streams at 5 msg/s, from what this run measured:
  loadtest ... --server-pid 1234 --plan 200000,5

  # Over TLS, trusting the CA that signed the server's certificate (every stream does a
  # full handshake, inside its connect time):
  loadtest --url https://edge.example:8443/stream --connections 10000 \\
           --publish-url https://edge.example:8443/broadcast --rate 10 --cacert ca.pem

  # HTTP/2 with prior knowledge: 10k streams, 10 per connection (1,000 connections);
  # publishing stays HTTP/1.1. Over https://, --streams-per-connection makes it h2 by ALPN:
  loadtest --url h2c://127.0.0.1:8080/stream --connections 10000 --streams-per-connection 10 \\
           --publish-url http://127.0.0.1:8080/broadcast --rate 10 --duration 30

  # Rehearse a deploy: 10k streams at once, each resuming after event 50 (run the node
  # with --tick 0 so that every event that is not the run's own is a replay):
  loadtest --url http://127.0.0.1:8080/stream --connections 10000 --storm --last-event-id 50 \\
           --duration 10 --server-pid $(pgrep -x sse-edge) --json deploy.json

  # Rehearse a failover: streams spread over two cluster nodes, coming back like browsers
  # (retry:, Last-Event-ID, the next URL) when one is killed; publish to the one that stays:
  loadtest --url http://10.0.0.1:8080/stream,http://10.0.0.2:8080/stream --connections 10000 \\
           --reconnect --publish-url http://10.0.0.2:8080/broadcast --rate 10 --duration 60

  # Rehearse a network blip: every stream closed 10 s in, each back with its last id:
  loadtest --url http://127.0.0.1:8080/stream --connections 10000 --reconnect-after 10 \\
           --publish-url http://127.0.0.1:8080/broadcast --rate 10 --duration 30

Exit status: 0 when every stream connected and no fast reader lost a message, 1 otherwise
(unless --allow-loss), 2 for a bad command line, 130 after Ctrl-C (the report is printed).";

/// Opens many SSE streams, publishes stamped messages, and reports latency, loss and the
/// server's cost per stream and per delivery.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, after_long_help = EXAMPLES, after_help = "See --help for examples.")]
pub struct Args {
    /// SSE stream URL, http://, https:// (then give --cacert or --insecure) or h2c:// (HTTP/2
    /// with prior knowledge, see --streams-per-connection), e.g.
    /// http://127.0.0.1:8080/stream?topic=load; or a comma-separated list of them, e.g. one
    /// per node: stream i starts on URL i mod the list's length, and with --reconnect a
    /// stream that ends comes back to the next URL of the list (a client-side failover list,
    /// wrapping around).
    #[arg(long, value_name = "URL[,URL..]")]
    pub url: String,

    /// Streams to open and hold.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,

    /// Where to POST messages, e.g. http://127.0.0.1:8080/broadcast?topic=load. Without it
    /// the streams are only held for --duration.
    #[arg(long, value_name = "URL")]
    pub publish_url: Option<String>,

    /// Publish this many messages per second on a fixed schedule, for --duration; latency is
    /// measured from each message's scheduled time (no coordinated omission).
    #[arg(long, value_name = "MSGS_PER_SEC", conflicts_with = "messages")]
    pub rate: Option<f64>,

    /// Publish M messages one at a time, each after the previous POST was answered.
    #[arg(long, value_name = "M")]
    pub messages: Option<u64>,

    /// Publishing connections (at most 64). With --rate, message k goes out on connection k
    /// mod N at its scheduled time (same schedule, stamps and latency as with one), spreading the
    /// publishes over the processes of a server that shares its port (SO_REUSEPORT). A
    /// message starts only once every message N or more before it was answered, and a
    /// failed POST is sent again under its number, so loss stays exact. More than 1 needs
    /// --rate and stamped mode: --messages and closed-loop pair each event with the one POST
    /// in flight.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=REORDER_WINDOW))]
    pub publishers: u64,

    /// How long to publish at --rate, or to hold the streams without a publisher; with
    /// --messages, an upper bound.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,

    /// How latency is taken: `stamped` (the body carries a sequence number and send time) or
    /// `closed-loop` (for servers that ignore the body: the n-th event answers the n-th POST).
    #[arg(long, value_enum, default_value_t = Mode::Stamped)]
    pub publish_mode: Mode,

    /// An extra header line for every stream request, e.g. `Cookie: sse_edge_token=TOKEN`
    /// for a node with --subscribe-jwt (repeatable).
    #[arg(long = "header", value_name = "LINE", value_parser = header_line)]
    pub headers: Vec<String>,

    /// An extra header line for every publish, e.g. `Authorization: Bearer TOKEN`
    /// (repeatable).
    #[arg(long = "publish-header", value_name = "LINE", value_parser = header_line)]
    pub publish_headers: Vec<String>,

    /// For https:// URLs: trust the CA certificates in this PEM file (one or more); the
    /// server's certificate must chain to one of them and name the URL's host. There are no
    /// system roots: an https:// URL needs this or --insecure.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,

    /// For https:// URLs: accept any server certificate, for any name (the handshake is
    /// still checked and costs the same; the server is not authenticated). Test servers only.
    #[arg(long)]
    pub insecure: bool,

    /// For an https:// --url: a worker's streams share one store of session tickets, so
    /// once the first ones have theirs the rest resume (no certificate, no server
    /// signature), as browsers coming back after a blip do. The summary counts the streams
    /// that resumed. Default: every stream a full handshake.
    #[arg(long)]
    pub tls_resume: bool,

    /// Bytes per published body (padded); the stamp itself is ~40 bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub body_size: usize,

    /// Streams opened per second, over all workers; 0 = as fast as --max-in-flight allows.
    #[arg(long, value_name = "CONNS_PER_SEC", default_value_t = 0.0)]
    pub ramp: f64,

    /// Connections awaiting their stream head at once, per worker.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Seconds a stream may take to connect and get its head before it counts as a timeout.
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    pub connect_timeout: f64,

    /// Seconds to wait after the last publish for deliveries still in flight.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub grace: f64,

    /// Worker processes holding the streams; default: enough to stay under the open-files
    /// limit (about 19.8k connections each here: streams over HTTP/1.1).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub procs: Option<u64>,

    /// Local addresses to connect from, used in turn (e.g. 127.0.0.1,127.0.0.2). Default: the
    /// kernel's choice, or with more than 5k streams to a loopback server, 127.0.0.1..k (one
    /// per 5k: connect() slows down as a source's port range fills).
    #[arg(long, value_name = "ADDR,ADDR,...", value_delimiter = ',')]
    pub source: Vec<IpAddr>,

    /// Share of streams (0..1) that stop reading once connected, to see what the server does
    /// with slow readers; their loss is reported apart and allowed.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_fraction)]
    pub slow_fraction: f64,

    /// Server process(es) to measure from /proc (RSS, CPU of all threads); comma-separated
    /// or repeated for a multi-process server, whose figures are then the sums over all of
    /// them (bytes per stream = summed RSS growth / streams; CPU per delivery = summed CPU /
    /// deliveries). One that exits once publishing has begun (an upgrade hands over to a new
    /// pid) leaves the CPU and final RSS out of the report.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Target for the sizing report: how many nodes like the measured one it takes.
    #[arg(long, value_name = "STREAMS,MSGS_PER_SEC", value_parser = parse_plan)]
    pub plan: Option<(u64, f64)>,

    /// Write the summary as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the latency distribution in HdrHistogram's percentile format (milliseconds).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write a latency-by-percentile plot (SVG, log x axis).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// No live progress line (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// Exit 0 even when streams failed or fast readers lost messages.
    #[arg(long)]
    pub allow_loss: bool,

    /// Come back like a browser's EventSource when a stream ends (EOF, reset, `: shed`, a
    /// failed connect, a non-200 answer): after the last `retry:` the server sent (3 s when
    /// none; no jitter of its own, as Chromium and Firefox add none), with `Last-Event-ID`,
    /// to the next URL of the --url list. Loss and duplicates stay exact per stream across
    /// connections; numbers a `gap` or `reset` notice announced count as lost covered. The
    /// summary adds reconnects and reconnect_ms (from a stream's end to its next head).
    #[arg(long)]
    pub reconnect: bool,

    /// Open every stream at once (no ramp; as many connections in flight as the open-files
    /// limit allows, spread over --procs and --source), then hold or publish as usual; the
    /// summary adds the storm: refused, closed before their head, time until every stream had
    /// its head and its replay, replayed events per stream, and with --server-pid the RSS per
    /// stream once the storm has settled (at the end of --duration). Run the node with
    /// --tick 0: every event of the node's that is not this run's message is a replay.
    #[arg(long, conflicts_with = "ramp")]
    pub storm: bool,

    /// Every stream sends this `Last-Event-ID` on its first request (resuming a storm from a
    /// point in the node's history, as browsers coming back after a deploy do).
    #[arg(long, value_name = "ID", value_parser = last_event_id)]
    pub last_event_id: Option<String>,

    /// SECS after publishing (or holding) began, close every stream at once and bring each
    /// back with its last id, as a network blip does (implies --reconnect).
    #[arg(long, value_name = "SECS")]
    pub reconnect_after: Option<f64>,

    /// HTTP/2: open N streams on each connection (default 1 for h2c:// URLs). With it an
    /// https:// --url speaks HTTP/2 by ALPN (h2; a server that does not agree fails the run);
    /// without it https:// stays HTTP/1.1. --connections still counts streams: each worker
    /// opens ceil(its streams / N) connections. Publishing stays HTTP/1.1 (--publish-url is
    /// http:// or https://).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_STREAMS_PER_CONNECTION))]
    pub streams_per_connection: Option<u64>,
}

/// Most streams one HTTP/2 connection may be asked to carry: far above any server's
/// SETTINGS_MAX_CONCURRENT_STREAMS (sse-edge: 100 by default), which bounds it in practice
/// (streams past it are refused by the server and counted as reset).
pub const MAX_STREAMS_PER_CONNECTION: u64 = 10_000;

/// An id to send as `Last-Event-ID`: one header value, not empty.
fn last_event_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > crate::client::MAX_LAST_EVENT_ID || s.contains(['\r', '\n', '\0'])
    {
        return Err(format!(
            "{s:?} is not an event id (1 to {} bytes, no line breaks)",
            crate::client::MAX_LAST_EVENT_ID
        ));
    }
    Ok(s.to_owned())
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a fraction from 0 to 1, e.g. 0.1".to_owned()),
    }
}

fn parse_plan(s: &str) -> Result<(u64, f64), String> {
    let err = || "expected STREAMS,MSGS_PER_SEC, e.g. 200000,5".to_owned();
    let (streams, rate) = s.split_once(',').ok_or_else(err)?;
    let streams = streams.trim().parse::<u64>().map_err(|_| err())?;
    let rate = rate.trim().parse::<f64>().map_err(|_| err())?;
    if streams == 0 || !(rate >= 0.0 && rate.is_finite()) {
        return Err(err());
    }
    Ok((streams, rate))
}

impl Args {
    /// The `--header` lines as they go on the wire.
    pub fn header_lines(&self) -> String {
        self.headers.iter().map(|h| format!("{h}\r\n")).collect()
    }

    /// The `--publish-header` lines as they go on the wire.
    pub fn publish_header_lines(&self) -> String {
        self.publish_headers
            .iter()
            .map(|h| format!("{h}\r\n"))
            .collect()
    }

    /// Whether streams come back after they end (`--reconnect`, or `--reconnect-after`).
    pub fn reconnects(&self) -> bool {
        self.reconnect || self.reconnect_after.is_some()
    }

    /// The `--url` list.
    pub fn urls(&self) -> Vec<&str> {
        crate::url::split_list(&self.url)
    }

    /// HTTP/2 streams per connection: `--streams-per-connection`, or 1 for `h2c://`;
    /// `None`: the run speaks HTTP/1.1.
    pub fn streams_per_connection(&self) -> Option<u64> {
        let h2c = self
            .urls()
            .iter()
            .any(|url| Scheme::of(url) == Some(Scheme::H2c));
        self.streams_per_connection.or(h2c.then_some(1))
    }

    /// HTTP/2 needs every --url to be h2c:// or https://, a plain --publish-url, and no slow
    /// readers (a slow HTTP/2 stream is a closed window, not bytes left in the kernel).
    fn check_h2(&self) -> Result<(), String> {
        if let Some(url) = self.publish_url.as_deref() {
            if Scheme::of(url) == Some(Scheme::H2c) {
                return Err(
                    "--publish-url: publishing is HTTP/1.1: give an http:// or https:// URL"
                        .to_owned(),
                );
            }
        }
        if self.streams_per_connection().is_none() {
            return Ok(());
        }
        let h2_ok = |url: &&str| matches!(Scheme::of(url), Some(Scheme::H2c | Scheme::Https));
        if !self.urls().iter().all(h2_ok) {
            return Err(
                "HTTP/2 (h2c:// or --streams-per-connection) needs every --url to be h2c:// or \
                 https://"
                    .to_owned(),
            );
        }
        if self.slow_fraction > 0.0 {
            return Err("--slow-fraction is not supported over HTTP/2 yet".to_owned());
        }
        Ok(())
    }

    /// Checks what clap cannot: positive rates and times.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be a positive number"))
            }
        };
        if let Some(rate) = self.rate {
            positive("rate", rate)?;
        }
        positive("duration", self.duration)?;
        positive("connect-timeout", self.connect_timeout)?;
        positive("grace", self.grace)?;
        if self.reconnects() && self.publish_mode == Mode::ClosedLoop {
            return Err(
                "--reconnect needs --publish-mode stamped (closed-loop pairs the n-th event with \
                 the n-th POST, and a replay after a reconnect breaks the pairing)"
                    .to_owned(),
            );
        }
        if let Some(after) = self.reconnect_after {
            positive("reconnect-after", after)?;
            if after >= self.duration {
                return Err("--reconnect-after must come before the end of --duration".to_owned());
            }
        }
        if !(self.ramp >= 0.0 && self.ramp.is_finite()) {
            return Err("--ramp must be 0 or more".to_owned());
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".to_owned());
        }
        if self.publish_url.is_none() && (self.rate.is_some() || self.messages.is_some()) {
            return Err("--rate and --messages need --publish-url".to_owned());
        }
        if self.publishers > 1 && (self.rate.is_none() || self.publish_mode != Mode::Stamped) {
            return Err(
                "--publishers more than 1 needs --rate and --publish-mode stamped (with \
                 --messages or closed-loop each POST waits for the one before)"
                    .to_owned(),
            );
        }
        self.check_h2()?;
        self.check_tls()
    }

    /// What to trust for https:// URLs, from `--cacert` or `--insecure`.
    pub fn trust(&self) -> Option<Trust> {
        match (&self.cacert, self.insecure) {
            (Some(path), _) => Some(Trust::CaFile(path.clone())),
            (None, true) => Some(Trust::Insecure),
            (None, false) => None,
        }
    }

    /// An https:// URL needs `--cacert` or `--insecure` (no system roots are relied on);
    /// either flag without an https:// URL is a mistake worth saying.
    fn check_tls(&self) -> Result<(), String> {
        let https = self
            .urls()
            .into_iter()
            .chain(self.publish_url.as_deref())
            .any(|url| Scheme::of(url) == Some(Scheme::Https));
        let stream_https = self
            .urls()
            .iter()
            .all(|url| Scheme::of(url) == Some(Scheme::Https));
        match (https, self.trust()) {
            (true, None) => Err("an https:// URL needs --cacert FILE or --insecure".to_owned()),
            _ if self.tls_resume && !stream_https => {
                Err("--tls-resume is for an https:// --url".to_owned())
            }
            (false, Some(trust)) => {
                let flag = match trust {
                    Trust::CaFile(_) => "--cacert",
                    Trust::Insecure => "--insecure",
                };
                Err(format!(
                    "{flag} is for https:// URLs, and --url and --publish-url are not https://"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Worker processes: as asked, or enough that none goes past `fd_limit`.
    pub fn procs(&self, fd_limit: u64) -> u64 {
        self.procs.unwrap_or_else(|| {
            let per = fd_limit.saturating_sub(FD_RESERVE).max(1);
            self.sockets().div_ceil(per)
        })
    }

    /// Sockets the streams need: one each over HTTP/1.1, one per `--streams-per-connection`
    /// over HTTP/2 (what descriptors and source ports are spent on).
    pub fn sockets(&self) -> u64 {
        match self.streams_per_connection() {
            Some(n) => self.connections.div_ceil(n),
            None => self.connections,
        }
    }

    /// Source addresses: as asked, or 127.0.0.1..k when a loopback destination would run out
    /// of ephemeral ports from one address.
    pub fn sources(&self, destination: IpAddr) -> Vec<IpAddr> {
        if !self.source.is_empty() {
            return self.source.clone();
        }
        let needed = self.sockets().div_ceil(STREAMS_PER_SOURCE);
        match destination {
            IpAddr::V4(ip) if ip.is_loopback() && needed > 1 => (1..=needed.min(254))
                .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last as u8)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A header line `Name: value`: a token name, no line breaks.
fn header_line(s: &str) -> Result<String, String> {
    let (name, _) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a header line (Name: value)"))?;
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !name_ok || s.contains(['\r', '\n']) {
        return Err(format!("{s:?} is not a header line (Name: value)"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(line: &str) -> Result<Args, clap::Error> {
        Args::try_parse_from(line.split_whitespace())
    }

    #[test]
    fn the_contract_flags_parse() {
        let a = args(
            "loadtest --url http://127.0.0.1:1/stream --connections 2000 \
             --publish-url http://127.0.0.1:1/broadcast --rate 10 --duration 20 --ramp 500 \
             --procs 2 --source 127.0.0.2,127.0.0.3 --slow-fraction 0.1 --server-pid 1,2 \
             --server-pid 3 --publishers 4 --json a.json --hgrm a.hgrm --svg a.svg --no-progress --allow-loss \
             --plan 200000,5",
        )
        .unwrap();
        a.validate().unwrap();
        assert_eq!(a.connections, 2000);
        assert_eq!(a.rate, Some(10.0));
        assert_eq!(a.source.len(), 2);
        assert_eq!(a.server_pid, vec![1, 2, 3]);
        assert_eq!(a.publishers, 4);
        assert_eq!(a.plan, Some((200_000, 5.0)));
        assert_eq!(a.publish_mode, Mode::Stamped);
        assert!(a.no_progress && a.allow_loss);
        Args::command().debug_assert();
    }

    #[test]
    fn bad_values_are_refused() {
        let base = "loadtest --url http://127.0.0.1:1/ --connections 10";
        assert!(args(&format!("{base} --slow-fraction 1.5")).is_err());
        assert!(args(&format!("{base} --plan 10")).is_err());
        assert!(args(&format!(
            "{base} --rate 1 --messages 2 --publish-url http://x/"
        ))
        .is_err());
        assert!(args("loadtest --url http://127.0.0.1:1/ --connections 0").is_err());
        let no_publisher = args(&format!("{base} --messages 2")).unwrap();
        assert!(no_publisher.validate().is_err());
        let closed = args(&format!("{base} --publish-mode closed-loop")).unwrap();
        assert_eq!(closed.publish_mode, Mode::ClosedLoop);
        assert_eq!(closed.publishers, 1);
        let url = "--publish-url http://x/";
        let needs_rate = |extra: &str| args(&format!("{base} {url} {extra}")).unwrap().validate();
        needs_rate("--rate 5 --publishers 64").unwrap();
        needs_rate("--messages 5 --publishers 1").unwrap();
        let e = needs_rate("--messages 5 --publishers 2").unwrap_err();
        assert!(
            e.starts_with("--publishers more than 1 needs --rate"),
            "{e}"
        );
        needs_rate("--rate 5 --publishers 2 --publish-mode closed-loop").unwrap_err();
        assert!(args(&format!("{base} {url} --rate 5 --publishers 65")).is_err());
        assert!(args(&format!("{base} {url} --rate 5 --publishers 0")).is_err());
    }

    #[test]
    fn http2_is_h2c_or_https_with_streams_per_connection() {
        let parse = |line: &str| args(line).unwrap();
        let h2c = parse("loadtest --connections 10 --url h2c://127.0.0.1:1/s");
        h2c.validate().unwrap();
        assert_eq!(h2c.streams_per_connection(), Some(1));
        let h2c = parse(
            "loadtest --connections 10 --url h2c://127.0.0.1:1/s --streams-per-connection 10",
        );
        assert_eq!(h2c.streams_per_connection(), Some(10));
        let tls = parse("loadtest --connections 10 --url https://127.0.0.1:1/s --insecure");
        assert_eq!(tls.streams_per_connection(), None);
        let tls = parse(
            "loadtest --connections 10 --url https://127.0.0.1:1/s,h2c://127.0.0.1:2/s \
             --insecure --streams-per-connection 100",
        );
        tls.validate().unwrap();
        assert_eq!(tls.streams_per_connection(), Some(100));
        let plain = parse("loadtest --connections 10 --url http://127.0.0.1:1/s");
        assert_eq!(plain.streams_per_connection(), None);
        // Plain http:// cannot carry HTTP/2 here, not even beside an h2c:// URL.
        let mixed =
            parse("loadtest --connections 10 --url h2c://127.0.0.1:1/s,http://127.0.0.1:2/s");
        assert!(mixed.validate().unwrap_err().contains("h2c:// or https://"));
        assert!(
            args("loadtest --connections 10 --url h2c://x/ --streams-per-connection 0").is_err()
        );
    }

    #[test]
    fn https_urls_need_exactly_one_trust_flag() {
        let stream = "loadtest --connections 10 --url https://127.0.0.1:1/";
        let plain = "loadtest --connections 10 --url http://127.0.0.1:1/";
        let ok = |line: &str| args(line).unwrap().validate();

        let e = ok(stream).unwrap_err();
        assert_eq!(e, "an https:// URL needs --cacert FILE or --insecure");
        // A TLS publish URL alone needs it too.
        let e = ok(&format!("{plain} --publish-url https://127.0.0.1:1/b")).unwrap_err();
        assert_eq!(e, "an https:// URL needs --cacert FILE or --insecure");

        let a = args(&format!("{stream} --cacert ca.pem")).unwrap();
        a.validate().unwrap();
        assert_eq!(a.trust(), Some(Trust::CaFile("ca.pem".into())));
        let a = args(&format!("{stream} --insecure")).unwrap();
        a.validate().unwrap();
        assert_eq!(a.trust(), Some(Trust::Insecure));
        ok(&format!(
            "{plain} --publish-url https://127.0.0.1:1/b --insecure"
        ))
        .unwrap();

        // Both at once: clap refuses.
        assert!(args(&format!("{stream} --insecure --cacert ca.pem")).is_err());
        // Neither with http:// is the plain case; either flag there is refused.
        ok(plain).unwrap();
        assert_eq!(args(plain).unwrap().trust(), None);
        let e = ok(&format!("{plain} --insecure")).unwrap_err();
        assert!(e.starts_with("--insecure is for https:// URLs"), "{e}");
        let e = ok(&format!(
            "{plain} --publish-url http://127.0.0.1:1/b --cacert ca.pem"
        ))
        .unwrap_err();
        assert!(e.starts_with("--cacert is for https:// URLs"), "{e}");
    }

    #[test]
    fn procs_and_sources_follow_the_limits() {
        let a = args("loadtest --url http://127.0.0.1:1/ --connections 50000").unwrap();
        assert_eq!(a.procs(20_000), 3);
        assert_eq!(a.procs(1024), 61);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.sources(ip).len(), 10);
        assert_eq!(a.sources(ip)[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(a.sources("10.0.0.1".parse().unwrap()).is_empty());
        let small =
            args("loadtest --url http://127.0.0.1:1/ --connections 2000 --procs 2").unwrap();
        assert_eq!(small.procs(20_000), 2);
        assert!(small.sources(ip).is_empty());
        // Over HTTP/2 descriptors and ports go by connections, not streams.
        let h2 = args(
            "loadtest --url h2c://127.0.0.1:1/ --connections 50000 --streams-per-connection 10",
        )
        .unwrap();
        assert_eq!((h2.sockets(), h2.procs(20_000)), (5000, 1));
        assert!(h2.sources(ip).is_empty());
        let h2 = args("loadtest --url h2c://127.0.0.1:1/ --connections 50000").unwrap();
        assert_eq!((h2.procs(20_000), h2.sources(ip).len()), (3, 10));
    }

    #[test]
    fn header_lines_are_checked_and_go_on_the_wire() {
        let base = "loadtest --url http://127.0.0.1:1/ --connections 10";
        let a = args(&format!(
            "{base} --header Cookie:sse_edge_token=abc --publish-header Authorization:Bearer"
        ))
        .unwrap();
        assert_eq!(a.header_lines(), "Cookie:sse_edge_token=abc\r\n");
        assert_eq!(a.publish_header_lines(), "Authorization:Bearer\r\n");
        assert!(header_line("No colon").is_err());
        assert!(header_line(": empty name").is_err());
        assert!(header_line("Bad Name: x").is_err());
        assert!(header_line("X: a\r\nInjected: b").is_err());
        assert_eq!(header_line("Cookie: a=b; c=d").unwrap(), "Cookie: a=b; c=d");
    }

    #[test]
    fn storm_and_reconnect_flags_parse_and_are_checked() {
        let base = "loadtest --url http://127.0.0.1:1/s,http://127.0.0.2:1/s --connections 10";
        let a = args(&format!(
            "{base} --storm --last-event-id 41 --reconnect --reconnect-after 2"
        ))
        .unwrap();
        a.validate().unwrap();
        assert!(a.storm && a.reconnect && a.reconnects());
        assert_eq!(a.last_event_id.as_deref(), Some("41"));
        assert_eq!(a.urls(), ["http://127.0.0.1:1/s", "http://127.0.0.2:1/s"]);
        // --reconnect-after alone reconnects, and must fall inside the run.
        assert!(args(&format!("{base} --reconnect-after 1"))
            .unwrap()
            .reconnects());
        let late = args(&format!("{base} --reconnect-after 30")).unwrap();
        assert!(late.validate().unwrap_err().contains("--reconnect-after"));
        assert!(!args(base).unwrap().reconnects());
        // A storm has no ramp.
        assert!(args(&format!("{base} --storm --ramp 10")).is_err());
        assert!(last_event_id("a\r\nX: y").is_err());
        assert!(last_event_id("").is_err());
    }
}
