//! The Redis layer of cluster mode: the commands a node sends to Redis and their replies,
//! parsed. One [`Link`] is one synchronous connection, owned by one dedicated thread (the
//! publisher thread, the `XREAD BLOCK` reader); nothing here spawns threads or retries.
//!
//! # Keys
//!
//! - `<stream>` (`--redis-stream`, default `sse-edge:events`): the Redis Stream every node
//!   appends to and reads from. Each entry has the fields `e` (epoch), `t` (topic), `n`
//!   (event name, empty when none) and `d` (the body).
//! - `<stream>:epoch`: the cluster's epoch, a short random hex string. [`PUBLISH_SCRIPT`]
//!   creates it, in the same atomic step as the `XADD`, whenever it is missing, so a Redis that
//!   lost its data (a restart without persistence, `FLUSHALL`, a failover to a stale replica)
//!   shows a new epoch on the very next entry.
//!
//! # Failures
//!
//! Every call is bounded by the [`Timeouts`] given to [`Link::connect`]: a Redis that is gone
//! or hung costs about a second, never a long hang. After an error for which
//! [`LinkError::is_connection_lost`] is true the link must be dropped and a new one connected:
//! a timed-out reply may still arrive later, and would be taken for the next one.

use std::fmt::Write as _;
use std::io::Read as _;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, ServerErrorKind, Value};

use crate::wire::event_id::{EventId, MAX_EPOCH};
use crate::wire::params;

/// The epoch of an entry about to be appended: the one Redis keeps at `KEYS[2]`, or `ARGV[2]`
/// (a fresh one) written there first when Redis has none. One text for every script that
/// appends, so an event and a heartbeat can never disagree on how an epoch starts.
macro_rules! epoch_lua {
    () => {
        "local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
"
    };
}

/// Appends one event, creating the epoch first when it is missing (see the module
/// documentation). `KEYS[1]` the stream, `KEYS[2]` the epoch key; `ARGV` = maxlen,
/// fresh epoch, topic, event name (empty for none), data. Returns `{epoch, id}`.
///
/// Both keys are declared, so the script stays correct under Redis Cluster hashing if the
/// stream name carries a hash tag.
pub const PUBLISH_SCRIPT: &str = concat!(
    epoch_lua!(),
    "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'e', epoch, 't', ARGV[3], 'n', ARGV[4], 'd', ARGV[5])
return {epoch, id}
"
);

/// Reads the next range of a replay within a count and a byte budget. `KEYS[1]` the stream;
/// `ARGV` = the cursor (an entry id, inclusive), the end (`+` or an id, inclusive), the count
/// of entries wanted after the cursor, the byte budget, the cost of one entry besides its id,
/// field names and values. Returns `{oldest, cut, entries}`:
///
/// - `oldest`: the cursor itself when the stream still holds it (trimming takes the oldest
///   first, so nothing after it is gone), else the stream's first id (nil when empty): the
///   caller compares it with the cursor;
/// - `entries`: what follows the cursor, at most the count: at least one entry, then as many
///   as fit the budget;
/// - `cut`: 1 when the budget left entries out (more follows within the end).
///
/// Cutting in Redis keeps a node's memory for one read within the budget whatever the entries'
/// sizes (512 entries of 10 KB are 5 MB), rather than after they crossed the network.
pub const RANGE_SCRIPT: &str = r#"
local want = tonumber(ARGV[3])
local r = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', want + 1)
local oldest = false
local from = 1
if #r > 0 and r[1][1] == ARGV[1] then
  oldest = ARGV[1]
  from = 2
