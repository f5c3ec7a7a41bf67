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

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    };
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
    use std::net::TcpListener;

    /// A one-connection server that answers each request with the next canned response.
    fn canned(answers: Vec<&'static str>) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for answer in answers {
                let mut buf = Vec::new();
                // Read one request: head, then Content-Length bytes.
                loop {
                    read_more(&mut s, &mut buf).unwrap();
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
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
}
