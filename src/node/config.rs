//! Command-line and environment configuration, with the contract's defaults.
//!
//! Every flag `--some-flag` can also be given as `SSE_EDGE_SOME_FLAG`. Parsing never exits
//! the process by itself: [`Config::parse_from_env`] returns the outcome, and `main` turns an
//! error into one line on stderr and exit code 2.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::auth::access::Cidr;
use crate::auth::jwt::KeySource;

/// The server's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sse-edge",
    version,
    about = "A Server-Sent Events fan-out edge: holds many idle browser streams and pushes each \
             published event to all of them.",
    // The subcommands are dispatched in main.rs by the first argument, before clap sees it:
    // the usage line names them so that `--help` tells they exist.
    override_usage = "sse-edge [OPTIONS]\n       \
                      sse-edge token [OPTIONS] --key <KEY>    print a signed token (JWT)\n       \
                      sse-edge upgrade --pid <PID>            upgrade a running node in place\n       \
                      sse-edge completions <SHELL>            shell completions (bash, zsh, fish, ...)\n       \
                      sse-edge man                            this text as a manual page (roff)\n       \
                      sse-edge help [token|upgrade]           this text, or a subcommand's",
    long_about = "A Server-Sent Events fan-out edge: holds many idle browser streams and pushes \
                  each published event to all of them.\n\n\
                  Subscribe with GET /stream, publish with POST /broadcast, open / in a browser. \
                  Every flag can also be set as SSE_EDGE_<FLAG> (upper case, '-' becomes '_').",
    after_help = "Example: sse-edge --listen 127.0.0.1:9000 --tick 0 --client-buffer 131072\n\
                  Mint a token for --subscribe-jwt: sse-edge token --help\n\
                  Signals: SIGTERM/SIGINT drain and exit; SIGHUP reloads key and certificate \
                  files; SIGUSR2 upgrades to the binary at this one's start path, handing it \
                  the listeners and every plain stream (no reconnect): sse-edge upgrade --help",
    // A flag given twice takes its last value, so wrapper scripts can append overrides.
    args_override_self = true
)]
pub struct Config {
    /// Address to serve on.
    #[arg(
        long,
        env = "SSE_EDGE_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Reactor threads, each with its own SO_REUSEPORT listener; `auto` = available cores.
    #[arg(long, env = "SSE_EDGE_SHARDS", default_value = "1", value_name = "N|auto", value_parser = parse_shards)]
    pub shards: usize,

    /// Deliberately share the port with other sse-edge processes (several nodes on one host).
    /// Without it, a port held by anyone else is an error.
    #[arg(long, env = "SSE_EDGE_REUSE_PORT")]
    pub reuse_port: bool,

    /// Demo ticker: broadcast `Auto heartbeat #n` every SECS seconds, like the original Go
    /// demo; 0 = off.
    #[arg(long, env = "SSE_EDGE_TICK", default_value_t = 5, value_name = "SECS")]
    pub tick: u64,