else
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 then oldest = first[1][1] end
end
local budget = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
local used = 0
local cut = 0
local out = {}
for i = from, math.min(#r, from + want - 1) do
  local e = r[i]
  local size = cost + #e[1]
  for _, v in ipairs(e[2]) do size = size + #v end
  if #out > 0 and used + size > budget then
    cut = 1
    break
  end
  used = used + size
  out[#out + 1] = e
end
return {oldest, cut, out}
"#;

/// The suffix that names the epoch key beside the stream: `<stream>:epoch`.
pub const EPOCH_SUFFIX: &str = ":epoch";

/// The demo heartbeat, once for the whole cluster: the node holding the lease (or the first to
/// find it free) renews it, counts the next beat and appends it, in one atomic step, so two
/// nodes never send the same beat and the count goes on whichever node sends it (also across
/// an upgrade). `KEYS[1]` the stream, `KEYS[2]` the epoch key, `KEYS[3]` the lease, `KEYS[4]`
/// the count; `ARGV` = maxlen, fresh epoch, this node's name, lease in ms, topic. Returns
/// nil when another node holds the lease, else `{epoch, id, n}`.
pub const TICK_SCRIPT: &str = concat!(
    "local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[3] then
  return false
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
local n = redis.call('INCR', KEYS[4])
",
    epoch_lua!(),
    "local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'e', epoch, 't', ARGV[5], 'n', '', 'd', 'Auto heartbeat #' .. n)
return {epoch, id, n}
"
);

/// The suffixes of the heartbeat's lease and count beside the stream.
pub const TICK_SUFFIXES: (&str, &str) = (":ticker", ":ticks");

/// How long a [`Link`] waits on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus the connection handshake.
    pub connect: Duration,
    /// One command's write and its reply's read. [`Link::read`] adds its `BLOCK` time to the
    /// read side for that call, so a blocking read is not cut short.
    pub io: Duration,
}

impl Default for Timeouts {
    /// About a second each: a publish fails fast (503) when Redis is unreachable.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            io: Duration::from_secs(1),
        }
    }
}

/// Why a [`Link`] call failed. One variant per failing step.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connecting (TCP, handshake, or loading the script) failed.
    #[error("cannot connect to Redis at {addr}: {}", describe(source))]
    Connect {
        /// `host:port` of the Redis asked.
        addr: String,
        /// What the client reported.
        source: RedisError,
    },
    /// A command failed: the connection broke or timed out, or Redis answered an error.
    #[error("Redis {what} failed: {source}")]
    Command {
        /// The command, as `XADD`, `XREAD`.
        what: &'static str,
        /// What the client or the server reported.
        source: RedisError,
    },
    /// Redis did not answer in time: it is hung, or the network is. The reply may still come,
    /// so the connection is lost.
    #[error("Redis {what}: no answer within {after:?}")]
    Timeout {
        /// The command, as `XADD`, `XREAD`.
        what: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// Redis answered something of a shape this code does not expect.
    #[error("unexpected Redis reply to {what}: {detail}")]
    Reply {
        /// The command answered.
        what: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
}

impl LinkError {
    /// Whether the connection is to be dropped and a new one made: it is gone, or a reply is
    /// late and would be taken for the next one. An error Redis answered (`WRONGTYPE`, `OOM`)
    /// leaves the connection usable.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            LinkError::Connect { .. } | LinkError::Timeout { .. } => true,
            LinkError::Command { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_unrecoverable_error()
            }
            // The reply was read whole; the connection is still in step.
            LinkError::Reply { .. } => false,
        }
    }
}

/// One event to append ([`Link::publish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// A valid topic ([`params::is_topic`]).
    pub topic: &'a str,
    /// A valid event name ([`params::is_event_name`]), if any.
    pub event: Option<&'a str>,
    /// The body.
    pub data: &'a str,
}

/// Where one [`Publish`] landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The epoch written into the entry.
    pub epoch: String,
    /// The entry's id.
    pub id: EventId,
}

/// One event read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry id.
    pub id: EventId,
    /// The epoch written into it.
    pub epoch: String,
    /// Its topic (valid).
    pub topic: String,
    /// Its event name (valid), if any.
    pub event: Option<String>,
    /// The body.
    pub data: String,
}

/// What one [`Link::read`] or [`Link::range`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// The well-formed entries, in stream order.
    pub entries: Vec<Entry>,
    /// Entries seen but skipped: not written by sse-edge (fields missing, not UTF-8, a bad
    /// topic, event name or epoch).
    pub skipped: usize,
    /// The id of the last entry seen, skipped or not: where the next read continues, so a
    /// batch of foreign entries cannot stall a reader.
    pub last: Option<EventId>,
}

/// What one [`Link::range_within`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    /// The entries after the cursor.
    pub read: Read,
    /// The cursor itself when the stream still holds it, else the stream's oldest entry (None:
    /// the stream is empty). Older than or equal to the cursor: nothing after it was trimmed.
    pub oldest: Option<EventId>,
    /// The byte budget left entries out: more follows `read.last` before the end asked for.
    pub cut: bool,
}

