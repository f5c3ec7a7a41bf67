//! Handing live connections to the node's next process (`SIGUSR2`), so an upgrade costs no
//! stream a reconnect.
//!
//! The new binary is started with the listening sockets inherited ([`crate::node::upgrade`]) and
//! one end of a Unix socket ([`Channel`]). Then:
//!
//! 0. **Offer.** The new process says [`Hello`] with the versions it speaks; the old one
//!    accepts one and offers what it keeps (its history's budget). The new process answers
//!    [`Message::Ready`] if it can take that (and says the largest message it gathers), or
//!    refuses. Nothing has paused yet: a new binary that fails to start, refuses, dies or
//!    stalls until here costs no request and no event.
//! 1. **Prepare.** The old process stops accepting (connections wait in the listeners'
//!    backlog, none is refused), lets requests in progress finish ([`Step::Settle`]), stops
//!    recording events ([`crate::delivery::hub::Hub::freeze`]: every event before that is in the
//!    shards' inboxes, every one after is the successor's), and has each shard detach what
//!    can be handed over ([`Step::Detach`]): plain streams and connections between
//!    requests, deregistered from its epoll, flushed once, and described: topics, where the
//!    stream stands, its losses, its token's expiry and the bytes it still had queued. The
//!    state goes over first (the last id), then the embedded broker's history in parts of
//!    at most a mebibyte, each standing alone, then the connections in batches of at most
//!    253 descriptors, each acknowledged before the next. The new process judges each
//!    message against its own limits before it takes it ([`intake`]), imports the history
//!    part by part into its own (so it never holds more than its own `--history-bytes` of
//!    it), and writes nothing yet.
//! 2. **Commit.** Once the new process says it holds them all, the old one sends
//!    [`Message::Commit`] and forgets them without a word (closing its copy of a socket the
//!    other process also holds sends nothing to the peer). The new process installs them in
//!    its shards, writes each stream's queued bytes first and goes on after the last id;
//!    it accepts from then on. The old process drains what it kept (TLS streams) and exits.
//!
//! Anything failing before the commit (the new process dies, refuses, stalls or answers
//! nonsense) calls the hand-over off: the old process takes its connections back
//! ([`Step::Abort`]) the moment it knows, records events again, accepts again, and stops the
//! new one. No stream noticed. Whichever side gives up tells the other why
//! ([`Message::Refuse`]), so both logs say it in one line. What the shards do at each step
//! is in `shard/handover.rs`.

pub mod channel;
pub mod intake;
pub mod wire;

use std::ops::Range;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::delivery::history::HistoryImage;
use crate::delivery::hub::Snapshot;
pub use channel::Channel;
pub use intake::{Intake, Limits};
use wire::{
    connections_len, plan_history, record_len, Hello, HistoryHead, Message, Offer, Record, State,
    BATCH, HISTORY_PART, MIN_MESSAGE, MIN_VERSION, VERSION,
};

/// How long requests in progress may take to finish once a hand-over starts; those still
/// unfinished then are closed (the listeners are not accepting meanwhile).
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long either side waits for the other's next message.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The largest message the old process gathers from the new one: those are a few bytes,
/// a refusal one line.
pub const ANSWER_MESSAGE: usize = 64 << 10;
/// The most of a peer's refusal shown in a log line.
const MAX_REASON: usize = 300;

/// A step of the hand-over, as a shard is told it through its inbox.
#[derive(Debug)]
pub enum Step {
    /// Stop accepting; say so (with the shard's id) once no request is in progress.
    Settle(Sender<usize>),
    /// The hub records no more events: detach every connection that can be handed over and
    /// send their descriptions.
    Detach(Sender<Vec<Outgoing>>),
    /// The successor holds them: forget them, and drain what is left.
    Commit,
    /// The hand-over is off: take them back and accept again.
    Abort,
}

/// A connection a shard detached, on its way to the successor. The shard still owns the
/// socket (it takes it back on [`Step::Abort`]); `fd` is only lent for the sending.
#[derive(Debug)]
pub struct Outgoing {
    /// The socket.
    pub fd: RawFd,
    /// What the successor needs to go on with it.
    pub record: Record,
}