    /// Send a `:` comment line to streams that were otherwise idle for SECS seconds, so
    /// proxies and browsers keep them open; 0 = off.
    #[arg(
        long,
        env = "SSE_EDGE_KEEPALIVE",
        default_value_t = 15,
        value_name = "SECS"
    )]
    pub keepalive: u64,

    /// Bound on one client's queued outbound bytes; a frame that does not fit is dropped for
    /// that client (an empty queue always takes one frame).
    #[arg(
        long,
        env = "SSE_EDGE_CLIENT_BUFFER",
        default_value_t = 65536,
        value_name = "BYTES"
    )]
    pub client_buffer: usize,

    /// A stream that keeps losing frames (its queue full) for this long is disconnected; it
    /// reconnects and replays what it missed. 0 = never.
    #[arg(
        long,
        env = "SSE_EDGE_SLOW_CLIENT_TIMEOUT",
        default_value_t = 30,
        value_name = "SECS"
    )]
    pub slow_client_timeout: u64,

    /// Kernel send buffer of each stream's socket (SO_SNDBUF; Linux doubles it for its own
    /// bookkeeping). Bounds what a client that stops reading holds in the kernel on top of
    /// --client-buffer (autotuning lets it grow to megabytes). 0 = the kernel's autotuning.
    #[arg(
        long,
        env = "SSE_EDGE_SEND_BUFFER",
        default_value_t = 65536,
        value_name = "BYTES"
    )]
    pub send_buffer: usize,

    /// Events kept per topic for `Last-Event-ID` replay (within --history-bytes node-wide).
    #[arg(
        long,
        env = "SSE_EDGE_HISTORY",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub history: usize,

    /// Base of the `retry:` hint sent to each new stream, jittered ±50 % per stream so clients
    /// do not all come back in the same instant after a restart.
    #[arg(
        long,
        env = "SSE_EDGE_RETRY_MS",
        default_value_t = 2000,
        value_name = "MS"
    )]
    pub retry_ms: u64,

    /// Publishing needs `Authorization: Bearer TOKEN`. Without a token, only peers in
    /// --publish-allow may publish.
    #[arg(
        long,
        env = "SSE_EDGE_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub publish_token: Option<String>,

    /// Networks that may publish without a token (comma-separated addresses or ADDR/PREFIX).
    /// Ignored when --publish-token or --publish-jwt is set. A publish that a proxy relayed
    /// (`X-Forwarded-For`, `Forwarded`, `Via`, ...) is refused anyway: behind a proxy, use a
    /// token.
    #[arg(
        long,
        env = "SSE_EDGE_PUBLISH_ALLOW",
        value_name = "CIDRS",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1"
    )]
    pub publish_allow: Vec<Cidr>,

    /// Streams need a JWT. KEY is an HS256 secret (at least 32 bytes; prefer the environment
    /// variable, which `ps` does not show), or `file:PATH` to a PEM public key: RS256, ES256
    /// (P-256) or EdDSA (Ed25519) by the key's type, its file stem being its `kid`. Repeat
    /// for rotation: each key is tried, the one the token's `kid` names first. SIGHUP re-reads
    /// key files. Grants: the claim `sse_edge: {"subscribe": [topics or prefix/*]}`.
    #[arg(
        long,
        env = "SSE_EDGE_SUBSCRIBE_JWT",
        value_name = "KEY",
        hide_env_values = true,
        action = clap::ArgAction::Append
    )]
    pub subscribe_jwt: Vec<KeySource>,

    /// Publishers may present a JWT (same KEY forms, repeatable) granting
    /// `sse_edge: {"publish": [...]}`, beside --publish-token. With either set, every publish
    /// needs one of them.
    #[arg(
        long,
        env = "SSE_EDGE_PUBLISH_JWT",
        value_name = "KEY",
        hide_env_values = true,
        action = clap::ArgAction::Append
    )]
    pub publish_jwt: Vec<KeySource>,

    /// Tokens must name this audience in their `aud` claim.
    #[arg(long, env = "SSE_EDGE_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// Tokens must carry exactly this issuer in their `iss` claim, so a token your app signs
    /// with the same secret for another purpose (or another environment) is refused.
    #[arg(long, env = "SSE_EDGE_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Also accept a stream's token as `?access_token=` (URLs end up in logs and history:
    /// prefer the sse_edge_token cookie).
    #[arg(long, env = "SSE_EDGE_TOKEN_IN_QUERY")]
    pub token_in_query: bool,

    /// Exact origins (comma-separated, `https://app.example.com`) whose pages may open
    /// credentialed streams (`EventSource(url, {withCredentials: true})`): their stream
    /// answers and preflights echo the origin with `Access-Control-Allow-Credentials: true`.
    /// Without it, streams answer `Access-Control-Allow-Origin: *` (no cookies cross-origin).
    #[arg(
        long,
        env = "SSE_EDGE_CORS_ORIGINS",
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = crate::wire::cors::parse_origin
    )]
    pub cors_origins: Vec<String>,

    /// Serve TLS (HTTPS) with this PEM certificate chain (leaf first); needs --tls-key.
    /// SIGHUP re-reads both files: new handshakes use them, open streams keep going.
    #[arg(
        long,
        env = "SSE_EDGE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "SSE_EDGE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// TLS handshake steps a shard runs per loop turn at most; the rest wait in a queue for
    /// the next turns (which start at once), so a reconnect storm delays events to open
    /// streams by at most N handshakes' CPU per turn. A waiting ClientHello's time in the
    /// queue does not count against --header-timeout.
    #[arg(
        long,
        env = "SSE_EDGE_TLS_HANDSHAKES_PER_TURN",
        default_value_t = 32,
        value_name = "N"
    )]
    pub tls_handshakes_per_turn: usize,

    /// HTTP/2 beside HTTP/1.1 (`on` or `off`): `h2` by ALPN on TLS listeners, h2c with
    /// prior knowledge (the client preface) on plain ones. HTTP/1.1 is always served.
    #[arg(
        long = "http2",
        env = "SSE_EDGE_HTTP2",
        default_value = "on",
        value_name = "on|off",
        value_parser = parse_switch,
        action = clap::ArgAction::Set
    )]
    pub http2: bool,

    /// Streams one HTTP/2 connection may hold open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// beyond it a new stream is refused with REFUSED_STREAM, which a client may retry.
    #[arg(
        long,
        env = "SSE_EDGE_H2_MAX_STREAMS",
        default_value_t = 100,
        value_name = "N"
    )]
    pub h2_max_streams: u32,

    /// Streams this node holds before it sheds new ones (200, `: shed`, a long `retry:`,
    /// closed), whatever carries them (an HTTP/1.1 connection each, or HTTP/2 connections
    /// sharing one). Default: the open-files limit less a reserve for listeners and
    /// publishers, times --h2-max-streams with --http2 on (each descriptor may carry that
    /// many HTTP/2 streams).
    #[arg(long, env = "SSE_EDGE_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,

    /// Largest publish body accepted (413 beyond).
    #[arg(
        long,
        env = "SSE_EDGE_MAX_BODY",
        default_value_t = 65536,
        value_name = "BYTES"
    )]
    pub max_body: usize,

    /// A request whose head is not complete this long after the connection became ready for
    /// it is closed.
    #[arg(
        long,
        env = "SSE_EDGE_HEADER_TIMEOUT",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub header_timeout: u64,

    /// On SIGTERM/SIGINT: stop accepting, flush queued events for up to SECS, close every
    /// stream, exit 0.
    #[arg(
        long,
        env = "SSE_EDGE_DRAIN_TIMEOUT",
        default_value_t = 5,
        value_name = "SECS"
    )]
    pub drain_timeout: u64,

    /// Node-wide budget for kept history over all topics: encoded frame bytes plus the
    /// bookkeeping of each frame and topic. The oldest frames are evicted first.
    #[arg(
        long,
        env = "SSE_EDGE_HISTORY_BYTES",
        default_value_t = 64 << 20,
        value_name = "BYTES"
    )]
    pub history_bytes: usize,

    /// Node-wide budget for the records of topics streams subscribe to: the name plus 384
    /// bytes of bookkeeping for each topic at least one stream carries (kept apart from
    /// --history-bytes, which is spent on events only). A stream whose topics no stream
    /// carries yet and that would pass this budget is shed (200, `: shed`, a long `retry:`);
    /// topics already carried cost nothing more to join. The default holds about 160,000
    /// short topic names (one per user on a large node).
    #[arg(
        long,
        env = "SSE_EDGE_TOPIC_BYTES",
        default_value_t = 64 << 20,
        value_name = "BYTES"
    )]
    pub topic_bytes: usize,

    /// A topic with no subscribers and no publish for this long is forgotten (a later resume
    /// from before that gets `event: reset`).
    #[arg(
        long,
        env = "SSE_EDGE_TOPIC_IDLE",
        default_value_t = 3600,
        value_name = "SECS"
    )]
    pub topic_idle: u64,

    /// Streams one client address may hold (IPv6 counted per /64); beyond it that address's
    /// new streams are shed. Off by default: behind a proxy every stream shares one address.
    #[arg(long, env = "SSE_EDGE_MAX_STREAMS_PER_IP", value_name = "N")]
    pub max_streams_per_ip: Option<usize>,

    /// Connections still sending a request (not yet a stream), per shard. Over it, the oldest
    /// that has had a second to send its request and has nothing unread in its socket is
    /// closed, so silent connections cannot hold the node; one whose request has arrived is
    /// always served, so a reconnect storm may pass it.
    #[arg(
        long,
        env = "SSE_EDGE_MAX_REQUEST_CONNECTIONS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_request_connections: usize,

    /// Cluster mode: every node on this Redis shares one sequence of events
    /// (`redis://HOST:PORT[/DB]`). Without it, the embedded in-process broker. An unreachable
    /// Redis at start: the node starts degraded (streams open, publishes and /healthz 503) and
    /// keeps retrying; a malformed URL is an error.
    #[arg(
        long,
        env = "SSE_EDGE_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,

    /// The Redis Stream all nodes share (its epoch lives at KEY:epoch).
    #[arg(
        long,
        env = "SSE_EDGE_REDIS_STREAM",
        default_value = "sse-edge:events",
        value_name = "KEY"
    )]
    pub redis_stream: String,

    /// Entries Redis keeps in the stream (approximate trimming, MAXLEN ~): how far back a
    /// resume can reach on a node that does not remember it.
    #[arg(
        long,
        env = "SSE_EDGE_REDIS_MAXLEN",
        default_value_t = 100_000,
        value_name = "N"
    )]
    pub redis_maxlen: u64,

    /// Cluster mode: entries of the Redis stream one resume may walk (over all its steps) to
    /// find its topics' events from before what this node kept; an entry over 1 KiB counts
    /// once per KiB started, so this also bounds the bytes read to about N KiB. Spent before
    /// reaching the node's history, the stream gets `event: reset` (expired) from where the
    /// walk stopped and goes on from the node's history. 0 = never read Redis for a resume.
    #[arg(
        long,
        env = "SSE_EDGE_REPLAY_SCAN",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub replay_scan: u32,

    /// Cluster mode: the one cache of ranges read from Redis that resumes from nearby ids share.
    /// A range is given back as soon as no resume in progress still needs it, and reads are cut
    /// to fit, whatever the entries' sizes (an entry larger than the cache is read alone).
    #[arg(
        long,
        env = "SSE_EDGE_REPLAY_CACHE_BYTES",
        default_value_t = 8 << 20,
        value_name = "BYTES"
    )]
    pub replay_cache_bytes: usize,

    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or a RUST_LOG-style filter such as
    /// `sse_edge=debug`.
    #[arg(
        long,
        env = "SSE_EDGE_LOG",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log: String,

    /// How log lines look on stderr: `text` (for a terminal and journalctl) or `json` (one
    /// object per line, for a log pipeline: `time`, `level`, `target`, `message`, then the
    /// event's own fields).
    #[arg(
        long,
        env = "SSE_EDGE_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json",
        value_enum
    )]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The most `--h2-max-streams` may say: a connection's streams are a sorted list searched per