/// One connection to Redis, for one thread.
pub struct Link {
    con: redis::Connection,
    stream: String,
    epoch_key: String,
    script: redis::Script,
    /// [`RANGE_SCRIPT`], loaded the first time it is run.
    range_script: redis::Script,
    timeouts: Timeouts,
    /// The read timeout now set on the socket, to skip redundant `setsockopt` calls.
    read_timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("stream", &self.stream)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// Parses `--redis`: `redis://[:PASSWORD@]HOST[:PORT][/DB]`. The error is one line naming
/// `--redis` and what is wrong; it never repeats the URL, which may hold a password.
pub fn parse_url(url: &str) -> Result<ConnectionInfo, String> {
    let bad = |why: &str| format!("--redis: {why}");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected redis://HOST:PORT[/DB]"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "redis" => {}
        "rediss" | "valkeys" => return Err(bad("TLS (rediss://) is not supported yet")),
        "unix" | "redis+unix" | "valkey+unix" => {
            return Err(bad(
                "unix sockets are not supported yet; use redis://HOST:PORT",
            ))
        }
        "redis-cluster" | "redis+cluster" => {
            return Err(bad("Redis Cluster is not supported yet"));
        }
        other => {
            return Err(bad(&format!(
                "unknown scheme {other:?}; expected redis://HOST:PORT[/DB]"
            )))
        }
    }
    if rest.contains(',') {
        return Err(bad(
            "several addresses (Redis Cluster) are not supported yet; give one redis://HOST:PORT",
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("URL options (?…, #…) are not supported"));
    }
    let info: ConnectionInfo =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| bad(&one_line(&e)))?;
    match info.addr() {
        ConnectionAddr::Tcp(..) => Ok(info),
        _ => Err(bad("only plain TCP, redis://HOST:PORT, is supported")),
    }
}

/// A new random epoch: 8 lowercase hex characters, from `/dev/urandom` when it can be read,
/// else from std's randomly keyed hasher over the time and the process id.
pub fn fresh_epoch() -> String {
    let mut bytes = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    let n = if random {
        u32::from_le_bytes(bytes)
    } else {
        use std::hash::BuildHasher;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let h = std::collections::hash_map::RandomState::new()
            .hash_one((now.as_nanos(), std::process::id()));
        (h ^ (h >> 32)) as u32
    };
    format!("{n:08x}")
}