/// What the old process's side needs of its node: its shards and hub, step by step
/// (`server.rs` tells the shards through their inboxes).
pub trait Giver {
    /// The budget the history that would be handed over is kept in (`--history-bytes`), 0
    /// when none is (a cluster node's is in Redis).
    fn history_bytes(&self) -> u64;
    /// Stops accepting and waits (up to [`SETTLE`] and a margin) until no request is in
    /// progress on any shard.
    fn settle(&self) -> Result<(), String>;
    /// Stops recording events; returns where the node stands (with the embedded broker's
    /// history).
    fn freeze(&self) -> Snapshot;
    /// Has every shard detach what can be handed over.
    fn detach(&self) -> Result<Vec<Outgoing>, String>;
    /// The successor holds them: the shards forget them.
    fn commit(&self);
    /// Called off: records events again, and the shards take everything back.
    fn abort(&self);
}

/// What the old process handed over.
#[derive(Debug)]
pub struct Given {
    /// Connections handed over (streams among them).
    pub connections: usize,
    /// Streams among them.
    pub streams: usize,
    /// From the first step to the successor's commit: how long accepting and delivery paused.
    pub paused: Duration,
}

/// The old process's side, once the new one said `hello`: agree on a version, offer what
/// this process keeps, and once the new one can take it, hand every connection over. On
/// failure before the commit everything is taken back at once and the error says why in
/// one line; the caller stops the new process.
pub fn give(channel: &Channel, hello: &Hello, node: &impl Giver) -> Result<Given, String> {
    let Some(version) = wire::agree((VERSION, VERSION), hello) else {
        let reason = format!(
            "this binary speaks hand-over version {VERSION}, the new one {}..={}",
            hello.min, hello.max
        );
        let _ = channel.send(
            &Message::Refuse {
                reason: reason.clone(),
            },
            &[],
        );
        return Err(reason);
    };
    channel
        .send(&Message::Accept { version }, &[])
        .map_err(|e| format!("cannot answer the new process: {e}"))?;
    // Nothing pauses before the new process said it can take what this one keeps: a
    // successor that refuses, dies or stalls here costs no stream a moment.
    let offer = Offer {
        history_bytes: node.history_bytes(),
    };
    send(channel, &Message::Offer(offer), &[])?;
    let max_message = match expect(channel)? {
        Message::Ready { max_message } if max_message as usize >= MIN_MESSAGE => {
            max_message as usize
        }
        Message::Ready { max_message } => {
            return Err(format!(
                "the new process takes messages of at most {max_message} bytes, fewer than {MIN_MESSAGE}"
            ))
        }
        other => return Err(unexpected("Ready", &other)),
    };
    let started = Instant::now();
    match prepare(channel, node, max_message) {
        Ok((connections, streams)) => {
            // From here on the streams are the new process's, whatever happens to it.
            node.commit();
            let paused = started.elapsed();
            match channel.recv() {
                Ok((Message::Serving, _)) => {}
                Ok((other, _)) => warn!("hand-over: expected Serving, got {}", other.name()),
                Err(e) => warn!("hand-over: the new process did not say it serves: {e}"),
            }
            Ok(Given {
                connections,
                streams,
                paused,
            })
        }
        Err(why) => {
            // Released the moment the failure is known, before the new process is stopped.
            node.abort();
            let _ = channel.send(
                &Message::Refuse {
                    reason: why.clone(),
                },
                &[],
            );
            Err(why)
        }
    }
}

