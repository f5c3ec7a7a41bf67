//! A TLS reconnect storm (issue 25, item 3): every client whose ClientHello reached the node
//! gets its handshake and its stream, however long it waited for its turn; handshakes that
//! began go before new ones; silent and dribbling clients are still closed by
//! `--header-timeout`.
//!
//! Deterministic by construction, not by the machine's speed: the node accepts every
//! connection, is stopped (`SIGSTOP`), every client writes its ClientHello, and the node stays
//! stopped for longer than `--header-timeout` before `SIGCONT`. Every ClientHello has then
//! waited longer than the timeout, through no fault of its client; and with a budget of 4
//! handshake steps per turn, most wait many turns more once the node runs.
//!
//! Its own binary: it holds a few thousand sockets, and the open-files limit is per process.

#[path = "util/tls.rs"]
mod tls_util;
mod util;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use tls_util::Cert;
use util::{Server, PATIENCE};

/// Clients in the storm: more than one poll turn's events (1024), far more than the budget.
const STORM: usize = 2_000;
/// Connections that never send a byte.
const SILENT: usize = 20;
/// Connections that send the first byte of a ClientHello, then nothing.
const DRIBBLING: usize = 20;
/// `--header-timeout`, seconds.
const HEADER_TIMEOUT: u64 = 2;
/// How long the whole storm may take on a slow debug build before the test gives up.
const STORM_PATIENCE: Duration = Duration::from_secs(300);

/// How one storm client ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Outcome {
    /// Still going.
    Open,
    /// Its stream head arrived: `HTTP/1.1 200`.
    Served,
    /// Closed by the node before its stream head.
    Closed,
    /// A TLS error, or a head that is not a 200.
    Failed(String),
}

/// One storm client: a rustls connection driven over a non-blocking socket.
struct Client {
    sock: mio::net::TcpStream,
    tls: ClientConnection,
    asked: bool,
    head: Vec<u8>,
    outcome: Outcome,
    /// When (in the order of all clients' steps) the node's first flight arrived.
    answered_at: Option<usize>,
    /// When the stream head arrived.
    served_at: Option<usize>,
}

impl Client {
    /// Handles a readiness event: reads what came, answers the handshake, sends the stream
    /// request once the handshake is done, and looks for the stream head.
    fn drive(&mut self, step: usize) {
        if self.outcome != Outcome::Open {
            return;
        }
        let mut eof = false;
        loop {
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                self.outcome = Outcome::Failed(format!("TLS: {e}"));
                return;
            }
        }
        if let Err(e) = self.tls.process_new_packets() {
            self.outcome = Outcome::Failed(format!("TLS: {e}"));
            return;
        }
        if self.answered_at.is_none() && !self.tls.is_handshaking() {
            self.answered_at = Some(step);
        }
        if !self.tls.is_handshaking() && !self.asked {
            self.asked = true;
            self.tls
                .writer()
                .write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.head.extend_from_slice(&chunk[..n]),
                Err(_) => break, // WouldBlock: nothing more decrypted yet
            }
        }
        if let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
            self.served_at = Some(step);
            self.outcome = if head.starts_with("HTTP/1.1 200 ") {
                Outcome::Served
            } else {
                Outcome::Failed(head)
            };
            return;
        }
        if self.flush().is_err() || eof {
            self.outcome = Outcome::Closed;
        }
    }

    /// Writes what rustls queued, until done or the socket is full (the next writable
    /// event goes on).
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A non-blocking client for an accepted connection, its first flight (the ClientHello)
/// written into the socket before the node reads anything.
fn hello(sock: TcpStream, config: &Arc<ClientConfig>) -> Client {
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(config.clone(), name).unwrap();
    let mut sock = sock;
    while tls.wants_write() {
        tls.write_tls(&mut sock).unwrap();
    }
    sock.set_nonblocking(true).unwrap();
    Client {
        sock: mio::net::TcpStream::from_std(sock),
        tls,
        asked: false,
        head: Vec::new(),
        outcome: Outcome::Open,
        answered_at: None,
        served_at: None,
    }
}