/// Whether `s` can serve as an epoch: 1 to [`MAX_EPOCH`] ASCII letters and digits (the wire id
/// `EPOCH-MS-SEQ` splits at the first `-`, so an epoch holds none).
pub fn is_epoch(s: &str) -> bool {
    (1..=MAX_EPOCH).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Link {
    /// Connects to Redis, sets the I/O timeouts and loads [`PUBLISH_SCRIPT`]. `stream` is the
    /// stream key; the epoch key is `stream` + [`EPOCH_SUFFIX`].
    pub fn connect(
        info: ConnectionInfo,
        stream: &str,
        timeouts: Timeouts,
    ) -> Result<Link, LinkError> {
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => other.to_string(),
        };
        let connect_error = |source| LinkError::Connect {
            addr: addr.clone(),
            source,
        };
        // The crate's CLIENT SETINFO (library name) step ignores its own failures: on a hung
        // Redis it times out silently and its late reply would be read as the next one's.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(connect_error)?;
        let mut con = client
            .get_connection_with_timeout(timeouts.connect)
            .map_err(connect_error)?;
        // Zero would mean "no timeout" to the socket: keep a floor.
        let io = timeouts.io.max(Duration::from_millis(1));
        con.set_read_timeout(Some(io)).map_err(connect_error)?;
        con.set_write_timeout(Some(io)).map_err(connect_error)?;
        let script = redis::Script::new(PUBLISH_SCRIPT);
        script
            .prepare_invoke()
            .load(&mut con)
            .map_err(connect_error)?;
        Ok(Link {
            con,
            stream: stream.to_owned(),
            epoch_key: format!("{stream}{EPOCH_SUFFIX}"),
            script,
            range_script: redis::Script::new(RANGE_SCRIPT),
            timeouts: Timeouts { io, ..timeouts },
            read_timeout: io,
        })
    }

    /// The stream key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The epoch key, `<stream>:epoch`.
    pub fn epoch_key(&self) -> &str {
        &self.epoch_key
    }

    /// Appends every job, in order, in one pipeline (one round trip), trimming the stream to
    /// about `maxlen` entries; `fresh_epoch` becomes the epoch if Redis has none. Answers one
    /// [`Appended`] per job, in order.
    ///
    /// Ids increase in job order, with one exception: when the script cache was flushed while
    /// the pipeline ran (another client loaded the script part way), the jobs that met
    /// `NOSCRIPT` are sent again after the others and get later ids.
    ///
    /// On an error some jobs may have been appended all the same (as with any request whose
    /// answer was lost): the caller reports failure for the whole batch.
    pub fn publish(
        &mut self,
        jobs: &[Publish<'_>],
        maxlen: u64,
        fresh_epoch: &str,
    ) -> Result<Vec<Appended>, LinkError> {
        const WHAT: &str = "EVALSHA (XADD)";
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut done: Vec<Option<Appended>> = vec![None; jobs.len()];
        let mut todo: Vec<usize> = (0..jobs.len()).collect();
        // A Redis that restarted without persistence has forgotten the script too: on
        // NOSCRIPT, load it once and send again only the jobs that met it (nothing of those
        // was appended).
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &todo {
                let job = &jobs[i];
                pipe.cmd("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(2)
                    .arg(&self.stream)
                    .arg(&self.epoch_key)
                    .arg(maxlen)
                    .arg(fresh_epoch)
                    .arg(job.topic)
                    .arg(job.event.unwrap_or(""))
                    .arg(job.data);
            }
            let replies: Vec<Value> = pipe
                .query(&mut self.con)
                .map_err(|source| self.failed(WHAT, source))?;
            if replies.len() != todo.len() {
                return Err(reply(
                    WHAT,
                    format!("{} replies for {} commands", replies.len(), todo.len()),
                ));
            }
            let mut again = Vec::new();
            for (&i, value) in todo.iter().zip(replies) {
                match value {
                    Value::ServerError(e)
                        if e.kind() == Some(ServerErrorKind::NoScript) && attempt == 0 =>
                    {
                        again.push(i)
                    }
                    Value::ServerError(e) => return Err(command(WHAT, e.into())),
                    value => done[i] = Some(parse_appended(value)?),
                }
            }
            if again.is_empty() {
                break;
            }
            self.script
                .prepare_invoke()
                .load(&mut self.con)
                .map_err(|source| self.failed("SCRIPT LOAD", source))?;
            todo = again;
        }
        done.into_iter()
            .map(|a| a.ok_or_else(|| reply(WHAT, "NOSCRIPT after SCRIPT LOAD".into())))
            .collect()
    }

    /// Sends the cluster's next heartbeat to `topic` if this node, named `holder`, holds the
    /// heartbeat's lease or finds it free, and keeps the lease for `lease` ([`TICK_SCRIPT`]).
    /// Returns the beat's number and entry, or `None` when another node holds the lease.
    pub fn tick(
        &mut self,
        holder: &str,
        lease: Duration,
        topic: &str,
        maxlen: u64,
        fresh_epoch: &str,
    ) -> Result<Option<(u64, Appended)>, LinkError> {
        const WHAT: &str = "EVALSHA (heartbeat)";
        let (lease_key, count_key) = TICK_SUFFIXES;
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        // `invoke` loads the script when Redis does not have it (NOSCRIPT) and sends it again.
        let value: Value = redis::Script::new(TICK_SCRIPT)
            .key(&self.stream)
            .key(&self.epoch_key)
            .key(format!("{}{lease_key}", self.stream))
            .key(format!("{}{count_key}", self.stream))
            .arg(maxlen)
            .arg(fresh_epoch)
            .arg(holder)
            .arg(ms)
            .arg(topic)
            .invoke(&mut self.con)
            .map_err(|source| self.failed(WHAT, source))?;
        match value {
            Value::Nil => Ok(None),
            Value::Array(mut items) if items.len() == 3 => {
                let n = match items.pop() {
                    Some(Value::Int(n)) => u64::try_from(n).ok(),
                    _ => None,
                };
                let n = n.ok_or_else(|| reply(WHAT, "the beat's number is not a count".into()))?;
                Ok(Some((n, parse_appended(Value::Array(items))?)))
            }
            other => Err(reply(
                WHAT,
                format!("expected nil or {{epoch, id, n}}: {}", brief(&other)),
            )),
        }
    }

    /// The entries after `after`, waiting up to `block` for the first one:
    /// `XREAD COUNT count BLOCK ms STREAMS key after`. Empty when none came in time.
    pub fn read(
        &mut self,
        after: EventId,
        block: Duration,
        count: usize,
    ) -> Result<Read, LinkError> {
        const WHAT: &str = "XREAD";
        let ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        // BLOCK 0 would mean forever; at least 1 ms. The socket waits the block plus the
        // usual reply time, so a quiet stream is not mistaken for a dead Redis.
        self.set_read_timeout(Duration::from_millis(ms).saturating_add(self.timeouts.io))?;
        let value: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after.to_string())
            .query(&mut self.con)
            .map_err(|source| self.failed(WHAT, source))?;
        parse_xread(value)
    }

    /// Up to `count` entries after `after` (exclusive), oldest first:
    /// `XRANGE key (after + COUNT count` (the exclusive `(` needs Redis 6.2 or later). For
    /// replays older than a node's memory.
    pub fn range(&mut self, after: EventId, count: usize) -> Result<Read, LinkError> {
        const WHAT: &str = "XRANGE";
        self.set_read_timeout(self.timeouts.io)?;
        let value: Value = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .query(&mut self.con)
            .map_err(|source| self.failed(WHAT, source))?;
        parse_entries(WHAT, value)
    }

    /// Up to `count` entries after `from` and up to `until` (inclusive; None: the stream's
    /// end), cut after those that fit `bytes` (at least one), each entry counted as
    /// `entry_cost` plus its id's, field names' and values' lengths; with proof of whether
    /// Redis trimmed past `from` ([`Range::oldest`]). One round trip ([`RANGE_SCRIPT`]).
    pub fn range_within(
        &mut self,
        from: EventId,
        until: Option<EventId>,
        count: usize,
        bytes: usize,
        entry_cost: usize,
    ) -> Result<Range, LinkError> {
        const WHAT: &str = "EVALSHA (XRANGE)";
        self.set_read_timeout(self.timeouts.io)?;
        let until = until.map_or_else(|| "+".to_owned(), |u| u.to_string());
        let value: Value = self
            .range_script
            .key(&self.stream)
            .arg(from.to_string())
            .arg(until)
            .arg(count.clamp(1, 1 << 20))
            .arg(bytes)
            .arg(entry_cost)
            .invoke(&mut self.con)
            .map_err(|source| self.failed(WHAT, source))?;
        parse_range(value)
    }

    /// The epoch Redis holds now, or None when it has none (no publish since it lost its data).
    pub fn epoch(&mut self) -> Result<Option<String>, LinkError> {
        const WHAT: &str = "GET (epoch)";
        self.set_read_timeout(self.timeouts.io)?;
        let value: Value = redis::cmd("GET")
            .arg(&self.epoch_key)
            .query(&mut self.con)
            .map_err(|source| self.failed(WHAT, source))?;
        match value {
            Value::Nil => Ok(None),
            value => match text(&value) {
                Some(s) if is_epoch(s) => Ok(Some(s.to_owned())),
                _ => Err(reply(WHAT, format!("not an epoch: {}", brief(&value)))),
            },
        }
    }

    /// The stream's last generated id (`XINFO STREAM`), or None when the stream does not exist.
    /// It survives trimming, so it tells where the stream is even when it has no entries left.
    pub fn last_generated(&mut self) -> Result<Option<EventId>, LinkError> {
        const WHAT: &str = "XINFO STREAM";
        self.set_read_timeout(self.timeouts.io)?;
        let result: Result<Value, RedisError> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.stream)
            .query(&mut self.con);
        let value = match result {
            Ok(value) => value,
            // Redis says "ERR no such key" for a stream that does not exist.
            Err(e)
                if e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
                    && e.detail().is_some_and(|d| d.contains("no such key")) =>
            {
                return Ok(None)
            }
            Err(source) => return Err(self.failed(WHAT, source)),
        };
        parse_last_generated(value)
    }

    /// A command's error; a timeout says how long it waited.
    fn failed(&self, what: &'static str, source: RedisError) -> LinkError {
        if source.is_timeout() {
            LinkError::Timeout {
                what,
                after: self.read_timeout,
            }
        } else {
            command(what, source)
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), LinkError> {
        if self.read_timeout != timeout {
            self.con
                .set_read_timeout(Some(timeout))
                .map_err(|source| command("setting the read timeout", source))?;
            self.read_timeout = timeout;
        }
        Ok(())
    }
}