/// Phase one and the commit message: on success the new process holds every connection
/// detached and has been told they are its own.
fn prepare(
    channel: &Channel,
    node: &impl Giver,
    max_message: usize,
) -> Result<(usize, usize), String> {
    node.settle()?;
    // The new process may have gone, or refused, while requests finished: no pause then.
    heard_nothing(channel)?;
    let snapshot = node.freeze();
    let outgoing = node.detach()?;
    let streams = outgoing.iter().map(|o| o.record.streams()).sum();
    let history = match &snapshot.history {
        None => None,
        Some(image) => {
            let plan = plan_history(image, HISTORY_PART, max_message).map_err(|e| e.to_string())?;
            let parts = u32::try_from(plan.parts())
                .map_err(|_| "the history has more parts than a hand-over counts".to_owned())?;
            Some((image, plan, parts))
        }
    };
    let batches = batches(&outgoing, max_message)?;
    let state = State {
        last_id: snapshot.last_id,
        epoch: snapshot.epoch.clone(),
        history: history.as_ref().map(|(image, plan, parts)| HistoryHead {
            forgotten_through: image.forgotten_through,
            parts: *parts,
            bytes: plan.bytes(),
        }),
        heartbeats: snapshot.heartbeats,
        connections: u32::try_from(outgoing.len())
            .map_err(|_| "more connections than a hand-over counts".to_owned())?,
    };
    send(channel, &Message::State(state), &[])?;
    if let Some((image, plan, _)) = &history {
        // No acknowledgement per part: the socket's buffer paces them, and a new process
        // that refuses one says so and closes, which the next send meets.
        for i in 0..plan.parts() {
            send(channel, &Message::History(plan.part(image, i)), &[])?;
        }
    }
    let mut taken = 0;
    for range in batches {
        let batch = outgoing.get(range).unwrap_or_default();
        let fds: Vec<RawFd> = batch.iter().map(|o| o.fd).collect();
        let records = batch.iter().map(|o| o.record.clone()).collect();
        send(channel, &Message::Connections(records), &fds)?;
        taken += batch.len();
        match expect(channel)? {
            Message::Ack { taken: t } if t as usize == taken => {}
            other => return Err(unexpected("Ack", &other)),
        }
    }
    send(channel, &Message::End, &[])?;
    match expect(channel)? {
        Message::Prepared { connections } if connections as usize == taken => {}
        other => return Err(unexpected("Prepared", &other)),
    }
    send(channel, &Message::Commit, &[])?;
    Ok((outgoing.len(), streams))
}

/// Cuts the connections into batches of at most [`BATCH`] (one `SCM_RIGHTS` message), each
/// at most `max_message` bytes.
fn batches(outgoing: &[Outgoing], max_message: usize) -> Result<Vec<Range<usize>>, String> {
    let mut batches = Vec::new();
    let (mut from, mut len) = (0, connections_len(0));
    for (i, o) in outgoing.iter().enumerate() {
        let add = record_len(&o.record);
        if i > from && (i - from == BATCH || len.saturating_add(add) > max_message) {
            batches.push(from..i);
            (from, len) = (i, connections_len(0));
        }
        if connections_len(add) > max_message {
            return Err(format!(
                "a connection with {} bytes queued does not fit in a hand-over message of {max_message} bytes",
                o.record.tail.len()
            ));
        }
        len += add;
    }
    if from < outgoing.len() {
        batches.push(from..outgoing.len());
    }
    Ok(batches)
}

/// What the new process took over.
#[derive(Debug)]
pub struct Taken {
    /// Where the node's ids stood.
    pub state: State,
    /// The connections, with their sockets.
    pub connections: Vec<(Record, OwnedFd)>,
    /// From `hello` to the commit.
    pub took: Duration,
}

/// How the new process's side ended.
#[derive(Debug)]
pub enum Outcome {
    /// Everything handed over is ours.
    Taken(Taken),
    /// The old process refused (another hand-over version): serve without its connections.
    Refused(String),
}

/// The new process's side, before its shards run: say hello, take the state, the history
/// (each part goes to `import` as it comes, judged first) and every connection, and return
/// them once the old process committed. Everything the old process sends is held to
/// `limits` ([`Intake`]); what fails is refused with one line, which the old process is
/// told too. An error means the old process keeps everything; this process should exit.
pub fn take(
    channel: &Channel,
    limits: &Limits,
    mut import: impl FnMut(HistoryImage),
) -> Result<Outcome, String> {
    let started = Instant::now();
    let (min, max) = spoken();
    let hello = Hello {
        min,
        max,
        pid: std::process::id(),
    };
    send(channel, &Message::Hello(hello), &[])?;
    match expect(channel)? {
        Message::Accept { version } if (min..=max).contains(&version) => {
            info!(
                version,
                "hand-over: the running process accepted; taking over"
            );
        }
        Message::Refuse { reason } => return Ok(Outcome::Refused(one_line(&reason))),
        other => return Err(unexpected("Accept", &other)),
    }
    #[cfg(debug_assertions)]
    stall_if_asked();
    match take_all(channel, limits, &mut import) {
        Ok((state, connections)) => Ok(Outcome::Taken(Taken {
            state,
            connections,
            took: started.elapsed(),
        })),
        Err(why) => {
            // The old process keeps everything either way; this tells it why at once.
            let _ = channel.send(
                &Message::Refuse {
                    reason: why.clone(),
                },
                &[],
            );
            Err(why)
        }
    }
}