/// frame, and a browser opens a few dozen at most.
pub const MAX_H2_STREAMS: u32 = 10_000;

/// `on` or `off`, as the contract spells a switch.
fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected `on` or `off`".to_owned()),
    }
}

fn parse_shards(s: &str) -> Result<usize, String> {
    if s == "auto" {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err("expected a number of shards from 1 to 1024, or `auto`".to_owned()),
    }
}

/// The error line for a refused value of a secret flag (one whose environment value `--help`
/// hides: keys, tokens, the Redis URL with its password), naming the flag and why but never
/// the value, which may have come from `SSE_EDGE_SUBSCRIBE_JWT` precisely to stay out of view.
/// `None` for every other error.
fn redacted(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?.strip_prefix("--")?;
    let secret = Config::command()
        .get_arguments()
        .any(|a| a.is_hide_env_values_set() && a.get_long() == Some(flag));
    if !secret {
        return None;
    }
    Some(match std::error::Error::source(e) {
        Some(why) => format!("invalid value for '{arg}' (not shown): {why}"),
        None => format!("invalid value for '{arg}' (not shown)"),
    })
}

/// Why the command line did not yield a configuration.
#[derive(Debug)]
pub enum ConfigError {
    /// `--help` or `--version`: print the text and exit 0.
    Info(String),
    /// A bad flag or value: print this one line and exit 2.
    Invalid(String),
}

