//! Shared helpers for the integration tests: the real server binary on a random loopback
//! port, a blocking SSE reader, an HTTP/1.1 connection, and a `/metrics` scraper.
//!
//! Every wait has a deadline and polls; nothing sleeps hoping it was long enough.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "soon" on a noisy machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The real `sse-edge` binary, running until dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on 127.0.0.1 with a random port, no demo ticker, and `args`.
    pub fn start(args: &[&str]) -> Server {
        Self::start_limited(args, None)
    }

    /// Starts the server with no flags at all, configured by `SSE_EDGE_*` variables only
    /// (which must include an `SSE_EDGE_LISTEN` on 127.0.0.1).
    pub fn start_env(env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sse-edge"));
        cmd.envs(env.iter().copied());
        Self::spawn(cmd)
    }

    /// Like [`Server::start`], with the server's open-files limit (soft and hard) set to
    /// `nofile` when given.
    pub fn start_limited(args: &[&str], nofile: Option<u64>) -> Server {
        let mut all = vec!["--listen", "127.0.0.1:0", "--tick", "0", "--log", "info"];
        all.extend_from_slice(args);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sse-edge"));
        cmd.args(&all);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Self::spawn(cmd)
    }

    /// Runs `cmd`, reads its stderr until the listening line, and keeps draining it.
    fn spawn(mut cmd: Command) -> Server {
        raise_fd_limit();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A binary the test just copied may still be open for writing in a child another
        // test thread forked meanwhile (until that child's exec): ETXTBSY, briefly.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("start sse-edge"),
            }
        };
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            // Keep draining stderr for the server's whole life so it never blocks on a log line.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on ") {
                    // Ends at a space (text logs) or a quote (JSON logs).
                    let addr = line[at + 13..]
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let _ = tx.send(addr);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the process to exit; returns its status (None on timeout).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A stream on `path` (e.g. `/stream`), head read and checked.
    pub fn stream(&self, path: &str) -> SseClient {
        SseClient::connect(self.addr, path, &[])
    }

    /// One request on a fresh connection.
    pub fn request(&self, raw: &[u8]) -> Response {
        let mut c = HttpConn::open(self.addr);
        c.send(raw);
        c.read_response()
    }

    /// Publishes `body` to `/broadcast{query}`; returns the response.
    pub fn publish(&self, query: &str, body: &[u8]) -> Response {
        let mut c = HttpConn::open(self.addr);
        c.publish(query, body)
    }

    /// The current metrics, each name summed over its label sets.
    pub fn metrics(&self) -> HashMap<String, f64> {
        self.try_metrics().expect("GET /metrics answered 200")
    }

    /// The current metrics, or None when the server answered otherwise (e.g. 503 while it
    /// is out of file descriptors).
    ///
    /// A connection closed before any answer is None too: out of descriptors the node
    /// accepts with its reserve and reads once, and a request not there yet is closed.
    pub fn try_metrics(&self) -> Option<HashMap<String, f64>> {
        let r = send_raw(
            self.addr,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )?;
        (r.status == 200).then(|| parse_metrics(&r.text()))
    }

    /// Polls metrics until `cond` holds; panics with the last values after [`PATIENCE`].
    pub fn wait_metrics(
        &self,
        what: &str,
        cond: impl Fn(&HashMap<String, f64>) -> bool,
    ) -> HashMap<String, f64> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let m = self.try_metrics();
            if let Some(m) = &m {
                if cond(m) {
                    return m.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; metrics: {m:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process an upgrade started: killed when dropped, so a failing test leaves no server
/// behind.
pub struct Successor(pub u32);

impl Successor {
    /// The successor an old process named (`pid=`) on its log line containing `line`.
    pub fn from_log(log: &str, line: &str) -> Successor {
        Successor(Self::pid_in(log, line))
    }

    /// The pid an old process named (`pid=`) on its log line containing `line`.
    pub fn pid_in(log: &str, line: &str) -> u32 {
        log.lines()
            .find(|l| l.contains(line))
            .and_then(|l| l.split("pid=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}:\n{log}"))
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: a pid the test's upgrade started (and nothing else reaps it meanwhile).
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// The values of `name` per shard, in shard order, from `/metrics`.
pub fn per_shard(server: &Server, name: &str) -> Vec<f64> {
    let r = server.request(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut values = Vec::new();
    for line in r.text().lines() {
        if let Some(rest) = line
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix("{shard=\""))
        {
            let (shard, rest) = rest.split_once('"').unwrap();
            let shard: usize = shard.parse().unwrap();
            let value: f64 = rest.rsplit_once(' ').unwrap().1.parse().unwrap();
            if values.len() <= shard {
                values.resize(shard + 1, 0.0);
            }
            values[shard] = value;
        }
    }
    values
}

/// Sums Prometheus samples by metric name (labels dropped).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let name = series.split('{').next().unwrap().to_owned();
        let value: f64 = value.parse().expect("sample value");
        *out.entry(name).or_insert(0.0) += value;
    }
    out
}

/// Raises this test process's open-files soft limit (1000+ sockets per test).
pub fn raise_fd_limit() {
    sse_edge::node::fdlimit::raise_to_hard_limit().expect("raise RLIMIT_NOFILE");
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `id:`
    pub id: Option<String>,
    /// `event:` (None means "message")
    pub event: Option<String>,
    /// The data lines joined by `\n`.
    pub data: String,
}

/// A blocking SSE client over one TCP connection.
pub struct SseClient {
    /// The socket.
    pub sock: TcpStream,
    buf: Vec<u8>,
    /// The response head.
    pub head: String,
    /// Comment lines seen (without the leading `:`).
    pub comments: Vec<String>,
    /// The last `retry:` value seen.
    pub retry: Option<u64>,
}

impl SseClient {
    /// Connects, sends `GET path` with `extra` header lines, reads and checks a 200 head.
    pub fn connect(addr: SocketAddr, path: &str, extra: &[&str]) -> SseClient {
        let c = Self::connect_raw(addr, path, extra);
        assert!(
            c.head.starts_with("HTTP/1.1 200 "),
            "stream head: {}",
            c.head
        );
        c
    }

    /// Like [`SseClient::connect`] but accepts any status.
    pub fn connect_raw(addr: SocketAddr, path: &str, extra: &[&str]) -> SseClient {
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).unwrap();
        SseClient::from_stream(sock)
    }

    /// Takes over a stream whose request was sent and nothing read yet.
    pub fn from_stream(sock: TcpStream) -> SseClient {
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut c = SseClient {
            sock,
            buf: Vec::new(),
            head: String::new(),
            comments: Vec::new(),
            retry: None,
        };
        c.read_head();
        c
    }

    fn read_head(&mut self) {
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            assert!(
                self.fill() > 0,
                "connection closed before the response head"
            );
        };
        self.head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return n;
                }
                // A signal to the test process (a child exiting) is not the stream ending.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    panic!("no data within {PATIENCE:?}")
                }
                Err(_) => return 0,
            }
        }
    }

    /// The next event with data; comments and `retry:` are recorded on the way.
    /// Panics if the stream ends first.
    pub fn next_event(&mut self) -> Event {
        self.try_next_event()
            .expect("stream ended before the next event")
    }

    /// The next event, or None if the server closed the stream first.
    pub fn try_next_event(&mut self) -> Option<Event> {
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = self.parse_block(&block[..end]) {
                    return Some(event);
                }
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// Reads until a comment line equal to `text` has been seen (panics if the stream ends).
    pub fn wait_for_comment(&mut self, text: &str) {
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                self.parse_block(&block[..end]);
            }
            if self.comments.iter().any(|c| c == text) {
                return;
            }
            assert!(self.fill() > 0, "stream ended before the comment {text:?}");
        }
    }

    /// Reads until the server closes; returns every event seen.
    pub fn read_to_end(&mut self) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(e) = self.try_next_event() {
            all.push(e);
        }
        all
    }

    fn parse_block(&mut self, block: &[u8]) -> Option<Event> {
        let text = std::str::from_utf8(block).expect("utf-8 stream");
        let (mut id, mut event, mut data): (Option<String>, Option<String>, Option<String>) =
            (None, None, None);
        for line in text.split('\n') {
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "retry" => self.retry = value.parse().ok(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                other => panic!("unexpected field {other:?} in {text:?}"),
            }
        }
        data.map(|data| Event { id, event, data })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A persistent HTTP/1.1 connection (requests written raw, responses read one by one).
pub struct HttpConn {
    /// The socket.
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connects.
    pub fn open(addr: SocketAddr) -> HttpConn {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        HttpConn {
            sock,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, raw: &[u8]) {
        self.sock.write_all(raw).unwrap();
    }

    /// Publishes and reads the response.
    pub fn publish(&mut self, query: &str, body: &[u8]) -> Response {
        let head = format!(
            "POST /broadcast{query} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.send(&[head.as_bytes(), body].concat());
        self.read_response()
    }

    /// Reads one response with a `Content-Length` body.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .expect("connection closed before a response")
    }

    /// Reads one response, or None if the connection closed first.
    pub fn try_read_response(&mut self) -> Option<Response> {
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        self.buf.drain(..end + 4);
        while self.buf.len() < len {
            assert!(self.fill(), "connection closed inside a body");
        }
        let body = self.buf.drain(..len).collect();
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// Whether the server has closed the connection (reads until EOF or error).
    pub fn closed_by_server(&mut self) -> bool {
        while self.fill() {}
        true
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    panic!("no response within {PATIENCE:?}")
                }
                Err(_) => return false,
            }
        }
    }
}

