//! The publisher: POSTs stamped messages on a fixed schedule (`--rate`) or one at a time
//! (`--messages`), over one keep-alive connection, from its own thread.
//!
//! Coordinated omission: with `--rate`, message k is *scheduled* at `start + k / rate` and
//! stamped with that time, not with the time it actually left. If the server stalls and the
//! publisher falls behind, the messages sent late carry their scheduled time, so the stall
//! shows up in every latency it caused instead of being hidden by a publisher that waited.
//!
//! An `https://` publish URL is spoken to through rustls's blocking [`StreamOwned`]; the
//! keep-alive connection (and so its handshake) is reused across POSTs as with plain HTTP.
//!
//! # Several connections (`--publishers N`, with `--rate`)
//!
//! Against several server processes sharing a port, one connection lands on one process,
//! whose publish path may then be the bottleneck. With N connections, message k goes out on
//! connection k mod N at its scheduled time, so the schedule and the stamps stay as they are.
//! Each connection has its own thread and still waits for each answer. Two rules keep the
//! receivers' accounting exact:
//!
//! - message k starts only once every message up to k − N is settled (answered, or given
//!   up), so it can overtake at most N − 1 others on a stream (see [`meter`](crate::meter));
//! - a failed POST is sent again under the same number and stamp until it is answered; if
//!   publishing ends first (the schedule's end, or Ctrl-C) it is given up, no new message
//!   starts, and the numbers never published are reported ([`Outcome::skipped`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::clock::now_us;
use crate::response::{parse_head, Dechunker, HeadParse};
use crate::stamp;
use crate::stats::{new_latency, Failure, Latency};
use crate::url::{Scheme, Url};
use crate::wire::Mode;

/// How long one POST may take before it counts as failed.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// When messages go out.
#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// `per_sec` messages a second on a fixed clock, for `duration_us`.
    Rate {
        /// Messages per second.
        per_sec: f64,
        /// How long to publish.
        duration_us: u64,
    },
    /// `count` messages, each after the previous answer, within `max_us`.
    Messages {
        /// Messages to publish.
        count: u64,
        /// Upper bound on the whole run.
        max_us: u64,
    },
}

/// What the publisher needs.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where to POST.
    pub url: Url,
    /// How receivers measure (stamped bodies are built either way; they are harmless).
    pub mode: Mode,
    /// When to send.
    pub schedule: Schedule,
    /// Body size in bytes (padded).
    pub body_size: usize,
    /// Extra header lines for every POST, each ending in CRLF (`--publish-header`).
    pub headers: String,
    /// The TLS configuration, needed for an `https://` URL.
    pub tls: Option<Arc<ClientConfig>>,
    /// Connections to publish over; more than one only with a `Rate` schedule.
    pub connections: u64,
}

/// Live figures, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Messages published successfully.
    pub published: AtomicU64,
    /// POSTs that failed.
    pub errors: AtomicU64,
}

/// What the publisher did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages published successfully.
    pub published: u64,
    /// Failed POSTs by kind.
    pub errors: BTreeMap<String, u64>,
    /// Time from sending a POST to its answer, µs.
    pub post_latency: Latency,
    /// `clients` from the last answer that had it (sse-edge reports its subscriber count).
    pub server_clients: Option<u64>,
    /// When publishing started and ended (`CLOCK_MONOTONIC` µs).
    pub started_us: u64,
    /// See `started_us`.
    pub ended_us: u64,
    /// Largest delay of a send behind its schedule, µs (the server, or this one connection,
    /// could not keep up with `--rate`).
    pub max_lag_us: u64,
    /// Why the first POST that failed in TLS failed.
    pub tls_error: Option<String>,
    /// Numbers given out but never published, in order (several connections only): message
    /// numbers `0..published + skipped.len()` went out.
    pub skipped: Vec<u64>,
}