impl Config {
    /// Parses the process's arguments and `SSE_EDGE_*` environment, then validates.
    pub fn parse_from_env() -> Result<Config, ConfigError> {
        Self::parse_args(std::env::args_os())
    }

    /// Parses the given arguments (the first is the program name), then validates.
    pub fn parse_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let config = Config::try_parse_from(args).map_err(|e| {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ConfigError::Info(e.render().to_string())
                }
                _ => ConfigError::Invalid(
                    redacted(&e).unwrap_or_else(|| one_line(&e.render().to_string())),
                ),
            }
        })?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Rejects values that parse but cannot work.
    fn validate(&self) -> Result<(), String> {
        // Durations are added to `Instant`s later; a value that would overflow there is
        // refused here, where it can still be one clear line.
        for (flag, secs, max) in [
            ("--header-timeout", self.header_timeout, HOUR),
            ("--drain-timeout", self.drain_timeout, DAY),
            ("--slow-client-timeout", self.slow_client_timeout, DAY),
            ("--topic-idle", self.topic_idle, 30 * DAY),
        ] {
            if secs > max {
                return Err(format!("{flag} must be at most {max} seconds"));
            }
        }
        if let Some(url) = &self.redis {
            crate::broker::redis::parse_url(url)?;
        }
        if self.redis_stream.is_empty() || self.redis_stream.len() > 256 {
            return Err("--redis-stream must be 1 to 256 bytes".into());
        }
        if !(1..=1_000_000_000).contains(&self.redis_maxlen) {
            return Err("--redis-maxlen must be between 1 and 1000000000".into());
        }
        if self.replay_scan > 100_000_000 {
            return Err("--replay-scan must be at most 100000000".into());
        }
        if !(64 << 10..=1 << 30).contains(&self.replay_cache_bytes) {
            return Err("--replay-cache-bytes must be between 64 KiB and 1 GiB".into());
        }
        if self.send_buffer != 0 && !(4096..=1 << 30).contains(&self.send_buffer) {
            return Err(
                "--send-buffer must be 0 (kernel autotuning) or 4096 bytes to 1 GiB".into(),
            );
        }
        if self.client_buffer > 1 << 30 {
            return Err("--client-buffer must be at most 1 GiB".into());
        }
        if !(64 << 10..=1 << 40).contains(&self.history_bytes) {
            return Err("--history-bytes must be between 64 KiB and 1 TiB".into());
        }
        if !(64 << 10..=1 << 40).contains(&self.topic_bytes) {
            return Err("--topic-bytes must be between 64 KiB and 1 TiB".into());
        }
        if self.topic_idle == 0 {
            return Err("--topic-idle must be at least 1 second".into());
        }
        for (flag, keys) in [
            ("--subscribe-jwt", &self.subscribe_jwt),
            ("--publish-jwt", &self.publish_jwt),
        ] {
            if keys.len() > crate::auth::jwt::MAX_KEYS {
                return Err(format!(
                    "{flag} may be given at most {} times",
                    crate::auth::jwt::MAX_KEYS
                ));
            }
        }
        if !(1..=1 << 20).contains(&self.tls_handshakes_per_turn) {
            return Err("--tls-handshakes-per-turn must be between 1 and 1048576".into());
        }
        if self.cors_origins.len() > crate::wire::cors::MAX_ORIGINS {
            return Err(format!(
                "--cors-origins may list at most {} origins",
                crate::wire::cors::MAX_ORIGINS
            ));
        }
        if self.token_in_query && self.subscribe_jwt.is_empty() {
            return Err("--token-in-query needs --subscribe-jwt".into());
        }
        if self.jwt_audience.is_some()
            && self.subscribe_jwt.is_empty()
            && self.publish_jwt.is_empty()
        {
            return Err("--jwt-audience needs --subscribe-jwt or --publish-jwt".into());
        }
        if self.jwt_issuer.is_some() && self.subscribe_jwt.is_empty() && self.publish_jwt.is_empty()
        {
            return Err("--jwt-issuer needs --subscribe-jwt or --publish-jwt".into());
        }
        if self.max_streams_per_ip == Some(0) {
            return Err("--max-streams-per-ip must be at least 1".into());
        }
        if self.max_request_connections == 0 || self.max_request_connections > 1 << 20 {
            return Err("--max-request-connections must be between 1 and 1048576".into());
        }
        if self.client_buffer < 1024 {
            return Err("--client-buffer must be at least 1024 bytes".into());
        }
        if self.max_body == 0 || self.max_body > 64 << 20 {
            return Err("--max-body must be between 1 byte and 64 MiB".into());
        }
        if self.header_timeout == 0 {
            return Err("--header-timeout must be at least 1 second".into());
        }
        if self.retry_ms == 0 || self.retry_ms > 3_600_000 {
            return Err("--retry-ms must be between 1 and 3600000".into());
        }
        if !(1..=MAX_H2_STREAMS).contains(&self.h2_max_streams) {
            return Err(format!(
                "--h2-max-streams must be between 1 and {MAX_H2_STREAMS}"
            ));
        }
        if self.max_clients == Some(0) || self.max_clients > Some(1 << 30) {
            return Err("--max-clients must be between 1 and 1073741824".into());
        }
        if self.history > 1_000_000 {
            return Err("--history must be at most 1000000".into());
        }
        if self
            .publish_token
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err("--publish-token must be non-empty and without spaces".into());
        }
        if self.tick > 86_400 || self.keepalive > 86_400 {
            return Err("--tick and --keepalive must be at most 86400 seconds".into());
        }
        Ok(())
    }

    /// The demo ticker's period, if on.
    pub fn tick_period(&self) -> Option<Duration> {
        (self.tick > 0).then(|| Duration::from_secs(self.tick))
    }

    /// The keep-alive period, if on.
    pub fn keepalive_period(&self) -> Option<Duration> {
        (self.keepalive > 0).then(|| Duration::from_secs(self.keepalive))
    }

    /// How long a stream may keep losing frames, if limited.
    pub fn slow_client_period(&self) -> Duration {
        match self.slow_client_timeout {
            0 => Duration::MAX,
            secs => Duration::from_secs(secs),
        }
    }

    /// How long an unused topic is kept.
    pub fn topic_idle_period(&self) -> Duration {
        Duration::from_secs(self.topic_idle)
    }

    /// The request-head deadline.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout)
    }
}

