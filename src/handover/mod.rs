//! Handing live connections to the node's next process (`SIGUSR2`), so an upgrade costs no
//! stream a reconnect.
//!
//! The new binary is started with the listening sockets inherited ([`crate::upgrade`]) and
//! one end of a Unix socket ([`Channel`]). Then, in two phases:
//!
//! 1. **Prepare.** The new process says [`Hello`] with the versions it speaks. The old one
//!    stops accepting (connections wait in the listeners' backlog, none is refused), lets
//!    requests in progress finish ([`Step::Settle`]), stops recording events
//!    ([`crate::hub::Hub::freeze`]: every event before that is in the shards' inboxes, every one after
//!    is the successor's), and has each shard detach what can be handed over
//!    ([`Step::Detach`]): plain streams and connections between requests, deregistered from
//!    its epoll, flushed once, and described: topics, where the stream stands, its losses,
//!    its token's expiry and the bytes it still had queued. The state goes over first (the
//!    last id, and the embedded broker's history), then the connections in batches of at
//!    most 253 descriptors, each acknowledged before the next. The new process takes them
//!    and writes nothing yet.
//! 2. **Commit.** Once the new process says it holds them all, the old one sends
//!    [`Message::Commit`] and forgets them without a word (closing its copy of a socket the
//!    other process also holds sends nothing to the peer). The new process installs them in
//!    its shards, writes each stream's queued bytes first and goes on after the last id;
//!    it accepts from then on. The old process drains what it kept (TLS streams) and exits.
//!
//! Anything failing before the commit (the new process dies, refuses, stalls or answers
//! nonsense) calls the hand-over off: the old process takes its connections back
//! ([`Step::Abort`]), records events again, accepts again, and stops the new one. No stream
//! noticed. What the shards do at each step is in `shard/handover.rs`.

pub mod channel;
pub mod wire;

use std::os::fd::{OwnedFd, RawFd};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use channel::Channel;
use wire::{Hello, Message, Record, State, BATCH, VERSION};

/// How long requests in progress may take to finish once a hand-over starts; those still
/// unfinished then are closed (the listeners are not accepting meanwhile).
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long either side waits for the other's next message.
pub const PATIENCE: Duration = Duration::from_secs(30);

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
    /// Stops accepting and waits (up to [`SETTLE`] and a margin) until no request is in
    /// progress on any shard.
    fn settle(&self) -> Result<(), String>;
    /// Stops recording events; returns where the node stands (with the embedded broker's
    /// history).
    fn freeze(&self) -> State;
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

/// The old process's side, once the new one said `hello`: agree on a version, then hand
/// every connection over. On failure before the commit everything is taken back and the
/// error says why in one line; the caller stops the new process.
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
    let started = Instant::now();
    match prepare(channel, node) {
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
            node.abort();
            Err(why)
        }
    }
}

/// Phase one and the commit message: on success the new process holds every connection
/// detached and has been told they are its own.
fn prepare(channel: &Channel, node: &impl Giver) -> Result<(usize, usize), String> {
    node.settle()?;
    let mut state = node.freeze();
    let outgoing = node.detach()?;
    let streams = outgoing
        .iter()
        .filter(|o| matches!(o.record.kind, wire::Kind::Stream(_)))
        .count();
    state.connections = outgoing.len() as u32;
    send(channel, &Message::State(state), &[])?;
    let mut taken = 0;
    for batch in outgoing.chunks(BATCH) {
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

/// The new process's side, before its shards run: say hello, take the state and every
/// connection, and return them once the old process committed. An error means the old
/// process keeps everything; this process should exit.
pub fn take(channel: &Channel) -> Result<Outcome, String> {
    let started = Instant::now();
    let (min, max) = spoken();
    let hello = Hello {
        min,
        max,
        pid: std::process::id(),
    };
    send(channel, &Message::Hello(hello), &[])?;
    match expect(channel)? {
        Message::Accept { version } if (min..=max).contains(&version) => {}
        Message::Refuse { reason } => return Ok(Outcome::Refused(reason)),
        other => return Err(unexpected("Accept", &other)),
    }
    let state = match expect(channel)? {
        Message::State(state) => state,
        other => return Err(unexpected("State", &other)),
    };
    let mut connections = Vec::with_capacity(state.connections as usize);
    loop {
        let (message, fds) = channel
            .recv()
            .map_err(|e| format!("the old process stopped handing over: {e}"))?;
        match message {
            Message::Connections(records) => {
                if records.len() != fds.len() {
                    return Err(format!(
                        "{} connections came with {} sockets",
                        records.len(),
                        fds.len()
                    ));
                }
                connections.extend(records.into_iter().zip(fds));
                let taken = connections.len() as u32;
                send(channel, &Message::Ack { taken }, &[])?;
            }
            Message::End => break,
            other => return Err(unexpected("Connections or End", &other)),
        }
    }
    // Debug builds: die holding every socket, before saying so (tests prove the old process
    // then takes them all back).
    #[cfg(debug_assertions)]
    if std::env::var_os("SSE_EDGE_TEST_HANDOVER_DIE").is_some() {
        std::process::exit(3);
    }
    let count = connections.len() as u32;
    send(channel, &Message::Prepared { connections: count }, &[])?;
    match expect(channel)? {
        Message::Commit => {}
        other => return Err(unexpected("Commit", &other)),
    }
    Ok(Outcome::Taken(Taken {
        state,
        connections,
        took: started.elapsed(),
    }))
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
    (VERSION, VERSION)
}

/// Tells the old process this one serves; it then drains what it kept and exits.
pub fn serving(channel: &Channel) {
    if let Err(e) = channel.send(&Message::Serving, &[]) {
        info!("hand-over: cannot tell the old process this one serves ({e}); it exits anyway");
    }
}

fn send(channel: &Channel, message: &Message, fds: &[RawFd]) -> Result<(), String> {
    channel
        .send(message, fds)
        .map_err(|e| format!("cannot send {}: {e}", message.name()))
}

fn expect(channel: &Channel) -> Result<Message, String> {
    match channel.recv() {
        Ok((message, fds)) if fds.is_empty() => Ok(message),
        Ok((message, _)) => Err(format!("{} came with sockets", message.name())),
        Err(e) => Err(format!("the other process stopped answering: {e}")),
    }
}

fn unexpected(wanted: &str, got: &Message) -> String {
    match got {
        Message::Refuse { reason } => format!("refused: {reason}"),
        _ => format!("expected {wanted}, got {}", got.name()),
    }
}