/// Whether the node closed `sock` (EOF or reset), waiting at most `until`.
fn closed_by_node(sock: &mut TcpStream, until: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // an alert, say: read on to the end
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_tls_storm_past_the_header_timeout_is_served_begun_handshakes_first_and_silence_still_cut() {
    let dir = util::tempdir("tls-storm");
    let cert = Cert::new(&dir, "a");
    let mut args = cert.args();
    args.extend(
        [
            "--header-timeout",
            &HEADER_TIMEOUT.to_string(),
            "--tls-handshakes-per-turn",
            "4",
            // Accepted while silent, long before their ClientHellos: past the grace the cap
            // would close them as silent, which is not what this test is about.
            "--max-request-connections",
            "100000",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let config = cert.client();

    // Every connection accepted while the node runs: its old header clock starts now.
    let total = STORM + SILENT + DRIBBLING;
    let mut socks: Vec<TcpStream> = (0..total)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = tls_util::metrics(server.addr, config.clone(), PATIENCE).expect("metrics");
        // The scrape's own connection is counted too.
        if m["sse_edge_connections"] > total as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all accepted: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    server.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut silent: Vec<TcpStream> = socks.drain(..SILENT).collect();
    let mut dribbling: Vec<TcpStream> = socks.drain(..DRIBBLING).collect();
    for sock in &mut dribbling {
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = ClientConnection::new(config.clone(), name).unwrap();
        let mut first = Vec::new();
        tls.write_tls(&mut first).unwrap();
        sock.write_all(&first[..1]).unwrap();
    }
    let mut clients: Vec<Client> = socks.into_iter().map(|s| hello(s, &config)).collect();
    // Not a hope that something happened meanwhile: a stopped node reads nothing, so every
    // ClientHello waits past --header-timeout, which is what this test is about.
    let stall = Duration::from_secs(HEADER_TIMEOUT) + Duration::from_millis(500);
    std::thread::sleep(stall.saturating_sub(stopped.elapsed()));
    server.signal(libc::SIGCONT);

    let mut poll = Poll::new().unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        poll.registry()
            .register(
                &mut client.sock,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
    }
    let mut events = Events::with_capacity(1024);
    let mut open = STORM;
    let mut step = 0;
    let give_up = Instant::now() + STORM_PATIENCE;
    while open > 0 && Instant::now() < give_up {
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        for event in events.iter() {
            let client = &mut clients[event.token().0];
            if client.outcome == Outcome::Open {
                step += 1;
                client.drive(step);
                if client.outcome != Outcome::Open {
                    open -= 1;
                }
            }
        }
    }
    let mut tally: HashMap<Outcome, usize> = HashMap::new();
    for client in &clients {
        *tally.entry(client.outcome.clone()).or_default() += 1;
    }
    let m = tls_util::metrics(server.addr, config.clone(), PATIENCE).expect("metrics");
    assert_eq!(
        tally.get(&Outcome::Served).copied().unwrap_or(0),
        STORM,
        "every client whose ClientHello arrived gets its stream head: {tally:?}; \
         header timeouts {}, handshakes {}",
        m["sse_edge_header_timeouts_total"],
        m["sse_edge_tls_handshakes_total"],
    );
    // Handshakes that began go before new ones: a client is served while the storm goes on,
    // not at its end. In arrival order alone every Finished would wait behind the whole
    // queue of ClientHellos, all queued in the first turn, so none would be served before
    // the last client got its first flight. (Seen: 1994 of 2000 with the order, 0 without;
    // a quarter leaves room for a test client slower than the node.)
    let last_answer = clients.iter().filter_map(|c| c.answered_at).max();
    let early = clients
        .iter()
        .filter(|c| c.served_at.zip(last_answer).is_some_and(|(s, l)| s < l))
        .count();
    assert!(
        early >= STORM / 4,
        "only {early} clients got their stream before the last one got its first flight"
    );

    // The rule's other side: a client that sends nothing, or a byte and then nothing, is
    // still closed by --header-timeout.
    let until = Instant::now() + PATIENCE;
    for (i, sock) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_node(sock, until),
            "silent connection {i} still open"
        );
    }
    for (i, sock) in dribbling.iter_mut().enumerate() {
        assert!(
            closed_by_node(sock, until),
            "dribbling connection {i} still open"
        );
    }
    let m = tls_util::metrics(server.addr, config, PATIENCE).expect("metrics");
    assert_eq!(
        m["sse_edge_header_timeouts_total"],
        (SILENT + DRIBBLING) as f64,
        "only the silent and the dribbling ones timed out"
    );
    assert!(m["sse_edge_tls_handshakes_total"] >= STORM as f64);
    std::fs::remove_dir_all(&dir).ok();
}

/// At `--max-request-connections` the oldest *idle* request connection is closed to make
/// room. A TLS connection whose handshake began (its ServerHello flight sent, its client's
/// Finished on the way) is not idle, though no request byte can be buffered yet: in a storm
/// every connection is in that state for a round trip, and the oldest of them would go.
#[test]
fn a_handshake_in_progress_is_not_evicted_as_an_idle_connection() {
    let dir = util::tempdir("tls-storm-evict");
    let cert = Cert::new(&dir, "a");
    let mut args = cert.args();
    args.extend(["--max-request-connections", "2", "--header-timeout", "3600"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let config = cert.client();

    // The oldest request connection: its ClientHello answered, its Finished not sent yet.
    let mut sock = TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(config.clone(), name).unwrap();
    while tls.wants_write() {
        tls.write_tls(&mut sock).unwrap();
    }
    while tls.is_handshaking() {
        assert!(
            tls.read_tls(&mut sock).unwrap() > 0,
            "closed during the handshake"
        );
        tls.process_new_packets().unwrap();
    }

    // Three silent connections: with the handshake, two over the cap, and two must go (once
    // their grace is over) while the handshake waits for its client.
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // The oldest silent ones made room (the header timeout is far longer than the wait: only
    // the cap can have closed them), not the handshake older than them.
    for s in &mut silent[..2] {
        assert!(closed_by_node(s, Instant::now() + PATIENCE));
    }

    // The handshake in progress goes on to its stream.
    tls.writer()
        .write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut stream = rustls::StreamOwned::new(tls, sock);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "closed before its stream head ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    std::fs::remove_dir_all(&dir).ok();
}