/// The whole command line as one definition, for what is generated from it (shell
/// completions, the manual page): the server's flags, and the subcommands `main` dispatches
/// before clap sees the arguments.
pub fn full_command() -> clap::Command {
    use clap::CommandFactory;
    Config::command()
        .subcommand(
            crate::auth::mint::MintArgs::command()
                .name("token")
                .bin_name("sse-edge token"),
        )
        .subcommand(
            crate::node::upgrade::UpgradeArgs::command()
                .name("upgrade")
                .bin_name("sse-edge upgrade"),
        )
        .subcommand(
            clap::Command::new("completions")
                .about("Print the completion script of a shell")
                .arg(clap::Arg::new("shell").required(true).value_parser([
                    "bash",
                    "elvish",
                    "fish",
                    "powershell",
                    "zsh",
                ])),
        )
        .subcommand(clap::Command::new("man").about("Print the manual page (roff)"))
}

/// The example environment file of `deploy/systemd/` (systemd's `EnvironmentFile=`, also
/// `/etc/default/sse-edge` in the package): every flag's `SSE_EDGE_*` variable, commented
/// out with its default and its `--help` text, generated from the flags themselves so it
/// cannot drift from them (`tests/deploy.rs` compares the file with this).
pub fn env_file() -> String {
    use clap::CommandFactory;
    let mut out = String::from(
        "# sse-edge settings: every flag of `sse-edge --help` as its SSE_EDGE_* variable, with\n\
         # its default. Read by the systemd unit (EnvironmentFile=); installed by the package as\n\
         # /etc/default/sse-edge. Uncomment a line to change a setting; a variable set here\n\
         # overrides the unit's Environment= lines. A change takes effect at the next start\n\
         # (systemctl restart sse-edge: streams reconnect and resume). systemctl reload, the\n\
         # zero-disconnect upgrade, gives the new binary the running process's own arguments\n\
         # and environment, not this file's; SIGHUP re-reads key and certificate files.\n\
         #\n\
         # Generated from the flags' definitions (src/node/config.rs, config::env_file); tests/deploy.rs\n\
         # fails when a flag is missing here or its default changed.\n",
    );
    let command = Config::command();
    for arg in command.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let env = env.to_string_lossy();
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let takes_value = arg.get_action().takes_values();
        let (default, example) = match (takes_value, defaults.is_empty()) {
            // A switch's variable reads `true` or `false` (also 1/0, yes/no, on/off).
            (false, _) => ("off".to_owned(), "false".to_owned()),
            (true, true) => ("none".to_owned(), String::new()),
            (true, false) => (defaults.join(","), defaults.join(",")),
        };
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .filter(|_| takes_value)
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        out.push_str(&format!("\n# --{long}{value} (default: {default})\n"));
        for line in wrap(&help, 88) {
            out.push_str(&format!("#   {line}\n"));
        }
        out.push_str(&format!("#{env}={example}\n"));
    }
    out
}

