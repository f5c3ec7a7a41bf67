//! The new process's side of a hand-over (`handover::take`, what a successor runs before it
//! serves) against a hostile predecessor on a socket pair: every crafted message is refused
//! with one line, the predecessor is told why, nothing panics, and no allocation is sized by
//! a count the peer claimed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use sse_edge::node::handover::wire::{
    H2Conn, H2Stream, HistoryHead, HistoryPart, Kind, Message, Offer, Record, State, StreamState,
    VERSION,
};
use sse_edge::node::handover::{self, Channel, Limits, Outcome};
use sse_edge::wire::event_id::EventId;
use sse_edge::wire::h2::conn::{Image, StreamImage};
use sse_edge::wire::h2::hpack::DecoderImage;

/// Forwards to the system allocator, remembering the calling thread's largest request.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The new process's own flags, as a small node has them.
const LIMITS: Limits = Limits {
    history_bytes: 64 << 10,
    max_streams: 1000,
    max_connections: 1000,
    h2_max_streams: 100,
};

/// The most any one allocation of the taking side may be: its packet buffer (60 KiB) and
/// what a few small messages need, nowhere near what a claimed count would ask.
const MOST_ONE_ALLOCATION: usize = 1 << 20;

/// What the predecessor sends once the version is agreed, and with how many descriptors.
type Script = Vec<(Message, usize)>;

/// What the predecessor saw: the refusal the new process sent, if any.
struct Seen {
    refusal: Option<String>,
}

/// Plays the old process: agrees, offers, then sends `script` (acknowledged batches are
/// waited for), and reads what comes back until the new process closes.
fn predecessor(theirs: Channel, script: Script) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen { refusal: None };
        match theirs.recv() {
            Ok((Message::Hello(_), _)) => {}
            other => panic!("expected Hello, got {other:?}"),
        }
        theirs
            .send(&Message::Accept { version: VERSION }, &[])
            .unwrap();
        theirs
            .send(
                &Message::Offer(Offer {
                    history_bytes: 64 << 10,
                }),
                &[],
            )
            .unwrap();
        // Sockets to lend: real TCP connections, or a Unix socket where the script says so.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut answers = Vec::new();
        for (message, fds) in script {
            let fds: Vec<RawFd> = if fds == usize::MAX {
                vec![unix.as_raw_fd()]
            } else {
                tcp.iter().take(fds).map(|s| s.as_raw_fd()).collect()
            };
            if theirs.send(&message, &fds).is_err() {
                break;
            }
            if matches!(message, Message::Connections(_)) {
                match theirs.recv() {
                    Ok((Message::Ack { .. }, _)) => {}
                    other => {
                        answers.push(other);
                        break;
                    }
                }
            }
        }
        loop {
            match theirs.recv() {
                Ok((Message::Refuse { reason }, _)) => seen.refusal = Some(reason),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for answer in answers {
            if let Ok((Message::Refuse { reason }, _)) = answer {
                seen.refusal = Some(reason);
            }
        }
        seen
    })
}

/// Runs the new process's side against `script`: its error, and the predecessor's view.
fn take_from(script: Script) -> (String, Seen) {
    let (ours, theirs) = Channel::pair().unwrap();
    ours.set_timeout(Duration::from_secs(30)).unwrap();
    theirs.set_timeout(Duration::from_secs(30)).unwrap();
    let old = predecessor(theirs, script);
    LARGEST.with(|l| l.set(0));
    let outcome = handover::take(&ours, &LIMITS, |_| {});
    let largest = LARGEST.with(Cell::get);
    drop(ours);
    let seen = old.join().unwrap();
    assert!(
        largest <= MOST_ONE_ALLOCATION,
        "one allocation of {largest} bytes"
    );
    match outcome {
        Ok(Outcome::Taken(_)) => panic!("taken"),
        Ok(Outcome::Refused(why)) => panic!("refused by the old process: {why}"),
        Err(why) => (why, seen),
    }
}

fn state(connections: u32, history: Option<HistoryHead>) -> Message {
    Message::State(State {
        last_id: EventId::local(10),
        epoch: None,
        history,
        heartbeats: 0,
        connections,
    })
}

fn stream(topics: Vec<String>) -> Record {
    Record {
        shard: 0,
        tail: Bytes::new(),
        kind: Kind::Stream(StreamState {
            topics,
            after: EventId::local(10),
            announced: EventId::local(10),
            replaying: false,
            gap: None,
            losing_ms: None,
            expires: None,
        }),
    }
}

/// One stream with `topics`, after a state announcing it.
fn one_stream(topics: Vec<String>) -> Script {
    vec![
        (state(1, None), 0),
        (Message::Connections(vec![stream(topics)]), 1),
    ]
}

fn history(parts: u32, bytes: u64) -> Option<HistoryHead> {
    Some(HistoryHead {
        forgotten_through: EventId::ZERO,
        parts,
        bytes,
    })
}

