//! A small blocking HTTP/2 client over prior-knowledge h2c, written from the crate's own frame
//! and HPACK helpers: enough to drive the node's HTTP/2 arm frame by frame (flow control held
//! or given, resets, floods). Real third-party clients are tested elsewhere (curl, nghttp,
//! PyPI's h2, Chromium).

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sse_edge::wire::h2::frame::{self, flag, kind, setting, Header, HEADER_LEN, PREFACE};
use sse_edge::wire::h2::hpack::{self, Decoder, HeaderList};

use crate::util::PATIENCE;

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its header.
    pub header: Header,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What one stream received so far.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Its response head: (name, value) in order.
    pub head: Vec<(String, String)>,
    /// Its DATA payloads, joined.
    pub body: Vec<u8>,
    /// Its DATA frames' payload sizes, in order.
    pub frame_sizes: Vec<usize>,
    /// END_STREAM came.
    pub ended: bool,
    /// RST_STREAM came, with this code.
    pub reset: Option<u32>,
}

impl Received {
    /// `:status`.
    pub fn status(&self) -> u16 {
        self.field(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// A field of its head.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.head
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Its body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The last 200 characters of `s`, for a failure's message.
fn tail(s: &str) -> String {
    s.chars()
        .rev()
        .take(200)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// A prior-knowledge h2c client.
pub struct H2Client {
    /// The socket.
    pub sock: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
    /// Per stream, what came.
    pub streams: HashMap<u32, Received>,
    /// GOAWAY's error code, once one came.
    pub goaway: Option<u32>,
    /// Streams whose DATA the client acknowledges at once with WINDOW_UPDATE (the
    /// connection's window is always given back).
    pub hold: Vec<u32>,
    /// The server's window for our DATA, connection-wide.
    send_window: i64,
    /// The server's initial window for a stream's DATA, and per stream what is left.
    peer_initial: i64,
    stream_windows: HashMap<u32, i64>,
    /// The server's SETTINGS came (and were acknowledged).
    pub settings_seen: bool,
    /// Answer SETTINGS with an ACK (off: a peer that never acknowledges).
    pub ack_settings: bool,
    /// Our first header block (with its table size update) was sent.
    sized: bool,
}

impl H2Client {
    /// Connects, sends the preface and SETTINGS `settings`, and waits for the server's.
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> H2Client {
        let mut c = Self::connect_raw(addr);
        c.send_preface(settings);
        // As browsers do: a large connection window, streams keep the default.
        c.window_update(0, 16 << 20);
        let deadline = Instant::now() + PATIENCE;
        while !c.settings_seen {
            assert!(Instant::now() < deadline, "no SETTINGS from the server");
            c.read_frame(Duration::from_millis(200));
        }
        c
    }

    /// Connects and sends nothing.
    pub fn connect_raw(addr: SocketAddr) -> H2Client {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        H2Client {
            sock,
            buf: Vec::new(),
            decoder: Decoder::default(),
            streams: HashMap::new(),
            goaway: None,
            hold: Vec::new(),
            send_window: 65_535,
            peer_initial: 65_535,
            stream_windows: HashMap::new(),
            settings_seen: false,
            ack_settings: true,
            sized: false,
        }
    }

    /// Sends the preface and SETTINGS `settings`.
    pub fn send_preface(&mut self, settings: &[(u16, u32)]) {
        let mut out = PREFACE.to_vec();
        frame::write_settings(settings, &mut out);
        self.send(&out);
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.sock.write_all(bytes);
    }

    /// Sends a request head on stream `id`: `method`, `path`, `:authority` "t", and `fields`.
    pub fn request(
        &mut self,
        id: u32,
        method: &str,
        path: &str,
        fields: &[(&str, &str)],
        end: bool,
    ) {
        let mut block = Vec::new();
        if !std::mem::replace(&mut self.sized, true) {
            // The server's SETTINGS_HEADER_TABLE_SIZE 0: our first block says we heard it
            // (RFC 7541 §4.2), as real clients do.
            hpack::encode_size_update(0, &mut block);
        }
        hpack::encode_field(b":method", method.as_bytes(), false, false, &mut block);
        hpack::encode_field(b":scheme", b"http", false, false, &mut block);
        hpack::encode_field(b":path", path.as_bytes(), false, false, &mut block);
        hpack::encode_field(b":authority", b"t", false, false, &mut block);
        for (n, v) in fields {
            hpack::encode_field(n.as_bytes(), v.as_bytes(), false, true, &mut block);
        }
        let mut out = Vec::new();
        frame::write_headers(id, &block, end, 16_384, &mut out);
        self.stream_windows.insert(id, self.peer_initial);
        self.send(&out);
    }

    /// Sends `body` on stream `id` as DATA, within the server's windows (reading its
    /// WINDOW_UPDATEs as needed), END_STREAM on the last frame.
    pub fn send_body(&mut self, id: u32, body: &[u8]) {
        let mut at = 0;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let window = self
                .send_window
                .min(*self.stream_windows.get(&id).unwrap_or(&0))
                .max(0) as usize;
            let take = (body.len() - at).min(window).min(16_384);
            if take == 0 && at < body.len() {
                assert!(
                    Instant::now() < deadline,
                    "the server never opened its window"
                );
                self.read_frame(Duration::from_millis(100));
                continue;
            }
            let last = at + take == body.len();
            let mut out = frame::data_header(id, take as u32, last).to_vec();
            out.extend_from_slice(&body[at..at + take]);
            self.send(&out);
            self.send_window -= take as i64;
            *self.stream_windows.entry(id).or_default() -= take as i64;
            at += take;
            if last {
                return;
            }
        }
    }

    /// Sends RST_STREAM(`code`) on stream `id`.
    pub fn reset(&mut self, id: u32, code: u32) {
        let mut out = Header {
            len: 4,
            kind: kind::RST_STREAM,
            flags: 0,
            stream: id,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        self.send(&out);
    }

    /// Gives stream `id` (0: the connection) `increment` more window.
    pub fn window_update(&mut self, id: u32, increment: u32) {
        let mut out = Vec::new();
        frame::write_window_update(id, increment, &mut out);
        self.send(&out);
    }

    /// Reads one frame within `wait` and acts on it (ACKs, windows, per-stream records);
    /// None if none came, or the connection closed.
    pub fn read_frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(f) = self.take_frame() {
                self.on_frame(&f);
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65_536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        let head: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let header = Header::parse(&head);
        let end = HEADER_LEN + header.len as usize;
        let payload = self.buf.get(HEADER_LEN..end)?.to_vec();
        self.buf.drain(..end);
        Some(Frame { header, payload })
    }

    fn on_frame(&mut self, f: &Frame) {
        let h = f.header;
        match h.kind {
            kind::SETTINGS if h.flags & flag::ACK == 0 => {
                for pair in f.payload.chunks(6) {
                    let id = u16::from_be_bytes([pair[0], pair[1]]);
                    let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
                    if id == setting::INITIAL_WINDOW_SIZE {
                        let delta = i64::from(value) - self.peer_initial;
                        for w in self.stream_windows.values_mut() {
                            *w += delta;
                        }
                        self.peer_initial = i64::from(value);
                    }
                }
                self.settings_seen = true;
                if self.ack_settings {
                    let mut out = Vec::new();
                    frame::write_settings_ack(&mut out);
                    self.send(&out);
                }
            }
            kind::PING if h.flags & flag::ACK == 0 => {
                let mut out = Vec::new();
                frame::write_ping(true, f.payload[..8].try_into().unwrap(), &mut out);
                self.send(&out);
            }
            kind::WINDOW_UPDATE => {
                let inc = i64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                if h.stream == 0 {
                    self.send_window += inc;
                } else {
                    *self.stream_windows.entry(h.stream).or_default() += inc;
                }
            }
            kind::GOAWAY => {
                self.goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
            }
            kind::RST_STREAM => {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                self.streams.entry(h.stream).or_default().reset = Some(code);
            }
            kind::HEADERS => {
                let mut list = HeaderList::default();
                self.decoder
                    .decode(&f.payload, 1 << 20, &mut list)
                    .expect("the server's header block decodes");
                let r = self.streams.entry(h.stream).or_default();
                for (n, v) in list.iter() {
                    r.head.push((
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                }
                r.ended |= h.flags & flag::END_STREAM != 0;
            }
            kind::DATA => {
                let r = self.streams.entry(h.stream).or_default();
                r.body.extend_from_slice(&f.payload);
                r.frame_sizes.push(f.payload.len());
                r.ended |= h.flags & flag::END_STREAM != 0;
                if !f.payload.is_empty() {
                    let n = f.payload.len() as u32;
                    self.window_update(0, n);
                    if !self.hold.contains(&h.stream) {
                        self.window_update(h.stream, n);
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads until `cond` holds of what came; panics after [`PATIENCE`].
    pub fn wait(&mut self, what: &str, cond: impl Fn(&H2Client) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; streams: {:?}",
                self.streams
                    .iter()
                    .map(|(id, r)| (id, r.status(), r.body.len(), r.reset, tail(&r.text())))
                    .collect::<Vec<_>>()
            );
            self.read_frame(Duration::from_millis(100));
        }
    }

    /// Reads stream `id`'s whole answer (until END_STREAM).
    pub fn response(&mut self, id: u32) -> Received {
        self.wait(&format!("the answer on stream {id}"), |c| {
            c.streams
                .get(&id)
                .is_some_and(|r| r.ended || r.reset.is_some())
        });
        self.streams[&id].clone()
    }

    /// Reads stream `id` until its body contains `needle`.
    pub fn body_until(&mut self, id: u32, needle: &str) -> String {
        self.wait(&format!("{needle:?} on stream {id}"), |c| {
            c.streams
                .get(&id)
                .is_some_and(|r| r.text().contains(needle))
        });
        self.streams[&id].text()
    }

    /// One request with no body on a new stream `id`, and its whole answer.
    pub fn get(&mut self, id: u32, path: &str) -> Received {
        self.request(id, "GET", path, &[], true);
        self.response(id)
    }

    /// Whether the server closed the connection (EOF) within [`PATIENCE`], reading what came.
    pub fn closed_by_server(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            self.sock
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut chunk = [0u8; 16_384];
            match self.sock.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
            while let Some(f) = self.take_frame() {
                self.on_frame(&f);
            }
        }
        false
    }
}