/// `text` in lines of at most `width` characters (a longer word keeps its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Seconds in an hour and in a day, for the bounds on durations.
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// clap's error as one line: its message, whose list of missing flags may wrap onto the
/// following lines, without the usage that follows.
pub fn one_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    message.join(" ").trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::parse_args(std::iter::once("sse-edge").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!((c.shards, c.reuse_port), (1, false));
        assert_eq!((c.tick, c.keepalive), (5, 15));
        assert_eq!((c.client_buffer, c.max_body), (65536, 65536));
        assert_eq!((c.retry_ms, c.header_timeout), (2000, 10));
        assert_eq!((c.log.as_str(), c.log_format), ("info", LogFormat::Text));
        assert_eq!(
            (c.slow_client_timeout, c.history, c.drain_timeout),
            (30, 1024, 5)
        );
        assert_eq!((c.publish_token.as_deref(), c.max_clients), (None, None));
        assert_eq!(c.publish_allow.len(), 2);
        assert_eq!((c.history_bytes, c.topic_idle), (64 << 20, 3600));
        assert_eq!(c.topic_bytes, 64 << 20);
        assert_eq!(c.send_buffer, 65536);
        assert_eq!((c.replay_scan, c.replay_cache_bytes), (10_000, 8 << 20));
        assert_eq!(
            (c.max_streams_per_ip, c.max_request_connections),
            (None, 1024)
        );
    }

    #[test]
    fn bad_values_are_one_line() {
        for args in [
            &["--listen", "nowhere"][..],
            &["--tick", "-1"],
            &["--shards", "0"],
            &["--client-buffer", "10"],
            &["--no-such-flag"],
            &["--publish-allow", "10.0.0.0/99"],
            &["--max-clients", "0"],
            &["--publish-token", ""],
            &["--header-timeout", "18446744073709551615"],
            &["--drain-timeout", "18446744073709551615"],
            &["--slow-client-timeout", "99999999999"],
            &["--topic-idle", "0"],
            &["--topic-idle", "18446744073709551615"],
            &["--history-bytes", "0"],
            &["--history-bytes", "18446744073709551615"],
            &["--topic-bytes", "1000"],
            &["--topic-bytes", "18446744073709551615"],
            &["--client-buffer", "18446744073709551615"],
            &["--max-streams-per-ip", "0"],
            &["--send-buffer", "100"],
            &["--redis", "nonsense"],
            &["--redis", "rediss://127.0.0.1:6379"],
            &["--redis-maxlen", "0"],
            &["--replay-scan", "100000001"],
            &["--replay-cache-bytes", "1000"],
            &["--replay-cache-bytes", "18446744073709551615"],
            &["--max-request-connections", "0"],
            &["--max-clients", "18446744073709551615"],
            &["--log-format", "yaml"],
        ] {
            match parse(args) {
                Err(ConfigError::Invalid(line)) => {
                    assert!(
                        !line.contains('\n') && !line.is_empty(),
                        "{args:?}: {line:?}"
                    )
                }
                other => panic!("{args:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn help_is_information_not_an_error() {
        assert!(
            matches!(parse(&["--help"]), Err(ConfigError::Info(text)) if text.contains("--client-buffer"))
        );
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        assert_eq!(parse(&["--tick", "0", "--tick", "3"]).unwrap().tick, 3);
    }

    #[test]
    fn auto_shards_is_at_least_one() {
        assert!(parse(&["--shards", "auto"]).unwrap().shards >= 1);
    }
}
