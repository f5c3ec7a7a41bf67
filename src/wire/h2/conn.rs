//! One HTTP/2 connection, server side, sans-IO (quinn-proto's shape): the node feeds it the
//! bytes it read ([`Connection::recv`]) and gets [`Event`]s back; it asks it to send heads,
//! data, resets and GOAWAY, and moves [`Connection::take_output`] into the connection's outbox.
//! It owns no socket, no timer and no thread; its clock is a coarse seconds counter the node
//! passes in, used only to window the flood counters.
//!
//! What it keeps per connection is small on purpose (an idle h2c connection with one stream
//! has a budget of 512 B in all, see the `size_of` test): unread bytes and queued output are
//! empty `Vec`s between turns, a header block in progress is boxed, the HPACK table is dropped
//! once the peer honours our `SETTINGS_HEADER_TABLE_SIZE` 0, and a stream is a 20-byte entry.
//!
//! ## Defences
//!
//! Each trips a GOAWAY (or a stream reset) and reports a [`Defence`] event for the node to
//! count: rapid reset (CVE-2023-44487), CONTINUATION floods, oversized header lists (HPACK
//! bombs: 431, the table kept), SETTINGS / PING / WINDOW_UPDATE / empty-frame floods (counts
//! per window of seconds), unread control replies, and window overflow (FLOW_CONTROL_ERROR).
//! The bounds are the fields of [`Limits`], each with its reason.

use bytes::Bytes;

use super::frame::{self, setting, DataFrames, Frame, Header};
use super::hpack::{self, Decoded, Decoder, HeaderList};
use super::{ErrorCode, H2Error};

/// The bounds of one connection, shared by all connections of a shard (passed in, not stored,
/// so a connection does not carry a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS (`--h2-max-streams`): streams one connection may hold
    /// open; beyond it a new stream is refused (REFUSED_STREAM, the client may retry).
    pub max_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the decoded head (names, values, 32 per field). Past it
    /// the request gets 431, like an HTTP/1.1 head over 8 KiB, and no more is kept: the bound
    /// that stops an HPACK bomb.
    pub max_header_list: u32,
    /// Bytes of one encoded header block (HEADERS and its CONTINUATIONs): bounds the buffer a
    /// block in progress holds. Encoded heads are rarely larger than decoded ones, so twice the
    /// list bound leaves honest clients room.
    pub max_header_block: u32,
    /// CONTINUATION frames after one HEADERS: real clients send none or a few; the 2024
    /// CONTINUATION flood sends endless empty ones.
    pub max_continuations: u16,
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise for request bodies (at least 65 535, the window
    /// the peer may use before it reads our SETTINGS). Reopened as bodies are read.
    pub window: u32,
    /// Length of a flood-counting window, in the node's coarse seconds.
    pub flood_window_secs: u32,
    /// Streams the peer may reset (or we refuse) per window: a browser closing a page resets
    /// its few streams, rapid reset opens and resets thousands.
    pub max_resets: u16,
    /// SETTINGS frames per window: a client sends one, perhaps a few.
    pub max_settings: u16,
    /// PING frames per window: liveness checks are seconds apart.
    pub max_pings: u16,
    /// WINDOW_UPDATE frames per window: a client returns window as it reads our data, a few
    /// per stream per window at most under load.
    pub max_window_updates: u16,
    /// Frames that carry nothing per window (empty DATA, PRIORITY, unknown types): each costs
    /// us a parse for no work, the "empty frames" and "resource loop" floods of 2019.
    pub max_idle_frames: u16,
    /// Bytes of control replies (ACKs, resets) one `recv` may queue: a peer that floods and
    /// never reads would otherwise grow our output (2019's ping and settings floods).
    pub max_control_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 100,
            max_header_list: 8192 + 64 * hpack::ENTRY_OVERHEAD,
            max_header_block: 2 * (8192 + 64 * hpack::ENTRY_OVERHEAD),
            max_continuations: 16,
            window: frame::DEFAULT_WINDOW,
            flood_window_secs: 10,
            max_resets: 200,
            max_settings: 100,
            max_pings: 100,
            max_window_updates: 10_000,
            max_idle_frames: 1_000,
            max_control_backlog: 16 * 1024,
        }
    }
}

/// A defence that tripped, for the node's counters (one per variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defence {
    /// Too many streams reset by the peer (or refused) in a window: CVE-2023-44487.
    RapidReset,
    /// A header block over its bound in bytes or CONTINUATION frames.
    ContinuationFlood,
    /// A decoded header list over SETTINGS_MAX_HEADER_LIST_SIZE (answered 431).
    HeaderList,
    /// Too many SETTINGS in a window.
    SettingsFlood,
    /// Too many PINGs in a window.
    PingFlood,
    /// Too many WINDOW_UPDATEs in a window.
    WindowUpdateFlood,
    /// Too many frames that carry nothing in a window.
    IdleFrameFlood,
    /// Control replies piled up past their bound.
    ControlBacklog,
    /// A WINDOW_UPDATE or SETTINGS pushed a window past 2^31-1.
    WindowOverflow,
}

impl Defence {
    /// Every defence, for a metric family with one label value each.
    pub const ALL: [Defence; 9] = [
        Defence::RapidReset,
        Defence::ContinuationFlood,
        Defence::HeaderList,
        Defence::SettingsFlood,
        Defence::PingFlood,
        Defence::WindowUpdateFlood,
        Defence::IdleFrameFlood,
        Defence::ControlBacklog,
        Defence::WindowOverflow,
    ];

    /// Its label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Defence::RapidReset => "rapid_reset",
            Defence::ContinuationFlood => "continuation_flood",
            Defence::HeaderList => "header_list",
            Defence::SettingsFlood => "settings_flood",
            Defence::PingFlood => "ping_flood",
            Defence::WindowUpdateFlood => "window_update_flood",
            Defence::IdleFrameFlood => "idle_frame_flood",
            Defence::ControlBacklog => "control_backlog",
            Defence::WindowOverflow => "window_overflow",
        }
    }
}

/// A request head, checked against RFC 9113 §8.3: pseudo-fields first, each once, the
/// required ones present, no connection-specific field, names in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Every field in block order, pseudo-fields first.
    list: HeaderList,
}

impl RequestHead {
    fn pseudo(&self, name: &[u8]) -> Option<&[u8]> {
        self.list
            .iter()
            .take_while(|(n, _)| n.first() == Some(&b':'))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// `:method`.
    pub fn method(&self) -> &[u8] {
        self.pseudo(b":method").unwrap_or_default()
    }

    /// `:path` (path and query).
    pub fn path(&self) -> &[u8] {
        self.pseudo(b":path").unwrap_or_default()
    }

    /// `:scheme`.
    pub fn scheme(&self) -> &[u8] {
        self.pseudo(b":scheme").unwrap_or_default()
    }

    /// `:authority`, which stands where HTTP/1.1 has `Host`.
    pub fn authority(&self) -> Option<&[u8]> {
        self.pseudo(b":authority")
    }

    /// The regular fields, in order. Cookies may come as several `cookie` fields (§8.2.3):
    /// join them with "; " before reading one.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.list.iter().filter(|(n, _)| n.first() != Some(&b':'))
    }

    /// The first value of a regular field.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// No content-length was given.
const NO_LENGTH: u32 = u32::MAX;

/// Why a head is malformed (§8.1.1): a stream error PROTOCOL_ERROR.
fn check_head(list: &HeaderList) -> Result<u32, ()> {
    let mut seen = 0u8;
    let mut regular = false;
    let mut length = NO_LENGTH;
    for (name, value) in list.iter() {
        if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(());
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            let bit = match pseudo {
                b"method" => 1,
                b"scheme" => 2,
                b"path" => 4,
                b"authority" => 8,
                _ => return Err(()),
            };
            if regular || seen & bit != 0 || (bit == 4 && value.is_empty()) {
                return Err(());
            }
            seen |= bit;
            continue;
        }
        regular = true;
        let bad_char = |&b: &u8| b <= b' ' || b.is_ascii_uppercase() || b >= 0x7f || b == b':';
        if name.is_empty() || name.iter().any(bad_char) {
            return Err(());
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return Err(()),
            b"te" if value != b"trailers" => return Err(()),
            b"content-length" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|&n| n != NO_LENGTH)
                    .ok_or(())?;
                if length != NO_LENGTH && length != n {
                    return Err(());
                }
                length = n;
            }
            _ => {}
        }
    }
    if seen & 7 != 7 {
        return Err(());
    }
    Ok(length)
}

