//! An h2c SSE server for the loadtest's HTTP/2 tests, built on sse-edge's own server state
//! machine (`sse_edge::wire::h2::conn::Connection`) over real loopback sockets: streams over
//! HTTP/2 with prior knowledge, publishes over HTTP/1.1 (`POST /broadcast`), each body sent
//! to every stream as one event. It counts connections and streams, so a test can check how
//! the loadtest spread its streams. [`Options`]: answer only so many streams per connection
//! and send a GOAWAY naming the last one, as a draining server does; end every stream (END_STREAM,
//! the connection kept) after so many events, replaying after `last-event-id` when it comes
//! back; serve over TLS with ALPN `h2`.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::{ServerConfig, ServerConnection};
use sse_edge::wire::h2::conn::{Connection, Event, Limits};
use sse_edge::wire::h2::{frame, hpack, ErrorCode};

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Of them, HTTP/2 ones.
    pub h2_connections: AtomicU64,
    /// HTTP/2 streams answered with 200.
    pub streams: AtomicU64,
    /// Most streams open at once on one connection.
    pub max_streams_per_connection: AtomicU64,
    /// Requests beyond `goaway_after`, left unanswered.
    pub refused: AtomicU64,
    /// Publishes served.
    pub publishes: AtomicU64,
}

/// How the server behaves.
#[derive(Clone, Default)]
pub struct Options {
    /// Answer this many streams per connection, then GOAWAY naming the last.
    pub goaway_after: Option<u32>,
    /// End every stream after it has had this many events (of the run's publishes).
    pub end_after_events: Option<u64>,
    /// Serve TLS with this configuration (its ALPN should offer `h2`).
    pub tls: Option<Arc<ServerConfig>>,
}

/// The server, stopped on drop.
pub struct H2Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl H2Server {
    /// Starts it on a kernel-chosen loopback port.
    pub fn start(goaway_after: Option<u32>) -> H2Server {
        Self::start_with(Options {
            goaway_after,
            ..Options::default()
        })
    }