fn refused(script: Script, why: &str) {
    let (err, seen) = take_from(script);
    assert!(err.contains(why), "{err:?} should say {why:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert_eq!(
        seen.refusal.as_deref(),
        Some(err.as_str()),
        "the predecessor is told why"
    );
}

#[test]
fn a_state_announcing_four_billion_connections_is_refused_before_anything_is_reserved() {
    refused(vec![(state(u32::MAX, None), 0)], "open-files limit");
}

#[test]
fn a_history_larger_than_this_process_takes_is_refused_before_it_comes() {
    refused(
        vec![(state(0, history(1, u64::MAX)), 0)],
        "more than this process takes",
    );
    refused(
        vec![(state(0, history(u32::MAX, 1 << 20)), 0)],
        "more history parts",
    );
}

#[test]
fn a_batch_claiming_more_connections_than_sockets_is_refused() {
    refused(
        vec![
            (state(2, None), 0),
            (
                Message::Connections(vec![stream(vec!["a".into()]), stream(vec!["b".into()])]),
                1,
            ),
        ],
        "2 connections came with 1 sockets",
    );
    // And more connections than the state announced.
    refused(
        vec![
            (state(1, None), 0),
            (
                Message::Connections(vec![stream(vec!["a".into()]), stream(vec!["b".into()])]),
                2,
            ),
        ],
        "more than the 1 connections announced",
    );
}

#[test]
fn a_descriptor_that_is_not_a_tcp_connection_is_refused() {
    refused(
        vec![
            (state(1, None), 0),
            (
                Message::Connections(vec![stream(vec!["a".into()])]),
                usize::MAX,
            ),
        ],
        "not a TCP connection",
    );
}

#[test]
fn a_stream_topic_is_checked_as_a_request_topic() {
    refused(
        one_stream(vec!["a\nb".into()]),
        "topic must be 1-128 characters",
    );
    refused(
        one_stream(vec!["t".repeat(129)]),
        "topic must be 1-128 characters",
    );
    refused(
        one_stream((0..33).map(|i| format!("t{i}")).collect()),
        "at most 32 topics per stream",
    );
}

#[test]
fn a_history_topic_or_frame_is_checked_as_a_request_would_make_it() {
    let part = |topic: &str, frame: &'static [u8], index: u32| {
        Message::History(HistoryPart {
            topics: vec![(topic.into(), EventId::ZERO)],
            frames: vec![(EventId::local(3), index, Bytes::from_static(frame))],
        })
    };
    let good = b"id: 3\ndata: x\n\n";
    refused(
        vec![(state(0, history(1, 4096)), 0), (part("a\nb", good, 0), 0)],
        "topic must be 1-128 characters",
    );
    // A frame pointing at a topic the part does not name.
    refused(
        vec![(state(0, history(1, 4096)), 0), (part("t", good, 1), 0)],
        "names no topic",
    );
    // A frame that would put a field of its own into every stream.
    refused(
        vec![
            (state(0, history(1, 4096)), 0),
            (part("t", b"id: 3\nretry: 1\ndata: x\n\n", 0), 0),
        ],
        "is not one event",
    );
}

#[test]
fn a_truncated_message_is_refused() {
    // A Connections message that stops in the middle of its first record: the channel
    // carries bytes as sent, so craft them by cutting a real message.
    let whole = Message::Connections(vec![stream(vec!["a".into()])]).encode();
    let cut = whole[..whole.len() - 3].to_vec();
    let (ours, theirs) = Channel::pair().unwrap();
    ours.set_timeout(Duration::from_secs(30)).unwrap();
    let old = std::thread::spawn(move || {
        let _ = theirs.recv();
        theirs
            .send(&Message::Accept { version: VERSION }, &[])
            .unwrap();
        theirs
            .send(&Message::Offer(Offer { history_bytes: 0 }), &[])
            .unwrap();
        let _ = theirs.recv();
        theirs.send(&state(1, None), &[]).unwrap();
        theirs.send_bytes(&cut, &[]).unwrap();
        let mut refusal = None;
        while let Ok((message, _)) = theirs.recv() {
            if let Message::Refuse { reason } = message {
                refusal = Some(reason);
            }
        }
        refusal
    });
    let err = match handover::take(&ours, &LIMITS, |_| {}) {
        Err(err) => err,
        Ok(other) => panic!("{other:?}"),
    };
    drop(ours);
    assert!(err.contains("cut short"), "{err}");
    assert_eq!(old.join().unwrap().as_deref(), Some(err.as_str()));
}