/// What the connection tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A stream opened with this request head.
    Request {
        /// The stream.
        stream: u32,
        /// The head.
        head: Box<RequestHead>,
        /// No body follows.
        end_stream: bool,
    },
    /// A stream opened with a head over the list bound: answer 431 and end it.
    HeadTooLarge {
        /// The stream.
        stream: u32,
    },
    /// Request body bytes (trailers end a body as an empty `Data` with `end_stream`).
    Data {
        /// The stream.
        stream: u32,
        /// The bytes.
        data: Bytes,
        /// The body is complete.
        end_stream: bool,
    },
    /// A stream ended abnormally; forget it.
    Reset {
        /// The stream.
        stream: u32,
        /// Why.
        code: ErrorCode,
        /// The peer reset it (otherwise we did, for a stream error).
        by_peer: bool,
    },
    /// The peer's SETTINGS were applied.
    Settings {
        /// Its SETTINGS_INITIAL_WINDOW_SIZE for our DATA.
        initial_window: u32,
        /// Its SETTINGS_MAX_FRAME_SIZE.
        max_frame: u32,
    },
    /// The peer sent a PING (already answered).
    Ping,
    /// The peer is going away: it opens no more streams.
    GoAway {
        /// The last of our streams it processed (meaningless for a server).
        last_stream: u32,
        /// Why.
        code: ErrorCode,
    },
    /// Window opened for our DATA: on one stream, or (`None`) on the connection or every
    /// stream at once. Streams waiting for window may send again.
    Writable {
        /// The stream, or all.
        stream: Option<u32>,
    },
    /// A defence tripped (count it).
    Defended(Defence),
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The stream is not open for sending (never opened, reset, or ended by us).
    #[error("stream not open for sending")]
    NotOpen,
    /// The peer's flow-control windows do not hold this many bytes now.
    #[error("flow-control window closed")]
    Window,
}

/// The stream has received END_STREAM.
const REMOTE_CLOSED: u8 = 1;
/// We have sent END_STREAM.
const LOCAL_CLOSED: u8 = 2;

/// One stream's protocol state: open or half-closed (closed streams are dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamEntry {
    /// Stream identifier (odd: the client's).
    id: u32,
    /// The peer's window for our DATA on this stream (may go negative, §6.9.2).
    send_window: i32,
    /// Our window for the peer's DATA.
    recv_window: i32,
    /// Body bytes the content-length still promises (`NO_LENGTH`: none given).
    body_left: u32,
    /// `REMOTE_CLOSED` | `LOCAL_CLOSED`.
    closed: u8,
}

/// A header block in progress (HEADERS without END_HEADERS, then CONTINUATIONs).
#[derive(Debug, Clone)]
struct Block {
    /// Its stream.
    stream: u32,
    /// The HEADERS had END_STREAM.
    end_stream: bool,
    /// The HEADERS named this dependency.
    dependency: Option<u32>,
    /// CONTINUATION frames so far.
    continuations: u16,
    /// The fragments so far.
    bytes: Vec<u8>,
}

/// Flood counters over a window of the node's seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flood {
    /// When the current window began.
    since: u32,
    /// Resets, settings, pings, window updates, idle frames in this window.
    counts: [u16; 5],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Reset = 0,
    Settings = 1,
    Ping = 2,
    WindowUpdate = 3,
    Idle = 4,
}

impl Flood {
    /// Counts one; `Err` when the window's bound is passed.
    fn hit(&mut self, what: Counted, now: u32, limits: &Limits) -> Result<(), Defence> {
        if now.wrapping_sub(self.since) >= limits.flood_window_secs {
            *self = Flood {
                since: now,
                counts: [0; 5],
            };
        }
        let (max, defence) = match what {
            Counted::Reset => (limits.max_resets, Defence::RapidReset),
            Counted::Settings => (limits.max_settings, Defence::SettingsFlood),
            Counted::Ping => (limits.max_pings, Defence::PingFlood),
            Counted::WindowUpdate => (limits.max_window_updates, Defence::WindowUpdateFlood),
            Counted::Idle => (limits.max_idle_frames, Defence::IdleFrameFlood),
        };
        let count = &mut self.counts[what as usize];
        *count = count.saturating_add(1);
        if *count > max {
            return Err(defence);
        }
        Ok(())
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 24-byte client preface.
    Preface,
    /// Preface read; the first frame must be SETTINGS (§3.4).
    FirstSettings,
    /// Serving.
    Open,
    /// We sent GOAWAY(NO_ERROR): existing streams finish, new ones are ignored.
    Draining,
    /// We sent GOAWAY with an error: nothing more is read.
    Failed(ErrorCode),
}

/// A connection's protocol state between two frames, for another process to go on with it
/// (the zero-disconnect upgrade): settings both ways, windows, the streams' states and the
/// HPACK decoder. Plain data; [`Connection::import`] judges it as peer input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The SETTINGS_INITIAL_WINDOW_SIZE we advertised (the peer's view of our stream windows).
    pub advertised_window: u32,
    /// The peer's connection window for our DATA (may be negative).
    pub send_window: i32,
    /// Our connection window for the peer's DATA.
    pub recv_window: i32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    pub peer_window: u32,
    /// The peer's SETTINGS_MAX_FRAME_SIZE.
    pub peer_max_frame: u32,
    /// The highest stream id the peer has used.
    pub last_stream: u32,
    /// Our first header block (with its table size update) was sent.
    pub head_sent: bool,
    /// Open and half-closed streams, by id.
    pub streams: Vec<StreamImage>,
    /// The HPACK decoder, our SETTINGS' acknowledgement included.
    pub decoder: hpack::DecoderImage,
}

/// One stream's protocol state in an [`Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamImage {
    /// Its id.
    pub id: u32,
    /// The peer's window for our DATA on it.
    pub send_window: i32,
    /// Our window for the peer's DATA on it.
    pub recv_window: i32,
    /// Body bytes its content-length still promises (`u32::MAX`: none given).
    pub body_left: u32,
    /// It received END_STREAM.
    pub remote_closed: bool,
    /// We sent END_STREAM.
    pub local_closed: bool,
}

/// Why a connection cannot be handed over as it is (it drains instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAtRest {
    /// The handshake is not over, or the connection is ending.
    #[error("not open")]
    NotOpen,
    /// Part of a frame, or a header block, is read and not acted on.
    #[error("a frame or header block half read")]
    MidFrame,
    /// Frames are queued in it and not taken into the outbox.
    #[error("output not taken")]
    Output,
}

/// A window carried over must be one a connection can hold (§6.9.1; negative down to the
/// same bound after a SETTINGS change, §6.9.2).
fn window_ok(w: i32) -> bool {
    w.unsigned_abs() <= frame::MAX_WINDOW
}

/// One HTTP/2 server connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    /// Bytes read but not yet a whole frame (or preface); empty and unallocated between frames.
    partial: Vec<u8>,
    /// Frames to send, in order; the node moves them out with `take_output`.
    out: Vec<u8>,
    /// Open and half-closed streams, sorted by id.
    streams: Vec<StreamEntry>,
    /// A header block in progress.
    block: Option<Box<Block>>,
    /// The HPACK decoder.
    decoder: Decoder,
    /// The peer's connection window for our DATA.
    send_window: i32,
    /// Our connection window for the peer's DATA.
    recv_window: i32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_window: u32,
    /// The peer's SETTINGS_MAX_FRAME_SIZE.
    peer_max_frame: u32,
    /// The highest stream id the peer has used.
    last_stream: u32,
    /// Flood counters.
    flood: Flood,
    /// Where it is.
    state: State,
    /// Our first header block (which opens with a table size update to 0) has been sent.
    head_sent: bool,
    /// The last stream we reset: DATA and WINDOW_UPDATE the peer sent before it saw our
    /// RST_STREAM are ignored there (§5.1, "closed"), not answered with STREAM_CLOSED. One id
    /// is enough for the case that matters, a refused request whose body is still arriving;
    /// an earlier reset stream gets STREAM_CLOSED, which costs the peer that stream only.
    reset_last: u32,
}

fn conn_err(code: ErrorCode) -> H2Error {
    H2Error::Connection(code)
}

impl Connection {
    /// A connection whose client preface has not been read yet; our SETTINGS are queued.
    pub fn new(limits: &Limits) -> Connection {
        let mut c = Connection {
            partial: Vec::new(),
            out: Vec::new(),
            streams: Vec::new(),
            block: None,
            decoder: Decoder::default(),
            send_window: frame::DEFAULT_WINDOW as i32,
            recv_window: frame::DEFAULT_WINDOW as i32,
            peer_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            last_stream: 0,
            flood: Flood::default(),
            state: State::Preface,
            head_sent: false,
            reset_last: 0,
        };
        frame::write_settings(
            &[
                (setting::HEADER_TABLE_SIZE, 0),
                (setting::ENABLE_PUSH, 0),
                (setting::MAX_CONCURRENT_STREAMS, limits.max_streams),
                (setting::INITIAL_WINDOW_SIZE, Self::window(limits) as u32),
                (setting::MAX_HEADER_LIST_SIZE, limits.max_header_list),
            ],
            &mut c.out,
        );
        c.decoder.advertise(0);
        c
    }