/// [`take`] once the version is agreed.
fn take_all(
    channel: &Channel,
    limits: &Limits,
    import: &mut impl FnMut(HistoryImage),
) -> Result<(State, Vec<(Record, OwnedFd)>), String> {
    let offer = match expect(channel)? {
        Message::Offer(offer) => offer,
        other => return Err(unexpected("Offer", &other)),
    };
    intake::offer(limits, &offer)?;
    let max_message = u32::try_from(channel.max_message()).unwrap_or(u32::MAX);
    send(channel, &Message::Ready { max_message }, &[])?;
    let state = match expect(channel)? {
        Message::State(state) => state,
        other => return Err(unexpected("State", &other)),
    };
    let mut intake = Intake::new(limits, &state)?;
    while intake.wants_history() {
        match expect(channel)? {
            Message::History(part) => import(intake.history(part)?),
            other => return Err(unexpected("History", &other)),
        }
    }
    // The announced count is checked, but sockets are only reserved for as they come.
    let mut connections = Vec::with_capacity((state.connections as usize).min(BATCH));
    loop {
        let (message, fds) = channel
            .recv()
            .map_err(|e| format!("the old process stopped handing over: {e}"))?;
        match message {
            Message::Connections(mut records) => {
                if records.len() != fds.len() {
                    return Err(format!(
                        "{} connections came with {} sockets",
                        records.len(),
                        fds.len()
                    ));
                }
                check_sockets(&fds)?;
                intake.connections(&mut records)?;
                connections.extend(records.into_iter().zip(fds));
                let taken = u32::try_from(connections.len()).unwrap_or(u32::MAX);
                send(channel, &Message::Ack { taken }, &[])?;
            }
            Message::End if fds.is_empty() => {
                intake.end()?;
                break;
            }
            other if !fds.is_empty() => return Err(format!("{} came with sockets", other.name())),
            other => return Err(unexpected("Connections or End", &other)),
        }
    }
    // Debug builds: die holding every socket, before saying so (tests prove the old process
    // then takes them all back).
    #[cfg(debug_assertions)]
    if std::env::var_os("SSE_EDGE_TEST_HANDOVER_DIE").is_some() {
        std::process::exit(3);
    }
    let count = u32::try_from(connections.len()).unwrap_or(u32::MAX);
    send(channel, &Message::Prepared { connections: count }, &[])?;
    match expect(channel)? {
        Message::Commit => {}
        other => return Err(unexpected("Commit", &other)),
    }
    Ok((state, connections))
}

/// Refuses descriptors that are not connected TCP sockets: a shard would take anything
/// else for a client.
fn check_sockets(fds: &[OwnedFd]) -> Result<(), String> {
    for fd in fds {
        let socket = socket2::SockRef::from(fd);
        let tcp = socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && socket
                .local_addr()
                .is_ok_and(|a| a.is_ipv4() || a.is_ipv6())
            && !socket.is_listener().unwrap_or(true);
        if !tcp {
            return Err("a handed-over descriptor is not a TCP connection".into());
        }
    }
    Ok(())
}

/// Debug builds: a successor that takes its time once accepted, then fails (tests prove
/// the old process serves meanwhile): it waits until the file named by
/// `SSE_EDGE_TEST_HANDOVER_STALL` exists, then exits.
#[cfg(debug_assertions)]
fn stall_if_asked() {
    let Some(path) = std::env::var_os("SSE_EDGE_TEST_HANDOVER_STALL") else {
        return;
    };
    let deadline = Instant::now() + PATIENCE;
    while !std::path::Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::exit(3);
}