    /// Starts it with `options`.
    pub fn start_with(options: Options) -> H2Server {
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut server = Server {
                    poll: Poll::new().unwrap(),
                    conns: HashMap::new(),
                    next: 1,
                    next_id: 1,
                    limits: Limits {
                        max_streams: 1000,
                        ..Limits::default()
                    },
                    options,
                    history: Vec::new(),
                    seen,
                };
                server
                    .poll
                    .registry()
                    .register(&mut listener, Token(0), Interest::READABLE)
                    .unwrap();
                server.run(&mut listener, &stop);
            })
        };
        H2Server {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://` URL of a path (TLS servers).
    pub fn https(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// `h2c://` URL of a path.
    pub fn h2c(&self, path: &str) -> String {
        format!("h2c://{}{path}", self.addr)
    }

    /// `http://` URL of a path (publishing).
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A count.
    pub fn count(&self, which: impl Fn(&Seen) -> &AtomicU64) -> u64 {
        which(&self.seen).load(Ordering::SeqCst)
    }
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Kind {
    /// Not enough bytes yet to tell.
    Unknown,
    H2 {
        conn: Box<Connection>,
        /// Streams answered, with the events each has had.
        streams: Vec<(u32, u64)>,
        /// Requests seen on it.
        requests: u32,
        /// A GOAWAY was sent naming this last stream.
        last: Option<u32>,
    },
    H1,
}

struct Client {
    stream: TcpStream,
    tls: Option<Box<ServerConnection>>,
    kind: Kind,
    input: Vec<u8>,
    out: Vec<u8>,
    closed: bool,
}

struct Server {
    poll: Poll,
    conns: HashMap<usize, Client>,
    next: usize,
    next_id: u64,
    limits: Limits,
    options: Options,
    /// Every event published: (id, frame).
    history: Vec<(u64, Bytes)>,
    seen: Arc<Seen>,
}

impl Server {
    fn run(&mut self, listener: &mut TcpListener, stop: &AtomicBool) {
        let mut events = Events::with_capacity(1024);
        while !stop.load(Ordering::SeqCst) {
            // The timeout only bounds how late the stop flag is seen.
            if self
                .poll
                .poll(&mut events, Some(Duration::from_millis(50)))
                .is_err()
            {
                continue;
            }
            let mut touched = Vec::new();
            for event in events.iter() {
                if event.token() == Token(0) {
                    while let Ok((mut stream, _)) = listener.accept() {
                        let key = self.next;
                        self.next += 1;
                        self.poll
                            .registry()
                            .register(
                                &mut stream,
                                Token(key),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .unwrap();
                        self.seen.connections.fetch_add(1, Ordering::SeqCst);
                        let tls = self.options.tls.as_ref().map(|config| {
                            let mut tls = ServerConnection::new(config.clone()).unwrap();
                            // A test server: whatever it writes is buffered whole.
                            tls.set_buffer_limit(None);
                            Box::new(tls)
                        });
                        self.conns.insert(
                            key,
                            Client {
                                stream,
                                tls,
                                kind: Kind::Unknown,
                                input: Vec::new(),
                                out: Vec::new(),
                                closed: false,
                            },
                        );
                    }
                } else {
                    touched.push(event.token().0);
                }
            }
            for key in touched {
                self.read(key);
            }
            let keys: Vec<usize> = self.conns.keys().copied().collect();
            for key in keys {
                self.flush(key);
            }
        }
    }

    fn read(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut buf = [0u8; 65536];
        if let Some(tls) = c.tls.as_deref_mut() {
            loop {
                match tls.read_tls(&mut c.stream) {
                    Ok(0) => {
                        c.closed = true;
                        break;
                    }
                    Ok(_) => {
                        if tls.process_new_packets().is_err() {
                            c.closed = true;
                            break;
                        }
                        // Drained after every record batch: rustls stops reading while its
                        // plaintext buffer is full.
                        while let Ok(n @ 1..) = tls.reader().read(&mut buf) {
                            c.input.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.closed = true;
                        break;
                    }
                }
            }
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => c.input.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        } else {
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.closed = true;
                        break;
                    }
                    Ok(n) => c.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.closed = true;
                        break;
                    }
                }
            }
        }
        if c.input.is_empty() {
            return;
        }
        if let Kind::Unknown = c.kind {
            if c.input.len() < frame::PREFACE.len() && Connection::is_preface_start(&c.input) {
                return;
            }
            c.kind = if Connection::is_preface_start(&c.input) {
                self.seen.h2_connections.fetch_add(1, Ordering::SeqCst);
                Kind::H2 {
                    conn: Box::new(Connection::new(&self.limits)),
                    streams: Vec::new(),
                    requests: 0,
                    last: None,
                }
            } else {
                Kind::H1
            };
        }
        match c.kind {
            Kind::H2 { .. } => self.read_h2(key),
            Kind::H1 => while self.read_h1(key) {},
            Kind::Unknown => {}
        }
    }

    fn read_h2(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let Kind::H2 {
            conn,
            streams,
            requests,
            last,
        } = &mut c.kind
        else {
            return;
        };
        let input = std::mem::take(&mut c.input);
        let mut events = Vec::new();
        if let Err(e) = conn.recv(&input, 0, &self.limits, &mut events) {
            eprintln!("h2_server: connection error {e:?}");
            c.closed = true;
        }
        for event in events {
            match event {
                Event::Request { stream, head, .. } => {
                    *requests += 1;
                    if last.is_some() {
                        self.seen.refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    if self.options.goaway_after == Some(*requests) {
                        if let Some(control) = conn.take_output() {
                            c.out.extend_from_slice(&control);
                        }
                        frame::write_goaway(stream, ErrorCode::NoError, &mut c.out);
                        *last = Some(stream);
                    }
                    let mut block = Vec::new();
                    hpack::encode_status(200, &mut block);
                    hpack::encode_field(
                        b"content-type",
                        b"text/event-stream",
                        false,
                        false,
                        &mut block,
                    );
                    conn.send_head(stream, &block, false).unwrap();
                    // Its HEADERS (and any control frame before them) ahead of its DATA.
                    if let Some(control) = conn.take_output() {
                        c.out.extend_from_slice(&control);
                    }
                    let hello = Bytes::from_static(b": connected\n\nretry: 300\n\n");
                    for (header, chunk) in conn.send_data(stream, hello, false).unwrap() {
                        c.out.extend_from_slice(&header);
                        c.out.extend_from_slice(&chunk);
                    }
                    // A stream that comes back gets what it missed.
                    let after = head
                        .field(b"last-event-id")
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
                    if let Some(after) = after {
                        for (_, frame) in self.history.iter().filter(|(id, _)| *id > after) {
                            for (header, chunk) in
                                conn.send_data(stream, frame.clone(), false).unwrap()
                            {
                                c.out.extend_from_slice(&header);
                                c.out.extend_from_slice(&chunk);
                            }
                        }
                    }
                    streams.push((stream, 0));
                    self.seen.streams.fetch_add(1, Ordering::SeqCst);
                    self.seen
                        .max_streams_per_connection
                        .fetch_max(streams.len() as u64, Ordering::SeqCst);
                }
                Event::Reset { stream, .. } => streams.retain(|&(s, _)| s != stream),
                _ => {}
            }
        }
        if let Some(control) = conn.take_output() {
            c.out.extend_from_slice(&control);
        }
    }

    /// Serves one whole publish in the input; false when there is none.
    fn read_h1(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get_mut(&key) else {
            return false;
        };
        let Some(end) = c.input.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&c.input[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if c.input.len() < end + 4 + len {
            return false;
        }
        let body = String::from_utf8_lossy(&c.input[end + 4..end + 4 + len]).into_owned();
        c.input.drain(..end + 4 + len);
        let id = self.next_id;
        self.next_id += 1;
        let event = Bytes::from(format!("id: {id}\ndata: {body}\n\n"));
        self.history.push((id, event.clone()));
        let end_after = self.options.end_after_events;
        let mut clients = 0u64;
        for other in self.conns.values_mut() {
            if let Kind::H2 { conn, streams, .. } = &mut other.kind {
                if let Some(control) = conn.take_output() {
                    other.out.extend_from_slice(&control);
                }
                for (s, had) in streams.iter_mut() {
                    *had += 1;
                    let end = end_after == Some(*had);
                    if let Ok(frames) = conn.send_data(*s, event.clone(), end) {
                        clients += 1;
                        for (header, chunk) in frames {
                            other.out.extend_from_slice(&header);
                            other.out.extend_from_slice(&chunk);
                        }
                    }
                }
                if let Some(n) = end_after {
                    streams.retain(|&(_, had)| had < n);
                }
            }
        }
        self.seen.publishes.fetch_add(1, Ordering::SeqCst);
        let answer = format!("{{\"id\":\"{id}\",\"topic\":\"default\",\"clients\":{clients}}}");
        let c = self.conns.get_mut(&key).unwrap();
        c.out.extend_from_slice(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        );
        true
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if let Kind::H2 { conn, .. } = &mut c.kind {
            if let Some(control) = conn.take_output() {
                c.out.extend_from_slice(&control);
            }
        }
        if let Some(tls) = c.tls.as_deref_mut() {
            if !c.out.is_empty() {
                tls.writer().write_all(&c.out).unwrap();
                c.out.clear();
            }
            while tls.wants_write() {
                match tls.write_tls(&mut c.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.closed = true;
                        break;
                    }
                }
            }
        }
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.closed = true;
                    break;
                }
            }
        }
        if c.closed {
            let mut c = self.conns.remove(&key).unwrap();
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}