    fn window(limits: &Limits) -> i32 {
        limits
            .window
            .clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW) as i32
    }

    /// Its state, for [`Connection::import`] in another process; refused unless the
    /// connection is open and at rest between frames, with nothing queued in it (take the
    /// output into the outbox first: the outbox travels beside).
    pub fn export(&self, limits: &Limits) -> Result<Image, NotAtRest> {
        if self.state != State::Open {
            return Err(NotAtRest::NotOpen);
        }
        if !self.partial.is_empty() || self.block.is_some() {
            return Err(NotAtRest::MidFrame);
        }
        if !self.out.is_empty() {
            return Err(NotAtRest::Output);
        }
        Ok(Image {
            advertised_window: Self::window(limits) as u32,
            send_window: self.send_window,
            recv_window: self.recv_window,
            peer_window: self.peer_window,
            peer_max_frame: self.peer_max_frame,
            last_stream: self.last_stream,
            head_sent: self.head_sent,
            streams: self
                .streams
                .iter()
                .map(|s| StreamImage {
                    id: s.id,
                    send_window: s.send_window,
                    recv_window: s.recv_window,
                    body_left: s.body_left,
                    remote_closed: s.closed & REMOTE_CLOSED != 0,
                    local_closed: s.closed & LOCAL_CLOSED != 0,
                })
                .collect(),
            decoder: self.decoder.image(),
        })
    }

    /// The connection `image` describes, open, with nothing queued: it goes on at the next
    /// frame the peer sends. The image comes from another process: every field is held to
    /// what a connection under `limits` could reach, and one that could not is refused.
    pub fn import(image: Image, limits: &Limits) -> Result<Connection, &'static str> {
        if image.advertised_window != Self::window(limits) as u32 {
            return Err("an HTTP/2 connection advertised another initial window");
        }
        if !window_ok(image.send_window) || !window_ok(image.recv_window) {
            return Err("an HTTP/2 connection window out of range");
        }
        if image.peer_window > frame::MAX_WINDOW {
            return Err("an HTTP/2 peer window out of range");
        }
        if !(frame::DEFAULT_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE)
            .contains(&image.peer_max_frame)
        {
            return Err("an HTTP/2 peer frame size out of range");
        }
        if image.last_stream > frame::MAX_WINDOW
            || (image.last_stream != 0 && image.last_stream.is_multiple_of(2))
        {
            return Err("an HTTP/2 stream id that is not a client's");
        }
        if image.streams.len() > limits.max_streams as usize {
            return Err("more HTTP/2 streams than --h2-max-streams");
        }
        let mut streams = Vec::with_capacity(image.streams.len());
        let mut previous = 0u32;
        for s in &image.streams {
            if s.id.is_multiple_of(2) || s.id <= previous || s.id > image.last_stream {
                return Err("HTTP/2 stream ids out of order or never opened");
            }
            if !window_ok(s.send_window) || !window_ok(s.recv_window) {
                return Err("an HTTP/2 stream window out of range");
            }
            if s.remote_closed && s.local_closed {
                return Err("a closed HTTP/2 stream");
            }
            previous = s.id;
            streams.push(StreamEntry {
                id: s.id,
                send_window: s.send_window,
                recv_window: s.recv_window,
                body_left: s.body_left,
                closed: if s.remote_closed { REMOTE_CLOSED } else { 0 }
                    | if s.local_closed { LOCAL_CLOSED } else { 0 },
            });
        }
        let decoder = Decoder::from_image(image.decoder)?;
        Ok(Connection {
            partial: Vec::new(),
            out: Vec::new(),
            streams,
            block: None,
            decoder,
            send_window: image.send_window,
            recv_window: image.recv_window,
            peer_window: image.peer_window,
            peer_max_frame: image.peer_max_frame,
            last_stream: image.last_stream,
            // The flood windows start again: they count per window of seconds, and the
            // other process's clock is not this one's.
            flood: Flood::default(),
            state: State::Open,
            head_sent: image.head_sent,
            // Not carried: a DATA frame that crossed a reset made before the hand-over gets
            // STREAM_CLOSED, which costs the peer that one stream.
            reset_last: 0,
        })
    }

    /// Whether `bytes` (the first read of a plain connection) can be the start of the client
    /// preface: h2c with prior knowledge, told apart from HTTP/1.1 before anything is parsed.
    pub fn is_preface_start(bytes: &[u8]) -> bool {
        let n = bytes.len().min(frame::PREFACE.len());
        bytes.get(..n) == frame::PREFACE.get(..n)
    }

    /// Feeds bytes read from the peer; events go to `events` (the shard's, reused). `now` is
    /// the node's coarse clock in seconds. `Err` is a connection error: a GOAWAY is queued,
    /// flush the output and close.
    pub fn recv(
        &mut self,
        input: &[u8],
        now: u32,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), ErrorCode> {
        if let State::Failed(code) = self.state {
            return Err(code);
        }
        let result = if self.partial.is_empty() {
            let (used, result) = self.process(input, now, limits, events);
            if result.is_ok() {
                self.partial
                    .extend_from_slice(input.get(used..).unwrap_or_default());
            }
            result
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let (used, result) = self.process(&buf, now, limits, events);
            buf.drain(..used.min(buf.len()));
            if !buf.is_empty() {
                self.partial = buf;
            }
            result
        };
        if let Err(H2Error::Connection(code)) = result {
            self.fail(code);
            return Err(code);
        }
        Ok(())
    }

    /// Reads every whole frame in `buf`; returns how many bytes it used.
    fn process(
        &mut self,
        buf: &[u8],
        now: u32,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> (usize, Result<(), H2Error>) {
        let mut at = 0usize;
        loop {
            let rest = buf.get(at..).unwrap_or_default();
            if self.state == State::Preface {
                if !Self::is_preface_start(rest) {
                    return (at, Err(conn_err(ErrorCode::ProtocolError)));
                }
                if rest.len() < frame::PREFACE.len() {
                    return (at, Ok(()));
                }
                at += frame::PREFACE.len();
                self.state = State::FirstSettings;
                continue;
            }
            let Some(head) = rest.first_chunk::<{ frame::HEADER_LEN }>() else {
                return (at, Ok(()));
            };
            let header = Header::parse(head);
            // We never advertise more than the default: a larger frame is refused before its
            // payload is buffered (§4.2).
            if header.len > frame::DEFAULT_MAX_FRAME_SIZE {
                return (at, Err(conn_err(ErrorCode::FrameSizeError)));
            }
            let end = frame::HEADER_LEN + header.len as usize;
            let Some(payload) = rest.get(frame::HEADER_LEN..end) else {
                return (at, Ok(()));
            };
            at += end;
            match self.on_frame(header, payload, now, limits, events) {
                Ok(()) => {}
                Err(H2Error::Stream(stream, code)) if stream > self.last_stream => {
                    // §6.4: no RST_STREAM for an idle stream; the error becomes the
                    // connection's (h2spec accepts either for these cases).
                    return (at, Err(conn_err(code)));
                }
                Err(H2Error::Stream(stream, code)) => {
                    if let Err(e) = self.stream_error(stream, code, now, limits, events) {
                        return (at, Err(e));
                    }
                }
                Err(e) => return (at, Err(e)),
            }
        }
    }

    fn fail(&mut self, code: ErrorCode) {
        frame::write_goaway(self.last_stream, code, &mut self.out);
        self.state = State::Failed(code);
        self.partial = Vec::new();
        self.block = None;
        self.streams = Vec::new();
    }

    fn calm(events: &mut Vec<Event>, defence: Defence) -> H2Error {
        events.push(Event::Defended(defence));
        let code = if defence == Defence::WindowOverflow {
            ErrorCode::FlowControlError
        } else {
            ErrorCode::EnhanceYourCalm
        };
        conn_err(code)
    }

    fn count(
        &mut self,
        what: Counted,
        now: u32,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        self.flood
            .hit(what, now, limits)
            .map_err(|d| Self::calm(events, d))
    }

    /// Queues a control reply, unless replies have piled up past their bound.
    fn reply(
        &mut self,
        limits: &Limits,
        events: &mut Vec<Event>,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), H2Error> {
        if self.out.len() > limits.max_control_backlog {
            return Err(Self::calm(events, Defence::ControlBacklog));
        }
        write(&mut self.out);
        Ok(())
    }

    fn stream_error(
        &mut self,
        stream: u32,
        code: ErrorCode,
        now: u32,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        self.reset_last = stream;
        if let Some(i) = self.find(stream) {
            self.streams.remove(i);
            events.push(Event::Reset {
                stream,
                code,
                by_peer: false,
            });
        }
        if code == ErrorCode::RefusedStream {
            // Refusals count with resets: opening past the limit again and again is the same
            // churn as opening and resetting.
            self.count(Counted::Reset, now, limits, events)?;
        }
        self.reply(limits, events, |out| {
            frame::write_rst_stream(stream, code, out)
        })
    }

    fn find(&self, stream: u32) -> Option<usize> {
        self.streams.binary_search_by_key(&stream, |s| s.id).ok()
    }

    fn on_frame(
        &mut self,
        header: Header,
        payload: &[u8],
        now: u32,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        let frame = frame::parse(header, payload)?;
        if self.state == State::FirstSettings {
            match frame {
                Frame::Settings { ack: false, .. } => self.state = State::Open,
                _ => return Err(conn_err(ErrorCode::ProtocolError)),
            }
        }
        if self.block.is_some() && !matches!(frame, Frame::Continuation { .. }) {
            // §6.10: nothing may come between HEADERS and its last CONTINUATION.
            return Err(conn_err(ErrorCode::ProtocolError));
        }
        match frame {
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.on_data(stream, data, end_stream, flow_len, now, limits, events),
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                dependency,
            } => {
                if stream % 2 == 0 {
                    return Err(conn_err(ErrorCode::ProtocolError));
                }
                if stream <= self.last_stream && self.find(stream).is_none() {
                    // §5.1.1: a new stream's id must exceed every id the peer used before.
                    return Err(conn_err(ErrorCode::ProtocolError));
                }
                if end_headers {
                    return self.on_block(stream, fragment, end_stream, dependency, limits, events);
                }
                if fragment.len() > limits.max_header_block as usize {
                    return Err(Self::calm(events, Defence::ContinuationFlood));
                }
                self.block = Some(Box::new(Block {
                    stream,
                    end_stream,
                    dependency,
                    continuations: 0,
                    bytes: fragment.to_vec(),
                }));
                Ok(())
            }
            Frame::Continuation {
                stream,
                fragment,
                end_headers,
            } => {
                let Some(block) = self.block.as_mut() else {
                    return Err(conn_err(ErrorCode::ProtocolError));
                };
                if block.stream != stream {
                    return Err(conn_err(ErrorCode::ProtocolError));
                }
                block.continuations = block.continuations.saturating_add(1);
                let size = block.bytes.len().saturating_add(fragment.len());
                if block.continuations > limits.max_continuations
                    || size > limits.max_header_block as usize
                {
                    return Err(Self::calm(events, Defence::ContinuationFlood));
                }
                block.bytes.extend_from_slice(fragment);
                if !end_headers {
                    return Ok(());
                }
                let Some(block) = self.block.take() else {
                    return Ok(());
                };
                self.on_block(
                    block.stream,
                    &block.bytes,
                    block.end_stream,
                    block.dependency,
                    limits,
                    events,
                )
            }
            Frame::Priority { .. } | Frame::Unknown => {
                self.count(Counted::Idle, now, limits, events)
            }
            Frame::RstStream { stream, code } => {
                if stream > self.last_stream {
                    // §6.4: RST_STREAM on an idle stream.
                    return Err(conn_err(ErrorCode::ProtocolError));
                }
                let Some(i) = self.find(stream) else {
                    return Ok(()); // already closed: frames may cross
                };
                self.streams.remove(i);
                events.push(Event::Reset {
                    stream,
                    code: ErrorCode::from_u32(code),
                    by_peer: true,
                });
                self.count(Counted::Reset, now, limits, events)
            }
            Frame::Settings { ack: true, .. } => {
                self.decoder.settings_acked();
                Ok(())
            }
            Frame::Settings { ack: false, params } => {
                self.count(Counted::Settings, now, limits, events)?;
                self.apply_settings(params, events)?;
                self.reply(limits, events, frame::write_settings_ack)
            }
            Frame::PushPromise => Err(conn_err(ErrorCode::ProtocolError)),
            Frame::Ping { ack: true, .. } => Ok(()),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                self.count(Counted::Ping, now, limits, events)?;
                self.reply(limits, events, |out| frame::write_ping(true, payload, out))?;
                events.push(Event::Ping);
                Ok(())
            }
            Frame::GoAway { last_stream, code } => {
                events.push(Event::GoAway {
                    last_stream,
                    code: ErrorCode::from_u32(code),
                });
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                self.count(Counted::WindowUpdate, now, limits, events)?;
                self.on_window_update(stream, increment, events)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
        flow_len: u32,
        now: u32,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        // Every DATA counts against the connection window, whatever its stream's state.
        let flow = i32::try_from(flow_len).unwrap_or(i32::MAX);
        if flow > self.recv_window {
            return Err(conn_err(ErrorCode::FlowControlError));
        }
        self.recv_window -= flow;
        if self.recv_window < frame::DEFAULT_WINDOW as i32 / 2 {
            let increment = frame::DEFAULT_WINDOW as i32 - self.recv_window;
            self.recv_window = frame::DEFAULT_WINDOW as i32;
            frame::write_window_update(0, increment as u32, &mut self.out);
        }
        if data.is_empty() && !end_stream {
            self.count(Counted::Idle, now, limits, events)?;
        }
        if stream > self.last_stream {
            return Err(conn_err(ErrorCode::ProtocolError)); // DATA on an idle stream
        }
        let Some(i) = self.find(stream) else {
            if stream == self.reset_last {
                return Ok(()); // in flight when we reset it; counted above, in the window
            }
            return Err(H2Error::Stream(stream, ErrorCode::StreamClosed));
        };
        let window = Self::window(limits);
        let entry = &mut self.streams[i];
        if entry.closed & REMOTE_CLOSED != 0 {
            return Err(H2Error::Stream(stream, ErrorCode::StreamClosed));
        }
        if flow > entry.recv_window {
            return Err(H2Error::Stream(stream, ErrorCode::FlowControlError));
        }
        entry.recv_window -= flow;
        if entry.body_left != NO_LENGTH {
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            entry.body_left = entry
                .body_left
                .checked_sub(len)
                .ok_or(H2Error::Stream(stream, ErrorCode::ProtocolError))?;
            if end_stream && entry.body_left != 0 {
                return Err(H2Error::Stream(stream, ErrorCode::ProtocolError));
            }
        }
        if end_stream {
            entry.closed |= REMOTE_CLOSED;
        } else if entry.recv_window < window / 2 {
            // Reopen as the body is read, so a body larger than one window does not stall.
            let increment = window - entry.recv_window;
            entry.recv_window = window;
            frame::write_window_update(stream, increment as u32, &mut self.out);
        }
        let gone = entry.closed == REMOTE_CLOSED | LOCAL_CLOSED;
        if gone {
            self.streams.remove(i);
        }
        events.push(Event::Data {
            stream,
            data: Bytes::copy_from_slice(data),
            end_stream,
        });
        Ok(())
    }

    fn on_block(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        dependency: Option<u32>,
        limits: &Limits,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        let mut list = HeaderList::default();
        // Decoded first whatever becomes of the stream: the table must follow the peer's.
        let decoded = self
            .decoder
            .decode(block, limits.max_header_list, &mut list)
            .map_err(|_| conn_err(ErrorCode::CompressionError))?;
        if let Some(i) = self.find(stream) {
            // A second block on a stream: trailers, which must end it (§8.1).
            let entry = &mut self.streams[i];
            if entry.closed & REMOTE_CLOSED != 0 {
                return Err(H2Error::Stream(stream, ErrorCode::StreamClosed));
            }
            let pseudo = list.iter().any(|(n, _)| n.first() == Some(&b':'));
            let short = entry.body_left != NO_LENGTH && entry.body_left != 0;
            if !end_stream || pseudo || short {
                return Err(H2Error::Stream(stream, ErrorCode::ProtocolError));
            }
            entry.closed |= REMOTE_CLOSED;
            if entry.closed == REMOTE_CLOSED | LOCAL_CLOSED {
                self.streams.remove(i);
            }
            events.push(Event::Data {
                stream,
                data: Bytes::new(),
                end_stream: true,
            });
            return Ok(());
        }
        self.last_stream = stream;
        if dependency == Some(stream) {
            // §5.3.1: a stream cannot depend on itself.
            return Err(H2Error::Stream(stream, ErrorCode::ProtocolError));
        }
        if self.state == State::Draining {
            return Ok(()); // §6.8: past our GOAWAY, ignored
        }
        if self.streams.len() >= limits.max_streams as usize {
            return Err(H2Error::Stream(stream, ErrorCode::RefusedStream));
        }
        let body_left = match decoded {
            Decoded::TooLarge => NO_LENGTH,
            Decoded::Complete => {
                check_head(&list).map_err(|()| H2Error::Stream(stream, ErrorCode::ProtocolError))?
            }
        };
        if end_stream && body_left != NO_LENGTH && body_left != 0 {
            return Err(H2Error::Stream(stream, ErrorCode::ProtocolError));
        }
        if self.streams.len() == self.streams.capacity() {
            // Grow by little: most connections carry one or a few streams.
            self.streams.reserve_exact((self.streams.len() / 2).max(1));
        }
        self.streams.push(StreamEntry {
            id: stream,
            send_window: i32::try_from(self.peer_window).unwrap_or(i32::MAX),
            recv_window: Self::window(limits),
            body_left,
            closed: if end_stream { REMOTE_CLOSED } else { 0 },
        });
        match decoded {
            Decoded::TooLarge => {
                events.push(Event::Defended(Defence::HeaderList));
                events.push(Event::HeadTooLarge { stream });
            }
            Decoded::Complete => events.push(Event::Request {
                stream,
                head: Box::new(RequestHead { list }),
                end_stream,
            }),
        }
        Ok(())
    }

    fn apply_settings(&mut self, params: &[u8], events: &mut Vec<Event>) -> Result<(), H2Error> {
        for (id, value) in frame::settings(params) {
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    // §6.9.2: the change applies to every stream's window, and may not push
                    // one past 2^31-1.
                    let delta = i64::from(value) - i64::from(self.peer_window);
                    for s in &mut self.streams {
                        let w = i64::from(s.send_window) + delta;
                        s.send_window = i32::try_from(w)
                            .map_err(|_| Self::calm(events, Defence::WindowOverflow))?;
                    }
                    self.peer_window = value;
                }
                setting::MAX_FRAME_SIZE => self.peer_max_frame = value,
                // HEADER_TABLE_SIZE: our first block shrinks our encoder's table to 0, which
                // any value allows; the others bind a client, not us.
                _ => {}
            }
        }
        events.push(Event::Settings {
            initial_window: self.peer_window,
            max_frame: self.peer_max_frame,
        });
        events.push(Event::Writable { stream: None });
        Ok(())
    }

    fn on_window_update(
        &mut self,
        stream: u32,
        increment: u32,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        let inc = i64::from(increment);
        if stream == 0 {
            let w = i64::from(self.send_window) + inc;
            if w > i64::from(frame::MAX_WINDOW) {
                return Err(Self::calm(events, Defence::WindowOverflow));
            }
            self.send_window = w as i32;
            events.push(Event::Writable { stream: None });
            return Ok(());
        }
        if stream > self.last_stream {
            return Err(conn_err(ErrorCode::ProtocolError)); // idle stream
        }
        let Some(i) = self.find(stream) else {
            return Ok(()); // closed: frames may cross
        };
        let entry = &mut self.streams[i];
        let w = i64::from(entry.send_window) + inc;
        if w > i64::from(frame::MAX_WINDOW) {
            events.push(Event::Defended(Defence::WindowOverflow));
            return Err(H2Error::Stream(stream, ErrorCode::FlowControlError));
        }
        entry.send_window = w as i32;
        events.push(Event::Writable {
            stream: Some(stream),
        });
        Ok(())
    }

    /// Queues a response head (an HPACK block from [`hpack::encode_status`] and
    /// [`hpack::encode_field`], without connection-specific fields) on an open stream.
    pub fn send_head(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
    ) -> Result<(), SendError> {
        let i = self.sendable(stream)?;
        if self.head_sent {
            frame::write_headers(
                stream,
                block,
                end_stream,
                self.peer_max_frame,
                &mut self.out,
            );
        } else {
            // Our first block shrinks our encoder's table to 0, so no later block depends on
            // the peer's SETTINGS_HEADER_TABLE_SIZE (RFC 7541 §4.2).
            let mut first = Vec::with_capacity(block.len() + 1);
            hpack::encode_size_update(0, &mut first);
            first.extend_from_slice(block);
            frame::write_headers(
                stream,
                &first,
                end_stream,
                self.peer_max_frame,
                &mut self.out,
            );
            self.head_sent = true;
        }
        if end_stream {
            self.close_local(i);
        }
        Ok(())
    }

    /// Takes `payload` out of the peer's windows and returns its DATA frames (headers to write
    /// beside slices of the shared payload). Check [`Connection::send_window`] first: a payload
    /// larger than the window is refused whole, never cut at the window.
    pub fn send_data(
        &mut self,
        stream: u32,
        payload: Bytes,
        end_stream: bool,
    ) -> Result<DataFrames, SendError> {
        let i = self.sendable(stream)?;
        let len = i32::try_from(payload.len()).map_err(|_| SendError::Window)?;
        let entry = &mut self.streams[i];
        if len > entry.send_window || len > self.send_window {
            return Err(SendError::Window);
        }
        entry.send_window -= len;
        self.send_window -= len;
        let frames = DataFrames::new(stream, payload, self.peer_max_frame, end_stream);
        if end_stream {
            self.close_local(i);
        }
        Ok(frames)
    }

    /// Takes `len` bytes of DATA out of the peer's windows for `stream`, for frames the node
    /// writes itself (a broadcast's headers beside its shared payload, see
    /// [`frame::data_header`]): the same accounting as [`Connection::send_data`], no iterator.
    pub fn debit(&mut self, stream: u32, len: usize) -> Result<(), SendError> {
        let i = self.sendable(stream)?;
        let len = i32::try_from(len).map_err(|_| SendError::Window)?;
        let entry = &mut self.streams[i];
        if len > entry.send_window || len > self.send_window {
            return Err(SendError::Window);
        }
        entry.send_window -= len;
        self.send_window -= len;
        Ok(())
    }

    /// Whether the handshake is over: the preface and the peer's first SETTINGS came, and the
    /// peer acknowledged ours (until then the node holds the connection to its header
    /// timeout).
    pub fn settled(&self) -> bool {
        !matches!(self.state, State::Preface | State::FirstSettings) && self.decoder.acknowledged()
    }

    /// Whether the peer's preface and first SETTINGS came (a connection that is not
    /// [`Connection::settled`] then waits only for the acknowledgement of ours).
    pub fn opened(&self) -> bool {
        !matches!(self.state, State::Preface | State::FirstSettings)
    }

    /// Ends the connection with GOAWAY(`code`) (SETTINGS_TIMEOUT, when ours are never
    /// acknowledged); only the GOAWAY is left to send.
    pub fn abort(&mut self, code: super::ErrorCode) {
        if !self.is_failed() {
            self.fail(code);
        }
    }

    /// Bytes of DATA the peer's windows let `stream` send now (`None`: not open for sending).
    pub fn send_window(&self, stream: u32) -> Option<u32> {
        let entry = self.streams.get(self.find(stream)?)?;
        if entry.closed & LOCAL_CLOSED != 0 {
            return None;
        }
        let w = entry.send_window.min(self.send_window).max(0);
        Some(w as u32)
    }

    /// The peer's connection window for our DATA (may be negative after a SETTINGS change).
    pub fn connection_window(&self) -> i32 {
        self.send_window
    }

    /// Resets a stream (RST_STREAM), e.g. a request body past `--max-body` after its answer,
    /// with NO_ERROR (§8.1), or CANCEL when the node drops a stream.
    pub fn reset(&mut self, stream: u32, code: ErrorCode) {
        if let Some(i) = self.find(stream) {
            self.streams.remove(i);
            self.reset_last = stream;
            frame::write_rst_stream(stream, code, &mut self.out);
        }
    }

    /// Starts a graceful end (drain): GOAWAY(NO_ERROR) naming the last stream we accepted;
    /// later streams are ignored, open ones finish.
    pub fn go_away(&mut self) {
        if matches!(
            self.state,
            State::Open | State::FirstSettings | State::Preface
        ) {
            frame::write_goaway(self.last_stream, ErrorCode::NoError, &mut self.out);
            self.state = State::Draining;
        }
    }

    /// Bytes queued to send, in order (a SETTINGS first, then heads, ACKs, resets), as one
    /// buffer for the outbox; `None` when there are none.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        Some(Bytes::from(std::mem::take(&mut self.out)))
    }

    /// Bytes queued to send and not taken yet.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Streams open or half-closed.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether a connection error ended it (only the queued GOAWAY is left to send).
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// Heap bytes it holds now, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        self.partial.capacity()
            + self.out.capacity()
            + self.streams.capacity() * std::mem::size_of::<StreamEntry>()
            + self
                .block
                .as_ref()
                .map_or(0, |b| std::mem::size_of::<Block>() + b.bytes.capacity())
            + if self.decoder.holds_table() {
                self.decoder.table_size()
            } else {
                0
            }
    }

    fn sendable(&self, stream: u32) -> Result<usize, SendError> {
        if self.is_failed() {
            return Err(SendError::NotOpen);
        }
        let i = self.find(stream).ok_or(SendError::NotOpen)?;
        if self.streams[i].closed & LOCAL_CLOSED != 0 {
            return Err(SendError::NotOpen);
        }
        Ok(i)
    }

    fn close_local(&mut self, i: usize) {
        if let Some(entry) = self.streams.get_mut(i) {
            entry.closed |= LOCAL_CLOSED;
            if entry.closed == REMOTE_CLOSED | LOCAL_CLOSED {
                self.streams.remove(i);
                if self.streams.len() * 4 < self.streams.capacity() {
                    self.streams.shrink_to_fit();
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::h2::frame::{flag, kind};

    /// A client for the tests: writes frames as a peer would.
    pub(crate) struct Peer {
        /// The connection under test.
        pub conn: Connection,
        /// Its limits.
        pub limits: Limits,
        /// Events of the last feed.
        pub events: Vec<Event>,
        /// The coarse clock.
        pub now: u32,
    }

    pub(crate) fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Header {
            len: payload.len() as u32,
            kind,
            flags,
            stream,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// A GET head for `path`, HPACK without indexing.
    pub(crate) fn get(path: &str) -> Vec<u8> {
        let mut b = Vec::new();
        hpack::encode_field(b":method", b"GET", false, false, &mut b);
        hpack::encode_field(b":scheme", b"http", false, false, &mut b);
        hpack::encode_field(b":path", path.as_bytes(), false, true, &mut b);
        hpack::encode_field(b":authority", b"localhost", false, true, &mut b);
        b
    }

    impl Peer {
        /// A connection past the preface and SETTINGS exchange, its output drained.
        pub fn open() -> Peer {
            Self::open_with(Limits::default())
        }

        pub fn open_with(limits: Limits) -> Peer {
            let mut p = Self::fresh(limits);
            let mut hello = frame::PREFACE.to_vec();
            hello.extend(raw(kind::SETTINGS, 0, 0, &[]));
            hello.extend(raw(kind::SETTINGS, flag::ACK, 0, &[]));
            p.feed(&hello).unwrap();
            p.conn.take_output();
            p
        }

        pub fn fresh(limits: Limits) -> Peer {
            Peer {
                conn: Connection::new(&limits),
                limits,
                events: Vec::new(),
                now: 0,
            }
        }

        pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ErrorCode> {
            self.events.clear();
            self.conn
                .recv(bytes, self.now, &self.limits, &mut self.events)
        }

        pub fn send(
            &mut self,
            kind: u8,
            flags: u8,
            stream: u32,
            payload: &[u8],
        ) -> Result<(), ErrorCode> {
            self.feed(&raw(kind, flags, stream, payload))
        }

        /// A request head on `stream`; the first one opens with the size update our ACKed
        /// SETTINGS require.
        pub fn request(&mut self, stream: u32, end_stream: bool) -> Result<(), ErrorCode> {
            let mut block = if stream == 1 { vec![0x20] } else { Vec::new() };
            block.extend(get("/stream"));
            let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
            self.send(kind::HEADERS, flags, stream, &block)
        }

        /// The frames queued since the last call, as (header, payload).
        pub fn frames(&mut self) -> Vec<(Header, Vec<u8>)> {
            let out = self.conn.take_output().unwrap_or_default();
            let mut at = 0;
            let mut v = Vec::new();
            while at + 9 <= out.len() {
                let h = Header::parse(out[at..at + 9].try_into().unwrap());
                let end = at + 9 + h.len as usize;
                v.push((h, out[at + 9..end].to_vec()));
                at = end;
            }
            v
        }

        /// The GOAWAY code queued, if any.
        pub fn goaway(&mut self) -> Option<ErrorCode> {
            self.frames()
                .iter()
                .find(|(h, _)| h.kind == kind::GOAWAY)
                .map(|(_, p)| ErrorCode::from_u32(u32::from_be_bytes(p[4..8].try_into().unwrap())))
        }

        /// The RST_STREAM queued for `stream`, if any.
        pub fn rst(&mut self, stream: u32) -> Option<ErrorCode> {
            self.frames()
                .iter()
                .find(|(h, _)| h.kind == kind::RST_STREAM && h.stream == stream)
                .map(|(_, p)| ErrorCode::from_u32(u32::from_be_bytes(p[..4].try_into().unwrap())))
        }
    }

    /// A connection with streams 1 and 3 open for our DATA, some of their windows spent,
    /// and a HPACK table the peer filled: our limit of 0 is not acknowledged yet.
    fn busy() -> Peer {
        let mut p = Peer::fresh(Limits::default());
        let mut hello = frame::PREFACE.to_vec();
        hello.extend(raw(kind::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x80, 0]));
        p.feed(&hello).unwrap();
        // Indexed with incremental indexing: a field that lands in the table.
        let mut block = get("/stream");
        block.extend_from_slice(b"\x40\x06x-kept\x0cin the table");
        p.send(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block,
        )
        .unwrap();
        p.request(3, false).unwrap();
        p.conn.send_head(1, &[0x88], false).unwrap();
        p.conn.debit(1, 1000).unwrap();
        p.conn.debit(3, 10).unwrap();
        p.conn.take_output();
        p
    }

    #[test]
    fn a_connection_at_rest_goes_on_in_another_process_as_it_was() {
        let mut p = busy();
        let image = p.conn.export(&p.limits).unwrap();
        assert_eq!(image.streams.len(), 2);
        assert_eq!(image.peer_max_frame, 32_768);
        assert_eq!(image.decoder.entries.len(), 1, "the table travels");
        assert_eq!(image.decoder.pending, 0, "our SETTINGS wait for their ACK");
        let mut q = Peer::fresh(p.limits.clone());
        q.conn = Connection::import(image.clone(), &q.limits).unwrap();
        assert_eq!(q.conn.export(&q.limits), Ok(image));
        for c in [&p.conn, &q.conn] {
            // The connection's window binds both: 1 010 bytes of it are spent.
            assert_eq!(c.send_window(1), Some(65_535 - 1010));
            assert_eq!(c.send_window(3), Some(65_535 - 1010));
            assert_eq!(c.connection_window(), 65_535 - 1010);
        }
        // Both go on alike: a new stream whose head indexes the handed table; then our
        // SETTINGS are acknowledged and the next block must empty it.
        let mut block = get("/stream");
        block.push(0x80 | 62); // the dynamic table's newest entry
        for peer in [&mut p, &mut q] {
            peer.send(kind::HEADERS, flag::END_HEADERS, 5, &block)
                .unwrap();
            match &peer.events[..] {
                [Event::Request {
                    stream: 5, head, ..
                }] => {
                    assert_eq!(head.field(b"x-kept"), Some(&b"in the table"[..]));
                }
                other => panic!("{other:?}"),
            }
            peer.send(kind::SETTINGS, flag::ACK, 0, &[]).unwrap();
            assert_eq!(
                peer.send(kind::HEADERS, flag::END_HEADERS, 7, &get("/")),
                Err(ErrorCode::CompressionError),
                "the shrink is due"
            );
        }
    }

    #[test]
    fn only_a_connection_between_frames_with_nothing_queued_is_exported() {
        let p = Peer::fresh(Limits::default());
        assert_eq!(p.conn.export(&p.limits), Err(NotAtRest::NotOpen));
        let mut p = Peer::open();
        p.feed(&raw(kind::PING, 0, 0, &[0; 8])[..5]).unwrap();
        assert_eq!(p.conn.export(&p.limits), Err(NotAtRest::MidFrame));
        p.feed(&raw(kind::PING, 0, 0, &[0; 8])[5..]).unwrap();
        assert_eq!(p.conn.export(&p.limits), Err(NotAtRest::Output));
        p.conn.take_output();
        assert!(p.conn.export(&p.limits).is_ok());
        p.send(kind::HEADERS, 0, 1, &[0x20]).unwrap();
        assert_eq!(p.conn.export(&p.limits), Err(NotAtRest::MidFrame));
        let mut p = Peer::open();
        p.conn.go_away();
        p.conn.take_output();
        assert_eq!(p.conn.export(&p.limits), Err(NotAtRest::NotOpen));
    }

    #[test]
    fn an_image_no_connection_could_reach_is_refused() {
        let p = busy();
        let good = p.conn.export(&p.limits).unwrap();
        let limits = Limits::default();
        type Spoil = Box<dyn Fn(&mut Image)>;
        let bad: Vec<(&str, Spoil)> = vec![
            ("window", Box::new(|i| i.send_window = i32::MIN)),
            ("recv window", Box::new(|i| i.recv_window = i32::MIN)),
            ("advertised", Box::new(|i| i.advertised_window += 1)),
            ("peer window", Box::new(|i| i.peer_window = u32::MAX)),
            ("frame small", Box::new(|i| i.peer_max_frame = 100)),
            ("frame large", Box::new(|i| i.peer_max_frame = 1 << 24)),
            ("even last", Box::new(|i| i.last_stream = 4)),
            ("last too high", Box::new(|i| i.last_stream = u32::MAX)),
            ("order", Box::new(|i| i.streams.swap(0, 1))),
            ("even id", Box::new(|i| i.streams[0].id = 2)),
            ("after last", Box::new(|i| i.last_stream = 1)),
            (
                "stream window",
                Box::new(|i| i.streams[1].send_window = i32::MIN),
            ),
            (
                "closed",
                Box::new(|i| {
                    i.streams[0].remote_closed = true;
                    i.streams[0].local_closed = true;
                }),
            ),
            (
                "too many",
                Box::new(|i| {
                    let s = i.streams[1];
                    i.streams = (0..101)
                        .map(|n| StreamImage { id: 2 * n + 1, ..s })
                        .collect();
                    i.last_stream = 201;
                }),
            ),
            ("table size", Box::new(|i| i.decoder.max_size = 1 << 20)),
            ("table limit", Box::new(|i| i.decoder.limit = 1 << 20)),
            ("pending", Box::new(|i| i.decoder.pending = 1 << 20)),
            (
                "table over",
                Box::new(|i| {
                    i.decoder.entries.push((vec![b'a'; 4000], vec![b'b'; 100]));
                }),
            ),
        ];
        for (what, spoil) in bad {
            let mut image = good.clone();
            spoil(&mut image);
            assert!(Connection::import(image, &limits).is_err(), "{what}");
        }
        assert!(Connection::import(good, &limits).is_ok());
    }

    #[test]
    fn idle_footprint_fits_the_budget() {
        // Issue 28's budget: an idle h2c connection with one stream at most 512 B of user
        // space, its stream at most 128 B beyond the connection. This is the protocol's part.
        let mut p = Peer::open();
        p.request(1, true).unwrap();
        p.conn.take_output();
        p.events.clear();
        let inline = std::mem::size_of::<Connection>();
        let heap = p.conn.heap_bytes();
        let stream = std::mem::size_of::<StreamEntry>();
        let decoder = std::mem::size_of::<Decoder>();
        eprintln!(
            "Connection {inline} B inline (Decoder {decoder} B) + {heap} B heap; StreamEntry {stream} B"
        );
        assert!(inline <= 160, "Connection is {inline} B");
        assert!(stream <= 20, "StreamEntry is {stream} B");
        assert_eq!(
            heap, stream,
            "one stream entry and nothing else on the heap"
        );
        assert!(!p.conn.decoder.holds_table());
    }

    #[test]
    fn data_in_flight_on_a_stream_we_reset_is_ignored_but_counted_in_the_window() {
        // §5.1 "closed": a peer may have sent frames before it saw our RST_STREAM.
        let mut p = Peer::open();
        let mut block = vec![0x20];
        hpack::encode_field(b":method", b"POST", false, false, &mut block);
        hpack::encode_field(b":scheme", b"http", false, false, &mut block);
        hpack::encode_field(b":path", b"/broadcast", false, false, &mut block);
        p.send(kind::HEADERS, flag::END_HEADERS, 1, &block).unwrap();
        p.conn.reset(1, ErrorCode::NoError); // answered early: the body is not wanted
        assert_eq!(p.rst(1), Some(ErrorCode::NoError));
        let window = p.conn.recv_window;
        p.send(kind::DATA, 0, 1, &[b'x'; 100]).unwrap();
        assert_eq!(
            p.rst(1),
            None,
            "no STREAM_CLOSED for DATA that crossed our reset"
        );
        assert_eq!(p.conn.recv_window, window - 100, "still the connection's");
        // A stream that ended normally is another matter.
        p.request(3, true).unwrap();
        p.conn.send_head(3, &[0x88], true).unwrap();
        p.frames();
        p.send(kind::DATA, 0, 3, b"late").unwrap();
        assert_eq!(p.rst(3), Some(ErrorCode::StreamClosed));
    }

    #[test]
    fn a_64_kib_body_does_not_stall_at_the_initial_window() {
        let mut p = Peer::open();
        let mut block = vec![0x20];
        hpack::encode_field(b":method", b"POST", false, false, &mut block);
        hpack::encode_field(b":scheme", b"http", false, false, &mut block);
        hpack::encode_field(b":path", b"/broadcast", false, false, &mut block);
        hpack::encode_field(b"content-length", b"65537", false, false, &mut block);
        p.send(kind::HEADERS, flag::END_HEADERS, 1, &block).unwrap();
        // A sender that honours the windows it was given, opened by our WINDOW_UPDATEs.
        let (mut conn_window, mut stream_window) = (65_535i64, 65_535i64);
        let mut sent = 0usize;
        let mut got = 0usize;
        while sent < 65_537 {
            let n = (65_537 - sent)
                .min(16_384)
                .min(conn_window.min(stream_window) as usize);
            assert!(
                n > 0,
                "stalled at {sent} bytes: the window was never reopened"
            );
            let end = sent + n == 65_537;
            p.send(
                kind::DATA,
                if end { flag::END_STREAM } else { 0 },
                1,
                &vec![b'x'; n],
            )
            .unwrap();
            sent += n;
            conn_window -= n as i64;
            stream_window -= n as i64;
            for e in &p.events {
                if let Event::Data { data, .. } = e {
                    got += data.len();
                }
            }
            for (h, pl) in p.frames() {
                if h.kind == kind::WINDOW_UPDATE {
                    let inc = u32::from_be_bytes(pl[..4].try_into().unwrap()) as i64;
                    if h.stream == 0 {
                        conn_window += inc;
                    } else {
                        stream_window += inc;
                    }
                }
            }
        }
        assert_eq!(got, 65_537);
    }

    #[test]
    fn data_is_refused_past_the_peer_windows_and_split_at_its_frame_size() {
        let mut p = Peer::open();
        p.request(1, true).unwrap();
        let mut block = Vec::new();
        hpack::encode_status(200, &mut block);
        p.conn.send_head(1, &block, false).unwrap();
        let head = p.frames();
        assert_eq!(head[0].0.kind, kind::HEADERS);
        assert_eq!(head[0].1[0], 0x20, "the first block shrinks our table to 0");
        assert_eq!(p.conn.send_window(1), Some(65_535));
        let frames: Vec<_> = p
            .conn
            .send_data(1, Bytes::from(vec![1u8; 40_000]), false)
            .unwrap()
            .collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(p.conn.send_window(1), Some(25_535));
        assert_eq!(
            p.conn
                .send_data(1, Bytes::from(vec![1u8; 30_000]), false)
                .err(),
            Some(SendError::Window)
        );
        p.send(kind::WINDOW_UPDATE, 0, 1, &10_000u32.to_be_bytes())
            .unwrap();
        assert_eq!(p.events, [Event::Writable { stream: Some(1) }]);
        // The connection window, not the stream's, is now the smaller.
        assert_eq!(p.conn.send_window(1), Some(25_535));
        p.send(kind::WINDOW_UPDATE, 0, 0, &10_000u32.to_be_bytes())
            .unwrap();
        assert_eq!(p.conn.send_window(1), Some(35_535));
    }

    #[test]
    fn rapid_reset_ends_in_enhance_your_calm() {
        let mut p = Peer::open_with(Limits {
            max_resets: 10,
            ..Limits::default()
        });
        let mut calm = None;
        for i in 0..20u32 {
            let id = 2 * i + 1;
            let mut block = if id == 1 { vec![0x20] } else { Vec::new() };
            block.extend(get("/stream"));
            let mut bytes = raw(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                id,
                &block,
            );
            bytes.extend(raw(kind::RST_STREAM, 0, id, &8u32.to_be_bytes()));
            if p.feed(&bytes).is_err() {
                calm = Some(i);
                break;
            }
        }
        assert_eq!(calm, Some(10), "the eleventh reset in the window trips it");
        assert!(p.events.contains(&Event::Defended(Defence::RapidReset)));
        assert_eq!(p.goaway(), Some(ErrorCode::EnhanceYourCalm));
        // A new window forgives: the count is per window, not for life.
        let mut q = Peer::open_with(Limits {
            max_resets: 10,
            ..Limits::default()
        });
        for i in 0..20u32 {
            q.now = i; // one reset per second, 10 s windows: at most 10 per window
            let id = 2 * i + 1;
            q.request(id, true).unwrap();
            q.send(kind::RST_STREAM, 0, id, &8u32.to_be_bytes())
                .unwrap();
        }
    }

    #[test]
    fn a_continuation_flood_is_cut_off() {
        let mut p = Peer::open();
        p.send(kind::HEADERS, 0, 1, &[0x20]).unwrap();
        let mut result = Ok(());
        for _ in 0..=Limits::default().max_continuations {
            result = p.send(kind::CONTINUATION, 0, 1, &[]);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ErrorCode::EnhanceYourCalm));
        assert!(p
            .events
            .contains(&Event::Defended(Defence::ContinuationFlood)));
        // And in bytes: two 16 KiB fragments pass the block bound.
        let mut p = Peer::open();
        p.send(kind::HEADERS, 0, 1, &[0x20]).unwrap();
        p.send(kind::CONTINUATION, 0, 1, &[0x82; 16_384]).unwrap();
        assert_eq!(
            p.send(kind::CONTINUATION, 0, 1, &[0x82; 16_384]),
            Err(ErrorCode::EnhanceYourCalm)
        );
    }

    #[test]
    fn an_hpack_bomb_gets_431_and_the_connection_goes_on() {
        let mut p = Peer::open();
        let mut block = vec![0x20];
        block.extend(get("/stream"));
        // A 20 000-byte value: within the block bound, past the list bound. (With our table at
        // 0 a bomb cannot reference entries; the table-reference bomb is hpack.rs's test.)
        hpack::encode_field(b"x-big", &[b'a'; 20_000], false, false, &mut block);
        let mut bytes = raw(kind::HEADERS, flag::END_STREAM, 1, &block[..16_000]);
        bytes.extend(raw(
            kind::CONTINUATION,
            flag::END_HEADERS,
            1,
            &block[16_000..],
        ));
        p.feed(&bytes).unwrap();
        assert_eq!(
            p.events,
            [
                Event::Defended(Defence::HeaderList),
                Event::HeadTooLarge { stream: 1 }
            ]
        );
        p.request(3, true).unwrap();
        assert!(matches!(p.events[..], [Event::Request { stream: 3, .. }]));
    }

    #[test]
    fn ping_and_settings_floods_end_in_enhance_your_calm() {
        let mut p = Peer::open();
        let mut bytes = Vec::new();
        for _ in 0..=Limits::default().max_pings {
            bytes.extend(raw(kind::PING, 0, 0, &[0; 8]));
        }
        assert_eq!(p.feed(&bytes), Err(ErrorCode::EnhanceYourCalm));
        assert!(p.events.contains(&Event::Defended(Defence::PingFlood)));
        let mut p = Peer::open();
        let mut bytes = Vec::new();
        for _ in 0..=Limits::default().max_settings {
            bytes.extend(raw(kind::SETTINGS, 0, 0, &[]));
        }
        assert_eq!(p.feed(&bytes), Err(ErrorCode::EnhanceYourCalm));
        assert!(p.events.contains(&Event::Defended(Defence::SettingsFlood)));
    }

    #[test]
    fn a_window_update_flood_ends_in_enhance_your_calm() {
        let mut p = Peer::open_with(Limits {
            max_window_updates: 50,
            ..Limits::default()
        });
        let mut bytes = Vec::new();
        for _ in 0..51 {
            bytes.extend(raw(kind::WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()));
        }
        assert_eq!(p.feed(&bytes), Err(ErrorCode::EnhanceYourCalm));
        assert!(p
            .events
            .contains(&Event::Defended(Defence::WindowUpdateFlood)));
    }

    #[test]
    fn unread_control_replies_are_bounded() {
        let mut p = Peer::open_with(Limits {
            max_control_backlog: 100,
            ..Limits::default()
        });
        let mut bytes = Vec::new();
        for _ in 0..10 {
            bytes.extend(raw(kind::PING, 0, 0, &[0; 8]));
        }
        assert_eq!(p.feed(&bytes), Err(ErrorCode::EnhanceYourCalm));
        assert!(p.events.contains(&Event::Defended(Defence::ControlBacklog)));
    }

    #[test]
    fn empty_frames_are_counted() {
        let mut p = Peer::open();
        let mut bytes = Vec::new();
        for _ in 0..=Limits::default().max_idle_frames {
            bytes.extend(raw(kind::PRIORITY, 0, 3, &[0, 0, 0, 1, 16]));
        }
        assert_eq!(p.feed(&bytes), Err(ErrorCode::EnhanceYourCalm));
        assert!(p.events.contains(&Event::Defended(Defence::IdleFrameFlood)));
    }

    #[test]
    fn drain_lets_open_streams_finish_and_ignores_new_ones() {
        let mut p = Peer::open();
        p.request(1, false).unwrap();
        p.conn.go_away();
        let goaway = p.frames();
        assert_eq!(goaway[0].0.kind, kind::GOAWAY);
        assert_eq!(
            goaway[0].1[..8],
            [0, 0, 0, 1, 0, 0, 0, 0],
            "last stream 1, NO_ERROR"
        );
        p.request(3, true).unwrap();
        assert!(p.events.is_empty(), "a stream past our GOAWAY is ignored");
        p.send(kind::DATA, flag::END_STREAM, 1, b"body").unwrap();
        assert!(matches!(
            p.events[..],
            [Event::Data {
                stream: 1,
                end_stream: true,
                ..
            }]
        ));
    }

    #[test]
    fn the_preface_is_told_apart_from_http_1() {
        assert!(Connection::is_preface_start(b"PRI * HT"));
        assert!(Connection::is_preface_start(frame::PREFACE));
        assert!(!Connection::is_preface_start(b"GET / HTTP/1.1\r\n"));
        assert!(!Connection::is_preface_start(b"POST /broadcast"));
    }

    #[test]
    fn bytes_split_anywhere_read_the_same() {
        let mut whole = Peer::fresh(Limits::default());
        let mut input = frame::PREFACE.to_vec();
        input.extend(raw(kind::SETTINGS, 0, 0, &[]));
        input.extend(raw(kind::SETTINGS, flag::ACK, 0, &[]));
        let mut block = vec![0x20];
        block.extend(get("/a"));
        input.extend(raw(kind::HEADERS, flag::END_HEADERS, 1, &block));
        input.extend(raw(kind::DATA, flag::END_STREAM, 1, b"hello"));
        whole.feed(&input).unwrap();
        let want = whole.events.clone();
        for cut in 1..input.len() {
            let mut split = Peer::fresh(Limits::default());
            let mut events = Vec::new();
            split.feed(&input[..cut]).unwrap();
            events.append(&mut split.events);
            split.feed(&input[cut..]).unwrap();
            events.append(&mut split.events);
            assert_eq!(events, want, "cut at {cut}");
            assert_eq!(
                split.conn.partial.capacity(),
                0,
                "nothing kept after a whole frame"
            );
        }
    }

    proptest::proptest! {
        /// An image from a hostile or broken predecessor: any fields. Import never panics,
        /// and what it takes is a connection that gives the same image back.
        #[test]
        fn any_image_is_refused_or_taken_whole(
            windows in proptest::array::uniform4(proptest::num::i32::ANY),
            peer in proptest::array::uniform3(0u32..=(1 << 25)),
            ids in proptest::collection::vec((0u32..64, proptest::num::i32::ANY, 0u8..4), 0..8),
            entries in proptest::collection::vec((0usize..600, 0usize..600), 0..4),
            sizes in proptest::array::uniform3(proptest::prop_oneof![0u32..5000, proptest::strategy::Just(u32::MAX)]),
            flags in proptest::array::uniform2(proptest::bool::ANY),
        ) {
            let limits = Limits { max_streams: 4, ..Limits::default() };
            let image = Image {
                advertised_window: if peer[0] % 8 == 0 { 65_536 } else { 65_535 },
                send_window: windows[0],
                recv_window: windows[1],
                peer_window: peer[1],
                peer_max_frame: peer[2],
                last_stream: peer[0] % 128,
                head_sent: flags[0],
                streams: ids
                    .iter()
                    .map(|&(id, w, closed)| StreamImage {
                        id,
                        send_window: w,
                        recv_window: windows[2],
                        body_left: windows[3] as u32,
                        remote_closed: closed & 1 != 0,
                        local_closed: closed & 2 != 0,
                    })
                    .collect(),
                decoder: hpack::DecoderImage {
                    entries: entries
                        .iter()
                        .map(|&(n, v)| (vec![b'n'; n], vec![b'v'; v]))
                        .collect(),
                    max_size: sizes[0],
                    limit: sizes[1],
                    pending: sizes[2],
                    update_due: flags[1],
                },
            };
            if let Ok(conn) = Connection::import(image.clone(), &limits) {
                proptest::prop_assert_eq!(conn.export(&limits), Ok(image));
            }
        }
    }
}