/// The hand-over versions this binary speaks. Debug builds may pretend to be another
/// version (`SSE_EDGE_TEST_HANDOVER_VERSION`), so tests can meet a binary that differs.
fn spoken() -> (u16, u16) {
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var("SSE_EDGE_TEST_HANDOVER_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return (v, v);
    }
    (MIN_VERSION, VERSION)
}

/// Tells the old process this one serves; it then drains what it kept and exits.
pub fn serving(channel: &Channel) {
    if let Err(e) = channel.send(&Message::Serving, &[]) {
        info!("hand-over: cannot tell the old process this one serves ({e}); it exits anyway");
    }
}

/// Sends `message`; when that fails because the peer refused and closed, its reason says
/// more than the broken pipe.
fn send(channel: &Channel, message: &Message, fds: &[RawFd]) -> Result<(), String> {
    channel.send(message, fds).map_err(|e| {
        if channel.has_input().unwrap_or(false) {
            if let Ok((Message::Refuse { reason }, _)) = channel.recv() {
                return format!("refused: {}", one_line(&reason));
            }
        }
        format!("cannot send {}: {e}", message.name())
    })
}

fn expect(channel: &Channel) -> Result<Message, String> {
    match channel.recv() {
        Ok((message, fds)) if fds.is_empty() => Ok(message),
        Ok((message, _)) => Err(format!("{} came with sockets", message.name())),
        Err(e) => Err(format!("the other process stopped answering: {e}")),
    }
}

/// Fails if the peer already said something (a refusal) or went away: checked before a
/// pause, so none starts for a peer that is gone.
fn heard_nothing(channel: &Channel) -> Result<(), String> {
    if !channel.has_input().unwrap_or(false) {
        return Ok(());
    }
    match channel.recv() {
        Ok((other, _)) => Err(unexpected("nothing yet", &other)),
        Err(e) => Err(format!("the other process stopped answering: {e}")),
    }
}

fn unexpected(wanted: &str, got: &Message) -> String {
    match got {
        Message::Refuse { reason } => format!("refused: {}", one_line(reason)),
        _ => format!("expected {wanted}, got {}", got.name()),
    }
}