/// The `n` of an `Auto heartbeat #n` event.
pub fn heartbeat_number(e: &Event) -> u64 {
    e.data
        .strip_prefix("Auto heartbeat #")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a heartbeat: {e:?}"))
}

/// The id of a publish response.
pub fn published_id(r: &Response) -> u64 {
    assert_eq!(r.status, 200, "publish failed: {}", r.text());
    let text = r.text();
    let at = text.find("\"id\":\"").expect("id field") + 6;
    text[at..].split('"').next().unwrap().parse().unwrap()
}

// ----- helpers for the hardening tests (resource bounds, admission, panics) ----------------

impl Server {
    /// Like [`Server::start`], with extra environment variables for the server process (for
    /// example the debug build's fault injection, `SSE_EDGE_TEST_PANIC_TOPIC`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["--listen", "127.0.0.1:0", "--tick", "0", "--log", "info"];
        all.extend_from_slice(args);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sse-edge"));
        cmd.args(&all);
        cmd.envs(env.iter().copied());
        Self::spawn(cmd)
    }

    /// Like [`Server::start`], from the binary at `exe` (a copy the test may replace).
    pub fn start_exe(exe: &std::path::Path, args: &[&str]) -> Server {
        Self::start_exe_env(exe, args, &[])
    }

    /// Like [`Server::start_exe`], with extra environment variables.
    pub fn start_exe_env(exe: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut all = vec!["--listen", "127.0.0.1:0", "--tick", "0", "--log", "info"];
        all.extend_from_slice(args);
        let mut cmd = Command::new(exe);
        cmd.args(&all);
        cmd.envs(env.iter().copied());
        Self::spawn(cmd)
    }

    /// The server's resident set size in bytes (`VmRSS` in `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }
}