/// Runs the schedule until done or `stop`; `before_send(seq, scheduled_us)` runs just before
/// each POST (closed-loop mode tells the workers the time there).
pub fn run(
    job: &Job,
    stop: &AtomicBool,
    live: &Live,
    mut before_send: impl FnMut(u64, u64),
) -> Outcome {
    let started_us = now_us();
    let mut out = Outcome {
        published: 0,
        errors: BTreeMap::new(),
        post_latency: new_latency(),
        server_clients: None,
        started_us,
        ended_us: started_us,
        max_lag_us: 0,
        tls_error: None,
        skipped: Vec::new(),
    };
    if let (Schedule::Rate { .. }, 2..) = (job.schedule, job.connections) {
        return run_lanes(job, stop, live, out);
    }
    let mut conn = match Connection::new(job.url.clone(), job.headers.clone(), job.tls.clone()) {
        Ok(conn) => conn,
        Err(why) => {
            // Checked before the run starts; counted as one failed POST all the same.
            out.errors.insert(Failure::Tls.name().to_owned(), 1);
            out.tls_error = Some(why);
            return out;
        }
    };
    let (end_us, limit) = match job.schedule {
        Schedule::Rate {
            per_sec,
            duration_us,
        } => (
            started_us + duration_us,
            (duration_us as f64 / 1e6 * per_sec).round() as u64,
        ),
        Schedule::Messages { count, max_us } => (started_us + max_us, count),
    };
    // Numbers only advance on success, so a failed POST leaves no gap for receivers to count
    // as loss; the failure is counted here instead.
    let mut seq = 0;
    for k in 0..limit {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let scheduled = match job.schedule {
            Schedule::Rate { per_sec, .. } => {
                let at = started_us + (k as f64 * 1e6 / per_sec) as u64;
                let now = now_us();
                if at > now {
                    std::thread::sleep(Duration::from_micros(at - now));
                }
                at
            }
            Schedule::Messages { .. } => now_us(),
        };
        if scheduled >= end_us {
            break;
        }
        before_send(seq, scheduled);
        let body = stamp::body(seq, scheduled, job.body_size);
        let sent = now_us();
        out.max_lag_us = out.max_lag_us.max(sent.saturating_sub(scheduled));
        match conn.post(&body) {
            Ok(clients) => {
                out.post_latency
                    .saturating_record(now_us().saturating_sub(sent).max(1));
                out.server_clients = clients.or(out.server_clients);
                seq += 1;
                live.published.store(seq, Ordering::Relaxed);
            }
            Err(failed) => {
                if let Some(why) = failed.tls_reason() {
                    out.tls_error.get_or_insert(why);
                }
                *out.errors.entry(failed.kind()).or_default() += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out.published = seq;
    out.ended_us = now_us();
    out
}

/// How long a connection waits before sending a failed POST again.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long a connection waiting for its turn sleeps before it looks at `stop` again.
const TURN_WAIT: Duration = Duration::from_millis(50);

/// Which message numbers are settled (answered, or given up), so that message k starts only
/// once every message up to k − lanes is; and whether publishing has ended.
#[derive(Debug, Default)]
struct Ledger {
    /// Every number below this is settled.
    settled_below: u64,
    /// Settled numbers above `settled_below`.
    settled_above: BTreeSet<u64>,
    /// A message was given up: no new message starts.
    ended: bool,
}

impl Ledger {
    /// Whether message `seq` may start on one of `lanes` connections.
    fn may_start(&self, seq: u64, lanes: u64) -> bool {
        seq < self.settled_below + lanes
    }

    /// Message `seq` was answered or given up.
    fn settle(&mut self, seq: u64) {
        self.settled_above.insert(seq);
        while self.settled_above.remove(&self.settled_below) {
            self.settled_below += 1;
        }
    }
}

/// What the connections share.
struct Lanes<'a> {
    job: &'a Job,
    stop: &'a AtomicBool,
    live: &'a Live,
    started_us: u64,
    end_us: u64,
    per_sec: f64,
    limit: u64,
    ledger: Mutex<Ledger>,
    changed: Condvar,
}

/// Runs a `Rate` schedule over `job.connections` connections, one thread each; `out` is
/// the outcome so far (nothing sent yet).
fn run_lanes(job: &Job, stop: &AtomicBool, live: &Live, mut out: Outcome) -> Outcome {
    let Schedule::Rate {
        per_sec,
        duration_us,
    } = job.schedule
    else {
        unreachable!("several connections only publish at a rate");
    };
    let mut conns = Vec::new();
    for _ in 0..job.connections {
        match Connection::new(job.url.clone(), job.headers.clone(), job.tls.clone()) {
            Ok(conn) => conns.push(conn),
            Err(why) => {
                out.errors.insert(Failure::Tls.name().to_owned(), 1);
                out.tls_error = Some(why);
                return out;
            }
        }
    }
    let lanes = Lanes {
        job,
        stop,
        live,
        started_us: out.started_us,
        end_us: out.started_us + duration_us,
        per_sec,
        limit: (duration_us as f64 / 1e6 * per_sec).round() as u64,
        ledger: Mutex::new(Ledger::default()),
        changed: Condvar::new(),
    };
    let lane_outcomes: Vec<(Outcome, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(lane, conn)| {
                let lanes = &lanes;
                let blank = out.clone();
                scope.spawn(move || lanes.run(lane as u64, conn, blank))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a publishing thread panicked"))
            .collect()
    });
    let mut published = Vec::new();
    for (lane, seqs) in lane_outcomes {
        for (kind, n) in lane.errors {
            *out.errors.entry(kind).or_default() += n;
        }
        let _ = out.post_latency.add(&lane.post_latency);
        out.server_clients = out.server_clients.or(lane.server_clients);
        out.max_lag_us = out.max_lag_us.max(lane.max_lag_us);
        out.tls_error = out.tls_error.or(lane.tls_error);
        published.extend(seqs);
    }
    published.sort_unstable();
    out.published = published.len() as u64;
    out.skipped = skipped(&published);
    out.ended_us = now_us();
    out
}

/// The numbers below the highest published that were not published (`published` sorted).
fn skipped(published: &[u64]) -> Vec<u64> {
    let end = published.last().map_or(0, |&last| last + 1);
    let mut published = published.iter().peekable();
    (0..end)
        .filter(|seq| {
            if published.peek() == Some(&seq) {
                published.next();
                false
            } else {
                true
            }
        })
        .collect()
}

impl Lanes<'_> {
    /// Connection `lane`'s share of the schedule: messages `lane`, `lane + N`, …; returns
    /// its outcome (from `out`, with nothing counted yet) and the numbers it published.
    fn run(&self, lane: u64, mut conn: Connection, mut out: Outcome) -> (Outcome, Vec<u64>) {
        let lanes = self.job.connections;
        let mut published = Vec::new();
        for k in (lane..self.limit).step_by(lanes as usize) {
            let scheduled = self.started_us + (k as f64 * 1e6 / self.per_sec) as u64;
            if scheduled >= self.end_us || !self.wait_turn(k) {
                break;
            }
            let now = now_us();
            if scheduled > now {
                std::thread::sleep(Duration::from_micros(scheduled - now));
            }
            let body = stamp::body(k, scheduled, self.job.body_size);
            let sent = now_us();
            out.max_lag_us = out.max_lag_us.max(sent.saturating_sub(scheduled));
            loop {
                let attempt = now_us();
                match conn.post(&body) {
                    Ok(clients) => {
                        out.post_latency
                            .saturating_record(now_us().saturating_sub(attempt).max(1));
                        out.server_clients = clients.or(out.server_clients);
                        published.push(k);
                        self.live.published.fetch_add(1, Ordering::Relaxed);
                        self.settle(k, false);
                        break;
                    }
                    Err(failed) => {
                        if let Some(why) = failed.tls_reason() {
                            out.tls_error.get_or_insert(why);
                        }
                        *out.errors.entry(failed.kind()).or_default() += 1;
                        self.live.errors.fetch_add(1, Ordering::Relaxed);
                        if self.stop.load(Ordering::Relaxed) || now_us() >= self.end_us {
                            // Given up: no new message starts, so its number stays among
                            // the last few given out.
                            self.settle(k, true);
                            break;
                        }
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
            }
        }
        (out, published)
    }

    /// Waits until message `seq` may start; false when publishing ended or was stopped.
    fn wait_turn(&self, seq: u64) -> bool {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        loop {
            if ledger.ended || self.stop.load(Ordering::Relaxed) {
                return false;
            }
            if ledger.may_start(seq, self.job.connections) {
                return true;
            }
            ledger = self
                .changed
                .wait_timeout(ledger, TURN_WAIT)
                .expect("ledger lock")
                .0;
        }
    }

    /// Message `seq` was answered, or (`given_up`) never will be.
    fn settle(&self, seq: u64, given_up: bool) {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        ledger.settle(seq);
        ledger.ended |= given_up;
        self.changed.notify_all();
    }
}

/// One keep-alive HTTP/1.1 connection for POSTs, reopened when the server closes it.
struct Connection {
    url: Url,
    headers: String,
    /// For an `https://` URL: the configuration and the name to ask for.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    stream: Option<Transport>,
    buf: Vec<u8>,
}

/// The socket a POST goes over.
enum Transport {
    Plain(TcpStream),
    /// The handshake happens on the first write (boxed: the session is large).
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

impl Connection {
    /// A connection to `url`, not opened yet; `Err` when an `https://` URL has no `tls`.
    fn new(
        url: Url,
        headers: String,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Connection, String> {
        let tls = match (url.scheme, tls) {
            (Scheme::Http, _) => None,
            (Scheme::Https, Some(config)) => Some((config, url.server_name()?)),
            (Scheme::Https, None) => {
                return Err(format!(
                    "{url}: an https:// URL needs --cacert FILE or --insecure"
                ))
            }
            (Scheme::H2c, _) => {
                return Err(format!(
                    "{url}: publishing is HTTP/1.1: give an http:// or https:// --publish-url"
                ))
            }
        };
        Ok(Connection {
            url,
            headers,
            tls,
            stream: None,
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body`; returns the `clients` count of the answer.
    fn post(&mut self, body: &str) -> Result<Option<u64>, Failed> {
        let reused = self.stream.is_some();
        match self.try_post(body) {
            Ok(answer) => Ok(answer),
            // A kept-alive connection the server had closed: send again on a new one.
            Err(Failed::BeforeAnswer(_)) if reused => {
                self.stream = None;
                self.try_post(body).inspect_err(|_| self.stream = None)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Opens the connection: TCP with timeouts, then TLS over it for `https://`.
    fn open(&self) -> io::Result<Transport> {
        let stream = TcpStream::connect_timeout(&self.url.addr, POST_TIMEOUT)?;
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(POST_TIMEOUT))?;
        stream.set_write_timeout(Some(POST_TIMEOUT))?;
        Ok(match &self.tls {
            None => Transport::Plain(stream),
            Some((config, name)) => {
                let session = ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Transport::Tls(Box::new(StreamOwned::new(session, stream)))
            }
        })
    }

    fn try_post(&mut self, body: &str) -> Result<Option<u64>, Failed> {
        if self.stream.is_none() {
            self.stream = Some(self.open().map_err(Failed::BeforeAnswer)?);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nUser-Agent: sse-edge-loadtest\r\n{}\r\n{body}",
            self.url.target,
            self.url.host_header,
            body.len(),
            self.headers,
        );
        stream
            .write_all(request.as_bytes())
            .map_err(Failed::BeforeAnswer)?;
        self.buf.clear();
        let head = loop {
            if let HeadParse::Done(head) = parse_head(&self.buf) {
                break head;
            }
            if let HeadParse::Bad(why) = parse_head(&self.buf) {
                return Err(Failed::Answer(why.to_owned()));
            }
            read_more(stream, &mut self.buf).map_err(|e| {
                if self.buf.is_empty() {
                    Failed::BeforeAnswer(e)
                } else {
                    Failed::Io(e)
                }
            })?;
        };
        let mut answer = Vec::new();
        let mut rest = self.buf.split_off(head.len);
        if head.chunked {
            let mut dechunker = Dechunker::new();
            loop {
                dechunker
                    .feed(&rest, &mut |data| answer.extend_from_slice(data))
                    .map_err(|_| Failed::Answer("bad chunked answer".to_owned()))?;
                if dechunker.done() {
                    break;
                }
                rest.clear();
                read_more(stream, &mut rest).map_err(Failed::Io)?;
            }
        } else {
            let want = head.content_length.unwrap_or(0);
            while rest.len() < want {
                read_more(stream, &mut rest).map_err(Failed::Io)?;
            }
            answer = rest;
        }
        if head.status != 200 {
            return Err(Failed::Answer(format!("status_{}", head.status)));
        }
        Ok(clients_in(&answer))
    }
}

/// How a POST failed.
enum Failed {
    /// Nothing of an answer arrived (safe to resend on a fresh connection).
    BeforeAnswer(io::Error),
    /// The answer broke off.
    Io(io::Error),
    /// The answer was an error or unreadable.
    Answer(String),
}

impl Failed {
    /// The failure's name in `publish_errors`.
    fn kind(&self) -> String {
        match self {
            Failed::BeforeAnswer(e) | Failed::Io(e) => Failure::of(e).name().to_owned(),
            Failed::Answer(why) => why.clone(),
        }
    }

    /// What TLS said, when TLS is why it failed.
    fn tls_reason(&self) -> Option<String> {
        match self {
            Failed::BeforeAnswer(e) | Failed::Io(e) if Failure::of(e) == Failure::Tls => {
                Some(e.to_string())
            }
            _ => None,
        }
    }
}

/// Reads once more into `buf`; the end of the stream is an error here.
fn read_more(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `"clients":N` of an sse-edge publish answer.
fn clients_in(answer: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(answer).ok()?;
    value.get("clients")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Reads one request (head, then `Content-Length` bytes) off `s` into `buf`, and returns
    /// its body; None when the peer has gone.
    fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            read_more(s, buf).ok()?;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        while buf.len() < end + 4 + len {
            read_more(s, buf).ok()?;
        }
        Some(buf.drain(..end + 4 + len).skip(end + 4).collect())
    }

    /// A one-connection server that answers each request with the next canned response.
    fn canned(answers: Vec<&'static str>) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            for answer in answers {
                read_request(&mut s, &mut buf).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        Url::parse(&format!("http://{addr}/broadcast")).unwrap()
    }

    #[test]
    fn posts_read_length_and_chunked_answers_and_errors() {
        let url = canned(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 34\r\n\r\n{\"id\":\"1\",\"topic\":\"t\",\"clients\":7}",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"c\r\n10\r\nlients\":9,\"x\":1}\r\n0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nno\n",
        ]);
        let mut conn = Connection::new(url, String::new(), None).unwrap();
        assert_eq!(conn.post("a").ok().unwrap(), Some(7));
        assert_eq!(conn.post("b").ok().unwrap(), Some(9));
        assert_eq!(conn.post("c").err().unwrap().kind(), "status_400");
    }

    #[test]
    fn a_messages_schedule_publishes_every_message_in_order() {
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let url = canned(vec![answer; 5]);
        let job = Job {
            url,
            mode: Mode::Stamped,
            schedule: Schedule::Messages {
                count: 5,
                max_us: 60_000_000,
            },
            body_size: 0,
            headers: String::new(),
            tls: None,
            connections: 1,
        };
        let mut seen = Vec::new();
        let out = run(&job, &AtomicBool::new(false), &Live::default(), |seq, _| {
            seen.push(seq)
        });
        assert_eq!(out.published, 5);
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert!(out.errors.is_empty());
        assert_eq!(out.post_latency.len(), 5);
    }

    #[test]
    fn a_rate_schedule_stamps_each_message_with_its_scheduled_time() {
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let url = canned(vec![answer; 10]);
        let job = Job {
            url,
            mode: Mode::Stamped,
            schedule: Schedule::Rate {
                per_sec: 200.0,
                duration_us: 50_000,
            },
            body_size: 0,
            headers: String::new(),
            tls: None,
            connections: 1,
        };
        let mut times = Vec::new();
        let out = run(&job, &AtomicBool::new(false), &Live::default(), |_, at| {
            times.push(at)
        });
        assert_eq!(out.published, 10);
        // Exactly 5 ms apart, however late each one actually left.
        let steps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|&d| d.abs_diff(5_000) <= 1), "{steps:?}");
        assert_eq!(times[0], out.started_us);
    }

    /// A server for any number of connections: answers every POST with 200, except a body
    /// numbered `fail_once` the first time (500); records the number of each body answered 200.
    fn recording(fail_once: Option<u64>) -> (Url, Arc<Mutex<Vec<u64>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicBool::new(false));
        let record = got.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let (got, failed) = (record.clone(), failed.clone());
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    while let Some(body) = read_request(&mut s, &mut buf) {
                        let (seq, _) = stamp::parse(std::str::from_utf8(&body).unwrap()).unwrap();
                        let answer =
                            if Some(seq) == fail_once && !failed.swap(true, Ordering::SeqCst) {
                                "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
                            } else {
                                got.lock().unwrap().push(seq);
                                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                            };
                        s.write_all(answer.as_bytes()).unwrap();
                    }
                });
            }
        });
        let url = Url::parse(&format!("http://{addr}/broadcast")).unwrap();
        (url, got)
    }

    fn rate_job(url: Url, connections: u64) -> Job {
        Job {
            url,
            mode: Mode::Stamped,
            schedule: Schedule::Rate {
                per_sec: 500.0,
                duration_us: 100_000,
            },
            body_size: 0,
            headers: String::new(),
            tls: None,
            connections,
        }
    }

    #[test]
    fn four_connections_send_every_number_once_and_a_failed_one_again() {
        let (url, got) = recording(Some(7));
        let live = Live::default();
        let out = run(&rate_job(url, 4), &AtomicBool::new(false), &live, |_, _| {});
        let mut got = got.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<u64>>());
        assert_eq!(out.published, 50);
        assert!(out.skipped.is_empty());
        assert_eq!(out.errors.get("status_500"), Some(&1));
        assert_eq!(out.post_latency.len(), 50);
        assert_eq!(live.published.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn a_stopped_run_reports_the_numbers_it_never_published() {
        let (url, _) = recording(None);
        // Stopped before it starts: nothing given out, nothing skipped.
        let out = run(
            &rate_job(url, 4),
            &AtomicBool::new(true),
            &Live::default(),
            |_, _| {},
        );
        assert_eq!((out.published, out.skipped.len()), (0, 0));
        assert_eq!(skipped(&[0, 1, 3, 4, 7]), vec![2, 5, 6]);
        assert!(skipped(&[]).is_empty());
    }

    #[test]
    fn a_message_waits_for_every_one_a_round_before_it() {
        let mut ledger = Ledger::default();
        assert!(ledger.may_start(3, 4) && !ledger.may_start(4, 4));
        ledger.settle(1);
        ledger.settle(2);
        assert!(!ledger.may_start(4, 4));
        ledger.settle(0);
        assert_eq!(ledger.settled_below, 3);
        assert!(ledger.may_start(6, 4) && !ledger.may_start(7, 4));
    }
}