/// A peer's words as part of one log line: cut short, control characters escaped.
fn one_line(reason: &str) -> String {
    let mut line = String::new();
    for c in reason.chars().take(MAX_REASON) {
        if c.is_control() {
            line.extend(c.escape_debug());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::history::History;
    use crate::wire::event_id::EventId;
    use crate::wire::sse;
    use std::cell::Cell;

    /// The old process's node, as far as a hand-over without connections sees it: a real
    /// history, and a record of what was asked.
    struct Node {
        history: History,
        budget: usize,
        aborted: Cell<bool>,
        committed: Cell<bool>,
    }

    impl Giver for Node {
        fn history_bytes(&self) -> u64 {
            self.budget as u64
        }
        fn settle(&self) -> Result<(), String> {
            Ok(())
        }
        fn freeze(&self) -> Snapshot {
            Snapshot {
                last_id: EventId::local(10_000),
                epoch: None,
                history: Some(self.history.image()),
                heartbeats: 0,
            }
        }
        fn detach(&self) -> Result<Vec<Outgoing>, String> {
            Ok(Vec::new())
        }
        fn commit(&self) {
            self.committed.set(true);
        }
        fn abort(&self) {
            self.aborted.set(true);
        }
    }

    /// A history of about `bytes` of frames over a few topics.
    fn history(bytes: usize, budget: usize) -> History {
        let mut history = History::new(1024, budget, budget);
        let now = std::time::Instant::now();
        let body = "y".repeat(500);
        let mut id = 0;
        let mut kept = 0;
        while kept < bytes {
            id += 1;
            let frame = sse::encode_event(EventId::local(id), None, None, &body);
            kept += frame.len();
            history.record(
                &format!("topic/{}", id % 5),
                EventId::local(id),
                &frame,
                now,
            );
        }
        history
    }

    type Kept = (Vec<(EventId, String, bytes::Bytes)>, Vec<(String, EventId)>);

    /// What a history keeps, in a form two histories can be compared by: frames by id with
    /// their topic's name, and each topic's eviction mark.
    fn kept(history: &History) -> Kept {
        let image = history.image();
        let frames = image
            .frames
            .iter()
            .map(|(id, t, frame)| (*id, image.topics[*t as usize].0.clone(), frame.clone()))
            .collect();
        let mut topics = image.topics.clone();
        topics.sort();
        (frames, topics)
    }

    /// Runs a hand-over between `node` and a new process gathering at most `max_message`
    /// bytes a message; returns the outcome and the history the new process imported.
    fn hand_over(
        node: Node,
        limits: Limits,
        max_message: usize,
    ) -> (Result<Outcome, String>, History, usize, Node) {
        let (old, new) = Channel::pair().unwrap();
        let new = new.with_max_message(max_message);
        old.set_timeout(PATIENCE).unwrap();
        new.set_timeout(PATIENCE).unwrap();
        let giver = std::thread::spawn(move || {
            let hello = match old.recv() {
                Ok((Message::Hello(hello), _)) => hello,
                other => panic!("{other:?}"),
            };
            let given = give(&old, &hello, &node).map(|_| ());
            if given.is_ok() {
                old.send(&Message::Serving, &[]).ok();
            }
            (given, node)
        });
        let mut imported = History::new(1024, limits.history_bytes, limits.history_bytes);
        let mut parts = 0;
        let taken = take(&new, &limits, |part| {
            parts += 1;
            imported.import(part, &Default::default(), std::time::Instant::now());
        });
        if matches!(taken, Ok(Outcome::Taken(_))) {
            serving(&new);
        }
        drop(new);
        let (_, node) = giver.join().unwrap();
        (taken, imported, parts, node)
    }

    /// A node whose history is `history`, kept within `budget`.
    fn node(history: History, budget: usize) -> Node {
        Node {
            history,
            budget,
            aborted: Cell::new(false),
            committed: Cell::new(false),
        }
    }

    /// A new process's limits for a history of `budget`.
    fn limits(budget: usize) -> Limits {
        Limits {
            history_bytes: budget,
            max_streams: 10,
            max_connections: 100,
            h2_max_streams: 100,
        }
    }

    #[test]
    fn a_history_larger_than_any_message_arrives_whole_in_parts() {
        let budget = 1 << 20;
        let node = node(history(100 << 10, budget), budget);
        let sent = kept(&node.history);
        let limits = limits(budget);
        // Every message at most 4 KiB: a message over it would fail the hand-over.
        let (taken, imported, parts, node) = hand_over(node, limits, 4096);
        assert!(matches!(taken, Ok(Outcome::Taken(_))), "{taken:?}");
        assert!(parts >= 25, "{parts} parts");
        assert_eq!(kept(&imported), sent, "every frame and mark, intact");
        assert!(node.committed.get() && !node.aborted.get());
    }

    #[test]
    fn a_frame_larger_than_a_part_travels_alone() {
        let budget = 8 << 20;
        let mut history = History::new(1024, budget, budget);
        let id = EventId::local(1);
        let big = sse::encode_event(id, None, None, &"z".repeat(HISTORY_PART * 2));
        history.record("big", id, &big, std::time::Instant::now());
        let node = node(history, budget);
        let sent = kept(&node.history);
        let limits = limits(budget);
        let (taken, imported, parts, _) = hand_over(node, limits, channel::MAX_MESSAGE);
        assert!(matches!(taken, Ok(Outcome::Taken(_))), "{taken:?}");
        assert_eq!(parts, 1);
        assert_eq!(kept(&imported), sent);
    }

    #[test]
    fn a_successor_that_cannot_take_the_history_refuses_before_anything_pauses() {
        let node = node(history(10 << 10, 1 << 20), 1 << 20);
        let limits = limits(64 << 10);
        let (taken, _, parts, node) = hand_over(node, limits, 4096);
        let err = taken.unwrap_err();
        assert!(err.contains("--history-bytes"), "{err}");
        assert_eq!(parts, 0);
        // Refused at the offer: the node never paused, so there was nothing to take back.
        assert!(!node.committed.get() && !node.aborted.get());
    }
}