/// A process's resident set size in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// A blocking TCP connection to `addr` from the local address `source` (port chosen by the
/// kernel), with the receive buffer set to `recv_buffer` bytes before connecting when given.
///
/// `std::net::TcpStream` can neither bind before connecting nor size its buffers early enough
/// (the window is negotiated in the handshake), hence socket2. Any 127.0.0.0/8 address works
/// on Linux loopback, which gives the tests several "client addresses" on one machine.
pub fn connect_from(
    addr: SocketAddr,
    source: std::net::IpAddr,
    recv_buffer: Option<usize>,
) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    if let Some(bytes) = recv_buffer {
        s.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    s.bind(&SocketAddr::new(source, 0).into())
        .expect("bind source");
    s.connect(&addr.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// A well-behaved subscriber kept beside an attack: it must receive every event published to
/// its topic during and after the attack, exactly once and in order.
pub struct Control {
    /// The stream, on topic [`Control::TOPIC`].
    pub client: SseClient,
    addr: SocketAddr,
    sent: Vec<u64>,
    seen: usize,
}

impl Control {
    /// The topic only the control stream subscribes to.
    pub const TOPIC: &'static str = "control";

    /// Opens the control stream (from 127.0.0.1).
    pub fn open(server: &Server) -> Control {
        Self::open_from(server, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// Opens the control stream from the local address `source` (so that it does not count
    /// against a per-address limit under test).
    pub fn open_from(server: &Server, source: std::net::IpAddr) -> Control {
        let mut sock = connect_from(server.addr, source, None);
        let req = format!(
            "GET /stream?topic={} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
            Self::TOPIC
        );
        sock.write_all(req.as_bytes()).unwrap();
        let client = SseClient::from_stream(sock);
        assert!(
            client.head.starts_with("HTTP/1.1 200 "),
            "control stream head: {}",
            client.head
        );
        Control {
            client,
            addr: server.addr,
            sent: Vec::new(),
            seen: 0,
        }
    }

    /// Publishes one control event (on a fresh connection, like a new publisher would).
    pub fn publish(&mut self) -> u64 {
        let n = self.sent.len();
        let mut c = HttpConn::open(self.addr);
        let id = published_id(&c.publish(
            &format!("?topic={}", Self::TOPIC),
            format!("control {n}").as_bytes(),
        ));
        self.sent.push(id);
        id
    }

    /// Reads until every control event published so far has arrived; panics on a missing,
    /// repeated or reordered one (or after [`PATIENCE`] of silence).
    pub fn check(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while self.seen < self.sent.len() {
            let what = "control stream";
            let e = self
                .client
                .next_event_before(deadline, what)
                .unwrap_or_else(|| {
                    panic!(
                        "control stream closed after {} of {} events",
                        self.seen,
                        self.sent.len()
                    )
                });
            let id: Option<u64> = e.id.as_deref().and_then(|i| i.parse().ok());
            assert_eq!(
                (id, e.data.as_str()),
                (
                    Some(self.sent[self.seen]),
                    format!("control {}", self.seen).as_str()
                ),
                "control stream: event {} of {}",
                self.seen,
                self.sent.len()
            );
            self.seen += 1;
        }
    }

    /// Publishes one more control event and checks that everything so far arrived.
    pub fn publish_and_check(&mut self) {
        self.publish();
        self.check();
    }

    /// How many control events were published.
    pub fn published(&self) -> usize {
        self.sent.len()
    }
}

/// A metric's value, 0 when the server does not export it (yet), so a test against an older
/// build fails on its assertion with the metrics shown instead of on a missing key.
pub fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// Sends `raw` on a fresh connection (the server may close before it is all written) and
/// reads one response: None when the connection ended without one.
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Option<Response> {
    let mut c = HttpConn::open(addr);
    let _ = c.sock.write_all(raw);
    c.try_read_response()
}

impl SseClient {
    /// The next event with data, or None if the stream ends first; panics once `deadline`
    /// has passed. Unlike [`SseClient::try_next_event`], keep-alive comments do not extend
    /// the wait: a stream that only ever gets comments fails here instead of hanging.
    pub fn next_event_before(&mut self, deadline: Instant, what: &str) -> Option<Event> {
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = self.parse_block(&block[..end]) {
                    return Some(event);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no event by the deadline (comments: {:?})",
                self.comments
            );
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// The next event with data within [`PATIENCE`]; panics if the stream ends first or
    /// nothing but comments arrives.
    pub fn event_within_patience(&mut self, what: &str) -> Event {
        self.next_event_before(Instant::now() + PATIENCE, what)
            .unwrap_or_else(|| panic!("{what}: the stream ended"))
    }

    /// Reads until the server closes, within [`PATIENCE`] even while comments arrive;
    /// returns every event seen.
    pub fn read_to_end_within_patience(&mut self, what: &str) -> Vec<Event> {
        let deadline = Instant::now() + PATIENCE;
        let mut all = Vec::new();
        while let Some(e) = self.next_event_before(deadline, what) {
            all.push(e);
        }
        all
    }
}

// ----- helpers for the tests of tokens, TLS and upgrades --------------------------------

/// A fresh directory for one test's files (certificates, keys, binaries).
pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-edge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Waits until the log contains `text`; returns the log then.
    pub fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts the server with `args` and asserts it refuses to: exit code 2, and one error line
/// (`sse-edge: ...`, after whatever it logged first) that contains `says`.
pub fn assert_refused_at_start(args: &[String], says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
    // Exactly the one line the contract promises: no log line before it.
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("sse-edge: "), "{args:?}: {stderr}");
}