fn command(what: &'static str, source: RedisError) -> LinkError {
    LinkError::Command { what, source }
}

fn reply(what: &'static str, detail: String) -> LinkError {
    LinkError::Reply { what, detail }
}

/// A client error for a log line: a timeout says so (the OS says "Resource temporarily
/// unavailable").
fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else {
        one_line(e)
    }
}

/// A client error on one line (the crate's may span several).
fn one_line(e: &RedisError) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A string-like value's UTF-8 text.
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// A value shown in an error, short (replies can be large, and hold user data).
fn brief(value: &Value) -> String {
    let mut s = String::new();
    let _ = write!(s, "{value:?}");
    if s.len() > 80 {
        let mut cut = 80;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The script's `{epoch, id}`.
fn parse_appended(value: Value) -> Result<Appended, LinkError> {
    const WHAT: &str = "EVALSHA (XADD)";
    if let Value::Array(items) = &value {
        if let [epoch, id] = items.as_slice() {
            let epoch = text(epoch).filter(|e| is_epoch(e));
            let id = text(id).and_then(EventId::parse_entry);
            if let (Some(epoch), Some(id)) = (epoch, id) {
                return Ok(Appended {
                    epoch: epoch.to_owned(),
                    id,
                });
            }
        }
    }
    Err(reply(
        WHAT,
        format!("expected {{epoch, id}}: {}", brief(&value)),
    ))
}

/// [`RANGE_SCRIPT`]'s `{oldest, cut, entries}`.
fn parse_range(value: Value) -> Result<Range, LinkError> {
    const WHAT: &str = "EVALSHA (XRANGE)";
    let Value::Array(items) = value else {
        return Err(reply(
            WHAT,
            format!("expected {{oldest, cut, entries}}: {}", brief(&value)),
        ));
    };
    let Ok([oldest, cut, entries]) = <[Value; 3]>::try_from(items) else {
        return Err(reply(WHAT, "expected three items".into()));
    };
    let oldest = match &oldest {
        Value::Nil => None,
        other => match text(other).and_then(EventId::parse_entry) {
            Some(id) => Some(id),
            None => return Err(reply(WHAT, format!("not an entry id: {}", brief(other)))),
        },
    };
    let cut = match cut {
        Value::Int(n) => n != 0,
        other => return Err(reply(WHAT, format!("expected 0 or 1: {}", brief(&other)))),
    };
    Ok(Range {
        read: parse_entries(WHAT, entries)?,
        oldest,
        cut,
    })
}

/// `XREAD`'s reply: nil on timeout, else one `[key, entries]` per stream (a map in RESP3).
fn parse_xread(value: Value) -> Result<Read, LinkError> {
    const WHAT: &str = "XREAD";
    let mut streams: Vec<Value> = match value {
        Value::Nil => return Ok(Read::default()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(reply(
                    WHAT,
                    format!("expected [key, entries]: {}", brief(&other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(reply(WHAT, format!("expected streams: {}", brief(&other)))),
    };
    // One stream was asked for.
    match streams.len() {
        0 => Ok(Read::default()),
        1 => parse_entries(WHAT, streams.swap_remove(0)),
        n => Err(reply(WHAT, format!("{n} streams for one asked"))),
    }
}

/// A list of `[id, [field, value, …]]`, as `XRANGE` answers and `XREAD` per stream.
fn parse_entries(what: &'static str, value: Value) -> Result<Read, LinkError> {
    let Value::Array(items) = value else {
        return Err(reply(what, format!("expected entries: {}", brief(&value))));
    };
    let mut read = Read {
        entries: Vec::with_capacity(items.len()),
        ..Read::default()
    };
    for item in items {
        let Value::Array(parts) = item else {
            return Err(reply(
                what,
                format!("expected [id, fields]: {}", brief(&item)),
            ));
        };
        let mut parts = parts.into_iter();
        let (Some(id), fields) = (parts.next(), parts.next()) else {
            return Err(reply(what, "an entry without an id".into()));
        };
        let Some(id) = text(&id).and_then(EventId::parse_entry) else {
            return Err(reply(what, format!("not an entry id: {}", brief(&id))));
        };
        read.last = Some(id);
        match fields.and_then(|f| parse_fields(id, f)) {
            Some(entry) => read.entries.push(entry),
            None => read.skipped += 1,
        }
    }
    Ok(read)
}

/// An entry's fields, or None when it is not one sse-edge wrote (which the caller counts).
fn parse_fields(id: EventId, fields: Value) -> Option<Entry> {
    let fields = match fields {
        Value::Array(fields) => fields,
        // RESP3 may answer a map.
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    if fields.len() % 2 != 0 {
        return None;
    }
    let (mut epoch, mut topic, mut event, mut data) = (None, None, None, None);
    for pair in fields.chunks_exact(2) {
        let slot = match text(&pair[0])? {
            "e" => &mut epoch,
            "t" => &mut topic,
            "n" => &mut event,
            "d" => &mut data,
            // Another writer's extra field: not ours to judge.
            _ => continue,
        };
        *slot = Some(text(&pair[1])?.to_owned());
    }
    let (epoch, topic, event, data) = (epoch?, topic?, event?, data?);
    if !is_epoch(&epoch) || !params::is_topic(&topic) {
        return None;
    }
    let event = match event.is_empty() {
        true => None,
        false if params::is_event_name(&event) => Some(event),
        false => return None,
    };
    Some(Entry {
        id,
        epoch,
        topic,
        event,
        data,
    })
}

/// `last-generated-id` out of `XINFO STREAM`'s field list (a map in RESP3).
fn parse_last_generated(value: Value) -> Result<Option<EventId>, LinkError> {
    const WHAT: &str = "XINFO STREAM";
    let pairs: Vec<(Value, Value)> = match value {
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut it = items.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        other => {
            return Err(reply(
                WHAT,
                format!("expected a field list: {}", brief(&other)),
            ))
        }
    };
    for (key, val) in &pairs {
        if text(key) == Some("last-generated-id") {
            return match text(val).and_then(EventId::parse_entry) {
                Some(id) => Ok(Some(id)),
                None => Err(reply(WHAT, format!("not an entry id: {}", brief(val)))),
            };
        }
    }
    Err(reply(WHAT, "no last-generated-id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn urls_are_plain_tcp_only() {
        let info = parse_url("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("127.0.0.1".into(), 6380));
        assert_eq!(info.redis_settings().db(), 2);
        let info = parse_url("redis://:s3cret@localhost").unwrap();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("localhost".into(), 6379));
        assert_eq!(info.redis_settings().password(), Some("s3cret"));

        for (url, says) in [
            ("rediss://h:6379", "TLS"),
            ("unix:///tmp/redis.sock", "unix sockets"),
            ("redis+unix:///tmp/redis.sock", "unix sockets"),
            ("redis://a:1,b:2", "Redis Cluster"),
            ("redis-cluster://a:1", "Redis Cluster"),
            ("http://h", "unknown scheme"),
            ("localhost:6379", "expected redis://"),
            ("redis://h/notadb", "--redis"),
            ("redis://h?protocol=resp3", "not supported"),
            ("redis://:pw@0.0.0.0", "wildcard"),
        ] {
            let err = parse_url(url).unwrap_err();
            assert!(err.starts_with("--redis: "), "{url}: {err}");
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains('\n'), "{url}: {err}");
            assert!(!err.contains("pw"), "{url}: the password leaked: {err}");
        }
    }

    #[test]
    fn fresh_epochs_are_eight_hex_and_differ() {
        let a = fresh_epoch();
        assert_eq!(a.len(), 8);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(is_epoch(&a));
        // Four random bytes: two equal in a row is a one-in-four-billion event.
        assert_ne!(a, fresh_epoch());
        assert!(!is_epoch(""));
        assert!(!is_epoch("ab-cd"));
        assert!(!is_epoch(&"a".repeat(MAX_EPOCH + 1)));
    }

    #[test]
    fn appended_is_epoch_and_id() {
        let a = parse_appended(Value::Array(vec![bulk("9f3c2a71"), bulk("17-3")])).unwrap();
        assert_eq!(
            a,
            Appended {
                epoch: "9f3c2a71".into(),
                id: EventId::entry(17, 3)
            }
        );
        for bad in [
            Value::Nil,
            Value::Array(vec![bulk("9f3c2a71")]),
            Value::Array(vec![bulk("9f-3"), bulk("17-3")]),
            Value::Array(vec![bulk("9f3c2a71"), bulk("17")]),
            Value::Int(3),
        ] {
            assert!(matches!(parse_appended(bad), Err(LinkError::Reply { .. })));
        }
    }

    #[test]
    fn entries_parse_and_foreign_ones_are_skipped() {
        let good = entry("5-0", &["e", "ab12", "t", "news", "n", "", "d", "hello"]);
        let named = entry(
            "5-1",
            &["e", "ab12", "t", "news", "n", "tick", "d", "a\nb", "x", "y"],
        );
        let reply = Value::Array(vec![
            good,
            entry("6-0", &["foo", "bar"]), // not ours
            entry("6-1", &["e", "ab12", "t", "bad topic", "n", "", "d", "x"]), // bad topic
            entry("6-2", &["e", "ab12", "t", "a", "n", "bad name", "d", "x"]), // bad event
            entry("6-3", &["e", "ab12", "t", "a", "n", "", "d"]), // odd fields
            Value::Array(vec![
                bulk("6-4"),
                Value::Array(vec![
                    bulk("e"),
                    bulk("ab12"),
                    bulk("t"),
                    bulk("a"),
                    bulk("n"),
                    bulk(""),
                    bulk("d"),
                    Value::BulkString(vec![0xff, 0xfe]),
                ]),
            ]), // not UTF-8
            Value::Array(vec![bulk("6-5"), Value::Nil]), // deleted
            named,
        ]);
        let read = parse_entries("XRANGE", reply).unwrap();
        assert_eq!(read.skipped, 6);
        assert_eq!(read.last, Some(EventId::entry(5, 1)));
        assert_eq!(
            read.entries,
            vec![
                Entry {
                    id: EventId::entry(5, 0),
                    epoch: "ab12".into(),
                    topic: "news".into(),
                    event: None,
                    data: "hello".into()
                },
                Entry {
                    id: EventId::entry(5, 1),
                    epoch: "ab12".into(),
                    topic: "news".into(),
                    event: Some("tick".into()),
                    data: "a\nb".into()
                },
            ]
        );
        // A batch of foreign entries still moves the reader on.
        let read = parse_entries("XRANGE", Value::Array(vec![entry("9-9", &["a", "b"])])).unwrap();
        assert_eq!((read.entries.len(), read.skipped), (0, 1));
        assert_eq!(read.last, Some(EventId::entry(9, 9)));
        // The framing itself is not negotiable.
        assert!(parse_entries("XRANGE", Value::Int(1)).is_err());
        assert!(parse_entries("XRANGE", Value::Array(vec![Value::Int(1)])).is_err());
        assert!(parse_entries("XRANGE", Value::Array(vec![entry("x", &[])])).is_err());
    }

    #[test]
    fn xread_nil_is_empty_and_streams_unwrap() {
        assert_eq!(parse_xread(Value::Nil).unwrap(), Read::default());
        let one = entry("7-0", &["e", "ab12", "t", "news", "n", "", "d", "x"]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("sse-edge:events"),
            Value::Array(vec![one.clone()]),
        ])]);
        let read = parse_xread(resp2).unwrap();
        assert_eq!(read.entries.len(), 1);
        assert_eq!(read.entries[0].id, EventId::entry(7, 0));
        let resp3 = Value::Map(vec![(bulk("sse-edge:events"), Value::Array(vec![one]))]);
        assert_eq!(parse_xread(resp3).unwrap().entries.len(), 1);
        assert!(parse_xread(Value::Int(0)).is_err());
    }

    #[test]
    fn last_generated_is_found_in_the_field_list() {
        let info = Value::Array(vec![
            bulk("length"),
            Value::Int(3),
            bulk("last-generated-id"),
            bulk("1764633600000-4"),
            bulk("first-entry"),
            Value::Nil,
        ]);
        assert_eq!(
            parse_last_generated(info).unwrap(),
            Some(EventId::entry(1_764_633_600_000, 4))
        );
        assert!(parse_last_generated(Value::Array(vec![bulk("length"), Value::Int(0)])).is_err());
        assert!(parse_last_generated(Value::Nil).is_err());
    }

    #[test]
    fn errors_are_one_line_and_say_what_to_do() {
        let e = command(
            "XADD",
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        );
        assert!(e.is_connection_lost());
        assert!(!e.to_string().contains('\n'));
        assert!(e.to_string().starts_with("Redis XADD failed"));
        assert!(!reply("XADD", "odd".into()).is_connection_lost());
        let late = LinkError::Timeout {
            what: "XREAD",
            after: Duration::from_millis(1100),
        };
        assert!(
            late.is_connection_lost(),
            "a late reply would be taken for the next"
        );
        assert_eq!(late.to_string(), "Redis XREAD: no answer within 1.1s");
        let refused = LinkError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to Redis at 127.0.0.1:1: no answer in time"
        );
        let wrongtype = command(
            "XADD",
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "WRONGTYPE",
            )),
        );
        assert!(
            !wrongtype.is_connection_lost(),
            "Redis answered: still in step"
        );
    }
}