/// An h2c connection with stream 1 open, carrying it on topic "a", spoiled by `spoil`.
fn h2c(spoil: impl FnOnce(&mut H2Conn)) -> Script {
    let Kind::Stream(carried) = stream(vec!["a".into()]).kind else {
        unreachable!()
    };
    let mut h2 = H2Conn {
        conn: Image {
            advertised_window: 65_535,
            send_window: 65_535,
            recv_window: 65_535,
            peer_window: 65_535,
            peer_max_frame: 16_384,
            last_stream: 1,
            head_sent: true,
            streams: vec![StreamImage {
                id: 1,
                send_window: 65_535,
                recv_window: 65_535,
                body_left: u32::MAX,
                remote_closed: true,
                local_closed: false,
            }],
            decoder: DecoderImage {
                entries: Vec::new(),
                max_size: 0,
                limit: 0,
                pending: u32::MAX,
                update_due: false,
            },
        },
        streams: vec![H2Stream {
            id: 1,
            starved: false,
            state: carried,
        }],
    };
    spoil(&mut h2);
    vec![
        (state(1, None), 0),
        (
            Message::Connections(vec![Record {
                shard: 0,
                tail: Bytes::new(),
                kind: Kind::H2(h2),
            }]),
            1,
        ),
    ]
}

#[test]
fn an_h2c_connection_no_connection_could_reach_is_refused() {
    // Windows past 2^31-1, a frame size past 2^24-1, ids out of order, a table larger than
    // the default, a stream the connection does not have open, topics as a request's.
    refused(
        h2c(|h| h.conn.send_window = i32::MIN),
        "window out of range",
    );
    refused(
        h2c(|h| h.conn.streams[0].recv_window = i32::MIN),
        "window out of range",
    );
    refused(h2c(|h| h.conn.peer_max_frame = u32::MAX), "frame size");
    refused(h2c(|h| h.conn.last_stream = 0), "never opened");
    refused(h2c(|h| h.conn.last_stream = u32::MAX), "not a client's");
    refused(
        h2c(|h| {
            let s = h.conn.streams[0];
            h.conn.streams = (0..101)
                .map(|i| StreamImage { id: 2 * i + 1, ..s })
                .collect();
            h.conn.last_stream = 201;
        }),
        "--h2-max-streams",
    );
    refused(
        h2c(|h| {
            h.conn.decoder.max_size = 4096;
            h.conn.decoder.entries = vec![(vec![b'n'; 4000], vec![b'v'; 100])];
        }),
        "HPACK table larger",
    );
    refused(
        h2c(|h| h.conn.decoder.limit = u32::MAX - 1),
        "HPACK table size",
    );
    refused(h2c(|h| h.streams[0].id = 3), "not open");
    refused(
        h2c(|h| h.conn.streams[0].local_closed = true),
        "a closed HTTP/2 stream",
    );
    refused(
        h2c(|h| {
            h.conn.streams[0].remote_closed = false;
            h.conn.streams[0].local_closed = true;
        }),
        "not open",
    );
    refused(h2c(|h| h.streams.push(h.streams[0].clone())), "named twice");
    refused(
        h2c(|h| h.streams[0].state.topics = vec!["a\nb".into()]),
        "topic must be",
    );
}

#[test]
fn an_h2c_record_claiming_more_entries_than_its_bytes_is_refused_before_anything_is_reserved() {
    // The decoder's entry count (a u16) claims 65 535 entries in a message of a few bytes:
    // refused by the count check, nothing sized by it (the allocation bound of `take_from`).
    let script = h2c(|_| {});
    let Message::Connections(records) = &script[1].0 else {
        unreachable!()
    };
    let bytes = Message::Connections(records.clone()).encode();
    // Tag, count, shard, empty tail, kind, the connection's seven fields, one stream entry.
    let entries = 1 + 4 + 2 + 4 + 1 + (6 * 4 + 1) + 2 + 17;
    let mut spoiled = bytes.clone();
    spoiled[entries..entries + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(Message::decode(&spoiled).is_err());
    let (ours, theirs) = Channel::pair().unwrap();
    ours.set_timeout(Duration::from_secs(30)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let old = std::thread::spawn(move || {
        let _ = theirs.recv();
        theirs
            .send(&Message::Accept { version: VERSION }, &[])
            .unwrap();
        theirs
            .send(&Message::Offer(Offer { history_bytes: 0 }), &[])
            .unwrap();
        let _ = theirs.recv();
        theirs.send(&state(1, None), &[]).unwrap();
        theirs.send_bytes(&spoiled, &[lent.as_raw_fd()]).unwrap();
        let mut refusal = None;
        while let Ok((message, _)) = theirs.recv() {
            if let Message::Refuse { reason } = message {
                refusal = Some(reason);
            }
        }
        refusal
    });
    LARGEST.with(|l| l.set(0));
    let err = match handover::take(&ours, &LIMITS, |_| {}) {
        Err(err) => err,
        Ok(other) => panic!("{other:?}"),
    };
    let largest = LARGEST.with(Cell::get);
    drop(ours);
    assert!(err.contains("a count larger than the message"), "{err}");
    assert!(
        largest <= MOST_ONE_ALLOCATION,
        "one allocation of {largest}"
    );
    assert_eq!(old.join().unwrap().as_deref(), Some(err.as_str()));
}
